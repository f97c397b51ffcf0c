"""Transposition of per-frame photometry into per-star light curves.

Synthetic per-frame ``aphot`` products (2000 frames x 500 stars = 10^6
measurements; 200 frames x 200 stars with ``--quick``) in a scratch project, driven
serially (:class:`trex.parallel.SerialComm`):

* trex scatter + sort: read every product, append its rows to the star-range
  partition files, read each partition back and sort it by (star, time) — the
  part of ``lightcurves.transpose`` that scales with the measurements;
* trex total: ``lightcurves.transpose`` including the light-curve FITS writes
  (one file per star);
* numpy: the same light-curve rows already in memory, concatenated, lexsorted by
  (star, time) and gathered (the in-memory floor, no I/O at all);
* fitsh ``grcollect`` when installed (pipe-trex's transposer): the whole
  process on the same measurements as text files, one per frame, writing one
  text file per star.

Checks: trex's sorted rows equal numpy's (same stars, frames and order); the
light-curve files hold every measurement and a sample of stars equals numpy's
gathered rows; grcollect wrote one file per star with every line.
"""

from __future__ import annotations

import logging
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from trex import lightcurves
from trex.bench.common import Row
from trex.config import Config
from trex.lcformat import read_rows
from trex.parallel import SerialComm
from trex.products import save_product
from trex.project import Project, init_project

log = logging.getLogger(__name__)

NAME = "transpose"
NAPER, PROJID, FIELD = 3, "7", "F1"
PRODUCT = ([("star", "i8"), ("rjd", "f8"), ("bjd", "f8"), ("xcc", "f8"), ("ycc", "f8"),
            ("bgv", "f4"), ("bge", "f4"), ("fsv", "f4"), ("fdv", "f4"), ("fkv", "f4")]
           + [(f"{c}_{a:03d}", t) for c, t in (("aim", "f4"), ("aie", "f4"), ("aiq", "i2"))
              for a in range(NAPER)])


def timed(func: Callable, reset: Callable | None = None, repeats: int = 3) -> tuple[float, object]:
    """Median wall time of ``func()``, ``reset()`` (untimed) before each call; last result."""
    times, result = [], None
    for _ in range(repeats):
        if reset:
            reset()
        start = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


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
        rows = np.zeros(nstars, dtype=PRODUCT)
        rows["star"] = np.arange(nstars)
        rows["rjd"], rows["bjd"] = times[i], times[i] + 2400000.0
        for name in rows.dtype.names[3:]:
            if rows.dtype[name].kind == "f":
                rows[name] = rng.normal(10.0, 1.0, nstars)
        redpath = Path("RED") / PROJID / f"frame-{keys[i]:05d}.fits"
        save_product(root / redpath, "aphot", rows)
        entries.append(lightcurves.FrameEntry(int(keys[i]), str(redpath), "2026-11-29",
                                              PROJID, FIELD))
    return catalog, entries


def scatter_sort(project: Project, config: Config, entries: list) -> np.ndarray:
    """trex steps 1 and 2 without the light-curve writes: every partition, sorted."""
    lightcurves._scatter(SerialComm(), project, config, entries)
    folder = project.redtemp / "lc" / PROJID / FIELD
    dtype = lightcurves.part_dtype(NAPER)
    return np.concatenate([lightcurves.read_partition(folder, name, dtype)
                           for name in lightcurves.partitions(folder)])


def numpy_sort(frames: list[np.ndarray]) -> np.ndarray:
    """The in-memory peer: concatenate, lexsort by (star, time), gather."""
    rows = np.concatenate(frames)
    return rows[np.lexsort((rows["framekey"], rows["rjd"], rows["star"]))]


def order_check(trex_rows: np.ndarray, peer_rows: np.ndarray) -> str:
    """Whether both hold the same (star, framekey) sequence and the same magnitudes."""
    same = (len(trex_rows) == len(peer_rows)
            and np.array_equal(trex_rows["star"], peer_rows["star"])
            and np.array_equal(trex_rows["framekey"], peer_rows["framekey"])
            and np.array_equal(trex_rows["aim_001"], peer_rows["aim_001"]))
    return f"{len(trex_rows)} rows, {'same' if same else 'DIFFERENT'} order and values as numpy"


def lc_check(project: Project, info: list[dict], peer_rows: np.ndarray, sample: int = 5) -> str:
    """Light-curve files: count, rows, and ``sample`` stars compared with numpy's rows."""
    nrows = sum(row["nobs"] for row in info)
    same = True
    for star in np.linspace(0, len(info) - 1, sample).astype(int):
        rows, _ = read_rows(project.root / "LC" / PROJID / f"TRX-{star:05d}.fits")
        mine = peer_rows[peer_rows["star"] == star]
        same &= np.array_equal(rows["framekey"], mine["framekey"]) and \
            np.array_equal(rows["aim_001"], mine["aim_001"])
    return (f"{len(info)} LC files, {nrows} rows; {sample} stars "
            f"{'identical to' if same else 'DIFFER from'} numpy")


def grcollect_runner(frames: list[np.ndarray], folder: Path) -> tuple[list[str], Path]:
    """Text photometry files (objectid first) and the grcollect command line (pipe-trex's)."""
    inputs = []
    for i, rows in enumerate(frames):
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
        frames = [lightcurves.frame_rows(project.root, e, NAPER) for e in entries]
        t_np, peer = timed(lambda: numpy_sort(frames))
        scratch, lcdir = project.redtemp / "lc", project.root / "LC"
        t_sort, mine = timed(lambda: scatter_sort(project, config, entries),
                             lambda: shutil.rmtree(scratch, ignore_errors=True))
        shutil.rmtree(scratch, ignore_errors=True)
        t_all, info = timed(lambda: lightcurves.transpose(SerialComm(), project, config, entries,
                                                          {FIELD: catalog}),
                            lambda: shutil.rmtree(lcdir, ignore_errors=True))
        rows = [Row("transpose: scatter + sort (trex, serial)", size, t_sort,
                    "numpy lexsort + gather in memory", t_np,
                    f"{order_check(mine, peer)}; trex {nmeas / t_sort / 1e6:.2f} M meas/s"),
                Row("transpose: total incl. LC FITS writes (trex)", size, t_all,
                    "numpy lexsort + gather in memory", t_np,
                    f"{lc_check(project, info, peer)}; trex {nmeas / t_all / 1e6:.2f} M meas/s")]
        rows += _grcollect_rows(frames, Path(tmp), size, t_all, nmeas)
    return rows


def _grcollect_rows(frames: list[np.ndarray], folder: Path, size: str, t_all: float,
                    nmeas: int) -> list[Row]:
    if not shutil.which("grcollect"):
        log.warning("transpose: fitsh grcollect not installed, its row is left out")
        return []
    command, out = grcollect_runner(frames, folder)

    def reset():
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()

    t_gr, _ = timed(lambda: subprocess.run(command, check=True, capture_output=True), reset)
    files = sorted(out.glob("*.grlc"))
    lines = sum(sum(1 for _ in open(p)) for p in files)
    return [Row("transpose: total incl. LC FITS writes (trex)", size, t_all,
                "fitsh grcollect (process, text)", t_gr,
                f"grcollect {len(files)} files, {lines} lines of {nmeas}")]
