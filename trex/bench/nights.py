"""A season at flat cost: the cost of adding one real night to archives of 1, 4, 16 and 64
earlier nights (issue 19, "Measure"); ``--quick``: small nights, archives of 1 and 4.

A night is simulated (``FULL``: 100 object frames of 512^2 px with 2000 stars, plus
the simulator's calibration frames) and reduced with the real command line in a
subprocess, as every morning, all stages (calibration to subtraction, light
curves and per-night detrending):

    trex run ROOT

The first night is reduced for real (untimed): it builds the masters, the
references, the TFA templates and the light curves.  The archive then grows
cheaply before each measured night: *synthetic nights*, copies of the first
night's light-curve rows shifted by whole days before it (new frame keys),
are written into every star's light curve with trex's own writer
(:func:`trex.lcformat.write_lightcurve`, NIGHTnnn cards from
:func:`trex.lccards.night_cards`), their statistics recorded with
``Ledger.record_lightcurves`` (combined with the recorded ones, as a run does),
and the first night's ``frameinfo``, ``calibratedframes`` and ``framestatus``
rows are copied for each synthetic night (with an empty ``RAW/<night>`` folder
recorded in ``rawnights``; their calibrated paths still name the first night's
products), so that every per-run query sees a frame table of the archive's
size.  Their ``ap_photometry`` rows are left out (a run touches that table by
frame key only, through its index).  Each measured night is a
new simulated night, reduced on the archive, then part of it; the archive of
64 earlier nights holds 65 x 100 = 6500 rows per star.

Row per archive size: wall time of the run that adds the night (peer: the
first measured night, ratio = first / this, so < 1 means slower); check: the
run's CPU time (user + system), bytes written (``write_bytes`` of
``/proc/self/io`` at the end of the run: what it sent to storage, files and
database), frames processed, the archive's rows per star, and last/first for
wall, CPU and bytes (goal <= 1.2 each), with the phases that grew most.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from trex.bench.common import Row
from trex.bench.endtoend import single_thread_env
from trex.db import connect
from trex.db.queries import Queries
from trex.lccards import header_cards, night_cards
from trex.lcformat import read_rows, write_lightcurve
from trex.lcstats import lcstats_rows
from trex.ledger import Ledger
from trex.project import Project, init_project
from trex.simulate import night_names, simulate_project

log = logging.getLogger(__name__)

NAME = "nights"
FULL = {"frames": 100, "size": 512, "stars": 2000, "archives": (1, 4, 16, 64)}
QUICK = {"frames": 20, "size": 256, "stars": 300, "archives": (1, 4)}
SEED = 5
#: frame keys of synthetic night j: the first night's + j x KEY_STEP
KEY_STEP = 1_000_000
#: ``python -c RUN_WRAPPER FILE ARGS...``: ``trex ARGS...``, then FILE gets JSON of the
#: wall/CPU time and items of every phase and what the process wrote (/proc/self/io)
RUN_WRAPPER = """\
import json, sys, time
from trex import cli, pipeline
inner, phases = pipeline.run_phase, []
def timed(comm, ledger, context, phase, stop):
    start, cpu = time.perf_counter(), time.process_time()
    out = inner(comm, ledger, context, phase, stop)
    phases.append([phase.name, time.perf_counter() - start, time.process_time() - cpu, out[1],
                   getattr(phase, "files", 0)])
    return out
pipeline.run_phase = timed
code = cli.main(sys.argv[2:])
with open("/proc/self/io") as fh:
    io = {k: int(v) for k, v in (line.split(": ") for line in fh.read().splitlines())}
with open(sys.argv[1], "w") as fh:
    json.dump({"phases": phases, "io": io}, fh)
sys.exit(code)
"""


def trex_run(root: Path, folder: Path) -> dict:
    """``trex run ROOT`` (all stages) in a subprocess on one thread: wall and CPU time,
    bytes written, and each phase's wall and CPU time."""
    report = folder / f"run-{time.monotonic_ns()}.json"
    command = [sys.executable, "-c", RUN_WRAPPER, str(report), "--log-level", "WARNING",
               "run", str(root)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=single_thread_env())
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"trex run {root} failed ({done.returncode}): {done.stderr[-2000:]}")
    found = json.loads(report.read_text())
    report.unlink()
    return {"seconds": elapsed,
            "cpu": after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime,
            "written": found["io"]["write_bytes"], "phases": found["phases"],
            "load": os.getloadavg()[0]}


def counts(root: Path) -> tuple[int, int]:
    """(frames with photometry done, measurements merged into light curves, aperture 0)."""
    with connect(f"sqlite:///{root / 'trex.sqlite'}") as db:
        return Queries(db).merged_measurements()


def run_night(root: Path) -> dict:
    """Reduce the project's pending night; times and the frames it processed."""
    frames0 = counts(root)[0] if (root / "trex.sqlite").exists() else 0
    result = trex_run(root, root.parent)
    return {**result, "frames": counts(root)[0] - frames0}


def _shift_date(night: str, days: int) -> str:
    return (datetime.date.fromisoformat(night) + datetime.timedelta(days=days)).isoformat()


def _shift_iso(text: str | None, days: int) -> str | None:
    if not text:
        return text
    return (datetime.datetime.fromisoformat(text) + datetime.timedelta(days=days)).isoformat()


class Archive:
    """The archive being grown: the first night's light-curve rows and database rows, and
    the synthetic nights written so far (``count``)."""

    def __init__(self, root: Path):
        self.root, self.project = root, Project(root)
        self.config = self.project.load_config()
        self.night = night_names(root)[0]
        self.count = 0
        self.files = sorted(self.project.root.glob("LC/*/*.fits"))
        self.base = {path: read_rows(path)[0] for path in self.files}

    def grow(self, nights: int) -> None:
        """Add ``nights`` synthetic nights before the earliest one."""
        if nights <= 0:
            return
        days = list(range(self.count + 1, self.count + nights + 1))  # days before the first
        names = tuple(_shift_date(self.night, -d) for d in days)
        self._database_rows(days, names)
        self._light_curves(days, names)
        self.count += nights

    def _shifted(self, rows: np.ndarray, day: int) -> np.ndarray:
        out = rows.copy()
        out["rjd"] -= day
        out["bjd"] -= day
        out["framekey"] += day * KEY_STEP
        return out

    def _light_curves(self, days: list[int], names: tuple[str, ...]) -> None:
        """Each star's light curve with the synthetic nights written before its rows (one
        write of the whole file), its statistics combined with the recorded ones."""
        napertures = len(self.config.photometry.apertures)
        gap = self.config.detrend.night_gap
        with connect(self.project.database_url(self.config)) as db:
            ledger = Ledger(db, self.config)
            for start in range(0, len(self.files), 500):
                infos, stars = [], []
                for path in self.files[start:start + 500]:
                    rows, header = read_rows(path)
                    new = np.concatenate([self._shifted(self.base[path], d) for d in days[::-1]])
                    per_night = np.full(len(days), len(self.base[path]))
                    cards = [c for c in header_cards(header) if not (
                        c["name"].startswith("NIGHT") and c["name"][5:].isdigit())]
                    cards += night_cards(header, per_night, per_night, names, self.config)
                    write_lightcurve(path, np.concatenate([new, rows]), cards)
                    objectid = str(header["OBJECTID"])
                    info = {"projid": path.parent.name, "objectid": objectid,
                            "mag": float(header.get("MAG", np.nan)), "x": np.nan, "y": np.nan}
                    stars.append((new, info))
                    infos.append({"projid": info["projid"], "objectid": objectid,
                                  "path": str(path.relative_to(self.root)),
                                  "rjd_min": float(np.nanmin(new["rjd"])),
                                  "rjd_max": float(np.nanmax(new["rjd"]))})
                ledger.record_lightcurves(_columns(infos), lcstats_rows(stars, napertures, gap),
                                          added=True)

    def _database_rows(self, days: list[int], names: tuple[str, ...]) -> None:
        """The first night's object frames' rows, copied for each synthetic night."""
        with connect(self.project.database_url(self.config)) as db:
            frames = db.query_dicts("SELECT * FROM frameinfo WHERE night = ? AND imagetyp = "
                                    "'object'", (self.night,))
            keys = [int(f["framekey"]) for f in frames]
            marks = ", ".join("?" * len(keys))
            calibrated = db.query_dicts(f"SELECT * FROM calibratedframes WHERE framekey IN "
                                        f"({marks})", keys)
            status = db.query_dicts(f"SELECT * FROM framestatus WHERE framekey IN ({marks})",
                                    keys)
            with db.transaction():
                for day, name in zip(days, names):
                    step = day * KEY_STEP
                    _insert(db, "frameinfo", [
                        {**f, "framekey": f["framekey"] + step, "night": name,
                         "rawpath": f["rawpath"].replace(self.night, name),
                         "jd": f["jd"] - day, "dateobs": _shift_iso(f["dateobs"], -day)}
                        for f in frames])
                    _insert(db, "calibratedframes", [{**c, "framekey": c["framekey"] + step}
                                                      for c in calibrated])
                    _insert(db, "framestatus", [{**s, "framekey": s["framekey"] + step}
                                                for s in status])
                    folder = self.project.raw / name
                    folder.mkdir(parents=True, exist_ok=True)
                    db.execute("INSERT INTO rawnights (night, mtime_ns, updated) VALUES (?, ?, ?)",
                               (name, folder.stat().st_mtime_ns, "synthetic"))


def _insert(db, table: str, rows: list[dict]) -> None:
    if rows:
        names = list(rows[0])
        db.executemany(f"INSERT INTO {table} ({', '.join(names)}) VALUES "
                       f"({', '.join('?' * len(names))})", [[r[n] for n in names] for r in rows])


def _columns(rows: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


def rows_per_star(root: Path) -> tuple[int, int]:
    """(least, most) rows of aperture 0 of the project's light curves (``lcstats``)."""
    with connect(f"sqlite:///{root / 'trex.sqlite'}") as db:
        low, high = db.query("SELECT min(aim_n), max(aim_n) FROM lcstats WHERE aperture = 0")[0]
    return int(low or 0), int(high or 0)


def _growth(added: dict, first: dict) -> str:
    """The three phases whose CPU time grew most from the first measured night (CPU: wall
    times on a shared machine move with its load)."""
    before = {p[0]: p[2] for p in first["phases"]}
    grew = sorted(((p[2] - before.get(p[0], 0.0), p[0], p[2]) for p in added["phases"]),
                  reverse=True)[:3]
    return ", ".join(f"{name} {t:.2f} s (first {t - d:.2f})" for d, name, t in grew)


def _row(earlier: int, params: dict, added: dict, first: dict, archive: tuple[int, int]) -> Row:
    size = f"{earlier} nights + 1, {params['frames']} fr {params['size']}^2 {params['stars']} st"
    check = (f"{added['frames']} frames processed; CPU {added['cpu']:.1f} s; wrote "
             f"{added['written'] / 2**20:.1f} MiB; archive {archive[0]}-{archive[1]} rows/star "
             f"after; last/first: wall {added['seconds'] / first['seconds']:.2f}, CPU "
             f"{added['cpu'] / first['cpu']:.2f}, bytes {added['written'] / first['written']:.2f} "
             f"(goal <= 1.2); load {added['load']:.1f}; CPU grew most in: "
             f"{_growth(added, first)}")
    return Row("add a night to an archive (trex run, all stages)", size, added["seconds"],
               "same, archive of 1 night", first["seconds"], check)


def run(quick: bool = False) -> list[Row]:
    params = QUICK if quick else FULL
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="trex-bench-nights-") as tmp:
        root = Path(tmp) / "archive"
        init_project(root)
        simulate_project(root, frames=params["frames"], size=params["size"],
                         stars=params["stars"], seed=SEED)
        try:
            log.info("nights: first night in %.1f s", run_night(root)["seconds"])
            archive, first, have = Archive(root), None, 1
            for earlier in params["archives"]:
                start = time.perf_counter()
                archive.grow(earlier - have)
                log.info("nights: archive of %d nights built in %.0f s", earlier,
                         time.perf_counter() - start)
                simulate_project(root, add_night=True)
                added = run_night(root)
                log.info("nights: phases (name, wall s, CPU s, items, files): %s",
                         json.dumps(added["phases"]))
                have = earlier + 1
                first = first or added
                rows.append(_row(earlier, params, added, first, rows_per_star(root)))
                log.info("nights: %s", rows[-1])
        except (RuntimeError, OSError) as err:
            log.error("nights: left out: %s", err)
            return []
    return rows
