"""Aperture corrections over the field: centre-to-corner trends of simulated nights.

``python -m trex.bench.apcorr [--seeds 1-6] [--size 2048] [--frames 40] [--stars 20000]
[--workdir DIR]`` simulates one night per seed in the realistic world with an
atmosphere that is the same over the whole field (:data:`CLEAR`), runs it
through the magnitude fit and prints, per night and aperture, the
centre-to-corner trend (:func:`field_trend`) of ``aim``, ``aim + apc`` and
``arm`` against the light each frame received, for bright constant stars.

The truth is the light each star sent into each calibrated frame (after the
atmosphere, with the twilight flats' slope), so the trend left is the
aperture corrections' error alone; ``aim`` shows the light loss they remove.
tests/test_apcorr.py runs the same measurement on 4-frame 1024² nights.
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from pathlib import Path

import numpy as np

from trex.config import Config
from trex.pipeline import run_stages
from trex.project import Project, init_project
from trex.simulate import REALISTIC, load_truth, simulate_project

#: the realistic world with an atmosphere that is the same over the whole field (no cloud
#: structure, no airmass or colour extinction varying from star to star): arm is on the
#: magnitude-fit master's system, which carries the frames' mean atmosphere over the field
#: (thin clouds project onto rho² by +-0.04 mag from night to night), so only without it
#: does arm minus the truth show the light-loss trend alone
CLEAR = dataclasses.replace(REALISTIC, cloud_structure=0.0, field_airmass=False,
                            extinction_color=0.0)
#: catalog magnitudes of the bright stars whose trend is fitted
BRIGHT = (8.5, 11.0)
STAGES = ("calibrate", "extract", "astrometry", "photometry", "magfit")
#: the columns whose trends are printed
COLUMNS = ("aim", "aim+apc", "arm")


def simulate_night(root: Path, seed: int, size: int, frames: int, stars: int,
                   realism=CLEAR) -> Path:
    """A night of ``frames`` frames of ``size``² px with ``stars`` catalog stars at ``root``
    (a new project), run through the magnitude fit."""
    project = init_project(root)
    simulate_project(project.root, realism=realism, frames=frames, size=size, stars=stars,
                     seed=seed)
    run_stages(project, Config(), STAGES)
    return project.root


def light_in_frames(truth: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """-2.5 log10 of each star's light in each calibrated frame (nframes, nstars), mag + a
    constant: the truth's flux after the atmosphere (clouds, extinction), times the
    scintillation drawn, over the twilight flats' illumination slope at (x, y) px."""
    size = truth["params"]["optics"]["size"]
    gx, gy = truth["flat_illumination"]
    ax, ay = (x - (size - 1) / 2) / (size / 2), (y - (size - 1) / 2) / (size / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return -2.5 * np.log10(truth["flux_adu"] * truth["scintillation"] / (1 + gx * ax + gy * ay))


def field_trend(root: Path, column: str, aperture: int, against: str = "catalog") -> float:
    """Fitted change of (column - truth) from the centre to the corner (mag), ``column``
    one of aim, arm, aim+apc of the ``aphot`` products: each bright constant star's
    median over the frames, fitted as a + b rho² (rho the distance from the centre over
    the half diagonal; stars beyond 3 robust sigmas of the fit, blends, are left out);
    returns b.  The truth is the true magnitude above the atmosphere
    (``against="catalog"``) or the star's light in each frame (``"frame"``,
    :func:`light_in_frames`)."""
    truth = load_truth(root)
    size = truth["params"]["optics"]["size"]
    nframes, nstars = truth["saturated"].shape
    constant = np.ones(nstars, bool)
    constant[[v["index"] for v in truth["variables"]]] = False
    constant &= ~truth["saturated"].any(axis=0)
    values, x, y = (np.full((nframes, nstars), np.nan) for _ in range(3))
    project = Project(root)
    for f, path in enumerate(sorted(project.red(truth["params"]["projid"]).glob("*-aphot.npy"))):
        table = np.load(path)
        good, star = table[f"aiq_{aperture:03d}"] == 0, table["star"]
        value = sum(table[f"{c}_{aperture:03d}"].astype(float) for c in column.split("+"))
        values[f, star[good]] = value[good]
        x[f, star], y[f, star] = table["xcc"], table["ycc"]
    reference = truth["mag"] if against == "catalog" else light_in_frames(truth, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # stars never measured
        diff = np.nanmedian(values - reference, axis=0)
    use = constant & np.isfinite(diff) & (truth["mag"] > BRIGHT[0]) & (truth["mag"] < BRIGHT[1])
    if use.sum() <= 50:
        raise ValueError(f"{root}: {use.sum()} bright constant stars measured, need > 50")
    rho2 = ((truth["x"][0] - (size - 1) / 2) ** 2 + (truth["y"][0] - (size - 1) / 2) ** 2
            ) / (0.5 * size**2)
    keep = use
    for _ in range(5):
        b, a = np.polyfit(rho2[keep], diff[keep], 1)
        resid = diff - (a + b * rho2)
        scale = 1.4826 * np.median(np.abs(resid[keep] - np.median(resid[keep])))
        keep = use & (np.abs(resid) <= 3 * scale)
    return float(b)



def night_trends(root: Path, napertures: int = 3) -> dict[str, list[float]]:
    """{column: [trend of each aperture]} against the light in each frame, mag."""
    return {c: [field_trend(root, c, a, "frame") for a in range(napertures)] for c in COLUMNS}


def _seeds(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trex.bench.apcorr", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=_seeds, default=_seeds("1-6"), help="e.g. 1-6")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--stars", type=int, default=20000)
    parser.add_argument("--workdir", type=Path, default=Path("bench-apcorr"),
                        help="nights go to WORKDIR/night-SEED (kept when already run)")
    args = parser.parse_args(argv)
    print("Centre-to-corner trend b (mag) against the light each frame received, "
          f"bright constant stars ({BRIGHT[0]:g}-{BRIGHT[1]:g} mag), apertures 0, 1, 2\n")
    print("| seed | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    left = {c: [] for c in COLUMNS}
    for seed in args.seeds:
        root = args.workdir / f"night-{seed}"
        if not (root / "trex.toml").is_file():
            simulate_night(root, seed, args.size, args.frames, args.stars)
        trends = night_trends(root)
        for c in COLUMNS:
            left[c] += trends[c]
        print(f"| {seed} | " + " | ".join(" ".join(f"{v:+.4f}" for v in trends[c])
                                        for c in COLUMNS) + " |", flush=True)
    for c in COLUMNS[1:]:
        v = np.asarray(left[c])
        print(f"\n{c}: {v.mean():+.4f} +- {v.std():.4f}, largest |b| {np.abs(v).max():.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
