"""Trend filtering (TFA, Kovacs et al. 2005): template selection and the fit.

Pure numpy (astropy for the periodogram), no I/O.

Templates are bright, well-covered, low-scatter stars spread over the field
on a spatial grid, excluding likely variables: stars whose scatter is far
above the scatter-magnitude trend of their neighbours in magnitude, and stars
whose Lomb-Scargle peak power stands out from that of the other candidates
(systematics give every star some peak, so the test is relative).

Each light curve is fitted by linear least squares (``numpy.linalg.lstsq``,
SVD based) as a constant plus a linear combination of the templates on the
common frame grid, and the fit is subtracted.  Frames where the target is
missing are left out of its fit; a missing template point counts as the
template's median (no correction from it on that frame).  Templates within
the exclusion radius of the target (the target itself included) are left out.
Stars that share the same missing frames and the same excluded templates are
solved together, one ``lstsq`` with many right-hand sides.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

log = logging.getLogger(__name__)


def default_template_count(nframes: int) -> int:
    """Templates used when ``tfa_templates`` is 0: one per 20 frames, 2 to 200.

    A fit with k templates on n frames absorbs about k/n of any signal's power,
    so k << n keeps transits (5 % at the default).
    """
    return int(np.clip(nframes // 20, 2, 200))


def scatter_trend_ratio(mag: np.ndarray, rms: np.ndarray, nbins: int = 10) -> np.ndarray:
    """Scatter of each star relative to the running median scatter at its magnitude.

    ``mag``, ``rms`` of shape (n,); returns shape (n,), NaN where unknown.
    """
    ok = np.isfinite(mag) & np.isfinite(rms) & (rms > 0)
    out = np.full(len(mag), np.nan)
    if ok.sum() < 3:
        return out
    edges = np.quantile(mag[ok], np.linspace(0, 1, min(nbins, ok.sum() // 3) + 1))
    which = np.clip(np.searchsorted(edges, mag[ok], side="right") - 1, 0, len(edges) - 2)
    logr = np.log(rms[ok])
    medians = np.array([np.median(logr[which == b]) if np.any(which == b) else np.nan
                        for b in range(len(edges) - 1)])
    centres = np.array([np.median(mag[ok][which == b]) if np.any(which == b) else np.nan
                        for b in range(len(edges) - 1)])
    fin = np.isfinite(medians)
    trend = np.interp(mag[ok], centres[fin], medians[fin])
    out[ok] = np.exp(logr - trend)
    return out


def peak_power(times: np.ndarray, lcs: np.ndarray, fmin: float | None = None,
               fmax: float | None = None) -> np.ndarray:
    """Highest Lomb-Scargle power (standard normalisation) of each light curve.

    ``times`` shape (nframes,) in days; ``lcs`` shape (nstars, nframes), NaN
    missing.  Frequencies from 2 / baseline to ``fmax`` (default: a quarter of
    the median sampling rate), 1/d.
    """
    from astropy.timeseries import LombScargle

    span = np.nanmax(times) - np.nanmin(times)
    step = np.nanmedian(np.diff(np.sort(times)))
    fmin = fmin or 2.0 / max(span, 1e-3)
    fmax = fmax or 0.25 / max(step, 1e-6)
    freq = np.linspace(fmin, max(fmax, 2 * fmin), 2000)
    out = np.full(len(lcs), np.nan)
    for i, lc in enumerate(lcs):  # one periodogram per candidate (a few hundred)
        ok = np.isfinite(lc) & np.isfinite(times)
        if ok.sum() > 10 and np.ptp(lc[ok]) > 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[i] = LombScargle(times[ok], lc[ok]).power(freq).max()
    return out


def grid_pick(x: np.ndarray, y: np.ndarray, score: np.ndarray, n: int) -> np.ndarray:
    """Indices of up to ``n`` stars spread over the field: a ceil(sqrt(n))^2 grid
    of cells, the best (lowest ``score``) star of each cell first, then the
    second best of each cell, and so on."""
    idx = np.flatnonzero(np.isfinite(x) & np.isfinite(y) & np.isfinite(score))
    if len(idx) <= n:
        return idx[np.argsort(score[idx], kind="stable")]
    g = int(np.ceil(np.sqrt(n)))
    cx = np.clip(((x[idx] - x[idx].min()) / (np.ptp(x[idx]) + 1e-9) * g).astype(int), 0, g - 1)
    cy = np.clip(((y[idx] - y[idx].min()) / (np.ptp(y[idx]) + 1e-9) * g).astype(int), 0, g - 1)
    cell = cy * g + cx
    order = np.lexsort((score[idx], cell))
    cell_sorted = cell[order]
    first = np.searchsorted(cell_sorted, cell_sorted, side="left")
    rank = np.arange(len(order)) - first
    pick = order[np.lexsort((score[idx][order], rank))][:n]
    return idx[pick]


def select_templates(mag: np.ndarray, rms: np.ndarray, coverage: np.ndarray, x: np.ndarray,
                     y: np.ndarray, n: int, *, min_coverage: float = 0.9,
                     max_ratio: float = 1.5, bright_fraction: float = 0.6) -> np.ndarray:
    """Candidate templates before the periodogram test: indices into the stars.

    Parameters (all shape (nstars,)): ``mag`` median magnitude, ``rms`` robust
    scatter (mag), ``coverage`` fraction of frames with a measurement, ``x``,
    ``y`` median position, px.  Keeps stars with ``coverage >= min_coverage``,
    scatter at most ``max_ratio`` times the trend at their magnitude, in the
    brightest ``bright_fraction`` of such stars (without the brightest 2 %,
    near saturation), and picks ``n`` of them over a spatial grid by scatter.
    """
    ratio = scatter_trend_ratio(mag, rms)
    ok = (coverage >= min_coverage) & np.isfinite(ratio) & (ratio <= max_ratio)
    if ok.sum() == 0:
        return np.zeros(0, dtype=int)
    lo, hi = np.quantile(mag[ok], [0.02 if ok.sum() > 50 else 0.0, bright_fraction])
    ok &= (mag >= lo) & (mag <= hi)
    score = np.where(ok, ratio, np.nan)
    return grid_pick(x, y, score, n)


def reject_variables(power: np.ndarray, nsigma: float = 5.0) -> np.ndarray:
    """Mask (True: keep) of candidates whose periodogram peak is not an outlier
    (above the median by ``nsigma`` robust sigmas) among the candidates."""
    ok = np.isfinite(power)
    if ok.sum() < 3:
        return ok
    med = np.median(power[ok])
    sigma = 1.4826 * np.median(np.abs(power[ok] - med))
    return ok & (power <= med + nsigma * max(sigma, 1e-3))


def exclusion(target_xy: np.ndarray, template_xy: np.ndarray, radius: float,
              target_ids: np.ndarray | None = None, template_ids: np.ndarray | None = None
              ) -> np.ndarray:
    """(ntargets, ntemplates) True where a template may not be used for a target:
    closer than ``radius`` px, or the same object id."""
    d2 = ((target_xy[:, None, :] - template_xy[None, :, :]) ** 2).sum(axis=-1)
    out = d2 < radius ** 2
    if target_ids is not None and template_ids is not None:
        out |= np.asarray(target_ids)[:, None] == np.asarray(template_ids)[None, :]
    return out


def tfa(mags: np.ndarray, templates: np.ndarray, excluded: np.ndarray | None = None,
        min_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Subtract the best-fitting combination of templates from each light curve.

    Parameters
    ----------
    mags : array, shape (nstars, nframes)
        EPD magnitudes on the common frame grid, NaN where missing.
    templates : array, shape (ntemplates, nframes)
        template light curves on the same grid, NaN where missing.
    excluded : bool array, shape (nstars, ntemplates), optional
        templates not to use for a star (see :func:`exclusion`).
    min_points : fewest points to fit (default 2 (ntemplates + 1)); stars with
        fewer come back all NaN.

    Returns
    -------
    (corrected, used) : corrected magnitudes, shape (nstars, nframes) (median
        kept, NaN where missing), and the templates used per star, bool
        (nstars, ntemplates).
    """
    mags = np.atleast_2d(np.asarray(mags, dtype=np.float64))
    nstars, ntemp = len(mags), len(templates)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        tmed = np.nanmedian(templates, axis=1, keepdims=True)
        med = np.nanmedian(mags, axis=1, keepdims=True)
    basis = np.nan_to_num(templates - tmed, nan=0.0).T  # (nframes, ntemp)
    excluded = np.zeros((nstars, ntemp), bool) if excluded is None else excluded.astype(bool)
    good = np.isfinite(mags)
    used = ~excluded
    need = min_points or 2 * (ntemp + 1)
    corrected = np.full_like(mags, np.nan)
    keys = np.packbits(np.concatenate([good, excluded], axis=1), axis=1)
    _, group = np.unique(keys, axis=0, return_inverse=True)
    for g in np.unique(group):
        members = np.flatnonzero(group.ravel() == g)
        rows, cols = good[members[0]], used[members[0]]
        if rows.sum() < max(need, cols.sum() + 2):
            used[members] = False
            continue
        design = np.column_stack([basis[:, cols], np.ones(len(basis))])
        target = (mags[members] - med[members]).T  # (nframes, nmembers)
        coef, *_ = np.linalg.lstsq(design[rows], target[rows], rcond=None)
        corrected[members] = mags[members] - (design @ coef).T
    return np.where(good, corrected, np.nan), used
