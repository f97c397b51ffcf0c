"""The photometric reference of image subtraction, per (projid, field, ccd).

Recipe (:func:`build_references`, after magnitude fitting):

1. Candidates: frames with photometry done and ``frameisok``, ranked as the
   astrometric reference is (:func:`trex.astrometry.choose_reference`: high
   S, low |D|, low sky, many detections; sum of ranks); the
   ``subtract.nref`` best are taken (all of them on a shorter night).
2. Each is registered onto the astrometric reference grid (the active
   ``astromrefs`` frame) with :func:`trex.register.transform_from_wcs` and
   :func:`trex.register.resample` (``subtract.resample``), then matched to
   the broadest-PSF candidate (lowest S) with the kernel fit of
   :func:`trex.subtract.subtract`: the matched frame is ``R_i conv K + B``,
   i.e. it takes the PSF, the sky and the transparency of that target frame.
   Ranks share the candidates; each writes its matched frames to REDTEMP.
3. Rank 0 combines them with a clipped median in row blocks
   (``trex._stats.clipped_combine``), writes
   ``BASE/reference-frames/photref-<projid>-<field>-<ccd>.fits`` (image, MASK
   HDU with BADPIX grown by the kernel half-size where no frame had data, the
   astrometric reference's WCS, EXPTIME/GAIN/RDNOISE/SATURATE/JD of the target,
   NFRAMES, NEFF, MEDSKY, NOISEFAC = measured pixel variance over one raw
   frame's, for the expected noise of D) and an active ``photrefs`` row; the
   group's frames lose their ``subtract`` status, to be redone against it.
4. Reference photometry: the catalog stars through the reference WCS, in the
   configured apertures with the local sky (:mod:`trex.photometry`), gain
   ``gain * NEFF`` with ``NEFF = 2 n / pi`` (the median of n frames).  Saved
   as ``photref-...-phot.npy`` (``star``, ``x``, ``y``, ``flux_NNN``,
   ``fluxerr_NNN``, ``flag_NNN``).  With ``subtract.replace_crowded`` (a
   config switch, off when the section does not define it) stars with a brighter catalog neighbour within
   ``2 max(radius)`` get F_ref predicted from a fit of log F vs catalog
   magnitude over the uncrowded stars (CDIPS).

A reference is built once and kept for later nights unless ``rebuild``.
Every rank gets the paths in ``context.photref[(projid, field, ccd)]`` and
loads the image once (:func:`load_reference`, cached).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from astropy.wcs import WCS
from scipy.ndimage import maximum_filter, median_filter
from scipy.spatial import cKDTree

from trex import _stats, parallel, photometry, records
from trex.astrometry import rank_frames
from trex.config import Config
from trex.db import Database
from trex.fits import read_header, read_image, write_image
from trex.flags import MASK
from trex.frame import Context
from trex.header import parse_header
from trex.kernelspec import parse_kernel
from trex.project import Project, safe_name
from trex.register import Transform, resample, transform_from_wcs

log = logging.getLogger(__name__)

#: rows per block when combining (bounds memory to n x BLOCK_ROWS x nx floats)
BLOCK_ROWS = 128


@dataclasses.dataclass(frozen=True)
class Reference:
    """What the per-frame stage needs of a photometric reference (paths, not arrays)."""

    photrefkey: int
    path: str       # absolute path of the FITS image
    phot: str       # absolute path of the reference photometry (.npy)
    framekeys: tuple[int, ...] = ()  # the frames in the stack


def register(image: np.ndarray, mask: np.ndarray | None, frame_wcs, ref_wcs,
             shape: tuple[int, int], config: Config,
             saturation: float | None = None) -> tuple[np.ndarray, np.ndarray, Transform]:
    """A frame and its mask on the reference grid: (float32 image, uint8 MASK bits, the
    reference-to-frame pixel map).

    Reference pixels within 1 px of a masked frame pixel's mapped position (the
    interpolation footprint) and off the frame get BADPIX; resampled values at
    or above ``0.95 saturation`` get SATURATED.
    """
    order = config.subtract.transform_order
    transform = transform_from_wcs(ref_wcs, frame_wcs, shape, order=order)
    out = resample(image, transform, shape, method=config.subtract.resample)
    bad = np.zeros(shape, dtype=np.uint8)
    bad[~np.isfinite(out)] |= MASK["BADPIX"].bit
    if mask is not None and np.any(mask):
        fy, fx = np.nonzero(mask)
        x, y = transform_from_wcs(frame_wcs, ref_wcs, np.shape(mask), order=order)(fx, fy)
        ix, iy = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                inside = ((ix + dx >= 0) & (ix + dx < shape[1]) & (iy + dy >= 0)
                          & (iy + dy < shape[0]))
                bad[iy[inside] + dy, ix[inside] + dx] |= MASK["BADPIX"].bit
    if saturation is not None:
        with np.errstate(invalid="ignore"):
            bad[out >= 0.95 * saturation] |= MASK["SATURATED"].bit
    return out, bad, transform


@functools.lru_cache(maxsize=4)
def load_reference(path: str, phot: str) -> tuple[np.ndarray, np.ndarray, object, WCS, np.ndarray]:
    """(image float32, mask uint8, header, WCS, photometry) of a reference; cached per rank."""
    image, header = read_image(path)
    mask, _ = read_image(path, hdu="MASK")
    return (image, mask.astype(np.uint8), header, WCS(header, fix=False),
            np.load(phot, allow_pickle=False))


def reference_path(project: Project, projid: str, field: str, ccd: str) -> Path:
    stem = f"photref-{safe_name(projid)}-{safe_name(field)}-{safe_name(ccd or 'ccd')}"
    return project.reference_frames / f"{stem}.fits"


def phot_path(path: Path | str) -> Path:
    path = Path(path)
    return path.with_name(path.stem + "-phot.npy")


def _groups(db: Database) -> list[tuple]:
    return db.query("SELECT DISTINCT c.projid, f.field, f.ccd FROM calibratedframes c "
                    "JOIN frameinfo f ON f.framekey = c.framekey JOIN framestatus s "
                    "ON s.framekey = c.framekey AND s.stage = 'photometry' AND s.status = 'done' "
                    "WHERE c.frameisok")


def _plan(db: Database, context: Context, projid: str, field: str, ccd: str) -> dict | None:
    """What every rank needs to build one reference (rank 0 asks the database)."""
    astrom = db.query("SELECT path FROM astromrefs WHERE projid = ? AND field = ? AND ccd = ? "
                      "AND isactive", (projid, field, ccd))
    quality = records.quality_of_done_frames(db, "photometry", projid, field, ccd)
    if not astrom or not len(quality.get("framekey", [])):
        log.warning("photref %s/%s/%s: no astrometric reference or no good frame", projid,
                    field, ccd)
        return None
    chosen = rank_frames(quality)[:context.config.subtract.nref]
    index = [list(quality["framekey"]).index(k) for k in chosen]
    meds = np.asarray(quality["meds"], float)[index]
    target = int(np.argmin(meds))
    fwhm = np.asarray(quality["fwhm"], float)[index][target]
    return {"astromref": str(context.project.root / astrom[0][0]),
            "framekeys": [int(k) for k in chosen],
            "paths": [str(context.project.root / quality["redpath"][i]) for i in index],
            "target": target, "fwhm": float(fwhm) if np.isfinite(fwhm) else None}


def _load(path: str, config: Config) -> tuple:
    image, header = read_image(path)
    mask, _ = read_image(path, hdu="MASK")
    return image, mask, header, parse_header(header, config, path)


def _match_one(plan: dict, i: int, target, ref_wcs, shape, config: Config, scratch: Path) -> None:
    """Register candidate i, match it to the target, save it (and its mask) in scratch."""
    from trex.subtract import subtract  # trex.subtract imports this module for its stage

    image, mask, header, meta = _load(plan["paths"][i], config)
    reg, bad, _ = register(image, mask, WCS(header, fix=False), ref_wcs, shape, config, meta.saturate)
    if i != plan["target"]:
        t_img, t_bad, t_meta = target
        sub = config.subtract
        reg0 = np.where(bad != 0, 0.0, reg).astype(np.float32)
        _, sol = subtract(t_img, reg0, kernel=sub.kernel, mask=(bad != 0) | (t_bad != 0),
                          gain=t_meta.gain, rdnoise=t_meta.rdnoise, saturation=0.95 * meta.saturate,
                          ngrid=sub.stamp_grid, halfsize=sub.stamp_halfsize,
                          threshold=sub.stamp_threshold, reject=sub.stamp_reject)
        reg = sol.model(reg0)
        # the convolution spreads the zeroed bad pixels over the kernel footprint
        bad[maximum_filter(bad, size=2 * sol.spec.halfsize + 1) != 0] |= MASK["BADPIX"].bit
        log.info("photref: frame %d matched to frame %d (flux scale %.3f, %d stamps)",
                 plan["framekeys"][i], plan["framekeys"][plan["target"]],
                 float(sol.flux_scale(shape[1] / 2, shape[0] / 2)), len(sol.stamps))
    reg[bad != 0] = np.nan
    np.save(scratch / f"{i}.npy", reg.astype(np.float32))
    np.save(scratch / f"{i}-mask.npy", bad)


def combine(files: list[Path], masks: list[Path], shape: tuple[int, int],
            config: Config) -> tuple[np.ndarray, np.ndarray]:
    """Clipped median of the matched frames in row blocks: (image, MASK bits)."""
    ny, nx = shape
    out = np.empty(shape, dtype=np.float32)
    nused = np.empty(shape, dtype=np.int16)
    stacks = [np.load(f, mmap_mode="r") for f in files]
    saturated = np.zeros(shape, dtype=bool)
    for m in masks:
        saturated |= (np.load(m) & MASK["SATURATED"].bit) != 0
    for r0 in range(0, ny, BLOCK_ROWS):
        r1 = min(ny, r0 + BLOCK_ROWS)
        block = np.ascontiguousarray(np.stack([s[r0:r1] for s in stacks]), dtype=np.float32)
        _stats.clipped_combine(block, out[r0:r1], nused[r0:r1], config.calibrate.clip_sigma,
                               config.calibrate.clip_iters, True)
    mask = np.zeros(shape, dtype=np.uint8)
    # no data: zero in the image, so grown by the kernel half-size (the stage convolves it)
    empty = (nused == 0) | ~np.isfinite(out)
    grow = 2 * parse_kernel(config.subtract.kernel).halfsize + 1
    mask[maximum_filter(empty, size=grow)] |= MASK["BADPIX"].bit
    mask[saturated] |= MASK["SATURATED"].bit
    return np.where(np.isfinite(out), out, 0.0).astype(np.float32), mask


def _write(path: Path, image: np.ndarray, mask: np.ndarray, ref_header, meta, plan: dict) -> None:
    header = WCS(ref_header).to_header(relax=True)
    n = len(plan["paths"])
    header["NOISEFAC"] = (pixel_noise_factor(image, mask, meta.gain, meta.rdnoise),
                          "pixel variance / one frame's sky variance")
    header["MEDSKY"] = (float(np.median(image[mask == 0])), "median of the good pixels, ADU")
    for key, value in (("EXPTIME", meta.exptime), ("GAIN", meta.gain), ("RDNOISE", meta.rdnoise),
                       ("SATURATE", meta.saturate), ("NFRAMES", n), ("NEFF", 2.0 * n / np.pi),
                       ("JD", meta.jd), ("FIELD", meta.field), ("PROJID", meta.projid),
                       ("CCD", meta.ccd)):
        header[key] = value
    header["PRFRAMES"] = ",".join(str(k) for k in plan["framekeys"])[:68]
    write_image(path, image, header, extensions=[("MASK", mask, None)])


def reference_photometry(image: np.ndarray, mask: np.ndarray, header, catalog,
                         config: Config) -> np.ndarray:
    """F_ref of the catalog stars on the reference (see the module doc)."""
    meta = SimpleNamespace(jd=header["JD"])
    frame = SimpleNamespace(image=image, meta=meta, wcs=WCS(header, fix=False))
    star, x, y, _, _ = photometry._stars_on_frame(frame, catalog, config)
    radii, annuli = photometry.apertures(config)
    fields = [("star", "i8"), ("x", "f8"), ("y", "f8")]
    for name, dtype in (("flux", "f8"), ("fluxerr", "f8"), ("flag", "i4")):
        fields += [(f"{name}_{i:03d}", dtype) for i in range(len(radii))]
    table = np.zeros(len(star), dtype=fields)
    table["star"], table["x"], table["y"] = star, x, y
    ph = config.photometry
    for annulus in sorted(set(annuli)):
        use = [i for i, a in enumerate(annuli) if a == annulus]
        res = photometry.aperture_photometry(
            image, x, y, radii[use], annulus, gain=header["GAIN"] * header["NEFF"], mask=mask,
            sky_method=ph.sky_method, sky_sigma=ph.sky_sigma, sky_iters=ph.sky_iters,
            disjoint_radius=ph.disjoint_radius, min_sky_pixels=ph.min_sky_pixels,
            saturation=header["SATURATE"])
        for j, i in enumerate(use):
            table[f"flux_{i:03d}"], table[f"fluxerr_{i:03d}"] = res["flux"][:, j], res["fluxerr"][:, j]
            table[f"flag_{i:03d}"] = res["flag"][:, j]
    if getattr(config.subtract, "replace_crowded", False):
        replace_crowded(table, np.asarray(catalog["mag"], float)[star], 2.0 * radii.max())
    return table


def replace_crowded(table: np.ndarray, catmag: np.ndarray, radius: float) -> np.ndarray:
    """CDIPS: F_ref of stars with a brighter neighbour within ``radius`` px replaced by
    ``10**(a + b catmag)`` fitted (per aperture) to the other stars with good flags."""
    pairs = cKDTree(np.column_stack([table["x"], table["y"]])).query_pairs(
        radius, output_type="ndarray")
    crowded = np.zeros(len(table), dtype=bool)
    if len(pairs):
        i, j = pairs[:, 0], pairs[:, 1]
        crowded[np.where(catmag[i] < catmag[j], j, i)] = True
    napertures = sum(1 for n in table.dtype.names if n.startswith("flux_"))
    for a in range(napertures):
        flux = table[f"flux_{a:03d}"]
        fit = ~crowded & (table[f"flag_{a:03d}"] == 0) & (flux > 0)
        if fit.sum() < 10:
            continue
        coef = np.polyfit(catmag[fit], np.log10(flux[fit]), 1)
        flux[crowded] = 10 ** np.polyval(coef, catmag[crowded])
    log.info("photref: F_ref of %d crowded stars replaced by the catalog prediction",
             int(crowded.sum()))
    return table


def build_group(comm, plan: dict, context: Context, target_path: Path) -> None:
    """Steps 2-4 for one group on every rank (rank 0 writes the files)."""
    config, project = context.config, context.project
    scratch = project.redtemp / "photref" / target_path.stem
    if comm.rank == 0:
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
    comm.barrier()
    ref_image, ref_header = read_image(plan["astromref"])
    ref_wcs, shape = WCS(ref_header), ref_image.shape
    image, mask, header, t_meta = _load(plan["paths"][plan["target"]], config)
    t_img, t_bad, _ = register(image, mask, WCS(header, fix=False), ref_wcs, shape, config, t_meta.saturate)
    target = (t_img, t_bad, t_meta)
    for i in parallel.split(len(plan["paths"]), comm.size, comm.rank):
        _match_one(plan, i, target, ref_wcs, shape, config, scratch)
    comm.barrier()
    if comm.rank == 0:
        n = len(plan["paths"])
        stack, stack_mask = combine([scratch / f"{i}.npy" for i in range(n)],
                                    [scratch / f"{i}-mask.npy" for i in range(n)], shape, config)
        _write(target_path, stack, stack_mask, ref_header, t_meta, plan)
        _, written = read_image(target_path)
        table = reference_photometry(stack, stack_mask, written, context.catalogs[t_meta.field],
                                     config)
        np.save(phot_path(target_path), table)
        shutil.rmtree(scratch, ignore_errors=True)
        log.info("photref %s: %d frames (target %d), %d stars measured", target_path.name, n,
                 plan["framekeys"][plan["target"]], len(table))


def _record(db: Database, project: Project, projid: str, field: str, ccd: str, path: Path,
            plan: dict) -> int:
    header = read_header(path)
    with db.transaction():
        db.execute("UPDATE photrefs SET isactive = ? WHERE projid = ? AND field = ? AND ccd = ?",
                   (False, projid, field, ccd))
        db.execute("INSERT INTO photrefs (projid, field, ccd, path, framekeys, nframes, fwhm, "
                   "medsky, isactive, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (projid, field, ccd, str(path.relative_to(project.root)),
                    ",".join(str(k) for k in plan["framekeys"]), len(plan["framekeys"]),
                    plan["fwhm"], header.get("MEDSKY"), True, records.now()))
        # the frames of the group are subtracted again, against the new reference
        db.execute("DELETE FROM framestatus WHERE stage = 'subtract' AND framekey IN "
                   "(SELECT c.framekey FROM calibratedframes c JOIN frameinfo f ON "
                   "f.framekey = c.framekey WHERE c.projid = ? AND f.field = ? AND f.ccd = ?)",
                   (projid, field, ccd))
    return _active(db, projid, field, ccd)[0]


def pixel_noise_factor(stack: np.ndarray, mask: np.ndarray, gain: float, rdnoise: float) -> float:
    """Measured sky-pixel variance of a stack over one raw frame's (``sky / gain +
    (rdnoise / gain)^2``): high-pass (minus a 7x7 median), 4-sigma clipped, central
    1024^2 at most.  It stands for the noise of the stacked, resampled, matched pixels."""
    ny, nx = stack.shape
    y0, x0 = max(0, ny // 2 - 512), max(0, nx // 2 - 512)
    cut = stack[y0:y0 + 1024, x0:x0 + 1024].astype(np.float64)
    good = mask[y0:y0 + 1024, x0:x0 + 1024] == 0
    high = cut - median_filter(cut, size=7)
    _, sky, _, _ = _stats.clipped_stats(cut[good], 3.0, 5)
    _, _, std, _ = _stats.clipped_stats(high[good], 4.0, 5)
    return float(std**2 / (max(sky, 0.0) / gain + (rdnoise / gain) ** 2))


def _active(db: Database, projid: str, field: str, ccd: str) -> tuple[int, str, str] | None:
    rows = db.query("SELECT photrefkey, path, framekeys FROM photrefs WHERE projid = ? AND "
                    "field = ? AND ccd = ? AND isactive ORDER BY photrefkey DESC",
                    (projid, field, ccd))
    return (int(rows[0][0]), rows[0][1], rows[0][2]) if rows else None


def build_references(comm, db: Database | None, context: Context, rebuild: bool) -> Context:
    """Build the missing (or, with ``rebuild``, all) photometric references; returns
    ``context`` with ``photref`` filled on every rank.  Rank 0 uses the database."""
    project = context.project
    groups = comm.bcast(_groups(db) if comm.rank == 0 else None)
    refs = {}
    for projid, field, ccd in groups:
        if field not in context.catalogs:
            continue
        path = reference_path(project, projid, field, ccd)
        active = _active(db, projid, field, ccd) if comm.rank == 0 else None
        todo = comm.bcast(rebuild or active is None or not (project.root / active[1]).exists()
                          if comm.rank == 0 else None)
        if todo:
            plan = comm.bcast(_plan(db, context, projid, field, ccd) if comm.rank == 0 else None)
            if plan is None:
                continue
            build_group(comm, plan, context, path)
            load_reference.cache_clear()
            if comm.rank == 0:
                _record(db, project, projid, field, ccd, path, plan)
                active = _active(db, projid, field, ccd)
        if comm.rank == 0:
            full = project.root / active[1]
            members = tuple(int(k) for k in active[2].split(",") if k)
            refs[(projid, field, ccd)] = Reference(active[0], str(full), str(phot_path(full)),
                                                   members)
    refs = comm.bcast(refs if comm.rank == 0 else None)
    return dataclasses.replace(context, photref=refs)


def pending_frames(db: Database) -> list[records.Task]:
    """Frames still to subtract whose photometry is done (rank 0)."""
    done = records.stage_status(db, ("photometry",))
    return [t for t in records.pending(db, ("subtract",))
            if done.get(t.framekey, {}).get("photometry") == "done"]
