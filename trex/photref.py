"""The photometric reference of image subtraction, per (projid, field, ccd).

Recipe (three phases after photometry, per group without an active reference,
or every group when the references are rebuilt):

1. Candidates: frames with photometry done and ``frameisok``, ranked as the
   astrometric reference is (:func:`trex.astromref.choose_reference`: high
   S, low |D|, low sky, many detections; sum of ranks); the
   ``subtract.nref`` best are taken (all of them on a shorter night).
2. Each is registered onto the astrometric reference grid (the active
   ``astromrefs`` frame) with :func:`trex.register.transform_from_wcs` and
   :func:`trex.register.resample` (``subtract.resample``): first the
   broadest-PSF candidate (lowest S), the target (phase
   :class:`Registrations`), then each of the others, which is matched to it
   with the kernel fit of :func:`trex.subtract.subtract` (phase
   :class:`Matches`): the matched frame is ``R_i conv K + B``, i.e. it takes
   the PSF, the sky and the transparency of that target frame.  Each item is
   one candidate, on any rank, through ``REDTEMP/photref/``; a candidate that
   cannot be read or matched (no usable stamp) is left out with the reason.
3. :class:`Bands` (one item per band of rows, :mod:`trex.refstack`) combines them
   with a clipped median (``trex._stats.clipped_combine``); :class:`Stacks` (one
   item per group) joins the bands, writes
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

A reference is built once and kept for later nights unless ``rebuild``.  It
is data -- :class:`Reference`: image, mask, header, WCS, the stars' F_ref --
that the subtract stage receives in ``context.photref[(projid, field, ccd)]``:
read once at the start of a run (:func:`load_references`) or handed on from
the phase that made it, never read back after writing.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits as afits
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from trex import photometry, refstack
from trex.astromref import rank_frames
from trex.config import Config
from trex.errors import PhaseError
from trex.fits import FrameError, atomic_write, read_image, write_image
from trex.flags import MASK, grown
from trex.frame import Context
from trex.header import FrameMeta
from trex.kernelspec import parse_kernel
from trex.phase import Phase
from trex.project import Project, safe_name
from trex.register import register_frame
from trex.stamps import StampCandidates, stamp_candidates
from trex.subtract import match

log = logging.getLogger(__name__)

Group = tuple[str, str, str]  # (projid, field, ccd)


@dataclass(frozen=True)
class Reference:
    """A photometric reference, as the subtract stage needs it."""

    photrefkey: int
    path: str                    # relative to the project root
    image: np.ndarray            # float32 (ny, nx), ADU
    mask: np.ndarray             # uint8 (ny, nx), trex.flags.MASK bits
    header: afits.Header         # EXPTIME, GAIN, SATURATE, NOISEFAC, NEFF, ... and the WCS
    wcs: WCS
    phot: np.ndarray             # F_ref of the stars (reference_photometry)
    framekeys: tuple[int, ...]   # the frames in the stack
    candidates: StampCandidates | None = None  # its stamp stars (set by with_references)


@dataclass(frozen=True)
class GroupPlan:
    """A reference to build: its group, grid, candidate frames and target."""

    group: Group
    astromref: str               # the astrometric reference frame (its grid), absolute
    framekeys: tuple[int, ...]
    paths: tuple[str, ...]       # calibrated candidate frames, absolute
    metas: tuple[FrameMeta, ...]
    target: int                  # index of the broadest-PSF candidate
    fwhm: float | None


def reference_path(project: Project, group: Group) -> Path:
    projid, field, ccd = group
    stem = f"photref-{safe_name(projid)}-{safe_name(field)}-{safe_name(ccd or 'ccd')}"
    return project.reference_frames / f"{stem}.fits"


def phot_path(path: Path | str) -> Path:
    path = Path(path)
    return path.with_name(path.stem + "-phot.npy")


def _scratch(project: Project, group: Group) -> Path:
    return project.redtemp / "photref" / reference_path(project, group).stem


def group_plans(ledger, context: Context) -> list[GroupPlan]:
    """The references to build (rank 0): groups of frames with photometry done and no
    active reference (all of them with ``context.rebuild``), in a fixed order."""
    out = []
    for group in ledger.read.groups_done("photometry", ccd=True):
        if group[1] not in context.catalogs or (group in context.photref and not context.rebuild):
            continue
        astrom = ledger.read.astrometric_reference(*group)
        quality = ledger.read.quality_of_done_frames("photometry", *group)
        chosen = rank_frames(quality)[:context.config.subtract.nref] if quality else []
        if not astrom or not len(chosen):
            log.warning("photref %s: no astrometric reference or no good frame", "/".join(group))
            continue
        index = [list(quality["framekey"]).index(k) for k in chosen]
        target = int(np.argmin(np.asarray(quality["meds"], float)[index]))
        fwhm = float(np.asarray(quality["fwhm"], float)[index][target])
        root = context.project.root
        metas = ledger.frame_metas([int(k) for k in chosen])
        out.append(GroupPlan(group, str(root / astrom[1]), tuple(int(k) for k in chosen),
                             tuple(str(root / quality["redpath"][i]) for i in index),
                             tuple(metas[int(k)] for k in chosen), target,
                             fwhm if np.isfinite(fwhm) else None))
    return out


def _grid(plan: GroupPlan) -> tuple[WCS, tuple[int, int], afits.Header]:
    """WCS, shape and header of the astrometric reference: read once per process and
    version of the file (every registration of the group needs them; not to be changed)."""
    try:
        stat = os.stat(plan.astromref)
    except OSError:  # read_image says what is wrong
        return _read_grid(plan.astromref)
    return _cached_grid(plan.astromref, stat.st_mtime_ns, stat.st_size)


def _read_grid(path: str) -> tuple[WCS, tuple[int, int], afits.Header]:
    image, header = read_image(path)
    return WCS(header, fix=False), image.shape, header


@functools.lru_cache(maxsize=2)
def _cached_grid(path: str, mtime_ns: int, size: int) -> tuple[WCS, tuple[int, int], afits.Header]:
    return _read_grid(path)


def _register(plan: GroupPlan, i: int, context: Context) -> tuple[np.ndarray, np.ndarray]:
    """Candidate ``i`` on the astrometric reference grid: (float32 image, NaN where
    bad; uint8 MASK bits)."""
    ref_wcs, shape, _ = _grid(plan)
    image, header = read_image(plan.paths[i])
    mask, _ = read_image(plan.paths[i], hdu="MASK")
    sub = context.config.subtract
    reg, bad, _ = register_frame(image, mask.astype(np.uint8), WCS(header, fix=False), ref_wcs,
                                 shape, order=sub.transform_order, method=sub.resample,
                                 saturation=plan.metas[i].saturate)
    reg[bad != 0] = np.nan
    return reg, bad


class Registrations(Phase):
    """Step 2a: the target on the astrometric reference grid (one item per group)."""

    name = "photometric reference: registration"
    batch = 1

    def plan(self, ledger, context: Context) -> list[tuple[GroupPlan, int]]:
        items = []
        for plan in group_plans(ledger, context):
            scratch = _scratch(context.project, plan.group)
            shutil.rmtree(scratch, ignore_errors=True)  # leftovers of a killed run
            items.append((plan, plan.target))
        return items

    def work(self, item: tuple[GroupPlan, int], context: Context) -> None:
        plan, i = item
        reg, bad = _register(plan, i, context)
        scratch = _scratch(context.project, plan.group)
        _save(scratch / f"reg-{i}.npy", reg)
        _save(scratch / f"reg-{i}-mask.npy", bad)

    def label(self, item: tuple[GroupPlan, int]) -> str:
        return f"{'/'.join(item[0].group)} frame {item[0].framekeys[item[1]]}"


class Matches(Phase):
    """Step 2b: every other candidate registered (in memory) and matched to the target
    (one item each)."""

    name = "photometric reference: matching"
    batch = 1

    def plan(self, ledger, context: Context) -> list[tuple[GroupPlan, int]]:
        return [(plan, i) for plan in group_plans(ledger, context)
                if (_scratch(context.project, plan.group) / f"reg-{plan.target}.npy").is_file()
                for i in range(len(plan.paths)) if i != plan.target]

    def work(self, item: tuple[GroupPlan, int], context: Context) -> None:
        plan, i = item
        scratch = _scratch(context.project, plan.group)
        target, t_bad = np.load(scratch / f"reg-{plan.target}.npy"), np.load(
            scratch / f"reg-{plan.target}-mask.npy")
        reg, bad = _register(plan, i, context)
        sub, t_meta = context.config.subtract, plan.metas[plan.target]
        reg0 = np.where(bad != 0, 0.0, reg).astype(np.float32)
        try:
            matched, sol = match(target, reg0, kernel=sub.kernel, mask=(bad != 0) | (t_bad != 0),
                                 gain=t_meta.gain, rdnoise=t_meta.rdnoise,
                                 saturation=0.95 * plan.metas[i].saturate, ngrid=sub.stamp_grid,
                                 per_cell=sub.stamps_per_cell, halfsize=sub.stamp_halfsize,
                                 threshold=sub.stamp_threshold, reject=sub.stamp_reject)
        except ValueError as err:  # no usable stamp: this candidate is left out
            raise PhaseError(self.label(item), f"not matched to the target: {err}") from None
        # the convolution spreads the zeroed bad pixels over the kernel footprint
        bad[grown(bad, sol.spec.halfsize)] |= MASK["BADPIX"].bit
        matched[bad != 0] = np.nan
        log.info("photref: frame %d matched to frame %d (flux scale %.3f, %d stamps)",
                 plan.framekeys[i], plan.framekeys[plan.target],
                 float(sol.flux_scale(reg.shape[1] / 2, reg.shape[0] / 2)), len(sol.stamps))
        _save(scratch / f"matched-{i}.npy", matched)
        _save(scratch / f"matched-{i}-mask.npy", bad)

    label = Registrations.label


def _used(plan: GroupPlan, scratch: Path) -> tuple[list[int], list[str]]:
    """The candidates in the stack (the target and those matched to it) and their files."""
    used = [i for i in range(len(plan.paths)) if i == plan.target
            or (scratch / f"matched-{i}.npy").is_file()]
    return used, [f"reg-{i}" if i == plan.target else f"matched-{i}" for i in used]


class Bands(Phase):
    """Step 3a: the stack's bands of rows (:mod:`trex.refstack`), one item each."""

    name = "photometric reference: stacking"
    batch = 1

    def plan(self, ledger, context: Context) -> list[tuple[GroupPlan, int, int]]:
        items = []
        for plan in group_plans(ledger, context):
            target = _scratch(context.project, plan.group) / f"reg-{plan.target}.npy"
            if target.is_file():
                ny = np.load(target, mmap_mode="r").shape[0]
                items += [(plan, r0, r1) for r0, r1 in refstack.bands(ny)]
        return items

    def work(self, item: tuple[GroupPlan, int, int], context: Context) -> None:
        plan, r0, r1 = item
        scratch = _scratch(context.project, plan.group)
        _, names = _used(plan, scratch)
        band = refstack.combine_band([scratch / f"{n}.npy" for n in names],
                                     [scratch / f"{n}-mask.npy" for n in names], r0, r1,
                                     context.config)
        with atomic_write(scratch / f"band-{r0}.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **band)

    def label(self, item: tuple[GroupPlan, int, int]) -> str:
        return f"{'/'.join(item[0].group)} rows {item[1]}-{item[2]}"


class Stacks(Phase):
    """Steps 3b and 4: the stack from its bands, its file, its photometry (one item per
    group)."""

    name = "photometric reference"
    batch = 1

    def __init__(self):
        self.found: dict[Group, dict] = {}

    def plan(self, ledger, context: Context) -> list[GroupPlan]:
        return [plan for plan in group_plans(ledger, context)
                if (_scratch(context.project, plan.group) / f"reg-{plan.target}.npy").is_file()]

    def work(self, plan: GroupPlan, context: Context) -> dict:
        config, project = context.config, context.project
        scratch = _scratch(project, plan.group)
        used, _ = _used(plan, scratch)
        ref_wcs, shape, ref_header = _grid(plan)
        parts = []
        for r0, _ in refstack.bands(shape[0]):
            if not (scratch / f"band-{r0}.npz").is_file():
                raise PhaseError(self.label(plan), f"stack band from row {r0} missing")
            with np.load(scratch / f"band-{r0}.npz") as band:
                parts.append({k: band[k] for k in band.files})
        image, mask = refstack.assemble(parts, config)
        header = refstack.header(ref_header, image, mask, plan.metas[plan.target], len(used),
                         [plan.framekeys[i] for i in used])
        path = reference_path(project, plan.group)
        write_image(path, image, header, extensions=[("MASK", mask, None)])
        phot = reference_photometry(image, mask, header, context.catalogs[plan.group[1]], config)
        with atomic_write(phot_path(path)) as tmp, open(tmp, "wb") as fh:
            np.save(fh, phot)
        shutil.rmtree(scratch, ignore_errors=True)
        log.info("photref %s: %d of %d frames (target %d), %d stars measured", path.name,
                 len(used), len(plan.paths), plan.framekeys[plan.target], len(phot))
        return {"plan": plan, "path": str(path.relative_to(project.root)), "image": image,
                "mask": mask, "header": header, "phot": phot,
                "framekeys": tuple(plan.framekeys[i] for i in used)}

    def record(self, ledger, result: dict, context: Context) -> None:
        plan = result["plan"]
        key = ledger.record_photometric_reference(plan.group, result["path"],
                                                  list(result["framekeys"]), plan.fwhm,
                                                  result["header"]["MEDSKY"])
        ledger.record_phase(self.name, "/".join(plan.group))
        self.found[plan.group] = Reference(key, result["path"], result["image"], result["mask"],
                                           result["header"], WCS(result["header"], fix=False),
                                           result["phot"], result["framekeys"])

    def update(self, ledger, context: Context) -> Context:
        return with_references(context, self.found)

    def label(self, plan: GroupPlan) -> str:
        return "/".join(plan.group)


def with_references(context: Context, references: dict[Group, Reference]) -> Context:
    """``context`` with these photometric references (and their ledger keys), each with
    its stamp candidates (:func:`trex.stamps.stamp_candidates`, found once here)."""
    sub = context.config.subtract
    references = {g: dataclasses.replace(r, candidates=stamp_candidates(
        r.image, sub.stamp_grid, sub.stamp_halfsize, parse_kernel(sub.kernel).halfsize,
        r.mask, 0.95 * r.header["SATURATE"], sub.stamp_threshold)) for g, r in references.items()}
    inputs = {**context.inputs, **{("photref", *g): str(r.photrefkey) for g, r in references.items()}}
    return dataclasses.replace(context, photref={**context.photref, **references}, inputs=inputs)


def load_reference(project: Project, photrefkey: int, path: str, framekeys: str) -> Reference:
    """An existing reference from its files (``photrefs`` row values)."""
    full = project.root / path
    image, header = read_image(full)
    mask, _ = read_image(full, hdu="MASK")
    return Reference(photrefkey, path, image, mask.astype(np.uint8), header,
                     WCS(header, fix=False), np.load(phot_path(full), allow_pickle=False),
                     tuple(int(k) for k in framekeys.split(",") if k))


def load_references(ledger, project: Project) -> dict[Group, Reference]:
    """The active references of every group whose files exist (start of a run, rank 0)."""
    out = {}
    for group in ledger.read.groups_done("photometry", ccd=True):
        active = ledger.read.photometric_reference(*group)
        if active is None:
            continue
        try:
            out[group] = load_reference(project, *active)
        except (FrameError, OSError) as err:
            log.warning("photref %s: %s: built again", "/".join(group), err)
    return out


def _save(path: Path, array: np.ndarray) -> None:
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def reference_photometry(image: np.ndarray, mask: np.ndarray, header, catalog,
                         config: Config) -> np.ndarray:
    """F_ref of the catalog stars on the reference (see the module doc)."""
    star, x, y, _, _ = photometry.catalog_positions(catalog, WCS(header, fix=False), image.shape,
                                                    header["JD"], config)
    res = photometry.measure(image, x, y, config, gain=header["GAIN"] * header["NEFF"], mask=mask,
                             saturation=header["SATURATE"])
    napertures = res["flux"].shape[1]
    fields = [("star", "i8"), ("x", "f8"), ("y", "f8")]
    for name, dtype in (("flux", "f8"), ("fluxerr", "f8"), ("flag", "i4")):
        fields += [(f"{name}_{i:03d}", dtype) for i in range(napertures)]
    table = np.zeros(len(star), dtype=fields)
    table["star"], table["x"], table["y"] = star, x, y
    for i in range(napertures):
        for name in ("flux", "fluxerr", "flag"):
            table[f"{name}_{i:03d}"] = res[name][:, i]
    if config.subtract.replace_crowded:
        radii, _ = photometry.apertures(config)
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
