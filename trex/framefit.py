"""One frame's magnitudes fitted to reference magnitudes: the zero-point pattern.

:func:`fit_frame` fits ``mag - ref_mag`` over a frame as a 2-D polynomial in
(x, y) plus linear terms in catalog magnitude and colour, weighted by the
errors, outliers weighted down smoothly (:func:`clip_weight`), each star's
correction from the fit without it (leave-one-out) and, optionally, the
local term of :mod:`trex.localterm` for structure finer than the polynomial.
Coordinates are scaled to [-1, 1] over ``extent`` (default: the range of the
stars used) so that the coefficients are well conditioned.  Pure array code:
the magnitude fit (:mod:`trex.magfit`) and the difference photometry's
transparency (:mod:`trex.diffphot`) use it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from trex.config import MagfitSection
from trex.localterm import Deletion, Neighbours, local_residual

#: default floor of the magnitude errors in the weights (``[magfit] min_error``)
MIN_ERROR = MagfitSection().min_error
#: a star's weight in the frame fit falls from 1 at ``clip_sigma`` robust sigmas to 0 at
#: this many times that: hard clipping let a star's transit flip a bright edge star
#: across the threshold and move a corner star's fit by 2-4 mmag (tests/test_signals.py);
#: a taper to 3x kept too much of the outliers (bright stars' arm RMS over the noise
#: 1.24 on tests/test_pipeline.py's night, 1.12 with hard clipping, within 1.2 at 2x)
CLIP_TAPER = 2.0


class MagfitError(ValueError):
    """Too few usable stars to fit a frame."""


class FrameFit(NamedTuple):
    correction: np.ndarray   # (nstars,) mag to subtract; NaN where the model has no input
    params: dict             # coefficients, term names and the coordinate scaling
    rms: float               # weighted rms of the fit residuals of the stars kept, mag
    nused: int               # stars kept after clipping


def polynomial_terms(order: int) -> list[tuple[int, int]]:
    """Exponents (i, j) of x^i y^j with i + j <= order, constant first."""
    return [(i, d - i) for d in range(order + 1) for i in range(d, -1, -1)]


def design_matrix(x: np.ndarray, y: np.ndarray, catmag: np.ndarray | None,
                  color: np.ndarray | None, params: dict) -> np.ndarray:
    """Columns of the model for stars at (x, y) (px) with catalog magnitude and colour."""
    u = (np.asarray(x, float) - params["x0"]) / params["xs"]
    v = (np.asarray(y, float) - params["y0"]) / params["ys"]
    columns = [u**i * v**j for i, j in polynomial_terms(params["order"])]
    if catmag is not None:
        columns.append(np.asarray(catmag, float) - params["mag0"])
    if color is not None:
        columns.append(np.asarray(color, float) - params["color0"])
    return np.column_stack(columns)


def _scaling(x, y, catmag, color, order, extent) -> dict:
    if extent is None:
        extent = (x.min(), x.max(), y.min(), y.max())
    x_lo, x_hi, y_lo, y_hi = (float(e) for e in extent)
    return {
        "order": order,
        "x0": 0.5 * (x_lo + x_hi), "xs": max(0.5 * (x_hi - x_lo), 1.0),
        "y0": 0.5 * (y_lo + y_hi), "ys": max(0.5 * (y_hi - y_lo), 1.0),
        "mag0": float(np.median(catmag)) if catmag is not None else 0.0,
        "color0": float(np.median(color)) if color is not None else 0.0,
    }


def fit_frame(mag: np.ndarray, magerr: np.ndarray, flag_ok: np.ndarray, ref_mag: np.ndarray,
              x: np.ndarray, y: np.ndarray, catmag: np.ndarray | None = None,
              color: np.ndarray | None = None, order: int = 2, clip_sigma: float = 3.0,
              clip_iters: int = 3, extent: tuple | None = None,
              min_error: float = MIN_ERROR, leave_one_out: bool = True,
              local_scale: float = 0.0, significance_z: float = 3.0,
              pairs: Neighbours | None = None) -> FrameFit:
    """Fit ``mag - ref_mag`` over one frame (all arrays (nstars,), same star order).

    Parameters
    ----------
    mag, magerr : the frame's magnitudes and errors (one aperture), mag.
    flag_ok : bool, stars allowed in the fit (good flags, magnitude range, ...).
    ref_mag : reference magnitudes of the same stars, mag.
    x, y : positions on the frame, px.
    catmag, color : catalog magnitude and colour (None: no such term).
    order : total degree of the polynomial in (x, y).
    clip_sigma, clip_iters : stars whose residual exceeds clip_sigma times the
        robust scatter (1.4826 MAD) of residual/error are weighted down, to zero
        at ``CLIP_TAPER`` times that (:func:`clip_weight`), and the fit repeated
        clip_iters times.  The weights change smoothly with the residuals, so a
        small change of one star (a transit) never moves the fit by a jump.
    extent : (xmin, xmax, ymin, ymax) px for the coordinate scaling
        (default: the stars used).
    min_error : errors below it are raised to it in the weights, mag.
    leave_one_out : each star kept in the fit gets the correction of the fit
        without it (exact deletion formula, no refit), so that a star's own
        signal (a transit, an eclipse) never drives its own correction; stars
        left out (flags, zero weight) get the fit's value, which does not use them.
    local_scale : > 0: add to every star's correction the Gaussian-weighted
        (sigma ``local_scale`` px) mean residual of the kept stars around it,
        itself excluded, shrunk by the structure's share of its variance
        (:func:`local_residual`): follows structure finer than the polynomial
        (thin clouds, vignetting); 0: off.
    significance_z : the structure is trusted in proportion to its significance
        (:func:`trex.localterm.significance`); 0: trusted whole.
    pairs : :func:`trex.localterm.neighbour_pairs` within 3 ``local_scale`` of
        candidates including every star of ``flag_ok`` (shared by a frame's apertures;
        default: built here).

    Returns
    -------
    FrameFit: ``correction`` to subtract from ``mag`` (leave-one-out for the
    stars kept), ``params`` (the fit with every kept star), ``rms``, ``nused``.
    Raises :class:`MagfitError` with fewer than twice as many usable stars as terms.
    """
    mag, magerr, ref_mag = (np.asarray(a, float) for a in (mag, magerr, ref_mag))
    x, y = np.asarray(x, float), np.asarray(y, float)
    inputs = [a for a in (mag, magerr, ref_mag, x, y, catmag, color) if a is not None]
    use = np.asarray(flag_ok, bool) & np.logical_and.reduce([np.isfinite(a) for a in inputs])
    use &= magerr > 0
    nterms = len(polynomial_terms(order)) + (catmag is not None) + (color is not None)
    if use.sum() < 2 * nterms:
        raise MagfitError(f"{use.sum()} usable stars for {nterms} magfit terms")
    params = _scaling(x[use], y[use], None if catmag is None else np.asarray(catmag)[use],
                      None if color is None else np.asarray(color)[use], order, extent)
    design = design_matrix(x, y, catmag, color, params)
    diff = mag - ref_mag
    coef, w, use = _robust_fit(design, diff, 1.0 / np.maximum(magerr, min_error), use,
                               2 * nterms, clip_sigma, clip_iters)
    model = design @ coef
    residual = (diff - model)[use]
    w2 = w[use] ** 2
    params["coef"] = coef
    params["terms"] = [f"x^{i} y^{j}" for i, j in polynomial_terms(order)] + (
        ["catmag"] if catmag is not None else []) + (["color"] if color is not None else [])
    if leave_one_out or local_scale > 0:
        fitted = Deletion(np.flatnonzero(use), residual, w[use],
                          np.linalg.qr(design[use] * w[use, None])[0])
        if leave_one_out:
            model[use] -= residual * fitted.factor
        if local_scale > 0:
            model += local_residual(x, y, fitted, local_scale, leave_one_out, significance_z,
                                    pairs)
    return FrameFit(model, params, float(np.sqrt(np.sum(w2 * residual**2) / w2.sum())),
                    int(use.sum()))


def _robust_fit(design: np.ndarray, diff: np.ndarray, weight: np.ndarray, usable: np.ndarray,
                min_stars: int, clip_sigma: float, clip_iters: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted least squares of ``diff`` on ``design`` over the ``usable`` stars,
    reweighted ``clip_iters`` times by :func:`clip_weight` (while at least ``min_stars``
    keep a weight): (coefficients, each star's final weight, the stars kept)."""
    use, down = usable, np.ones(len(diff))  # down: each star's robust weight factor
    for iteration in range(clip_iters + 1):
        w = weight * np.sqrt(down)
        coef = np.linalg.lstsq(design[use] * w[use, None], diff[use] * w[use], rcond=None)[0]
        if iteration == clip_iters:
            break
        # judged against the polynomial only: clipping against the local term would let a
        # star's own transit choose which of its neighbours enter its correction
        chi = (diff - design @ coef) * weight
        scale = 1.4826 * np.median(np.abs(chi[usable] - np.median(chi[usable])))
        new = np.where(usable, clip_weight(np.abs(chi) / (clip_sigma * scale)), 0.0) if scale > 0 \
            else down
        if np.count_nonzero(usable & (new > 0)) < min_stars:
            break
        down, use = new, usable & (new > 0)
    return coef, w, use


def clip_weight(t: np.ndarray) -> np.ndarray:
    """Robust weight factor of residuals ``t`` in units of the clipping threshold: 1 up
    to 1, falling smoothly, (1 - ((t - 1) / (CLIP_TAPER - 1))^2)^2, to 0 at CLIP_TAPER."""
    u = np.clip((np.asarray(t, float) - 1.0) / (CLIP_TAPER - 1.0), 0.0, 1.0)
    return (1.0 - u * u) ** 2


def spatial_pattern(params: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A fit's polynomial in (x, y) px without its constant term, at (x, y): mag (nstars,)."""
    nxy = len(polynomial_terms(params["order"]))
    return design_matrix(x, y, None, None, params)[:, 1:] @ params["coef"][1:nxy]
