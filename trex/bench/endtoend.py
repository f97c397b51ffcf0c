"""End to end: a simulated night through the whole ``trex run``, serial and ``mpiexec -n 2``.

One night is simulated once (2048^2, 2 x 10^4 stars, 40 object frames plus
calibration frames: the chain bench's night, a HATPI-like night of 9-minute
cadence; 6 frames of 1024^2 with 2000 stars with ``--quick``; the simulation
is not timed) and copied; ``trex run`` (every stage, SQLite) then
runs in a subprocess on one copy and ``mpiexec -n 2 trex run`` on the other.
Each is one run, not a median: a run changes its project (finished frames
are skipped when re-run), and a night takes minutes.

Row: trex = the MPI run's wall time, peer = the serial run's (same code, one
rank), so ratio = speed-up and parallel efficiency = ratio / 2 =
serial / (2 x mpi).  Check: frames/s per core of both, efficiency, peak RSS
of every rank, and whether both runs wrote the same light curves (SPEC 4:
identical bytes, compared on a sample of stars).  Both runs log at INFO: the
per-phase timers (wall, each rank's items and seconds of work, rank 0's seconds
of recording) give each phase's efficiency and the rank-0 ingest model
(:func:`ingest_model`).

Peak RSS: every process is started through a small Python wrapper that runs
the command as its child (file descriptors kept open, which MPI's process
manager needs) and writes ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` (the
largest RSS of the child, KiB on Linux) to ``rss.<rank>``, the rank being
``PMI_RANK`` (MPICH) or ``OMPI_COMM_WORLD_RANK`` (Open MPI).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fitsio
import numpy as np

from trex.bench.common import Row
from trex.lcformat import read_rows
from trex.project import init_project
from trex.simulate import simulate_project

log = logging.getLogger(__name__)

NAME = "endtoend"
FULL = {"frames": 40, "size": 2048, "stars": 20_000}
QUICK = {"frames": 6, "size": 1024, "stars": 2000}
RANKS = 2
RSS_WRAPPER = """\
import os, resource, subprocess, sys
code = subprocess.call(sys.argv[2:], close_fds=False)
rank = os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
with open(os.path.join(sys.argv[1], "rss." + rank), "w") as fh:
    fh.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


def single_thread_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    return env


def run_measured(command: list[str], folder: Path, mpi_ranks: int = 0
                 ) -> tuple[float, list[float], str]:
    """Wall time of ``command`` (each rank under the RSS wrapper), peak RSS per rank, MiB,
    and its log (stderr)."""
    folder.mkdir(parents=True, exist_ok=True)
    wrapped = [sys.executable, "-c", RSS_WRAPPER, str(folder), *command]
    if mpi_ranks:
        wrapped = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(mpi_ranks), *wrapped]
    start = time.perf_counter()
    done = subprocess.run(wrapped, capture_output=True, text=True, env=single_thread_env())
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
    rss = [int((folder / f"rss.{r}").read_text()) / 1024.0 for r in range(max(mpi_ranks, 1))]
    return elapsed, rss, done.stderr


#: the per-phase timer line of ``trex.pipeline`` (INFO)
TIMER = re.compile(r"trex\.pipeline: (?P<phase>.+?): (?P<wall>[\d.]+) s wall; work: (?P<ranks>.*); "
                   r"rank 0 recording (?P<record>[\d.]+) s")
FRAME_PHASES = ("calibrate+extract+astrometry+photometry", "magfit+subtract")


def phase_times(log_text: str) -> dict[str, dict]:
    """Per phase of a ``trex run`` log: wall s, per rank (items, work s), rank 0's record s."""
    out = {}
    for m in TIMER.finditer(log_text):
        ranks = [(int(a), float(b)) for a, b in re.findall(r"rank \d+ (\d+) in ([\d.]+) s",
                                                             m["ranks"])]  # wall s
        out[m["phase"]] = {"wall": float(m["wall"]), "ranks": ranks, "record": float(m["record"])}
    return out


def ingest_model(phases: dict[str, dict]) -> tuple[float, float, float]:
    """The rank-0 ingest model from a run's per-frame phases: (frames/s of one rank
    working, 1/w; frames/s rank 0 records when it does nothing else, 1/r; the rank
    count where rank 0 saturates, 1 + w/r).

    Rank 0 records every frame (r s each) and works on frames in the time left, the
    others only work (w s a frame): N ranks go at N / (w + r) frames/s, N times one
    rank, as long as rank 0 has time left for frames of its own, i.e. up to
    N = 1 + w/r; past that rank 0 only records and the frames go at 1/r whatever N."""
    work = sum(sum(t for _, t in phases[p]["ranks"]) for p in FRAME_PHASES if p in phases)
    record = sum(phases[p]["record"] for p in FRAME_PHASES if p in phases)
    frames = max((sum(n for n, _ in phases[p]["ranks"]) for p in FRAME_PHASES if p in phases),
                 default=0)
    if not frames or work <= 0 or record <= 0:
        return float("nan"), float("nan"), float("nan")
    return frames / work, frames / record, 1.0 + work / record


def lightcurve_files(root: Path) -> list[Path]:
    """Light-curve files of a project (relative paths), leaving out other FITS files in
    LC/ such as the detrend stage's ``lcstats.fits`` (no LIGHTCURVE table)."""
    found = []
    for path in sorted((root / "LC").rglob("*.fits")):
        with fitsio.FITS(str(path)) as fits:
            if "LIGHTCURVE" in fits:
                found.append(path.relative_to(root))
    return found


def same_lightcurves(first: Path, second: Path, sample: int = 50) -> str:
    """Light-curve files of two projects: names, and a sample compared byte for byte."""
    a, b = lightcurve_files(first), lightcurve_files(second)
    if a != b:
        return f"LC files DIFFER: {len(a)} serial, {len(b)} MPI, {len(set(a) ^ set(b))} not in both"
    picks = [a[i] for i in np.linspace(0, len(a) - 1, min(sample, len(a))).astype(int)] if a else []
    same = all(read_rows(first / p)[0].tobytes() == read_rows(second / p)[0].tobytes()
               for p in picks)
    return f"{len(a)} LC files, {len(picks)} sampled {'identical' if same else 'DIFFERENT'}"


def run(quick: bool = False) -> list[Row]:
    params = QUICK if quick else FULL
    frames, size, stars = params["frames"], params["size"], params["stars"]
    label = f"{size}^2, {stars} stars, {frames} fr"
    trex_run = [sys.executable, "-m", "trex", "--log-level", "INFO", "run"]
    with tempfile.TemporaryDirectory(prefix="trex-bench-e2e-") as tmp:
        serial = Path(tmp) / "serial"
        init_project(serial)
        began = time.perf_counter()
        simulate_project(serial, frames=frames, size=size, stars=stars, seed=1)
        log.info("endtoend: simulated %s in %.0f s", label, time.perf_counter() - began)
        mpi = Path(tmp) / "mpi"
        shutil.copytree(serial, mpi)
        try:
            t_serial, rss_serial, log_serial = run_measured(trex_run + [str(serial)],
                                                            Path(tmp) / "rss-serial")
            t_mpi, rss_mpi, log_mpi = run_measured(trex_run + [str(mpi)], Path(tmp) / "rss-mpi",
                                                   RANKS)
        except (RuntimeError, OSError) as err:
            log.error("endtoend: left out: %s", err)
            return []
        try:
            lcs = same_lightcurves(serial, mpi)
        except OSError as err:
            lcs = f"LC comparison failed: {err}"
    efficiency = t_serial / (RANKS * t_mpi)
    serial_phases, mpi_phases = phase_times(log_serial), phase_times(log_mpi)
    for name, one in serial_phases.items():
        two = mpi_phases.get(name, {"wall": float("nan")})
        log.info("endtoend: %-45s serial %7.2f s, mpi %7.2f s, efficiency %.2f", name, one["wall"],
                 two["wall"], one["wall"] / (RANKS * two["wall"]) if two["wall"] > 0 else 0.0)
    rate, record, saturates = ingest_model(serial_phases)
    check = (f"frames/s/core serial {frames / t_serial:.3f}, MPI {frames / (RANKS * t_mpi):.3f}; "
             f"efficiency {efficiency:.2f}; peak RSS MiB serial {rss_serial[0]:.0f}, MPI ranks "
             f"{'/'.join(f'{r:.0f}' for r in rss_mpi)}; {lcs}; rank-0 ingest model: one rank "
             f"{rate:.3f} frames/s, rank 0 records {record:.2f} frames/s, saturates at "
             f"{saturates:.0f} ranks")
    return [Row(f"end to end: mpiexec -n {RANKS} trex run (all stages)", label, t_mpi,
                "trex run, serial (1 rank)", t_serial, check)]
