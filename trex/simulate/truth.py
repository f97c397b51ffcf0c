"""Ground truth of a simulation: expected noise, and the files under ``PROJ/truth/``.

``PROJ/truth/simulation.json`` holds every parameter needed to continue the
same simulation: seed, field centre and name, camera, optics, photometric
zero point, ``realism`` (the option set, :mod:`trex.simulate.realism`),
variables and flares with their ephemerides (BJD_TDB), nights done and the
next frame number.  Forced transits carry ``forced`` ("bright"/"crowded") and,
if crowded, ``neighbour`` (catalog row) and ``separation`` (px).

``PROJ/truth/<night>.npz`` (read with :func:`load_truth`) holds:

per star (nstars,)
    ``objectid``, ``ra``, ``dec`` (deg, ICRS at epoch 2016.0), ``mag`` (true,
    above the atmosphere), ``catmag`` (what the catalog CSV says: mag + 0.02
    rms), ``color`` (the catalog colour, mag; drives the colour term)
per object frame (nframes,)
    ``frame`` (raw file name), ``jd`` (UTC JD of mid-exposure), ``wcs`` (FITS
    header text of the true TAN-SIP WCS of the trimmed frame; SIP order 5 on
    the realistic model), ``airmass`` (at the field centre), ``sky``
    (calibrated ADU per pixel at the frame centre), ``gradient``
    (nframes, 2: relative sky slope over the half frame, x and y),
    ``transparency`` (cloud passages, 1 = clear), ``focus`` (FWHM scale),
    ``dx``, ``dy``, ``rotation`` (offset of the true axis from the header
    RA/DEC, px, and field rotation, deg), ``crval`` (nframes, 2: true RA, Dec
    of the optical axis, deg), ``header_radec`` (nframes, 2: the RA, DEC the
    header says, deg), ``moon_alt``, ``moon_illum``, ``cosmics`` (number of
    cosmic-ray hits)
per frame and star (nframes, nstars)
    ``x``, ``y`` (px, 0-based, trimmed frame; stars off the frame included),
    ``flux_e``, ``flux_adu`` (expected total flux after extinction, colour
    term, clouds and variability, before scintillation and the flat-field
    response: what a perfect calibration leaves, e- and calibrated ADU),
    ``scintillation`` (the flux factor drawn on this frame: the image holds
    ``flux * scintillation``; 1 on the simple model), ``scint_sigma`` (its
    relative rms from Young's formula), ``extinction`` (total atmospheric
    extinction, mag, clouds included), ``clouds`` (the clouds' part, mag),
    ``airmass_star`` (airmass used for the star), ``sky_local`` (true sky at
    the star, calibrated ADU per pixel), ``s``, ``d``, ``k`` (PSF shape,
    px⁻², fistar convention: the Gaussian of the PSF's FWHM and axis ratio;
    the Moffat profile is in :mod:`trex.simulate.psf`), ``noise``
    (nframes, nstars, naper: expected 1-sigma error, calibrated ADU, of the
    flux in the apertures of the project's ``[photometry] apertures``: radii
    ``noise_radii`` px with sky annuli ``noise_annuli`` (naper, 2: inner,
    outer px; trex's defaults are ``RADII`` and ``ANNULUS``); photon, sky,
    dark, read noise and scintillation, with a perfect flat),
    ``saturated`` (the star's central pixel is at SATURATE),
    ``variability`` (flux factor)
per night
    ``calibrations`` (file names of bias, dark and flat frames),
    ``hot_pixels`` (n, 2: row, column of hot pixels), ``psf_beta`` (Moffat
    beta, 0 = Gaussian), ``pointing_error`` (2,: the night's offset of the
    true axis from the header RA/DEC, px, before the few-px jitter),
    ``flat_illumination`` (2,: slopes gx, gy of the twilight flats'
    illumination ``1 + gx ax + gy ay`` over the half frame, which the
    night sky lacks), ``trails`` (n, 7: frame index, x0, y0, x1, y1 px,
    sigma px, peak calibrated ADU per px of each satellite trail),
    ``bleed`` (n, 4: frame index, column, first row, last row of each run of
    pixels at full well after charge bleeding, trimmed-frame px),
    ``faint_ra``, ``faint_dec``, ``faint_mag``, ``faint_color`` (stars in the
    images below the catalog limit and not in the catalog; no proper motion;
    their positions follow from the frame's ``wcs``)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from trex.fits import atomic_path
from trex.project import Project, safe_name
from trex.simulate.psf import aperture_fraction

#: default apertures (px) and sky annulus (inner, outer radius, px) of the noise estimate
RADII = (1.95, 2.45, 2.95)
ANNULUS = (7.0, 13.0)
PARAMS_NAME = "simulation.json"


def truth_dir(root: Path | str) -> Path:
    """``ROOT/PROJ/truth``."""
    return Project(Path(root)).proj("truth")


def expected_noise(flux: np.ndarray, s: np.ndarray, d: np.ndarray, k: np.ndarray,
                   sky: np.ndarray | float, gain: float, rdnoise: float,
                   flat: np.ndarray | float = 1.0, dark: np.ndarray | float = 0.0,
                   radii: tuple = RADII, annulus: tuple = ANNULUS, beta: float = 0.0,
                   scintillation: np.ndarray | float = 0.0) -> np.ndarray:
    """Expected 1-sigma error (calibrated ADU) of aperture fluxes, shape (nstars, nradii).

    ``flux`` is the star's total flux and ``sky`` the sky per pixel, both in
    calibrated ADU (after flat-fielding); ``flat`` the flat response at the
    star; ``dark`` the dark electrons per pixel; ``rdnoise`` in e-.  The
    aperture holds the fraction of the star's light given by
    :func:`trex.simulate.psf.aperture_fraction` (Gaussian, or Moffat for
    ``beta`` > 0); the sky error adds the annulus-mean uncertainty and
    ``scintillation`` (relative flux rms, scalar or (nstars,)) adds
    ``scintillation * fraction * flux`` in quadrature.
    """
    flux = np.asarray(flux, float)
    pix_var = (np.asarray(sky) * gain * flat + dark + rdnoise**2) / (gain * flat) ** 2
    nsky = np.pi * (annulus[1] ** 2 - annulus[0] ** 2)
    out = np.empty((flux.size, len(radii)))
    for j, r in enumerate(radii):
        frac = aperture_fraction(r, s, d, k, beta)
        npix = np.pi * r * r
        var = np.maximum(frac * flux, 0.0) / (gain * flat) + npix * pix_var * (1.0 + npix / nsky)
        if np.any(scintillation):
            var = var + (np.asarray(scintillation) * frac * flux) ** 2
        out[:, j] = np.sqrt(var)
    return out


def save_params(root: Path | str, params: dict) -> Path:
    tmp, final = atomic_path(truth_dir(root) / PARAMS_NAME)
    tmp.write_text(json.dumps(params, indent=1, sort_keys=True))
    tmp.replace(final)
    return final


def load_params(root: Path | str) -> dict | None:
    """The simulation parameters of a project, or None if it was never simulated."""
    path = truth_dir(root) / PARAMS_NAME
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def save_night(root: Path | str, night: str, arrays: dict) -> Path:
    """Write ``PROJ/truth/<night>.npz`` (compressed) atomically."""
    tmp, final = atomic_path(truth_dir(root) / f"{safe_name(night)}.npz")
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    tmp.replace(final)
    return final


def load_truth(root: Path | str, night: str | None = None) -> dict:
    """Truth of one simulated night (default: the first).

    Returns a dict of numpy arrays (see the module docstring; per-star-and-frame
    arrays have shape (nframes, nstars), ``noise`` (nframes, nstars, naper) for
    ``noise_radii``), plus ``params`` (the simulation parameters) and ``variables``
    (the variable stars and flares, with ``index`` the star's row).
    """
    params = load_params(root)
    if params is None:
        raise FileNotFoundError(f"{truth_dir(root)}: no simulation here")
    night = night or params["nights"][0]["night"]
    path = truth_dir(root) / f"{safe_name(night)}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no truth for night {night!r}")
    with np.load(path) as data:
        out = {name: data[name] for name in data.files}
    out["params"] = params
    out["variables"] = params["variables"] + params["flares"]
    return out
