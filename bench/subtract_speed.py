"""Speed of registration and image subtraction against scipy, on one core.

Times (median of 3) trex resampling of a 4096^2 frame against scipy
``map_coordinates`` (order 1 and 3), and trex fit + convolve + subtract of a
simulated 2048^2 pair (``b/4;i/4;d=4/4``) against one scipy ``fftconvolve`` of
the frame; prints the ratios and the difference-image noise ratio
std(D / expected noise).

    .venv/bin/python bench/subtract_speed.py [--size-resample 4096] [--size-subtract 2048]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one core, before numpy loads BLAS

import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402
from scipy.ndimage import map_coordinates  # noqa: E402
from scipy.signal import fftconvolve  # noqa: E402

from trex.register import fit_transform, resample  # noqa: E402
from trex.subtract import subtract  # noqa: E402


def gaussian(sigma: float, half: int, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    y, x = np.mgrid[-half:half + 1, -half:half + 1]
    k = np.exp(-((x - dx) ** 2 + (y - dy) ** 2) / (2 * sigma**2))
    return k / k.sum()


def star_field(n: int, seed: int) -> np.ndarray:
    """Stars (FWHM ~2.4 px, faint-dominated) on a 1000 ADU sky."""
    rng = np.random.default_rng(seed)
    nstars = n * n // 300
    img = np.zeros((n, n))
    mags = rng.power(2.5, nstars)  # more faint than bright stars
    where = (rng.integers(0, n, nstars), rng.integers(0, n, nstars))
    np.add.at(img, where, 10 ** (2.0 + 3.5 * (1 - mags)))
    return fftconvolve(img, gaussian(1.0, 7), mode="same") + 1000.0


def median_time(func, repeat: int = 3) -> tuple[float, float]:
    """Median wall-clock and CPU seconds of ``repeat`` calls (CPU time is the
    fairer one-core figure on a busy machine)."""
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        func()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return float(np.median(wall)), float(np.median(cpu))


def bench_resample(n: int) -> None:
    frame = star_field(n, 1).astype(np.float32)
    c, th, s = n / 2, np.deg2rad(0.3), 1.004

    def mapping(x, y):
        u = c + s * (np.cos(th) * (x - c) - np.sin(th) * (y - c)) + 2.3 + 1e-9 * (x - c) ** 3
        v = c + s * (np.sin(th) * (x - c) + np.cos(th) * (y - c)) - 1.7 + 1e-9 * (y - c) ** 3
        return u, v

    gx, gy = np.meshgrid(np.linspace(0, n - 1, 24), np.linspace(0, n - 1, 24))
    transform = fit_transform(gx.ravel(), gy.ravel(), *mapping(gx.ravel(), gy.ravel()))
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    coords = np.array(mapping(xx, yy)[::-1])
    del yy, xx
    results = {}
    for method in ("flux", "bilinear", "bicubic"):
        results[f"trex {method}"] = median_time(
            lambda m=method: resample(frame, transform, (n, n), m))
    for order in (1, 3):
        results[f"scipy order {order}"] = median_time(
            lambda k=order: map_coordinates(frame, coords, order=k, output=np.float32))
    print(f"resampling {n}x{n} (scipy without computing its coordinate arrays), wall / cpu:")
    for name, (wall, cpu) in results.items():
        ratio = wall / results["scipy order 3"][0]
        print(f"  {name:16s} {wall:7.3f} s / {cpu:7.3f} s  ratio to scipy order 3: {ratio:.2f}")


def ficonv_time(image: np.ndarray, ref: np.ndarray, spec: str) -> tuple[float, np.ndarray]:
    """Wall time of one fitsh ``ficonv`` fit + subtraction (whole process), and its D."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fits.writeto(tmp / "ref.fits", ref)
        fits.writeto(tmp / "img.fits", image)
        cmd = ["ficonv", "-r", str(tmp / "ref.fits"), "-i", str(tmp / "img.fits"), "-k", spec,
               "--output-kernel-list", str(tmp / "kernel.txt"),
               "--output-subtracted", str(tmp / "diff.fits")]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        elapsed = time.perf_counter() - t0
        return elapsed, fits.getdata(tmp / "diff.fits").astype(np.float64)


def bench_subtract(n: int, spec: str = "b/4;i/4;d=4/4", gain: float = 2.0) -> None:
    ref = star_field(n, 2)
    t = np.arange(n) / (n - 1)
    ka, kb = gaussian(0.7, 4, 0.2, 0.0), gaussian(1.1, 4, -0.1, 0.15)
    conv = (1 - t) * fftconvolve(ref, ka, mode="same") + t * fftconvolve(ref, kb, mode="same")
    truth = conv * (0.9 + 0.05 * t[:, None]) + 50 + 20 * t[None, :] - 10 * t[:, None] ** 2
    image = (np.random.default_rng(3).poisson(truth * gain) / gain).astype(np.float32)
    ref32 = ref.astype(np.float32)
    t_sub = median_time(lambda: subtract(image, ref32, spec, gain=gain))
    t_fft = median_time(lambda: fftconvolve(ref32, ka.astype(np.float32), mode="same"))
    diff, sol = subtract(image, ref32, spec, gain=gain)
    sigma = np.sqrt(truth / gain)[8:-8, 8:-8]
    z = diff[8:-8, 8:-8] / sigma
    print(f"subtraction {n}x{n} {spec}: {len(sol.stamps)} stamps, {len(sol.rejected)} rejected")
    print(f"  trex fit+convolve+subtract {t_sub[0]:7.3f} s wall / {t_sub[1]:7.3f} s cpu")
    print(f"  scipy fftconvolve (one)    {t_fft[0]:7.3f} s wall / {t_fft[1]:7.3f} s cpu"
          f"  ratio trex/fft: {t_sub[0] / t_fft[0]:.1f}")
    print(f"  trex noise ratio std(D / expected) = {np.std(z):.4f}  (mean {np.mean(z):+.4f})")
    if shutil.which("ficonv"):
        t_fi, d_fi = ficonv_time(image, ref32, spec)
        z = d_fi[8:-8, 8:-8] / sigma
        print(f"  fitsh ficonv (one run)     {t_fi:7.3f} s wall  ratio ficonv/trex: "
              f"{t_fi / t_sub[0]:.1f}; its noise ratio {np.std(z):.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-resample", type=int, default=4096)
    parser.add_argument("--size-subtract", type=int, default=2048)
    args = parser.parse_args()
    bench_resample(args.size_resample)
    bench_subtract(args.size_subtract)


if __name__ == "__main__":
    main()
