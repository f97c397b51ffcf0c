"""Registration: a polynomial map from a frame onto the reference grid, and resampling.

A :class:`Transform` maps reference-grid pixels (x, y) to frame pixels (u, v)
with 2-D polynomials in normalised coordinates.  It is fitted from matched
source positions (:func:`fit_transform`) or from the two frames' WCSs
(:func:`transform_from_wcs`).  :func:`resample` then puts the frame on the
reference grid in one Cython call (``trex._resample``).  Pixel coordinates are
0-based, pixel centres at integers.

>>> t = transform_from_wcs(ref_wcs, frame_wcs, ref_image.shape)
>>> on_ref = resample(frame_image, t, ref_image.shape, method="flux")
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from trex import _resample
from trex.flags import MASK, pixels_with
from trex.kernelspec import dense_coefficients, nterms, poly_terms

log = logging.getLogger(__name__)

METHODS = ("flux", "bilinear", "bicubic")


@dataclass(frozen=True)
class Transform:
    """Polynomial map from reference pixels (x, y) to frame pixels (u, v).

    Attributes
    ----------
    order : polynomial order.
    ucoef, vcoef : float64, (order+1, order+1): u and v as polynomials of the
        normalised reference coordinates (dense, ``c[i, j]`` multiplies xn^i yn^j).
    umix : float64, (order+2, order+2): u as a polynomial of (xn, vn), used
        by the flux-conserving two-pass resampling.
    norm : (x0, sx, y0, sy, v0, sv): xn = (x - x0) / sx, yn = (y - y0) / sy,
        vn = (v - v0) / sv.
    rms : rms residual of the fit, frame px.
    """

    order: int
    ucoef: np.ndarray
    vcoef: np.ndarray
    umix: np.ndarray
    norm: tuple[float, float, float, float, float, float]
    rms: float

    def __call__(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frame pixel coordinates (u, v) of reference pixels (x, y)."""
        x0, sx, y0, sy = self.norm[:4]
        xn = (np.asarray(x, dtype=np.float64) - x0) / sx
        yn = (np.asarray(y, dtype=np.float64) - y0) / sy
        return _evaluate(self.ucoef, xn, yn), _evaluate(self.vcoef, xn, yn)


def _evaluate(dense: np.ndarray, xn: np.ndarray, yn: np.ndarray) -> np.ndarray:
    """sum of dense[i, j] xn^i yn^j over i + j < n, by Horner's rule in x, then in y."""
    n = dense.shape[0]
    out = 0.0
    for j in range(n - 1, -1, -1):
        inner = dense[n - 1 - j, j]
        for i in range(n - 2 - j, -1, -1):
            inner = inner * xn + dense[i, j]
        out = out * yn + inner
    return out + np.zeros(np.broadcast(xn, yn).shape)


def _lstsq(xn: np.ndarray, yn: np.ndarray, target: np.ndarray, order: int) -> np.ndarray:
    design = poly_terms(xn, yn, order).T
    coef = np.linalg.lstsq(design, target, rcond=None)[0]
    return dense_coefficients(coef, order)


def fit_transform(x: np.ndarray, y: np.ndarray, u: np.ndarray, v: np.ndarray,
                  order: int = 3, nsigma: float = 5.0, maxiter: int = 3) -> Transform:
    """Fit the polynomial map (x, y) -> (u, v) to matched positions.

    Parameters
    ----------
    x, y : positions on the reference grid, px, shape (n,).
    u, v : the same sources on the frame, px, shape (n,).
    order : polynomial order (needs at least nterms(order + 1) pairs).
    nsigma, maxiter : matches with residual > nsigma * rms are dropped and the
        fit repeated, at most maxiter times.
    """
    x, y, u, v = (np.asarray(a, dtype=np.float64).ravel() for a in (x, y, u, v))
    if not (x.size == y.size == u.size == v.size):
        raise ValueError("x, y, u, v must have the same length")
    if x.size < nterms(order + 1):
        raise ValueError(f"order {order} needs at least {nterms(order + 1)} matched pairs, "
                         f"got {x.size}")
    norm = _norm(x, y)
    xn, yn = (x - norm[0]) / norm[1], (y - norm[2]) / norm[3]
    keep = np.ones(x.size, dtype=bool)
    for _ in range(maxiter + 1):
        ucoef = _lstsq(xn[keep], yn[keep], u[keep], order)
        vcoef = _lstsq(xn[keep], yn[keep], v[keep], order)
        resid = np.hypot(_evaluate(ucoef, xn, yn) - u, _evaluate(vcoef, xn, yn) - v)
        rms = float(np.sqrt(np.mean(resid[keep] ** 2)))
        new = resid <= max(nsigma * rms, 1e-9)
        if np.array_equal(new, keep) or new.sum() < nterms(order + 1):
            break
        keep = new
    # u as a function of (x, v), sampled densely from the fitted map itself
    gx, gy = (g.ravel() for g in np.meshgrid(np.linspace(-1, 1, 24), np.linspace(-1, 1, 24)))
    gu, gv = _evaluate(ucoef, gx, gy), _evaluate(vcoef, gx, gy)
    norm = norm + _norm(gv)
    umix = _lstsq(gx, (gv - norm[4]) / norm[5], gu, order + 1)
    log.debug("transform order %d: %d/%d pairs, rms %.4f px", order, keep.sum(), x.size, rms)
    return Transform(order, ucoef, vcoef, umix, norm, rms)


def _norm(*coords: np.ndarray) -> tuple[float, ...]:
    """(centre, half-range) of each coordinate array, for normalisation to [-1, 1]."""
    out = []
    for a in coords:
        lo, hi = float(a.min()), float(a.max())
        out += [0.5 * (lo + hi), max(0.5 * (hi - lo), 1.0)]
    return tuple(out)


def transform_from_wcs(ref_wcs, frame_wcs, shape: tuple[int, int], order: int = 3,
                       nsample: int = 24) -> Transform:
    """The map from reference pixels to frame pixels implied by two celestial WCSs.

    A ``nsample`` x ``nsample`` grid of reference pixels covering ``shape``
    (ny, nx) is taken to the sky with ``ref_wcs`` and back to frame pixels
    with ``frame_wcs`` (astropy WCS objects, 0-based pixel calls), and the
    polynomial fitted to it.
    """
    ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(-0.5, nx - 0.5, nsample), np.linspace(-0.5, ny - 0.5, nsample))
    sky = ref_wcs.pixel_to_world_values(gx.ravel(), gy.ravel())
    u, v = frame_wcs.world_to_pixel_values(*sky)
    return fit_transform(gx.ravel(), gy.ravel(), np.asarray(u), np.asarray(v), order=order,
                         maxiter=0)


def resample(image: np.ndarray, transform: Transform, shape: tuple[int, int],
             method: str = "flux", fill: float = np.nan) -> np.ndarray:
    """Resample a frame onto the reference grid.

    Parameters
    ----------
    image : frame, shape (ny_src, nx_src), flux per pixel (ADU); converted to
        float32.  Non-finite pixels count as 0.
    transform : map from reference pixels to frame pixels.
    shape : (ny, nx) of the reference grid.
    method : ``"flux"`` integrates a piecewise-parabolic surface over each
        target pixel's footprint (flux-conserving, fitsh ``fitrans -k``-like);
        ``"bilinear"``/``"bicubic"`` interpolate at the pixel centre and
        multiply by the pixel-area ratio.
    fill : value where the target pixel centre maps outside the frame.

    Returns
    -------
    float32 array of shape ``shape``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown resampling method {method!r}: expected one of {METHODS}")
    src = np.ascontiguousarray(image, dtype=np.float32)
    if src.ndim != 2:
        raise ValueError("image must be 2-D")
    out = np.empty(shape, dtype=np.float32)
    norm = np.array(transform.norm, dtype=np.float64)
    if method == "flux":
        _resample.resample_flux(src, transform.vcoef, transform.umix, norm, out, fill)
    else:
        _resample.resample_interp(src, transform.ucoef, transform.vcoef, norm, out,
                                  method == "bicubic", fill)
    return out


def register_frame(image: np.ndarray, mask: np.ndarray | None, frame_wcs, ref_wcs,
                   shape: tuple[int, int], *, order: int = 3, method: str = "flux",
                   saturation: float | None = None) -> tuple[np.ndarray, np.ndarray, Transform]:
    """A frame and its mask on the reference grid: (float32 image, uint8 MASK bits, the
    reference-to-frame pixel map).

    Reference pixels within 1 px of a masked frame pixel's mapped position (the
    interpolation footprint) and off the frame get BADPIX; resampled values at
    or above ``0.95 saturation`` get SATURATED.
    """
    transform = transform_from_wcs(ref_wcs, frame_wcs, shape, order=order)
    out = resample(image, transform, shape, method=method)
    bad = np.zeros(shape, dtype=np.uint8)
    bad[~np.isfinite(out)] |= MASK["BADPIX"].bit
    if mask is not None and np.any(mask):
        fy, fx = pixels_with(mask, 0xFF)
        x, y = transform_from_wcs(frame_wcs, ref_wcs, np.shape(mask), order=order)(fx, fy)
        ix, iy = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                inside = ((ix + dx >= 0) & (ix + dx < shape[1]) & (iy + dy >= 0)
                          & (iy + dy < shape[0]))
                bad[iy[inside] + dy, ix[inside] + dx] |= MASK["BADPIX"].bit
    if saturation is not None:
        with np.errstate(invalid="ignore"):
            bad[out >= 0.95 * saturation] |= MASK["SATURATED"].bit
    return out, bad, transform
