"""What rank 0 writes to the database for processed frames, and what is pending.

Every frame's stage state lives in ``framestatus`` (done or failed, with the
reason); rows of a frame and its state are written in one transaction, so a
job killed at any point leaves each frame either fully recorded or not at
all, and the next run redoes exactly the frames that are not done.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from trex.db import Database


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def upsert(db: Database, table: str, row: dict, key: tuple[str, ...]) -> None:
    """Insert ``row`` or update the existing row with the same ``key`` columns."""
    names = list(row)
    updates = ", ".join(f"{n} = excluded.{n}" for n in names if n not in key)
    sql = (f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
           f"ON CONFLICT ({', '.join(key)}) DO " + (f"UPDATE SET {updates}" if updates else "NOTHING"))
    db.execute(sql, [_plain(row[n]) for n in names])


def columns_of(rows: list[dict]) -> dict[str, np.ndarray]:
    """Equally long numpy columns of dicts with the same keys: text, int64 (integers
    only) or float64 (None -> NaN)."""
    columns = {}
    for name in rows[0] if rows else ():
        values = [row[name] for row in rows]
        if all(isinstance(v, str) for v in values):
            columns[name] = np.array(values)
        elif all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            columns[name] = np.array(values, dtype=np.int64)
        else:
            columns[name] = np.array([np.nan if v is None else v for v in values],
                                     dtype=np.float64)
    return columns


def _plain(value):
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def set_status(db: Database, framekey: int, stage: str, status: str, reason: str | None,
               configsha: str) -> None:
    upsert(db, "framestatus", {"framekey": int(framekey), "stage": stage, "status": status,
                               "reason": reason, "configsha": configsha, "updated": now()},
           key=("framekey", "stage"))


def stage_status(db: Database, stages: tuple[str, ...]) -> dict[int, dict[str, str]]:
    """framekey -> {stage: status} for the given stages."""
    out: dict[int, dict[str, str]] = {}
    marks = ", ".join("?" * len(stages))
    for framekey, stage, status in db.query(
            f"SELECT framekey, stage, status FROM framestatus WHERE stage IN ({marks})", stages):
        out.setdefault(int(framekey), {})[stage] = status
    return out


@dataclass(frozen=True)
class Task:
    """A frame and the stages still to run on it (what rank 0 hands out)."""

    framekey: int
    rawpath: str  # relative to the project root
    night: str
    stages: tuple[str, ...]
    redpath: str | None = None  # relative to the project root, once calibrated


def pending(db: Database, chain: tuple[str, ...], nights: list[str] | None = None,
            requires: tuple[str, ...] = ()) -> list[Task]:
    """Object frames with work left in ``chain``, in time order.

    A frame is skipped when a stage of the chain failed on it (it is bad,
    with its reason recorded), when every stage is done, or when a stage of
    ``requires`` (those before the chain) is not done yet; once a stage must
    run, every later stage of the chain runs too.
    """
    rows = db.query("SELECT f.framekey, f.rawpath, f.night, c.redpath FROM frameinfo f "
                    "LEFT JOIN calibratedframes c ON c.framekey = f.framekey "
                    "WHERE f.imagetyp = 'object' AND f.isok ORDER BY f.jd, f.framekey")
    states = stage_status(db, requires + chain)
    out = []
    for framekey, rawpath, night, redpath in rows:
        if nights is not None and night not in nights:
            continue
        state = states.get(int(framekey), {})
        if any(state.get(s) == "failed" for s in chain):
            continue
        if any(state.get(s) != "done" for s in requires):
            continue
        todo = [s for s in chain if state.get(s) != "done"]
        if todo:
            out.append(Task(int(framekey), rawpath, night, chain[chain.index(todo[0]):], redpath))
    return out


def quality_of_done_frames(db: Database, stage: str, projid: str, field: str,
                           ccd: str | None = None) -> dict[str, np.ndarray]:
    """Quality columns (``calibratedframes``) of the frames of a group whose ``stage``
    is done: framekey, meds, medd, medsky, nsources, frameisok, redpath, fwhm
    (what reference frames are ranked by)."""
    sql = ("SELECT c.framekey, c.meds, c.medd, c.medsky, c.nsources, c.frameisok, c.redpath, "
           "c.fwhm FROM calibratedframes c JOIN frameinfo f ON f.framekey = c.framekey "
           "JOIN framestatus s ON s.framekey = c.framekey AND s.stage = ? AND s.status = 'done' "
           "WHERE c.projid = ? AND f.field = ?")
    params = [stage, projid, field]
    if ccd is not None:
        sql += " AND f.ccd = ?"
        params.append(ccd)
    return db.query_columns(sql, params)


def record_frame(db: Database, result, config) -> None:
    """Write one frame's result (``trex.runner.FrameResult``), in the caller's transaction."""
    first_pass = {"calibrate", "extract", "astrometry", "photometry"}
    stages = set(result.done) | ({result.failed[0]} if result.failed else set())
    if stages & first_pass:  # the second pass (subtract) never marks the frame bad
        columns = db.columns("calibratedframes")  # quality numbers with a column of their own
        row = {k: v for k, v in result.quality.items() if k in columns}
        row.update(framekey=result.framekey, projid=result.projid, redpath=result.redpath,
                   frameisok=result.failed is None, configsha=config.sha,
                   reason=f"{result.failed[0]}: {result.failed[1]}" if result.failed else None)
        upsert(db, "calibratedframes", row, key=("framekey",))
    for table, columns in result.rows.items():
        db.write_columns(table, columns, replace=("framekey", [result.framekey]))
    for stage in result.done:
        set_status(db, result.framekey, stage, "done", None, config.sha)
    if result.failed:
        set_status(db, result.framekey, result.failed[0], "failed", result.failed[1], config.sha)
