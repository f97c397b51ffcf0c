"""The status codes of trex's Cython kernels and the one function that raises them.

Every kernel entry (``trex._<name>``, built from ``cext/<name>.pyx``) reports a
failure as a status of ``cext/kernels.pxd`` through :func:`check`:

* ``BAD_ARGUMENT`` -- arrays or values outside the entry's contract (wrong
  shapes or lengths, a parameter out of range): ``ValueError``.  Inside a run
  that is a bug of the caller, and like every exception other than
  :class:`~trex.errors.FrameError` it aborts the job with its traceback.
* ``NO_MEMORY`` -- a work buffer could not be allocated: ``MemoryError``.
* ``BAD_INPUT`` -- the data cannot be used (an input-caused failure):
  :class:`~trex.errors.FrameError`, recorded against the frame.
* any other value is a bug of the kernel: ``RuntimeError``.
"""

from __future__ import annotations

from trex.errors import FrameError

OK, BAD_ARGUMENT, NO_MEMORY, BAD_INPUT = 0, 1, 2, 3


def check(status: int, what: str) -> None:
    """Raise the exception of a kernel's ``status`` (nothing for OK).

    ``what`` names the kernel and the failure, e.g. ``"mesh_stats: mask must
    have the shape of image"``; a FrameError takes it as the path-less reason.
    """
    if status == OK:
        return
    if status == BAD_ARGUMENT:
        raise ValueError(what)
    if status == NO_MEMORY:
        raise MemoryError(what)
    if status == BAD_INPUT:
        raise FrameError("kernel", what)
    raise RuntimeError(f"{what}: unknown kernel status {status}")
