"""CPU time of detrending every light curve of a project in one chunk, as ``trex run`` does.

    .venv/bin/python bench/detrend_speed.py ROOT [--save OUT.npz]

ROOT is a project that ``trex run`` has been through (light curves in
``LC/``).  The light curves are read and the night trends made from them as
``trex detrend`` does, with the project's kept TFA templates (chosen and saved
when there are none), untimed; then ``trex.detrend.detrend_nights`` runs once
on all of them, timed in CPU seconds of this process (and wall seconds).
Prints the light curves, frames and CPU seconds per frame.  ``--save`` writes
the detrended columns (``aep``, ``atf``, ``adq``, ``iep``, ``itf``, ``idq``)
of every star, one after the other, to compare two versions of trex on the
same light curves.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from trex import lcformat
from trex.config import load_config
from trex.detrend import (
    FileTrends,
    Summaries,
    detrend_nights,
    file_info,
    position,
)
from trex.frame import Context
from trex.project import Project
from trex.templates import load_templates


def light_curves(root: Path) -> tuple[list, list, object]:
    """(stars as (rows, info), the night trends of the first group, config)."""
    project, config = Project(root), load_config(root / "trex.toml")
    context = Context(project, config)
    summaries = Summaries()
    for item in summaries.plan(None, context):
        summaries.record(None, summaries.work(item, context), context)
    groups = sorted({(s["projid"], s["field"]) for s in summaries.summaries})
    context = dataclasses.replace(context, templates=load_templates(project, groups))  # kept
    trends = FileTrends(summaries)
    found = {item[0]: trends.work(item, context) for item in trends.plan(None, context)}
    group, (_, _, nights) = next(iter(found.items()))
    dtype = lcformat.lc_dtype(len(config.photometry.apertures)).newbyteorder(">")
    stars = []
    for summary in summaries.summaries:
        if (summary["projid"], summary["field"]) != group:
            continue
        rows, header = lcformat.read_rows(root / summary["path"])
        info = {**file_info(header), "projid": group[0]}
        info["x"], info["y"] = position(rows, config.detrend.night_gap)
        stars.append((rows.astype(dtype), info))
    return stars, nights, config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--save", type=Path, help="write the detrended columns here (.npz)")
    args = parser.parse_args()
    stars, nights, config = light_curves(args.root)
    frames = len(np.unique(np.concatenate([rows["framekey"] for rows, _ in stars])))
    cpu, wall = time.process_time(), time.perf_counter()
    detrend_nights(stars, nights, config)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{len(stars)} light curves, {frames} frames, {len(nights)} night(s): detrend_nights "
          f"{cpu:.2f} s CPU ({wall:.2f} s wall), {cpu / max(frames, 1):.3f} s CPU per frame")
    if args.save:
        names = [n for n in stars[0][0].dtype.names if n[:3] in ("aep", "atf", "adq", "iep",
                                                                 "itf", "idq")]
        np.savez(args.save, **{n: np.concatenate([rows[n] for rows, _ in stars]) for n in names})


if __name__ == "__main__":
    main()
