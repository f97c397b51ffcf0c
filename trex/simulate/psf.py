"""The simulated PSF: an elliptical Gaussian (simple model) or Moffat (realistic model).

Both are described by the Gaussian shape S, D, K of :func:`trex.simulate.optics.psf_shape`
(px⁻², fistar convention; FWHM and ellipticity over the field and with focus)
and a Moffat exponent ``beta`` (0 = Gaussian).  The Moffat profile with the same
FWHM and axis ratio is ``(1 + c Q)^-beta`` with ``Q = S (dx²+dy²) + D (dx²-dy²)
+ 2 K dx dy`` and ``c = (2^(1/beta) - 1) / (2 ln 2)``, so that its half-maximum
contour is the Gaussian's.  With beta ~ 3 it holds ~4x more light beyond 2 FWHM
than the Gaussian does.
"""

from __future__ import annotations

import numpy as np

from trex._render import add_moffat, add_stars


def moffat_scale(beta: float) -> float:
    """Factor c turning a Gaussian shape (S, D, K) into the Moffat shape of equal FWHM."""
    return (2.0 ** (1.0 / beta) - 1.0) / (2.0 * np.log(2.0))


def draw_stars(image: np.ndarray, x, y, flux, s, d, k, beta: float = 0.0,
               min_level: float = 0.0, wing_cut: float = 1e-5) -> int:
    """Add pixel-integrated stars into ``image`` (float32 (ny, nx), in place); return the count.

    ``x``, ``y`` (px, 0-based), ``flux`` (image units, total), ``s``, ``d``,
    ``k`` (Gaussian shape, px⁻²) are arrays of shape (n,).  ``beta`` 0 draws
    Gaussians exactly as the simple model always did; beta > 1 draws Moffat
    stars whose stamps stop where less than ``wing_cut`` of the flux or a
    surface brightness below ``min_level`` (image units per px) is left.
    """
    args = [np.ascontiguousarray(a, dtype=np.float64) for a in (x, y, flux, s, d, k)]
    if not beta:
        return add_stars(image, *args)
    c = moffat_scale(beta)
    x, y, flux, s, d, k = args
    return add_moffat(image, x, y, flux, s * c, d * c, k * c, np.full(x.size, float(beta)),
                      wing_cut=wing_cut, min_level=min_level)


def aperture_fraction(radius: float, s, d, k, beta: float = 0.0) -> np.ndarray:
    """Fraction of a star's flux inside a circle of ``radius`` px, shape of ``s``.

    The ellipse is replaced by the circle of the same area (geometric-mean
    width): Gaussian ``1 - exp(-r² / 2 σ²)``, Moffat ``1 - (1 + c r² / σ²)^(1 - beta)``
    with ``σ² = 1 / sqrt(S² - D² - K²)``.
    """
    s, d, k = np.asarray(s), np.asarray(d), np.asarray(k)
    sigma2 = 1.0 / np.sqrt((s + d) * (s - d) - k * k)
    if not beta:
        return 1.0 - np.exp(-0.5 * radius * radius / sigma2)
    return 1.0 - (1.0 + moffat_scale(beta) * radius * radius / sigma2) ** (1.0 - beta)
