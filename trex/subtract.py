"""Image subtraction: fit a spatially varying kernel on stamps, convolve, subtract.

The model of the image is ``M = R conv K(x, y) + B(x, y)``: the reference
convolved with a kernel whose basis coefficients (see :mod:`trex.kernelspec`)
are polynomials in the normalised pixel coordinates, plus a background
polynomial.  The coefficients are fitted by weighted linear least squares on
stamps around bright, unsaturated stars spread over the frame
(:mod:`trex.stamps`; by default the brightest suitable star of each cell of
an 8 x 8 grid, ``[subtract] stamp_grid`` and ``stamps_per_cell``: 64 stamps
of 21 x 21 px for the 1230 unknowns of ``b/4;i/4;d=4/4``; 16 x 16 x 4 stamps
fit a less noisy kernel, but a variable star among them then moves its own
kernel), rejecting stamps whose chi^2 stands out (:mod:`trex.kernelfit`).
Pixel coordinates are 0-based, pixel centres at integers.

>>> diff, sol = subtract(image, reference, kernel="b/4;i/4;d=4/4", gain=2.7)
>>> sol.flux_scale(1024.0, 1024.0), sol.kernel(1024.0, 1024.0).shape
(0.93..., (9, 9))

The per-frame pipeline stage is :func:`run` / :func:`save` at the end: register
the frame onto the photometric reference it receives in the context (a
:class:`trex.photref.Reference`), subtract, measure the reference's stars on D
(:mod:`trex.diffphot`).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from trex import diffphot
from trex.errors import FrameError
from trex.frame import Context, Frame
from trex.header import FrameMeta
from trex.kernelfit import Solution, fit_kernel
from trex.kernelspec import DEFAULT_KERNEL, parse_kernel
from trex.products import save_product
from trex.register import register_frame
from trex.stamps import StampCandidates, stamp_candidates
from trex.times import utcnow

log = logging.getLogger(__name__)


def match(image: np.ndarray, reference: np.ndarray, kernel: str = DEFAULT_KERNEL,
          mask: np.ndarray | None = None, stamps: np.ndarray | None = None, *,
          candidates: StampCandidates | None = None, gain: float = 1.0, rdnoise: float = 0.0,
          saturation: float | None = None, ngrid: int = 8, per_cell: int = 1,
          halfsize: int = 10, threshold: float = 10.0, reject: float = 3.0,
          maxiter: int = 3) -> tuple[np.ndarray, Solution]:
    """The reference matched to the image, ``M = R conv K + B``, and the fitted kernel.

    Parameters
    ----------
    image, reference : (ny, nx) arrays on the same pixel grid, ADU.
    kernel : fitsh-style kernel specification (:mod:`trex.kernelspec`).
    mask : (ny, nx), non-zero on pixels to leave out of the fit (either frame).
    stamps : (n, 2) stamp centres (x, y), px; default: ``per_cell`` stars in each
        cell of an ``ngrid`` x ``ngrid`` grid, picked from ``candidates`` (the
        reference's :func:`stamp_candidates`, found here if None) where no bad
        pixel of either frame falls in the stamp.
    gain, rdnoise : image gain (e-/ADU) and read noise (e-) for the weights.
    saturation : reference pixels at or above it (ADU) disqualify a stamp.
    halfsize : stamp half-size, px.
    threshold : stamp stars peak this many sky sigmas above the sky.
    reject, maxiter : stamp rejection threshold (robust sigmas) and fit passes.

    Returns
    -------
    model : float32 (ny, nx), NaN within the kernel half-size of the border.
    solution : :class:`Solution`.
    """
    spec = parse_kernel(kernel)
    img = np.asarray(image, dtype=np.float32)
    ref = np.ascontiguousarray(reference, dtype=np.float32)
    if img.shape != ref.shape or img.ndim != 2:
        raise ValueError(f"image {img.shape} and reference {ref.shape} must be 2-D of one shape")
    h = spec.halfsize
    bad = ~(np.isfinite(img) & np.isfinite(ref))
    if mask is not None:
        bad |= np.asarray(mask) != 0
    if stamps is None:
        if candidates is None:
            candidates = stamp_candidates(ref, ngrid, halfsize, h, bad, saturation, threshold)
        stamps = candidates.pick(bad, per_cell)
    stamps = np.asarray(stamps).round().astype(np.int64).reshape(-1, 2)
    lim = halfsize + h
    inside = ((stamps[:, 0] >= lim) & (stamps[:, 0] < ref.shape[1] - lim)
              & (stamps[:, 1] >= lim) & (stamps[:, 1] < ref.shape[0] - lim))
    stamps = stamps[inside]
    if len(stamps) == 0:
        raise ValueError("no usable stamp: no bright unsaturated star away from the border")
    solution = fit_kernel(img, ref, stamps, spec, bad=bad, halfsize=halfsize,
                          gain=gain, rdnoise=rdnoise, reject=reject, maxiter=maxiter)
    log.debug("matched with %s: %d stamps kept, %d rejected", spec.text,
              len(solution.stamps), len(solution.rejected))
    return solution.model(np.where(np.isfinite(ref), ref, 0.0)), solution


def subtract(image: np.ndarray, reference: np.ndarray, kernel: str = DEFAULT_KERNEL,
             **options) -> tuple[np.ndarray, Solution]:
    """Difference image ``D = I - (R conv K + B)`` (float32 (ny, nx), NaN within the
    kernel half-size of the border) and the fitted kernel; ``options`` as :func:`match`."""
    model, solution = match(image, reference, kernel, **options)
    return np.asarray(image, dtype=np.float32) - model, solution


# -- the per-frame stage: register -> subtract -> difference photometry --------------

def run(frame: Frame, context: Context) -> Frame:
    """The subtract stage on one frame (needs ``context.photref``, see :mod:`trex.photref`).

    The frame is registered onto the photometric reference grid, the reference
    is fitted to it and subtracted, and the reference's stars that the frame's
    ``aphot`` product holds are measured on D (:mod:`trex.diffphot`), their fluxes
    corrected for the local transparency the kernel misses (``[subtract] local_scale``,
    :func:`trex.diffphot.local_transparency`).  Adds the
    ``iphot`` product; logs the kernel and ``diff_noise_ratio`` (not a
    ``calibratedframes`` column, so not in ``frame.quality``).
    """
    meta, config = frame.meta, context.config
    key = (meta.projid, meta.field, meta.ccd)
    ref = context.photref.get(key)
    if ref is None:
        raise FrameError(frame.rawpath, "subtract: no photometric reference for " + "/".join(key))
    aphot = frame.products.get("aphot")
    if frame.image is None or frame.wcs is None or aphot is None:
        raise FrameError(frame.rawpath, "subtract: no image, WCS or aphot (photometry not done)")
    start = time.perf_counter()
    image, header, refphot = ref.image, ref.header, ref.phot
    sub = config.subtract
    reg, regmask, transform = register_frame(frame.image, frame.mask, frame.wcs, ref.wcs,
                                             image.shape, order=sub.transform_order,
                                             method=sub.resample, saturation=meta.saturate)
    mask = regmask | ref.mask
    try:
        model, sol = match(reg, image, kernel=sub.kernel, mask=mask != 0,
                           candidates=ref.candidates, gain=meta.gain, rdnoise=meta.rdnoise,
                           saturation=0.95 * header["SATURATE"], ngrid=sub.stamp_grid,
                           per_cell=sub.stamps_per_cell, halfsize=sub.stamp_halfsize,
                           threshold=sub.stamp_threshold, reject=sub.stamp_reject)
    except ValueError as err:
        raise FrameError(frame.rawpath, f"subtract: {err}") from None
    diff = reg - model
    stars = refphot[np.isin(refphot["star"], aphot["star"])]
    frame_flux, frame_sky = diffphot.on_frame(aphot, stars["star"])
    table, info = diffphot.difference_photometry(
        diff, model, sol.flux_scale, stars, config, frame_flux=frame_flux, frame_sky=frame_sky,
        gain=meta.gain, rdnoise=meta.rdnoise, exptime=float(header["EXPTIME"]), mask=mask)
    if sub.local_scale > 0:
        diffphot.apply_transparency(table, diffphot.local_transparency(table, sub.local_scale))
    ratio = diffphot.noise_ratio(diff, model, image, sol, transform, mask, gain=meta.gain,
                                 rdnoise=meta.rdnoise, ref_noise=float(header["NOISEFAC"]),
                                 method=sub.resample)
    frame.products["diffstamps"] = cutouts(table, reg, diff)
    member = " (in the reference stack)" if frame.framekey in ref.framekeys else ""
    frame.products["iphot"], frame.products["photrefkey"] = table, ref.photrefkey
    frame.products["diff_noise_ratio"], frame.products["stamps"] = ratio, sol.stamps
    log.info("frame %s: subtracted in %.2f s: %d stamps, flux scale %.4f, aperture ratio %s, "
             "diff_noise_ratio %.3f%s", frame.rawpath.name, time.perf_counter() - start,
             len(sol.stamps), float(sol.flux_scale(image.shape[1] / 2, image.shape[0] / 2)),
             " ".join(f"{q:.3f}" for q in info["q"]), ratio, member)
    return frame


def cutouts(table: np.ndarray, image: np.ndarray, diff: np.ndarray, n: int = 6,
            half: int = 12) -> np.ndarray:
    """Stamps of the registered frame and of D around the ``n`` brightest well-measured
    stars (for ``trex report``): structured array star, x, y, image, diff ((2h+1)^2, ADU)."""
    good = (table["irq_000"] == 0) & np.isfinite(table["ifl_000"])
    x, y = table["xref"], table["yref"]
    good &= (x >= half) & (x < image.shape[1] - half) & (y >= half) & (y < image.shape[0] - half)
    pick = np.flatnonzero(good)[np.argsort(-table["ifl_000"][good])[:n]]
    size = 2 * half + 1
    out = np.zeros(len(pick), dtype=[("star", "i8"), ("x", "f8"), ("y", "f8"),
                                     ("image", "f4", (size, size)), ("diff", "f4", (size, size))])
    for k, i in enumerate(pick):  # a handful of stamps per frame
        iy, ix = int(round(y[i])), int(round(x[i]))
        window = (slice(iy - half, iy + half + 1), slice(ix - half, ix + half + 1))
        out[k] = (table["star"][i], x[i], y[i], image[window], diff[window])
    return out


def save(frame: Frame, context: Context) -> dict:
    """Write the frame's iphot product; returns its ``ism_photometry``, ``iphotobjects``,
    ``iphotfiles`` and ``photindex_iphots`` rows (``iphotfilekey`` = ``framekey``)."""
    table, meta, key = frame.products["iphot"], frame.meta, frame.products["photrefkey"]
    path = save_product(frame.redpath, "iphot", table)
    save_product(frame.redpath, "diffstamps", frame.products["diffstamps"])
    objectids = np.asarray(context.catalogs[meta.field]["objectid"])[table["star"]]
    rows = {"ism_photometry": diffphot.ism_rows(frame.framekey, key, table, objectids),
            "iphotobjects": {"framekey": np.full(len(table), frame.framekey, dtype=np.int64),
                             "iphotfilekey": np.full(len(table), frame.framekey, dtype=np.int64),
                             "objectid": objectids,
                             "rowindex": np.arange(len(table), dtype=np.int32)}}
    rows.update(diffphot.index_rows(
        frame.framekey, key, str(path.relative_to(context.project.root)), len(table),
        meta.jd - 2400000.0, (meta.projid, meta.field, meta.ccd), utcnow()))
    return rows


def inputs(meta: FrameMeta, night: str, context: Context) -> str:
    """The photometric reference a frame is subtracted against (a new one redoes it)."""
    return context.inputs.get(("photref", meta.projid, meta.field, meta.ccd), "none")
