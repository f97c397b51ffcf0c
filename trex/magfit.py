"""Magnitude fitting: put every frame on the magnitude scale of a reference.

The recipe, as in HATpipe:

1. Single-reference pass: for each frame, :func:`trex.framefit.fit_frame` fits the
   difference ``mag - ref_mag`` (frame minus a chosen reference frame) as a
   2-D polynomial in (x, y) plus linear terms in catalog magnitude and colour,
   on good-flag stars only, outliers weighted down smoothly; the frame's
   fitted magnitudes are ``mag - correction``.  Here ``mag`` and
   ``ref_mag`` are aperture-corrected, ``aim + apc`` (:mod:`trex.apcorr`:
   the light outside the aperture, which grows towards the corners where
   the PSF is broader); without this the reference's light loss, a
   centre-to-corner trend of 0.2-0.35 mag, passes into the master and arm.
2. :func:`master_reference` streams over the single-fitted frames and gives
   each star's clipped mean magnitude; memory is O(nstars) whatever the
   number of frames (one pass over the frames per clipping iteration).  The
   mean over the frames of the single fits' polynomials in (x, y)
   (:func:`mean_over_frames`) is added, so that the master is on the mean frame's
   system, not the reference frame's: the per-frame errors of the corrections
   (and the reference's own cloud pattern) average out here.  Each star's
   mean correction over the same frames, its light loss ``L``, is kept with
   the master.
3. Master-reference pass: the same fit again, of ``aim + L`` against the
   master; the results are the ``arm_NNN`` magnitudes, on the catalog system
   over the field up to a constant.  ``L`` is one value per star, so no
   per-frame noise of the corrections enters a light curve, and the
   polynomial takes up only the frame's light loss relative to the mean
   frame's (focus, seeing): fitted to ``aim`` alone it had to follow the whole
   0.2-0.35 mag centre-to-corner loss, which a quadratic in (x, y) does not,
   and left 2-8 mmag of it in arm (2048² nights of 40 frames).

In the pipeline, per (projid, field), after photometry of the frames:

1. :class:`SingleFits` (a phase, frames farmed out): every frame is fitted to
   the best frame (the astrometric reference ranking) and its fitted
   magnitudes cached in ``REDTEMP/magfit/``;
2. :class:`Masters` (a phase, groups farmed out): each star's clipped mean
   over the cached frames, streamed; saved as
   ``BASE/reference-frames/magfit-<projid>-<field>.npy`` with each star's
   light loss (:class:`Master`);
3. :func:`run` / :func:`save`, the per-frame ``magfit`` stage: every frame not
   yet fitted is fitted to the master; the result is the ``arm_NNN`` column of
   its ``aphot`` product and of its ``ap_photometry`` rows.  A frame whose fit
   fails is recorded failed at ``magfit`` with the reason (its light-curve
   rows keep ``arm`` NaN) and its ``ap_photometry`` rows as photometry left
   them.  In a run of both stages the photometry stage leaves the frame's
   ``ap_photometry`` rows to this one, so that they are written once (a third
   of rank 0's rows), not twice; a run stopped between the two passes has them
   written by the next run's magfit stage.

The master is built once and then kept (new nights are fitted to it) unless
the references are rebuilt; a new master redoes the fits (the ledger sees
its key change).  Each step is deterministic per item, so the result does
not depend on the number of ranks.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from trex import photometry
from trex.astromref import choose_reference
from trex.config import Config
from trex.errors import FrameError, PhaseError
from trex.fits import atomic_write
from trex.frame import Context, Frame
from trex.framefit import MagfitError, fit_frame, spatial_pattern
from trex.header import FrameMeta
from trex.localterm import neighbour_pairs
from trex.phase import Phase
from trex.products import load_product
from trex.project import Project, safe_name

log = logging.getLogger(__name__)

#: fewest frames of a star in the master reference (fewer: NaN for that star)
MASTER_FRAMES = 3


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


def corrections(table: np.ndarray, aperture: int) -> np.ndarray:
    """Aperture corrections ``apc`` (nstars,) of one aperture of an ``aphot`` table
    (zero for a product made before aperture corrections)."""
    column = f"apc_{aperture:03d}"
    return table[column].astype(float) if column in table.dtype.names else np.zeros(len(table))


def corrected(table: np.ndarray, aperture: int) -> np.ndarray:
    """Aperture-corrected magnitudes ``aim + apc`` (nstars,) of one aperture."""
    return table[f"aim_{aperture:03d}"] + corrections(table, aperture)


def fit_to(table: np.ndarray, ref_mag: np.ndarray, catalog, config: Config,
           light_loss: np.ndarray | None = None, pattern: bool = False):
    """Fitted magnitudes (nstars, napertures) of one frame's ``aphot`` table against
    ``ref_mag`` (ncatalog, napertures): of ``aim + apc`` (the frame's own corrections)
    when ``light_loss`` is None, else of ``aim + light_loss`` (ncatalog, napertures: a
    master's mean corrections; ``apc`` where it is NaN, a star new to the master).
    With ``pattern``, also the fits' :func:`spatial_pattern` at the stars (same shape).
    Raises :class:`MagfitError` naming the aperture when a fit has too few usable
    stars."""
    napertures = ref_mag.shape[1]
    out = np.full((len(table), napertures), np.nan)
    shape = np.full((len(table), napertures), np.nan)
    catmag = np.asarray(catalog["mag"], float)[table["star"]]
    color = np.asarray(catalog["color"], float)[table["star"]]
    color = color if np.isfinite(color).sum() > 0.5 * len(color) else None
    mc = config.magfit
    usable = [_usable(table, catalog, a, config) for a in range(napertures)]
    pairs = None
    if mc.local_scale > 0:  # one neighbour search for every aperture's fit
        pairs = neighbour_pairs(table["xcc"], table["ycc"],
                                np.flatnonzero(np.logical_or.reduce(usable)), 3 * mc.local_scale)
    for a in range(napertures):
        if light_loss is None:
            mag = corrected(table, a)
        else:   # a star the master's frames never measured: the frame's own correction
            loss = light_loss[table["star"], a]
            mag = table[f"aim_{a:03d}"] + np.where(np.isfinite(loss), loss,
                                                   corrections(table, a))
        try:
            fit = fit_frame(mag, table[f"aie_{a:03d}"], usable[a],
                            ref_mag[table["star"], a], table["xcc"], table["ycc"], catmag,
                            color, order=mc.order, clip_sigma=mc.clip_sigma,
                            clip_iters=mc.clip_iters, min_error=mc.min_error,
                            local_scale=mc.local_scale, pairs=pairs)
        except MagfitError as err:
            raise MagfitError(f"aperture {a}: {err}") from None
        out[:, a] = mag - fit.correction
        shape[:, a] = spatial_pattern(fit.params, table["xcc"], table["ycc"])
    return (out, shape) if pattern else out


class Master(NamedTuple):
    """A group's magnitude-fit master: per catalog star and aperture (ncatalog,
    napertures), the reference magnitude and the mean aperture correction."""

    mag: np.ndarray
    light_loss: np.ndarray


def as_master(saved: np.ndarray) -> Master:
    """The :class:`Master` of a master file's array: (2, ncatalog, napertures), or
    (ncatalog, napertures) as written before the light loss was kept (then zero: its
    frames stay fitted as they were)."""
    if saved.ndim == 2:
        return Master(saved, np.zeros_like(saved))
    return Master(saved[0], saved[1])


def _expand(table: np.ndarray, values: np.ndarray, ncatalog: int) -> np.ndarray:
    full = np.full((ncatalog, values.shape[1]), np.nan)
    full[table["star"]] = values
    return full


def master_path(project: Project, projid: str, field: str) -> Path:
    return project.reference_frames / f"magfit-{safe_name(projid)}-{safe_name(field)}.npy"


def _scratch(project: Project, projid: str, field: str) -> Path:
    return project.redtemp / "magfit" / safe_name(projid) / safe_name(field)


def master_key(master: np.ndarray) -> str:
    """What identifies a master's values for the ledger (a short hash)."""
    return hashlib.sha256(np.ascontiguousarray(master).tobytes()).hexdigest()[:16]


def load_masters(project: Project, groups: list[tuple[str, str]]) -> dict:
    """{(projid, field): master} of the groups whose master file exists."""
    out = {}
    for group in groups:
        path = master_path(project, *group)
        if path.is_file():
            out[group] = np.load(path)
    return out


@dataclass(frozen=True)
class SingleFit:
    """Step 1 for one frame: fit it to the group's reference frame into the scratch folder."""

    group: tuple[str, str]
    framekey: int
    redpath: str
    reference: str  # the reference frame's redpath


@functools.lru_cache(maxsize=2)
def _reference_mags(path: str, napertures: int, ncatalog: int) -> np.ndarray:
    """Good magnitudes (ncatalog, napertures) of the reference frame (cached per rank)."""
    ref = load_product(path, "aphot")
    good = np.column_stack([np.where(ref[f"aiq_{a:03d}"] == 0, corrected(ref, a), np.nan)
                            for a in range(napertures)])
    return _expand(ref, good, ncatalog)


def mean_over_frames(values: Iterable[np.ndarray]) -> np.ndarray:
    """Each star's mean over the frames of per-frame ``values`` (each (ncatalog,), or
    (k, ncatalog) for k quantities at once; NaN where the star is off the frame),
    streamed: of the single fits' :func:`spatial_pattern`, added to the clipped mean,
    it moves the master from the reference frame's system to the mean frame's (the
    reference's own correction errors and cloud pattern average out); of the aperture
    corrections, the master's light loss."""
    total = count = 0.0
    for value in values:
        ok = np.isfinite(value)
        total = total + np.where(ok, value, 0.0)
        count = count + ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count


class SingleFits(Phase):
    """Step 1 for the groups without a master (or all, when the references are rebuilt)."""

    name = "magfit single-reference fits"

    def plan(self, ledger, context: Context) -> list[SingleFit]:
        items = []
        for group in ledger.read.groups_done("photometry"):
            if group[1] not in context.catalogs or (group in context.magfit and not context.rebuild):
                continue
            quality = ledger.read.quality_of_done_frames("photometry", *group)
            best = choose_reference(quality)
            reference = quality["redpath"][list(quality["framekey"]).index(best)]
            scratch = _scratch(context.project, *group)
            shutil.rmtree(scratch, ignore_errors=True)  # leftovers of a killed run
            items += [SingleFit(group, key, redpath, reference)
                      for key, redpath, _ in ledger.read.frames_done("photometry", *group)]
        return items

    def work(self, item: SingleFit, context: Context) -> None:
        catalog = context.catalogs[item.group[1]]
        root = context.project.root
        ref_mag = _reference_mags(str(root / item.reference), len(context.config.photometry.apertures),
                                  len(catalog))
        table = load_product(root / item.redpath, "aphot")
        try:
            fitted, shape = fit_to(table, ref_mag, catalog, context.config, pattern=True)
        except MagfitError as err:  # this frame is left out of the master
            log.info("magfit: frame %d left out of the master: %s", item.framekey, err)
            return None
        loss = np.column_stack([corrections(table, a) for a in range(fitted.shape[1])])
        scratch = _scratch(context.project, *item.group)
        with atomic_write(scratch / f"{item.framekey}.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.stack([_expand(table, v, len(catalog))
                                  for v in (fitted, shape, loss)]))
        return None

    def label(self, item: SingleFit) -> str:
        return f"frame {item.framekey}"


class Masters(Phase):
    """Step 2: each star's clipped mean over the single-fitted frames of a group."""

    name = "magfit master"
    batch = 1

    def __init__(self):
        self.found: dict[tuple[str, str], np.ndarray] = {}

    def plan(self, ledger, context: Context) -> list[tuple[str, str]]:
        return [group for group in ledger.read.groups_done("photometry")
                if _scratch(context.project, *group).is_dir()]

    def work(self, group: tuple[str, str], context: Context) -> tuple:
        config, project = context.config, context.project
        catalog = context.catalogs[group[1]]
        scratch = _scratch(project, *group)
        files = sorted(scratch.glob("*.npy"))
        if len(files) < MASTER_FRAMES:
            raise PhaseError("/".join(group), f"{len(files)} frame(s) fitted to the reference "
                             f"frame: a master needs {MASTER_FRAMES}")
        napertures = len(config.photometry.apertures)
        master = np.full((2, len(catalog), napertures), np.nan)   # Master: mag, light_loss
        for a in range(napertures):
            def passes(a=a):
                return ((m[0, :, a], np.isfinite(m[0, :, a])) for m in
                        (np.load(f, mmap_mode="r") for f in files))
            master[0, :, a] = master_reference(passes, len(catalog), config.magfit.clip_sigma,
                                               config.magfit.clip_iters, MASTER_FRAMES)[0]
            # one pass for the polynomials' mean (the mean frame's system) and the light loss
            pattern, master[1, :, a] = mean_over_frames(np.load(f, mmap_mode="r")[1:, :, a]
                                                        for f in files)
            master[0, :, a] += pattern
        with atomic_write(master_path(project, *group)) as tmp, open(tmp, "wb") as fh:
            np.save(fh, master)
        shutil.rmtree(scratch, ignore_errors=True)
        log.info("magfit %s/%s: master reference from %d frames, %d stars", *group, len(files),
                 int(np.isfinite(master[0, :, 0]).sum()))
        return group, master

    def record(self, ledger, result: tuple, context: Context) -> None:
        group, master = result
        ledger.record_phase(self.name, "/".join(group))
        self.found[group] = master

    def update(self, ledger, context: Context) -> Context:
        return with_masters(context, self.found)

    def label(self, group: tuple[str, str]) -> str:
        return "/".join(group)


def with_masters(context: Context, masters: dict) -> Context:
    """``context`` with these magnitude-fit masters (and their ledger keys)."""
    inputs = {**context.inputs, **{("magfit", *g): master_key(m) for g, m in masters.items()}}
    return dataclasses.replace(context, magfit={**context.magfit, **masters}, inputs=inputs)


def inputs(meta: FrameMeta, night: str, context: Context) -> str:
    """The master a frame is fitted to (a new master redoes the fit)."""
    return context.inputs.get(("magfit", meta.projid, meta.field), "none")


def run(frame: Frame, context: Context) -> Frame:
    """Step 3, the per-frame stage: ``arm_NNN`` of the frame's ``aphot`` product."""
    meta = frame.meta
    master = context.magfit.get((meta.projid, meta.field))
    if master is None:
        raise FrameError(frame.rawpath, f"magfit: no master reference for {meta.projid}/{meta.field} "
                                        "(see trex status)")
    table = frame.products.get("aphot")
    if table is None:
        raise FrameError(frame.rawpath, "magfit: no aperture photometry (photometry not done)")
    master = as_master(master)
    try:
        arm = fit_to(table, master.mag, context.catalogs[meta.field], context.config,
                     light_loss=master.light_loss)
    except MagfitError as err:
        raise FrameError(frame.rawpath, f"magfit: {err}") from None
    for a in range(arm.shape[1]):
        table[f"arm_{a:03d}"] = arm[:, a]
    return frame


def save(frame: Frame, context: Context) -> dict:
    """Write the ``aphot`` product with ``arm``; returns its ``ap_photometry`` rows."""
    return photometry.save(frame, context)
