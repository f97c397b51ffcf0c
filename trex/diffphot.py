"""Difference-image photometry: flux changes on D = I - (R conv K + B), in reference units.

Pure array code.  For each star of the photometric reference (at its
*reference* position, the frame being registered onto the reference grid) and
each configured aperture:

* ``dF_img``: aperture sum of D minus a local sky of D in the star's annulus
  (:func:`trex.aperture.aperture_photometry` with ``subtract.diff_sky_method``,
  the clipped mean by default: the mode estimator of the frames, 3 median - 2
  mean, is noisier and on a 2048^2, 16-frame night left 7 % more scatter on
  faint stars' irm).
  D has no sky after the fit, but the local sky takes out what the background
  polynomial misses (moon gradients, halos), as fiphot on subtracted frames did.
* Kernel weighting (the fitsh ``--input-kernel`` idea): a star of reference
  flux F_ref appears in the image as ``s F_ref`` with the local kernel sum
  ``s = sum K(x, y)`` (:meth:`trex.kernelfit.Solution.flux_scale`), and with
  the image's PSF, whose aperture fraction differs from the reference's.  The
  aperture fraction ratio ``q`` is measured per aperture as the clipped median,
  over bright stars with good flags, of ``F_M / (s F_ref)`` with ``F_M`` the
  same aperture on the model ``M = R conv K + B`` (measured on those stars only).
  Then ``dF = dF_img / (s q)`` is the flux change in reference-frame flux units,
  and ``F = F_ref + dF``.
* Errors: ``dF_img`` variance = ``max(F_img, 0) / gain`` (photon noise of the
  star in the image: its aperture flux on the frame itself, or ``s q F_ref +
  dF_img`` where the frame has none) + ``A v_sky (1 + A / N_sky)`` with
  ``v_sky = max(sky_img, 0) / gain + (rdnoise / gain)^2`` the image's sky pixel
  variance (``sky_img``: the star's sky on the frame).  Resampling correlates
  neighbouring pixels but keeps the variance of aperture sums, so the
  unresampled pixel variance is used.
  ``ife`` is the error of ``dF`` from one frame's noise.  The reference's
  noise at a star (``~ A v_sky / neff``, ``neff = 2 n / pi`` for a median of n
  frames) and the error of F_ref are the same in every frame of the light
  curve (a constant offset), so they are left out; ``ire = 1.0857 ife / F``.
* ``irm = ZP - 2.5 log10(F / exptime)`` with the reference's EXPTIME: magnitudes
  on the reference's photometric scale (the kernel takes out transparency).
* Local transparency (:func:`local_transparency`, in the subtract stage with
  ``[subtract] local_scale`` > 0): the kernel sum is a polynomial over the frame
  and misses clouds of a few hundred px, so each star's F carries the local
  error.  Its neighbours' ``-2.5 log10(F / F_ref)`` measure it (the magnitude
  fit's local term, :func:`trex.localterm.local_residual`, its own residual never
  used), and F, ``ife``, ``dF`` and ``irm`` are corrected by it
  (:func:`apply_transparency`).
* ``irq``: flags of D's and the reference's aperture photometry, SATURATED
  near saturated pixels of either, NONPOSITIVE when F <= 0, PARTIAL_SKY when
  the annulus reaches the border the kernel leaves undefined on D.

:func:`noise_ratio` is the quality number ``std(D / sigma)`` over sampled
pixels, with ``sigma^2 = f (max(M, 0) / gain + (rdnoise / gain)^2) +
sum(K^2) v_ref``; ``f`` is the per-pixel variance factor of the resampling at
the pixel's sub-pixel phase (:func:`variance_factor`) and ``v_ref`` the
reference's pixel variance, measured when it was built (NOISEFAC times the
raw-frame variance).  Frames in the reference stack share their noise with it,
so their ratio is lower (about 0.8 for a stack of 8).
"""

from __future__ import annotations

import functools
import logging

import numpy as np

from trex import framefit
from trex._stats import clipped_stats
from trex.aperture import MAG_ERR_FACTOR
from trex.config import Config
from trex.flags import PHOT
from trex.localterm import neighbour_pairs
from trex.photometry import apertures, measure, saturated_near
from trex.register import Transform, fit_transform, resample

log = logging.getLogger(__name__)

#: stars with F_ref at least this many sigma measure the aperture fraction ratio q
Q_MIN_SNR = 50.0
#: at most this many of them, those of highest S/N: q is one median per frame, which a
#: few hundred stars fix far below the photon noise of any star
Q_STARS = 2000
#: mag: stars whose single-frame ``ire`` is at most this (and good flags) measure the
#: local transparency (:func:`local_transparency`); fainter ones would weigh little and
#: multiply the neighbour pairs
LOCAL_MAX_ERROR = 0.02


def iphot_dtype(napertures: int) -> np.dtype:
    """The ``iphot`` product: catalog index and the light-curve columns."""
    fields = [("star", "i8"), ("xref", "f8"), ("yref", "f8")]  # not xcc: that is the frame's
    for name, dtype in (("ifl", "f8"), ("ife", "f8"), ("irm", "f4"), ("ire", "f4"),
                        ("irq", "i2"), ("dfl", "f8")):
        fields += [(f"{name}_{i:03d}", dtype) for i in range(napertures)]
    return np.dtype(fields)


def aperture_ratio(f_model: np.ndarray, f_ref: np.ndarray, scale: np.ndarray,
                   bright: np.ndarray) -> float:
    """q = clipped median of F_M / (s F_ref) over the ``bright`` good stars (1.0 if
    fewer than 5)."""
    use = bright & np.isfinite(f_model)
    if use.sum() < 5:
        return 1.0
    _, median, _, _ = clipped_stats(f_model[use] / (scale[use] * f_ref[use]), 3.0, 5)
    return float(median)


def difference_photometry(diff: np.ndarray, model: np.ndarray, scale_of, refphot: np.ndarray,
                          config: Config, *, frame_flux: np.ndarray, frame_sky: np.ndarray,
                          gain: float, rdnoise: float, exptime: float,
                          mask: np.ndarray) -> tuple[np.ndarray, dict]:
    """The ``iphot`` table of the stars in ``refphot`` (see the module doc).

    Parameters
    ----------
    diff, model : D and M = R conv K + B on the reference grid, ADU, (ny, nx).
    scale_of : callable (x, y) -> local kernel sum s (``Solution.flux_scale``).
    refphot : reference photometry (:func:`trex.photref.reference_photometry`).
    frame_flux, frame_sky : the same stars' aperture fluxes (n, napertures) and
        sky (n,) measured on the frame itself (its ``aphot``), ADU: F_img and
        sky_img of the errors (NaN: taken from ``s q F_ref`` and the median sky).
    gain, rdnoise : the image's e-/ADU and e-.
    exptime : EXPTIME of the reference, s.  mask : uint8 MASK bits on the reference grid.

    Returns
    -------
    (table, {"q": [q per aperture]}).
    """
    x, y = refphot["x"], refphot["y"]
    radii, annuli = apertures(config)
    # the kernel leaves D undefined (NaN) along the border: an annulus reaching there is
    # partial, as one reaching off the frame is on a frame's photometry
    cut = np.where(_near_invalid_border(diff, x, y, max(r for _, r in annuli)),
                   PHOT["PARTIAL_SKY"].bit, 0)
    table = np.zeros(len(refphot), dtype=iphot_dtype(len(radii)))
    table["star"], table["xref"], table["yref"] = refphot["star"], x, y
    scale = np.asarray(scale_of(x, y), dtype=np.float64)
    saturated = saturated_near(mask, x, y, float(radii.max()))
    on_diff = config.replace("photometry", sky_method=config.subtract.diff_sky_method)
    res_d = measure(diff, x, y, on_diff, gain=gain, mask=mask)
    # D's own NONPOSITIVE means dF <= 0, which is fine: F decides (_fill)
    flags = (res_d["flag"] & ~PHOT["NONPOSITIVE"].bit) | np.stack(
        [refphot[f"flag_{i:03d}"] for i in range(len(radii))], axis=1)
    f_ref = np.stack([refphot[f"flux_{i:03d}"] for i in range(len(radii))], axis=1)
    ferr_ref = np.stack([refphot[f"fluxerr_{i:03d}"] for i in range(len(radii))], axis=1)
    bright = (flags == 0) & (f_ref > Q_MIN_SNR * ferr_ref) & (f_ref > 0)
    snr = np.where(bright, f_ref / np.where(ferr_ref > 0, ferr_ref, np.inf), 0.0).max(axis=1)
    sample = np.flatnonzero(snr > 0)  # M is measured where q needs it
    if len(sample) > Q_STARS:
        sample = np.sort(sample[np.argpartition(-snr[sample], Q_STARS)[:Q_STARS]])
    f_model = measure(model, x, y, config, gain=gain, mask=mask, only=sample)["flux"]
    sky = np.where(np.isfinite(frame_sky), frame_sky, np.nanmedian(frame_sky)
                   if np.isfinite(frame_sky).any() else 0.0)
    v_sky = np.maximum(sky, 0.0) / gain + (rdnoise / gain) ** 2
    nsky = np.maximum(res_d["nsky"], 1)
    qs = []
    for i in range(len(radii)):
        q = aperture_ratio(f_model[:, i], f_ref[:, i], scale, bright[:, i])
        area, d_img = res_d["area"][:, i], res_d["flux"][:, i]
        f_img = np.where(np.isfinite(frame_flux[:, i]), frame_flux[:, i],
                         scale * q * f_ref[:, i] + d_img)
        var = np.maximum(f_img, 0.0) / gain + area * v_sky * (1.0 + area / nsky[:, i])
        _fill(table, i, f_ref[:, i], d_img / (scale * q), np.sqrt(var) / np.abs(scale * q),
              flags[:, i] | cut | np.where(saturated, PHOT["SATURATED"].bit, 0), config,
              exptime)
        qs.append(q)
    return table, {"q": qs}


def local_transparency(table: np.ndarray, scale: float, order: int = 0) -> np.ndarray:
    """Each star's local transparency error (n, napertures), mag, of an ``iphot`` table.

    A constant star measures F = F_ref; where the kernel's flux-scale polynomial
    cannot follow the transparency (thin clouds of a few hundred px), F / F_ref
    carries the error of the local kernel sum.  Per aperture, the residuals
    ``r = -2.5 log10(F / F_ref)`` of the good stars with ``ire <= LOCAL_MAX_ERROR``
    are fitted with :func:`trex.framefit.fit_frame`: a 2-D polynomial of ``order``
    (0: the frame's zero point) with leave-one-out, outliers weighted down
    (:func:`trex.framefit.clip_weight`), plus the local term
    (:func:`trex.localterm.local_residual`: neighbours from ``LOCAL_EXCLUSION`` to 3
    ``scale`` px, Gaussian sigma ``scale``, shrunk by S / (S + N)).  A star's own
    residual never enters its own value, so its transit stays in its light curve.
    An aperture with too few such stars gets 0 (logged).  ``table["xref"]``,
    ``["yref"]`` px; returns the magnitudes to subtract (:func:`apply_transparency`).
    """
    x, y = table["xref"].astype(float), table["yref"].astype(float)
    napertures = sum(1 for n in table.dtype.names if n.startswith("ifl_"))
    out = np.zeros((len(table), napertures))
    residuals, errors, usable = [], [], []
    for i in range(napertures):
        flux = table[f"ifl_{i:03d}"].astype(float)
        f_ref = flux - table[f"dfl_{i:03d}"]
        err = table[f"ire_{i:03d}"].astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            residuals.append(-2.5 * np.log10(flux / f_ref))
            usable.append((table[f"irq_{i:03d}"] == 0) & (f_ref > 0) & (err <= LOCAL_MAX_ERROR))
        errors.append(err)
    # one neighbour search for every aperture
    pairs = neighbour_pairs(x, y, np.flatnonzero(np.logical_or.reduce(usable)), 3 * scale)
    for i, (residual, err, use) in enumerate(zip(residuals, errors, usable)):
        try:
            # structure trusted whole (significance_z=0): unlike the aperture magnitudes'
            # (see localterm.significance), the clear sky's difference fluxes lose nothing by
            # it, and a transiting kernel stamp's 1-2 mmag pull on the flux scale is
            # taken out (tests/test_signals.py)
            fit = framefit.fit_frame(residual, err, use, np.zeros(len(table)), x, y,
                                   order=order, local_scale=scale, significance_z=0.0,
                                   pairs=pairs)
        except framefit.MagfitError as reason:
            log.info("local transparency of aperture %d left out: %s", i, reason)
            continue
        out[:, i] = fit.correction
    return out


def apply_transparency(table: np.ndarray, correction: np.ndarray) -> None:
    """Take ``correction`` (n, napertures) mag out of an ``iphot`` table in place:
    F and its error are multiplied by 10^(0.4 c) (the frame's flux scale at the star
    was off by that factor), so ``ifl``, ``ife``, ``dfl`` and ``irm`` change and
    ``ire`` (the relative error) does not."""
    for i in range(correction.shape[1]):
        factor = 10.0 ** (0.4 * correction[:, i])
        f_ref = table[f"ifl_{i:03d}"] - table[f"dfl_{i:03d}"]
        table[f"ifl_{i:03d}"] *= factor
        table[f"ife_{i:03d}"] *= factor
        table[f"dfl_{i:03d}"] = table[f"ifl_{i:03d}"] - f_ref
        table[f"irm_{i:03d}"] -= correction[:, i]


def on_frame(aphot: np.ndarray, stars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The frame's own aperture fluxes (n, napertures) and sky (n,) of catalog ``stars``
    (n,), all in its ``aphot`` table (:func:`trex.photometry.aphot_dtype`), ADU."""
    order = np.argsort(aphot["star"], kind="stable")
    at = order[np.searchsorted(aphot["star"], stars, sorter=order)]
    napertures = sum(1 for n in aphot.dtype.names if n.startswith("flux_"))
    flux = np.stack([aphot[f"flux_{i:03d}"][at] for i in range(napertures)], axis=1)
    return flux.astype(np.float64), aphot["bgv"][at].astype(np.float64)


def _near_invalid_border(diff: np.ndarray, x: np.ndarray, y: np.ndarray,
                         reach: float) -> np.ndarray:
    """bool (n,): stars within ``reach`` px of the NaN border that the kernel leaves
    around D (found on D's middle row and column)."""
    ny, nx = diff.shape
    cols = np.flatnonzero(np.isfinite(diff[ny // 2]))
    rows = np.flatnonzero(np.isfinite(diff[:, nx // 2]))
    if not len(cols) or not len(rows):
        return np.ones(len(x), dtype=bool)
    return ((x - reach < cols[0]) | (x + reach > cols[-1])
            | (y - reach < rows[0]) | (y + reach > rows[-1]))


def _fill(table: np.ndarray, i: int, f_ref, dflux, dfluxerr, flag, config: Config,
          exptime: float) -> None:
    flux = f_ref + dflux
    good = flux > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        table[f"irm_{i:03d}"] = np.where(
            good, config.camera.zeropoint - 2.5 * np.log10(flux / exptime), np.nan)
        table[f"ire_{i:03d}"] = np.where(good, MAG_ERR_FACTOR * dfluxerr / flux, np.nan)
    table[f"ifl_{i:03d}"], table[f"ife_{i:03d}"], table[f"dfl_{i:03d}"] = flux, dfluxerr, dflux
    table[f"irq_{i:03d}"] = flag | np.where(good, 0, PHOT["NONPOSITIVE"].bit)


def ism_rows(framekey: int, photrefkey: int, table: np.ndarray, objectids: np.ndarray) -> dict:
    """``ism_photometry`` columns (one row per star and aperture) of an iphot table."""
    napertures = sum(1 for n in table.dtype.names if n.startswith("ifl_"))
    n = len(table) * napertures
    rows = {"framekey": np.full(n, framekey, dtype=np.int64),
            "photrefkey": np.full(n, photrefkey, dtype=np.int64),
            "objectid": np.tile(objectids, napertures),
            "aperture": np.repeat(np.arange(napertures, dtype=np.int16), len(table)),
            "xcc": np.tile(table["xref"], napertures), "ycc": np.tile(table["yref"], napertures)}
    for column, prefix in (("dflux", "dfl"), ("dfluxerr", "ife"), ("flux", "ifl"),
                           ("fluxerr", "ife"), ("mag", "irm"), ("magerr", "ire"),
                           ("flag", "irq")):
        rows[column] = np.concatenate([table[f"{prefix}_{i:03d}"] for i in range(napertures)])
    rows["flag"] = rows["flag"].astype(np.int32)
    return rows


@functools.lru_cache(maxsize=4)
def variance_factor(method: str, nphase: int = 9, size: int = 96) -> np.ndarray:
    """Per-pixel variance of resampled unit white noise, (nphase, nphase) over the
    sub-pixel phases (v, u) in [0, 1] (a table; see :func:`noise_ratio`)."""
    rng = np.random.default_rng(12345)
    noise = rng.standard_normal((size + 8, size + 8)).astype(np.float32)
    g = np.arange(0, size, 8, dtype=float)
    gx, gy = (a.ravel() for a in np.meshgrid(g, g))
    table = np.empty((nphase, nphase))
    for a, pv in enumerate(np.linspace(0, 1, nphase)):
        for b, pu in enumerate(np.linspace(0, 1, nphase)):
            t = fit_transform(gx, gy, gx + 4 + pu, gy + 4 + pv, order=1, maxiter=0)
            out = resample(noise, t, (size, size), method=method)
            table[a, b] = np.var(out[2:-2, 2:-2])
    return table


def _phase_factor(table: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    n = table.shape[0] - 1
    pu, pv = (u - np.floor(u)) * n, (v - np.floor(v)) * n
    iu, iv = np.minimum(pu.astype(int), n - 1), np.minimum(pv.astype(int), n - 1)
    wu, wv = pu - iu, pv - iv
    return ((1 - wv) * ((1 - wu) * table[iv, iu] + wu * table[iv, iu + 1])
            + wv * ((1 - wu) * table[iv + 1, iu] + wu * table[iv + 1, iu + 1]))


def noise_ratio(diff: np.ndarray, model: np.ndarray, reference: np.ndarray, solution,
                transform: Transform, mask: np.ndarray, *, gain: float, rdnoise: float,
                ref_noise: float, method: str, stride: int = 8) -> float:
    """Clipped (5 sigma) std of D / expected noise over every ``stride``-th good pixel.

    ``ref_noise`` is the reference's pixel variance over a raw frame's (NOISEFAC)."""
    ny, nx = diff.shape
    h = solution.spec.halfsize + 1
    yy, xx = (a.ravel() for a in np.mgrid[h:ny - h:stride, h:nx - h:stride])
    good = (mask[yy, xx] == 0) & np.isfinite(diff[yy, xx]) & np.isfinite(model[yy, xx])
    yy, xx = yy[good], xx[good]
    u, v = transform(xx, yy)
    f = _phase_factor(variance_factor(method), u, v)
    pix = (rdnoise / gain) ** 2
    var_img = f * (np.maximum(model[yy, xx], 0.0) / gain + pix)
    cx, cy = np.linspace(0, nx - 1, 9), np.linspace(0, ny - 1, 9)
    k2 = np.array([[np.sum(solution.kernel(a, b) ** 2) for a in cx] for b in cy])
    k2_at = k2[np.clip(np.rint(yy / (ny - 1) * 8).astype(int), 0, 8),
               np.clip(np.rint(xx / (nx - 1) * 8).astype(int), 0, 8)]
    var_ref = k2_at * ref_noise * (np.maximum(reference[yy, xx], 0.0) / gain + pix)
    _, _, std, _ = clipped_stats(diff[yy, xx] / np.sqrt(var_img + var_ref), 5.0, 5)
    return float(std)


def index_rows(framekey: int, photrefkey: int, path: str, nobjects: int, rjd: float,
               group: tuple[str, str, str], created: str) -> dict:
    """``iphotfiles`` and ``photindex_iphots`` rows of one frame's iphot product
    (``iphotfilekey`` = framekey: one product per frame, so a re-run replaces it)."""
    projid, field, ccd = group
    return {"iphotfiles": {"iphotfilekey": [framekey], "framekey": [framekey],
                           "photrefkey": [photrefkey], "path": [path], "nobjects": [nobjects],
                           "created": [created]},
            "photindex_iphots": {"framekey": [framekey], "iphotfilekey": [framekey],
                                 "rjd": [rjd], "projid": [projid], "field": [field],
                                 "ccd": [ccd]}}
