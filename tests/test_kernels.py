"""The kernel contract: one status table (cext/kernels.pxd = trex/kernels.py), one check()."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from trex._render import add_stars
from trex._stats import clipped_combine

from trex import kernels
from trex.errors import FrameError

CEXT = Path(__file__).resolve().parents[1] / "cext"


def test_status_values_agree_with_the_pxd():
    text = (CEXT / "kernels.pxd").read_text()
    block = text[text.index("cdef enum Status:"):].split("\n\n")[0]
    pxd = dict(re.findall(r"^\s+(\w+) = (\d+)", block, re.M))
    assert {k: int(v) for k, v in pxd.items()} == {
        name: getattr(kernels, name) for name in ("OK", "BAD_ARGUMENT", "NO_MEMORY", "BAD_INPUT")}


@pytest.mark.parametrize("status, error", [(kernels.BAD_ARGUMENT, ValueError),
                                           (kernels.NO_MEMORY, MemoryError),
                                           (kernels.BAD_INPUT, FrameError),
                                           (99, RuntimeError)])
def test_check_maps_each_status_to_its_exception(status, error):
    kernels.check(kernels.OK, "nothing")
    with pytest.raises(error, match="stack_kernel: what went wrong"):
        kernels.check(status, "stack_kernel: what went wrong")


def test_kernels_report_through_check_and_name_themselves():
    one = np.ones(1)
    with pytest.raises(ValueError, match="add_stars: x, y, flux, s, d, k must have the same"):
        add_stars(np.zeros((8, 8), np.float32), one, one, one, one, one, np.ones(2))
    with pytest.raises(ValueError, match="clipped_combine: out and nused"):
        clipped_combine(np.zeros((3, 4, 4), np.float32), np.zeros((4, 5), np.float32),
                        np.zeros((4, 4), np.int16))


def test_no_kernel_raises_or_declares_its_own_contract():
    """Errors go through check(); pixel types and the sort comparator come from kernels.pxd."""
    for path in sorted(CEXT.glob("*.px[i]")) + sorted(CEXT.glob("*.pyx")):
        text = path.read_text()
        assert not re.search(r"^\s*raise ", text, re.M), path.name
        assert "ctypedef fused" not in text and "cmp(const void" not in text, path.name
