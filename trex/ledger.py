"""The ledger: the state of every frame and phase of a project, and how it changes.

One object over the database (rank 0 only) that every phase plans from and
records into.  ``framestatus`` holds, per frame and stage, done or failed
with the reason, the hash of the stage's settings and the stage's other
inputs (:mod:`trex.stages`); ``phasestatus`` the same for project phases
(a group's reference, a master).  The rules:

* a stage is pending on a frame when it is not done, or when it is done but
  stale: its settings changed, or (for stages that say so) its inputs did;
* a failed stage is tried again when its settings or inputs changed, or when
  asked (``retry_failed``); otherwise the frame keeps its reason;
* recording a stage (done or failed) forgets the state of every stage
  downstream of it (:func:`trex.stages.downstream`), which are then pending:
  new masters redo a frame from calibration, a new photometric reference
  redoes its subtraction, new magnitudes or a new subtraction redo its
  light-curve rows.

A frame's rows and its state are written in one transaction, so a job killed
at any point leaves each frame either fully recorded or not at all.  Writes
are here; reads are the named queries of :class:`trex.db.queries.Queries`
(``ledger.read``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from trex import stages as registry
from trex.config import Config
from trex.db import Database
from trex.db.queries import Queries
from trex.frame import Context
from trex.header import FrameMeta, meta_from_row
from trex.lcstats import STAT_PREFIXES, combine, lcinfo_of
from trex.stages import Stage
from trex.times import utcnow

log = logging.getLogger(__name__)


now = utcnow

@dataclass(frozen=True)
class Task:
    """A frame and the stages still to run on it (what rank 0 hands out)."""

    framekey: int
    rawpath: str  # relative to the project root
    night: str
    meta: FrameMeta
    stages: tuple[str, ...]
    redpath: str | None = None  # relative to the project root, once calibrated


class Ledger:
    """The project's state in one database (see the module doc)."""

    def __init__(self, db: Database, config: Config):
        self.db, self.config = db, config
        self.read = Queries(db)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.db.transaction():
            yield

    # -- per-frame stages --------------------------------------------------------------
    def stamp(self, stage: Stage, meta: FrameMeta, night: str, context: Context) -> tuple[str, str]:
        """(settings hash, inputs) a stage's result on a frame depends on now (the stage as
        declared in :mod:`trex.stages`: its name is its identity)."""
        inputs = stage.inputs(meta, night, context) if stage.inputs else ""
        return self.config.section_sha(stage.settings), inputs

    def pending(self, chain: tuple[Stage, ...], context: Context,
                retry_failed: bool = False) -> list[Task]:
        """Object frames with work left in ``chain``, in time order.

        A frame is left out when it is not of ``context.nights`` (when given), when a
        stage before the chain is not done, or when a
        stage of the chain failed and nothing it depended on changed (unless
        ``retry_failed``).  Once a stage of the chain must run, the later ones
        run too.
        """
        names = tuple(s.name for s in chain)
        before = tuple(n for n in registry.NAMES[:registry.NAMES.index(names[0])]
                       if registry.BY_NAME[n].per_frame and n in _needed(chain))
        shas = {s.name: self.config.section_sha(registry.stage(s.name).settings) for s in chain}
        keys = set(self.read.frames_to_run(shas, before)) | self._new_inputs(chain, context)
        states = self.read.frame_states(before + names, sorted(keys))
        out = []
        for row in self.read.object_frames(sorted(keys)):
            state = states.get(int(row["framekey"]), {})
            if not context.of_nights(row["night"]) or any(state.get(n, ("",))[0] != "done" for n in before):
                continue
            meta = meta_from_row(row)
            todo = self._todo(chain, state, meta, row["night"], context, retry_failed)
            if todo:
                out.append(Task(int(row["framekey"]), row["rawpath"], row["night"], meta, todo,
                                row["redpath"]))
        return out

    def _new_inputs(self, chain: tuple[Stage, ...], context: Context) -> set[int]:
        """Frames on which a stage of ``chain`` that redoes on new inputs is done with
        inputs other than today's (checked once per group of frames sharing them)."""
        stages = tuple(s.name for s in chain if registry.stage(s.name).redo_on_new_inputs)
        found: set[int] = set()
        for group in self.read.input_groups(stages) if stages else ():
            stage, inputs, night, ccd, filt, field, projid = group
            meta = FrameMeta("object", 0.0, "", 0.0, field or "", projid or "", ccd or "",
                             filt or "", None, None, None, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, None, None)
            if self.stamp(registry.stage(stage), meta, night, context)[1] != inputs:
                found |= set(self.read.frames_of_input_group(group))
        return found

    def _todo(self, chain, state, meta, night, context, retry_failed) -> tuple[str, ...]:
        """The stages of ``chain`` to run on one frame: those not done, stale or to retry,
        and those that depend on them; none that depends on a failure kept as it is."""
        todo: list[str] = []
        blocked: set[str] = set()
        for stage in chain:
            if blocked & set(stage.needs):
                blocked.add(stage.name)
                continue
            status, sha, inputs = state.get(stage.name, (None, None, None))
            if status is None:
                todo.append(stage.name)
                continue
            now_sha, now_inputs = self.stamp(registry.stage(stage.name), meta, night, context)
            new_settings = sha is not None and sha != now_sha
            new_inputs = inputs is not None and inputs != now_inputs
            if status == "failed":
                if retry_failed or new_settings or new_inputs:
                    todo.append(stage.name)
                else:
                    blocked.add(stage.name)
            elif (new_settings or (new_inputs and stage.redo_on_new_inputs)
                  or set(stage.needs + stage.uses) & set(todo)):
                todo.append(stage.name)
        return tuple(todo)

    def record_frame(self, result, context: Context) -> None:
        """Write one frame's result (``trex.runner.FrameResult``), in the caller's transaction."""
        first_pass = {"calibrate", "extract", "astrometry", "photometry"}
        failed = [(n, r) for n, r in result.failed if n in first_pass]
        touched = list(result.done) + [name for name, _ in result.failed]
        if set(touched) & first_pass:  # later stages never mark the frame bad
            columns = self.db.columns("calibratedframes")
            row = {k: v for k, v in result.quality.items() if k in columns}
            row.update(framekey=result.framekey, projid=result.projid, redpath=result.redpath,
                       frameisok=not failed, configsha=self.config.sha,
                       reason=f"{failed[0][0]}: {failed[0][1]}" if failed else None)
            _upsert(self.db, "calibratedframes", row, ("framekey",))
        for table, columns in result.rows.items():
            self.db.write_columns(table, columns, replace=("framekey", [result.framekey]))
        later = {n for name in touched for n in registry.downstream(name)} - set(touched)
        if later:
            marks = ", ".join("?" * len(later))
            self.db.execute(f"DELETE FROM framestatus WHERE framekey = ? AND stage IN ({marks})",
                            (result.framekey, *sorted(later)))
        for name in result.done:
            self._set_status(result, name, "done", None, context)
        for name, reason in result.failed:
            self._set_status(result, name, "failed", reason, context)

    def _set_status(self, result, name: str, status: str, reason: str | None,
                    context: Context) -> None:
        sha, inputs = self.stamp(registry.stage(name), result.meta, result.night, context)
        _upsert(self.db, "framestatus", {"framekey": int(result.framekey), "stage": name,
                                         "status": status, "reason": reason, "configsha": sha,
                                         "inputs": inputs, "updated": now()},
                ("framekey", "stage"))

    def frame_metas(self, framekeys: list[int]) -> dict[int, FrameMeta]:
        """The parsed headers of some frames (from their ``frameinfo`` rows)."""
        return {int(r["framekey"]): meta_from_row(r) for r in self.read.object_frames(framekeys)}

    def forget_stages(self, framekeys: list[int], stages: tuple[str, ...]) -> None:
        """Make ``stages`` pending again on the given frames (and what follows them)."""
        names = set(stages) | {n for s in stages for n in registry.downstream(s)}
        marks = ", ".join("?" * len(names))
        self.db.executemany(f"DELETE FROM framestatus WHERE framekey = ? AND stage IN ({marks})",
                            [(int(k), *sorted(names)) for k in framekeys])

    def mark_merged(self, framekeys: list[int]) -> None:
        """The frames' rows are in the light curves."""
        sha = self.config.section_sha(registry.stage("lightcurves").settings)
        stamp = now()
        self.db.executemany(
            "INSERT INTO framestatus (framekey, stage, status, reason, configsha, inputs, updated) "
            "VALUES (?, 'lightcurves', 'done', NULL, ?, '', ?) ON CONFLICT (framekey, stage) DO "
            "UPDATE SET status = excluded.status, configsha = excluded.configsha, "
            "updated = excluded.updated", [(int(k), sha, stamp) for k in framekeys])

    # -- raw files -------------------------------------------------------------------------
    def reserve_raw(self, files: list[tuple[str, str]]) -> list[int]:
        """``frameinfo`` rows for new raw files ((night, rawpath), in order), not read yet
        (unusable until recorded, with an unknown size so that a killed run reads them
        again); returns their frame keys."""
        with self.db.transaction():
            self.db.executemany("INSERT INTO frameinfo (rawpath, night, isok, reason) "
                                "VALUES (?, ?, ?, 'not read yet')",
                                [(rel, night, False) for night, rel in files])
        keys = {}
        for night in sorted({night for night, _ in files}):  # by night: indexed, not the archive
            keys.update(self.db.query("SELECT rawpath, framekey FROM frameinfo WHERE night = ? "
                                      "AND filesize IS NULL", (night,)))
        return [int(keys[rel]) for _, rel in files]

    def record_raw(self, row: dict, framekey: int) -> None:
        """Write a raw file's ``frameinfo`` row; a file that changed on disk loses its
        state (it is processed again from calibration)."""
        names = list(row)
        values = [_plain(row[n]) for n in names]
        with self.db.transaction():
            self.db.execute(f"UPDATE frameinfo SET {', '.join(n + ' = ?' for n in names)} "
                            "WHERE framekey = ?", values + [framekey])
            if "filesize" in row:  # the file was read (again), not only parsed again
                self.db.execute("DELETE FROM calibratedframes WHERE framekey = ?", (framekey,))
                self.db.execute("DELETE FROM framestatus WHERE framekey = ?", (framekey,))

    def record_raw_nights(self, nights: dict[str, int]) -> None:
        """Nights whose files were all read, with their folder's mtime (ns) then."""
        for night, mtime in nights.items():
            _upsert(self.db, "rawnights", {"night": night, "mtime_ns": int(mtime),
                                           "updated": now()}, ("night",))

    def mark_bad(self, framekey: int, reason: str) -> None:
        """A frame recorded as usable turned out not to be (e.g. while stacking a master)."""
        self.db.execute("UPDATE frameinfo SET isok = ?, reason = ? WHERE framekey = ?",
                        (False, reason, framekey))

    # -- project phases ------------------------------------------------------------------------
    def record_phase(self, phase: str, item: str, reason: str | None = None) -> None:
        """A phase item done (``reason`` None) or failed with ``reason``."""
        _upsert(self.db, "phasestatus", {"phase": phase, "item": item,
                                         "status": "failed" if reason else "done",
                                         "reason": reason, "updated": now()}, ("phase", "item"))

    def record_master(self, key: tuple, path: str, digest: str, ninputs: int) -> None:
        with self.db.transaction():
            self.db.execute("DELETE FROM masterframes WHERE kind = ? AND night = ? AND ccd = ? "
                            "AND filter = ?", key)
            self.db.execute("INSERT INTO masterframes (kind, night, ccd, filter, path, inputs, "
                            "ninputs, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (*key, path, digest, ninputs, now()))

    def forget_master(self, key: tuple) -> None:
        self.db.execute("DELETE FROM masterframes WHERE kind = ? AND night = ? AND ccd = ? "
                        "AND filter = ?", key)

    def record_objects(self, columns: dict[str, np.ndarray]) -> None:
        """Replace the ``objectinfo`` rows of a catalog's stars."""
        self.db.write_columns("objectinfo", columns, replace=("objectid", columns["objectid"]))

    def record_astrometric_reference(self, group: tuple[str, str, str], framekey: int,
                                     path: str) -> None:
        projid, field, ccd = group
        with self.db.transaction():
            self.db.execute("UPDATE astromrefs SET isactive = ? WHERE projid = ? AND field = ? "
                            "AND ccd = ?", (False, projid, field, ccd))
            self.db.execute("INSERT INTO astromrefs (projid, field, ccd, framekey, path, isactive, "
                            "created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (projid, field, ccd, framekey, path, True, now()))

    def record_photometric_reference(self, group: tuple[str, str, str], path: str,
                                     framekeys: list[int], fwhm: float | None,
                                     medsky: float | None) -> int:
        """A new active photometric reference of ``group``; returns its key."""
        projid, field, ccd = group
        with self.db.transaction():
            self.db.execute("UPDATE photrefs SET isactive = ? WHERE projid = ? AND field = ? "
                            "AND ccd = ?", (False, projid, field, ccd))
            self.db.execute("INSERT INTO photrefs (projid, field, ccd, path, framekeys, nframes, "
                            "fwhm, medsky, isactive, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (projid, field, ccd, path, ",".join(str(k) for k in framekeys),
                             len(framekeys), fwhm, medsky, True, now()))
        return self.read.photometric_reference(projid, field, ccd)[0]

    # -- light curves ------------------------------------------------------------------------
    def record_lightcurves(self, info: dict[str, np.ndarray], stats: dict[str, np.ndarray],
                           added: bool = False) -> None:
        """Replace the ``lcinfo`` and ``lcstats`` rows of a batch of stars of one project
        (numpy columns; ``info``: projid, objectid, path, rjd_min, rjd_max; ``stats``:
        :func:`trex.lcstats.lcstats_rows` columns).  With ``added`` the rows describe nights
        appended to the light curves: they are combined with the recorded ones."""
        n = len(info.get("objectid", ()))
        if not n:
            return
        projid = str(info["projid"][0])
        ids = info["objectid"]
        if added:
            stats, info = self._with_recorded(projid, stats, info)
        info = lcinfo_of(stats, info)
        with self.db.transaction():
            self.db.delete_in("lcinfo", "objectid", ids, projid=projid)
            self.db.delete_in("lcstats", "objectid", ids, projid=projid)
            self.db.write_columns("lcinfo", {**info, "configsha": np.full(n, self.config.sha),
                                             "updated": np.full(n, now())})
            self.db.write_columns("lcstats", stats)

    def _with_recorded(self, projid: str, stats: dict, info: dict) -> tuple[dict, dict]:
        """``stats`` and ``info`` of appended nights combined with the recorded rows."""
        old_stats, old_info = self.read.lightcurve_state(projid, info["objectid"].tolist())
        key = {(o, int(a)): i for i, (o, a) in enumerate(zip(
            old_stats.get("objectid", np.zeros(0)).tolist(), old_stats.get("aperture", []).tolist()))}
        at = np.array([key.get((o, int(a)), -1) for o, a in
                       zip(stats["objectid"].tolist(), stats["aperture"].tolist())], dtype=np.int64)
        previous = {}
        for name in stats:
            if name[:3] in STAT_PREFIXES and name[3] == "_":
                recorded = np.asarray(old_stats[name], float)[np.maximum(at, 0)] if len(key) else \
                    np.zeros(len(at))
                previous[name] = np.where(at >= 0, recorded, 0.0 if name.endswith(("_n", "_nights"))
                                          else np.nan)
        stats = combine(previous, stats)
        for name in ("x", "y"):  # the position of the light curve's first night
            kept = np.asarray(old_stats[name], float)[np.maximum(at, 0)] if len(key) else stats[name]
            stats[name] = np.where(at >= 0, kept, stats[name])
        spans = {o: (lo, hi) for o, lo, hi in zip(old_info.get("objectid", np.zeros(0)).tolist(),
                                                   old_info.get("rjd_min", []).tolist(),
                                                   old_info.get("rjd_max", []).tolist())}
        lo = np.array([min(spans.get(o, (np.inf, 0))[0], v) for o, v in
                       zip(info["objectid"].tolist(), info["rjd_min"].tolist())])
        hi = np.array([max(spans.get(o, (0, -np.inf))[1], v) for o, v in
                       zip(info["objectid"].tolist(), info["rjd_max"].tolist())])
        return stats, {**info, "rjd_min": lo, "rjd_max": hi}


def _needed(chain: tuple[Stage, ...]) -> set[str]:
    """Stages before ``chain`` that its first stage needs, transitively."""
    out, todo = set(), list(chain[0].needs)
    while todo:
        name = todo.pop()
        if name not in out:
            out.add(name)
            todo.extend(registry.BY_NAME[name].needs)
    return out - {s.name for s in chain}


def _plain(value):
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def _upsert(db: Database, table: str, row: dict, key: tuple[str, ...]) -> None:
    """Insert ``row`` or update the existing row with the same ``key`` columns."""
    names = list(row)
    updates = ", ".join(f"{n} = excluded.{n}" for n in names if n not in key)
    db.execute(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
               f"ON CONFLICT ({', '.join(key)}) DO " + (f"UPDATE SET {updates}" if updates else "NOTHING"),
               [_plain(row[n]) for n in names])
