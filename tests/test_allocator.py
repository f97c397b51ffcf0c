"""The allocator setting: freed frame-sized arrays are reused without page faults."""

import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys, numpy as np
from trex.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
np.ones((4096, 4096), np.float32)  # the first one is new memory either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    np.ones((4096, 4096), np.float32)  # 64 MiB: 16384 pages, over glibc's 32 MiB ceiling
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_arrays_are_reused_without_page_faults():
    faults = {mode: int(subprocess.run([sys.executable, "-c", SCRIPT, mode], check=True,
                                       capture_output=True, text=True).stdout)
              for mode in ("default", "keep")}
    # each array mapped and faulted in afresh: 16384 faults of 4 KiB pages, 32 of 2 MiB
    # transparent huge pages (seen here: 33-544 a 64 MiB array), or the freed one reused
    assert faults["default"] >= 10 * 32
    assert faults["keep"] * 10 < faults["default"], faults
