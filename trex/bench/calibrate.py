"""Calibration: trex against plain numpy on the same arrays.

* Per frame (2048^2 and 4096^2): trex ``calibrate_image`` (bias, dark x EXPTIME
  and flat in one Cython pass, plus the SATURATED / BADPIX / NOFLAT /
  NONFINITE mask) on a raw uint16 frame in memory with its masters already
  cached, against numpy ``(raw - bias - dark * t) / flat`` on the same arrays
  (no mask).  The raw frame has no overscan strip, so both compute the same
  thing.  Check: the largest |trex - numpy| in ADU and relative to the sky noise.
* Reading a raw frame fpacked as cameras write it (uint16, Rice, a tile per row):
  trex ``read_image`` (its own Rice kernel, ``trex.rice``) against fitsio's read
  (cfitsio) cast to float32.  Check: both equal the frame written.
* Master bias from N raw frames of 2048^2 on disk (N = 10, 5 with
  ``--quick``): trex ``build_master("bias", ...)`` (row-block reads, 3-sigma clipped mean, 3
  iterations) against numpy reading every frame with fitsio into one cube,
  then a 3-sigma clip around the median (one pass) and the mean.  Check: the
  median and largest |trex - numpy| relative to the noise of the mean.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import fitsio
import numpy as np
from astropy.io import fits as afits

from trex.bench.common import Row, hatpi_frame, median_time
from trex.config import Config
from trex.fits import read_header
from trex.frame import Frame
from trex.header import parse_header
from trex.masters import Master, build_master, write_master

log = logging.getLogger(__name__)

NAME = "calibrate"
EXPTIME, BIAS, DARK, READ = 30.0, 500.0, 0.05, 4.0


def write_raw(path: Path, image: np.ndarray, kind: str = "object") -> None:
    """A uint16 raw frame with the header keys ``parse_header`` needs."""
    header = [{"name": "IMAGETYP", "value": kind}, {"name": "EXPTIME", "value": EXPTIME},
              {"name": "DATE-OBS", "value": "2026-11-29T03:00:00"},
              {"name": "PROJID", "value": "B"}, {"name": "CCD", "value": "1"},
              {"name": "FILTER", "value": "r"}, {"name": "SATURATE", "value": 65000.0}]
    fitsio.write(str(path), np.clip(image, 0, 65535).astype(np.uint16), header=header,
                 clobber=True)


def make_masters(size: int, folder: Path, rng: np.random.Generator) -> dict[str, Path]:
    """Master bias, dark (ADU/s) and flat written to ``folder``; {kind: path}."""
    values = {"bias": (BIAS, 2.0), "dark": (DARK, 0.005), "flat": (1.0, 0.01)}
    paths = {}
    for kind, (level, spread) in values.items():
        image = rng.normal(level, spread, (size, size)).astype(np.float32)
        badpix = None if kind == "bias" else np.zeros((size, size), np.uint8)
        paths[kind] = write_master(folder / f"{kind}.fits", Master(
            kind, image, np.full((size, size), 10, np.int16), afits.Header({"MASTER": kind}),
            badpix))
    return paths


def difference_check(trex_img: np.ndarray, peer_img: np.ndarray, noise: float) -> str:
    """'max |trex - numpy| = <ADU> (<fraction> of the noise)' over pixels finite in both."""
    diff = np.abs(np.asarray(trex_img, float) - np.asarray(peer_img, float))
    diff = diff[np.isfinite(diff)]
    worst = float(diff.max()) if diff.size else float("nan")
    return f"max |trex - numpy| {worst:.2e} ADU ({worst / noise:.1e} sigma)"


def bench_frame(size: int, folder: Path) -> Row:
    from trex.calibrate import calibrate_image

    rng = np.random.default_rng(4)
    paths = make_masters(size, folder, rng)
    bias, dark, flat = (fitsio.read(str(paths[k])).astype(np.float32) for k in paths)
    sky, _, _, _ = hatpi_frame(size, 10_000 if size <= 2048 else 50_000, seed=1)
    raw = np.clip(np.round(sky * flat + bias + dark * EXPTIME), 0, 65535).astype(np.uint16)
    raw_path = folder / f"raw-{size}.fits"
    write_raw(raw_path, raw)
    config = Config()
    frame = Frame(1, raw_path, "n1", parse_header(read_header(raw_path), config, raw_path))
    calibrate_image(raw, frame, paths, config)  # masters into trex's cache, as in a night
    t_trex, (out, _, _) = median_time(lambda: calibrate_image(raw, frame, paths, config))
    texp = np.float32(EXPTIME)

    def plain():
        return (raw.astype(np.float32) - bias - dark * texp) / flat

    t_np, ref = median_time(plain)
    noise = float(np.sqrt(np.median(sky) / 2.7))
    return Row("calibrate one frame (bias, dark, flat + mask)", f"{size}^2 uint16", t_trex,
               "numpy (raw - bias - dark*t) / flat", t_np, difference_check(out, ref, noise))


def bench_read(size: int, folder: Path) -> Row:
    """A raw frame as cameras fpack it (uint16, Rice, one tile per row) read into float32."""
    from trex.fits import read_image

    sky, _, _, _ = hatpi_frame(size, 10_000 if size <= 2048 else 50_000, seed=2)
    raw = np.clip(np.round(sky + BIAS), 0, 65535).astype(np.uint16)
    path = folder / f"raw-{size}.fits.fz"
    with fitsio.FITS(str(path), "rw", clobber=True) as fits:
        fits.write(raw, compress="rice")
    t_trex, (out, _) = median_time(lambda: read_image(path), repeats=5)
    t_peer, ref = median_time(lambda: fitsio.read(str(path)).astype(np.float32), repeats=5)
    same = np.array_equal(out, ref) and np.array_equal(out, raw.astype(np.float32))
    return Row("read a Rice-compressed raw frame (.fits.fz, a tile per row)", f"{size}^2 uint16",
               t_trex, "fitsio (cfitsio) read + float32", t_peer,
               f"{path.stat().st_size / raw.nbytes:.2f} of the raw size; "
               f"identical to cfitsio's and to the frame written: {same}")


def numpy_master(paths: list[Path], nsigma: float = 3.0) -> np.ndarray:
    """Read every frame into one cube; mean of the values within nsigma std of the median."""
    cube = np.stack([fitsio.read(str(p)).astype(np.float32) for p in paths])
    median = np.median(cube, axis=0)
    std = np.std(cube, axis=0)
    keep = np.abs(cube - median) <= nsigma * std
    return (np.sum(cube * keep, axis=0) / np.maximum(keep.sum(axis=0), 1)).astype(np.float32)


def bench_master(size: int, nframes: int, folder: Path) -> Row:
    rng = np.random.default_rng(5)
    config = Config()
    paths = []
    for i in range(nframes):
        paths.append(folder / f"bias-{i:03d}.fits")
        write_raw(paths[-1], rng.normal(BIAS, READ, (size, size)), "bias")
    inputs = [(p, parse_header(read_header(p), config, p)) for p in paths]
    t_trex, master = median_time(lambda: build_master("bias", inputs, config.calibrate))
    t_np, ref = median_time(lambda: numpy_master(paths))
    diff = np.abs(master.image.astype(float) - ref) / (READ / np.sqrt(nframes))
    check = (f"|trex - numpy| / sigma_mean: median {np.median(diff):.2f}, max {diff.max():.1f}; "
             f"{np.mean(diff > 0.01):.2%} of pixels differ by > 0.01 (clipping)")
    return Row(f"master bias from {nframes} raw frames on disk", f"{size}^2 x {nframes}",
               t_trex, "fitsio read + numpy clipped mean", t_np, check)


def run(quick: bool = False) -> list[Row]:
    sizes = [2048] if quick else [2048, 4096]
    with tempfile.TemporaryDirectory(prefix="trex-bench-cal-") as tmp:
        rows = [bench_frame(size, Path(tmp)) for size in sizes]
        rows += [bench_read(size, Path(tmp)) for size in sizes]
        rows.append(bench_master(2048, 5 if quick else 10, Path(tmp)))
    return rows
