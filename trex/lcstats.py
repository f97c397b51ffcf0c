"""Light-curve statistics and the theoretical noise of aperture photometry.

Pure numpy, no I/O except the stats table of :func:`write_stats`.

* :func:`robust_stats` gives, for many light curves at once (a 2-D array with
  NaN for missing points), the median, the MAD, the RMS, the RMS after a
  3-sigma clip about the median and the number of points.
* :func:`noise_model` is the expected magnitude scatter of an aperture
  measurement from photon noise of the star, sky and read noise (including the
  error of the sky level estimated in the annulus), for the magnitude scale of
  trex (``mag = ZP - 2.5 log10(flux_ADU / exptime_s)``).  Scintillation and
  flat-field errors are not included: the curve is a floor, not a prediction.
* The stats table ``LC/<projid>/lcstats.fits`` has one row per star:
  ``objectid``, catalog ``mag``, median position ``x``, ``y`` and for every
  magnitude column ``c`` (``aim_000``, ``arm_000``, ``aep_000`` ...) the
  fields ``c_median``, ``c_mad``, ``c_rms``, ``c_crms`` (clipped) and ``c_n``.
  The objectid is its FITS text (:func:`trex.lcformat.id_text`: the id itself
  unless it holds characters other than printable ASCII, or ``%``).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import fitsio
import numpy as np

from trex.fits import atomic_path
from trex.lcformat import id_text

log = logging.getLogger(__name__)

#: 2.5 / ln 10: magnitude error per unit relative flux error
MAG_PER_FLUX = 2.5 / np.log(10.0)
#: magnitude columns (prefixes) summarised in the stats table, in order
STAT_PREFIXES = ("aim", "arm", "aep", "atf", "irm", "iep", "itf")
STAT_FIELDS = ("median", "mad", "rms", "crms", "n")


def robust_stats(mags: np.ndarray, clip: float = 3.0) -> dict[str, np.ndarray]:
    """Scatter statistics of light curves along the last axis.

    Parameters
    ----------
    mags : array, shape (..., npoints)
        magnitudes, NaN where missing.
    clip : float
        the clipped RMS keeps points within ``clip`` * 1.4826 MAD of the median.

    Returns
    -------
    dict of arrays of shape (...): ``median``, ``mad`` (median absolute
    deviation, mag, not scaled), ``rms`` (standard deviation about the mean),
    ``crms`` (same after clipping) and ``n`` (finite points, int).
    NaN where a light curve has no (or, for the RMS, one) finite point.
    """
    mags = np.asarray(mags, dtype=np.float64)
    good = np.isfinite(mags)
    n = good.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows give NaN
        median = nanmedian(mags)
        dev = np.abs(mags - median[..., None])
        mad = nanmedian(dev)
        rms = np.nanstd(mags, axis=-1, ddof=1)
        keep = dev <= clip * 1.4826 * np.maximum(mad, 1e-12)[..., None]
        crms = np.nanstd(np.where(keep, mags, np.nan), axis=-1, ddof=1)
    return {"median": median, "mad": mad, "rms": rms, "crms": crms, "n": n}


def lcinfo_stats(rows: np.ndarray, columns: tuple[str, ...]) -> dict:
    """The ``lcinfo`` statistics of a light curve: points, time span, and median,
    MAD and RMS (None where undefined) of the first of ``columns`` that has a
    finite value (the last one otherwise)."""
    column = next((c for c in columns if np.isfinite(rows[c]).any()), columns[-1])
    st = robust_stats(rows[column].astype(np.float64))
    good = int(st["n"])
    return {"nobs": good, "rjd_min": float(rows["rjd"].min()),
            "rjd_max": float(rows["rjd"].max()),
            "median_mag": float(st["median"]) if good else None,
            "mad": float(st["mad"]) if good else None,
            "rms": float(st["rms"]) if good > 1 else None}


def nanmedian(values: np.ndarray) -> np.ndarray:
    """``np.nanmedian`` along the last axis, by one sort (NaN sorts last): numpy's
    own goes through masked arrays for short axes, ~0.5 ms a light curve."""
    if not values.shape[-1]:
        return np.full(values.shape[:-1], np.nan)
    count = (~np.isnan(values)).sum(axis=-1)[..., None]
    ordered = np.sort(values, axis=-1)
    low = np.take_along_axis(ordered, np.maximum((count - 1) // 2, 0), axis=-1)
    high = np.take_along_axis(ordered, np.maximum(count // 2, 0), axis=-1)
    return np.where(count > 0, 0.5 * (low + high), np.nan)[..., 0]


def aperture_radii(apertures) -> list[tuple[float, float, float]]:
    """(radius, annulus inner, annulus width) in px of ``config.photometry.apertures``."""
    out = []
    for spec in apertures:
        parts = [float(v) for v in str(spec).split(":")]
        out.append((parts[0], parts[1] if len(parts) > 1 else np.nan,
                    parts[2] if len(parts) > 2 else np.nan))
    return out


def noise_model(mag, *, zeropoint: float, exptime: float, gain: float, rdnoise: float,
                sky: float, radius: float, annulus: tuple[float, float] | None = None
                ) -> dict[str, np.ndarray]:
    """Expected magnitude error of aperture photometry.

    Parameters
    ----------
    mag : array, shape (n,)
        magnitudes on the trex scale, ``mag = zeropoint - 2.5 log10(F / exptime)``
        with F the flux in ADU.
    zeropoint : mag;  exptime : s;  gain : e-/ADU;  rdnoise : e- per pixel
    sky : sky level, ADU per pixel
    radius : aperture radius, px (area pi r^2)
    annulus : (inner radius, width) of the sky annulus, px, or None to ignore
        the error of the sky estimate.

    Returns
    -------
    dict of arrays of shape (n,), mag: ``total`` and its parts ``star``
    (photon noise of the star), ``sky`` (sky photons and the sky estimate),
    ``read`` (read noise, also through the sky estimate).
    """
    mag = np.asarray(mag, dtype=np.float64)
    star_e = gain * exptime * 10.0 ** (-0.4 * (mag - zeropoint))
    npix = np.pi * radius ** 2
    factor = 1.0
    if annulus is not None and np.all(np.isfinite(annulus)):
        inner, width = annulus
        nsky = np.pi * ((inner + width) ** 2 - inner ** 2)
        factor = 1.0 + npix / nsky
    var_sky = npix * factor * gain * sky
    var_read = npix * factor * rdnoise ** 2
    parts = {"star": star_e, "sky": var_sky, "read": var_read}
    out = {name: MAG_PER_FLUX * np.sqrt(var) / star_e for name, var in parts.items()}
    out["total"] = MAG_PER_FLUX * np.sqrt(star_e + var_sky + var_read) / star_e
    return out


def stats_dtype(columns: list[str], idbytes: int = 64) -> np.dtype:
    """Row dtype of the stats table for the magnitude ``columns``; the objectid
    field holds ``idbytes`` (at least 64) characters."""
    fields = [("objectid", f"S{max(64, idbytes)}"), ("mag", "f8"), ("x", "f8"), ("y", "f8")]
    for col in columns:
        fields += [(f"{col}_{f}", "i4" if f == "n" else "f8") for f in STAT_FIELDS]
    return np.dtype(fields)


def stat_columns(napertures: int) -> list[str]:
    """Magnitude columns summarised in the stats table."""
    return [f"{p}_{i:03d}" for p in STAT_PREFIXES for i in range(napertures)]


def star_stats(rows: np.ndarray, objectid: str, mag: float, columns: list[str]) -> np.ndarray:
    """One stats-table row (``stats_dtype``) of a light curve's rows (``lc_dtype``)."""
    text = id_text(objectid).encode("ascii")
    out = np.zeros(1, dtype=stats_dtype(columns, len(text)))
    out["objectid"] = text
    out["mag"] = mag
    with np.errstate(invalid="ignore"):
        out["x"] = np.nanmedian(rows["xcc"]) if np.isfinite(rows["xcc"]).any() else np.nan
        out["y"] = np.nanmedian(rows["ycc"]) if np.isfinite(rows["ycc"]).any() else np.nan
    mags = np.stack([rows[c].astype(np.float64) for c in columns])
    stats = robust_stats(mags)
    for j, col in enumerate(columns):
        for f in STAT_FIELDS:
            out[f"{col}_{f}"] = stats[f][j]
    return out


def _id_width(table: np.ndarray) -> int:
    """Characters of the objectid field (fitsio reads it as unicode)."""
    field = table.dtype["objectid"]
    return field.itemsize // 4 if field.kind == "U" else field.itemsize


def _id_as_bytes(table: np.ndarray, width: int) -> np.ndarray:
    """``table`` in native byte order with an ``S<width>`` objectid field."""
    dtype = [(n, f"S{width}" if n == "objectid" else table.dtype[n].newbyteorder("="))
             for n in table.dtype.names]
    return table.astype(dtype)


def write_stats(path: Path, table: np.ndarray, merge: bool = False) -> Path:
    """Write the stats table atomically; with ``merge`` keep the stars of an
    existing table that ``table`` does not replace."""
    if merge and path.exists():
        old = read_stats(path)
        if old.dtype.names == table.dtype.names:
            width = max(_id_width(old), _id_width(table))
            old, table = _id_as_bytes(old, width), _id_as_bytes(table, width)
            keep = ~np.isin(old["objectid"], table["objectid"])
            table = np.concatenate([old[keep], table])
    table = table[np.argsort(table["objectid"], kind="stable")]
    tmp, final = atomic_path(path)
    if tmp.exists():
        tmp.unlink()
    with fitsio.FITS(str(tmp), "rw", clobber=True) as fits:
        fits.write(None)
        fits.write(table, extname="LCSTATS")
    os.replace(tmp, final)
    log.info("light-curve statistics of %d stars in %s", len(table), final)
    return final


def read_stats(path: Path) -> np.ndarray:
    """The stats table (``stats_dtype``) of a ``lcstats.fits`` file."""
    with fitsio.FITS(str(path)) as fits:
        return fits["LCSTATS"].read()
