"""Magnitude fitting: put every frame on the magnitude scale of a reference.

The fits are pure array code (numpy, no I/O).  The recipe, as in HATpipe:

1. Single-reference pass: for each frame, :func:`fit_frame` fits the
   difference ``mag - ref_mag`` (frame minus a chosen reference frame) as a
   2-D polynomial in (x, y) plus linear terms in catalog magnitude and colour,
   weighted by the errors, outliers weighted down smoothly (:func:`clip_weight`:
   a hard clip let one star's transit flip another across the threshold), on
   good-flag stars only;
   the frame's fitted magnitudes are ``mag - correction``.  Here ``mag`` and
   ``ref_mag`` are aperture-corrected, ``aim + apc`` (:mod:`trex.apcorr`:
   the light outside the aperture, which grows towards the corners where
   the PSF is broader); without this the reference's light loss, a
   centre-to-corner trend of 0.2-0.35 mag, passes into the master and arm.
2. :func:`master_reference` streams over the single-fitted frames and gives
   each star's clipped mean magnitude; memory is O(nstars) whatever the
   number of frames (one pass over the frames per clipping iteration).  The
   mean over the frames of the single fits' polynomials in (x, y)
   (:func:`mean_pattern`) is added, so that the master is on the mean frame's
   system, not the reference frame's: the per-frame errors of the corrections
   (and the reference's own cloud pattern) average out here.
3. Master-reference pass: :func:`fit_frame` again, of ``aim`` (not
   corrected: the polynomial carries each frame's light loss over to the
   master's system, and no per-frame noise of the corrections enters a light
   curve) against the master; the results are the ``arm_NNN`` magnitudes, on
   the catalog system over the field up to a constant.

Coordinates are scaled to [-1, 1] over ``extent`` (default: the range of the
stars used) so that the polynomial coefficients are well conditioned.

In the pipeline, per (projid, field), after photometry of the frames:

1. :class:`SingleFits` (a phase, frames farmed out): every frame is fitted to
   the best frame (the astrometric reference ranking) and its fitted
   magnitudes cached in ``REDTEMP/magfit/``;
2. :class:`Masters` (a phase, groups farmed out): each star's clipped mean
   over the cached frames, streamed; saved as
   ``BASE/reference-frames/magfit-<projid>-<field>.npy``;
3. :func:`run` / :func:`save`, the per-frame ``magfit`` stage: every frame not
   yet fitted is fitted to the master; the result is the ``arm_NNN`` column of
   its ``aphot`` product and of its ``ap_photometry`` rows.  A frame whose fit
   fails is recorded failed at ``magfit`` with the reason (its light-curve
   rows keep ``arm`` NaN).

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
from trex.astrometry import choose_reference
from trex.config import Config, MagfitSection
from trex.errors import FrameError, PhaseError
from trex.fits import atomic_write
from trex.frame import Context, Frame
from trex.header import FrameMeta
from trex.localterm import Deletion, Neighbours, local_residual, neighbour_pairs
from trex.phase import Phase
from trex.products import load_product
from trex.project import Project, safe_name

log = logging.getLogger(__name__)

#: default floor of the magnitude errors in the weights (``[magfit] min_error``)
MIN_ERROR = MagfitSection().min_error
#: a star's weight in the frame fit falls from 1 at ``clip_sigma`` robust sigmas to 0 at
#: this many times that: hard clipping let a star's transit flip a bright edge star
#: across the threshold and move a corner star's fit by 2-4 mmag (tests/test_signals.py);
#: a taper to 3x kept too much of the outliers (bright stars' arm RMS over the noise
#: 1.24 on tests/test_pipeline.py's night, 1.12 with hard clipping, within 1.2 at 2x)
CLIP_TAPER = 2.0
#: fewest frames of a star in the master reference (fewer: NaN for that star)
MASTER_FRAMES = 3


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
              clip_iters: int = 3, extent: tuple | None = None,
              min_error: float = MIN_ERROR, leave_one_out: bool = True,
              local_scale: float = 0.0, significance_z: float = 3.0,
              pairs: Neighbours | None = None) -> FrameFit:
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
        robust scatter (1.4826 MAD) of residual/error are weighted down, to zero
        at ``CLIP_TAPER`` times that (:func:`clip_weight`), and the fit repeated
        clip_iters times.  The weights change smoothly with the residuals, so a
        small change of one star (a transit) never moves the fit by a jump.
    extent : (xmin, xmax, ymin, ymax) px for the coordinate scaling
        (default: the stars used).
    min_error : errors below it are raised to it in the weights, mag.
    leave_one_out : each star kept in the fit gets the correction of the fit
        without it (exact deletion formula, no refit), so that a star's own
        signal (a transit, an eclipse) never drives its own correction; stars
        left out (flags, zero weight) get the fit's value, which does not use them.
    local_scale : > 0: add to every star's correction the Gaussian-weighted
        (sigma ``local_scale`` px) mean residual of the kept stars around it,
        itself excluded, shrunk by the structure's share of its variance
        (:func:`local_residual`): follows structure finer than the polynomial
        (thin clouds, vignetting); 0: off.
    significance_z : the structure is trusted in proportion to its significance
        (:func:`trex.localterm.significance`); 0: trusted whole.
    pairs : :func:`trex.localterm.neighbour_pairs` within 3 ``local_scale`` of
        candidates including every star of ``flag_ok`` (shared by a frame's apertures;
        default: built here).

    Returns
    -------
    FrameFit: ``correction`` to subtract from ``mag`` (leave-one-out for the
    stars kept), ``params`` (the fit with every kept star), ``rms``, ``nused``.
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
    weight = 1.0 / np.maximum(magerr, min_error)
    usable, down = use, np.ones(len(mag))      # down: each star's robust weight factor
    for iteration in range(clip_iters + 1):
        w = weight * np.sqrt(down)
        coef = np.linalg.lstsq(design[use] * w[use, None], diff[use] * w[use], rcond=None)[0]
        if iteration == clip_iters:
            break
        # judged against the polynomial only: clipping against the local term would let a
        # star's own transit choose which of its neighbours enter its correction
        chi = (diff - design @ coef) * weight
        scale = 1.4826 * np.median(np.abs(chi[usable] - np.median(chi[usable])))
        new = np.where(usable, clip_weight(np.abs(chi) / (clip_sigma * scale)), 0.0) if scale > 0 \
            else down
        if np.count_nonzero(usable & (new > 0)) < 2 * nterms:
            break
        down, use = new, usable & (new > 0)
    model = design @ coef
    residual = (diff - model)[use]
    w2 = w[use] ** 2
    params["coef"] = coef
    params["terms"] = [f"x^{i} y^{j}" for i, j in polynomial_terms(order)] + (
        ["catmag"] if catmag is not None else []) + (["color"] if color is not None else [])
    if leave_one_out or local_scale > 0:
        fitted = Deletion(np.flatnonzero(use), residual, w[use],
                          np.linalg.qr(design[use] * w[use, None])[0])
        if leave_one_out:
            model[use] -= residual * fitted.factor
        if local_scale > 0:
            model += local_residual(x, y, fitted, local_scale, leave_one_out, significance_z,
                                    pairs)
    return FrameFit(model, params, float(np.sqrt(np.sum(w2 * residual**2) / w2.sum())),
                    int(use.sum()))


def clip_weight(t: np.ndarray) -> np.ndarray:
    """Robust weight factor of residuals ``t`` in units of the clipping threshold: 1 up
    to 1, falling smoothly, (1 - ((t - 1) / (CLIP_TAPER - 1))^2)^2, to 0 at CLIP_TAPER."""
    u = np.clip((np.asarray(t, float) - 1.0) / (CLIP_TAPER - 1.0), 0.0, 1.0)
    return (1.0 - u * u) ** 2


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


def corrected(table: np.ndarray, aperture: int) -> np.ndarray:
    """Aperture-corrected magnitudes ``aim + apc`` (nstars,) of one aperture of an
    ``aphot`` table (``aim`` alone for a product made before aperture corrections)."""
    mag = table[f"aim_{aperture:03d}"].astype(float)
    column = f"apc_{aperture:03d}"
    return mag + table[column] if column in table.dtype.names else mag


def fit_to(table: np.ndarray, ref_mag: np.ndarray, catalog, config: Config,
           apcorr: bool = True, pattern: bool = False):
    """Fitted magnitudes (nstars, napertures) of one frame's ``aphot`` table against
    ``ref_mag`` (ncatalog, napertures): of ``aim + apc`` with ``apcorr``, else of
    ``aim`` (the polynomial then takes the frame's light loss onto the reference's
    system).  With ``pattern``, also the fits' :func:`spatial_pattern` at the stars
    (same shape).  Raises :class:`MagfitError` naming the aperture when a fit has too
    few usable stars."""
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
        mag = corrected(table, a) if apcorr else table[f"aim_{a:03d}"].astype(float)
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


def spatial_pattern(params: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A fit's polynomial in (x, y) px without its constant term, at (x, y): mag (nstars,)."""
    nxy = len(polynomial_terms(params["order"]))
    return design_matrix(x, y, None, None, params)[:, 1:] @ params["coef"][1:nxy]


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


def mean_pattern(patterns: Iterable[np.ndarray]) -> np.ndarray:
    """Each star's mean over the frames of the single fits' :func:`spatial_pattern`
    (each (ncatalog,), NaN where the star is off the frame), streamed.  Added to the
    clipped mean, it moves the master from the reference frame's system to the mean
    frame's: the reference's own correction errors and cloud pattern average out."""
    total = count = 0.0
    for shape in patterns:
        ok = np.isfinite(shape)
        total = total + np.where(ok, shape, 0.0)
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
        scratch = _scratch(context.project, *item.group)
        with atomic_write(scratch / f"{item.framekey}.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.stack([_expand(table, v, len(catalog)) for v in (fitted, shape)]))
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
        master = np.full((len(catalog), napertures), np.nan)
        for a in range(napertures):
            def passes(a=a):
                return ((m[0, :, a], np.isfinite(m[0, :, a])) for m in
                        (np.load(f, mmap_mode="r") for f in files))
            master[:, a] = master_reference(passes, len(catalog), config.magfit.clip_sigma,
                                            config.magfit.clip_iters, MASTER_FRAMES)[0]
            master[:, a] += mean_pattern(np.load(f, mmap_mode="r")[1, :, a] for f in files)
        with atomic_write(master_path(project, *group)) as tmp, open(tmp, "wb") as fh:
            np.save(fh, master)
        shutil.rmtree(scratch, ignore_errors=True)
        log.info("magfit %s/%s: master reference from %d frames, %d stars", *group, len(files),
                 int(np.isfinite(master[:, 0]).sum()))
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
    try:
        arm = fit_to(table, master, context.catalogs[meta.field], context.config, apcorr=False)
    except MagfitError as err:
        raise FrameError(frame.rawpath, f"magfit: {err}") from None
    for a in range(arm.shape[1]):
        table[f"arm_{a:03d}"] = arm[:, a]
    return frame


def save(frame: Frame, context: Context) -> dict:
    """Write the ``aphot`` product with ``arm``; returns its ``ap_photometry`` rows."""
    return photometry.save(frame, context)
