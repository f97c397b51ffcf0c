"""The numpy side of the classic fitsh chain (:mod:`trex.bench.fitshchain`).

What pipe-trex did in its own Python (or with ``fiarith``) between the fitsh
tools, written plainly with numpy and fitsio, no trex kernel:

* calibration: overscan (row median of ``BIASSEC``), trim (``TRIMSEC``),
  median-combined master bias, dark (per second) and flat, then
  ``(raw - bias - dark t) / flat`` written as float32 FITS for the tools (the
  chain then marks saturated pixels in the fitsh mask with ``fiign``);
* the catalog projected on the sky's tangent plane at the header pointing
  (``RA``, ``DEC``, ``PIXSCALE``; north up, east left, the simulated camera's
  orientation), the first guess grmatch matches to fistar's list;
* the ranking of frames for the astrometric and photometric references
  (fistar's S high, \\|D\\| low, sky low, many detections: trex's criteria);
* the magnitude fit: per frame and aperture, instrumental minus reference
  magnitude fitted by a 2-D polynomial in x, y (order 2) on stars of catalog
  magnitude 8-12 with 3 sigma-clipping passes (a single-reference fit, as
  pipe-trex's first pass);
* the per-frame light-curve rows that ``grcollect`` transposes.

Coordinates are fitsh's (centre of the first pixel at 0.5, 0.5) unless a name
says otherwise.  Star identifiers are catalog row indices (integers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import fitsio
import numpy as np
from astropy.time import Time

#: magnitude-fit settings (trex.toml's [magfit] defaults)
MAGFIT_ORDER, MAGFIT_BRIGHT, MAGFIT_FAINT, MAGFIT_SIGMA, MAGFIT_ITERS = 2, 8.0, 12.0, 3.0, 3


@dataclass
class Frame:
    """A calibrated object frame of the fitsh chain."""

    stem: str
    path: Path                       # calibrated float32 FITS
    exptime: float
    gain: float
    rjd: float                       # JD - 2400000, UTC mid-exposure
    pointing: tuple[float, float, float]  # RA, Dec (deg), arcsec/px
    shape: tuple[int, int]
    saturate: float
    products: dict = field(default_factory=dict)


def read_raw(path: Path) -> tuple[np.ndarray, dict]:
    """Image (float64) and header of the first HDU with data (``.fits.fz`` included)."""
    with fitsio.FITS(str(path)) as fits:
        hdu = next(h for h in fits if h.has_data())
        header = hdu.read_header()
        return hdu.read().astype(np.float64), {k: header[k] for k in header.keys()}


def _section(text: str) -> tuple[slice, slice]:
    """IRAF ``[x1:x2,y1:y2]`` (1-based, inclusive) as numpy (rows, columns) slices."""
    x1, x2, y1, y2 = (int(v) for v in re.findall(r"\d+", text))
    return slice(y1 - 1, y2), slice(x1 - 1, x2)


def overscan_trim(image: np.ndarray, header: dict) -> tuple[np.ndarray, np.ndarray | float]:
    """(image minus the row median of the overscan, trimmed; the overscan levels
    subtracted, trimmed: a column, or 0 without ``BIASSEC``)."""
    levels = np.median(image[_section(header["BIASSEC"])], axis=1)[:, None] \
        if "BIASSEC" in header else np.zeros((image.shape[0], 1))
    trim = _section(header["TRIMSEC"]) if "TRIMSEC" in header else (slice(None), slice(None))
    return (image - levels)[trim], levels[trim[0]]


def master_frames(calibrations: dict[str, list[Path]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bias, dark per second, normalised flat) medians of the night's calibration frames."""
    def stack(kind: str, prepare) -> np.ndarray:
        return np.median([prepare(*read_raw(p)) for p in calibrations[kind]], axis=0)

    bias = stack("bias", lambda im, h: overscan_trim(im, h)[0])
    dark = stack("dark", lambda im, h: (overscan_trim(im, h)[0] - bias) / float(h["EXPTIME"]))

    def flat_one(image, header):
        level = overscan_trim(image, header)[0] - bias - dark * float(header["EXPTIME"])
        return level / np.median(level)

    flat = stack("flat", flat_one)
    return bias, dark, flat / np.median(flat)


def calibrate(path: Path, masters: tuple, out: Path) -> Frame:
    """Calibrate one raw object frame, write it (float32), return its :class:`Frame`.

    ``Frame.saturate`` is the lowest calibrated value a saturated raw pixel can take
    on this frame, (SATURATE - overscan - bias - dark t) / flat, for fiign to mask.
    """
    image, header = read_raw(path)
    bias, dark, flat = masters
    exptime = float(header["EXPTIME"])
    level, overscan = overscan_trim(image, header)
    calibrated = ((level - bias - dark * exptime) / flat).astype(np.float32)
    fitsio.write(str(out), calibrated, clobber=True)
    saturate = float(header.get("SATURATE", 65535.0))
    lowest = np.min((saturate - overscan - bias - dark * exptime) / flat)
    mid = Time(header["DATE-OBS"], scale="utc").jd + exptime / 2 / 86400.0
    return Frame(stem=path.name.split(".")[0], path=out, exptime=exptime,
                 gain=float(header["GAIN"]), rjd=mid - 2400000.0,
                 pointing=(float(header["RA"]), float(header["DEC"]), float(header["PIXSCALE"])),
                 shape=calibrated.shape, saturate=float(lowest))


def read_catalog(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(objectid, ra, dec, mag) of a field catalog CSV (SPEC section 3)."""
    with open(path) as fh:
        names = fh.readline().strip().split(",")
    cols = [names.index(n) for n in ("objectid", "ra", "dec", "mag")]
    ids = np.loadtxt(path, delimiter=",", skiprows=1, usecols=cols[0], dtype=str, ndmin=1)
    ra, dec, mag = np.loadtxt(path, delimiter=",", skiprows=1, usecols=cols[1:], unpack=True,
                              ndmin=2)
    return ids, ra, dec, mag


def project_catalog(ra: np.ndarray, dec: np.ndarray, frame: Frame,
                    margin: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices, x, y) of the catalog stars whose gnomonic projection about the header
    pointing lands within the frame grown by ``margin``; x, y in fitsh pixels."""
    ra0, dec0, scale = np.radians(frame.pointing[0]), np.radians(frame.pointing[1]), frame.pointing[2]
    r, d = np.radians(ra), np.radians(dec)
    cosc = np.sin(dec0) * np.sin(d) + np.cos(dec0) * np.cos(d) * np.cos(r - ra0)
    xi = np.cos(d) * np.sin(r - ra0) / cosc
    eta = (np.cos(dec0) * np.sin(d) - np.sin(dec0) * np.cos(d) * np.cos(r - ra0)) / cosc
    ny, nx = frame.shape
    x = nx / 2 - np.degrees(xi) * 3600 / scale
    y = ny / 2 + np.degrees(eta) * 3600 / scale
    keep = ((cosc > 0) & (x > -margin * nx) & (x < (1 + margin) * nx)
            & (y > -margin * ny) & (y < (1 + margin) * ny))
    return np.flatnonzero(keep), x[keep], y[keep]


def inside(x: np.ndarray, y: np.ndarray, shape: tuple[int, int], border: float) -> np.ndarray:
    """Stars at least ``border`` px from every edge (fitsh pixels)."""
    ny, nx = shape
    return (x - 0.5 >= border) & (x - 0.5 <= nx - 1 - border) & \
        (y - 0.5 >= border) & (y - 0.5 <= ny - 1 - border)


def rank_frames(fistar_lists: list[Path]) -> np.ndarray:
    """Indices of the frames from best to worst: sum of ranks of median S (high), median
    \\|D\\| (low), median sky (low) and number of sources (high), from fistar lists
    (``id,x,y,bg,amp,s,d,k,flux,s/n``)."""
    stats = []
    for path in fistar_lists:
        table = np.loadtxt(path, usecols=(3, 5, 6), ndmin=2)
        stats.append((-np.median(table[:, 1]), np.median(np.abs(table[:, 2])),
                      np.median(table[:, 0]), -len(table)))
    ranks = np.argsort(np.argsort(np.asarray(stats), axis=0), axis=0).sum(axis=1)
    return np.argsort(ranks, kind="stable")


def median_s(fistar_list: Path) -> float:
    """Median PSF S (px^-2) of a fistar list: low S is a broad PSF."""
    return float(np.median(np.loadtxt(fistar_list, usecols=5, ndmin=1)))


def read_phot(path: Path, napertures: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ids, x, y, mags (n, napertures)) of fiphot's ``IXY,BbMm`` output (NaN when bad)."""
    table = np.loadtxt(path, ndmin=2)
    mags = table[:, [3 + 4 * a + 2 for a in range(napertures)]]
    return table[:, 0].astype(np.int64), table[:, 1], table[:, 2], mags


def _poly(x: np.ndarray, y: np.ndarray, shape: tuple[int, int], order: int) -> np.ndarray:
    u, v = 2 * x / shape[1] - 1, 2 * y / shape[0] - 1
    return np.stack([u ** i * v ** j for i in range(order + 1) for j in range(order + 1 - i)], 1)


def magfit(phot: tuple, reference: tuple, catmag: np.ndarray,
           shape: tuple[int, int]) -> np.ndarray:
    """Fitted magnitudes (n, napertures) of one frame's ``read_phot`` output against the
    reference frame's: m - P(x, y), P fitted to m - m_ref with sigma clipping."""
    ids, x, y, mags = phot
    ref_ids, _, _, ref_mags = reference
    _, here, there = np.intersect1d(ids, ref_ids, return_indices=True)
    fit = (catmag[ids[here]] >= MAGFIT_BRIGHT) & (catmag[ids[here]] <= MAGFIT_FAINT)
    design_all = _poly(x, y, shape, MAGFIT_ORDER)
    design = design_all[here]
    out = np.full_like(mags, np.nan)
    for a in range(mags.shape[1]):
        dm = mags[here, a] - ref_mags[there, a]
        use = fit & np.isfinite(dm)
        if use.sum() <= design.shape[1]:
            continue
        for _ in range(MAGFIT_ITERS):
            coef = np.linalg.lstsq(design[use], dm[use], rcond=None)[0]
            resid = dm - design @ coef
            sigma = 1.4826 * np.median(np.abs(resid[use]))
            new = use & (np.abs(resid) <= MAGFIT_SIGMA * max(sigma, 1e-6))
            if new.sum() <= design.shape[1] or np.array_equal(new, use):
                break
            use = new
        out[:, a] = mags[:, a] - design_all @ coef
    return out


def lightcurve_rows(frame: Frame, ncat: int, iphot: tuple, out: Path) -> int:
    """Write one frame's light-curve rows (``id rjd x y arm_0..2 irm_0..2``, the stars of
    the difference photometry) for grcollect; returns the number of rows."""
    ids, x, y, irm = iphot
    arm = np.full((ncat, irm.shape[1]), np.nan)
    phot_ids, arm_values = frame.products["arm"]
    arm[phot_ids] = arm_values
    table = np.column_stack([ids, np.full(ids.size, frame.rjd), x, y, arm[ids], irm])
    fmt = " ".join(["%d", "%.6f", "%.3f", "%.3f"] + ["%.5f"] * (2 * irm.shape[1]))
    np.savetxt(out, table, fmt=fmt)
    return int(ids.size)


def robust_rms(values: np.ndarray, minimum: int = 3) -> float:
    """1.4826 MAD of the finite values (NaN with fewer than ``minimum``)."""
    values = values[np.isfinite(values)]
    if values.size < minimum:
        return float("nan")
    return float(1.4826 * np.median(np.abs(values - np.median(values))))
