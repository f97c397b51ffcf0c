"""One simulated night: object and calibration frames in ``RAW/<night>/`` plus its truth.

Each frame draws from its own random stream ``(seed, stream, night, frame)``,
so the output does not depend on the order frames are made in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits as afits
from astropy.time import Time

from trex._render import add_stars
from trex.fits import write_image
from trex.simulate.detector import Camera, Patterns, expose, make_patterns
from trex.simulate.optics import Optics, offset_pointing, psf_shape, wcs_header, world_to_pixel
from trex.simulate.plan import NightPlan, local_midnight, make_plan
from trex.simulate.stars import make_catalog, make_flares, positions_at, variability
from trex.simulate.truth import expected_noise, save_night
from trex.times import bjd_tdb, site

log = logging.getLogger(__name__)

#: numbers of the random streams (so no two purposes share one)
CATALOG, CAMERA, OBJECT, CALIB, FLARES = 1, 2, 4, 5, 6


@dataclass
class Field:
    """What stays fixed over all nights: camera, optics, patterns, catalog, variables."""

    params: dict
    camera: Camera
    optics: Optics
    patterns: Patterns
    catalog: dict


def make_field(params: dict) -> Field:
    """Rebuild the fixed parts of a simulation from its parameters (deterministic)."""
    seed = params["seed"]
    camera = Camera(**params["camera"])
    optics = Optics(**params["optics"])
    radius = np.sqrt(0.5) * optics.size * optics.pixscale / 3600.0 * 1.06
    catalog = make_catalog(np.random.default_rng([seed, CATALOG]), params["stars"],
                           params["ra"], params["dec"], radius, tuple(params["mag_range"]))
    patterns = make_patterns(camera, optics.size, np.random.default_rng([seed, CAMERA]))
    return Field(params=params, camera=camera, optics=optics, patterns=patterns, catalog=catalog)


def _header(field: Field, kind: str, start_jd: float, exptime: float,
            frameno: int) -> afits.Header:
    p, camera, size = field.params, field.camera, field.optics.size
    h = afits.Header()
    h["IMAGETYP"] = (kind, "frame type")
    h["EXPTIME"] = (exptime, "exposure time, s")
    h["DATE-OBS"] = (Time(start_jd, format="jd", scale="utc").isot, "UTC start of exposure")
    if kind == "object":
        h["OBJECT"] = (p["field"], "field name")
        h["RA"] = (p["ra"], "nominal field centre RA, deg")
        h["DEC"] = (p["dec"], "nominal field centre Dec, deg")
    h["PROJID"] = p["projid"]
    h["CCD"] = p["ccd"]
    h["FILTER"] = p["filter"]
    h["PIXSCALE"] = (field.optics.pixscale, "arcsec/px")
    h["GAIN"] = (camera.gain, "e-/ADU")
    h["RDNOISE"] = (camera.rdnoise, "read noise, e-")
    h["SATURATE"] = (camera.saturate, "ADU")
    h["SITELAT"] = p["site"]["latitude"]
    h["SITELONG"] = p["site"]["longitude"]
    h["SITEALT"] = p["site"]["altitude"]
    h["BIASSEC"] = f"[{size + 1}:{size + camera.overscan},1:{size}]"
    h["TRIMSEC"] = f"[1:{size},1:{size}]"
    h["FRAMENO"] = frameno
    h["COMMENT"] = "simulated by trex.simulate (truth in PROJ/truth/)"
    return h


def _write(field: Field, folder: Path, frameno: int, raw: np.ndarray, header) -> str:
    suffix = ".fits.fz" if field.params["compress"] else ".fits"
    name = f"{field.params['ccd']}-{frameno:07d}{suffix}"
    write_image(folder / name, raw, header, compress=field.params["compress"])
    return name


def sky_terms(gradient: np.ndarray, ax, ay) -> tuple:
    """Relative sky = x term + y term (1 at the centre) at normalised ax, ay in [-1, 1]."""
    return 1.0 + gradient[0] * ax + 0.02 * ax * ax, gradient[1] * ay + 0.02 * ay * ay


def _stars_in_frame(field: Field, plan: NightPlan, i: int, factor: np.ndarray) -> dict:
    """True positions, shapes and fluxes (e-, ADU) of every catalog star on frame ``i``."""
    p, optics, rotation = field.params, field.optics, plan.rotation[i]
    ra, dec = positions_at(field.catalog, 2000.0 + (plan.mid[i] - 2451545.0) / 365.25)
    crval = offset_pointing(p["ra"], p["dec"], plan.dx[i], plan.dy[i], optics.pixscale, rotation)
    x, y = world_to_pixel(optics, ra, dec, crval, rotation)
    s, d, k = psf_shape(optics, x, y, plan.focus[i])
    atmosphere = 10.0 ** (-0.4 * p["extinction"] * plan.airmass[i]) * plan.transparency[i]
    flux_adu = (p["exptime"] * 10.0 ** (-0.4 * (field.catalog["mag"] - p["zeropoint"]))
                * atmosphere * factor)
    return {"x": x, "y": y, "s": s, "d": d, "k": k, "flux_adu": flux_adu,
            "flux_e": flux_adu * field.camera.gain, "wcs": wcs_header(optics, crval, rotation)}


def object_frame(field: Field, plan: NightPlan, index: int, i: int,
                 factor: np.ndarray) -> tuple[np.ndarray, dict]:
    """Raw frame ``i`` of night ``index`` and its truth (``factor``: variability, (nstars,))."""
    p, camera, size = field.params, field.camera, field.optics.size
    stars = _stars_in_frame(field, plan, i, factor)
    axis = (np.arange(size) - (size - 1) / 2.0) / (size / 2.0)
    tx, ty = sky_terms(plan.gradient[i], axis, axis)
    level = plan.sky[i] * camera.gain
    photons = np.add.outer((level * ty).astype(np.float32), (level * tx).astype(np.float32))
    add_stars(photons, stars["x"], stars["y"], stars["flux_e"], stars["s"], stars["d"], stars["k"])
    rng = np.random.default_rng([p["seed"], OBJECT, index, i])
    raw, hits = expose(photons, p["exptime"], camera, field.patterns, rng)
    xi = np.clip(np.rint(stars["x"]).astype(int), 0, size - 1)
    yi = np.clip(np.rint(stars["y"]).astype(int), 0, size - 1)
    centre = (size - 1) / 2.0
    tx, ty = sky_terms(plan.gradient[i], (stars["x"] - centre) / (size / 2.0),
                       (stars["y"] - centre) / (size / 2.0))
    sky = plan.sky[i] * (tx + ty)
    stars["noise"] = expected_noise(stars["flux_adu"], stars["s"], stars["d"], stars["k"], sky,
                                    camera.gain, camera.rdnoise, field.patterns.flat[yi, xi],
                                    field.patterns.dark[yi, xi] * p["exptime"])
    inside = (stars["x"] > -0.5) & (stars["x"] < size - 0.5) & (stars["y"] > -0.5) & (
        stars["y"] < size - 0.5)
    stars["saturated"] = inside & (raw[yi, xi] >= camera.saturate)
    stars["cosmics"] = hits
    return raw, stars


def _variability(field: Field, plan: NightPlan) -> np.ndarray:
    """Flux factors, shape (nframes, nstars), of all variables and flares on this night."""
    p = field.params
    events = p["variables"] + p["flares"]
    factor = np.ones((plan.start.size, field.catalog["ra"].size))
    if not events:
        return factor
    index = np.array([v["index"] for v in events])
    sitep = p["site"]
    bjd = bjd_tdb(plan.mid, field.catalog["ra"][index],
                  field.catalog["dec"][index],
                  site(sitep["latitude"], sitep["longitude"], sitep["altitude"]))
    for column, var in enumerate(events):
        factor[:, var["index"]] *= variability(var, bjd[:, column])
    return factor


def add_flares(field: Field, plan: NightPlan, index: int) -> None:
    """Draw the flares of night ``index`` into ``field.params['flares']`` (replacing any)."""
    p = field.params
    rng = np.random.default_rng([p["seed"], FLARES, index])
    flares = make_flares(rng, field.catalog["mag"], float(plan.start[0]), float(plan.start[-1]),
                         count=p["flares_per_night"])
    p["flares"] = [f for f in p["flares"] if f.get("night") != index]
    p["flares"] += [dict(f, night=index) for f in flares]


def calibration_frames(field: Field, index: int, folder: Path, frameno: int) -> list[str]:
    """Write ``ncal`` flats (dusk), biases and darks (dawn) of night ``index``; return names."""
    p, camera, size = field.params, field.camera, field.optics.size
    midnight = local_midnight(p["first_night"], p["site"]["longitude"]) + index
    names = []
    when = (("flat", 5.0, midnight - 4.5 / 24), ("bias", 0.0, midnight + 4.0 / 24),
            ("dark", p["exptime"], midnight + 4.2 / 24))
    for kind, exptime, t0 in when:
        for j in range(p["ncal"]):
            rng = np.random.default_rng([p["seed"], CALIB, index, frameno])
            level = 25000.0 * camera.gain * 0.8**j if kind == "flat" else 0.0
            photons = np.full((size, size), level, dtype=np.float32)
            raw, _ = expose(photons, exptime, camera, field.patterns, rng, cosmics=kind != "bias")
            start = t0 + j * (exptime + 20.0) / 86400.0
            names.append(_write(field, folder, frameno, raw,
                                _header(field, kind, start, exptime, frameno)))
            frameno += 1
    return names


def simulate_night(root: Path, field: Field, index: int) -> dict:
    """Write night ``index`` (frames and truth); return {night, objects, calibrations}."""
    p = field.params
    plan = make_plan(p, index)
    add_flares(field, plan, index)
    folder = Path(root) / "RAW" / plan.night
    frameno = p["next_frameno"]
    factor = _variability(field, plan)
    keys = {"x": np.float64, "y": np.float64, "flux_e": np.float32, "flux_adu": np.float32,
            "s": np.float32, "d": np.float32, "k": np.float32, "noise": np.float32,
            "saturated": bool}
    rows = {key: [] for key in keys}
    names, wcs, cosmics = [], [], []
    for i in range(plan.start.size):
        raw, stars = object_frame(field, plan, index, i, factor[i])
        names.append(_write(field, folder, frameno, raw,
                            _header(field, "object", plan.start[i], p["exptime"], frameno)))
        frameno += 1
        for key, dtype in keys.items():
            rows[key].append(stars[key].astype(dtype))
        wcs.append(stars["wcs"].tostring(sep="\n"))
        cosmics.append(stars["cosmics"])
        log.debug("%s: frame %d/%d", plan.night, i + 1, plan.start.size)
    calibrations = calibration_frames(field, index, folder, frameno)
    p["next_frameno"] = frameno + len(calibrations)
    cat = field.catalog
    save_night(root, plan.night, dict(
        {key: np.stack(rows[key]) for key in keys},
        frame=np.array(names), jd=plan.mid, wcs=np.array(wcs),
        airmass=plan.airmass, sky=plan.sky, gradient=plan.gradient,
        transparency=plan.transparency, focus=plan.focus, dx=plan.dx, dy=plan.dy,
        rotation=plan.rotation, moon_alt=plan.moon_alt, moon_illum=plan.moon_illum,
        cosmics=np.array(cosmics), variability=factor.astype(np.float32),
        objectid=cat["objectid"], ra=cat["ra"], dec=cat["dec"], mag=cat["mag"],
        catmag=cat["catmag"], calibrations=np.array(calibrations),
        hot_pixels=field.patterns.hot))
    return {"night": plan.night, "objects": len(names), "calibrations": len(calibrations)}
