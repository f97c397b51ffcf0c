"""Forced aperture photometry throughput: trex vs sep vs photutils.

Identical synthetic HATPI-like frames (FWHM 2.4 px, sky 1000 ADU, float32),
3 apertures (1.95, 2.45, 2.95 px) and a 7-13 px sky annulus:

* trex: ``aperture_photometry`` with the clipped-mode sky (3 sigma, 2 iterations);
* sep: ``sum_circle(..., bkgann=(7, 13))`` (exact overlap, mean sky), once on
  the stars in random order and once sorted in bands of y like trex does inside;
* photutils: ``aperture_photometry(method="exact")`` of the 3 circles and the
  annulus (mean sky);
* fitsh ``fiphot`` when installed (``apt-get install fitsh``; what pipe-trex
  ran): the whole process, FITS read and text output included, mode sky.

Single thread; median CPU time (robust to other load on a shared machine) of
3 interleaved repeats.  Prints seconds, star-apertures per second and trex's
speed-up over each peer.

    .venv/bin/python bench/photometry_speed.py [--size 4096 --stars 50000] [--no-photutils]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from trex.photometry import ORDER_BAND, aperture_photometry

RADII = (1.95, 2.45, 2.95)
ANNULUS = (7.0, 13.0)


def synthetic_frame(size: int, nstars: int, seed: int = 1):
    """A float32 frame with Gaussian stars (faint-dominated) on a 1000 ADU sky."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(15, size - 15, nstars)
    y = rng.uniform(15, size - 15, nstars)
    flux = 10 ** rng.uniform(2.5, 6.0, nstars) * rng.power(3.0, nstars)
    image = np.zeros((size, size))
    np.add.at(image, (np.round(y).astype(int), np.round(x).astype(int)), flux)
    image = gaussian_filter(image, 2.4 / 2.3548)
    image += 1000.0
    image += rng.normal(0.0, 1.0, image.shape) * np.sqrt(image / 2.7 + 25.0)
    return image.astype(np.float32), x, y


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (fiphot), s."""
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + child.ru_utime + child.ru_stime


def timed(runners: dict, repeats: int) -> dict[str, float]:
    """Median CPU seconds of each runner; repeats interleaved so load drifts hit all alike."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, func in runners.items():
            start = cpu_seconds()
            func()
            times[name].append(cpu_seconds() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def run_trex(image, x, y):
    return aperture_photometry(image, x, y, RADII, ANNULUS, sky_method="mode")


def run_sep(image, x, y):
    import sep

    return [sep.sum_circle(image, x, y, r, bkgann=ANNULUS, subpix=0) for r in RADII]


def run_photutils(image, x, y):
    from photutils.aperture import CircularAnnulus, CircularAperture
    from photutils.aperture import aperture_photometry as photutils_phot

    positions = np.column_stack([x, y])
    apertures = [CircularAperture(positions, r) for r in RADII]
    apertures.append(CircularAnnulus(positions, *ANNULUS))
    return photutils_phot(image, apertures, method="exact")


def fiphot_runner(image, x, y, workdir: Path):
    """fitsh fiphot (HATPI's tool) on the frame written as FITS; whole process timed."""
    from astropy.io import fits

    fits.writeto(workdir / "frame.fits", image, overwrite=True)
    # fitsh puts the centre of the first pixel at (0.5, 0.5)
    np.savetxt(workdir / "stars.txt", np.column_stack([np.arange(x.size), x + 0.5, y + 0.5]),
               fmt=["%d", "%.4f", "%.4f"])
    apertures = ",".join(f"{r}:{ANNULUS[0]}:{ANNULUS[1] - ANNULUS[0]}" for r in RADII)
    command = ["fiphot", "-i", str(workdir / "frame.fits"), "-L", str(workdir / "stars.txt"),
               "--col-id", "1", "--col-xy", "2,3", "-g", "2.7", "--mag-flux", "10,10000",
               "-a", apertures, "--sky-fit", "mode,iterations=2,sigma=3", "-F", "IXY,MmBb",
               "-o", str(workdir / "out.phot")]
    return lambda image, x, y: subprocess.run(command, check=True)


def bench(size: int, nstars: int, repeats: int = 3, photutils: bool = True) -> dict[str, float]:
    """Print and return the median CPU seconds of trex and each peer on one frame."""
    image, x, y = synthetic_frame(size, nstars)
    # trex measures stars band by band (cache-friendly); sep takes them as given:
    # also time sep on the same spatially sorted input, for a like-for-like figure
    order = np.lexsort((x, np.floor(y / ORDER_BAND)))
    xs, ys = x[order], y[order]
    runners = {"trex": run_trex, "sep": run_sep,
               "sep-sorted": lambda image, x, y: run_sep(image, xs, ys)}
    if photutils:
        runners["photutils"] = run_photutils
    with tempfile.TemporaryDirectory() as tmp:
        if shutil.which("fiphot"):
            runners["fiphot"] = fiphot_runner(image, x, y, Path(tmp))
        seconds = timed({n: (lambda f=f: f(image, x, y)) for n, f in runners.items()}, repeats)
    print(f"{size}^2 frame, {nstars} stars, {len(RADII)} apertures, annulus {ANNULUS}")
    for name, sec in seconds.items():
        rate = nstars * len(RADII) / sec
        ratio = seconds[name] / seconds["trex"]
        print(f"  {name:10s} {sec:8.3f} s  {rate / 1e3:8.1f} k star-apertures/s  "
              f"trex speed-up x{ratio:.2f}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs="*", default=[4096, 2048])
    parser.add_argument("--stars", type=int, nargs="*", default=[50000, 10000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-photutils", action="store_true")
    args = parser.parse_args()
    for size, nstars in zip(args.size, args.stars, strict=True):
        bench(size, nstars, args.repeats, not args.no_photutils)


if __name__ == "__main__":
    main()
