"""The exceptions that cross trex's error boundary, in one place.

* :class:`FrameError` -- one input (a raw file, its header, its pixels, a
  frame's products) is unusable.  The driver records the stage and the reason
  and goes on with the next frame.
* :class:`PhaseError` -- one item of a project phase (a group's reference, a
  magnitude-fit master) cannot be made from the data at hand.  Recorded with
  its reason like a bad frame; the run goes on.
* :class:`WriteFault` -- a write failed for a cause outside trex (disk full,
  permission, read-only folder, file-size limit).  The run stops cleanly with
  one line naming the path and the cause; nothing half-written is left.

Any other exception is a bug in trex and aborts the whole job with its traceback.

A reason is recorded in the database and printed by ``trex status``, and it
may quote bytes of a broken input: :func:`one_line` makes every reason of a
FrameError and PhaseError one line of printable ASCII of at most
:data:`REASON_LENGTH` characters.
"""

from __future__ import annotations

import errno
import os
import re
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: longest reason recorded, characters (longer ones end with "...")
REASON_LENGTH = 300

_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
_SPACES = re.compile(r"\s+")


def one_line(text: str, limit: int = REASON_LENGTH) -> str:
    """``text`` as one line of printable ASCII: whitespace runs become one space,
    other unprintable characters ``?``, and it is cut to ``limit`` characters."""
    text = _UNPRINTABLE.sub("?", _SPACES.sub(" ", str(text))).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


class FrameError(Exception):
    """A frame that cannot be used, with the file and the reason (one printable line)."""

    def __init__(self, path: Path | str, reason: str):
        reason = one_line(reason)
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class PhaseError(Exception):
    """An item of a project phase that cannot be done from the data, with the reason."""

    def __init__(self, item: str, reason: str):
        reason = one_line(reason)
        super().__init__(f"{item}: {reason}")
        self.item = item
        self.reason = reason


class WriteFault(Exception):
    """A write that failed for a cause outside trex (disk full, permission, ...)."""

    def __init__(self, path: Path | str, cause: str):
        super().__init__(f"cannot write {path}: {cause}")
        self.path = str(path)
        self.cause = cause


#: errno values of a write that fails for a cause outside trex, and how to say it
_CAUSES = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
           errno.EFBIG: "file too large (file-size limit)", errno.EACCES: "permission denied",
           errno.EPERM: "operation not permitted", errno.EROFS: "read-only file system"}


def write_cause(path: Path | str, err: OSError) -> str | None:
    """Why a write to ``path`` failed, when the cause is the machine's (else None).

    Libraries that report a failed write without an errno (cfitsio) are
    diagnosed from the folder: not writable, no space left, or a file-size
    limit in force."""
    if err.errno in _CAUSES:
        return _CAUSES[err.errno]
    if err.errno is not None:
        return None
    folder = Path(path).parent
    if folder.is_dir() and not os.access(folder, os.W_OK):
        return _CAUSES[errno.EACCES]
    try:
        stat = os.statvfs(folder)
        if stat.f_bavail * stat.f_frsize < (1 << 20):
            return _CAUSES[errno.ENOSPC]
    except OSError:
        pass
    if resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY:
        return _CAUSES[errno.EFBIG]
    return None


@contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Turn an OSError of the machine (see :func:`write_cause`) into a WriteFault."""
    try:
        yield
    except OSError as err:
        cause = write_cause(path, err)
        if cause is None:
            raise
        raise WriteFault(path, cause) from None


class Stopped(Exception):
    """The run was asked to stop (SIGTERM, SIGUSR1) and stopped cleanly."""
