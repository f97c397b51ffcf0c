"""Simulated stars: a field catalog and variable stars with known ephemerides.

Magnitudes follow an exponential luminosity function, ``dN/dm ∝ 10^(0.3 m)``
(most stars faint); colors are BP-RP-like; proper motions are a few mas/yr
with a few fast movers.  Catalog magnitudes carry a small error (0.02 mag)
so that the catalog is not the truth.  Variability is a multiplicative flux
factor of time (BJD_TDB): transits (trapezoids, 0.3-2 % deep), detached
eclipsing binaries (two eclipses), sinusoidal pulsators, and flares (fast rise,
exponential decay).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from trex.fits import atomic_path
from trex.simulate.optics import tan_deproject

CATALOG_EPOCH = 2016.0


def make_catalog(rng: np.random.Generator, nstars: int, ra0: float, dec0: float,
                 radius: float, mag_range: tuple[float, float] = (6.0, 15.0)) -> dict:
    """Stars uniform on the sky within ``radius`` deg of (ra0, dec0).

    Returns a dict of arrays, shape (nstars,): objectid, ra, dec (deg, ICRS at
    ``CATALOG_EPOCH``), mag (true), catmag (catalog), color, pmra (mas/yr,
    includes cos dec), pmdec (mas/yr).
    """
    cosr = np.cos(np.radians(radius))
    z = rng.uniform(cosr, 1.0, nstars)                 # uniform in solid angle
    phi = rng.uniform(0.0, 2 * np.pi, nstars)
    r = np.degrees(np.arccos(z))
    # offsets in the tangent plane, then onto the sky
    ra, dec = tan_deproject(np.degrees(np.tan(np.radians(r))) * np.cos(phi),
                            np.degrees(np.tan(np.radians(r))) * np.sin(phi), ra0, dec0)
    lo, hi = mag_range
    beta = 0.3 * np.log(10.0)
    u = rng.uniform(0.0, 1.0, nstars)                  # inverse CDF of exp(beta m)
    mag = np.log(np.exp(beta * lo) + u * (np.exp(beta * hi) - np.exp(beta * lo))) / beta
    color = np.clip(rng.normal(1.0, 0.35, nstars), -0.3, 3.5)
    pm_scale = np.where(rng.uniform(size=nstars) < 0.01, 80.0, 6.0)
    order = np.argsort(mag)                            # brightest first
    return {
        "objectid": np.array([f"SIM-{i:07d}" for i in range(1, nstars + 1)]),
        "ra": ra[order], "dec": dec[order], "mag": mag[order],
        "catmag": (mag + rng.normal(0.0, 0.02, nstars))[order],
        "color": color[order],
        "pmra": (rng.normal(0.0, 1.0, nstars) * pm_scale)[order],
        "pmdec": (rng.normal(0.0, 1.0, nstars) * pm_scale)[order],
    }


def faint_count(nstars: int, mag_range: tuple[float, float], depth: float) -> int:
    """Stars in ``(limit, limit + depth]`` for ``nstars`` catalog stars in ``mag_range``.

    From the luminosity function ``dN/dm ∝ 10^(0.3 m)``: 2 mag deeper than a
    6-15 mag catalog gives ~3x as many stars again.
    """
    lo, hi = mag_range
    ratio = (10 ** (0.3 * (hi + depth)) - 10 ** (0.3 * hi)) / (10 ** (0.3 * hi) - 10 ** (0.3 * lo))
    return int(round(nstars * ratio))


def make_faint(rng: np.random.Generator, nstars: int, ra0: float, dec0: float, radius: float,
               mag_range: tuple[float, float], depth: float) -> dict:
    """Stars fainter than the catalog limit (down to ``depth`` mag below it), never in the catalog.

    Same columns as :func:`make_catalog` (objectid ``FAINT-…``), no proper motion.
    """
    count = faint_count(nstars, mag_range, depth)
    faint = make_catalog(rng, count, ra0, dec0, radius, (mag_range[1], mag_range[1] + depth))
    faint["objectid"] = np.array([f"FAINT-{i:07d}" for i in range(1, count + 1)])
    faint["pmra"] = np.zeros(count)
    faint["pmdec"] = np.zeros(count)
    return faint


def positions_at(catalog: dict, year: float) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec), deg, moved by proper motion from ``CATALOG_EPOCH`` to ``year``."""
    dt = year - CATALOG_EPOCH
    dec = catalog["dec"] + catalog["pmdec"] * dt / 3.6e6
    ra = catalog["ra"] + catalog["pmra"] * dt / 3.6e6 / np.cos(np.radians(catalog["dec"]))
    return ra % 360.0, dec


def write_catalog(path: Path, catalog: dict) -> Path:
    """Write ``BASE/CAT/<field>.csv`` (SPEC section 3), atomically."""
    tmp, final = atomic_path(path)
    with open(tmp, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["objectid", "ra", "dec", "mag", "color", "pmra", "pmdec", "epoch"])
        for i in range(len(catalog["ra"])):
            out.writerow([catalog["objectid"][i], f"{catalog['ra'][i]:.8f}",
                          f"{catalog['dec'][i]:.8f}", f"{catalog['catmag'][i]:.4f}",
                          f"{catalog['color'][i]:.4f}", f"{catalog['pmra'][i]:.3f}",
                          f"{catalog['pmdec'][i]:.3f}", f"{CATALOG_EPOCH:.1f}"])
    tmp.replace(final)
    return final


def make_variables(rng: np.random.Generator, mag: np.ndarray, t_ref: float,
                   fraction: float = 0.03, faint: float = 13.0) -> list[dict]:
    """Periodic variables among stars brighter than ``faint``, ephemerides around ``t_ref``.

    Each entry: index (row in the catalog), kind, and its parameters (times in
    BJD_TDB days; depth and amplitude as flux fractions).  The first transit
    is placed so that one falls in the first night.
    """
    candidates = np.flatnonzero(mag < faint)
    nvar = min(candidates.size, max(4, int(round(fraction * candidates.size))))
    chosen = rng.choice(candidates, size=nvar, replace=False)
    out = []
    for n, index in enumerate(sorted(chosen.tolist())):
        kind = ("transit", "eb", "pulsator")[n % 3]
        if kind == "transit":
            period = float(rng.uniform(1.0, 6.0))
            t0 = t_ref + (0.0 if n == 0 else float(rng.uniform(0.0, period)))
            out.append({"index": index, "kind": kind, "period": period, "t0": t0,
                        "depth": float(rng.uniform(0.003, 0.02)),
                        "duration": float(rng.uniform(1.5, 3.5)) / 24.0})
        elif kind == "eb":
            period = float(rng.uniform(0.5, 5.0))
            out.append({"index": index, "kind": kind, "period": period,
                        "t0": t_ref + float(rng.uniform(0.0, period)),
                        "depth": float(rng.uniform(0.05, 0.4)),
                        "depth2": float(rng.uniform(0.01, 0.1)),
                        "duration": float(rng.uniform(0.06, 0.12)) * period})
        else:
            period = float(rng.uniform(0.05, 1.0))
            out.append({"index": index, "kind": kind, "period": period,
                        "t0": t_ref + float(rng.uniform(0.0, period)),
                        "amplitude": float(rng.uniform(0.005, 0.05))})
    return out


def make_flares(rng: np.random.Generator, mag: np.ndarray, start: float, end: float,
                count: int = 3) -> list[dict]:
    """A few flares with peak times in [start, end] (BJD_TDB) on random faint-ish stars."""
    candidates = np.flatnonzero(mag < 14.0)
    if candidates.size == 0:
        return []
    stars = rng.choice(candidates, size=min(count, candidates.size), replace=False)
    return [{"index": int(i), "kind": "flare", "t0": float(rng.uniform(start, end)),
             "amplitude": float(rng.uniform(0.1, 1.0)),
             "decay": float(rng.uniform(5.0, 30.0)) / 1440.0} for i in stars]


def _trapezoid(phase_days: np.ndarray, duration: float) -> np.ndarray:
    """Eclipse profile 0..1 (1 = full depth) of total ``duration``, 15 % ingress."""
    ingress = 0.15 * duration
    half = 0.5 * duration
    x = np.abs(phase_days)
    return np.clip((half - x) / ingress, 0.0, 1.0)


def variability(var: dict, bjd: np.ndarray) -> np.ndarray:
    """Flux factor (1 = constant) of one variable at times ``bjd`` (BJD_TDB, days)."""
    kind = var["kind"]
    if kind == "flare":
        dt = bjd - var["t0"]
        rise = 2.0 / 1440.0
        shape = np.where(dt < 0, np.exp(np.minimum(dt, 0) / rise * 3.0),
                         np.exp(-np.maximum(dt, 0) / var["decay"]))
        return 1.0 + var["amplitude"] * shape
    period = var["period"]
    phase = ((bjd - var["t0"]) / period + 0.5) % 1.0 - 0.5      # cycles, in [-0.5, 0.5)
    if kind == "pulsator":
        return 1.0 + var["amplitude"] * np.sin(2 * np.pi * phase)
    dip = var["depth"] * _trapezoid(phase * period, var["duration"])
    if kind == "eb":
        phase2 = (phase + 1.0) % 1.0 - 0.5
        dip = dip + var["depth2"] * _trapezoid(phase2 * period, var["duration"])
    return 1.0 - dip
