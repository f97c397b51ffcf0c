"""Transposition of per-frame photometry into per-star light curves.

Synthetic per-frame ``aphot`` products (2000 frames x 500 stars = 10^6
measurements; 200 frames x 200 stars with ``--quick``) in a scratch project, driven
serially (:class:`trex.parallel.SerialComm`):

* trex scatter + sort: read every product, append its rows to the star-range
  partition files, read each partition back and sort it by (star, time) — the
  part of the light-curve phases that scales with the measurements;
* trex total: the scatter and merge phases' work (:class:`trex.lightcurves.Scatter`,
  :class:`trex.lightcurves.Merge`, without detrending and without the database)
  including the light-curve FITS writes (one file per star);
* numpy: the same light-curve rows already in memory, concatenated, lexsorted by
  (star, time) and gathered (the in-memory floor, no I/O at all);
* trex scatter + sort and total under ``mpiexec -n 2`` (timed inside the
  ranks), against the serial times: the speed-up over ranks;
* fitsh ``grcollect`` when installed (pipe-trex's transposer): the whole
  process on the same measurements as text files, one per frame, writing one
  text file per star.

Checks: trex's sorted rows equal numpy's (same stars, frames and order); the
light-curve files hold every measurement and a sample of stars equals numpy's
gathered rows; grcollect wrote one file per star with every line.
"""

from __future__ import annotations

import logging
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from trex import lightcurves, partitions
from trex.bench.common import Row, median_time
from trex.config import Config
from trex.frame import Context
from trex.lcformat import read_rows
from trex.parallel import SerialComm, split
from trex.photometry import aphot_dtype
from trex.products import load_product, save_product
from trex.project import Project, init_project

log = logging.getLogger(__name__)

NAME = "transpose"
NAPER, PROJID, FIELD = 3, "7", "F1"


def make_products(root: Path, nframes: int, nstars: int, seed: int = 0):
    """(catalog, entries) of ``nframes`` frames measuring all ``nstars`` stars."""
    rng = np.random.default_rng(seed)
    catalog = {"objectid": np.array([f"TRX-{i:05d}" for i in range(nstars)]),
               "ra": rng.uniform(50, 70, nstars), "dec": rng.uniform(-40, -20, nstars),
               "mag": rng.uniform(8, 14, nstars)}
    times = 61000.5 + np.sort(rng.uniform(0, 1, nframes))
    keys = rng.permutation(nframes) + 1  # framekeys not in time order
    entries = []
    for i in range(nframes):
        rows = np.zeros(nstars, dtype=aphot_dtype(NAPER))
        rows["star"] = np.arange(nstars)
        rows["rjd"], rows["bjd"] = times[i], times[i] + 2400000.0
        for name in rows.dtype.names[3:]:
            if rows.dtype[name].kind == "f":
                rows[name] = rng.normal(10.0, 1.0, nstars)
        redpath = Path("RED") / PROJID / f"frame-{keys[i]:05d}.fits"
        save_product(root / redpath, "aphot", rows)
        entries.append(lightcurves.FrameEntry(int(keys[i]), str(redpath), "2026-11-29",
                                              PROJID, FIELD, times[i]))
    return catalog, entries


def scatter(project: Project, config: Config, entries: list, catalog, comm=None) -> Context:
    """The scatter phase's work on this rank's share of ``entries``; the context the
    merge phase gets."""
    comm = comm or SerialComm()
    context = Context(project, config, catalogs={FIELD: catalog},
                      frames=lightcurves.FrameTable.of(entries))
    phase = lightcurves.Scatter()
    per_part = max(1, config.lightcurves.partition_rows // len(entries))
    for i in split(len(entries), comm.size, comm.rank):
        phase.work((entries[i], per_part), context)
    phase.close(context)
    return context


def merge(context: Context, comm=None) -> np.ndarray:
    """The merge phase's work on this rank's share of the partitions (light curves
    written, no detrending); the ``nobs`` of every light curve written."""
    comm = comm or SerialComm()
    phase = lightcurves.Merge(detrend=False)
    names = partitions.partitions(context.project.redtemp / "lc" / PROJID / FIELD)
    nobs = []
    for i in split(len(names), comm.size, comm.rank):
        for _, stats in phase.work((PROJID, FIELD, names[i]), context).values():
            if len(stats.get("aperture", ())):
                nobs.append(stats["aim_n"][stats["aperture"] == 0])
    return np.concatenate(nobs) if nobs else np.zeros(0, np.int64)


def scatter_sort(project: Project, config: Config, entries: list,
                 collect: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
    """trex steps 1 and 2 without the light-curve writes (every partition read and
    its grouping order found); with ``collect``, (rows, framekeys) of every
    partition, grouped by star (gathered out of the reader, which reuses its
    arrays; the pipeline gathers each star's rows when it merges it)."""
    scatter(project, config, entries, {})
    folder = project.redtemp / "lc" / PROJID / FIELD
    dtype = partitions.stream_dtypes(NAPER)["aphot"]
    reader, rows, keys = partitions.PartitionReader(), [], []
    for name in partitions.partitions(folder):
        part_rows, part_keys, order = reader.read(folder, name, "aphot", dtype)
        if collect:
            rows.append(np.take(part_rows, order))
            keys.append(part_keys[order])
    return (np.concatenate(rows), np.concatenate(keys)) if collect else None


def load_frames(project: Project, entries: list) -> tuple[np.ndarray, np.ndarray]:
    """Every frame's aphot rows in memory, concatenated, and the framekey of each row."""
    frames = [load_product(project.root / e.redpath, "aphot") for e in entries]
    keys = np.repeat([e.framekey for e in entries], [len(f) for f in frames])
    return np.concatenate(frames), keys


def numpy_sort(frames: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The in-memory peer: lexsort (rows, framekeys) by (star, time, frame), gather."""
    rows, keys = frames
    order = np.lexsort((keys, rows["rjd"], rows["star"]))
    return np.take(rows, order), keys[order]  # take: structured fancy indexing is slower


def order_check(trex_rows: tuple[np.ndarray, np.ndarray],
                peer_rows: tuple[np.ndarray, np.ndarray]) -> str:
    """Whether both hold the same (star, framekey) sequence and the same magnitudes."""
    (rows, keys), (peer, peer_keys) = trex_rows, peer_rows
    same = (len(rows) == len(peer)
            and np.array_equal(rows["star"], peer["star"])
            and np.array_equal(keys, peer_keys)
            and np.array_equal(rows["aim_001"], peer["aim_001"]))
    return f"{len(rows)} rows, {'same' if same else 'DIFFERENT'} order and values as numpy"


def transpose_nobs(project: Project, config: Config, entries: list, catalog) -> np.ndarray:
    """Scatter and merge (serial); the ``nobs`` of every light curve written."""
    nobs = merge(scatter(project, config, entries, catalog))
    shutil.rmtree(project.redtemp / "lc", ignore_errors=True)
    return nobs


def lc_check(project: Project, nobs: np.ndarray, peer_rows: tuple[np.ndarray, np.ndarray],
             sample: int = 5) -> str:
    """Light-curve files: count, rows, and ``sample`` stars compared with numpy's rows."""
    nrows = int(nobs.sum())
    peer, peer_keys = peer_rows
    same = True
    for star in np.linspace(0, len(nobs) - 1, sample).astype(int):
        rows, _ = read_rows(project.root / "LC" / PROJID / f"TRX-{star:05d}.fits")
        mine = peer["star"] == star
        same &= np.array_equal(rows["framekey"], peer_keys[mine]) and \
            np.array_equal(rows["aim_001"], peer["aim_001"][mine])
    return (f"{len(nobs)} LC files, {nrows} rows; {sample} stars "
            f"{'identical to' if same else 'DIFFER from'} numpy")


def grcollect_runner(project: Project, entries: list,
                     folder: Path) -> tuple[list[str], Path]:
    """Text photometry files (objectid first) and the grcollect command line (pipe-trex's)."""
    inputs = []
    for i, entry in enumerate(entries):
        rows = load_product(project.root / entry.redpath, "aphot")
        path = folder / f"f{i:05d}.phot"
        np.savetxt(path, np.column_stack([rows["star"], rows["rjd"], rows["xcc"], rows["ycc"]]
                                         + [rows[f"{c}_{a:03d}"] for a in range(NAPER)
                                            for c in ("aim", "aie")]),
                   fmt=["TRX-%05d", "%.6f", "%.3f", "%.3f"] + ["%.5f"] * (2 * NAPER))
        inputs.append(str(path))
    out = folder / "lc"
    command = ["grcollect", *inputs, "--col-base", "1", "--prefix", f"{out}/",
               "--extension", "grlc", "--max-memory", "256m"]
    return command, out


def run(quick: bool = False) -> list[Row]:
    nframes, nstars = (200, 200) if quick else (2000, 500)
    nmeas = nframes * nstars
    size = f"{nframes} frames x {nstars} stars"
    config = Config()
    with tempfile.TemporaryDirectory(prefix="trex-bench-lc-") as tmp:
        project = init_project(Path(tmp) / "p")
        catalog, entries = make_products(project.root, nframes, nstars)
        in_memory = load_frames(project, entries)
        t_np, peer = median_time(lambda: numpy_sort(in_memory))
        scratch, lcdir = project.redtemp / "lc", project.root / "LC"
        t_sort, _ = median_time(lambda: scatter_sort(project, config, entries),
                                reset=lambda: shutil.rmtree(scratch, ignore_errors=True))
        shutil.rmtree(scratch, ignore_errors=True)
        mine = scatter_sort(project, config, entries, collect=True)
        shutil.rmtree(scratch, ignore_errors=True)
        t_all, nobs = median_time(lambda: transpose_nobs(project, config, entries, catalog),
                                  reset=lambda: shutil.rmtree(lcdir, ignore_errors=True))
        rows = [Row("transpose: scatter + sort (trex, serial)", size, t_sort,
                    "numpy lexsort + gather in memory", t_np,
                    f"{order_check(mine, peer)}; trex {nmeas / t_sort / 1e6:.2f} M meas/s"),
                Row("transpose: total incl. LC FITS writes (trex)", size, t_all,
                    "numpy lexsort + gather in memory", t_np,
                    f"{lc_check(project, nobs, peer)}; trex {nmeas / t_all / 1e6:.2f} M meas/s")]
        rows += _mpi_rows(project, entries, catalog, size, (t_sort, t_all), nmeas)
        rows += _grcollect_rows(project, entries, Path(tmp), size, t_all, nmeas)
    return rows


def _mpi_rows(project: Project, entries: list, catalog: dict, size: str,
              t_serial: tuple[float, float], nmeas: int) -> list[Row]:
    """Scatter + sort and the whole transposition under ``mpiexec -n 2``, timed inside
    the ranks (between barriers, so interpreter start-up is left out), median of 3;
    ``t_serial`` = the serial (scatter + sort, total) times."""
    from trex.bench.endtoend import single_thread_env

    mpiexec = Path(sys.executable).parent / "mpiexec"
    if not mpiexec.exists():
        log.warning("transpose: no mpiexec beside %s, the MPI row is left out", sys.executable)
        return []
    with open(project.root / "bench.pickle", "wb") as fh:
        pickle.dump((entries, catalog), fh)
    times = []
    for _ in range(3):
        shutil.rmtree(project.root / "LC", ignore_errors=True)
        done = subprocess.run([str(mpiexec), "-n", "2", sys.executable, "-m", __name__,
                               str(project.root)], capture_output=True, text=True,
                              env=single_thread_env(), check=True)
        times.append([float(v) for v in done.stdout.split()[-2:]])
    t_sort, t_all = (statistics.median(t) for t in zip(*times))
    nlc = len(list((project.root / "LC" / PROJID).glob("*.fits")))
    return [Row("transpose: scatter + sort, mpiexec -n 2", size, t_sort,
                "trex, serial (1 rank)", t_serial[0],
                f"trex {nmeas / t_sort / 1e6:.2f} M meas/s on 2 ranks, "
                f"efficiency {t_serial[0] / (2 * t_sort):.2f}"),
            Row("transpose: total incl. LC FITS writes, mpiexec -n 2", size, t_all,
                "trex, serial (1 rank)", t_serial[1],
                f"{nlc} LC files; trex {nmeas / t_all / 1e6:.2f} M meas/s on 2 ranks, "
                f"efficiency {t_serial[1] / (2 * t_all):.2f}")]


def _mpi_child(root: str) -> None:
    """One rank of :func:`_mpi_rows`: prints on rank 0 the wall times of scatter +
    sort (each rank groups a share of the partitions, as the farm would) and of
    the whole transposition."""
    from trex.parallel import world

    project, config = Project(Path(root)), Config()
    with open(project.root / "bench.pickle", "rb") as fh:
        entries, catalog = pickle.load(fh)
    comm = world()
    folder = project.redtemp / "lc" / PROJID / FIELD
    dtype = partitions.stream_dtypes(NAPER)["aphot"]
    comm.barrier()
    start = time.perf_counter()
    scatter(project, config, entries, catalog, comm)
    comm.barrier()
    names, reader = partitions.partitions(folder), partitions.PartitionReader()
    for i in split(len(names), comm.size, comm.rank):
        reader.read(folder, names[i], "aphot", dtype)
    comm.barrier()
    t_sort = time.perf_counter() - start
    if comm.rank == 0:
        shutil.rmtree(project.redtemp / "lc")
    comm.barrier()
    start = time.perf_counter()
    context = scatter(project, config, entries, catalog, comm)
    comm.barrier()
    merge(context, comm)
    comm.barrier()
    if comm.rank == 0:
        shutil.rmtree(project.redtemp / "lc")
    if comm.rank == 0:
        print(f"{t_sort:.6f} {time.perf_counter() - start:.6f}")



def _grcollect_rows(project: Project, entries: list, folder: Path, size: str, t_all: float,
                    nmeas: int) -> list[Row]:
    if not shutil.which("grcollect"):
        log.warning("transpose: fitsh grcollect not installed, its row is left out")
        return []
    command, out = grcollect_runner(project, entries, folder)

    def reset():
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()

    t_gr, _ = median_time(lambda: subprocess.run(command, check=True, capture_output=True),
                          reset=reset)
    files = sorted(out.glob("*.grlc"))
    lines = sum(sum(1 for _ in open(p)) for p in files)
    return [Row("transpose: total incl. LC FITS writes (trex)", size, t_all,
                "fitsh grcollect (process, text)", t_gr,
                f"grcollect {len(files)} files, {lines} lines of {nmeas}; its time includes "
                "process start and text read/parse (trex reads binary products)")]


if __name__ == "__main__":
    _mpi_child(sys.argv[1])
