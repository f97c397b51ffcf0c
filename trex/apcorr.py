"""Aperture corrections: the light a star loses outside its aperture, per star and frame.

An aperture of 2-3 px holds 55-85 % of a star's light, and less where the PSF
is broad (towards the corners of a wide-field frame, out of focus), so
aperture magnitudes carry a trend over the field that the magnitude fit
cannot see (it fits frames to a reference built from the same apertures).
This module measures, per frame, an empirical curve of growth:

1. Bright stars without a neighbour that could put light into their radii
   (:data:`ISOLATION`) are measured again in the radii of the apertures out
   to a large radius ``R``, with the sky of an annulus far enough out
   (:data:`GROWTH_SKY`) that the star's own wings do not raise it
   (:func:`growth_fluxes`); curves of growth unlike those of the stars of
   similar width (a satellite trail, a cosmic ray) are left out
   (:func:`odd_curves`).
2. The light beyond ``R`` is extrapolated with a Moffat profile
   ``1 - (1 + r²/α²)^(1-β)`` whose β and α(w) = ratio w0 (w/w0)^power are
   fitted to the curves of growth of those stars between 0.35 R and R
   (:func:`fit_tail`); w is the star's Gaussian PSF width from the frame's
   S, D, K map (σ² = 1/sqrt(S² - D² - K²), the geometric mean of the axes).
3. Each star's correction ``2.5 log10(F_a / F_total)`` (mag, <= 0: the
   corrected magnitude is ``aim + apc``, brighter) is fitted per aperture as
   a quadratic in w plus a term in the PSF's squared distortion χ² (an
   elongated PSF of the same w puts less light into a circle: for elliptical
   Gaussians with χ up to 0.35 the width alone is off by 0.012-0.014 mag)
   (:func:`fit_model`), clipped, each star weighted by its error with a floor
   (:data:`CORRECTION_FLOOR`); every star of the frame gets the value at its
   own w and χ² (:func:`frame_corrections`).

The PSF shape over the field thus enters through the S, D, K map (fitted on
hundreds of sources), and the profile (its wings included) through the
measured curve of growth.  A correction is a ratio of a star's fluxes, so a
change of the star's brightness (a transit) does not change its own curve of
growth.  Pure array code, no I/O; :func:`table_corrections` (the photometry
stage's entry) logs why a frame gets none.
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

#: ``trex.aperture.aperture_photometry`` (passed in: photometry calls this module)
Photometer = Callable[..., dict]
MAG_ERR_FACTOR = 2.5 / np.log(10.0)

#: radii of the curve of growth beyond the apertures, as fractions of ``R``
GROWTH_STEPS = (0.35, 0.45, 0.6, 0.8, 1.0)
#: bounds of the Moffat beta of the tail (a Gaussian is beta -> infinity)
BETA_RANGE = (1.2, 30.0)
#: sky annulus of the curve of growth, inner and outer radius as multiples of ``R``.  The
#: wings of a Moffat beta = 3 star (FWHM 2.4-3.2 px) in an annulus from R + 2 to R + 8 px
#: (R = 8) raise its sky by 0.1 % (centre) to 0.3 % (corners) of its flux over R's area,
#: which lowered F(R) more in the corners and steepened the fitted wings; at 2.5-3.75 R
#: it is < 1e-4, and the sky no longer depends on the star's own brightness.
GROWTH_SKY = (2.5, 3.75)
#: mag added in quadrature to each star's correction error in the fits: the scatter of the
#: true corrections of bright stars about a quadratic in w (0.005-0.007 mag on a realistic
#: night); without it the few brightest stars set the curve for the whole field
CORRECTION_FLOOR = 0.005
#: (px beyond R, contrast): stars with a neighbour brighter than contrast times their flux
#: within R + px are not used.  A neighbour beyond R + 2 px puts at most ~1 % of its
#: light into R (Moffat beta = 3, the corners' width), so a tenth of the star's flux is
#: allowed there; 0.01 everywhere within R + 8 px left ~45 stars, few in the corners.
ISOLATION = ((2.0, 0.01), (8.0, 0.1))


class ApcorrError(ValueError):
    """Too few stars to measure the curve of growth of a frame."""


class Tail(NamedTuple):
    """Moffat wings as a function of the Gaussian width w: alpha = ratio w0 (w / w0)^power
    (the S, D, K width of a pixel-integrated star grows more slowly than its wings)."""

    beta: float          # Moffat exponent of the wings
    ratio: float         # Moffat alpha / Gaussian width at width w0
    power: float = 1.0   # alpha grows as (w / w0)^power
    w0: float = 1.0      # px, the reference width


def psf_width(s: np.ndarray, d: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Gaussian PSF width w (px): sqrt of the geometric mean of the axes' variances,
    σ² = 1 / sqrt(S² - D² - K²), from the S, D, K shape (px⁻², arrays of one shape)."""
    s, d, k = (np.asarray(a, float) for a in (s, d, k))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(1.0 / np.sqrt((s + d) * (s - d) - k * k))


def psf_distortion(s: np.ndarray, d: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Distortion χ = (a² - b²) / (a² + b²) of a PSF with axes a >= b, from its S, D, K
    shape (px⁻², arrays of one shape): sqrt(D² + K²) / S; 0 for a round PSF."""
    s, d, k = (np.asarray(a, float) for a in (s, d, k))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.hypot(d, k) / s


def moffat_outside(radius: np.ndarray | float, width: np.ndarray, tail: Tail) -> np.ndarray:
    """Fraction of a circular Moffat's light beyond ``radius`` px, for Gaussian widths
    ``width`` (px): (1 + r² / alpha²)^(1 - beta), alpha = ratio w0 (w / w0)^power."""
    alpha2 = (tail.ratio * tail.w0 * (np.asarray(width, float) / tail.w0) ** tail.power) ** 2
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
    sky of the annulus ``GROWTH_SKY`` x ``radius`` (clipped as the photometry's; the
    star's own light there is negligible), measured by ``photometer``
    (:func:`trex.aperture.aperture_photometry`).

    Returns (radii (nradii,) px, flux (nstars, nradii) ADU, snr (nstars,): flux / error
    at R, 0 where any radius is flagged).
    """
    radii = radius * np.asarray(GROWTH_STEPS)
    res = photometer(image, x, y, radii, tuple(radius * np.asarray(GROWTH_SKY)), gain=gain,
                     mask=mask, sky_method=sky_method)
    clean = np.all(res["flag"] == 0, axis=1) & np.all(res["flux"] > 0, axis=1)
    return radii, res["flux"], np.where(clean, res["flux"][:, -1] / res["fluxerr"][:, -1], 0.0)


def odd_curves(width: np.ndarray, ratio: np.ndarray, error: np.ndarray, nsigma: float = 5.0,
               window: int = 9) -> np.ndarray:
    """True for stars whose curve of growth ``ratio`` (nstars, nradii; e.g. F(r) / F(R))
    departs by more than ``nsigma`` robust sigmas (of departure / ``error``, (nstars,))
    from the median curve of the ``window`` stars nearest in width (``width`` (nstars,)
    px): a satellite trail, a cosmic ray or an uncatalogued neighbour in the radii."""
    order = np.argsort(width)
    half = min(window, len(order)) // 2
    sorted_ratio = ratio[order]
    padded = np.pad(sorted_ratio, ((half, half), (0, 0)), mode="edge")
    local = np.median(np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1, axis=0),
                      axis=-1)
    chi = (sorted_ratio - local) / error[order, None]
    scale = 1.4826 * np.median(np.abs(chi), axis=0)
    odd = np.zeros(len(order), bool)
    odd[order] = np.any(np.abs(chi) > nsigma * np.maximum(scale, 1e-6), axis=1)
    return odd


def fit_tail(radii: np.ndarray, flux: np.ndarray, width: np.ndarray,
             snr: np.ndarray) -> Tail:
    """Moffat wings of a curve of growth: beta, ratio and power of :class:`Tail` (w0 the
    median width) fitted to ``flux / flux[:, -1]`` (stars (nstars,) x radii (nradii,),
    px and ADU; the last radius is R) as (1 - T(r)) / (1 - T(R)), T =
    :func:`moffat_outside`; ``width`` (nstars,) px, ``snr`` (nstars,) the weights (flux /
    error in R); soft-L1 loss."""
    ratio = flux[:, :-1] / flux[:, -1:]
    w0 = float(np.median(width))

    def residual(p):
        outside = moffat_outside(radii[None, :], width[:, None], Tail(*p, w0))
        model = (1.0 - outside[:, :-1]) / (1.0 - outside[:, -1:])
        return ((model - ratio) * snr[:, None]).ravel()

    fit = least_squares(residual, x0=(3.0, 2.0, 1.0), bounds=((BETA_RANGE[0], 0.3, 0.25),
                                                               (BETA_RANGE[1], 20.0, 4.0)),
                        loss="soft_l1", f_scale=3.0)
    return Tail(*fit.x, w0)


class Model(NamedTuple):
    """Corrections as a quadratic in the PSF width w plus a linear term in the squared
    distortion χ², per aperture."""

    coef: np.ndarray   # (4, napertures): constant, linear, quadratic in w - w0, χ², mag
    w0: float          # px, the weighted mean width of the stars fitted
    low: float         # px, range of the widths fitted: beyond it the curve goes on
    high: float        # along its tangent (a quadratic extrapolates badly)


def fit_model(width: np.ndarray, distortion: np.ndarray, correction: np.ndarray,
              error: np.ndarray, clip_sigma: float = 3.0, clip_iters: int = 3) -> Model:
    """The correction as a quadratic in w plus a term in χ²: ``correction`` (nstars,
    napertures) mag with errors ``error`` (nstars,) mag at widths ``width`` (nstars,) px
    and distortions ``distortion`` (nstars,); stars further than ``clip_sigma`` robust
    sigmas (of residual / error) are dropped and the fit repeated, at most
    ``clip_iters`` times.  Round PSFs (χ = 0) leave the χ² term zero."""
    weight = 1.0 / error
    w0 = float(np.sum(width * weight**2) / np.sum(weight**2))
    design = np.column_stack([np.ones_like(width), width - w0, (width - w0) ** 2,
                              distortion**2])
    coef = np.empty((4, correction.shape[1]))
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


def evaluate(model: Model, width: np.ndarray, distortion: np.ndarray) -> np.ndarray:
    """Corrections (nstars, napertures) mag of ``model`` at widths ``width`` (nstars,) px
    and distortions ``distortion`` (nstars,)."""
    width = np.asarray(width, float)[:, None]
    inside = np.clip(width, model.low, model.high) - model.w0
    c0, c1, c2, c3 = model.coef
    slope = c1 + 2.0 * c2 * inside
    return (c0 + c1 * inside + c2 * inside**2 + slope * (width - model.w0 - inside)
            + c3 * np.asarray(distortion, float)[:, None] ** 2)


def growth_stars(photometer: Photometer, image: np.ndarray, x: np.ndarray, y: np.ndarray,
                 flux: np.ndarray, use: np.ndarray, width: np.ndarray, *, radius: float,
                 gain: float, mask: np.ndarray | None, max_stars: int, min_snr: float,
                 sky_method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The stars that measure the curve of growth: of the ``use`` stars (bool (nstars,))
    not crowded (:data:`ISOLATION`, by the flux in the last aperture), the brightest
    ``max_stars`` measured in R with S/N >= ``min_snr``, without :func:`odd_curves`.
    Returns (index (n,), radii (nradii,) px, growth (n, nradii) ADU, snr (n,))."""
    last = np.where(np.isfinite(flux[:, -1]), flux[:, -1], 0.0)
    for extra, contrast in ISOLATION:
        use = use & isolated(x, y, last, radius + extra, contrast)
    index = np.flatnonzero(use)
    index = index[np.argsort(-flux[index, -1])[:max_stars]]
    radii, growth, snr = growth_fluxes(photometer, image, x[index], y[index], radius, gain,
                                       mask, sky_method)
    good = snr >= min_snr
    if good.any():
        error = np.hypot(1.0 / snr[good], CORRECTION_FLOOR / MAG_ERR_FACTOR)
        good[good] = ~odd_curves(width[index[good]], growth[good, :-1] / growth[good, -1:],
                                 error)
    return index[good], radii, growth[good], snr[good]


def frame_corrections(photometer: Photometer, image: np.ndarray, x: np.ndarray,
                      y: np.ndarray, flux: np.ndarray, ok: np.ndarray, width: np.ndarray, *,
                      radius: float, gain: float, mask: np.ndarray | None = None,
                      distortion: np.ndarray | None = None, max_stars: int = 400,
                      min_stars: int = 20, min_snr: float = 30.0,
                      sky_method: str = "mode") -> tuple[np.ndarray, dict]:
    """Aperture corrections of every star of one frame (see the module docstring).

    Parameters
    ----------
    photometer : :func:`trex.aperture.aperture_photometry`.
    image : (ny, nx) calibrated frame, ADU; ``mask`` its bad pixels (non-zero).
    x, y : (nstars,) star positions, px.
    flux : (nstars, napertures) the stars' aperture fluxes, ADU (as measured
        for ``aim``: their own sky annuli).
    ok : (nstars,) bool, stars whose apertures are all clean (no flags).
    width : (nstars,) Gaussian PSF width at each star, px (:func:`psf_width`).
    radius : R, px, where the measured curve of growth ends.
    gain : e-/ADU.
    distortion : (nstars,) the PSF's distortion at each star (:func:`psf_distortion`);
        None: round.
    max_stars : the brightest this many usable stars measure the curve.
    min_stars : fewer usable stars raise :class:`ApcorrError`.
    min_snr : stars measured in R with a lower signal-to-noise ratio are not used.

    Returns
    -------
    (apc (nstars, napertures) mag to add to the aperture magnitudes, <= 0 for
    light lost; NaN where ``width`` is not finite, info dict: ``nstars``
    used, ``beta``, ``ratio``, ``fit`` (the :class:`Tail`) of the wings, ``tail``
    median light beyond R).
    """
    flux = np.asarray(flux, float)
    width = np.asarray(width, float)
    distortion = np.zeros_like(width) if distortion is None else np.asarray(distortion, float)
    ny, nx = image.shape
    edge = GROWTH_SKY[1] * radius
    use = (np.asarray(ok, bool) & np.isfinite(width) & np.all(flux > 0, axis=1)
           & (x >= edge) & (x <= nx - 1 - edge) & (y >= edge) & (y <= ny - 1 - edge))
    index, radii, growth, snr = growth_stars(
        photometer, image, x, y, flux, use, width, radius=radius, gain=gain, mask=mask,
        max_stars=max_stars, min_snr=min_snr, sky_method=sky_method)
    if len(index) < min_stars:
        raise ApcorrError(f"{len(index)} bright isolated stars for the curve of growth, "
                          f"need {min_stars}")
    tail = fit_tail(radii, growth, width[index], snr)
    beyond = moffat_outside(radius, width[index], tail)
    total = growth[:, -1] / (1.0 - beyond)
    measured = 2.5 * np.log10(flux[index] / total[:, None])
    model = fit_model(width[index], distortion[index], measured,
                      np.hypot(MAG_ERR_FACTOR / snr, CORRECTION_FLOOR))
    info = {"nstars": len(index), "beta": tail.beta, "ratio": tail.ratio, "fit": tail,
            "tail": float(np.median(beyond))}
    return evaluate(model, width, distortion), info


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
    shape = table["fsv"], table["fdv"], table["fkv"]
    width = psf_width(*shape)
    try:
        if not np.isfinite(width).any():
            raise ApcorrError("no PSF shape map")
        apc, info = frame_corrections(photometer, image, table["xcc"], table["ycc"], flux, ok,
                                      width, radius=ph.apcorr_radius, gain=gain, mask=mask,
                                      distortion=psf_distortion(*shape),
                                      min_snr=ph.apcorr_min_snr, sky_method=ph.sky_method)
    except ApcorrError as err:
        log.info("%s: no aperture corrections (arm keeps the apertures' light loss): %s",
                 name, err)
        return zero
    log.debug("%s: aperture corrections from %d stars, Moffat beta %.2f, %.4f beyond R",
              name, info["nstars"], info["beta"], info["tail"])
    return np.where(np.isfinite(apc), apc, 0.0)
