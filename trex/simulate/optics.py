"""Optics of the simulated camera: TAN-SIP projection and the PSF over the field.

The projection is written out here (not delegated to astropy) so that tests can
check it against astropy reading the FITS header text the simulator writes.
Pixel coordinates are 0-based (pixel centres at integers); the FITS header
uses FITS pixels (value + 1).  The optical axis (CRPIX) sits at the detector
centre; pointing changes move CRVAL, never CRPIX, so the distortion stays
fixed on the detector as it does in a real lens.

Distortion is a barrel term plus a weak quadratic tilt, in SIP form:
``u' = u + A(u, v)``, ``v' = v + B(u, v)`` with u, v the FITS pixel offsets
from CRPIX and ``A = k u (u² + v²) + a20 u² + a02 v²`` (likewise B).  The
realistic model adds a radial order-5 term ``k5 u (u² + v²)²`` (likewise v)
and an order-4 term ``q4 (u² + v²)²`` in A, ``-q4/2 u v (u² + v²)`` in B,
which a SIP fit of order 3 cannot follow; the true WCS header then has
``A_ORDER = 5``.

PSF shape follows the fistar convention used by ``trex._render``:
``exp(-0.5 (S (dx²+dy²) + D (dx²-dy²) + 2 K dx dy))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.io import fits as afits

FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


@dataclass(frozen=True)
class Optics:
    """Fixed optical properties of the camera.

    size : trimmed frame side, px.  pixscale : arcsec/px at the optical axis.
    barrel : barrel distortion, px of displacement at 1024 px from the axis.
    tilt : quadratic (tilt) distortion, px at 1024 px from the axis.
    radial5 : order-5 radial distortion, px at 1024 px from the axis (0: none).
    quartic : order-4 distortion, px at 1024 px from the axis (0: none).
    fwhm : PSF FWHM at the optical axis at best focus, px.
    fwhm_corner : relative FWHM growth from the axis to r = size/√2.
    ellipticity : radial (coma-like) ellipticity 1 - b/a reached at r = size/√2.
    astigmatism : ellipticity of a field-constant term, along ``astig_angle`` (deg).
    """

    size: int
    pixscale: float = 20.0
    barrel: float = 3.0
    tilt: float = 0.4
    fwhm: float = 2.0
    fwhm_corner: float = 0.3
    ellipticity: float = 0.25
    astigmatism: float = 0.06
    astig_angle: float = 30.0
    radial5: float = 0.0
    quartic: float = 0.0

    @property
    def crpix(self) -> float:
        """FITS pixel of the optical axis (both axes)."""
        return (self.size + 1) / 2.0

    def sip(self) -> dict[str, float]:
        """SIP coefficients {name: value} (A_p_q, B_p_q) of the distortion."""
        k = self.barrel / 1024.0**3
        q = self.tilt / 1024.0**2
        out = {"A_3_0": k, "A_1_2": k, "B_2_1": k, "B_0_3": k,
               "A_2_0": q, "A_0_2": 0.5 * q, "B_1_1": q, "B_0_2": -0.5 * q}
        if self.radial5:
            k5 = self.radial5 / 1024.0**5
            out.update({"A_5_0": k5, "A_3_2": 2 * k5, "A_1_4": k5,
                        "B_4_1": k5, "B_2_3": 2 * k5, "B_0_5": k5})
        if self.quartic:
            q4 = self.quartic / 1024.0**4
            out.update({"A_4_0": q4, "A_2_2": 2 * q4, "A_0_4": q4,
                        "B_3_1": -0.5 * q4, "B_1_3": -0.5 * q4})
        return out

    @property
    def sip_order(self) -> int:
        """Polynomial order of the distortion (3 on the simple model, 5 with radial5)."""
        return max(int(p) + int(q) for p, q in (name.split("_")[1:] for name in self.sip()))


def _sip_apply(coeffs: dict[str, float], u: np.ndarray,
               v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SIP displacements (A(u, v), B(u, v)), px."""
    du = np.zeros_like(u)
    dv = np.zeros_like(v)
    terms = [name.split("_") for name in coeffs]
    order = max(max(int(p), int(q)) for _, p, q in terms)
    upow = [u ** n for n in range(order + 1)]        # the same values as u ** p per term
    vpow = [v ** n for n in range(order + 1)]
    for (axis, p, q), value in zip(terms, coeffs.values()):
        term = value * upow[int(p)] * vpow[int(q)]
        if axis == "A":
            du += term
        else:
            dv += term
    return du, dv


def cd_matrix(pixscale: float, rotation: float) -> np.ndarray:
    """CD matrix (deg/px), east left and north up when ``rotation`` (deg) is 0."""
    p = pixscale / 3600.0
    c, s = np.cos(np.radians(rotation)), np.sin(np.radians(rotation))
    return np.array([[-p * c, p * s], [p * s, p * c]])


def tan_project(ra, dec, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic standard coordinates (xi, eta), deg, of (ra, dec) about (ra0, dec0)."""
    ra, dec = np.radians(np.asarray(ra, float)), np.radians(np.asarray(dec, float))
    a0, d0 = np.radians(ra0), np.radians(dec0)
    cosc = np.sin(d0) * np.sin(dec) + np.cos(d0) * np.cos(dec) * np.cos(ra - a0)
    xi = np.cos(dec) * np.sin(ra - a0) / cosc
    eta = (np.cos(d0) * np.sin(dec) - np.sin(d0) * np.cos(dec) * np.cos(ra - a0)) / cosc
    return np.degrees(xi), np.degrees(eta)


def tan_deproject(xi, eta, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`tan_project`: (ra, dec), deg."""
    x, y = np.radians(np.asarray(xi, float)), np.radians(np.asarray(eta, float))
    a0, d0 = np.radians(ra0), np.radians(dec0)
    den = np.cos(d0) - y * np.sin(d0)
    ra = a0 + np.arctan2(x, den)
    dec = np.arctan2(np.sin(d0) + y * np.cos(d0), np.hypot(x, den))
    return np.degrees(ra) % 360.0, np.degrees(dec)


def offset_pointing(ra0: float, dec0: float, dx: float, dy: float, pixscale: float,
                    rotation: float) -> tuple[float, float]:
    """Sky position that lands ``(dx, dy)`` px from the axis of a pointing at (ra0, dec0)."""
    xi, eta = cd_matrix(pixscale, rotation) @ np.array([dx, dy])
    ra, dec = tan_deproject(xi, eta, ra0, dec0)
    return float(ra), float(dec)


def world_to_pixel(optics: Optics, ra, dec, crval: tuple[float, float],
                   rotation: float) -> tuple[np.ndarray, np.ndarray]:
    """0-based pixel positions of (ra, dec) on the trimmed frame.

    The SIP polynomial is inverted by fixed-point iteration (it converges to
    machine precision in a few steps: the distortion's gradient is < 0.05).
    """
    xi, eta = tan_project(ra, dec, *crval)
    cdinv = np.linalg.inv(cd_matrix(optics.pixscale, rotation))
    big_u = cdinv[0, 0] * xi + cdinv[0, 1] * eta
    big_v = cdinv[1, 0] * xi + cdinv[1, 1] * eta
    coeffs = optics.sip()
    u, v = big_u.copy(), big_v.copy()
    for _ in range(30):
        du, dv = _sip_apply(coeffs, u, v)
        new_u, new_v = big_u - du, big_v - dv
        step = max(np.max(np.abs(new_u - u), initial=0), np.max(np.abs(new_v - v), initial=0))
        u, v = new_u, new_v
        if step < 1e-10:
            break
    return u + optics.crpix - 1.0, v + optics.crpix - 1.0


def wcs_header(optics: Optics, crval: tuple[float, float], rotation: float) -> afits.Header:
    """TAN-SIP WCS of the trimmed frame as FITS header cards (FITS pixel convention)."""
    header = afits.Header()
    header["WCSAXES"] = 2
    header["CTYPE1"] = "RA---TAN-SIP"
    header["CTYPE2"] = "DEC--TAN-SIP"
    header["CUNIT1"] = "deg"
    header["CUNIT2"] = "deg"
    header["RADESYS"] = "ICRS"
    header["EQUINOX"] = 2000.0
    header["CRPIX1"] = optics.crpix
    header["CRPIX2"] = optics.crpix
    header["CRVAL1"] = crval[0]
    header["CRVAL2"] = crval[1]
    cd = cd_matrix(optics.pixscale, rotation)
    for i in range(2):
        for j in range(2):
            header[f"CD{i + 1}_{j + 1}"] = float(cd[i, j])
    header["A_ORDER"] = optics.sip_order
    header["B_ORDER"] = optics.sip_order
    for name, value in optics.sip().items():
        header[name] = value
    return header


def psf_shape(optics: Optics, x, y,
              focus: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PSF shape S, D, K (px⁻²) at 0-based positions (x, y).

    The FWHM grows quadratically with distance from the axis and is scaled by
    ``focus`` (focus drift over the night); a radial elongation grows towards
    the corners, and a small field-constant astigmatism is added.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    c = optics.crpix - 1.0
    dx, dy = x - c, y - c
    rho2 = (dx * dx + dy * dy) / (0.5 * optics.size**2)
    sigma = optics.fwhm * focus * (1.0 + optics.fwhm_corner * rho2) / FWHM_PER_SIGMA
    theta = np.arctan2(dy, dx)
    # radial elongation as a 2x2 "shear" (e1, e2) plus a constant one
    ast = np.radians(optics.astig_angle)
    e1 = optics.ellipticity * rho2 * np.cos(2 * theta) + optics.astigmatism * np.cos(2 * ast)
    e2 = optics.ellipticity * rho2 * np.sin(2 * theta) + optics.astigmatism * np.sin(2 * ast)
    e = np.clip(np.hypot(e1, e2), 0.0, 0.6)
    phi = 0.5 * np.arctan2(e2, e1)
    # axes a >= b with a*b = sigma² and b/a = 1 - e
    a2 = sigma**2 / (1.0 - e)
    b2 = sigma**2 * (1.0 - e)
    cp, sp = np.cos(phi), np.sin(phi)
    m11 = cp * cp / a2 + sp * sp / b2
    m22 = sp * sp / a2 + cp * cp / b2
    m12 = cp * sp * (1.0 / a2 - 1.0 / b2)
    return 0.5 * (m11 + m22), 0.5 * (m11 - m22), m12


def shape_to_fwhm(s, d, k) -> np.ndarray:
    """Geometric-mean FWHM (px) of shapes S, D, K."""
    det = (np.asarray(s) + d) * (np.asarray(s) - d) - np.asarray(k) ** 2
    return FWHM_PER_SIGMA * det ** -0.25
