"""End to end: a simulated night through the whole ``trex run``, serial and ``mpiexec -n 2``.

One night is simulated once (2048^2, 10^4 stars, 12 object frames plus
calibration frames; 6 frames of 1024^2 with 2000 stars with ``--quick``; the
simulation is not timed) and copied; ``trex run`` (every stage, SQLite) then
runs in a subprocess on one copy and ``mpiexec -n 2 trex run`` on the other.
Each is one run, not a median: a run changes its project (finished frames
are skipped when re-run), and a night takes minutes.

Row: trex = the MPI run's wall time, peer = the serial run's (same code, one
rank), so ratio = speed-up and parallel efficiency = ratio / 2 =
serial / (2 x mpi).  Check: frames/s per core of both, efficiency, peak RSS
of every rank, and whether both runs wrote the same light curves (SPEC 4:
identical bytes, compared on a sample of stars).

Peak RSS: every process is started through a small Python wrapper that runs
the command as its child (file descriptors kept open, which MPI's process
manager needs) and writes ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` (the
largest RSS of the child, KiB on Linux) to ``rss.<rank>``, the rank being
``PMI_RANK`` (MPICH) or ``OMPI_COMM_WORLD_RANK`` (Open MPI).
"""

from __future__ import annotations

import logging
import os
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
FULL = {"frames": 12, "size": 2048, "stars": 10_000}
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


def run_measured(command: list[str], folder: Path, mpi_ranks: int = 0) -> tuple[float, list[float]]:
    """Wall time of ``command`` (each rank under the RSS wrapper) and peak RSS per rank, MiB."""
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
    return elapsed, rss


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
    trex_run = [sys.executable, "-m", "trex", "--log-level", "WARNING", "run"]
    with tempfile.TemporaryDirectory(prefix="trex-bench-e2e-") as tmp:
        serial = Path(tmp) / "serial"
        init_project(serial)
        began = time.perf_counter()
        simulate_project(serial, frames=frames, size=size, stars=stars, seed=1)
        log.info("endtoend: simulated %s in %.0f s", label, time.perf_counter() - began)
        mpi = Path(tmp) / "mpi"
        shutil.copytree(serial, mpi)
        try:
            t_serial, rss_serial = run_measured(trex_run + [str(serial)], Path(tmp) / "rss-serial")
            t_mpi, rss_mpi = run_measured(trex_run + [str(mpi)], Path(tmp) / "rss-mpi", RANKS)
        except (RuntimeError, OSError) as err:
            log.error("endtoend: left out: %s", err)
            return []
        try:
            lcs = same_lightcurves(serial, mpi)
        except OSError as err:
            lcs = f"LC comparison failed: {err}"
    efficiency = t_serial / (RANKS * t_mpi)
    check = (f"frames/s/core serial {frames / t_serial:.3f}, MPI {frames / (RANKS * t_mpi):.3f}; "
             f"efficiency {efficiency:.2f}; peak RSS MiB serial {rss_serial[0]:.0f}, MPI ranks "
             f"{'/'.join(f'{r:.0f}' for r in rss_mpi)}; {lcs}")
    return [Row(f"end to end: mpiexec -n {RANKS} trex run (all stages)", label, t_mpi,
                "trex run, serial (1 rank)", t_serial, check)]
