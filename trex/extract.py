"""Source extraction: detection, deblending and elliptical Gaussian shapes.

``extract_sources(image)`` finds the stars of a frame and measures each one
(SPEC section 6).  Steps, all whole-frame calls into ``trex._extract``:

1. background and RMS maps (:mod:`trex.background`);
2. matched filter of image - sky by a small separable Gaussian, pixels above
   ``threshold`` x RMS (masked pixels never are), 8-connected components of at
   least ``minarea`` pixels;
3. local maxima of the filtered image; within a component a fainter maximum is
   a separate source only if the filtered image dips between it and every
   brighter source (``deblend_nsigma`` filtered-noise sigmas and
   ``deblend_contrast`` of its height), else it is merged; a component's pixels
   go to the nearest source;
4. per source, a Levenberg-Marquardt fit in a (2 radius + 1)^2 window of the
   pixel-integrated elliptical Gaussian
   bg + amp exp(-0.5 [S(dx^2+dy^2) + D(dx^2-dy^2) + 2 K dx dy]),
   leaving out masked pixels and pixels owned by another source.

Output columns (one row per source, float64 unless noted):

x, y      fitted centre (first-moment centroid if the fit fails), px, 0-based
flux      Gaussian flux amp 2 pi / sqrt(S^2 - D^2 - K^2) (window sum of
          image - sky if the fit fails), ADU
fluxerr   sqrt(rms^2 A + flux / gain), A = 4 pi / sqrt(S^2 - D^2 - K^2) (the
          noise-equivalent area; pixels used if the fit fails), ADU
peak      image - sky at the peak pixel, ADU
bg        fitted local background (sky map if the fit fails), ADU per pixel
snr       flux / fluxerr
s, d, k   shape parameters, px^-2 (NaN if the fit fails); FWHM ~ 2.355 / sqrt(s)
npix      int32, pixels above threshold owned by the source
flag      int32, bits of ``trex.flags.SOURCE``
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from trex import _extract
from trex.background import background
from trex.errors import FrameError
from trex.flags import MASK, SOURCE
from trex.frame import Context, Frame
from trex.products import save_product

log = logging.getLogger(__name__)

SOURCE_DTYPE = np.dtype([
    ("x", "f8"), ("y", "f8"), ("flux", "f8"), ("fluxerr", "f8"), ("peak", "f8"),
    ("bg", "f8"), ("snr", "f8"), ("s", "f8"), ("d", "f8"), ("k", "f8"),
    ("npix", "i4"), ("flag", "i4"),
])

_FLAGBITS = np.array([SOURCE[n].bit for n in ("FIT_FAILED", "MASKED", "SATURATED", "EDGE")],
                     dtype=np.int32)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """1-D Gaussian filter of unit sum, half-width ceil(2 sigma) px (float64)."""
    if sigma <= 0:
        return np.ones(1)
    half = int(np.ceil(2.0 * sigma))
    t = np.arange(-half, half + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    return kernel / kernel.sum()


def _as_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {shape}")
    return np.ascontiguousarray(mask, dtype=np.uint8)


def _detect(image: np.ndarray, sky: np.ndarray, rms: np.ndarray, mask: np.ndarray | None,
            threshold: float, minarea: int, filter_sigma: float, gain: float | None,
            deblend_nsigma: float, deblend_contrast: float
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Peaks of separate sources (px, py), pixel owner map, pixel counts, blended."""
    kernel = gaussian_kernel(filter_sigma)
    filtered = np.empty_like(image)
    above = np.empty(image.shape, dtype=np.uint8)
    _extract.detect_map(image, sky, rms, mask, kernel, threshold, filtered, above)
    labels, nlab = ndimage.label(above, structure=np.ones((3, 3), dtype=bool))
    labels = np.ascontiguousarray(labels, dtype=np.int32)
    area = np.empty(nlab + 1, dtype=np.int64)
    _extract.component_areas(labels, area)
    cap = max(int(area[1:].sum()), 1)
    px = np.empty(cap, dtype=np.intp)
    py = np.empty(cap, dtype=np.intp)
    npeak = _extract.find_peaks(filtered, above, px, py)
    px, py = px[:npeak], py[:npeak]
    lab = labels[py, px]
    big = area[lab] >= minarea
    px, py, lab = px[big], py[big], lab[big]
    order = np.lexsort((-filtered[py, px], lab))
    px, py, lab = px[order], py[order], np.ascontiguousarray(lab[order], dtype=np.int32)
    keep = np.empty(len(px), dtype=np.uint8)
    _extract.deblend_peaks(filtered, rms, px, py, lab, float(np.sum(kernel ** 2)),
                           deblend_nsigma, deblend_contrast, gain or 0.0, keep)
    keep = keep.astype(bool)
    px, py, lab = px[keep], py[keep], lab[keep]
    count = np.bincount(lab, minlength=nlab + 1).astype(np.intp)
    first = np.concatenate(([0], np.cumsum(count)[:-1])).astype(np.intp)
    npix = np.empty(len(px), dtype=np.int32)
    _extract.assign_pixels(labels, first, count, px, py, npix)
    return px, py, labels, npix, count[lab] > 1


def measure_sources(image: np.ndarray, sky: np.ndarray, rms: np.ndarray,
                    threshold: float = 5.0, mask: np.ndarray | None = None, *,
                    minarea: int = 3, fit_shape: bool = True, gain: float | None = None,
                    radius: int = 3, filter_sigma: float = 1.0, deblend_nsigma: float = 3.0,
                    deblend_contrast: float = 0.1) -> np.ndarray:
    """Detect and measure sources given the sky and RMS maps (float32, ADU).

    Same arguments and output as :func:`extract_sources`, whose background
    step this skips; ``deblend_nsigma`` and ``deblend_contrast`` set how deep
    the dip between two peaks of one component must be (module docstring).
    """
    image = np.ascontiguousarray(image, dtype=np.float32)
    sky = np.ascontiguousarray(sky, dtype=np.float32)
    rms = np.ascontiguousarray(rms, dtype=np.float32)
    mask = _as_mask(mask, image.shape)
    # saturated pixels are star light: they may seed a (flagged) detection
    bad = None if mask is None else mask & np.uint8(~MASK["SATURATED"].bit & 0xFF)
    px, py, owner, npix, blended = _detect(image, sky, rms, bad, threshold, minarea, filter_sigma,
                                  gain, deblend_nsigma, deblend_contrast)
    out = np.empty((len(px), 9))
    nused = np.empty(len(px), dtype=np.int32)
    flag = np.empty(len(px), dtype=np.int32)
    _extract.fit_sources(image, sky, mask, owner, px, py, radius, fit_shape,
                         MASK["SATURATED"].bit, _FLAGBITS, out, nused, flag)
    src = np.zeros(len(px), dtype=SOURCE_DTYPE)
    src["x"], src["y"], src["bg"] = out[:, 0], out[:, 1], out[:, 3]
    src["s"], src["d"], src["k"] = out[:, 4], out[:, 5], out[:, 6]
    src["peak"], src["npix"] = out[:, 8], npix
    src["flag"] = flag | np.where(blended, SOURCE["BLENDED"].bit, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        det = np.sqrt(src["s"] ** 2 - src["d"] ** 2 - src["k"] ** 2)
        fitted = np.isfinite(out[:, 2])
        src["flux"] = np.where(fitted, out[:, 2] * 2.0 * np.pi / det, out[:, 7])
        area = np.where(fitted, 4.0 * np.pi / det, nused)
        var = rms[py, px].astype(np.float64) ** 2 * area
        if gain:
            var += np.maximum(src["flux"], 0.0) / gain
        src["fluxerr"] = np.sqrt(var)
        src["snr"] = src["flux"] / src["fluxerr"]
    return src[np.argsort(-src["flux"], kind="stable")]


def extract_sources(image: np.ndarray, threshold: float = 5.0, mask: np.ndarray | None = None,
                    *, mesh: int = 64, mesh_filter: int = 3, minarea: int = 3,
                    fit_shape: bool = True, gain: float | None = None, radius: int = 3,
                    filter_sigma: float = 1.0) -> np.ndarray:
    """Find and measure the sources of ``image``.

    Parameters
    ----------
    image : 2-D array (ny, nx), ADU (converted to float32).
    threshold : detection threshold in units of the background RMS, applied
        to the filtered image.
    mask : array (ny, nx) or None: bool, or uint8 bits of ``trex.flags.MASK``;
        non-zero pixels are left out of the background and the fit, and never
        seed a detection, except saturated pixels (bit SATURATED alone), which
        can: a saturated star is found once and flagged SATURATED.
    mesh, mesh_filter : background cell size (px) and median filter (cells).
    minarea : minimum connected pixels above threshold.
    fit_shape : fit the elliptical Gaussian (else centroids and window sums).
    gain : e-/ADU, for the Poisson part of ``fluxerr`` and of the deblending
        noise (None: background noise only).
    radius : fit window half-size, px (about 1.2 FWHM or more).
    filter_sigma : sigma of the Gaussian matched filter, px (0: no filter).

    Returns
    -------
    numpy structured array of ``SOURCE_DTYPE`` (see the module docstring),
    sorted by decreasing flux.
    """
    sky, rms = background(image, mask, mesh, mesh_filter)
    return measure_sources(image, sky, rms, threshold, mask, minarea=minarea,
                           fit_shape=fit_shape, gain=gain, radius=radius,
                           filter_sigma=filter_sigma)


class ShapeMapError(ValueError):
    """Too few well-measured sources to map the PSF shape over the frame."""


def _poly_terms(u: np.ndarray, v: np.ndarray, order: int) -> np.ndarray:
    return np.stack([u ** i * v ** j for i in range(order + 1) for j in range(order + 1 - i)],
                    axis=-1)


def shape_map(sources: np.ndarray, order: int = 2, nsigma: float = 3.0, maxiter: int = 5,
              min_snr: float = 20.0):
    """Smooth model of the PSF shape over the frame (pipe-trex's grtrans step).

    Fits S, D and K of the well-measured sources (fit succeeded, snr >=
    ``min_snr``) with 2-D polynomials of total degree ``order`` in x, y,
    rejecting stars more than ``nsigma`` robust sigmas off in any of the three
    until stable.  Returns ``f(x, y) -> (s, d, k)``, arrays shaped like x.
    Raises :class:`ShapeMapError` when fewer than twice as many usable
    sources as polynomial terms are left.
    """
    good = ((sources["flag"] & SOURCE["FIT_FAILED"].bit) == 0) & (sources["snr"] >= min_snr)
    good &= np.isfinite(sources["s"]) & np.isfinite(sources["d"]) & np.isfinite(sources["k"])
    x, y = sources["x"][good], sources["y"][good]
    values = np.stack([sources["s"][good], sources["d"][good], sources["k"][good]], axis=-1)
    nterms = (order + 1) * (order + 2) // 2
    if len(x) < 2 * nterms:
        raise ShapeMapError(f"shape_map: {len(x)} usable sources (fit succeeded, S/N >= "
                            f"{min_snr:g}), need {2 * nterms}")
    centre = np.array([0.5 * (x.min() + x.max()), 0.5 * (y.min() + y.max())])
    scale = max(0.5 * max(np.ptp(x), np.ptp(y)), 1.0)
    design = _poly_terms((x - centre[0]) / scale, (y - centre[1]) / scale, order)
    keep = np.ones(len(x), dtype=bool)
    for _ in range(maxiter + 1):
        coef = np.linalg.lstsq(design[keep], values[keep], rcond=None)[0]
        resid = values - design @ coef
        sigma = 1.4826 * np.median(np.abs(resid[keep]), axis=0)
        new = np.all(np.abs(resid) <= nsigma * np.maximum(sigma, 1e-12), axis=1)
        if np.array_equal(new, keep) or new.sum() < 2 * nterms:
            break
        keep = new

    def psf_shape(xq, yq) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        terms = _poly_terms((np.asarray(xq, float) - centre[0]) / scale,
                            (np.asarray(yq, float) - centre[1]) / scale, order)
        out = terms @ coef
        return out[..., 0], out[..., 1], out[..., 2]

    return psf_shape


def completeness(sources: np.ndarray, x: np.ndarray, y: np.ndarray, snr: np.ndarray,
                 bins, radius: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fraction of true stars detected, per bin of their true S/N.

    ``x, y, snr`` describe the truth list; a star is found when a source lies
    within ``radius`` px.  Returns (found per star, fraction per bin, stars
    per bin); empty bins have a NaN fraction.
    """
    found = np.zeros(len(x), dtype=bool)
    if len(sources):
        dist, _ = cKDTree(np.c_[sources["x"], sources["y"]]).query(np.c_[x, y])
        found = dist <= radius
    which = np.digitize(snr, bins) - 1
    inside = (which >= 0) & (which < len(bins) - 1)
    total = np.bincount(which[inside], minlength=len(bins) - 1)
    hits = np.bincount(which[inside], weights=found[inside], minlength=len(bins) - 1)
    with np.errstate(invalid="ignore"):
        return found, hits / total, total


def frame_quality(sources: np.ndarray, sky: np.ndarray, rms: np.ndarray) -> dict:
    """Per-frame summary: nsources, meds, medd, medk, fwhm, ellipticity, medsky, skyrms.

    Medians over sources with a good fit; fwhm = 2.3548 / sqrt(meds) px and
    ellipticity = 1 - b/a of the median shape; medsky and skyrms are the medians of
    the (smooth, interpolated) background maps sampled every 8th pixel.
    """
    good = (sources["flag"] & SOURCE["FIT_FAILED"].bit) == 0
    good &= np.isfinite(sources["s"])
    meds, medd, medk = (float(np.median(sources[c][good])) if good.any() else float("nan")
                        for c in ("s", "d", "k"))
    e = np.hypot(medd, medk)
    with np.errstate(invalid="ignore", divide="ignore"):
        fwhm = 2.3548 / np.sqrt(meds)
        ellipticity = 1.0 - np.sqrt((meds - e) / (meds + e))
    return {"nsources": int(len(sources)), "meds": meds, "medd": medd, "medk": medk,
            "fwhm": float(fwhm), "ellipticity": float(ellipticity),
            "medsky": float(np.median(sky[::8, ::8])), "skyrms": float(np.median(rms[::8, ::8]))}


def run(frame: Frame, context: Context) -> Frame:
    """Stage entry point: ``frame.sources`` and the extraction part of ``frame.quality``."""
    cfg = context.config.extract
    if frame.image is None:
        raise FrameError(frame.rawpath, "extract: no calibrated image")
    try:
        sky, rms = background(frame.image, frame.mask, cfg.mesh, cfg.mesh_filter)
    except ValueError as err:
        raise FrameError(frame.rawpath, f"extract: {err}") from None
    sources = measure_sources(frame.image, sky, rms, cfg.threshold, frame.mask,
                              minarea=cfg.minarea, fit_shape=cfg.fit_shape,
                              gain=frame.meta.gain or None, radius=cfg.fit_radius,
                              filter_sigma=cfg.filter_sigma)
    if len(sources) < cfg.min_sources:
        raise FrameError(frame.rawpath, f"extract: {len(sources)} sources detected, "
                         f"fewer than min_sources = {cfg.min_sources}")
    frame.sources = sources
    frame.quality.update(frame_quality(sources, sky, rms))
    log.info("%s: %d sources, FWHM %.2f px, sky %.1f +- %.1f ADU", frame.rawpath.name,
             len(sources), frame.quality["fwhm"], frame.quality["medsky"],
             frame.quality["skyrms"])
    return frame


def save(frame: Frame, context: Context) -> dict:
    """The extracted sources go next to the calibrated frame (no database rows)."""
    save_product(frame.redpath, "sources", frame.sources)
    return {}
