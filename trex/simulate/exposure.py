"""One object frame: where the stars land, how much of their light arrives, photons, raw frame.

:func:`frame_photons` gives the expected photo-electrons of the trimmed area
before the flat response (sky + stars + trails: no noise), with the truth of
every catalog star; :func:`object_frame` exposes them into a raw frame.  The
simple model draws nothing here beyond the frame's noise stream
``(seed, OBJECT, night, frame)``; the realistic model's scintillation and
satellite trails come from ``(seed, FRAME_EXTRAS, night, frame)``.
"""

from __future__ import annotations

import numpy as np

from trex._artefacts import add_trail
from trex.simulate.atmosphere import cloud_extinction, extinction, young_scintillation
from trex.simulate.detector import expose
from trex.simulate.field import FRAME_EXTRAS, OBJECT, Field
from trex.simulate.optics import FWHM_PER_SIGMA, offset_pointing, psf_shape, wcs_header, world_to_pixel
from trex.simulate.plan import NightPlan, airmass_of, altitude_of
from trex.simulate.psf import draw_stars
from trex.simulate.stars import positions_at
from trex.simulate.truth import ANNULUS, RADII, expected_noise


def sky_terms(gradient: np.ndarray, ax, ay) -> tuple:
    """Relative sky = x term + y term (1 at the centre) at normalised ax, ay in [-1, 1]."""
    return 1.0 + gradient[0] * ax + 0.02 * ax * ax, gradient[1] * ay + 0.02 * ay * ay


def pointing(field: Field, plan: NightPlan, i: int) -> tuple[float, float]:
    """True (RA, Dec) of the optical axis on frame ``i``, deg (CRVAL of the true WCS)."""
    p = field.params
    return offset_pointing(p["ra"], p["dec"], plan.dx[i], plan.dy[i], field.optics.pixscale,
                           plan.rotation[i])


def star_light(field: Field, plan: NightPlan, i: int, stars: dict,
               factor: np.ndarray | float = 1.0) -> dict:
    """Positions, PSF shapes, atmosphere and flux of ``stars`` (catalog-like dict) on frame ``i``.

    Returns arrays of shape (n,): x, y (px, 0-based), s, d, k (Gaussian shape,
    px⁻²), extinction (mag: airmass and colour terms plus clouds), clouds
    (mag), airmass, flux_adu and flux_e (expected total flux, calibrated ADU
    and e-, after the atmosphere and ``factor``, before scintillation).
    """
    p, optics, realism, rotation = field.params, field.optics, field.realism, plan.rotation[i]
    ra, dec = positions_at(stars, 2000.0 + (plan.mid[i] - 2451545.0) / 365.25)
    crval = pointing(field, plan, i)
    x, y = world_to_pixel(optics, ra, dec, crval, rotation)
    s, d, k = psf_shape(optics, x, y, plan.focus[i])
    if realism.is_simple:
        airmass = np.full(x.size, plan.airmass[i])
        clouds = np.full(x.size, -2.5 * np.log10(plan.transparency[i]))
        atmosphere = 10.0 ** (-0.4 * p["extinction"] * plan.airmass[i]) * plan.transparency[i]
        mag_atm = p["extinction"] * airmass + clouds
    else:
        airmass = (airmass_of(altitude_of(ra, dec, plan.lst[i], p["site"]["latitude"]))
                   if realism.field_airmass else np.full(x.size, plan.airmass[i]))
        hours = (plan.mid[i] - plan.mid[0]) * 24.0
        clouds = cloud_extinction(plan.clouds, x, y, hours, plan.cloud_mag[i],
                                  realism.cloud_structure)
        mag_atm = extinction(airmass, stars["color"], p["extinction"],
                             realism.extinction_color) + clouds
        atmosphere = 10.0 ** (-0.4 * mag_atm)
    flux_adu = (p["exptime"] * 10.0 ** (-0.4 * (stars["mag"] - p["zeropoint"]))
                * atmosphere * factor)
    return {"x": x, "y": y, "s": s, "d": d, "k": k, "extinction": mag_atm, "clouds": clouds,
            "airmass": airmass, "flux_adu": flux_adu, "flux_e": flux_adu * field.camera.gain}


def scintillate(field: Field, light: dict, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Young's relative rms (n,) and one draw of the flux factor 1 + rms z (n,) for ``light``."""
    p, realism = field.params, field.realism
    if realism.aperture <= 0:
        return np.zeros(light["x"].size), np.ones(light["x"].size)
    sigma = young_scintillation(realism.aperture, light["airmass"], p["exptime"],
                                p["site"]["altitude"])
    return sigma, np.maximum(1.0 + sigma * rng.standard_normal(sigma.size), 0.0)


def add_trails(field: Field, plan: NightPlan, i: int, photons: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
    """Draw satellite trails (Poisson mean ``trail_rate``) into ``photons`` (e-, in place).

    Returns (ntrails, 6): x0, y0, x1, y1 (px, 0-based; the ends lie off the
    frame), sigma (px, the PSF's at the axis) and peak (calibrated ADU per px
    on the trail's centre line).
    """
    size, realism = field.optics.size, field.realism
    count = rng.poisson(realism.trail_rate) if realism.trail_rate > 0 else 0
    out = np.zeros((count, 6))
    for n in range(count):
        cx, cy = rng.uniform(0.1 * size, 0.9 * size, 2)
        angle = rng.uniform(0.0, np.pi)
        half = 1.5 * size
        sigma = field.optics.fwhm * plan.focus[i] / FWHM_PER_SIGMA
        peak_e = float(np.exp(rng.uniform(np.log(100.0), np.log(20000.0))))
        ends = (cx - half * np.cos(angle), cy - half * np.sin(angle),
                cx + half * np.cos(angle), cy + half * np.sin(angle))
        add_trail(photons, *ends, sigma, peak_e)
        out[n] = (*ends, sigma, peak_e / field.camera.gain)
    return out


def frame_photons(field: Field, plan: NightPlan, index: int, i: int,
                  factor: np.ndarray) -> tuple[np.ndarray, dict]:
    """Expected e- (float32 (size, size), before the flat response) of frame ``i``, and its truth.

    ``factor`` (nstars,) is the variability of the catalog stars.  The truth
    dict holds :func:`star_light`'s arrays for the catalog stars plus
    ``scintillation`` (flux factor drawn for this frame, 1 on the simple
    model), ``scint_sigma`` (Young's relative rms), ``sky_local`` (calibrated
    ADU per px at each star), ``trails`` (see :func:`add_trails`), ``crval``
    (true pointing, deg) and ``wcs`` (true TAN-SIP header).
    """
    p, camera, size, realism = field.params, field.camera, field.optics.size, field.realism
    stars = star_light(field, plan, i, field.catalog, factor)
    axis = (np.arange(size) - (size - 1) / 2.0) / (size / 2.0)
    tx, ty = sky_terms(plan.gradient[i], axis, axis)
    level = plan.sky[i] * camera.gain
    photons = np.add.outer((level * ty).astype(np.float32), (level * tx).astype(np.float32))
    extras = np.random.default_rng([p["seed"], FRAME_EXTRAS, index, i])
    stars["scint_sigma"], stars["scintillation"] = scintillate(field, stars, extras)
    psf = {"beta": realism.psf_beta, "min_level": realism.psf_floor,
           "wing_cut": realism.psf_wing_cut}
    draw_stars(photons, stars["x"], stars["y"], stars["flux_e"] * stars["scintillation"],
               stars["s"], stars["d"], stars["k"], **psf)
    if field.faint["mag"].size:
        faint = star_light(field, plan, i, field.faint)
        _, draw = scintillate(field, faint, extras)
        draw_stars(photons, faint["x"], faint["y"], faint["flux_e"] * draw, faint["s"],
                   faint["d"], faint["k"], **psf)
    stars["trails"] = add_trails(field, plan, i, photons, extras)
    centre = (size - 1) / 2.0
    tx, ty = sky_terms(plan.gradient[i], (stars["x"] - centre) / (size / 2.0),
                       (stars["y"] - centre) / (size / 2.0))
    stars["sky_local"] = plan.sky[i] * (tx + ty)
    stars["crval"] = pointing(field, plan, i)
    stars["wcs"] = wcs_header(field.optics, stars["crval"], plan.rotation[i])
    return photons, stars


def object_frame(field: Field, plan: NightPlan, index: int, i: int, factor: np.ndarray,
                 radii: tuple = RADII, annuli: list | None = None) -> tuple[np.ndarray, dict]:
    """Raw frame ``i`` of night ``index`` and its truth (``factor``: variability, (nstars,)).

    Adds to :func:`frame_photons`' truth ``noise`` (nstars, len(radii): the
    expected error in apertures ``radii`` px with sky annuli ``annuli``
    ((inner, outer) px each; default ``ANNULUS``)), ``saturated`` (nstars,),
    ``cosmics`` (count) and ``bleed`` (column runs at full well, (n, 3): x,
    first y, last y).
    """
    p, camera, size = field.params, field.camera, field.optics.size
    photons, stars = frame_photons(field, plan, index, i, factor)
    rng = np.random.default_rng([p["seed"], OBJECT, index, i])
    raw, hits, runs = expose(photons, p["exptime"], camera, field.patterns, rng,
                             realism=field.realism)
    xi = np.clip(np.rint(stars["x"]).astype(int), 0, size - 1)
    yi = np.clip(np.rint(stars["y"]).astype(int), 0, size - 1)
    annuli = [ANNULUS] * len(radii) if annuli is None else [tuple(a) for a in annuli]
    groups = [([r], [a]) for r, a in zip(radii, annuli)] if len(set(annuli)) > 1 else [
        (list(radii), annuli)]
    stars["noise"] = np.concatenate([
        expected_noise(stars["flux_adu"], stars["s"], stars["d"], stars["k"],
                       stars["sky_local"], camera.gain, camera.rdnoise,
                       field.patterns.flat[yi, xi], field.patterns.dark[yi, xi] * p["exptime"],
                       radii=tuple(rs), annulus=ann[0], beta=field.realism.psf_beta,
                       scintillation=stars["scint_sigma"]) for rs, ann in groups], axis=1)
    inside = (stars["x"] > -0.5) & (stars["x"] < size - 0.5) & (stars["y"] > -0.5) & (
        stars["y"] < size - 0.5)
    stars["saturated"] = inside & (raw[yi, xi] >= camera.saturate)
    stars["cosmics"] = hits
    stars["bleed"] = runs
    return raw, stars
