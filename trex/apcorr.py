"""Aperture corrections: the light a star loses outside its aperture, per star and frame.

An aperture of 2-3 px holds 55-85 % of a star's light, and less where the PSF
is broad (towards the corners of a wide-field frame, out of focus), so
aperture magnitudes carry a trend over the field that the magnitude fit
cannot see (it fits frames to a reference built from the same apertures).
This module measures, per frame, an empirical curve of growth:

1. Bright, isolated, well-measured stars are measured again in the radii of
   the apertures out to a large radius ``R`` (sky from an annulus just beyond
   it; :func:`growth_fluxes`).
2. The light beyond ``R`` is extrapolated with a Moffat profile
   ``1 - (1 + r²/α²)^(1-β)`` whose β and ratio α/w are fitted to the
   curve of growth of those stars between 0.35 R and R
   (:func:`fit_tail`); w is the star's Gaussian PSF width from the frame's
   S, D, K map (σ² = 1/sqrt(S² - D² - K²), the geometric mean of the axes).
3. Each star's correction ``2.5 log10(F_a / F_total)`` (mag, <= 0: the
   corrected magnitude is ``aim + apc``, brighter) is fitted per aperture as
   a quadratic in w (:func:`fit_model`), clipped; every star of the frame
   gets the value at its own w (:func:`frame_corrections`).

The PSF shape over the field thus enters through the S, D, K map (fitted on
hundreds of sources), and the profile (its wings included) through the
measured curve of growth.  Pure array code, no I/O; :func:`table_corrections`
(the photometry stage's entry) logs a warning when a frame gets none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial import cKDTree

from trex.config import Config

log = logging.getLogger(__name__)

#: ``trex.photometry.aperture_photometry`` (passed in: photometry calls this module)
Photometer = Callable[..., dict]
MAG_ERR_FACTOR = 2.5 / np.log(10.0)

#: radii of the curve of growth beyond the apertures, as fractions of ``R``
GROWTH_STEPS = (0.35, 0.45, 0.6, 0.8, 1.0)
#: bounds of the Moffat beta of the tail (a Gaussian is beta -> infinity)
BETA_RANGE = (1.2, 30.0)


class ApcorrError(ValueError):
    """Too few stars to measure the curve of growth of a frame."""


class Tail(NamedTuple):
    beta: float    # Moffat exponent of the wings
    ratio: float   # Moffat alpha / Gaussian width w


def psf_width(s: np.ndarray, d: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Gaussian PSF width w (px): sqrt of the geometric mean of the axes' variances,
    σ² = 1 / sqrt(S² - D² - K²), from the S, D, K shape (px⁻², arrays of one shape)."""
    s, d, k = (np.asarray(a, float) for a in (s, d, k))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(1.0 / np.sqrt((s + d) * (s - d) - k * k))


def moffat_outside(radius: np.ndarray | float, width: np.ndarray, tail: Tail) -> np.ndarray:
    """Fraction of a circular Moffat's light beyond ``radius`` px, for Gaussian widths
    ``width`` (px): (1 + r² / (ratio w)²)^(1 - beta)."""
    alpha2 = (tail.ratio * np.asarray(width, float)) ** 2
    return (1.0 + np.asarray(radius, float) ** 2 / alpha2) ** (1.0 - tail.beta)


def isolated(x: np.ndarray, y: np.ndarray, flux: np.ndarray, radius: float,
             contrast: float) -> np.ndarray:
    """True for stars with no other star within ``radius`` px brighter than
    ``contrast`` times their flux (arrays (nstars,), ADU)."""
    tree = cKDTree(np.column_stack([x, y]))
    pairs = tree.query_pairs(radius, output_type="ndarray")
    bad = np.zeros(len(x), bool)
    for a, b in (pairs.T, pairs.T[::-1]):
        bad[a[flux[b] > contrast * flux[a]]] = True
    return ~bad


def growth_fluxes(photometer: Photometer, image: np.ndarray, x: np.ndarray, y: np.ndarray,
                  radius: float, gain: float, mask: np.ndarray | None = None,
                  sky_method: str = "mode") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fluxes of stars at (x, y) px in the radii ``GROWTH_STEPS`` x ``radius``, with the
    sky of the annulus from ``radius + 2`` to ``radius + 8`` px, measured by
    ``photometer`` (:func:`trex.photometry.aperture_photometry`).

    Returns (radii (nradii,) px, flux (nstars, nradii) ADU, snr (nstars,): flux / error
    at R, 0 where any radius is flagged).
    """
    radii = radius * np.asarray(GROWTH_STEPS)
    res = photometer(image, x, y, radii, (radius + 2.0, radius + 8.0), gain=gain,
                     mask=mask, sky_method=sky_method)
    clean = np.all(res["flag"] == 0, axis=1) & np.all(res["flux"] > 0, axis=1)
    return radii, res["flux"], np.where(clean, res["flux"][:, -1] / res["fluxerr"][:, -1], 0.0)


def fit_tail(radii: np.ndarray, flux: np.ndarray, width: np.ndarray,
             snr: np.ndarray) -> Tail:
    """Moffat wings of a curve of growth: beta and alpha / w fitted to
    ``flux / flux[:, -1]`` (stars (nstars,) x radii (nradii,), px and ADU; the last
    radius is R) as (1 - T(r)) / (1 - T(R)), T = :func:`moffat_outside`; ``width``
    (nstars,) px, ``snr`` (nstars,) the weights (flux / error in R); soft-L1 loss."""
    ratio = flux[:, :-1] / flux[:, -1:]

    def residual(p):
        outside = moffat_outside(radii[None, :], width[:, None], Tail(*p))
        model = (1.0 - outside[:, :-1]) / (1.0 - outside[:, -1:])
        return ((model - ratio) * snr[:, None]).ravel()

    fit = least_squares(residual, x0=(3.0, 2.0), bounds=((BETA_RANGE[0], 0.3),
                                                          (BETA_RANGE[1], 20.0)),
                        loss="soft_l1", f_scale=3.0)
    return Tail(*fit.x)


class Model(NamedTuple):
    """Corrections as a quadratic in the PSF width w, per aperture."""

    coef: np.ndarray   # (3, napertures): constant, linear, quadratic in w - w0, mag
    w0: float          # px, the weighted mean width of the stars fitted
    low: float         # px, range of the widths fitted: beyond it the curve goes on
    high: float        # along its tangent (a quadratic extrapolates badly)


def fit_model(width: np.ndarray, correction: np.ndarray, error: np.ndarray,
              clip_sigma: float = 3.0, clip_iters: int = 3) -> Model:
    """The correction as a quadratic in w: ``correction`` (nstars, napertures) mag
    with errors ``error`` (nstars,) mag at widths ``width`` (nstars,) px; stars
    further than ``clip_sigma`` robust sigmas (of residual / error) are dropped
    and the fit repeated, at most ``clip_iters`` times."""
    weight = 1.0 / error
    w0 = float(np.sum(width * weight**2) / np.sum(weight**2))
    design = np.column_stack([np.ones_like(width), width - w0, (width - w0) ** 2])
    coef = np.empty((3, correction.shape[1]))
    for a in range(correction.shape[1]):
        keep = np.ones(len(width), bool)
        for _ in range(clip_iters + 1):
            c = np.linalg.lstsq(design[keep] * weight[keep, None],
                                correction[keep, a] * weight[keep], rcond=None)[0]
            chi = (correction[:, a] - design @ c) * weight
            scale = 1.4826 * np.median(np.abs(chi[keep]))
            new = np.abs(chi) <= clip_sigma * max(scale, 1e-6)
            if np.array_equal(new, keep) or new.sum() < 10:
                break
            keep = new
        coef[:, a] = c
    return Model(coef, w0, float(width.min()), float(width.max()))


def evaluate(model: Model, width: np.ndarray) -> np.ndarray:
    """Corrections (nstars, napertures) mag of ``model`` at widths ``width`` (nstars,) px."""
    width = np.asarray(width, float)[:, None]
    inside = np.clip(width, model.low, model.high) - model.w0
    c0, c1, c2 = model.coef
    slope = c1 + 2.0 * c2 * inside
    return c0 + c1 * inside + c2 * inside**2 + slope * (width - model.w0 - inside)


def frame_corrections(photometer: Photometer, image: np.ndarray, x: np.ndarray,
                      y: np.ndarray, flux: np.ndarray, ok: np.ndarray, width: np.ndarray, *,
                      radius: float, gain: float, mask: np.ndarray | None = None,
                      max_stars: int = 400, min_stars: int = 20, min_snr: float = 30.0,
                      contrast: float = 0.01, sky_method: str = "mode") -> tuple[np.ndarray, dict]:
    """Aperture corrections of every star of one frame (see the module docstring).

    Parameters
    ----------
    photometer : :func:`trex.photometry.aperture_photometry`.
    image : (ny, nx) calibrated frame, ADU; ``mask`` its bad pixels (non-zero).
    x, y : (nstars,) star positions, px.
    flux : (nstars, napertures) the stars' aperture fluxes, ADU (as measured
        for ``aim``: their own sky annuli).
    ok : (nstars,) bool, stars whose apertures are all clean (no flags).
    width : (nstars,) Gaussian PSF width at each star, px (:func:`psf_width`).
    radius : R, px, where the measured curve of growth ends.
    gain : e-/ADU.
    max_stars : the brightest this many usable stars measure the curve.
    min_stars : fewer usable stars raise :class:`ApcorrError`.
    min_snr : stars measured in R with a lower signal-to-noise ratio are not used.
    contrast : a star is used only without a neighbour brighter than this
        times its flux within R + 8 px.

    Returns
    -------
    (apc (nstars, napertures) mag to add to the aperture magnitudes, <= 0 for
    light lost; NaN where ``width`` is not finite, info dict: ``nstars``
    used, ``beta``, ``ratio`` of the tail, ``tail`` median light beyond R).
    """
    flux = np.asarray(flux, float)
    width = np.asarray(width, float)
    ny, nx = image.shape
    edge = radius + 8.0
    use = (np.asarray(ok, bool) & np.isfinite(width) & np.all(flux > 0, axis=1)
           & (x >= edge) & (x <= nx - 1 - edge) & (y >= edge) & (y <= ny - 1 - edge))
    use &= isolated(x, y, np.where(np.isfinite(flux[:, -1]), flux[:, -1], 0.0), edge, contrast)
    index = np.flatnonzero(use)
    index = index[np.argsort(-flux[index, -1])[:max_stars]]
    radii, growth, snr = growth_fluxes(photometer, image, x[index], y[index], radius, gain,
                                       mask, sky_method)
    good = snr >= min_snr
    index, growth, snr = index[good], growth[good], snr[good]
    if len(index) < min_stars:
        raise ApcorrError(f"{len(index)} bright isolated stars for the curve of growth, "
                          f"need {min_stars}")
    tail = fit_tail(radii, growth, width[index], snr)
    beyond = moffat_outside(radius, width[index], tail)
    total = growth[:, -1] / (1.0 - beyond)
    measured = 2.5 * np.log10(flux[index] / total[:, None])
    model = fit_model(width[index], measured, MAG_ERR_FACTOR / snr)
    info = {"nstars": len(index), "beta": tail.beta, "ratio": tail.ratio,
            "tail": float(np.median(beyond))}
    return evaluate(model, width), info


def table_corrections(photometer: Photometer, image: np.ndarray, mask: np.ndarray | None,
                      table: np.ndarray, config: Config, gain: float,
                      name: str = "frame") -> np.ndarray:
    """Aperture corrections (nstars, napertures) mag of a frame's ``aphot`` table
    (its ``xcc``, ``ycc``, ``flux_NNN``, ``aiq_NNN``, ``fsv``/``fdv``/``fkv``), with the
    ``[photometry] apcorr_*`` settings.  Zero, with a warning naming ``name``, when
    they are off or cannot be measured (too few stars, no PSF shape map)."""
    napertures = sum(1 for n in table.dtype.names if n.startswith("flux_"))
    zero = np.zeros((len(table), napertures))
    ph = config.photometry
    if ph.apcorr_radius <= 0:
        return zero
    flux = np.column_stack([table[f"flux_{a:03d}"] for a in range(napertures)])
    ok = np.all(np.column_stack([table[f"aiq_{a:03d}"] == 0 for a in range(napertures)]), axis=1)
    width = psf_width(table["fsv"], table["fdv"], table["fkv"])
    try:
        if not np.isfinite(width).any():
            raise ApcorrError("no PSF shape map")
        apc, info = frame_corrections(photometer, image, table["xcc"], table["ycc"], flux, ok,
                                      width, radius=ph.apcorr_radius, gain=gain, mask=mask,
                                      min_snr=ph.apcorr_min_snr, sky_method=ph.sky_method)
    except ApcorrError as err:
        log.info("%s: no aperture corrections (arm keeps the apertures' light loss): %s",
                 name, err)
        return zero
    log.debug("%s: aperture corrections from %d stars, Moffat beta %.2f, %.4f beyond R",
              name, info["nstars"], info["beta"], info["tail"])
    return np.where(np.isfinite(apc), apc, 0.0)
