"""The build of the Cython kernels this CPU runs.

Every kernel ``trex._<name>`` is built twice on x86-64 (``setup.py``): for any
x86-64 CPU, and with AVX2 in ``trex/_avx2/`` (the same operations in the same
order, so the same results bit for bit, twice as many floats per vector
instruction).  :func:`install`, called when ``trex`` is imported, puts a finder
first on ``sys.meta_path`` that loads the AVX2 file under the kernel's own name
when the CPU has AVX2, whichever way the kernel is imported.  Set
``TREX_KERNELS=portable`` to run the portable build.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

PACKAGE = Path(__file__).parent
AVX2 = PACKAGE / "_avx2"


def use_avx2() -> bool:
    """True when the AVX2 build is there, the CPU has AVX2 and ``TREX_KERNELS`` allows it."""
    if os.environ.get("TREX_KERNELS", "").lower() == "portable" or not AVX2.is_dir():
        return False
    from trex._cpu import has_avx2  # built once, for any CPU
    return has_avx2()


class AVX2Kernels:
    """A ``sys.meta_path`` finder: ``trex._<name>`` from ``trex/_avx2/`` when it is there."""

    def __init__(self) -> None:
        self._enabled: bool | None = None

    def find_spec(self, fullname: str, path=None, target=None):
        prefix, _, name = fullname.rpartition(".")
        if prefix != "trex" or not name.startswith("_"):
            return None
        files = [AVX2 / f"{name}{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES]
        found = next((f for f in files if f.is_file()), None)
        if found is None:
            return None
        if self._enabled is None:
            self._enabled = use_avx2()
        if not self._enabled:
            return None
        return importlib.util.spec_from_file_location(fullname, found)


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, AVX2Kernels) for f in sys.meta_path):
        sys.meta_path.insert(0, AVX2Kernels())


def kernels_build() -> str:
    """The build the kernels of this process come from: ``"avx2"`` or ``"portable"``."""
    from trex import _stats
    return "avx2" if Path(_stats.__file__).parent == AVX2 else "portable"
