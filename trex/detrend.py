"""Detrending of a project's light curves: EPD, then TFA, then statistics.

``detrend_project`` fills ``aep_NNN``/``atf_NNN`` (from ``arm_NNN``) and
``iep_NNN``/``itf_NNN`` (from ``irm_NNN``) of ``LC/<projid>/*.fits`` and writes
``LC/<projid>/lcstats.fits`` (see :mod:`trex.lcstats`).  Three passes, memory
bounded by the templates plus one chunk of stars:

1. every rank summarises its share of all light curves (position, catalog
   magnitude, per column median/scatter/coverage, frame keys and times);
2. rank 0 builds the common frame grid, picks TFA templates per column
   (:mod:`trex.tfa`), EPD-corrects them and broadcasts them;
3. every rank detrends its share of the targets (all stars, or ``objectids``
   after an incremental night) in chunks and rewrites each file atomically,
   keeping its header cards.

EPD itself is :func:`trex.epd.epd` (re-exported here).  Stars with too few
points are left NaN in the detrended columns and their rows get the PHOT flag
``NOT_FITTED`` in ``aiq_NNN``/``irq_NNN``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trex import lcformat
from trex.config import Config
from trex.epd import epd, external_parameters, local_sidereal_time, parameter_names, sky_geometry
from trex.flags import PHOT
from trex.lcstats import lcinfo_stats, robust_stats, star_stats, stat_columns, write_stats
from trex.parallel import SerialComm, split
from trex.project import Project
from trex.tfa import (
    default_template_count,
    exclusion,
    grid_pick,
    peak_power,
    reject_variables,
    select_templates,
    tfa,
)

__all__ = ["epd", "detrend_project", "detrend_rows", "lightcurve_files"]

log = logging.getLogger(__name__)

#: stars detrended (and held in memory) at a time in pass 3
CHUNK = 1000
STATS_NAME = "lcstats.fits"
_STRUCTURAL = ("XTENSION", "BITPIX", "NAXIS", "PCOUNT", "GCOUNT", "TFIELDS", "EXTNAME",
               "TTYPE", "TFORM", "TUNIT", "TDIM", "TNULL", "TSCAL", "TZERO", "TDISP")


@dataclass
class Grid:
    """The common frame grid and the TFA templates of each input column."""

    framekeys: np.ndarray                 # (nframes,), in time order
    rjd: np.ndarray                       # (nframes,)
    lst: np.ndarray                       # (nframes,) local sidereal time, rad
    templates: dict                       # input column -> (lcs (nt, nframes), xy (nt, 2), ids)

    def index(self, framekeys: np.ndarray) -> np.ndarray:
        """Grid position of each frame key."""
        order = np.argsort(self.framekeys)
        return order[np.searchsorted(self.framekeys[order], framekeys)]


def lightcurve_files(project: Project, projid: str) -> list[Path]:
    """Every light-curve file of a project id (sub-folders included), sorted."""
    folder = project.lc(projid)
    return sorted(p for p in folder.rglob("*.fits") if p.name != STATS_NAME
                  and not p.name.startswith("."))


def header_cards(header) -> list[dict]:
    """The user cards of a fitsio header (structural table cards dropped)."""
    return [{"name": r["name"], "value": r["value"], "comment": r.get("comment", "")}
            for r in header.records()
            if r.get("name") and not r["name"].startswith(_STRUCTURAL)]


def input_columns(napertures: int) -> list[str]:
    """Magnitude columns that are detrended: ``arm_NNN`` then ``irm_NNN``."""
    return [f"{p}_{i:03d}" for p in ("arm", "irm") for i in range(napertures)]


def _summarise(path: Path, columns: list[str]) -> dict:
    rows, header = lcformat.read_rows(path)
    stats = robust_stats(np.stack([rows[c].astype(np.float64) for c in columns]))
    return {"path": path, "objectid": str(header.get("OBJECTID", path.stem)),
            "mag": float(header.get("MAG", np.nan)),
            "x": float(np.nanmedian(rows["xcc"])) if np.isfinite(rows["xcc"]).any() else np.nan,
            "y": float(np.nanmedian(rows["ycc"])) if np.isfinite(rows["ycc"]).any() else np.nan,
            "median": stats["median"], "scatter": 1.4826 * stats["mad"], "n": stats["n"],
            "frames": np.unique(np.rec.fromarrays([rows["framekey"], rows["rjd"]],
                                                  names="framekey,rjd"))}


def _summarise_share(files: list[Path], columns: list[str]) -> tuple[list[dict], np.ndarray]:
    """Summaries of some files and the union of their (framekey, rjd) pairs."""
    out, frames = [], []
    for path in files:
        summary = _summarise(path, columns)
        frames.append(summary.pop("frames"))
        if len(frames) > 256:  # keep the union small whatever the number of stars
            frames = [np.unique(np.concatenate(frames))]
        out.append(summary)
    union = np.unique(np.concatenate(frames)) if frames else np.zeros(0, "i8,f8")
    return out, union


def detrend_rows(rows: np.ndarray, header, config: Config, grid: Grid,
                 columns: list[str]) -> np.ndarray:
    """EPD of every input column of one light curve (``lc_dtype`` rows); fills
    ``aep``/``iep`` in a copy and returns it (TFA is done per chunk)."""
    rows = rows.copy()
    for name in rows.dtype.names:  # NOT_FITTED describes this detrending only: reset it
        if name[:3] in ("aiq", "irq"):
            rows[name] &= ~PHOT["NOT_FITTED"].bit
    det = config.detrend
    pos = grid.index(rows["framekey"])
    geometry = sky_geometry(grid.lst[pos], float(header.get("RA", np.nan)),
                            float(header.get("DEC", np.nan)), config.site.latitude)
    for col in columns:
        kind = col[0]
        names = parameter_names(det.epd_parameters, kind)
        params = external_parameters(rows, names, geometry)
        out, _, ok = epd(rows[col], params, smooth=det.epd_smooth)
        target = ("aep" if kind == "a" else "iep") + col[3:]
        rows[target] = out
        _flag_unfitted(rows, col, out)
    return rows


def _flag_unfitted(rows: np.ndarray, col: str, out: np.ndarray) -> None:
    flag = ("aiq" if col[0] == "a" else "irq") + col[3:]
    lost = np.isfinite(rows[col]) & ~np.isfinite(out)
    rows[flag][lost] |= PHOT["NOT_FITTED"].bit


def _on_grid(rows_list: list[np.ndarray], col: str, grid: Grid) -> np.ndarray:
    out = np.full((len(rows_list), len(grid.framekeys)), np.nan)
    for i, rows in enumerate(rows_list):
        out[i, grid.index(rows["framekey"])] = rows[col]
    return out


def _build_grid(summaries: list[dict], frames: np.ndarray, config: Config,
                columns: list[str]) -> Grid:
    """Pass 2 (rank 0): frame grid, sidereal times and templates per column."""
    keys, rjd = frames["framekey"], frames["rjd"]
    keys, first = np.unique(keys, return_index=True)
    order = np.argsort(rjd[first], kind="stable")
    keys, rjd = keys[order], rjd[first][order]
    lst = local_sidereal_time(rjd + 2400000.0, config.site.longitude)
    grid = Grid(keys, rjd, lst, {})
    n = config.detrend.tfa_templates or default_template_count(len(keys))
    for j, col in enumerate(columns):
        grid.templates[col] = _templates_for(summaries, j, col, n, config, grid)
    return grid


def _templates_for(summaries: list[dict], j: int, col: str, n: int, config: Config,
                   grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Templates of one input column: EPD light curves (nt, nframes), xy, ids."""
    mag = np.array([s["median"][j] for s in summaries])
    scatter = np.array([s["scatter"][j] for s in summaries])
    cover = np.array([s["n"][j] for s in summaries]) / max(len(grid.framekeys), 1)
    x, y = np.array([s["x"] for s in summaries]), np.array([s["y"] for s in summaries])
    pool = select_templates(mag, scatter, cover, x, y, 3 * n)
    kept_rows, kept = [], []
    for i in pool:
        rows, header = lcformat.read_rows(summaries[i]["path"])
        rows = detrend_rows(rows, header, config, grid, [col])
        kept_rows.append(rows)
        kept.append(i)
    target = ("aep" if col[0] == "a" else "iep") + col[3:]
    lcs = _on_grid(kept_rows, target, grid) if kept else np.zeros((0, len(grid.framekeys)))
    kept = np.array(kept, dtype=int)
    if len(kept):
        quiet = reject_variables(peak_power(grid.rjd, lcs))
        score = np.where(quiet, scatter[kept], np.nan)
        pick = grid_pick(x[kept], y[kept], score, n)
        kept, lcs = kept[pick], lcs[pick]
    ids = np.array([summaries[i]["objectid"] for i in kept], dtype=object)
    log.info("TFA %s: %d templates from %d candidates", col, len(kept), len(pool))
    return lcs, np.column_stack([x[kept], y[kept]]), ids


def _tfa_column(done: list[np.ndarray], col: str, grid: Grid, xy: np.ndarray,
                ids: np.ndarray, radius: float) -> np.ndarray:
    """TFA of one column of a chunk: corrected magnitudes on the grid (nstars, nframes)."""
    source = ("aep" if col[0] == "a" else "iep") + col[3:]
    lcs, txy, tids = grid.templates[col]
    mags = _on_grid(done, source, grid)
    if not len(lcs):
        return np.full_like(mags, np.nan)
    return tfa(mags, lcs, exclusion(xy, txy, radius, ids, tids))[0]


def _backfit(raw: np.ndarray, header, done: np.ndarray, corrected: np.ndarray, col: str,
             config: Config, grid: Grid) -> None:
    """Second EPD of one star and column with the first TFA trend taken out of
    the magnitudes first (one backfitting step of EPD + TFA): EPD then sees no
    common trend, so its clipping finds transits and its coefficients are not
    driven by the trend.  Updates ``done`` (aep/iep and flags) in place."""
    source = ("aep" if col[0] == "a" else "iep") + col[3:]
    trend = done[source] - corrected[grid.index(done["framekey"])]
    trend = np.nan_to_num(trend - np.nanmedian(trend), nan=0.0) if np.isfinite(trend).any() \
        else np.zeros(len(done))
    shifted = raw.copy()
    shifted[col] = raw[col] - trend
    again = detrend_rows(shifted, header, config, grid, [col])
    done[source] = again[source] + trend
    flag = ("aiq" if col[0] == "a" else "irq") + col[3:]
    done[flag] |= again[flag]


def _detrend_chunk(items: list[dict], config: Config, grid: Grid, columns: list[str]) -> list:
    """Pass 3 for a chunk: EPD each star, TFA the chunk per column, then EPD
    again without the TFA trend (:func:`_backfit`) and TFA again."""
    raw, headers, done = [], [], []
    for s in items:
        rows, header = lcformat.read_rows(s["path"])
        raw.append(rows)
        headers.append(header)
        done.append(detrend_rows(rows, header, config, grid, columns))
    xy = np.array([[s["x"], s["y"]] for s in items], dtype=np.float64)
    ids = np.array([s["objectid"] for s in items], dtype=object)
    radius = config.detrend.tfa_exclusion_radius
    for col in columns:
        corrected = _tfa_column(done, col, grid, xy, ids, radius)
        for i in range(len(items)):
            _backfit(raw[i], headers[i], done[i], corrected[i], col, config, grid)
        corrected = _tfa_column(done, col, grid, xy, ids, radius)
        target = ("atf" if col[0] == "a" else "itf") + col[3:]
        for rows, values in zip(done, corrected, strict=True):
            rows[target] = values[grid.index(rows["framekey"])]
            _flag_unfitted(rows, col, rows[target])
    return [(s, rows, header) for s, rows, header in zip(items, done, headers, strict=True)]


def _lcinfo(project: Project, projid: str, path: Path, objectid: str, rows: np.ndarray) -> dict:
    """An ``lcinfo`` row from the best detrended column of aperture 0."""
    return {"projid": projid, "objectid": objectid, "path": str(path.relative_to(project.root)),
            **lcinfo_stats(rows, ("atf_000", "aep_000", "arm_000", "aim_000"))}


def detrend_project(project: Project, config: Config, projid: str,
                    objectids: list[str] | None = None, comm=None) -> list[dict]:
    """EPD and TFA of the light curves of ``projid`` (every rank calls this).

    ``objectids`` limits the rewritten stars (templates still come from all).
    Returns the ``lcinfo`` updates on rank 0 (empty list elsewhere).
    """
    comm = comm or SerialComm()
    napertures = len(config.photometry.apertures)
    columns = input_columns(napertures)
    files = lightcurve_files(project, projid) if comm.rank == 0 else None
    files = comm.bcast(files)
    mine = _summarise_share([files[i] for i in split(len(files), comm.size, comm.rank)], columns)
    gathered = comm.gather(mine)
    grid = summaries = None
    if comm.rank == 0:
        summaries = [s for part, _ in gathered for s in part]
        frames = np.unique(np.concatenate([f for _, f in gathered]))
        grid = _build_grid(summaries, frames, config, columns) if summaries else None
    grid, summaries = comm.bcast((grid, summaries))
    if not summaries:
        log.info("detrend %s: no light curves", projid)
        return []
    wanted = set(objectids) if objectids is not None else None
    targets = [s for s in summaries if wanted is None or s["objectid"] in wanted]
    stat_cols = stat_columns(napertures)
    info, stats = [], []
    share = [targets[i] for i in split(len(targets), comm.size, comm.rank)]
    for start in range(0, len(share), CHUNK):
        for s, rows, header in _detrend_chunk(share[start:start + CHUNK], config, grid, columns):
            lcformat.write_lightcurve(s["path"], rows, header_cards(header))
            stats.append(star_stats(rows, s["objectid"], s["mag"], stat_cols))
            info.append(_lcinfo(project, projid, s["path"], s["objectid"], rows))
    gathered = comm.gather((info, stats))
    if comm.rank != 0:
        return []
    info = [row for part, _ in gathered for row in part]
    stats = [row for _, part in gathered for row in part]
    if stats:
        write_stats(project.lc(projid) / STATS_NAME, np.concatenate(stats),
                    merge=objectids is not None)
    log.info("detrend %s: %d light curves detrended with %d frames", projid, len(info),
             len(grid.framekeys))
    return info
