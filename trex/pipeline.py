"""``trex run``: the whole project, phase by phase, on one rank or many.

Read top to bottom, this is the pipeline:

1. inventory of RAW/ and the calibration masters (rank 0);
2. field catalogs into the shared context (rank 0 reads, every rank gets them);
3. per-frame pass: calibrate -> extract -> astrometry -> photometry (all ranks);
4. astrometric reference per (projid, field, ccd) (rank 0);
5. magnitude fitting against the master reference (all ranks);
6. image subtraction: photometric reference, then per frame register ->
   subtract -> difference photometry (all ranks);
7. light curves: transposition of the new frames (all ranks);
8. detrending (EPD, TFA) of the stars that changed (all ranks).

Every phase skips what is already done, so a re-run resumes.  Only rank 0
opens the database; the other ranks get what they need by broadcast.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np

from trex import (
    astrometry,
    calibrate,
    catalog,
    detrend,
    extract,
    inventory,
    lightcurves,
    magfit,
    masterframes,
    parallel,
    photometry,
    photref,
    records,
    runner,
    subtract,
)
from trex.config import Config
from trex.db import Database, connect
from trex.frame import Context, Frame
from trex.log import setup_logging
from trex.products import save_product
from trex.project import Project, safe_name

log = logging.getLogger(__name__)

def save_sources(frame: Frame, context: Context) -> dict:
    """The extracted sources go next to the calibrated frame (no database rows)."""
    save_product(frame.redpath, "sources", frame.sources)
    return {}


#: the per-frame stages of the first pass, in order: (run, save after run)
FIRST_PASS = {
    "calibrate": (calibrate.run, None),
    "extract": (extract.run, save_sources),
    "astrometry": (astrometry.run, None),
    "photometry": (photometry.run, photometry.save),
}


#: the per-frame stage of the second pass (after the photometric reference)
SECOND_PASS = {"subtract": (subtract.run, subtract.save)}

#: stages this version runs (``trex run`` skips the others with a warning)
AVAILABLE = (*FIRST_PASS, *SECOND_PASS, "lightcurves", "detrend")


def run_project(project: Project, config: Config, stages: tuple[str, ...],
                rebuild_references: bool = False) -> int:
    """Run ``stages`` over the project on every rank of the job; returns the exit status."""
    comm = parallel.world()
    setup_logging(logging.getLogger("trex").level or "INFO", rank=comm.rank)
    if comm.rank == 0:
        log.info("trex run on %d rank(s): %s", comm.size, ", ".join(stages))
    missing = [s for s in stages if s not in AVAILABLE]
    if missing and comm.rank == 0:
        log.warning("stage(s) %s not available in this version: skipped", ", ".join(missing))
    with parallel.abort_on_error(comm):
        db = connect(project.database_url(config)) if comm.rank == 0 else None
        try:
            if db is not None:
                db.create_schema()
            _run(comm, db, project, config, stages, rebuild_references)
        finally:
            if db is not None:
                db.close()
    return 0


def _run(comm, db: Database | None, project: Project, config: Config, stages: tuple[str, ...],
         rebuild: bool) -> None:
    context = None
    if comm.rank == 0:
        inventory.scan(project, config, db)
        masters = masterframes.load_masters(project, db)
        if "calibrate" in stages:
            before, masters = masters, masterframes.build_masters(project, config, db)
        context = Context(project, config, masters=masters, catalogs=load_catalogs(project, db))
        if "calibrate" in stages and masters != before:
            redo_stale_calibrations(context, db)
    context = comm.bcast(context)

    chain = tuple(s for s in FIRST_PASS if s in stages)
    if chain:
        requires = tuple(FIRST_PASS)[:tuple(FIRST_PASS).index(chain[0])]
        tasks = records.pending(db, chain, requires=requires) if comm.rank == 0 else []
        if comm.rank == 0:
            log.info("first pass (%s): %d frames pending", "+".join(chain), len(tasks))
        runner.run_frames(comm, db, context, tasks, FIRST_PASS, config, finish=finish_frame)
    if "astrometry" in stages and comm.rank == 0:
        choose_astrometric_references(project, db, rebuild)
    if "photometry" in stages:
        magfit.magfit_project(comm, db, context, rebuild)
    if "subtract" in stages:
        context = photref.build_references(comm, db, context, rebuild)
        subtract_frames(comm, db, context)
    changed = build_lightcurves(comm, db, context) if "lightcurves" in stages else None
    if "detrend" in stages:
        detrend_lightcurves(comm, db, context, changed)


def subtract_frames(comm, db: Database | None, context: Context) -> None:
    """Second pass: image subtraction of every frame with photometry and no
    subtraction yet; their light-curve rows are merged again afterwards."""
    tasks = photref.pending_frames(db) if comm.rank == 0 else []
    if comm.rank == 0:
        log.info("second pass (subtract): %d frames pending", len(tasks))
    runner.run_frames(comm, db, context, tasks, SECOND_PASS, context.config)
    if comm.rank == 0 and tasks:
        with db.transaction():
            for task in tasks:
                db.execute("DELETE FROM framestatus WHERE framekey = ? AND stage = 'lightcurves'",
                           (task.framekey,))


def finish_frame(frame: Frame, result) -> None:
    """After a frame's chain: write the calibrated frame if calibration or
    astrometry changed it (also when a later stage failed)."""
    if frame.image is not None and ({"calibrate", "astrometry"} & set(result.done)):
        calibrate.write_calibrated(frame)
        frame.quality.update({f"master{k}": v for k, v in
                              frame.products.get("calibrate", {}).items()})


def redo_stale_calibrations(context: Context, db: Database) -> None:
    """Frames calibrated with other masters than the current ones (e.g. a flat
    that arrived later) are processed again from the start."""
    stale = calibrate.stale_frames(context, db)
    if stale:
        log.info("%d calibrated frames have new masters: processed again", len(stale))
        with db.transaction():
            for frame in stale:
                db.execute("DELETE FROM framestatus WHERE framekey = ?", (frame.framekey,))


def load_catalogs(project: Project, db: Database) -> dict:
    """Catalogs of every field with object frames; ``objectinfo`` filled."""
    catalogs = {}
    fields = [r[0] for r in db.query(
        "SELECT DISTINCT field FROM frameinfo WHERE imagetyp = 'object' AND isok")]
    for field in fields:
        try:
            path = catalog.find_catalog(project, field)
        except FileNotFoundError:
            log.warning("no catalog for field %r in %s: its frames fail astrometry",
                        field, project.cat)
            continue
        table = catalog.read_catalog(path)
        catalogs[field] = table
        columns = catalog.objectinfo_columns(table, field)
        db.write_columns("objectinfo", columns, replace=("objectid", columns["objectid"]))
        log.info("catalog %s: %d stars", path.name, len(table))
    return catalogs


def choose_astrometric_references(project: Project, db: Database, rebuild: bool) -> None:
    """One active astrometric reference per (projid, field, ccd), copied to BASE."""
    groups = db.query("SELECT DISTINCT c.projid, f.field, f.ccd FROM calibratedframes c "
                      "JOIN frameinfo f ON f.framekey = c.framekey WHERE c.frameisok")
    for projid, field, ccd in groups:
        active = db.query("SELECT astromrefkey FROM astromrefs WHERE projid = ? AND field = ? "
                          "AND ccd = ? AND isactive", (projid, field, ccd))
        if active and not rebuild:
            continue
        quality = records.quality_of_done_frames(db, "astrometry", projid, field, ccd)
        if not len(quality.get("framekey", [])):
            continue
        best = astrometry.choose_reference(quality)
        source = project.root / quality["redpath"][list(quality["framekey"]).index(best)]
        target = project.reference_frames / (f"astromref-{safe_name(projid)}-{safe_name(field)}-"
                                             f"{safe_name(ccd or 'ccd')}.fits")
        shutil.copyfile(source, target)
        with db.transaction():
            db.execute("UPDATE astromrefs SET isactive = ? WHERE projid = ? AND field = ? "
                       "AND ccd = ?", (False, projid, field, ccd))
            db.execute("INSERT INTO astromrefs (projid, field, ccd, framekey, path, isactive, "
                       "created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (projid, field, ccd, best, str(target.relative_to(project.root)), True,
                        records.now()))
        log.info("astrometric reference for %s/%s/%s: frame %d", projid, field, ccd, best)


def build_lightcurves(comm, db: Database | None, context: Context) -> dict[str, list[str]]:
    """Merge frames with photometry not yet in the light curves; record lcinfo.

    Returns {projid: object ids whose light curve changed} (on every rank).
    """
    config = context.config
    entries = None
    if comm.rank == 0:
        rows = db.query(
            "SELECT c.framekey, c.redpath, f.night, c.projid, f.field, f.jd FROM calibratedframes c "
            "JOIN frameinfo f ON f.framekey = c.framekey "
            "JOIN framestatus p ON p.framekey = c.framekey AND p.stage = 'photometry' "
            "AND p.status = 'done' LEFT JOIN framestatus l ON l.framekey = c.framekey "
            "AND l.stage = 'lightcurves' WHERE l.status IS NULL ORDER BY f.jd")
        entries = [lightcurves.FrameEntry(int(k), r, n, p, f,
                                          float("nan") if jd is None else jd - 2400000.0)
                   for k, r, n, p, f, jd in rows]
    entries = comm.bcast(entries)
    if not entries:
        return {}
    changed: dict[str, list[str]] = {}

    def consume(columns: dict[str, np.ndarray]) -> None:  # rank 0, one partition of stars
        record_lcinfo(db, columns, config)
        for projid, objectid in zip(columns["projid"].tolist(), columns["objectid"].tolist()):
            changed.setdefault(projid, []).append(objectid)

    lightcurves.transpose(comm, context.project, config, entries, context.catalogs, consume)
    if comm.rank == 0:
        with db.transaction():
            for entry in entries:
                records.set_status(db, entry.framekey, "lightcurves", "done", None, config.sha)
    return comm.bcast(changed)


def record_lcinfo(db: Database, columns: dict[str, np.ndarray], config: Config) -> None:
    """Replace the ``lcinfo`` rows of a batch of stars (numpy columns), in one transaction."""
    n = len(columns.get("objectid", ()))
    if not n:
        return
    with db.transaction():
        for projid in np.unique(columns["projid"]).tolist():
            db.delete_in("lcinfo", "objectid", columns["objectid"][columns["projid"] == projid],
                         projid=projid)
        db.write_columns("lcinfo", {**columns, "configsha": np.full(n, config.sha),
                                    "updated": np.full(n, records.now())})


def detrend_lightcurves(comm, db: Database | None, context: Context,
                        changed: dict[str, list[str]] | None) -> None:
    """EPD and TFA of the light curves that changed in this run (all of them
    when ``trex detrend`` runs alone); lcinfo updated."""
    if changed is None:
        projids = [r[0] for r in db.query("SELECT DISTINCT projid FROM lcinfo")] \
            if comm.rank == 0 else None
        changed = {p: None for p in comm.bcast(projids)}
    for projid, objectids in changed.items():
        info = detrend.detrend_project(context.project, context.config, projid, objectids, comm)
        if comm.rank == 0:
            record_lcinfo(db, records.columns_of(info), context.config)

