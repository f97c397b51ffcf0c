"""In-memory frames for tests of other stages: no files, no detector artefacts.

>>> scene = make_scene(size=256, nstars=200, seed=1)
>>> image, truth = render_frame(scene, noise=True, seed=2)

``image`` is a calibrated-like frame (float32 ADU: sky + stars, optionally
with shot and read noise); ``truth`` holds the stars' 0-based positions,
fluxes (ADU), PSF shapes S, D, K, the expected aperture noise and the WCS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from trex._render import add_stars
from trex.simulate.detector import ZEROPOINT, add_shot_and_read_noise
from trex.simulate.optics import Optics, offset_pointing, psf_shape, wcs_header, world_to_pixel
from trex.simulate.psf import draw_stars
from trex.simulate.stars import make_catalog
from trex.simulate.truth import expected_noise


@dataclass(frozen=True)
class Scene:
    """A star field seen by a camera; positions derive from ``ra``, ``dec`` and ``crval``."""

    optics: Optics
    crval: tuple[float, float]
    ra: np.ndarray          # deg, shape (nstars,)
    dec: np.ndarray         # deg
    mag: np.ndarray         # true magnitudes
    flux: np.ndarray        # ADU per exposure
    sky: float              # ADU per pixel
    gain: float             # e-/ADU
    rdnoise: float          # e-
    zeropoint: float        # mag of 1 ADU/s
    exptime: float          # s
    psf_beta: float = 0.0   # Moffat beta of the PSF; 0 = elliptical Gaussian


def make_scene(size: int = 256, nstars: int = 200, seed: int = 0, fwhm: float = 2.0,
               ellipticity: float = 0.25, sky: float = 1000.0, gain: float = 2.7,
               rdnoise: float = 10.0, mag_range: tuple[float, float] = (8.0, 14.0),
               zeropoint: float = ZEROPOINT, exptime: float = 30.0, pixscale: float = 20.0,
               center: tuple[float, float] = (60.0, -30.0), border: float = 0.0,
               min_separation: float = 0.0, distortion: bool = True,
               psf_beta: float = 0.0) -> Scene:
    """A random star field of ``nstars`` stars on a ``size``² frame.

    Stars lie at least ``border`` px inside the frame.  With ``min_separation``
    (px) stars having a neighbour closer than that are dropped, so fewer than
    ``nstars`` may remain.  ``ellipticity`` is the radial PSF elongation at the
    frame corners (0: round PSF everywhere, also without astigmatism).
    ``psf_beta`` > 1 draws Moffat stars of the same FWHM instead of Gaussians.
    """
    rng = np.random.default_rng([seed, 101])
    optics = Optics(size=size, pixscale=pixscale, fwhm=fwhm, ellipticity=ellipticity,
                    astigmatism=0.06 if ellipticity else 0.0,
                    barrel=3.0 if distortion else 0.0, tilt=0.4 if distortion else 0.0)
    half = np.sqrt(0.5) * size * pixscale / 3600.0 * 1.02
    inside_fraction = max((size - 2 * border) ** 2, 1.0) / (np.pi * (half * 3600 / pixscale) ** 2)
    ndraw = int(nstars / inside_fraction * 2.0) + 50
    cat = make_catalog(rng, ndraw, center[0], center[1], half, mag_range)
    x, y = world_to_pixel(optics, cat["ra"], cat["dec"], center, 0.0)
    keep = np.flatnonzero((x >= border) & (x <= size - 1 - border)
                          & (y >= border) & (y <= size - 1 - border))
    keep = np.sort(rng.permutation(keep)[:nstars])
    if min_separation > 0 and keep.size > 1:
        pairs = cKDTree(np.column_stack([x[keep], y[keep]])).query_pairs(min_separation,
                                                                         output_type="ndarray")
        crowded = np.zeros(keep.size, bool)
        crowded[pairs.ravel()] = True
        keep = keep[~crowded]
    mag = cat["mag"][keep]
    return Scene(optics=optics, crval=center, ra=cat["ra"][keep], dec=cat["dec"][keep],
                 mag=mag, flux=exptime * 10.0 ** (-0.4 * (mag - zeropoint)), sky=float(sky),
                 gain=gain, rdnoise=rdnoise, zeropoint=zeropoint, exptime=exptime,
                 psf_beta=float(psf_beta))


def render_frame(scene: Scene, noise: bool = True, seed: int | None = None,
                 shift: tuple[float, float] = (0.0, 0.0), focus: float = 1.0,
                 order: int = 5) -> tuple[np.ndarray, dict]:
    """Render one calibrated-like frame of ``scene``.

    ``shift`` moves the pointing so that stars move by about (dx, dy) px;
    ``focus`` scales the FWHM.  Returns (image float32 (size, size) ADU,
    truth dict: x, y, flux, mag, ra, dec, s, d, k (per star), fluxerr
    (nstars, 3) for apertures 1.95/2.45/2.95 px with a 7-13 px annulus, sky,
    gain, rdnoise (e-), wcs (astropy Header of the TAN-SIP WCS)).
    """
    optics = scene.optics
    crval = offset_pointing(*scene.crval, -shift[0], -shift[1], optics.pixscale, 0.0)
    x, y = world_to_pixel(optics, scene.ra, scene.dec, crval, 0.0)
    s, d, k = psf_shape(optics, x, y, focus)
    image = np.full((optics.size, optics.size), scene.sky, dtype=np.float32)
    if scene.psf_beta:
        draw_stars(image, x, y, scene.flux, s, d, k, beta=scene.psf_beta,
                   min_level=0.1 / scene.gain)              # wings down to 0.1 e-/px
    else:
        add_stars(image, x, y, scene.flux, s, d, k, order)
    if noise:
        image *= np.float32(scene.gain)
        add_shot_and_read_noise(image, scene.rdnoise, np.random.default_rng(seed))
        image /= np.float32(scene.gain)
    truth = {"x": x, "y": y, "flux": scene.flux.copy(), "mag": scene.mag, "ra": scene.ra,
             "dec": scene.dec, "s": s, "d": d, "k": k, "sky": scene.sky, "gain": scene.gain,
             "rdnoise": scene.rdnoise,
             "fluxerr": expected_noise(scene.flux, s, d, k, scene.sky, scene.gain, scene.rdnoise,
                                       beta=scene.psf_beta),
             "wcs": wcs_header(optics, crval, 0.0)}
    return image, truth
