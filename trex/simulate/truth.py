"""Ground truth of a simulation: expected noise, and the files under ``PROJ/truth/``.

``PROJ/truth/simulation.json`` holds every parameter needed to continue the
same simulation (seed, field, camera, optics, variables and their
ephemerides, nights done, next frame number); ``PROJ/truth/<night>.npz``
holds, per object frame and star, the true position (0-based, trimmed frame),
flux (e- and calibrated ADU), PSF shape and expected aperture-photometry noise,
and per frame the true WCS (FITS header text), sky, transparency and airmass.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from trex.fits import atomic_path
from trex.project import Project, safe_name

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
                   radii: tuple = RADII, annulus: tuple = ANNULUS) -> np.ndarray:
    """Expected 1-sigma error (calibrated ADU) of aperture fluxes, shape (nstars, nradii).

    ``flux`` is the star's total flux and ``sky`` the sky per pixel, both in
    calibrated ADU (after flat-fielding); ``flat`` the flat response at the
    star; ``dark`` the dark electrons per pixel; ``rdnoise`` in e-.  The
    aperture holds the fraction ``1 - exp(-r²/2σ²)`` of a Gaussian with the
    star's mean σ; the sky error adds the annulus-mean uncertainty.
    """
    flux = np.asarray(flux, float)
    sigma2 = 1.0 / np.sqrt((s + d) * (s - d) - k * k)
    pix_var = (np.asarray(sky) * gain * flat + dark + rdnoise**2) / (gain * flat) ** 2
    nsky = np.pi * (annulus[1] ** 2 - annulus[0] ** 2)
    out = np.empty((flux.size, len(radii)))
    for j, r in enumerate(radii):
        frac = 1.0 - np.exp(-0.5 * r * r / sigma2)
        npix = np.pi * r * r
        out[:, j] = np.sqrt(np.maximum(frac * flux, 0.0) / (gain * flat)
                            + npix * pix_var * (1.0 + npix / nsky))
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
    arrays have shape (nframes, nstars), ``noise`` (nframes, nstars, 3) for
    ``RADII``), plus ``params`` (the simulation parameters) and ``variables``
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
