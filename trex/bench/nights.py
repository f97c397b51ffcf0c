"""A night at a time: the time to add one simulated night to archives of 1, 2, 4
and 8 earlier nights (issue 13, "Measure"); with ``--quick`` 1 and 2 nights of
tiny frames.

One project is simulated night by night (``FULL``: 10 object frames of 512^2
px with 800 stars, plus the simulator's calibration frames, per night; the
simulation is not timed) and each night is run with the real command line in
a subprocess, as every morning:

    trex run ROOT --stages calibrate,extract,astrometry,photometry,lightcurves

started through a small wrapper that times the light-curve phases inside
that run (``trex.cli.main`` otherwise unchanged), so the light-curve merge is
timed on its own.

Row per archive size: trex = wall time of the run that adds the night to the
archive; peer = the same night (its RAW folder, the catalog and ``trex.toml``
copied) run the same way on an empty project, i.e. the cost of the night
alone, which also builds its masters and references; ratio = alone / added.
Both are medians of ``repeats`` runs (3; 1 with ``--quick``), each on a fresh
copy (of the archive, of the night), the last added run on the archive itself.
Check: frames the run processed (must be the night's only), the light-curve
merge write rate (rows added to the light curves / time of the transposition;
rows counted in ``ap_photometry``, aperture 0, for the frames newly marked
``lightcurves`` done), and added / added-to-the-first-archive, whose last
value is the flatness figure (goal <= 1.2), in wall time and in CPU time
(user + system of the run's process, which a loaded machine disturbs less).
"""

from __future__ import annotations

import logging
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trex.bench.common import Row
from trex.bench.endtoend import single_thread_env
from trex.db import connect
from trex.db.queries import Queries
from trex.project import init_project
from trex.simulate import night_names, simulate_project

log = logging.getLogger(__name__)

NAME = "nights"
FULL = {"frames": 10, "size": 512, "stars": 800, "archives": (1, 2, 4, 8), "repeats": 3}
QUICK = {"frames": 4, "size": 256, "stars": 300, "archives": (1, 2), "repeats": 1}
STAGES = "calibrate,extract,astrometry,photometry,magfit,lightcurves"
#: ``python -c TRANSPOSE_TIMER FILE ARGS...``: ``trex ARGS...`` with the time spent in the
#: light-curve phases and the light curves they wrote appended to FILE
TRANSPOSE_TIMER = """\
import sys, time
from trex import cli, pipeline
inner = pipeline.run_phase
def timed(comm, ledger, context, phase, stop):
    start, cpu = time.perf_counter(), time.process_time()
    out = inner(comm, ledger, context, phase, stop)
    if phase.name.startswith("light curves"):
        with open(sys.argv[1], "a") as fh:
            fh.write(f"{time.perf_counter() - start} {time.process_time() - cpu} "
                     f"{getattr(phase, 'files', 0)}\\n")
    return out
pipeline.run_phase = timed
sys.exit(cli.main(sys.argv[2:]))
"""
SEED = 5


def trex_run(root: Path, folder: Path) -> dict:
    """``trex run ROOT`` up to the light curves in a subprocess (one thread): its wall and
    CPU time, the wall and CPU time of the light-curve phases in it, the files they wrote."""
    timer = folder / f"transpose-{time.monotonic_ns()}.txt"
    command = [sys.executable, "-c", TRANSPOSE_TIMER, str(timer), "--log-level", "WARNING",
               "run", str(root), "--stages", STAGES]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=single_thread_env())
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"trex run {root} failed ({done.returncode}): {done.stderr[-2000:]}")
    calls = [line.split() for line in timer.read_text().splitlines()] if timer.exists() else []
    return {"seconds": elapsed,
            "cpu": after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime,
            "lc_seconds": sum(float(c[0]) for c in calls),
            "lc_cpu": sum(float(c[1]) for c in calls), "files": sum(int(c[2]) for c in calls)}


def counts(root: Path) -> tuple[int, int]:
    """(frames with photometry done, measurements merged into light curves, aperture 0)."""
    with connect(f"sqlite:///{root / 'trex.sqlite'}") as db:
        return Queries(db).merged_measurements()


def run_night(root: Path) -> dict:
    """Process the project's pending night; times and what it added."""
    frames0, rows0 = counts(root) if (root / "trex.sqlite").exists() else (0, 0)
    result = trex_run(root, root.parent)
    frames1, rows1 = counts(root)
    return {**result, "frames": frames1 - frames0, "rows": rows1 - rows0}


def median_run(runs: list[dict]) -> dict:
    """The run of median wall time (its other figures kept with it)."""
    return sorted(runs, key=lambda r: r["seconds"])[(len(runs) - 1) // 2]


def night_added(root: Path, scratch: Path, repeats: int) -> dict:
    """Median of ``repeats`` runs of the pending night: on copies of the archive,
    the last one on the archive itself (which then holds the night)."""
    runs = []
    for i in range(repeats - 1):
        copy = scratch / f"copy{i}"
        shutil.copytree(root, copy, symlinks=True)
        runs.append(run_night(copy))
        shutil.rmtree(copy)
    runs.append(run_night(root))
    return median_run(runs)


def night_alone(archive: Path, night: str, scratch: Path, repeats: int) -> dict:
    """Median of ``repeats`` runs of the archive's night ``night`` on an empty project."""
    runs = []
    for i in range(repeats):
        folder = scratch / f"alone{i}"
        init_project(folder)
        shutil.copyfile(archive / "trex.toml", folder / "trex.toml")
        shutil.copytree(archive / "BASE" / "CAT", folder / "BASE" / "CAT", dirs_exist_ok=True)
        shutil.copytree(archive / "RAW" / night, folder / "RAW" / night)
        runs.append(run_night(folder))
        shutil.rmtree(folder)
    return median_run(runs)


def _row(earlier: int, params: dict, added: dict, alone: dict, first: dict) -> Row:
    size = f"{earlier} nights + 1, {params['frames']} fr {params['size']}^2 {params['stars']} st"
    rate = added["rows"] / added["lc_seconds"] if added["lc_seconds"] > 0 else float("nan")
    check = (f"{added['frames']} frames processed; LC merge {added['rows']} rows into "
             f"{added['files']} files in {added['lc_seconds']:.2f} s = {rate:.0f} rows/s "
             f"(CPU {added['lc_cpu']:.2f} s; alone {alone['lc_seconds']:.2f} s); CPU "
             f"{added['cpu']:.1f} s (alone {alone['cpu']:.1f} s); added/first: wall "
             f"{added['seconds'] / first['seconds']:.2f}, CPU {added['cpu'] / first['cpu']:.2f} "
             f"(goal <= 1.2)")
    return Row("add a night to an archive (trex run, 5 stages)", size, added["seconds"],
               "same night, empty project", alone["seconds"], check)


def run(quick: bool = False) -> list[Row]:
    params = QUICK if quick else FULL
    archives = params["archives"]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="trex-bench-nights-") as tmp:
        root = Path(tmp) / "archive"
        init_project(root)
        simulate_project(root, frames=params["frames"], size=params["size"],
                         stars=params["stars"], seed=SEED)
        try:
            first_night = run_night(root)
            log.info("nights: first night in %.1f s", first_night["seconds"])
            first = None
            for earlier in range(1, max(archives) + 1):
                simulate_project(root, add_night=True)
                if earlier not in archives:
                    run_night(root)
                    continue
                added = night_added(root, Path(tmp), params["repeats"])
                alone = night_alone(root, night_names(root)[-1], Path(tmp), params["repeats"])
                first = first or added
                rows.append(_row(earlier, params, added, alone, first))
                log.info("nights: %s", rows[-1])
        except (RuntimeError, OSError) as err:
            log.error("nights: left out: %s", err)
            return []
    return rows
