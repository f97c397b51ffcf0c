"""Tangent-plane geometry and the linear least-squares TAN-SIP fit.

The solver works in the *standard coordinates* (xi, eta) of a gnomonic (TAN)
projection at a tangent point (ra0, dec0): degrees, xi towards increasing RA,
eta towards north, exactly the intermediate world coordinates of a FITS
``RA---TAN`` / ``DEC--TAN`` WCS.  A TAN-SIP WCS is then a 2-D polynomial from
pixel offsets (u, v) = (x - cx, y - cy) to (xi, eta); its linear part is the CD
matrix and the higher orders are the SIP ``A``/``B`` terms.  Fitting that
polynomial is a linear least-squares problem, so no iterative optimiser is
needed.  Pixel coordinates are 0-based (pixel centres at integers); the FITS
CRPIX written out is the 0-based centre + 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS, Sip

#: pixel offsets are divided by this before building monomials (conditioning).
_NORM = 1024.0


def gnomonic(ra: np.ndarray, dec: np.ndarray, ra0: float,
             dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Standard coordinates (xi, eta) of (ra, dec) at tangent point (ra0, dec0).

    All angles in degrees; inputs of any shape (float64), outputs the same shape.
    Points more than 90 deg from the tangent point come back as NaN.
    """
    a, d = np.radians(ra), np.radians(dec)
    a0, d0 = np.radians(ra0), np.radians(dec0)
    cosd, dra = np.cos(d), a - a0
    denom = np.sin(d) * np.sin(d0) + cosd * np.cos(d0) * np.cos(dra)
    denom = np.where(denom > 0, denom, np.nan)
    xi = cosd * np.sin(dra) / denom
    eta = (np.sin(d) * np.cos(d0) - cosd * np.sin(d0) * np.cos(dra)) / denom
    return np.degrees(xi), np.degrees(eta)


def inverse_gnomonic(xi: np.ndarray, eta: np.ndarray, ra0: float,
                     dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec) in degrees of standard coordinates (xi, eta) in degrees; RA in [0, 360)."""
    x, y = np.radians(xi), np.radians(eta)
    a0, d0 = np.radians(ra0), np.radians(dec0)
    denom = np.cos(d0) - y * np.sin(d0)
    ra = a0 + np.arctan2(x, denom)
    dec = np.arctan2(np.sin(d0) + y * np.cos(d0), np.hypot(x, denom))
    return np.degrees(ra) % 360.0, np.degrees(dec)


def monomials(order: int) -> list[tuple[int, int]]:
    """Exponents (p, q) of u**p * v**q with p + q <= order, by increasing total order."""
    return [(p, n - p) for n in range(order + 1) for p in range(n, -1, -1)]


def design(u: np.ndarray, v: np.ndarray, order: int) -> np.ndarray:
    """Design matrix, shape (len(u), nterms), of normalised monomials of pixel offsets u, v (px)."""
    upow, vpow = [np.ones(len(u))], [np.ones(len(v))]
    for _ in range(order):
        upow.append(upow[-1] * (u / _NORM))
        vpow.append(vpow[-1] * (v / _NORM))
    terms = monomials(order)
    out = np.empty((len(u), len(terms)))
    for j, (p, q) in enumerate(terms):
        np.multiply(upow[p], vpow[q], out=out[:, j])
    return out


@dataclass(frozen=True)
class PlaneModel:
    """Polynomial map from pixel offsets to standard coordinates at a tangent point.

    ``coeffs`` has shape (nterms, 2) (columns xi, eta; deg) over the normalised
    monomials of :func:`monomials`; ``centre`` is the 0-based pixel (cx, cy) of
    the offsets; ``ra0``, ``dec0`` the tangent point, deg.
    """

    coeffs: np.ndarray
    order: int
    centre: tuple[float, float]
    ra0: float
    dec0: float

    def plane(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Standard coordinates, shape (n, 2), deg, of 0-based pixels x, y."""
        return design(x - self.centre[0], y - self.centre[1], self.order) @ self.coeffs

    def cd(self) -> np.ndarray:
        """Linear part, 2x2, deg/px (rows xi, eta; columns x, y)."""
        return self.coeffs[1:3].T / _NORM


def lstsq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least-squares solution of a @ x = b by the normal equations.

    Well conditioned here (normalised monomials of order <= 5) and ~100 times
    faster than an SVD solver for (thousands x tens) matrices.
    """
    return np.linalg.solve(a.T @ a, a.T @ b)


def recentre(model: PlaneModel) -> tuple[float, float]:
    """Sky position (ra, dec), deg, of the model's pixel centre: the next tangent point."""
    xi0, eta0 = model.coeffs[0]
    ra, dec = inverse_gnomonic(xi0, eta0, model.ra0, model.dec0)
    return float(ra), float(dec)


def to_wcs(model: PlaneModel, shape: tuple[int, int]) -> WCS:
    """An astropy TAN(-SIP) WCS equal to ``model`` (forward A/B; inverse AP/BP fitted, order + 2).

    The model's constant term must be negligible (the tangent point sits at the
    centre pixel); ``shape`` is (ny, nx) of the frame.
    """
    cd = model.cd()
    cdinv = np.linalg.inv(cd)
    wcs = WCS(naxis=2)
    sip = model.order >= 2
    suffix = "-SIP" if sip else ""
    wcs.wcs.ctype = [f"RA---TAN{suffix}", f"DEC--TAN{suffix}"]
    wcs.wcs.crval = [model.ra0, model.dec0]
    wcs.wcs.crpix = [model.centre[0] + 1.0, model.centre[1] + 1.0]
    wcs.wcs.cd = cd
    wcs.wcs.radesys = "ICRS"
    wcs.pixel_shape = (shape[1], shape[0])
    if sip:
        a, b = _forward_sip(model, cdinv)
        ap, bp = _inverse_sip(model, cdinv, shape, model.order + 2)
        wcs.sip = Sip(a, b, ap, bp, wcs.wcs.crpix)
    return wcs


def _forward_sip(model: PlaneModel, cdinv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SIP A, B matrices (order+1 square): CD^-1 times the non-linear coefficients."""
    n = model.order + 1
    a, b = np.zeros((n, n)), np.zeros((n, n))
    for (p, q), c in zip(monomials(model.order), model.coeffs, strict=True):
        if p + q < 2:
            continue
        du, dv = cdinv @ c / _NORM ** (p + q)
        a[p, q], b[p, q] = du, dv
    return a, b


def _inverse_sip(model: PlaneModel, cdinv: np.ndarray, shape: tuple[int, int],
                 order: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit AP, BP (``order``) so that U + AP(U, V) = u on a 40x40 grid over the frame,
    where (U, V) = CD^-1 (xi, eta) are the linear ("focal plane") pixel offsets."""
    gy, gx = np.mgrid[0:shape[0]:40j, 0:shape[1]:40j]
    gx, gy = gx.ravel(), gy.ravel()
    u, v = gx - model.centre[0], gy - model.centre[1]
    big_u, big_v = ((model.plane(gx, gy) - model.coeffs[0]) @ cdinv.T).T
    coeffs = lstsq(design(big_u, big_v, order), np.stack([u - big_u, v - big_v], 1))
    ap, bp = np.zeros((order + 1, order + 1)), np.zeros((order + 1, order + 1))
    for (p, q), c in zip(monomials(order), coeffs, strict=True):
        ap[p, q], bp[p, q] = c / _NORM ** (p + q)
    return ap, bp
