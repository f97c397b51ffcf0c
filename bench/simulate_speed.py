"""Simulator render time per object frame, simple and realistic model.

    OMP_NUM_THREADS=1 .venv/bin/python bench/simulate_speed.py [--cases 1024:2000 2048:20000]

For each case SIZE:STARS (catalog stars; the realistic model adds the stars
below the catalog limit, ~3x as many) and each preset: the time of
``trex.simulate.exposure.object_frame`` (positions, atmosphere, PSF rendering,
trails, detector, bleeding, read-out; no file I/O), median of 3 frames, and the
part spent drawing stars (``frame_photons``).  Prints one JSON line per row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from trex.simulate import default_params
from trex.simulate.exposure import frame_photons, object_frame
from trex.simulate.field import make_field
from trex.simulate.plan import make_plan
from trex.simulate.realism import resolve


def measure(size: int, stars: int, preset: str, repeats: int = 3) -> dict:
    realism = resolve(preset)
    params = default_params(frames=repeats, stars=stars, size=size, seed=1, realism=realism)
    field = make_field(params)
    plan = make_plan(params, 0, realism)
    factor = np.ones(stars)
    whole, photons = [], []
    for i in range(repeats):
        began = time.perf_counter()
        frame_photons(field, plan, 0, i, factor)
        photons.append(time.perf_counter() - began)
        began = time.perf_counter()
        object_frame(field, plan, 0, i, factor)
        whole.append(time.perf_counter() - began)
    return {"size": size, "stars": stars, "faint": int(field.faint["mag"].size), "preset": preset,
            "s_per_frame": round(statistics.median(whole), 3),
            "s_photons": round(statistics.median(photons), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["1024:2000", "2048:20000"])
    args = parser.parse_args()
    for case in args.cases:
        size, stars = (int(v) for v in case.split(":"))
        for preset in ("simple", "realistic"):
            print(json.dumps(measure(size, stars, preset)), flush=True)


if __name__ == "__main__":
    main()
