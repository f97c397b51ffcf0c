"""One simulated night: object and calibration frames in ``RAW/<night>/`` plus its truth.

Each frame draws from its own random stream ``(seed, stream, night, frame)``,
so the output does not depend on the order frames are made in.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from astropy.io import fits as afits
from astropy.time import Time

from trex.fits import write_image
from trex.photometry import apertures
from trex.project import Project
from trex.simulate.detector import expose
from trex.simulate.exposure import object_frame, sky_terms
from trex.simulate.field import CALIB, FLARES, FLAT_LIGHT, Field, make_field
from trex.simulate.plan import NightPlan, local_midnight, make_plan
from trex.simulate.stars import make_flares, variability
from trex.simulate.truth import ANNULUS, RADII, save_night
from trex.times import bjd_tdb, site

__all__ = ["Field", "make_field", "simulate_night", "object_frame", "sky_terms",
           "calibration_frames", "add_flares"]

log = logging.getLogger(__name__)


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


def flat_light(field: Field, index: int) -> np.ndarray:
    """Illumination slope (gx, gy) of night ``index``'s twilight flats over the half frame.

    The flats see ``1 + gx ax + gy ay`` (ax, ay in [-1, 1] from the frame
    centre) times the detector response; the night sky does not share it.
    Zero on the simple model.
    """
    amount = field.realism.flat_gradient
    if amount <= 0:
        return np.zeros(2)
    angle = np.random.default_rng([field.params["seed"], FLAT_LIGHT, index]).normal(0.0, 0.35)
    return amount * np.array([np.cos(angle), np.sin(angle)])


def calibration_frames(field: Field, index: int, folder: Path, frameno: int) -> list[str]:
    """Write ``ncal`` flats (dusk), biases and darks (dawn) of night ``index``; return names."""
    p, camera, size = field.params, field.camera, field.optics.size
    midnight = local_midnight(p["first_night"], p["site"]["longitude"]) + index
    names = []
    when = (("flat", 5.0, midnight - 4.5 / 24), ("bias", 0.0, midnight + 4.0 / 24),
            ("dark", p["exptime"], midnight + 4.2 / 24))
    slope = flat_light(field, index)
    axis = (np.arange(size) - (size - 1) / 2.0) / (size / 2.0)
    for kind, exptime, t0 in when:
        for j in range(p["ncal"]):
            rng = np.random.default_rng([p["seed"], CALIB, index, frameno])
            level = 25000.0 * camera.gain * 0.8**j if kind == "flat" else 0.0
            if kind == "flat" and slope.any():
                photons = np.add.outer((level * slope[1] * axis).astype(np.float32),
                                       (level * (1.0 + slope[0] * axis)).astype(np.float32))
            else:
                photons = np.full((size, size), level, dtype=np.float32)
            raw, _, _ = expose(photons, exptime, camera, field.patterns, rng,
                               cosmics=kind != "bias", realism=field.realism)
            start = t0 + j * (exptime + 20.0) / 86400.0
            names.append(_write(field, folder, frameno, raw,
                                _header(field, kind, start, exptime, frameno)))
            frameno += 1
    return names


#: truth arrays per frame and star, with their stored dtypes
PER_STAR = {"x": np.float64, "y": np.float64, "flux_e": np.float32, "flux_adu": np.float32,
            "s": np.float32, "d": np.float32, "k": np.float32, "noise": np.float32,
            "saturated": bool, "sky_local": np.float32, "extinction": np.float32,
            "clouds": np.float32, "airmass_star": np.float32, "scintillation": np.float32,
            "scint_sigma": np.float32}


def _events(rows: list[np.ndarray], width: int) -> np.ndarray:
    """Per-frame event arrays stacked with the frame index as the first column."""
    out = [np.column_stack([np.full(len(r), i), r]) for i, r in enumerate(rows) if len(r)]
    return np.concatenate(out) if out else np.zeros((0, width + 1))


def configured_apertures(root: Path) -> tuple[tuple, list]:
    """Radii (px) and sky annuli of ``[photometry] apertures`` in the project's ``trex.toml``.

    ``RADII`` and ``ANNULUS`` (trex's defaults) when the project has no ``trex.toml``.
    """
    project = Project(root)
    if not project.config_path.is_file():
        return RADII, [ANNULUS] * len(RADII)
    radii, annuli = apertures(project.load_config())
    return tuple(float(r) for r in radii), [tuple(a) for a in annuli]


def simulate_night(root: Path, field: Field, index: int) -> dict:
    """Write night ``index`` (frames and truth); return {night, objects, calibrations}."""
    p, realism = field.params, field.realism
    radii, annuli = configured_apertures(Path(root))
    plan = make_plan(p, index, realism)
    add_flares(field, plan, index)
    folder = Path(root) / "RAW" / plan.night
    frameno = p["next_frameno"]
    factor = _variability(field, plan)
    rows = {key: [] for key in PER_STAR}
    names, wcs, cosmics, crval, trails, bleed = [], [], [], [], [], []
    for i in range(plan.start.size):
        raw, stars = object_frame(field, plan, index, i, factor[i], radii, annuli)
        stars["airmass_star"] = stars["airmass"]
        names.append(_write(field, folder, frameno, raw,
                            _header(field, "object", plan.start[i], p["exptime"], frameno)))
        frameno += 1
        for key, dtype in PER_STAR.items():
            rows[key].append(stars[key].astype(dtype))
        wcs.append(stars["wcs"].tostring(sep="\n"))
        cosmics.append(stars["cosmics"])
        crval.append(stars["crval"])
        trails.append(stars["trails"])
        bleed.append(stars["bleed"])
        log.debug("%s: frame %d/%d", plan.night, i + 1, plan.start.size)
    calibrations = calibration_frames(field, index, folder, frameno)
    p["next_frameno"] = frameno + len(calibrations)
    cat, faint = field.catalog, field.faint
    n = plan.start.size
    save_night(root, plan.night, dict(
        {key: np.stack(rows[key]) for key in PER_STAR},
        frame=np.array(names), jd=plan.mid, wcs=np.array(wcs),
        airmass=plan.airmass, sky=plan.sky, gradient=plan.gradient,
        transparency=plan.transparency, focus=plan.focus, dx=plan.dx, dy=plan.dy,
        rotation=plan.rotation, moon_alt=plan.moon_alt, moon_illum=plan.moon_illum,
        cosmics=np.array(cosmics), variability=factor.astype(np.float32),
        objectid=cat["objectid"], ra=cat["ra"], dec=cat["dec"], mag=cat["mag"],
        catmag=cat["catmag"], color=cat["color"], calibrations=np.array(calibrations),
        hot_pixels=field.patterns.hot, crval=np.array(crval),
        header_radec=np.tile([p["ra"], p["dec"]], (n, 1)),
        pointing_error=(np.zeros(2) if plan.pointing_error is None else plan.pointing_error),
        psf_beta=np.float64(realism.psf_beta), trails=_events(trails, 6),
        bleed=_events(bleed, 3).astype(np.int32), flat_illumination=flat_light(field, index),
        faint_ra=faint["ra"], faint_dec=faint["dec"], faint_mag=faint["mag"],
        faint_color=faint["color"], noise_radii=np.array(radii),
        noise_annuli=np.array(annuli)))
    return {"night": plan.night, "objects": len(names), "calibrations": len(calibrations)}
