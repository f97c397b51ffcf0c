"""What happens during a simulated night: times, airmass, sky, clouds, focus, pointing.

Everything is a pure function of the simulation parameters and the night's
index, drawn from a random stream seeded by ``(seed, stream, night)``, so any
night can be (re)made on its own.  Frames are centred on local solar midnight
at the site; the field's RA is the local sidereal time at the first night's
midnight, so it transits mid-night.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, timedelta

import numpy as np
from astropy import units as u
from astropy.coordinates import get_body
from astropy.time import Time

from trex.simulate.atmosphere import CloudScreen, make_screen
from trex.simulate.realism import SIMPLE, Realism
from trex.times import site

NIGHT_HOURS = 6.0         # usable dark time spanned by the frames at most, h


def night_name(first_night: str, index: int) -> str:
    """Folder name ``YYYY-MM-DD`` (local evening date) of the night ``index`` after the first."""
    return (date.fromisoformat(first_night) + timedelta(days=index)).isoformat()


def local_midnight(night: str, longitude: float) -> float:
    """UTC JD of local solar midnight after the evening of ``night``."""
    evening = Time(f"{night}T00:00:00", scale="utc").jd
    return evening + 1.0 - longitude / 360.0


def field_centre(first_night: str, latitude: float, longitude: float, altitude: float,
                 dec_offset: float = -1.0) -> tuple[float, float]:
    """A field (RA, Dec) near the zenith at the first night's local midnight, deg."""
    t = Time(local_midnight(first_night, longitude), format="jd", scale="utc",
             location=site(latitude, longitude, altitude))
    lst = float(t.sidereal_time("mean").deg)
    return round(lst, 1) % 360.0, round(latitude + dec_offset, 1)


def altitude_of(ra, dec, lst_deg, latitude: float) -> np.ndarray:
    """Altitude (deg) of (ra, dec) at local sidereal times ``lst_deg``."""
    ha = np.radians(np.asarray(lst_deg) - ra)
    lat, dec = np.radians(latitude), np.radians(dec)
    return np.degrees(np.arcsin(np.sin(lat) * np.sin(dec) + np.cos(lat) * np.cos(dec) * np.cos(ha)))


def airmass_of(altitude_deg) -> np.ndarray:
    """Airmass (Young 1994 approximation) for an altitude in degrees (> 0)."""
    cz = np.sin(np.radians(np.maximum(altitude_deg, 1.0)))
    return (1.002432 * cz**2 + 0.148386 * cz + 0.0096467) / (
        cz**3 + 0.149864 * cz**2 + 0.0102963 * cz + 0.000303978)


@dataclass
class NightPlan:
    """Per-object-frame conditions of one night (arrays of shape (nframes,))."""

    night: str
    start: np.ndarray         # UTC JD of exposure start
    mid: np.ndarray           # UTC JD of mid-exposure
    airmass: np.ndarray
    sky: np.ndarray           # sky at the frame centre, calibrated ADU per pixel
    gradient: np.ndarray      # (nframes, 2): relative sky slope across the half frame in x, y
    transparency: np.ndarray  # cloud transmission, 1 = clear
    focus: np.ndarray         # FWHM scale factor
    dx: np.ndarray            # pointing offset of the axis, px (stars move by -dx)
    dy: np.ndarray
    rotation: np.ndarray      # field rotation, deg
    moon_alt: np.ndarray      # deg
    moon_illum: np.ndarray    # illuminated fraction
    lst: np.ndarray | None = None          # local sidereal time at mid-exposure, deg
    # realistic model only (None on the simple one)
    pointing_error: np.ndarray | None = None   # (2,) px: night's offset of the true axis
    clouds: CloudScreen | None = None          # drifting thin-cloud screen
    cloud_mag: np.ndarray | None = None        # mean cloud extinction per frame, mag


def _moon(jd: np.ndarray, location, latitude: float) -> tuple[np.ndarray, np.ndarray]:
    t = Time(jd, format="jd", scale="utc", location=location)
    moon = get_body("moon", t, location, ephemeris="builtin")
    sun = get_body("sun", t, location, ephemeris="builtin")
    elong = moon.separation(sun).to_value(u.rad)
    lst = t.sidereal_time("mean").deg
    alt = altitude_of(moon.ra.deg, moon.dec.deg, lst, latitude)
    return alt, 0.5 * (1.0 - np.cos(elong))


def _clouds(rng: np.random.Generator, tau: np.ndarray) -> np.ndarray:
    """Thin-cloud transmission over the night (tau in [-1, 1] across the night)."""
    out = np.ones_like(tau)
    for _ in range(rng.poisson(1.5)):
        centre, width, depth = rng.uniform(-1, 1), rng.uniform(0.03, 0.15), rng.uniform(0.05, 0.3)
        out *= 1.0 - depth * np.exp(-0.5 * ((tau - centre) / width) ** 2)
    return out


def make_plan(params: dict, index: int, realism: Realism = SIMPLE) -> NightPlan:
    """Conditions of the object frames of night ``index`` of the simulation ``params``.

    The simple model's draws come first and are the same for every ``realism``;
    the realistic extras draw from their own stream (see :func:`add_realism`).
    """
    rng = np.random.default_rng([params["seed"], 3, index])
    sitep = params["site"]
    night = night_name(params["first_night"], index)
    n = params["frames"]
    cadence = params["cadence"] or float(np.clip(NIGHT_HOURS * 3600.0 / n, 40.0, 900.0))
    midnight = local_midnight(night, sitep["longitude"])
    mid = midnight + (np.arange(n) - 0.5 * (n - 1)) * cadence / 86400.0
    start = mid - params["exptime"] / 172800.0
    tau = (mid - midnight) / (NIGHT_HOURS / 48.0)
    location = site(sitep["latitude"], sitep["longitude"], sitep["altitude"])
    lst = Time(mid, format="jd", scale="utc", location=location).sidereal_time("mean").deg
    airmass = airmass_of(altitude_of(params["ra"], params["dec"], lst, sitep["latitude"]))
    moon_alt, moon_illum = _moon(mid, location, sitep["latitude"])
    dark_sky = params["exptime"] * 10.0 ** (-0.4 * (params["sky_mag"] - 5.0 * np.log10(
        params["optics"]["pixscale"]) - params["zeropoint"]))
    moon = params["moon_sky"] * moon_illum * np.clip(np.sin(np.radians(moon_alt)), 0.0, None)
    sky = dark_sky * (1.0 + 0.25 * (airmass - 1.0) + moon)
    slope = rng.normal(0.0, 0.04, 2) + 0.08 * moon_illum.mean() * np.array([1.0, 0.5])
    gradient = slope[None, :] * (1.0 + 0.3 * tau[:, None]) + rng.normal(0, 0.003, (n, 2))
    focus = np.clip(1.0 + rng.uniform(-0.08, 0.08) * tau + rng.uniform(0.05, 0.2) * tau**2
                    + rng.normal(0.0, 0.02, n), 0.85, 1.3)
    offset = rng.normal(0.0, 3.0, 2)
    drift = rng.normal(0.0, 1.5, 2)
    dx = offset[0] + drift[0] * tau + rng.normal(0.0, 0.6, n)
    dy = offset[1] + drift[1] * tau + rng.normal(0.0, 0.6, n)
    rotation = rng.normal(0.0, 0.02) + 0.01 * tau + rng.normal(0.0, 0.003, n)
    plan = NightPlan(night=night, start=start, mid=mid, airmass=airmass, sky=sky,
                     gradient=gradient, transparency=_clouds(rng, tau), focus=focus, dx=dx,
                     dy=dy, rotation=rotation, moon_alt=moon_alt, moon_illum=moon_illum,
                     lst=np.asarray(lst, float))
    return plan if realism.is_simple else add_realism(plan, params, realism, index)


def add_realism(plan: NightPlan, params: dict, realism: Realism, index: int) -> NightPlan:
    """The plan with the realistic model's pointing error, rotation and cloud screen.

    The true axis is off the header's RA/DEC by ``realism.pointing_error``
    (deg, uniform in the range, random direction) for the whole night, plus the
    simple model's few-px jitter; the rotation gains a night offset and a
    per-frame jitter (deg rms); the mean cloud extinction per frame is
    ``realism.cirrus`` plus the simple model's cloud passages.
    """
    rng = np.random.default_rng([params["seed"], 8, index])
    n = plan.start.size
    lo, hi = realism.pointing_error
    radius = rng.uniform(lo, hi) * 3600.0 / params["optics"]["pixscale"]
    angle = rng.uniform(0.0, 2 * np.pi)
    error = radius * np.array([np.cos(angle), np.sin(angle)])
    rotation = (plan.rotation + realism.rotation_error * rng.standard_normal()
                + realism.rotation_jitter * rng.standard_normal(n))
    screen = make_screen(rng, realism.cloud_scale, realism.cloud_speed)
    cloud_mag = realism.cirrus - 2.5 * np.log10(plan.transparency)
    return replace(plan, dx=plan.dx + error[0], dy=plan.dy + error[1], rotation=rotation,
                   pointing_error=error, clouds=screen, cloud_mag=cloud_mag)
