"""``trex detrend`` alone: every night of every light curve detrended again from the files.

In ``trex run`` the nights that receive new rows are detrended while the
light curves are merged (:mod:`trex.lightcurves`).  ``trex detrend`` redoes
them all from the light-curve files, in three phases: :class:`Summaries`
(each file's header, position and times), :class:`FileTrends` (per projid
and field, the templates kept or chosen from the files, and every night's
trend) and :class:`DetrendFiles` (each file's nights detrended
(:func:`trex.detrend.detrend_nights`) and the file rewritten).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from trex import lccards, lcformat
from trex.config import Config
from trex.detrend import detrend_cards, detrend_nights, night_intervals, night_trend, position
from trex.errors import FrameError
from trex.frame import Context
from trex.lcstats import columns_of, lcstats_rows, robust_stats
from trex.phase import Phase
from trex.project import Project
from trex.templates import Templates, choose_templates, input_columns, save_templates, templates_path
from trex.tfa import select_templates

log = logging.getLogger(__name__)


def lightcurve_files(project: Project, projid: str) -> list[Path]:
    """Every light-curve file of a project id (sub-folders included), sorted."""
    folder = project.lc(projid)
    return sorted(p for p in folder.rglob("*.fits") if not p.name.startswith("."))


def file_info(header) -> dict:
    """What detrending needs of a light curve's header."""
    return {"objectid": str(header.get("OBJECTID")), "ra": float(header.get("RA", np.nan)),
            "dec": float(header.get("DEC", np.nan)), "mag": float(header.get("MAG", np.nan)),
            "projid": str(header.get("PROJID", "")), "field": str(header.get("FIELD", ""))}


class Summaries(Phase):
    """``trex detrend`` alone, pass 1: every light curve's header, position and times."""

    name = "detrend: reading light curves"
    batch = 1

    def __init__(self):
        self.summaries: list[dict] = []

    def plan(self, ledger, context: Context) -> list[tuple[str, tuple[str, ...]]]:
        lc = context.project.root / "LC"
        projids = sorted(p.name for p in lc.iterdir() if p.is_dir()) if lc.is_dir() else []
        items = []
        for projid in projids:
            files = [str(p.relative_to(context.project.root))
                     for p in lightcurve_files(context.project, projid)]
            items += [(projid, tuple(files[i:i + 200])) for i in range(0, len(files), 200)]
        return items

    def work(self, item: tuple, context: Context) -> list[dict]:
        columns = input_columns(len(context.config.photometry.apertures))
        out = []
        for rel in item[1]:
            try:
                rows, header = lcformat.read_rows(context.project.root / rel)
            except (OSError, ValueError) as err:
                raise FrameError(rel, f"unreadable light curve: {err}") from None
            info = {**file_info(header), "projid": item[0]}
            info["x"], info["y"] = position(rows, context.config.detrend.night_gap)
            st = robust_stats(np.stack([rows[c].astype(np.float64) for c in columns]))
            out.append({**info, "path": rel, "median": st["median"],
                        "scatter": 1.4826 * st["mad"], "n": st["n"], "frames": _frames(rows)})
        return out

    def record(self, ledger, result: list[dict], context: Context) -> None:
        self.summaries += result


class FileTrends(Phase):
    """``trex detrend`` alone, pass 2: per (projid, field), the templates (those kept, or
    chosen from the light curves) and the trend of every night."""

    name = "detrend: templates and nights"
    batch = 1

    def __init__(self, summaries: Summaries):
        self.summaries, self.found = summaries, {}

    def plan(self, ledger, context: Context) -> list[tuple]:
        groups: dict[tuple[str, str], list[dict]] = {}
        for s in self.summaries.summaries:
            groups.setdefault((s["projid"], s["field"]), []).append(s)
        items = []
        for group, members in sorted(groups.items()):
            frames = np.unique(np.concatenate([s["frames"] for s in members]))
            kept = context.templates.get(group) if not context.rebuild else None
            items.append((group, members, kept, frames))
        return items

    def work(self, item: tuple, context: Context) -> tuple:
        group, members, templates, frames = item
        config, root = context.config, context.project.root
        frame_keys, first = np.unique(frames["framekey"], return_index=True)
        frame_rjd = frames["rjd"][first]
        if templates is None:
            templates = self._choose(members, frame_keys, frame_rjd, config, root)
            save_templates(templates_path(context.project, *group), templates)
        paths = {s["objectid"]: s["path"] for s in members}
        rows_of = {}
        for oid in np.unique(templates.table["objectid"]):
            if oid in paths:
                rows, header = lcformat.read_rows(root / paths[oid])
                rows_of[oid] = (rows, float(header.get("RA", np.nan)), float(header.get("DEC", np.nan)))
        trends = []
        for interval in night_intervals(frame_rjd, config.detrend.night_gap):
            inside = (frame_rjd >= interval[0]) & (frame_rjd <= interval[1])
            night_rows = {o: (r[(r["rjd"] >= interval[0]) & (r["rjd"] <= interval[1])], ra, dec)
                          for o, (r, ra, dec) in rows_of.items()}
            trends.append(night_trend(interval, frame_keys[inside], frame_rjd[inside], templates,
                                      night_rows, config))
        return group, templates, trends

    @staticmethod
    def _choose(members: list[dict], keys: np.ndarray, rjd: np.ndarray, config: Config,
                root: Path) -> Templates:
        """Templates from the light curves: candidates by their statistics, then the
        periodogram test on their light curves."""
        columns = input_columns(len(config.photometry.apertures))
        stars = np.zeros(len(members), dtype=[("star", "i8"), ("objectid", "U256"), ("ra", "f8"),
                                              ("dec", "f8"), ("x", "f8"), ("y", "f8")])
        for name in ("objectid", "ra", "dec", "x", "y"):
            stars[name] = [m[name] for m in members]
        stars["star"] = np.arange(len(members))
        pool = config.detrend.template_pool
        chosen = set()
        for j in range(len(columns)):
            median = np.array([m["median"][j] for m in members])
            scatter = np.array([m["scatter"][j] for m in members])
            cover = np.array([m["n"][j] for m in members]) / max(len(keys), 1)
            chosen |= set(select_templates(median, scatter, cover, stars["x"], stars["y"],
                                           3 * pool).tolist())
        chosen = np.array(sorted(chosen), dtype=int)
        lcs = {c: np.full((len(members), len(keys)), np.nan) for c in columns}
        for i in chosen:
            rows, _ = lcformat.read_rows(root / members[i]["path"])
            at = np.searchsorted(keys, rows["framekey"])
            for col in columns:
                lcs[col][i, at] = rows[col]
        return choose_templates(lcs, rjd, stars, config)

    def record(self, ledger, result: tuple, context: Context) -> None:
        group, templates, trends = result
        self.found[group] = (templates, trends)
        ledger.record_phase(self.name, "/".join(group))

    def update(self, ledger, context: Context) -> Context:
        templates = {**context.templates, **{g: t for g, (t, _) in self.found.items()}}
        trends = {**context.trends, **{g: tr for g, (_, tr) in self.found.items()}}
        return dataclasses.replace(context, templates=templates, trends=trends)

    def label(self, item: tuple) -> str:
        return "/".join(item[0])


def _frames(rows: np.ndarray) -> np.ndarray:
    """The (framekey, rjd) pairs of a light curve."""
    return np.unique(np.rec.fromarrays([rows["framekey"], rows["rjd"]], names="framekey,rjd"))


class DetrendFiles(Phase):
    """``trex detrend`` alone, pass 3: every night of every light curve, each file
    written once; ``lcinfo`` and ``lcstats`` rows replaced."""

    name = "detrend"
    batch = 1

    def __init__(self, summaries: Summaries):
        self.summaries = summaries

    def plan(self, ledger, context: Context) -> list[tuple]:
        groups: dict[tuple[str, str], list[str]] = {}
        for s in self.summaries.summaries:
            groups.setdefault((s["projid"], s["field"]), []).append(s["path"])
        return [(group, tuple(paths[i:i + 100])) for group, paths in sorted(groups.items())
                for i in range(0, len(paths), 100)]

    def work(self, item: tuple, context: Context) -> tuple[list[dict], dict]:
        group, paths = item
        trends = context.trends.get(group, [])
        napertures = len(context.config.photometry.apertures)
        gap = context.config.detrend.night_gap
        stars = []
        for rel in paths:
            rows, header = lcformat.read_rows(context.project.root / rel)
            info = {**file_info(header), "projid": group[0], "header": header}
            info["x"], info["y"] = position(rows, gap)
            stars.append((rows.astype(lcformat.lc_dtype(napertures).newbyteorder(">")), info))
        detrend_nights(stars, trends, context.config)  # every star of the item at once
        info_rows = []
        for rel, (rows, info) in zip(paths, stars, strict=True):
            header = info.pop("header")
            cards = [c for c in lccards.header_cards(header) if not c["name"].startswith("DETR")]
            lcformat.write_lightcurve(context.project.root / rel, rows,
                                      cards + detrend_cards(header, trends, rows))
            info_rows.append({"projid": group[0], "objectid": info["objectid"], "path": rel,
                              "rjd_min": float(np.nanmin(rows["rjd"])),
                              "rjd_max": float(np.nanmax(rows["rjd"]))})
        return info_rows, lcstats_rows(stars, napertures, gap)

    def record(self, ledger, result: tuple, context: Context) -> None:
        info, stats = result
        ledger.record_lightcurves(columns_of(info), stats)

    def label(self, item: tuple) -> str:
        return f"{'/'.join(item[0])} ({len(item[1])} light curves)"
