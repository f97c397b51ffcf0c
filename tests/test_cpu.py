"""The kernels' two builds (trex.cpu): the AVX2 one is used where the CPU has it, and
both give the same numbers bit for bit."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from trex._cpu import has_avx2

from trex import cpu

KERNELS = sorted(p.name.split(".")[0] for p in Path(cpu.PACKAGE).glob("_*.so")
                 if not p.name.startswith("_cpu."))
X86 = platform.machine().lower() in ("x86_64", "amd64")

# one frame through the kernels of every stage: stars rendered, sources extracted
# (background, detection, moments), aperture photometry, a frame resampled onto a
# rotated grid, a kernel fitted and convolved, a stack combined with clipping
SCRIPT = """
import sys
import numpy as np
from trex import cpu
from trex._render import add_stars
from trex._stats import clipped_combine
from trex.aperture import aperture_photometry
from trex.extract import extract_sources
from trex.register import fit_transform, resample
from trex.subtract import match

rng = np.random.default_rng(5)
n, size = 300, 256
x, y = rng.uniform(8, size - 9, n), rng.uniform(8, size - 9, n)
flux = 10 ** rng.uniform(3, 5.5, n)
def frame(s, noise_seed):
    image = np.full((size, size), 200.0, np.float32)
    ones = np.ones(n)
    add_stars(image, x, y, flux, s * ones, 0.02 * ones, 0.01 * ones)
    noise = np.random.default_rng(noise_seed).normal(0.0, 1.0, image.shape)
    return (image + noise * np.sqrt(image)).astype(np.float32)
image, sharp = frame(0.30, 1), frame(0.45, 2)
sources = extract_sources(image, threshold=5.0)
phot = aperture_photometry(image, x, y, gain=1.5)
gx, gy = np.meshgrid(np.linspace(0, size - 1, 12), np.linspace(0, size - 1, 12))
c, t = size / 2, 0.01
u = c + np.cos(t) * (gx - c) - np.sin(t) * (gy - c) + 0.3
v = c + np.sin(t) * (gx - c) + np.cos(t) * (gy - c) - 0.2
moved = resample(image, fit_transform(gx.ravel(), gy.ravel(), u.ravel(), v.ravel()),
                 image.shape)
model, solution = match(image, sharp, kernel="b/1;i/1;d=2/1", ngrid=4, gain=1.5)
stack = np.stack([image, sharp, moved]).astype(np.float32)
combined = np.zeros(image.shape, np.float32)
nused = np.zeros(image.shape, np.int16)
clipped_combine(np.ascontiguousarray(np.nan_to_num(stack)), combined, nused)
out = {"sources_" + k: sources[k] for k in sources.dtype.names}
out.update({"phot_" + k: np.asarray(v) for k, v in phot.items() if np.ndim(v)})
out.update(moved=moved, model=model, kcoef=solution.kcoef, combined=combined, nused=nused)
np.savez(sys.argv[1], build=cpu.kernels_build(), **out)
"""


def _run(tmp_path: Path, build: str) -> dict[str, np.ndarray]:
    env = {**os.environ, "TREX_KERNELS": build, "OMP_NUM_THREADS": "1"}
    out = tmp_path / f"{build}.npz"
    subprocess.run([sys.executable, "-c", SCRIPT, str(out)], env=env, check=True)
    with np.load(out) as data:
        return {k: data[k] for k in data.files}


def test_the_avx2_build_is_the_one_loaded_where_the_cpu_has_avx2():
    assert len(KERNELS) >= 10
    expected = "avx2" if X86 and has_avx2() else "portable"
    assert cpu.kernels_build() == expected
    modules = [__import__(f"trex.{name}", fromlist=["_"]) for name in KERNELS]
    folders = {Path(m.__file__).parent for m in modules}
    assert folders == {cpu.AVX2 if expected == "avx2" else cpu.PACKAGE}


@pytest.mark.skipif(not (X86 and has_avx2()), reason="the CPU has no AVX2: one build only")
def test_portable_and_avx2_builds_give_the_same_numbers_bit_for_bit(tmp_path):
    portable, avx2 = _run(tmp_path, "portable"), _run(tmp_path, "avx2")
    assert str(portable.pop("build")) == "portable" and str(avx2.pop("build")) == "avx2"
    assert portable.keys() == avx2.keys() and len(portable) > 20
    assert len(portable["sources_x"]) > 100 and np.isfinite(portable["model"]).sum() > 10_000
    for name in portable:
        assert np.array_equal(portable[name], avx2[name], equal_nan=True), name
