"""Backfill: ingest, transposition and detrending of a season of synthetic per-frame products.

Issue 19's size is ``FULL`` (10^4 frames x 10^4 stars x 3 apertures = 3x10^8
``ap_photometry`` rows); ``--quick`` is 100 frames x 400 stars; any other size
is ``run(frames=..., stars=...)``.  No images: each frame's ``aphot`` product is
written beforehand (not timed) with a PSF-width trend, a common trend per night
and photon noise, so that EPD and TFA have work, on nights of at most
``PER_NIGHT`` frames 30 s apart.

Each configuration (SQLite and PostgreSQL, serial and ``mpiexec -n 2``) starts
from the same products with an empty database, no light curves and no
templates, and runs in its own process(es) what ``trex run`` does with them:

1. ingest: per frame, the worker side reads the ``aphot`` product (the stand-in
   for the photometry stage) and returns its ``ap_photometry`` rows
   (:func:`trex.photometry.ap_photometry_rows`) in a ``FrameResult``; rank 0
   records them through ``Ledger.record_frame`` (one transaction per batch),
   farmed by the pipeline's driver (:func:`trex.pipeline.run_phase`);
2. the phases of ``trex run --stages lightcurves,detrend``
   (:func:`trex.pipeline.phases`): TFA templates, scatter, the nights' trends,
   merge + per-night detrending + light-curve writes and their ``lcinfo`` /
   ``lcstats`` rows.

Reported per configuration and phase: wall time (rank 0, the phase from plan
to update, ranks in step), rank 0's CPU time (the PostgreSQL server's is not
in it; MPICH ranks spin while they wait, so a waiting rank's CPU counts),
rows/s (ingest: ``ap_photometry`` rows; the
light-curve phases: light-curve rows, one per star and frame with all
apertures), and the peak resident memory of every rank in each phase
(``VmHWM``, reset before the phase), gathered on rank 0; the whole run's row
gives the largest of them.  The ``mpiexec -n 2`` rows compare with the
serial run of the same engine (ratio = speed-up).  Checks: ``ap_photometry``
holds frames x stars x 3 rows, every star has a light curve of every frame,
and the detrended columns are filled.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from trex.bench.common import Row
from trex.config import Config
from trex.phase import Phase
from trex.photometry import aphot_dtype
from trex.products import save_product
from trex.project import Project, init_project

log = logging.getLogger(__name__)

NAME = "backfill"
FULL = {"frames": 10_000, "stars": 10_000}
QUICK = {"frames": 100, "stars": 400}
PER_NIGHT = 1000  # frames per night at most (30 s apart: 8.3 h)
NAPER, PROJID, FIELD, NIGHT0 = 3, "7", "F1", 61000.55
STAGES = ("lightcurves", "detrend")
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
PRODUCTS = "backfill-frames.txt"  # how many frames the products are of (their times)


def frame_times(nframes: int) -> np.ndarray:
    """rjd of each frame: nights of at most ``PER_NIGHT`` frames, 30 s apart, one a day."""
    nights = max(2, math.ceil(nframes / PER_NIGHT)) if nframes > 1 else 1
    per = math.ceil(nframes / nights)
    i = np.arange(nframes)
    return NIGHT0 + i // per + (i % per) * 30.0 / 86400.0


def make_products(project: Project, nframes: int, nstars: int, seed: int = 0) -> None:
    """The catalog (``BASE/CAT/F1.csv``) and every frame's ``aphot`` product."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"TRX-{i:06d}" for i in range(nstars)])
    ra, dec = rng.uniform(59, 61, nstars), rng.uniform(-31, -29, nstars)
    mag = rng.uniform(8, 13, nstars)
    (project.cat / f"{FIELD}.csv").write_text("objectid,ra,dec,mag\n" + "".join(
        f"{o},{r!r},{d!r},{m!r}\n" for o, r, d, m in
        zip(ids, ra.tolist(), dec.tolist(), mag.tolist())))
    (project.root / PRODUCTS).write_text(str(nframes))
    x, y = rng.uniform(20, 2000, nstars), rng.uniform(20, 2000, nstars)
    sigma = 0.002 * 10 ** (0.2 * (mag - 8))
    times = frame_times(nframes)
    rows = np.zeros(nstars, dtype=aphot_dtype(NAPER))
    rows["star"] = np.arange(nstars)
    rows["bgv"], rows["bge"], rows["fdv"], rows["fkv"] = 800.0, 2.0, 0.01, 0.005
    for i, t in enumerate(times.tolist()):
        phase = 2 * np.pi * (t % 1.0) / 0.2
        s = 0.35 + 0.04 * np.sin(phase)
        common = 0.01 * np.sin(phase * 1.5 + math.floor(t))
        rows["rjd"], rows["bjd"] = t, t + 2400000.0
        rows["xcc"], rows["ycc"] = x + rng.normal(0, 0.1, nstars), y
        rows["fsv"] = s
        for a in range(NAPER):
            m = mag + 0.3 * (s - 0.35) + common + sigma * rng.standard_normal(nstars)
            rows[f"aim_{a:03d}"], rows[f"arm_{a:03d}"] = m + 0.1, m
            rows[f"aie_{a:03d}"] = sigma
            rows[f"flux_{a:03d}"] = 10 ** (-0.4 * (m - 25))
            rows[f"fluxerr_{a:03d}"] = rows[f"flux_{a:03d}"] * sigma
        save_product(project.root / redpath(i + 1), "aphot", rows)


def redpath(framekey: int) -> str:
    return f"RED/{PROJID}/frame-{framekey:06d}.fits"


def night_of(rjd: float) -> str:
    return f"night-{int(rjd - NIGHT0):03d}"


def peak_mb() -> float:
    """Peak resident memory of this process, MiB (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_phase_peak() -> None:
    """Start a new high-water mark of resident memory (Linux ``clear_refs`` 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:  # not Linux, or not allowed: phase_peak_mb then gives the process peak
        pass


def phase_peak_mb() -> float:
    """Resident memory high-water mark since :func:`reset_phase_peak`, MiB (``VmHWM``)."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM")) / 1024.0
    except (OSError, StopIteration):
        return peak_mb()


class Ingest(Phase):
    """Every frame's ``ap_photometry`` rows recorded through the ledger, as the photometry
    stage's results are (the work reads the product instead of measuring a frame)."""

    name = "ingest"

    def __init__(self, nframes: int):
        self.nframes = nframes

    def plan(self, ledger, context) -> list[int]:
        return list(range(1, self.nframes + 1))

    def work(self, framekey: int, context):
        from trex.header import FrameMeta
        from trex.photometry import ap_photometry_rows, photkey
        from trex.products import load_product
        from trex.runner import FrameResult

        table = load_product(context.project.root / redpath(framekey), "aphot")
        ids = np.asarray(context.catalogs[FIELD]["objectid"])[table["star"]]
        rows = ap_photometry_rows(framekey, photkey(context.config), table, ids)
        meta = FrameMeta("object", 30.0, "", 0.0, FIELD, PROJID, "", "", None, None, None, 1.0,
                         0.0, 65535.0, 0.0, 0.0, 0.0, None, None)
        return FrameResult(framekey, PROJID, night_of(float(table["rjd"][0])), meta,
                           redpath(framekey), done=["photometry"], rows={"ap_photometry": rows})

    def record(self, ledger, result, context) -> None:
        ledger.record_frame(result, context)


def _frameinfo(db, project: Project, nframes: int) -> None:
    """The first ``nframes`` frames' ``frameinfo`` rows (what the inventory would have
    written), at the times of their products."""
    times = frame_times(int((project.root / PRODUCTS).read_text()))[:nframes]
    db.executemany("INSERT INTO frameinfo (framekey, rawpath, night, imagetyp, projid, field, jd, "
                   "isok) VALUES (?, ?, ?, 'object', ?, ?, ?, ?)",
                   [(i + 1, f"RAW/{night_of(t)}/{i + 1}.fits", night_of(t), PROJID, FIELD,
                     t + 2400000.0, True) for i, t in enumerate(times.tolist())])


def child(root: str, url: str, nframes: int) -> None:
    """One rank of a measured run: ingest, then the light-curve phases; rank 0 writes
    ``ROOT/backfill.json`` with each phase's wall time and every rank's peak RSS."""
    from trex import parallel, pipeline
    from trex.catalog import Catalogs
    from trex.db import connect
    from trex.frame import Context
    from trex.ledger import Ledger
    from trex.masterframes import recorded_masters

    comm = parallel.world()
    project = Project(Path(root))
    config = Config().replace("database", url=url)
    out = {"ranks": comm.size, "baseline_mb": comm.gather(peak_mb()), "phases": []}
    stop = {"signal": False}
    with parallel.abort_on_error(comm):
        ledger = None
        if comm.rank == 0:
            db = connect(url)
            db.create_schema()
            _frameinfo(db, project, nframes)
            ledger = Ledger(db, config)
        context = Context(project, config, recorded_masters(project, ledger.read.masters())) \
            if comm.rank == 0 else None
        context = comm.bcast(context)
        phases = pipeline.phases(STAGES)
        at = 1 + next(i for i, p in enumerate(phases) if isinstance(p, Catalogs))
        for phase in phases[:at] + [Ingest(nframes)] + phases[at:]:
            comm.barrier()
            reset_phase_peak()
            start, cpu = time.perf_counter(), time.process_time()
            context, done, _ = pipeline.run_phase(comm, ledger, context, phase, stop)
            comm.barrier()
            wall, cpus = time.perf_counter() - start, comm.gather(time.process_time() - cpu)
            out["phases"].append({"name": phase.name, "items": done, "seconds": wall,
                                  "cpu": cpus, "peak_mb": comm.gather(phase_peak_mb())})
        if comm.rank == 0:
            out["check"] = _check(ledger.db, project)
            ledger.db.close()
            (project.root / "backfill.json").write_text(json.dumps(out))


def _check(db, project: Project) -> dict:
    """Rows in ``ap_photometry``, light-curve files and rows, detrended rows (lcstats)."""
    rows = db.query("SELECT count(*) FROM ap_photometry")[0][0]
    files, nobs, aep = db.query("SELECT count(*), sum(arm_n), sum(aep_n) FROM lcstats "
                                "WHERE aperture = 0")[0]
    return {"ap_rows": int(rows), "lcstats_stars": int(files), "aep_n": int(aep or 0),
            "arm_n": int(nobs or 0),
            "lc_files": sum(1 for _ in (project.root / "LC" / PROJID).glob("*.fits"))}


def measure(project: Project, engine: str, ranks: int, nframes: int) -> dict:
    """One configuration from empty (database, light curves, templates): the JSON of
    :func:`child`, with the run's wall time (process start included) as ``wall``."""
    from trex.bench.endtoend import single_thread_env
    from trex.bench.ingest import _scratch_pg

    for path in (project.root / "LC", project.redtemp / "lc", project.root / "backfill.json",
                 project.root / "trex.sqlite"):
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    for path in project.root.glob("BASE/**/tfa-*"):
        path.unlink()
    admin = name = None
    url = f"sqlite:///{project.root / 'trex.sqlite'}"
    if engine == "postgresql":
        admin, name, url = _scratch_pg(os.environ.get("TREX_TEST_PG", DEFAULT_PG))
    command = [sys.executable, "-m", __name__, str(project.root), url, str(nframes)]
    if ranks > 1:
        command = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(ranks)] + command
    try:
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=single_thread_env())
        wall = time.perf_counter() - start
    finally:
        if admin is not None:
            admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            admin.close()
    if done.returncode != 0:
        raise RuntimeError(f"backfill {engine} x{ranks} failed: {done.stderr[-2000:]}")
    return {**json.loads((project.root / "backfill.json").read_text()), "wall": wall}


#: rows of the table: (label, phases) with the phases' times added
GROUPS = (("ingest (ap_photometry rows)", ("ingest",)),
          ("TFA templates + scatter (LC rows)", ("TFA templates", "light curves: scatter")),
          ("trends + merge + detrend + LC writes (LC rows)",
           ("light curves: night trends", "light curves: merge")))


def rows_of(result: dict, serial: dict | None, engine: str, size: str, nframes: int,
            nstars: int) -> list[Row]:
    """Table rows of one configuration (``serial``: the same engine on one rank)."""
    label = f"{'SQLite' if engine == 'sqlite' else 'PostgreSQL'}, " + (
        "serial" if result["ranks"] == 1 else f"mpiexec -n {result['ranks']}")
    out = []
    for name, names in GROUPS + (("whole run", None),):
        def pick(r, names=names):
            return [p for p in r["phases"] if names is None or p["name"] in names]
        seconds = sum(p["seconds"] for p in pick(result))
        peer = sum(p["seconds"] for p in pick(serial)) if serial else float("nan")
        nrows = nframes * nstars * (NAPER if name.startswith("ingest") else 1)
        peaks = np.max([p["peak_mb"] for p in pick(result)], axis=0)
        cpu = sum(p["cpu"][0] for p in pick(result))
        check = (f"{nrows / seconds / 1e3:.0f} k rows/s; CPU rank 0 {cpu:.1f} s; peak RSS "
                 + ", ".join(f"rank {i} {mb:.0f} MiB" for i, mb in enumerate(peaks)))
        if names is None:
            c = result["check"]
            check += (f" (after imports {max(result['baseline_mb']):.0f}); {c['ap_rows']} "
                      f"ap_photometry rows, {c['lc_files']} LC files, {c['arm_n']} LC rows "
                      f"(aperture 0), {c['aep_n']} detrended; process {result['wall']:.1f} s")
        out.append(Row(f"backfill {label}: {name}", size, seconds,
                       "same, serial" if serial else "", peer, check))
    return out


def run(quick: bool = False, frames: int | None = None, stars: int | None = None,
        engines: tuple[str, ...] = ("sqlite", "postgresql"),
        ranks: tuple[int, ...] = (1, 2), memory: bool = True) -> list[Row]:
    """The backfill in every configuration; with ``memory`` also SQLite serial at a tenth
    of the frames (peak RSS against the frame count)."""
    params = QUICK if quick else FULL
    nframes, nstars = frames or params["frames"], stars or params["stars"]
    size = f"{nframes} fr x {nstars} st x {NAPER} ap"
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="trex-bench-backfill-") as tmp:
        project = init_project(Path(tmp) / "p")
        start = time.perf_counter()
        make_products(project, nframes, nstars)
        log.info("backfill: %d products written in %.0f s", nframes, time.perf_counter() - start)
        results = {}
        for engine in engines:
            for n in ranks:
                results[engine, n] = result = measure(project, engine, n, nframes)
                rows += rows_of(result, results.get((engine, 1)) if n > 1 else None, engine,
                                size, nframes, nstars)
                log.info("backfill: %s x%d done in %.0f s", engine, n, result["wall"])
        if memory and ("sqlite", 1) in results and nframes >= 20:
            small = measure(project, "sqlite", 1, nframes // 10)
            rows.append(Row("backfill SQLite, serial: peak RSS at 1/10 of the frames",
                            f"{nframes // 10} fr x {nstars} st x {NAPER} ap",
                            sum(p["seconds"] for p in small["phases"]), "same at all frames",
                            sum(p["seconds"] for p in results["sqlite", 1]["phases"]),
                            f"peak RSS {peak(small):.0f} MiB at {nframes // 10} frames, "
                            f"{peak(results['sqlite', 1]):.0f} MiB at {nframes}"))
    return rows


def peak(result: dict) -> float:
    """The largest peak RSS of any rank in any phase of a run, MiB."""
    return max(max(p["peak_mb"]) for p in result["phases"])


if __name__ == "__main__":
    child(sys.argv[1], sys.argv[2], int(sys.argv[3]))
