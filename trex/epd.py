"""External parameter decorrelation (EPD) of one light curve.

Pure numpy/scipy.  The magnitudes of a star are fitted, by linear least
squares with iterative clipping, as a linear function of external parameters
of each frame: PSF shape S, D, K (and their squares and products), sub-pixel
phase (sin/cos of 2 pi x and 2 pi y and their second harmonics), local sky,
hour angle, zenith distance and airmass.  The fit is made to median-smoothed
magnitudes, so signals shorter than the smoothing window (a transit) are not
absorbed; the model is then subtracted from the raw magnitudes and the median
added back (``mag - model + median``).

Parameter names (``config.detrend.epd_parameters``): see :data:`PARAMETERS`.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.ndimage import median_filter

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


def running_median(values: np.ndarray, width: int) -> np.ndarray:
    """Running median of ``width`` points (edges: nearest), shape (n,)."""
    if width <= 1 or len(values) < 3:
        return values.copy()
    return median_filter(values, size=min(int(width), len(values)), mode="nearest")


def _design(params: dict[str, np.ndarray], good: np.ndarray):
    """Standardised design matrix over ``good`` rows: (n, 1 + p), with mean and scale."""
    names = list(params)
    values = np.stack([params[n] for n in names], axis=1) if names else np.zeros((len(good), 0))
    mean = values[good].mean(axis=0) if good.any() else np.zeros(values.shape[1])
    scale = values[good].std(axis=0) if good.any() else np.ones(values.shape[1])
    usable = scale > 1e-12 * np.maximum(np.abs(mean), 1.0)
    scale = np.where(usable, scale, 1.0)
    z = np.where(usable, (values - mean) / scale, 0.0)
    return np.column_stack([np.ones(len(good)), z]), names, mean, scale, usable


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
        any finite value is ignored, otherwise rows with a NaN are not fitted.
    smooth : points of the running median applied to the magnitudes
        before the fit (1: none).
    clip, iters : points whose residual (raw magnitude minus model) exceeds
        ``clip`` robust sigmas are left out of the next fit, ``iters`` times.
    exclude : bool array, shape (n,), optional
        points left out of the fit (still corrected), e.g. a transit found
        after TFA (see :func:`trex.detrend.detrend_rows`).
    min_points : fewest usable points to fit (default: the largest of 10,
        3 (p + 1) and the smoothing window).

    Returns
    -------
    (detrended, coefficients, ok) : detrended magnitudes (shape (n,), NaN where
        a magnitude or parameter is missing, all NaN when not fitted); the model
        coefficients per parameter in the parameter's units plus ``const``; and
        whether the star was fitted.
    """
    mags = np.asarray(mags, dtype=np.float64)
    # a parameter never measured (no PSF fit, no RA/DEC for the airmass) is left out
    params = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()
              if np.isfinite(v).any()}
    good = np.isfinite(mags)
    for v in params.values():
        good &= np.isfinite(v)
    need = min_points or max(10, 3 * (len(params) + 1), smooth)
    if good.sum() < need:
        return np.full_like(mags, np.nan), {}, False
    design, names, mean, scale, usable = _design(params, good)
    target = np.full_like(mags, np.nan)
    target[good] = running_median(mags[good], smooth)
    fit = good.copy() if exclude is None else good & ~exclude
    if fit.sum() < need:
        fit = good.copy()
    for _ in range(max(iters, 0) + 1):
        coef, *_ = np.linalg.lstsq(design[fit], target[fit], rcond=None)
        model = design @ coef
        resid = mags - model
        sigma = 1.4826 * np.median(np.abs(resid[good] - np.median(resid[good])))
        keep = fit & (np.abs(resid - np.median(resid[good])) <= clip * max(sigma, 1e-9))
        if keep.sum() < need or np.array_equal(keep, fit):
            break
        fit = keep
    detrended = np.where(good, mags - model + np.median(mags[good]), np.nan)
    slopes = np.where(usable, coef[1:] / scale, 0.0)
    coefficients = {n: float(c) for n, c in zip(names, slopes, strict=True)}
    coefficients["const"] = float(coef[0] - np.sum(slopes * mean))
    return detrended, coefficients, True
