"""Time trex source extraction against sep on identical synthetic frames.

Frames: HATPI-like round Gaussian stars (FWHM 2.4 px), pixel-integrated, sky
1000 ADU, Poisson noise (gain 1) plus 5 ADU read noise, faint-dominated
luminosity function (N(>F) ~ F^-0.7 from ``--fmin`` to 10^6 ADU).  Timed, median of
``--repeat`` runs, one thread, wall-clock and CPU time (the CPU ratio is
the steadier one on a shared machine):

* trex: ``extract_sources(image, 5.0)`` (background + detection + shape fit);
* sep: ``sep.Background`` + ``back()`` + ``sep.extract(image - sky, 5.0,
  err=globalrms)``.

Also printed: detections, trex's completeness against the truth list per bin
of true S/N (optimal PSF-fit S/N), the fraction of sep's detections that trex
matches within 1 px, the median distance of those matches, and trex's
centroid error against the true positions of bright isolated stars.

Usage: python bench/extract_speed.py [--sizes 2048:10000,4096:50000] [--repeat 3] [--fmin 300]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import sep
from scipy.spatial import cKDTree
from scipy.special import erf

from trex.extract import completeness, extract_sources

FWHM = 2.4
SKY = 1000.0


def synthetic_frame(size: int, nstars: int, seed: int = 0, fmin: float = 300.0
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(image float32, x, y, flux) of a frame of round pixel-integrated Gaussians."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(3.0, size - 4.0, nstars)
    y = rng.uniform(3.0, size - 4.0, nstars)
    fmax = 1e6
    flux = fmin * (1.0 - rng.uniform(0.0, 1.0 - (fmin / fmax) ** 0.7, nstars)) ** (-1.0 / 0.7)
    sigma = FWHM / 2.3548
    half = 5
    offs = np.arange(-half, half + 1)
    cx, cy = np.round(x).astype(int), np.round(y).astype(int)
    edges = offs[None, :] - 0.5
    fx = 0.5 * (erf((cx[:, None] + edges + 1 - x[:, None]) / (np.sqrt(2) * sigma))
                - erf((cx[:, None] + edges - x[:, None]) / (np.sqrt(2) * sigma)))
    fy = 0.5 * (erf((cy[:, None] + edges + 1 - y[:, None]) / (np.sqrt(2) * sigma))
                - erf((cy[:, None] + edges - y[:, None]) / (np.sqrt(2) * sigma)))
    stamps = flux[:, None, None] * fy[:, :, None] * fx[:, None, :]
    ii = cx[:, None, None] + offs[None, None, :]
    jj = cy[:, None, None] + offs[None, :, None]
    ok = (ii >= 0) & (ii < size) & (jj >= 0) & (jj < size)
    ii, jj = np.broadcast_to(ii, stamps.shape)[ok], np.broadcast_to(jj, stamps.shape)[ok]
    stars = np.bincount((jj * size + ii).ravel(), weights=stamps[ok].ravel(),
                        minlength=size * size).reshape(size, size)
    image = rng.poisson(SKY + stars).astype(np.float32)
    image += rng.normal(0.0, 5.0, image.shape).astype(np.float32)
    return image, x, y, flux


def run_sep(image: np.ndarray) -> np.ndarray:
    bkg = sep.Background(image)
    return sep.extract(image - bkg.back(), 5.0, err=bkg.globalrms)


def timed(func, image: np.ndarray, repeat: int):
    """Median wall-clock and CPU seconds of ``repeat`` calls, and the last result."""
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        result = func(image)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return float(np.median(wall)), float(np.median(cpu)), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2048:10000,4096:50000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--fmin", type=float, default=300.0,
                        help="faintest star flux, ADU (300: most stars below threshold)")
    args = parser.parse_args()
    sep.set_extract_pixstack(20_000_000)
    sep.set_sub_object_limit(4096)
    for item in args.sizes.split(","):
        size, nstars = (int(v) for v in item.split(":"))
        image, x, y, flux = synthetic_frame(size, nstars, fmin=args.fmin)
        w_trex, c_trex, src = timed(lambda im: extract_sources(im, 5.0), image, args.repeat)
        w_sep, c_sep, objs = timed(run_sep, image, args.repeat)
        dist, _ = cKDTree(np.c_[src["x"], src["y"]]).query(np.c_[objs["x"], objs["y"]])
        matched = dist < 1.0
        near, _ = cKDTree(np.c_[x, y]).query(np.c_[x, y], k=2)
        bright = (flux > 3e4) & (near[:, 1] > 8.0)
        dtrue, idx = cKDTree(np.c_[src["x"], src["y"]]).query(np.c_[x[bright], y[bright]])
        err = np.hypot(src["x"][idx] - x[bright], src["y"][idx] - y[bright])[dtrue < 1.0]
        print(f"{size}^2, {nstars} stars: trex {w_trex:.3f} s wall / {c_trex:.3f} s cpu "
              f"({len(src)} sources), sep {w_sep:.3f} s / {c_sep:.3f} s ({len(objs)} objects); "
              f"ratio trex/sep {w_trex / w_sep:.2f} wall, {c_trex / c_sep:.2f} cpu")
        sigma2 = (FWHM / 2.3548) ** 2 + 1.0 / 12.0
        snr = flux / np.sqrt(flux + (SKY + 25.0) * 4.0 * np.pi * sigma2)
        bins = np.array([0.0, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0, np.inf])
        _, frac, total = completeness(src, x, y, snr, bins)
        print("  completeness vs true S/N: " + ", ".join(
            f"{lo:g}-{hi:g}: {f:.3f} ({n})" for lo, hi, f, n in zip(bins[:-1], bins[1:], frac, total)))
        print(f"  sep objects matched by trex within 1 px: {matched.mean():.3f}, "
              f"median distance {np.median(dist[matched]):.3f} px; bright isolated stars: "
              f"{len(err)}/{bright.sum()} found, centroid rms {np.sqrt(np.mean(err ** 2)):.4f} px")


if __name__ == "__main__":
    main()
