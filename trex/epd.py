"""External parameter decorrelation (EPD) of light curves.

The magnitudes of a star are fitted, by linear least squares with iterative
clipping, as a linear function of external parameters
of each frame: PSF shape S, D, K (and their squares and products), sub-pixel
phase (sin/cos of 2 pi x and 2 pi y and their second harmonics), local sky,
hour angle, zenith distance and airmass.  The fit is made to median-smoothed
magnitudes, so signals shorter than the smoothing window (a transit) are not
absorbed; the model is then subtracted from the raw magnitudes and the median
added back (``mag - model + median``).  The fit is the Cython kernel
``cext/detrend.pyx``, many stars per call (:func:`epd_many`).

Parameter names (``config.detrend.epd_parameters``): see :data:`PARAMETERS`.
"""

from __future__ import annotations

import logging

import numpy as np

from trex._detrend import epd_batch

log = logging.getLogger(__name__)

#: name -> description of every EPD parameter
PARAMETERS = {
    "s": "PSF S (fsv)", "d": "PSF D (fdv)", "k": "PSF K (fkv)",
    "s2": "S^2", "d2": "D^2", "k2": "K^2", "sd": "S*D", "sk": "S*K", "dk": "D*K",
    "sinx": "sin(2 pi x)", "cosx": "cos(2 pi x)", "siny": "sin(2 pi y)", "cosy": "cos(2 pi y)",
    "sin2x": "sin(4 pi x)", "cos2x": "cos(4 pi x)", "sin2y": "sin(4 pi y)",
    "cos2y": "cos(4 pi y)",
    "bg": "local sky, ADU (aperture photometry only)",
    "ha": "hour angle, rad", "zd": "zenith distance, rad", "airmass": "airmass, sec(zd)",
}
#: sub-pixel phase terms used in place of the sky for image-subtraction magnitudes
PHASE = ("sinx", "cosx", "siny", "cosy")


def local_sidereal_time(jd_utc: np.ndarray, longitude: float) -> np.ndarray:
    """Local mean sidereal time, rad, of UTC Julian dates (shape (n,)) at an east
    longitude in deg.

    IAU 2006 GMST (``erfa.gmst06``) on the unique times, with UT1 taken as UTC:
    |UT1 - UTC| < 0.9 s is < 14 arcsec of hour angle, far below what EPD can
    notice, and no IERS table has to be read (offline, and 3 s faster).
    """
    import erfa
    from astropy.time import Time

    import trex.times  # noqa: F401  (configures astropy for offline use)

    jd_utc = np.asarray(jd_utc, dtype=np.float64)
    unique, inverse = np.unique(jd_utc, return_inverse=True)
    utc = Time(unique, format="jd", scale="utc")
    tt = utc.tt  # leap seconds only
    gmst = erfa.gmst06(utc.jd1, utc.jd2, tt.jd1, tt.jd2)
    lst = np.mod(gmst + np.radians(longitude), 2 * np.pi)
    return lst[inverse].reshape(jd_utc.shape)


def sky_geometry(lst: np.ndarray, ra: float, dec: float, latitude: float) -> dict[str, np.ndarray]:
    """Hour angle (rad, in [-pi, pi)), zenith distance (rad) and airmass of a star.

    ``lst`` in rad (shape (n,)); ``ra``, ``dec``, ``latitude`` in deg.  The
    airmass is sec(zd) (plane-parallel), capped at 40 below the horizon.
    """
    ha = np.mod(lst - np.radians(ra) + np.pi, 2 * np.pi) - np.pi
    phi, delta = np.radians(latitude), np.radians(dec)
    cosz = np.sin(phi) * np.sin(delta) + np.cos(phi) * np.cos(delta) * np.cos(ha)
    zd = np.arccos(np.clip(cosz, -1.0, 1.0))
    airmass = 1.0 / np.maximum(cosz, 1.0 / 40.0)
    return {"ha": ha, "zd": zd, "airmass": airmass}


def parameter_names(names, kind: str) -> list[str]:
    """The EPD parameters of a column kind: ``"a"`` (aperture) keeps the list;
    ``"i"`` (image subtraction) has no sky, it uses the sub-pixel phase instead."""
    unknown = [n for n in names if n not in PARAMETERS]
    if unknown:
        raise ValueError(f"unknown EPD parameter(s) {unknown}; known: {sorted(PARAMETERS)}")
    names = list(dict.fromkeys(names))
    if kind == "i" and "bg" in names:
        names = [n for n in names if n != "bg"] + [p for p in PHASE if p not in names]
    return names


def external_parameters(rows: np.ndarray, names, geometry: dict | None = None
                        ) -> dict[str, np.ndarray]:
    """EPD parameter values per row of a light curve (``lc_dtype`` rows, shape (n,)).

    ``geometry`` holds ``ha``, ``zd``, ``airmass`` (shape (n,)) when those are asked for.
    """
    s, d, k = (rows[c].astype(np.float64) for c in ("fsv", "fdv", "fkv"))
    x, y = rows["xcc"].astype(np.float64), rows["ycc"].astype(np.float64)
    base = {"s": s, "d": d, "k": k, "bg": rows["bgv"].astype(np.float64)}
    out = {}
    for name in names:
        if name in base:
            out[name] = base[name]
        elif name in ("s2", "d2", "k2"):
            out[name] = base[name[0]] ** 2
        elif name in ("sd", "sk", "dk"):
            out[name] = base[name[0]] * base[name[1]]
        elif name[:3] in ("sin", "cos"):
            harmonic = 2.0 if name[3] == "2" else 1.0
            coord = x if name[-1] == "x" else y
            out[name] = (np.sin if name[:3] == "sin" else np.cos)(2 * np.pi * harmonic * coord)
        elif geometry is not None and name in geometry:
            out[name] = np.asarray(geometry[name], dtype=np.float64)
        else:
            raise ValueError(f"EPD parameter {name!r} needs the sky geometry (ha, zd, airmass)")
    return out


def epd_many(mags: np.ndarray, params: np.ndarray, offsets: np.ndarray, smooth: int = 21,
             clip: float = 3.0, iters: int = 3, min_finite: int = 0, min_points: int | None = None,
             exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EPD of many light curves at once (the Cython kernel ``trex._detrend.epd_batch``).

    ``mags`` (N,) and ``params`` (N, p) are the stars' rows one after the other, star
    ``s`` owning rows ``offsets[s]:offsets[s + 1]`` (``offsets`` (nstars + 1,)), each in
    time order; ``exclude`` (N,) bool, optional.  Each star is fitted as :func:`epd`
    describes; a star with fewer than ``min_finite`` measured magnitudes is not tried.
    Returns the detrended magnitudes (N,) (NaN where missing or not fitted), the
    coefficients (nstars, 1 + p) (constant, then each parameter's slope in its units;
    0 for a parameter constant on the star, NaN for one never measured or a star not
    fitted) and whether each star was fitted (nstars,) bool.
    """
    mags = np.ascontiguousarray(mags, dtype=np.float64)
    params = np.ascontiguousarray(np.reshape(params, (len(mags), -1)), dtype=np.float64)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    out = np.empty(len(mags))
    coefficients = np.empty((len(offsets) - 1, params.shape[1] + 1))
    fitted = np.empty(len(offsets) - 1, dtype=np.uint8)
    skip = np.zeros(0 if exclude is None else len(mags), dtype=np.uint8)
    if exclude is not None:
        skip[:] = np.asarray(exclude, dtype=bool)
    epd_batch(mags, params, offsets, skip, int(smooth), float(clip), int(iters),
              int(min_finite), int(min_points or 0), out, coefficients, fitted)
    return out, coefficients, fitted.astype(bool)


def epd(mags: np.ndarray, params: dict[str, np.ndarray], smooth: int = 21,
        clip: float = 3.0, iters: int = 3, min_points: int | None = None,
        exclude: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, float], bool]:
    """Decorrelate one light curve against external parameters.

    Parameters
    ----------
    mags : array, shape (n,)
        magnitudes in time order, NaN where missing.
    params : dict name -> array, shape (n,)
        external parameters (see :func:`external_parameters`); one without
        any finite value is ignored, otherwise rows with a NaN are not fitted;
        one constant over the fitted rows gets a zero slope.
    smooth : points of the running median applied to the magnitudes
        before the fit (1: none; scipy ``median_filter``, edges repeated).
    clip, iters : points whose residual (raw magnitude minus model) exceeds
        ``clip`` robust sigmas (1.4826 MAD) are left out of the next fit,
        ``iters`` times (less when nothing changes or too few points would be left).
    exclude : bool array, shape (n,), optional
        points left out of the fit (still corrected), e.g. a transit.
    min_points : fewest usable points to fit (default: the largest of 10,
        3 (p + 1) and the smoothing window).

    The fit is linear least squares (Householder QR) on the columns
    standardised over the usable rows, made to the running median of the
    magnitudes; the model is subtracted from the raw magnitudes and their
    median added back.

    Returns
    -------
    (detrended, coefficients, ok) : detrended magnitudes (shape (n,), NaN where
        a magnitude or parameter is missing, all NaN when not fitted); the model
        coefficients per parameter in the parameter's units plus ``const``; and
        whether the star was fitted.
    """
    mags = np.asarray(mags, dtype=np.float64)
    names = list(params)
    values = (np.stack([np.asarray(params[n], dtype=np.float64) for n in names], axis=1)
              if names else np.zeros((len(mags), 0)))
    out, coef, fitted = epd_many(mags, values, np.array([0, len(mags)]), smooth, clip, iters,
                                 min_points=min_points, exclude=exclude)
    if not fitted[0]:
        return out, {}, False
    coefficients = {n: float(c) for n, c in zip(names, coef[0, 1:], strict=True) if np.isfinite(c)}
    coefficients["const"] = float(coef[0, 0])
    return out, coefficients, True
