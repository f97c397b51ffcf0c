"""Magnitude fitting: put every frame on the magnitude scale of a reference.

The fits are pure array code (numpy, no I/O).  The recipe, as in HATpipe:

1. Single-reference pass: for each frame, :func:`fit_frame` fits the
   difference ``mag - ref_mag`` (frame minus a chosen reference frame) as a
   2-D polynomial in (x, y) plus linear terms in catalog magnitude and colour,
   weighted by the errors, with iterative clipping, on good-flag stars only;
   the frame's fitted magnitudes are ``mag - correction``.
2. :func:`master_reference` streams over the single-fitted frames and gives
   each star's clipped mean magnitude; memory is O(nstars) whatever the
   number of frames (one pass over the frames per clipping iteration).
3. Master-reference pass: :func:`fit_frame` again, against the master; the
   results are the ``arm_NNN`` magnitudes.

Coordinates are scaled to [-1, 1] over ``extent`` (default: the range of the
stars used) so that the polynomial coefficients are well conditioned.

The project phase (:func:`magfit_project`, after photometry of the frames)
runs it per (projid, field):

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
from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np

from trex import parallel, photometry, records
from trex.astrometry import choose_reference
from trex.config import Config
from trex.db import Database
from trex.frame import Context
from trex.products import load_product, save_product
from trex.project import safe_name

log = logging.getLogger(__name__)

#: magnitude errors below this are raised to it for the weights: a systematic floor
#: (flat field, PSF) so that a few bright stars cannot dominate the fit
MIN_ERROR = 5e-3


class MagfitError(ValueError):
    """Too few usable stars to fit a frame."""


class FrameFit(NamedTuple):
    correction: np.ndarray   # (nstars,) mag to subtract; NaN where the model has no input
    params: dict             # coefficients, term names and the coordinate scaling
    rms: float               # weighted rms of the fit residuals of the stars kept, mag
    nused: int               # stars kept after clipping


def polynomial_terms(order: int) -> list[tuple[int, int]]:
    """Exponents (i, j) of x^i y^j with i + j <= order, constant first."""
    return [(i, d - i) for d in range(order + 1) for i in range(d, -1, -1)]


def design_matrix(x: np.ndarray, y: np.ndarray, catmag: np.ndarray | None,
                  color: np.ndarray | None, params: dict) -> np.ndarray:
    """Columns of the model for stars at (x, y) (px) with catalog magnitude and colour."""
    u = (np.asarray(x, float) - params["x0"]) / params["xs"]
    v = (np.asarray(y, float) - params["y0"]) / params["ys"]
    columns = [u**i * v**j for i, j in polynomial_terms(params["order"])]
    if catmag is not None:
        columns.append(np.asarray(catmag, float) - params["mag0"])
    if color is not None:
        columns.append(np.asarray(color, float) - params["color0"])
    return np.column_stack(columns)


def _scaling(x, y, catmag, color, order, extent) -> dict:
    if extent is None:
        extent = (x.min(), x.max(), y.min(), y.max())
    x_lo, x_hi, y_lo, y_hi = (float(e) for e in extent)
    return {
        "order": order,
        "x0": 0.5 * (x_lo + x_hi), "xs": max(0.5 * (x_hi - x_lo), 1.0),
        "y0": 0.5 * (y_lo + y_hi), "ys": max(0.5 * (y_hi - y_lo), 1.0),
        "mag0": float(np.median(catmag)) if catmag is not None else 0.0,
        "color0": float(np.median(color)) if color is not None else 0.0,
    }


def fit_frame(mag: np.ndarray, magerr: np.ndarray, flag_ok: np.ndarray, ref_mag: np.ndarray,
              x: np.ndarray, y: np.ndarray, catmag: np.ndarray | None = None,
              color: np.ndarray | None = None, order: int = 2, clip_sigma: float = 3.0,
              clip_iters: int = 3, extent: tuple | None = None) -> FrameFit:
    """Fit ``mag - ref_mag`` over one frame (all arrays (nstars,), same star order).

    Parameters
    ----------
    mag, magerr : the frame's magnitudes and errors (one aperture), mag.
    flag_ok : bool, stars allowed in the fit (good flags, magnitude range, ...).
    ref_mag : reference magnitudes of the same stars, mag.
    x, y : positions on the frame, px.
    catmag, color : catalog magnitude and colour (None: no such term).
    order : total degree of the polynomial in (x, y).
    clip_sigma, clip_iters : stars whose residual exceeds clip_sigma times the
        robust scatter (1.4826 MAD) of residual/error are dropped, and the fit
        repeated, up to clip_iters times.
    extent : (xmin, xmax, ymin, ymax) px for the coordinate scaling
        (default: the stars used).

    Returns
    -------
    FrameFit: ``correction`` to subtract from ``mag``, ``params``, ``rms``, ``nused``.
    Raises :class:`MagfitError` with fewer than twice as many usable stars as terms.
    """
    mag, magerr, ref_mag = (np.asarray(a, float) for a in (mag, magerr, ref_mag))
    x, y = np.asarray(x, float), np.asarray(y, float)
    inputs = [a for a in (mag, magerr, ref_mag, x, y, catmag, color) if a is not None]
    use = np.asarray(flag_ok, bool) & np.logical_and.reduce([np.isfinite(a) for a in inputs])
    use &= magerr > 0
    nterms = len(polynomial_terms(order)) + (catmag is not None) + (color is not None)
    if use.sum() < 2 * nterms:
        raise MagfitError(f"{use.sum()} usable stars for {nterms} magfit terms")
    params = _scaling(x[use], y[use], None if catmag is None else np.asarray(catmag)[use],
                      None if color is None else np.asarray(color)[use], order, extent)
    design = design_matrix(x, y, catmag, color, params)
    diff = mag - ref_mag
    weight = 1.0 / np.maximum(magerr, MIN_ERROR)
    for iteration in range(clip_iters + 1):
        coef = np.linalg.lstsq(design[use] * weight[use, None], diff[use] * weight[use],
                               rcond=None)[0]
        if iteration == clip_iters:
            break
        chi = (diff - design @ coef) * weight
        scale = 1.4826 * np.median(np.abs(chi[use] - np.median(chi[use])))
        keep = use & (np.abs(chi) <= clip_sigma * scale)
        if scale == 0 or keep.sum() == use.sum() or keep.sum() < 2 * nterms:
            break
        use = keep
    residual = (diff - design @ coef)[use]
    w2 = weight[use] ** 2
    params["coef"] = coef
    params["terms"] = [f"x^{i} y^{j}" for i, j in polynomial_terms(order)] + (
        ["catmag"] if catmag is not None else []) + (["color"] if color is not None else [])
    return FrameFit(design @ coef, params, float(np.sqrt(np.sum(w2 * residual**2) / w2.sum())),
                    int(use.sum()))


def master_reference(frames: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
                     nstars: int, clip_sigma: float = 3.0, clip_iters: int = 3,
                     min_frames: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each star's clipped mean magnitude over single-reference-fitted frames, streamed.

    Parameters
    ----------
    frames : called once per pass, returns an iterable of ``(mag, ok)`` per
        frame: fitted magnitudes (nstars,) and a bool (nstars,) of values to use.
        Only sums over stars are kept, so memory is O(nstars), not O(nframes x nstars).
    nstars : length of every ``mag``.
    clip_sigma, clip_iters : values further than clip_sigma standard deviations
        from the star's mean of the previous pass are left out in the next one.
    min_frames : stars with fewer values kept get NaN.

    Returns
    -------
    (mag, err, n) : clipped mean, its error (std / sqrt(n)) and the number of
    values kept, each (nstars,).
    """
    centre = np.zeros(nstars)
    limit = np.full(nstars, np.inf)
    previous = None
    for _ in range(clip_iters + 1):
        n = np.zeros(nstars)
        s1 = np.zeros(nstars)
        s2 = np.zeros(nstars)
        for mag, ok in frames():
            mag = np.asarray(mag, float)
            with np.errstate(invalid="ignore"):
                d = mag - centre
                keep = np.asarray(ok, bool) & np.isfinite(mag) & (np.abs(d) <= limit)
            d = np.where(keep, d, 0.0)
            n += keep
            s1 += d
            s2 += d * d
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = centre + s1 / n
            std = np.sqrt(np.maximum(s2 - s1**2 / n, 0.0) / (n - 1))
        if previous is not None and np.array_equal(n, previous):
            break  # nothing more clipped: the same values again
        previous = n
        centre = np.where(np.isfinite(mean), mean, 0.0)
        limit = np.where(np.isfinite(std), clip_sigma * std, np.inf)
    good = n >= min_frames
    return (np.where(good, mean, np.nan), np.where(good, std / np.sqrt(n), np.nan),
            n.astype(np.int64))


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
    quality = records.quality_of_done_frames(db, "photometry", projid, field)
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
    ref_mag = _expand(ref, np.column_stack([np.where(ref[f"aiq_{a:03d}"] == 0, ref[f"aim_{a:03d}"],
                                                     np.nan) for a in range(napertures)]),
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
                if rebuild:  # every frame is fitted again, and its light-curve rows replaced
                    db.execute("DELETE FROM framestatus WHERE stage IN ('magfit', 'lightcurves') "
                               "AND framekey IN (SELECT c.framekey FROM calibratedframes c "
                               "JOIN frameinfo f ON f.framekey = c.framekey "
                               "WHERE c.projid = ? AND f.field = ?)", (projid, field))
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
