"""Keep the memory of freed frame-sized arrays for the next frame (glibc only).

glibc's malloc serves a block larger than its mmap threshold (128 KiB, rising
to at most 32 MiB as blocks are freed) with a fresh ``mmap`` and returns it to
the system when freed, and trims the heap top above its trim threshold: each
new 2048^2 or 4096^2 array of a frame then costs a page fault per 4 KiB page
(measured here: 16 and 64 MiB arrays allocated and freed 200 times took 2.25 s
of system time, 0.01 s with the settings below; a 2048^2, 40-frame ``trex run``
spent 7.4 s of its 84 CPU s in the kernel, 4.1 s with them).  A run processes
frame after frame of one size, so the freed memory is reused at once; the
process's resident memory stays at its peak instead of shrinking between frames.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

#: mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: blocks up to this size come from the heap (a 4096^2 float64 array is 128 MiB)
MMAP_THRESHOLD = 256 * 2**20
#: free memory at the heap top kept for reuse
TRIM_THRESHOLD = 2**30


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (once per process; True when set).
    Elsewhere (macOS, musl) nothing changes."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    log.debug("malloc thresholds %s", "raised" if ok else "left as they were")
    return ok
