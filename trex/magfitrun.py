"""The magnitude-fitting phase of a project (after photometry of its frames).

Per (projid, field), in three steps (``trex.magfit`` holds the fits):

1. single-reference pass (all ranks): every frame is fitted to the best frame
   (the astrometric reference ranking) and its fitted magnitudes cached in
   ``REDTEMP/magfit/``;
2. master reference (rank 0): each star's clipped mean over the cached
   frames, streamed; saved as ``BASE/reference-frames/magfit-<projid>-<field>.npy``;
3. master pass (all ranks): every frame not yet fitted is fitted to the
   master; the result is the ``arm_NNN`` column of its ``aphot`` product and
   of its ``ap_photometry`` rows.

The master is built once and then kept (new nights are fitted to it) unless
the references are rebuilt.  Steps 1 and 3 are deterministic per frame and
step 2 runs on one rank, so the result does not depend on the number of ranks.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np

from trex import parallel, photometry, records
from trex.astrometry import choose_reference
from trex.config import Config
from trex.db import Database
from trex.frame import Context
from trex.magfit import MagfitError, fit_frame, master_reference
from trex.products import load_product, save_product
from trex.project import safe_name

log = logging.getLogger(__name__)


def _usable(table: np.ndarray, catalog, aperture: int, config: Config) -> np.ndarray:
    catmag = np.asarray(catalog["mag"], float)[table["star"]]
    return ((table[f"aiq_{aperture:03d}"] == 0) & (catmag >= config.magfit.bright_mag)
            & (catmag <= config.magfit.faint_mag))


def fit_to(table: np.ndarray, ref_mag: np.ndarray, catalog, config: Config) -> np.ndarray:
    """Fitted magnitudes (nstars, napertures) of one frame against ``ref_mag``
    (ncatalog, napertures); NaN where the fit failed."""
    napertures = ref_mag.shape[1]
    out = np.full((len(table), napertures), np.nan)
    catmag = np.asarray(catalog["mag"], float)[table["star"]]
    color = np.asarray(catalog["color"], float)[table["star"]]
    color = color if np.isfinite(color).sum() > 0.5 * len(color) else None
    for a in range(napertures):
        mag = table[f"aim_{a:03d}"].astype(float)
        try:
            fit = fit_frame(mag, table[f"aie_{a:03d}"], _usable(table, catalog, a, config),
                            ref_mag[table["star"], a], table["xcc"], table["ycc"], catmag,
                            color, order=config.magfit.order,
                            clip_sigma=config.magfit.clip_sigma, clip_iters=config.magfit.clip_iters)
        except MagfitError as err:
            log.debug("magfit: aperture %d: %s", a, err)
            continue
        out[:, a] = mag - fit.correction
    return out


def _expand(table: np.ndarray, values: np.ndarray, ncatalog: int) -> np.ndarray:
    full = np.full((ncatalog, values.shape[1]), np.nan)
    full[table["star"]] = values
    return full


def _groups(db: Database) -> list[tuple]:
    return db.query("SELECT DISTINCT c.projid, f.field FROM calibratedframes c "
                    "JOIN frameinfo f ON f.framekey = c.framekey JOIN framestatus s "
                    "ON s.framekey = c.framekey AND s.stage = 'photometry' AND s.status = 'done'")


def _frames(db: Database, projid: str, field: str, only_pending: bool) -> list[tuple]:
    sql = ("SELECT c.framekey, c.redpath FROM calibratedframes c "
           "JOIN frameinfo f ON f.framekey = c.framekey JOIN framestatus s "
           "ON s.framekey = c.framekey AND s.stage = 'photometry' AND s.status = 'done' "
           "LEFT JOIN framestatus m ON m.framekey = c.framekey AND m.stage = 'magfit' "
           "WHERE c.projid = ? AND f.field = ?")
    if only_pending:
        sql += " AND m.status IS NULL"
    return [(int(k), r) for k, r in db.query(sql + " ORDER BY f.jd, c.framekey", (projid, field))]


def _reference_frame(db: Database, projid: str, field: str) -> tuple[int, str]:
    quality = db.query_columns(
        "SELECT c.framekey, c.meds, c.medd, c.medsky, c.nsources, c.frameisok, c.redpath "
        "FROM calibratedframes c JOIN frameinfo f ON f.framekey = c.framekey JOIN framestatus s "
        "ON s.framekey = c.framekey AND s.stage = 'photometry' AND s.status = 'done' "
        "WHERE c.projid = ? AND f.field = ?", (projid, field))
    best = choose_reference(quality)
    return best, quality["redpath"][list(quality["framekey"]).index(best)]


def build_master(comm, db, context: Context, projid: str, field: str) -> np.ndarray:
    """Steps 1 and 2: the master reference magnitudes (ncatalog, napertures)."""
    project, config = context.project, context.config
    catalog = context.catalogs[field]
    scratch = project.redtemp / "magfit" / safe_name(projid) / safe_name(field)
    plan = None
    if comm.rank == 0:
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        plan = (_reference_frame(db, projid, field), _frames(db, projid, field, False))
    (ref_key, ref_path), frames = comm.bcast(plan)
    ref = load_product(project.root / ref_path, "aphot")
    napertures = len(config.photometry.apertures)
    ref_mag = _expand(ref, np.column_stack([ref[f"aim_{a:03d}"] for a in range(napertures)]),
                      len(catalog))
    for i in parallel.split(len(frames), comm.size, comm.rank):
        framekey, redpath = frames[i]
        table = load_product(project.root / redpath, "aphot")
        np.save(scratch / f"{framekey}.npy", _expand(table, fit_to(table, ref_mag, catalog, config),
                                                     len(catalog)))
    comm.barrier()
    master = None
    if comm.rank == 0:
        master = np.full((len(catalog), napertures), np.nan)
        for a in range(napertures):
            def passes(a=a):
                return ((m[:, a], np.isfinite(m[:, a])) for m in
                        (np.load(scratch / f"{k}.npy", mmap_mode="r") for k, _ in frames))
            master[:, a] = master_reference(passes, len(catalog), config.magfit.clip_sigma,
                                            config.magfit.clip_iters)[0]
        shutil.rmtree(scratch, ignore_errors=True)
        log.info("magfit %s/%s: master reference from %d frames (reference frame %d), "
                 "%d stars", projid, field, len(frames), ref_key,
                 int(np.isfinite(master[:, 0]).sum()))
    return comm.bcast(master)


def magfit_project(comm, db: Database | None, context: Context, rebuild: bool) -> None:
    """Fit every frame with photometry and no magfit yet (see module doc)."""
    project, config = context.project, context.config
    groups = comm.bcast(_groups(db) if comm.rank == 0 else None)
    for projid, field in groups:
        if field not in context.catalogs:
            continue
        path = project.reference_frames / f"magfit-{safe_name(projid)}-{safe_name(field)}.npy"
        exists = comm.bcast(path.exists())
        if rebuild or not exists:
            master = build_master(comm, db, context, projid, field)
            if comm.rank == 0:
                np.save(path, master)
                if rebuild:  # every frame is fitted again to the new master
                    db.execute("DELETE FROM framestatus WHERE stage = 'magfit'")
        else:
            master = np.load(path)
        tasks = _frames(db, projid, field, True) if comm.rank == 0 else []

        def work(batch, master=master, field=field):
            return [_apply(context, framekey, redpath, master, field) for framekey, redpath in batch]

        def consume(results):
            with db.transaction():
                for framekey, rows in results:
                    db.write_columns("ap_photometry", rows, replace=("framekey", [framekey]))
                    records.set_status(db, framekey, "magfit", "done", None, config.sha)

        parallel.farm(comm, tasks, work, consume, batch_size=config.run.batch_frames)


def _apply(context: Context, framekey: int, redpath: str, master: np.ndarray,
           field: str) -> tuple[int, dict]:
    """Step 3 for one frame: arm_NNN into its product; returns its ap_photometry rows."""
    catalog = context.catalogs[field]
    path = context.project.root / redpath
    table = load_product(path, "aphot")
    arm = fit_to(table, master, catalog, context.config)
    for a in range(arm.shape[1]):
        table[f"arm_{a:03d}"] = arm[:, a]
    save_product(path, "aphot", table)
    objectids = np.asarray(catalog["objectid"])[table["star"]]
    return framekey, photometry.ap_photometry_rows(framekey, photometry.photkey(context.config), table,
                                               objectids)

