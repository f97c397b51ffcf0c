"""Detrending of light curves, one night at a time: EPD, TFA, and what they need.

A *night* is a run of frames with no gap longer than ``[detrend] night_gap``
(0.25 d).  Each night of a light curve is detrended from that night's rows
alone (HAT practice: the systematics change from night to night), for every
input column (``arm_NNN`` -> ``aep_NNN``, ``atf_NNN``; ``irm_NNN`` ->
``iep_NNN``, ``itf_NNN``):

1. EPD (:func:`trex.epd.epd`) of the star's magnitudes against the external
   parameters of its own rows on that night;
2. TFA (:func:`trex.tfa.tfa`) with the night's template light curves
   (:class:`NightTrend`: the templates' EPD magnitudes on the night's frames);
3. one backfitting step: EPD again with the TFA trend taken out first, then
   TFA again (so a common trend does not bias EPD and EPD's clipping finds
   transits).

Every fit is made to the magnitudes minus the star's own slow signal of the night
(:mod:`trex.protect`: an eclipse or other variation longer than the EPD smoothing
window that the templates do not share), and the signal is left in the results.

``adq_NNN`` / ``idq_NNN`` say what happened to each row: 0 detrended,
``NOT_FITTED`` when the input was measured but could not be detrended
(too few points that night, no template), ``MISSING`` when there was
nothing to detrend.

TFA templates are chosen once per (projid, field) (:func:`trex.templates.choose_templates`:
bright, well covered, low scatter, not variable, spread over the field) and
kept in ``BASE/reference-frames/tfa-<projid>-<field>.npy`` like the other
references (chosen again with ``--rebuild-references``); a night uses the
``tfa_templates`` (or one per 20 frames) of them spread over the field.  A
night's detrended values therefore depend only on the star's rows of that
night, the templates' rows of that night and the ``[detrend]`` settings:
adding a night changes no other night.

In ``trex run`` the nights that receive new rows are detrended while the
light curves are merged (:mod:`trex.lightcurves`), so each file is written
once.  ``trex detrend`` alone redoes every night of every light curve from
the files (:mod:`trex.redetrend`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from trex import lcformat
from trex.config import Config
from trex.epd import epd, epd_many, external_parameters, local_sidereal_time, parameter_names, sky_geometry
from trex.flags import PHOT
from trex.protect import night_signal
from trex.templates import Templates, input_columns
from trex.tfa import default_template_count, exclusion, grid_pick, tfa

__all__ = ["epd", "night_intervals", "detrend_nights", "NightTrend"]

log = logging.getLogger(__name__)

#: (EPD, TFA, flag) output column prefixes of an input column's kind
OUTPUTS = {"a": ("aep", "atf", "adq"), "i": ("iep", "itf", "idq")}


def outputs(col: str) -> tuple[str, str, str]:
    """(EPD, TFA, flag) columns of input column ``col`` (``arm_001`` -> aep_001, atf_001, adq_001)."""
    return tuple(f"{p}{col[3:]}" for p in OUTPUTS[col[0]])


def night_intervals(rjd: np.ndarray, gap: float) -> np.ndarray:
    """(start, stop) rjd of each night: runs of times with no gap over ``gap`` days, (k, 2)."""
    times = np.unique(np.asarray(rjd, dtype=np.float64)[np.isfinite(rjd)])
    if not len(times):
        return np.zeros((0, 2))
    cuts = np.flatnonzero(np.diff(times) > gap)
    return np.column_stack([times[np.r_[0, cuts + 1]], times[np.r_[cuts, len(times) - 1]]])


# -- templates ------------------------------------------------------------------------------

# -- night trends ---------------------------------------------------------------------------

@dataclass(frozen=True)
class NightTrend:
    """A night's frame grid and its template light curves per input column."""

    start: float                  # rjd of the night's first and last frame
    stop: float
    framekeys: np.ndarray         # (nf,) in time order
    lst: np.ndarray               # (nf,) local sidereal time, rad
    lcs: dict                     # column -> (EPD lcs (nt, nf), xy (nt, 2), objectids (nt,))
    epd: dict                     # column kind "a"/"i" -> EPDPlan or None
    raw: dict = dataclasses.field(default_factory=dict)  # column -> the same templates' input
                                                         # magnitudes (nt, nf)

    def positions(self, framekeys: np.ndarray) -> np.ndarray:
        """Grid index of each frame key (-1 where not on the grid)."""
        order = np.argsort(self.framekeys)
        at = np.clip(np.searchsorted(self.framekeys[order], framekeys), 0, len(order) - 1)
        found = self.framekeys[order][at] == framekeys
        return np.where(found, order[at], -1)


@dataclass(frozen=True)
class EPDPlan:
    """The EPD parameters of a column kind on a night: the set's name, its parameters
    and the smoothing window (points)."""

    tier: str
    names: tuple[str, ...]
    smooth: int

    @property
    def need(self) -> int:
        """Fewest points fitted (as :func:`trex.epd.epd` requires)."""
        return max(10, 3 * (len(self.names) + 1), self.smooth)


def epd_plan(config: Config, kind: str, nframes: int) -> EPDPlan | None:
    """The EPD of a night of ``nframes`` frames for a column kind (``a``/``i``): the first
    of ``epd_parameters``, ``epd_reduced``, ``epd_minimal`` (``[detrend]``) the frames
    can fit (3 (p + 1) points), smoothing over at most a third of them; None when even
    the minimal set has too few frames."""
    det = config.detrend
    smooth = max(1, min(det.epd_smooth, nframes // 3))
    smooth -= 1 - smooth % 2  # odd
    for tier, names in (("full", det.epd_parameters), ("reduced", det.epd_reduced),
                        ("minimal", det.epd_minimal)):
        plan = EPDPlan(tier, tuple(parameter_names(names, kind)), smooth)
        if nframes >= plan.need:
            return plan
    return None


def _epd_parameters(rows: np.ndarray, ra: np.ndarray, dec: np.ndarray, lst: np.ndarray,
                    config: Config, plan: EPDPlan) -> np.ndarray:
    """The EPD parameters ``plan.names`` of many rows, (N, p): ``ra``, ``dec`` (deg) and
    ``lst`` (rad) per row."""
    params = external_parameters(rows, plan.names,
                                 sky_geometry(lst, ra, dec, config.site.latitude))
    return np.stack([params[n] for n in plan.names], axis=1)


def _epd_values(params: np.ndarray | None, offsets: np.ndarray, mags: np.ndarray,
                plan: EPDPlan | None) -> np.ndarray:
    """EPD magnitudes (N,) of many stars' rows of one night, one star after the other
    (star s: rows ``offsets[s]:offsets[s + 1]``, magnitudes ``mags``, parameters
    ``params`` (N, p)).  NaN where not fitted: a star with fewer than ``plan.need``
    measured magnitudes is not tried."""
    if plan is None:
        return np.full(len(mags), np.nan)
    return epd_many(mags, params, offsets, plan.smooth, min_finite=plan.need)[0]


def night_trend(interval: tuple[float, float], framekeys: np.ndarray, rjd: np.ndarray,
                templates: Templates, rows_of: dict[str, tuple[np.ndarray, float, float]],
                config: Config) -> NightTrend:
    """The trend of one night: grid ``framekeys`` at times ``rjd`` (the night's frames),
    and the EPD light curves of the templates picked for it.

    ``rows_of`` maps a template's objectid to (its rows of that night, ra, dec).
    A template is used on a night where it has at least 90 % of the frames.
    """
    order = np.argsort(rjd, kind="stable")
    framekeys, rjd = np.asarray(framekeys)[order], np.asarray(rjd)[order]
    lst = local_sidereal_time(rjd + 2400000.0, config.site.longitude)
    trend = NightTrend(float(interval[0]), float(interval[1]), framekeys, lst, {},
                       {kind: epd_plan(config, kind, len(framekeys)) for kind in OUTPUTS})
    wanted = config.detrend.tfa_templates or default_template_count(len(framekeys))
    for col in {str(c) for c in templates.table["column"]}:
        cands = templates.of(col)
        ok = np.array([o in rows_of and np.isfinite(rows_of[o][0][col]).sum() >= 0.9 * len(framekeys)
                       for o in cands["objectid"]], dtype=bool)
        pick = grid_pick(cands["x"], cands["y"], np.where(ok, cands["score"], np.nan), wanted)
        lcs = np.full((len(pick), len(framekeys)), np.nan)
        raw = np.full((len(pick), len(framekeys)), np.nan)
        for j, cand in enumerate(cands[pick]):
            rows, ra, dec = rows_of[cand["objectid"]]
            at = trend.positions(rows["framekey"])
            keep = at >= 0
            plan, n = trend.epd[col[0]], int(keep.sum())
            params = None if plan is None else _epd_parameters(
                rows[keep], np.full(n, ra), np.full(n, dec), lst[at[keep]], config, plan)
            lcs[j, at[keep]] = _epd_values(params, np.array([0, n]), rows[col][keep], plan)
            raw[j, at[keep]] = rows[col][keep]
        good = np.isfinite(lcs).sum(axis=1) >= 0.5 * len(framekeys)
        trend.lcs[col] = (lcs[good], np.column_stack([cands["x"][pick], cands["y"][pick]])[good],
                          cands["objectid"][pick][good])
        trend.raw[col] = raw[good]
    return trend


# -- detrending --------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Stars:
    """Many stars' rows of one night, one star after the other, placed on the night's grid."""

    offsets: np.ndarray  # (nstars + 1,) star s owns rows offsets[s]:offsets[s + 1]
    star: np.ndarray     # (N,) the star of each row
    at: np.ndarray       # (N,) the row's frame on the grid, -1 when not on it
    nf: int              # frames on the grid

    def on_grid(self, values: np.ndarray) -> np.ndarray:
        """Per-row ``values`` (N,) as (nstars, nf), NaN where a star has no row."""
        out = np.full((len(self.offsets) - 1, self.nf), np.nan)
        keep = self.at >= 0
        out[self.star[keep], self.at[keep]] = values[keep]
        return out

    def of_rows(self, grid: np.ndarray) -> np.ndarray:
        """(nstars, nf) values back on the rows (N,), NaN for rows off the grid."""
        return np.where(self.at >= 0, grid[self.star, np.maximum(self.at, 0)], np.nan)

    def medians(self, values: np.ndarray) -> np.ndarray:
        """Median of each star's finite ``values`` (N,), as ``np.nanmedian``; NaN when
        it has none: (nstars,)."""
        nstars = len(self.offsets) - 1
        if not len(values):
            return np.full(nstars, np.nan)
        ordered = values[np.lexsort((values, self.star))]  # NaN last within each star
        count = np.bincount(self.star[np.isfinite(values)], minlength=nstars)
        lo = np.minimum(self.offsets[:-1] + np.maximum(count - 1, 0) // 2, len(values) - 1)
        hi = np.minimum(self.offsets[:-1] + count // 2, len(values) - 1)
        return np.where(count > 0, 0.5 * (ordered[lo] + ordered[hi]), np.nan)


def detrend_night(rows: np.ndarray, offsets: np.ndarray, infos: list[dict], trend: NightTrend,
                  config: Config, columns: list[str]) -> None:
    """EPD and TFA of many stars' rows of one night (``lc_dtype`` rows, changed in
    place), one star after the other: star s owns ``rows[offsets[s]:offsets[s + 1]]``.

    ``infos`` give each star's ``objectid``, ``ra``, ``dec``, ``x``, ``y``.
    """
    lengths = np.diff(offsets)
    at = trend.positions(rows["framekey"])
    stars = _Stars(offsets, np.repeat(np.arange(len(infos)), lengths), at, len(trend.framekeys))
    lst = np.where(at >= 0, trend.lst[np.maximum(at, 0)], np.nan)
    ra = np.repeat(np.array([i["ra"] for i in infos], dtype=np.float64), lengths)
    dec = np.repeat(np.array([i["dec"] for i in infos], dtype=np.float64), lengths)
    xy = _night_positions(rows, stars, infos)
    ids = np.array([i["objectid"] for i in infos], dtype=object)
    params = (None, None)  # the EPD parameters of one column kind at a time, (N, p)
    for col in columns:
        ep, tf, flag = outputs(col)
        mags = rows[col].astype(np.float64)
        rows[ep] = rows[tf] = np.nan
        plan = trend.epd[col[0]]
        if plan is not None:  # else no star can have enough points tonight
            if params[0] != col[0]:
                params = (col[0], _epd_parameters(rows, ra, dec, lst, config, plan))
            _detrend_column(rows, stars, col, mags, params[1], xy, ids, trend, config)
        done = np.isfinite(rows[ep]) & np.isfinite(rows[tf])
        rows[flag] = np.where(~np.isfinite(mags), PHOT["MISSING"].bit,
                              np.where(done, 0, PHOT["NOT_FITTED"].bit))


def _detrend_column(rows: np.ndarray, stars: _Stars, col: str, mags: np.ndarray,
                    params: np.ndarray, xy: np.ndarray, ids: np.ndarray, trend: NightTrend,
                    config: Config) -> None:
    """EPD, TFA, one backfitting step (EPD again with the TFA trend taken out first),
    TFA again, of input column ``col`` (magnitudes ``mags``, EPD parameters ``params``
    (N, p)) of a night's rows; each result goes through its output column (float32)
    exactly as it is stored.  Every fit is made without the star's own slow signal
    (:func:`trex.protect.night_signal`), which is left in the results."""
    ep, tf, _ = outputs(col)
    plan, det = trend.epd[col[0]], config.detrend
    lcs, txy, tids = trend.lcs.get(col, (np.zeros((0, stars.nf)), np.zeros((0, 2)), np.zeros(0)))
    excluded = exclusion(xy, txy, det.tfa_exclusion_radius, ids, tids)
    own = (night_signal(stars, mags, trend.raw.get(col, lcs[:0]), excluded, plan.smooth,
                        det.signal_clip, det.signal_extend)
           if det.signal_clip > 0 else np.zeros(len(mags)))
    grid_own = np.nan_to_num(stars.on_grid(own))
    rows[ep] = _epd_values(params, stars.offsets, mags - own, plan) + own
    first = rows[ep].astype(np.float64)
    drift = first - stars.of_rows(_tfa(stars.on_grid(first), lcs, excluded, grid_own))
    drift = np.nan_to_num(drift - stars.medians(drift)[stars.star], nan=0.0)
    shifted = (mags - drift).astype(rows.dtype[col]).astype(np.float64)
    rows[ep] = _epd_values(params, stars.offsets, shifted - own, plan) + drift + own
    rows[tf] = stars.of_rows(_tfa(stars.on_grid(rows[ep].astype(np.float64)), lcs, excluded,
                                  grid_own))


def _night_positions(rows: np.ndarray, stars: _Stars, infos: list[dict]) -> np.ndarray:
    """Median position of each star on the night (its catalog position's pixel, from
    ``infos``, when it has none), (nstars, 2) px: what the TFA exclusion radius is
    measured from."""
    ok = np.isfinite(rows["xcc"]) & np.isfinite(rows["ycc"])
    x = stars.medians(np.where(ok, rows["xcc"], np.nan).astype(np.float64))
    y = stars.medians(np.where(ok, rows["ycc"], np.nan).astype(np.float64))
    none = np.isnan(x)
    if none.any():
        x[none] = [infos[s]["x"] for s in np.flatnonzero(none)]
        y[none] = [infos[s]["y"] for s in np.flatnonzero(none)]
    return np.column_stack([x, y])


def _tfa(mags: np.ndarray, lcs: np.ndarray, excluded: np.ndarray, own: np.ndarray) -> np.ndarray:
    """TFA of ``mags`` (nstars, nf) fitted without the stars' own signals ``own``
    (nstars, nf; 0 where none), which are kept."""
    if not len(lcs):
        return np.full_like(mags, np.nan)
    return tfa(mags - own, lcs, excluded)[0] + own


def detrend_nights(stars: list[tuple[np.ndarray, dict]], trends: list[NightTrend],
                   config: Config) -> None:
    """Detrend the rows of ``stars`` ((rows, info) pairs; rows changed in place) that
    fall in the nights of ``trends``; other rows are left as they are."""
    if not stars or not trends:
        return
    columns = input_columns(len(config.photometry.apertures))
    parts = [r for r, _ in stars]
    same = all(r.dtype == parts[0].dtype for r in parts)  # else frame names of other widths
    rows = np.concatenate(parts) if same else lcformat.concatenate(parts)
    lengths = np.array([len(r) for r, _ in stars], dtype=np.int64)
    owner = np.repeat(np.arange(len(stars)), lengths)
    for trend in trends:
        inside = np.flatnonzero((rows["rjd"] >= trend.start) & (rows["rjd"] <= trend.stop))
        if not len(inside):
            continue
        count = np.bincount(owner[inside], minlength=len(stars))
        members = np.flatnonzero(count)
        night = rows[inside]
        detrend_night(night, np.r_[0, np.cumsum(count[members])], [stars[s][1] for s in members],
                      trend, config, columns)
        rows[inside] = night
    start = np.r_[0, np.cumsum(lengths)]
    for s, (mine, _) in enumerate(stars):
        mine[...] = rows[start[s]:start[s + 1]]



def position(rows: np.ndarray, gap: float) -> tuple[float, float]:
    """Median position of a light curve on its first night with one, px (NaN when
    never measured): a reference position that later nights do not move."""
    measured = np.isfinite(rows["xcc"]) & np.isfinite(rows["ycc"])
    first = int(np.argmax(measured))
    if not measured[first]:
        return float("nan"), float("nan")
    ends = np.flatnonzero(np.diff(rows["rjd"]) > gap)  # a night's last row
    end = ends[np.searchsorted(ends, first)] + 1 if len(ends) and ends[-1] >= first else len(rows)
    mine = np.flatnonzero(measured[first:end]) + first
    xy = np.sort(np.stack([rows["xcc"][mine], rows["ycc"][mine]]), axis=1)  # a few rows:
    half = len(mine) // 2  # sorting beats np.median's overhead
    x, y = xy[:, half] if len(mine) % 2 else 0.5 * (xy[:, half - 1] + xy[:, half])
    return float(x), float(y)


def detrend_cards(old_header, trends: list[NightTrend], rows: np.ndarray) -> list[dict]:
    """``DETRnnn`` cards: per night of ``rows`` detrended with one of ``trends``, its first
    rjd, frames, EPD parameter sets (aperture/subtraction) and TFA templates (of the
    first aperture); the old header's cards of the other nights are kept."""
    nights: dict[str, str] = {}
    for rec in old_header.records() if old_header is not None else ():
        if rec["name"].startswith("DETR") and rec["name"][4:].isdigit():
            nights[str(rec["value"]).split()[0]] = str(rec["value"])
    for t in trends:
        if np.any((rows["rjd"] >= t.start) & (rows["rjd"] <= t.stop)):
            tiers = "/".join(t.epd[k].tier if t.epd[k] else "none" for k in OUTPUTS)
            used = "/".join(str(len(t.lcs.get(f"{p}_000", ((),))[0])) for p in ("arm", "irm"))
            key = f"rjd={t.start:.5f}"
            nights[key] = f"{key} frames={len(t.framekeys)} epd={tiers} templates={used}"
    return [{"name": f"DETR{i:03d}", "value": value,
             "comment": "night detrended: EPD sets (aperture/subtraction), TFA templates"}
            for i, (_, value) in enumerate(sorted(nights.items()))]
