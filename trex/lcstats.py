"""Light-curve statistics and the theoretical noise of aperture photometry.

Pure numpy, no I/O.

* :func:`robust_stats` gives, for many light curves at once (a 2-D array with
  NaN for missing points), the median, the MAD, the RMS, the RMS after a
  3-sigma clip about the median and the number of points.
* :func:`noise_model` is the expected magnitude scatter of an aperture
  measurement from photon noise of the star, sky and read noise (including the
  error of the sky level estimated in the annulus), for the magnitude scale of
  trex (``mag = ZP - 2.5 log10(flux_ADU / exptime_s)``).  Scintillation and
  flat-field errors are not included: the curve is a floor, not a prediction.
* The ``lcstats`` table of the database has one row per star and aperture:
  ``projid``, ``objectid``, ``aperture``, catalog ``mag``, median position
  ``x``, ``y`` and for every magnitude prefix ``p`` (``aim``, ``arm``,
  ``aep``, ``atf``, ``irm``, ``iep``, ``itf``) the fields ``p_median``,
  ``p_mad``, ``p_rms``, ``p_crms`` (clipped) and ``p_n`` (:func:`lcstats_rows`,
  many stars at once);
  :func:`wide_table` turns a project's rows into one row per star.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

log = logging.getLogger(__name__)

#: 2.5 / ln 10: magnitude error per unit relative flux error
MAG_PER_FLUX = 2.5 / np.log(10.0)
#: magnitude columns (prefixes) summarised in the stats table, in order
STAT_PREFIXES = ("aim", "arm", "aep", "atf", "irm", "iep", "itf")
STAT_FIELDS = ("median", "mad", "rms", "crms", "n")  # the report's wide table


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


def stats_dtype(columns: list[str]) -> np.dtype:
    """Row dtype of the wide stats table (one row per star) for the magnitude ``columns``."""
    fields = [("objectid", "U256"), ("mag", "f8"), ("x", "f8"), ("y", "f8")]
    for col in columns:
        fields += [(f"{col}_{f}", "i4" if f == "n" else "f8") for f in STAT_FIELDS]
    return np.dtype(fields)


def stat_columns(napertures: int) -> list[str]:
    """Magnitude columns summarised in the stats table."""
    return [f"{p}_{i:03d}" for p in STAT_PREFIXES for i in range(napertures)]


def night_index(rjd: np.ndarray, gap: float) -> np.ndarray:
    """Night number (0, 1, ...) of each time of a light curve in time order: a new night
    starts after a gap longer than ``gap`` days."""
    return np.concatenate([[0], np.cumsum(np.diff(rjd) > gap)]) if len(rjd) else \
        np.zeros(0, np.int64)


#: bytes of one block of nights padded to a common length (float64); the statistics
#: of a block take a few times as much
BLOCK_BYTES = 16 << 20


def lcstats_rows(stars: list[tuple[np.ndarray, dict]], napertures: int,
                 gap: float) -> dict[str, np.ndarray]:
    """The ``lcstats`` rows (numpy columns) of many light curves at once, star by star,
    one row per aperture.

    Parameters
    ----------
    stars : list of (rows, info)
        a star's light-curve rows in time order (``rjd``, days, and the magnitudes of
        :func:`stat_columns`, NaN where missing; any number of rows, also none) and its
        ``info`` (``projid``, ``objectid``, catalog ``mag``, ``x``, ``y``).
    napertures : int
    gap : float
        days: a night ends at a longer gap between two rows (as :func:`night_index`).

    Returns
    -------
    dict of arrays of shape (len(stars) * napertures,), ``{}`` for no stars:
    ``projid``, ``objectid``, ``aperture`` (int16), ``mag``, ``x``, ``y`` and for every
    magnitude prefix ``p``:

    * ``p_n``, ``p_mean``, ``p_rms``: finite points, their mean and standard deviation
      (ddof 1), over all the rows;
    * ``p_median``, ``p_mad``: the nights' medians and MADs (unscaled) averaged with the
      nights' points as weights; ``p_crms``: the nights' clipped RMS pooled,
      sqrt(sum (n_k - 1) crms_k^2 / sum (n_k - 1)); ``p_nights``: nights with points.

    The robust figures follow the scatter within nights, not night-to-night drifts,
    and combine exactly over nights (:func:`combine`), so a night added to a light
    curve updates them from its own rows."""
    if not stars:
        return {}
    n, infos = napertures, [info for _, info in stars]
    out = {"projid": np.repeat(np.array([i["projid"] for i in infos]), n),
           "objectid": np.repeat(np.array([i["objectid"] for i in infos]), n),
           "aperture": np.tile(np.arange(n, dtype=np.int16), len(stars))}
    for name in ("mag", "x", "y"):
        out[name] = np.repeat(np.array([i[name] for i in infos], dtype=np.float64), n)
    columns = stat_columns(napertures)
    mags = np.empty((sum(len(rows) for rows, _ in stars), len(columns)))  # (points, m)
    for j, col in enumerate(columns):
        mags[:, j] = np.concatenate([rows[col] for rows, _ in stars])
    rjd = np.concatenate([rows["rjd"] for rows, _ in stars]).astype(np.float64)
    star = np.repeat(np.arange(len(stars)), [len(rows) for rows, _ in stars])
    starts = _night_starts(star, rjd, gap)
    acc = _over_nights(_night_blocks(mags, starts),
                       np.bincount(star[starts], minlength=len(stars)))
    for i, prefix in enumerate(STAT_PREFIXES):
        for f in ACCUMULATED:
            out[f"{prefix}_{f}"] = acc[f][:, i * n:(i + 1) * n].reshape(-1).astype(
                np.int64 if f in ("n", "nights") else np.float64)
    return out


def _night_starts(star: np.ndarray, rjd: np.ndarray, gap: float) -> np.ndarray:
    """Indices of the first points of the nights of light curves one after the other
    (``star``: the light curve of each point, ``rjd``: its time, days, in time order
    within a light curve): a night starts with a light curve or after a gap longer than
    ``gap`` days."""
    new = np.ones(len(star), bool)
    new[1:] = (star[1:] != star[:-1]) | (np.diff(rjd) > gap)
    return np.flatnonzero(new)


def _night_blocks(mags: np.ndarray, starts: np.ndarray) -> dict[str, np.ndarray]:
    """The accumulated fields, shape (nights, m), of the nights of ``mags`` (points, m)
    starting at ``starts``: nights sorted by length and padded with NaN in blocks of at
    most BLOCK_BYTES (or one night)."""
    nseg, m = len(starts), mags.shape[1]
    lengths = np.diff(np.append(starts, len(mags)))
    seg = np.repeat(np.arange(nseg), lengths)  # night of each point
    order = np.argsort(lengths, kind="stable")
    rank = np.empty(nseg, np.int64)
    rank[order] = np.arange(nseg)
    points = np.argsort(rank[seg], kind="stable")  # the points, night by night as sorted
    ends = np.cumsum(lengths[order])
    out = {f: np.empty((nseg, m)) for f in ACCUMULATED}
    cap, i = BLOCK_BYTES // (8 * max(m, 1)), 0
    while i < nseg:
        grow = np.arange(1, nseg - i + 1) * lengths[order[i:]]  # block size if it ends there
        end = i + max(1, int(np.count_nonzero(grow <= cap)))
        mine = points[(ends[i - 1] if i else 0):ends[end - 1]]
        padded = np.full((end - i, m, lengths[order[end - 1]]), np.nan)
        padded[rank[seg[mine]] - i, :, mine - starts[seg[mine]]] = mags[mine]
        for f, values in _night(padded).items():
            out[f][order[i:end]] = values
        i = end
    return out


def _over_nights(nights: dict[str, np.ndarray], count: np.ndarray) -> dict[str, np.ndarray]:
    """The accumulated fields, shape (stars, m), of stars with ``count`` nights each,
    their nights' fields (``nights``, shape (sum(count), m)) star by star."""
    first, m = np.cumsum(count) - count, nights["n"].shape[1]
    acc = {f: np.array(v).reshape(len(count), m) for f, v in _empty(len(count) * m).items()}
    for k in range(int(count.max(initial=0))):
        who = np.flatnonzero(count > k)
        both = _combine({f: acc[f][who] for f in ACCUMULATED},
                        {f: nights[f][first[who] + k] for f in ACCUMULATED})
        for f in ACCUMULATED:
            acc[f][who] = both[f]
    return acc


#: the ``lcstats`` fields of each prefix (see :func:`lcstats_rows`)
ACCUMULATED = ("n", "nights", "mean", "rms", "median", "mad", "crms")


def _empty(m: int) -> dict[str, np.ndarray]:
    zero = np.zeros(m)
    return {"n": zero, "nights": zero, "mean": np.full(m, np.nan), "rms": np.full(m, np.nan),
            "median": np.full(m, np.nan), "mad": np.full(m, np.nan), "crms": np.full(m, np.nan)}


def _night(mags: np.ndarray) -> dict[str, np.ndarray]:
    """The accumulated fields of one night's magnitudes (m columns, k points)."""
    st = robust_stats(mags)
    n = st["n"].astype(np.float64)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(mags, axis=-1)
    return {"n": n, "nights": (n > 0).astype(np.float64), "mean": mean, "rms": st["rms"],
            "median": st["median"], "mad": st["mad"], "crms": st["crms"]}


def _weighted(a, wa, b, wb):
    """(wa a + wb b) / (wa + wb), taking the side with a weight where the other has none."""
    with np.errstate(invalid="ignore", divide="ignore"):
        both = (np.where(wa > 0, wa * np.nan_to_num(a), 0.0)
                + np.where(wb > 0, wb * np.nan_to_num(b), 0.0)) / (wa + wb)
    return np.where(wa + wb > 0, both, np.nan)


def _combine(a: dict, b: dict) -> dict[str, np.ndarray]:
    """The accumulated fields of two sets of nights (Chan et al. for mean and rms)."""
    n = a["n"] + b["n"]
    delta = np.nan_to_num(b["mean"]) - np.nan_to_num(a["mean"])
    m2a = np.where(a["n"] > 1, (a["n"] - 1) * np.nan_to_num(a["rms"]) ** 2, 0.0)
    m2b = np.where(b["n"] > 1, (b["n"] - 1) * np.nan_to_num(b["rms"]) ** 2, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        m2 = m2a + m2b + np.where((a["n"] > 0) & (b["n"] > 0), delta**2 * a["n"] * b["n"] / n, 0.0)
        rms = np.where(n > 1, np.sqrt(m2 / (n - 1)), np.nan)
    pa, pb = a["n"] - a["nights"], b["n"] - b["nights"]  # the pooled crms weights
    crms2 = _weighted(a["crms"] ** 2, np.where(np.isfinite(a["crms"]), pa, 0.0),
                      b["crms"] ** 2, np.where(np.isfinite(b["crms"]), pb, 0.0))
    return {"n": n, "nights": a["nights"] + b["nights"],
            "mean": _weighted(a["mean"], a["n"], b["mean"], b["n"]), "rms": rms,
            "median": _weighted(a["median"], a["n"], b["median"], b["n"]),
            "mad": _weighted(a["mad"], a["n"], b["mad"], b["n"]), "crms": np.sqrt(crms2)}


def combine(old: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``lcstats`` rows of light curves to which ``new``'s nights were added: ``new``
    (:func:`lcstats_rows` of the added rows) combined with ``old`` (the rows of the same
    stars and apertures as recorded, in the same order)."""
    out = dict(new)
    for prefix in STAT_PREFIXES:
        acc = _combine({f: np.asarray(old[f"{prefix}_{f}"], float) for f in ACCUMULATED},
                       {f: np.asarray(new[f"{prefix}_{f}"], float) for f in ACCUMULATED})
        for f in ACCUMULATED:
            out[f"{prefix}_{f}"] = acc[f].astype(np.int64) if f in ("n", "nights") else acc[f]
    return out


def lcinfo_of(stats: dict[str, np.ndarray], info: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``lcinfo`` columns of light curves from their aperture-0 ``lcstats`` rows (in the
    order of ``info``'s objectids): points, median, MAD and RMS of the first of atf, aep,
    arm, aim with a point; ``info`` gives projid, objectid, path, rjd_min, rjd_max."""
    first = np.asarray(stats["aperture"]) == 0
    where = {oid: i for i, oid in enumerate(np.asarray(stats["objectid"])[first].tolist())}
    at = np.array([where[o] for o in info["objectid"].tolist()], dtype=np.int64)
    out = dict(info)
    nobs, median, mad, rms = (np.zeros(len(at)), np.full(len(at), np.nan),
                              np.full(len(at), np.nan), np.full(len(at), np.nan))
    chosen = np.zeros(len(at), bool)
    for prefix in ("atf", "aep", "arm", "aim"):
        n = np.asarray(stats[f"{prefix}_n"], float)[first][at]
        take = ~chosen & (n > 0)
        nobs[take] = n[take]
        for target, field in ((median, "median"), (mad, "mad"), (rms, "rms")):
            target[take] = np.asarray(stats[f"{prefix}_{field}"], float)[first][at][take]
        chosen |= take
    out.update(nobs=nobs.astype(np.int64), median_mag=median, mad=mad, rms=rms)
    return out


def wide_table(columns: dict[str, np.ndarray], napertures: int) -> np.ndarray:
    """The ``lcstats`` rows of a project (``Queries.lcstats``) as one row per star
    (``stats_dtype``: ``aim_000_median`` ...), the layout the report plots."""
    ids = np.asarray(columns.get("objectid", []))
    stars, first = np.unique(ids, return_index=True) if len(ids) else (ids, ids)
    table = np.zeros(len(stars), dtype=stats_dtype(stat_columns(napertures)))
    table["objectid"] = stars
    for name in ("mag", "x", "y"):
        table[name] = columns[name][first] if len(stars) else []
    where = np.searchsorted(stars, ids)
    for a in range(napertures):
        mine = np.asarray(columns["aperture"]) == a
        for prefix in STAT_PREFIXES:
            for f in STAT_FIELDS:
                values = np.asarray(columns[f"{prefix}_{f}"])[mine]
                table[f"{prefix}_{a:03d}_{f}"][where[mine]] = np.nan_to_num(values) if f == "n" \
                    else values
    return table


def columns_of(rows: list[dict]) -> dict[str, np.ndarray]:
    """Equally long numpy columns of dicts with the same keys: text, int64 (integers
    only) or float64 (None -> NaN)."""
    columns = {}
    for name in rows[0] if rows else ():
        values = [row[name] for row in rows]
        if all(isinstance(v, str) for v in values):
            columns[name] = np.array(values)
        elif all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            columns[name] = np.array(values, dtype=np.int64)
        else:
            columns[name] = np.array([np.nan if v is None else v for v in values],
                                     dtype=np.float64)
    return columns
