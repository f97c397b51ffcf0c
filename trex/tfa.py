"""Trend filtering (TFA, Kovacs et al. 2005): template selection and the fit.

Numpy and a Cython kernel for the masked fits, no I/O.

Templates are bright, well-covered, low-scatter stars spread over the field
on a spatial grid, excluding likely variables: stars whose scatter is far
above the scatter-magnitude trend of their neighbours in magnitude, and stars
whose Lomb-Scargle peak power stands out from that of the other candidates
(systematics give every star some peak, so the test is relative).

Each light curve is fitted by linear least squares as a constant plus a linear
combination of the templates on the common frame grid, and the fit is
subtracted.  Frames where the target is
missing are left out of its fit; a missing template point counts as the
template's median (no correction from it on that frame).  Templates within
the exclusion radius of the target (the target itself included) are left out.
Stars that use the same templates share one design matrix: those fitted on
every frame are projected on it with one matrix product, the others are
fitted each on its own frames by a Cython kernel (Householder QR).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from trex._detrend import masked_fits
from trex._detrend import sustained_outliers as kernel_outliers
from trex.lcstats import nanmedian

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
    """Highest Lomb-Scargle power of each light curve: the generalised periodogram
    with a floating mean and equal weights (Zechmeister & Kuerster 2009, eq. 5-20;
    astropy's ``LombScargle`` default, standard normalisation), for all the light
    curves at once (sums over the frames as matrix products, each light curve over
    its own finite points).

    ``times`` shape (nframes,) in days; ``lcs`` shape (nstars, nframes), NaN
    missing.  Frequencies from 2 / baseline to ``fmax`` (default: a quarter of
    the median sampling rate), 1/d.  NaN for a light curve of 10 points or fewer,
    or a constant one.
    """
    span = np.nanmax(times) - np.nanmin(times)
    step = np.nanmedian(np.diff(np.sort(times)))
    fmin = fmin or 2.0 / max(span, 1e-3)
    fmax = max(fmax or 0.25 / max(step, 1e-6), 2 * fmin)
    # five frequencies per resolution element 1 / span, 100 to 2000 of them
    freq = np.linspace(fmin, fmax, int(np.clip(5 * span * (fmax - fmin), 100, 2000)))
    ok = np.isfinite(lcs) & np.isfinite(times)
    count = ok.sum(axis=1)
    w = ok / np.maximum(count, 1)[:, None]                   # weights summing to 1
    y = np.where(ok, lcs, 0.0)
    y = np.where(ok, y - (w * y).sum(axis=1, keepdims=True), 0.0)  # centred
    phase = 2 * np.pi * freq[:, None] * np.where(np.isfinite(times), times - np.nanmin(times), 0)
    cos, sin = np.cos(phase).T, np.sin(phase).T               # (nframes, nfreq)
    c, s = w @ cos, w @ sin
    yc, ys = (w * y) @ cos, (w * y) @ sin
    cc = w @ cos**2 - c * c
    ss = 1.0 - cc - c * c - s * s                            # sum w sin^2 = 1 - sum w cos^2
    cs = w @ (cos * sin) - c * s
    yy = (w * y * y).sum(axis=1)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        power = (ss * yc**2 + cc * ys**2 - 2 * cs * yc * ys) / (yy * (cc * ss - cs**2))
    out = np.max(power, axis=1, initial=-np.inf, where=np.isfinite(power))
    spread = (np.max(lcs, axis=1, initial=-np.inf, where=ok)
              - np.min(lcs, axis=1, initial=np.inf, where=ok))
    return np.where((count > 10) & (spread > 0) & np.isfinite(out), out, np.nan)


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
    (above the median by ``nsigma`` robust sigmas) among the candidates.  A
    candidate without a peak (too few points for a periodogram) is kept: there
    is no evidence against it."""
    ok = np.isfinite(power)
    if ok.sum() < 3:
        return np.ones(len(power), dtype=bool)
    med = np.median(power[ok])
    sigma = 1.4826 * np.median(np.abs(power[ok] - med))
    return ~ok | (power <= med + nsigma * max(sigma, 1e-3))


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


def template_modes(basis: np.ndarray, threshold: float = 1.3) -> np.ndarray:
    """The common modes of a template set: its principal components above noise.

    ``basis`` (nframes, ntemplates), median-subtracted, 0 where missing.  Each
    template is divided by its point-to-point noise, and the left singular
    vectors whose singular value exceeds ``threshold`` (sqrt(nframes) +
    sqrt(ntemplates)) -- the largest singular value of a pure unit-noise matrix
    -- are kept: shape (nframes, q), q <= ntemplates.  Fitting these instead of
    the raw templates adds far less template noise to the targets.
    """
    if basis.shape[1] == 0:
        return basis
    diff = np.diff(basis, axis=0)
    noise = 1.4826 * np.median(np.abs(diff - np.median(diff, axis=0)), axis=0) / np.sqrt(2)
    white = basis / np.maximum(noise, 1e-9)
    u, sv, _ = np.linalg.svd(white, full_matrices=False)
    limit = threshold * (np.sqrt(basis.shape[0]) + np.sqrt(basis.shape[1]))
    return u[:, sv > limit]


def _solve(mags: np.ndarray, basis: np.ndarray, fit: np.ndarray, used: np.ndarray,
           need: int, modes: bool) -> tuple[np.ndarray, np.ndarray]:
    """Models (nstars, nframes) fitted on the ``fit`` frames with the ``used``
    templates (or their common modes); also returns which stars could be fitted.
    Stars using the same templates share one design: those fitted on every frame
    are projected on it with one matrix product, the others are fitted each on its
    own frames by the kernel ``trex._detrend.masked_fits``."""
    model = np.full_like(mags, np.nan)
    fitted = np.zeros(len(mags), bool)
    _, group = np.unique(np.packbits(used, axis=1), axis=0, return_inverse=True)
    group = group.ravel()
    full = fit.all(axis=1)
    for g in np.unique(group):
        members = np.flatnonzero(group == g)
        cols = used[members[0]]
        least = max(need, cols.sum() + 2)
        design = np.column_stack([template_modes(basis[:, cols]) if modes else basis[:, cols],
                                  np.ones(len(basis))])
        whole = members[full[members]]
        if len(whole) and len(basis) >= least:
            model[whole] = _projection(mags[whole], design)
            fitted[whole] = True
        part = members[~full[members]]
        if len(part):
            out, ok = np.empty((len(part), len(basis))), np.empty(len(part), np.uint8)
            masked_fits(np.ascontiguousarray(design), np.where(fit[part], mags[part], 0.0),
                        np.ascontiguousarray(fit[part]).view(np.uint8), least, out, ok)
            model[part], fitted[part] = out, ok.astype(bool)
    return model, fitted


def _projection(values: np.ndarray, design: np.ndarray) -> np.ndarray:
    """Least-squares models of the rows of ``values`` (n, nframes) on the columns of
    ``design`` (nframes, q): their projections on its range (singular values under
    numpy.linalg.lstsq's default cut left out)."""
    u, sv, _ = np.linalg.svd(design, full_matrices=False)
    u = u[:, sv > np.finfo(float).eps * max(design.shape) * sv.max()] if len(sv) else u
    return (values @ u) @ u.T


def sustained_outliers(resid: np.ndarray, window: int, clip: float) -> np.ndarray:
    """Points (nstars, nframes) where the running mean of the residuals over
    ``window`` frames is more than ``clip`` robust sigmas from its median, and
    their neighbours within half a window: a transit or an eclipse, left out
    of the next TFA fit so the templates cannot absorb it (the Cython kernel
    ``trex._detrend.sustained_outliers``)."""
    out = np.empty(resid.shape, dtype=np.uint8)
    kernel_outliers(np.ascontiguousarray(resid, dtype=np.float64), int(window), float(clip), out)
    return out.view(bool)


def tfa(mags: np.ndarray, templates: np.ndarray, excluded: np.ndarray | None = None,
        min_points: int | None = None, window: int = 21, clip: float = 3.0,
        iters: int = 3, modes: bool = True) -> tuple[np.ndarray, np.ndarray]:
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
    window, clip, iters : after a fit, frames where the ``window``-frame
        running mean of the residuals departs by more than ``clip`` robust
        sigmas (see :func:`sustained_outliers`) are left out and the star is
        refitted, at most ``iters`` times.
    modes : fit the common modes of the templates (:func:`template_modes`)
        rather than the raw templates (classic TFA): the same trends, less noise.

    Returns
    -------
    (corrected, used) : corrected magnitudes, shape (nstars, nframes) (median
        kept, NaN where missing or not fitted), and the templates used per
        star, bool (nstars, ntemplates).
    """
    mags = np.atleast_2d(np.asarray(mags, dtype=np.float64))
    nstars, ntemp = len(mags), len(templates)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        tmed = nanmedian(np.asarray(templates, dtype=np.float64))[:, None]
        med = nanmedian(mags)[:, None]
    basis = np.nan_to_num(templates - tmed, nan=0.0).T  # (nframes, ntemp)
    excluded = np.zeros((nstars, ntemp), bool) if excluded is None else excluded.astype(bool)
    used = ~excluded
    need = min_points or 2 * (ntemp + 1)
    y = mags - med
    good = np.isfinite(y)
    fit = good.copy()
    model, fitted = _solve(y, basis, fit, used, need, modes)
    for _ in range(iters):
        refit = fitted & good.any(axis=1)
        bad = sustained_outliers(y - model, window, clip) & refit[:, None]
        again = np.flatnonzero(bad.any(axis=1) & ((fit & ~bad).sum(axis=1) >= need))
        if not len(again):
            break
        fit[again] &= ~bad[again]
        model[again], _ = _solve(y[again], basis, fit[again], used[again], need, modes)
    used[~fitted] = False
    return np.where(good & fitted[:, None], mags - model, np.nan), used
