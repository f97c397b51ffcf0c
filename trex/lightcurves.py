"""Transposition of per-frame measurements into per-star light curves (three phases).

Memory is bounded by one partition (``[lightcurves] partition_rows``
measurements, see :func:`trex.partitions.row_bytes`) and one chunk of light
curves being detrended (``[detrend] chunk_rows``), never by the archive:

1. :class:`Scatter`: the frames not yet in the light curves are handed out;
   each rank reads each frame's ``aphot`` (and ``iphot``) product once and
   appends the light-curve columns of its rows (a few byte runs per row) to
   star-range partition streams in ``REDTEMP/lc/<projid>/<field>/``
   (:mod:`trex.partitions`, staged in a 64 MiB buffer per rank; the TFA
   template stars' rows are copied aside as well);
2. :class:`Trends` (when detrending): per (projid, field), the template stars'
   light curves (their files plus their new rows) give the trend of every
   night that receives new frames (:func:`trex.detrend.night_trend`);
3. :class:`Merge`: the partitions are handed out; a rank reads one (into
   arrays reused from partition to partition), groups it by star (a stable
   numpy sort; each star's rows are gathered once, when merged), merges each
   star's rows into its light curve (rows of a frame seen before replace the
   old ones, so a re-run never duplicates rows), detrends the nights that
   received rows (:func:`trex.detrend.detrend_nights`) and writes each file
   once.  Each partition's ``lcinfo`` and ``lcstats`` rows go to rank 0 as
   soon as it is done; the frames are marked merged when every partition is.

Only frames not yet marked ``lightcurves`` done are collected, so adding a
night costs what the night costs.  ``LC/<projid>/<objectid>.fits``, or with
``[lightcurves] subdirs = true`` ``LC/<projid>/<xx>/<objectid>.fits`` where
``xx`` is the CRC32 of the object id modulo 256, in hex (keeps folders of
10^5+ stars small on parallel filesystems).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import socket
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trex import lccards, lcformat
from trex.catalog import star_info
from trex.config import Config
from trex.detrend import (
    NightTrend,
    detrend_cards,
    detrend_nights,
    night_intervals,
    night_trend,
    position,
)
from trex.frame import Context
from trex.lcformat import read_lightcurve, to_lightkurve
from trex.lcstats import columns_of, lcstats_rows
from trex.partitions import (
    TEMPLATES,
    PartitionReader,
    PartitionWriter,
    conform,
    partition_name,
    partitions,
    product_dtypes,
    row_bytes,
    stream_dtypes,
)
from trex.phase import Phase
from trex.products import product_name, read_product
from trex.project import Project, lc_filename, safe_name

log = logging.getLogger(__name__)

__all__ = ["read_lightcurve", "to_lightkurve", "FrameEntry", "lc_path", "Scatter", "Trends",
           "Merge"]


@dataclass(frozen=True)
class FrameEntry:
    """A frame to transpose: where its products are and what to call it."""

    framekey: int
    redpath: str  # relative to the project root
    night: str
    projid: str
    field: str
    rjd: float = float("nan")  # JD - 2400000 of the frame (for rows without aphot)


@dataclass(frozen=True)
class FrameTable:
    """Name, night and rjd of the frames being merged, looked up by framekey."""

    keys: np.ndarray  # framekeys, sorted
    names: np.ndarray  # calibrated-frame file names (bytes, as wide as the longest)
    nights: np.ndarray  # index into night_names
    night_names: tuple[str, ...]
    rjd: np.ndarray
    projids: np.ndarray  # str
    fields: np.ndarray   # str

    @classmethod
    def of(cls, entries: list[FrameEntry]) -> FrameTable:
        entries = sorted(entries, key=lambda e: e.framekey)
        night_names = tuple(sorted({e.night for e in entries}))
        return cls(np.array([e.framekey for e in entries], dtype=np.int64),
                   lcformat.frame_names([Path(e.redpath).name for e in entries]),
                   np.searchsorted(night_names, [e.night for e in entries]).astype(np.int64),
                   night_names, np.array([e.rjd for e in entries], dtype=np.float64),
                   np.array([e.projid for e in entries], dtype=str),
                   np.array([e.field for e in entries], dtype=str))


def lc_path(project: Project, config: Config, projid: str, objectid: str) -> Path:
    """The light-curve file of ``objectid``: ``LC/<projid>/[<xx>/]<name>``
    (:func:`trex.project.lc_filename`)."""
    name = lc_filename(objectid)
    folder = project.lc(projid)
    if config.lightcurves.subdirs:
        folder = folder / f"{zlib.crc32(objectid.encode()) % 256:02x}"
    return folder / name


@functools.lru_cache(maxsize=16)
def _shared(product: np.dtype, lc: np.dtype) -> tuple[str, ...]:
    """Light-curve columns a product supplies."""
    return tuple(n for n in product.names if n in lc.names and n != "framekey")


def _unique(values: np.ndarray) -> np.ndarray:
    """Sorted unique values (by sorting: numpy's hash-based ``np.unique`` is slower here)."""
    values = np.sort(values)
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values


@functools.lru_cache(maxsize=8)
def _blank(napertures: int, frame_width: int) -> np.ndarray:
    """One missing light-curve row, big-endian: the rows are built in the byte order
    of the FITS file, so writing them needs no further copy."""
    blank = lcformat.empty_rows(1, napertures, frame_width)
    return blank.astype(blank.dtype.newbyteorder(">"))


def new_rows(products: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], frames: FrameTable,
             napertures: int) -> np.ndarray:
    """A star's light-curve rows of the frames being merged, in time order (big-endian).

    ``products`` maps a product kind to (rows, framekey of each row, index):
    ``rows[index]`` are this star's rows in the order they were written; the last
    row written of a frame wins (a frame scattered twice in one run)."""
    keys = _unique(np.concatenate([k[index] for _, k, index in products.values()]))
    fresh = np.repeat(_blank(napertures, frames.names.dtype.itemsize), len(keys))
    fresh["framekey"] = keys
    for rows, rowkeys, index in products.values():
        if not len(index):
            continue
        _, last = np.unique(rowkeys[index[::-1]], return_index=True)
        pick = index[len(index) - 1 - last]  # by framekey, the last written of each
        mine = np.take(rows, pick)
        at = slice(None) if len(pick) == len(keys) else np.searchsorted(keys, rowkeys[pick])
        for name in _shared(rows.dtype, fresh.dtype):
            fresh[name][at] = mine[name]
    where = np.searchsorted(frames.keys, keys)
    fresh["frame"] = frames.names[where]
    missing = np.isnan(fresh["rjd"])  # a star measured on the difference image only
    fresh["rjd"][missing] = frames.rjd[where][missing]
    return _time_order(fresh)


def _time_order(rows: np.ndarray) -> np.ndarray:
    order = np.lexsort((rows["framekey"], rows["rjd"]))
    return rows if np.all(order[1:] > order[:-1]) else np.take(rows, order)


def merged_rows(path: Path, fresh: np.ndarray) -> tuple[np.ndarray, object, np.ndarray]:
    """The star's light curve in ``path`` with the rows ``fresh`` merged in (a new row
    replaces the file's row of the same frame); returns the rows (time order), the
    file's header (None for a new star) and, per row of ``fresh``, whether its frame
    was not in the file before."""
    if not path.exists():
        return fresh, None, np.ones(len(fresh), dtype=bool)
    old, old_header = lcformat.read_rows(path)
    keep = ~np.isin(old["framekey"], fresh["framekey"])
    added = ~np.isin(fresh["framekey"], old["framekey"])
    return _time_order(lcformat.concatenate([old[keep], fresh])), old_header, added


def _star_info(catalog, star: int, projid: str, field: str) -> dict:
    """What the header and detrending need of a star (catalog values; the position is
    set from its rows)."""
    return {**star_info(catalog, star), "projid": projid, "field": field,
            "x": np.nan, "y": np.nan}


def _scratch(project: Project, projid: str, field: str) -> Path:
    return project.redtemp / "lc" / safe_name(projid) / safe_name(field)


class Scatter(Phase):
    """Step 1: the new frames' product rows into the partition streams (one item per frame)."""

    name = "light curves: scatter"

    def __init__(self):
        self.entries: list[FrameEntry] = []      # rank 0: the frames being merged
        self.writers: dict[tuple[str, str], PartitionWriter] = {}  # every rank
        self.listings: dict[str, set[str]] = {}  # folder -> its file names
        self.shard = safe_name(f"{socket.gethostname()}-{os.getpid()}")

    def plan(self, ledger, context: Context) -> list[tuple[FrameEntry, int]]:
        self.entries = [FrameEntry(int(k), r, n, p, f, float("nan") if jd is None else jd - 2400000.0)
                        for k, r, n, p, f, jd in ledger.read.frames_to_merge()
                        if f in context.catalogs and context.of_nights(n)]
        scratch = context.project.redtemp / "lc"
        if scratch.exists():
            shutil.rmtree(scratch)  # leftovers of a killed run
        per_group: dict[tuple[str, str], int] = {}
        for e in self.entries:
            per_group[(e.projid, e.field)] = per_group.get((e.projid, e.field), 0) + 1
        rows = context.config.lightcurves.partition_rows
        per_part = {g: max(1, rows // n) for g, n in per_group.items()}
        if context.ranks > 1:  # at least four partitions per rank, so that the merge is shared
            per_part = {g: min(n, -(-len(context.catalogs[g[1]]) // (4 * context.ranks)))
                        for g, n in per_part.items()}
        return [(e, max(1, per_part[(e.projid, e.field)])) for e in self.entries]

    def work(self, item: tuple[FrameEntry, int], context: Context) -> int:
        entry, stars_per_part = item
        napertures = len(context.config.photometry.apertures)
        key = (entry.projid, entry.field)
        if key not in self.writers:
            limit = min(64 << 20, context.config.lightcurves.partition_rows * row_bytes(napertures))
            templates = context.templates.get(key)
            self.writers[key] = PartitionWriter(
                _scratch(context.project, *key), stars_per_part, self.shard, napertures, limit,
                extra=templates.stars() if templates is not None else None)
        folder, redname = os.path.split(os.path.join(context.project.root, entry.redpath))
        if folder not in self.listings:
            self.listings[folder] = set(os.listdir(folder)) if os.path.isdir(folder) else set()
        for kind, dtype in product_dtypes(napertures).items():
            name = product_name(redname, kind)
            if name in self.listings[folder]:
                rows = read_product(os.path.join(folder, name))
                self.writers[key].add(kind, entry.framekey, conform(rows, dtype))
        return entry.framekey

    def close(self, context: Context) -> None:
        for writer in self.writers.values():
            writer.flush()
        self.writers, self.listings = {}, {}

    def update(self, ledger, context: Context) -> Context:
        return dataclasses.replace(context, frames=FrameTable.of(self.entries))

    def label(self, item: tuple[FrameEntry, int]) -> str:
        return item[0].redpath


def _read_stars(reader: PartitionReader, folder: Path, name: str, napertures: int,
                framekeys: np.ndarray | None = None):
    """A partition's streams (only the rows of ``framekeys`` when given) and, per star,
    the span of its rows in each kind's order."""
    streams = {kind: reader.read(folder, name, kind, dtype, framekeys)
               for kind, dtype in stream_dtypes(napertures).items()}
    grouped = {kind: rows["star"][order] for kind, (rows, _, order) in streams.items()}
    stars = _unique(np.concatenate(list(grouped.values())))
    spans = {kind: (np.searchsorted(star, stars, "left"), np.searchsorted(star, stars, "right"))
             for kind, star in grouped.items()}
    return streams, stars, spans


def _products_of(streams, spans, k: int) -> dict:
    return {kind: (rows, keys, order[spans[kind][0][k]:spans[kind][1][k]])
            for kind, (rows, keys, order) in streams.items()}


class Trends(Phase):
    """Step 2: per (projid, field) with templates, the trend of every night that receives
    new frames: the night's frame grid (its frames merged before and the new ones),
    and the templates' light curves on it from their new rows, plus their files' rows
    only when the night had frames before (a new night reads no file).  The templates'
    partition is read one night's frames at a time, so memory holds one night's rows
    whatever the number of frames in the run."""

    name = "light curves: night trends"
    batch = 1

    def __init__(self):
        self.found: dict[tuple[str, str], list[NightTrend]] = {}

    def plan(self, ledger, context: Context) -> list[tuple]:
        frames = context.frames
        if frames is None or not len(frames.keys):
            return []
        gap = context.config.detrend.night_gap
        items = []
        for group in sorted(set(zip(frames.projids.tolist(), frames.fields.tolist()))):
            if group not in context.templates:
                continue
            mine = (frames.projids == group[0]) & (frames.fields == group[1])
            new_keys, new_rjd = frames.keys[mine], frames.rjd[mine]
            # frames merged before within a day of the new ones (a night is shorter)
            old = ledger.read.merged_frames_between(*group, float(np.nanmin(new_rjd)) - 1.0,
                                                    float(np.nanmax(new_rjd)) + 1.0)
            old_keys = np.array([k for k, _ in old], dtype=np.int64)
            old_rjd = np.array([t for _, t in old], dtype=np.float64)
            keys, times = np.r_[old_keys, new_keys], np.r_[old_rjd, new_rjd]
            nights = []
            for interval in night_intervals(times, gap):
                inside = (times >= interval[0]) & (times <= interval[1])
                if not np.any((new_rjd >= interval[0]) & (new_rjd <= interval[1])):
                    continue  # a night this run adds nothing to
                nights.append((tuple(interval), keys[inside], times[inside],
                               bool(np.isin(keys[inside], old_keys).any())))
            items.append((group, tuple(nights)))
        return items

    def work(self, item: tuple, context: Context) -> tuple:
        (projid, field), nights = item
        config, project, frames = context.config, context.project, context.frames
        napertures = len(config.photometry.apertures)
        catalog, templates = context.catalogs[field], context.templates[(projid, field)]
        reader, trends, infos = PartitionReader(), [], {}
        for interval, keys, times, reread in nights:  # one night's rows in memory at a time
            streams, stars, spans = _read_stars(reader, _scratch(project, projid, field),
                                                partition_name(TEMPLATES), napertures, keys)
            present = {star: k for k, star in enumerate(stars.tolist())}
            # a template without new rows this night may have rows merged before
            wanted = set(templates.stars().tolist()) if reread else set()
            night = {}
            for star in sorted(wanted | set(present)):
                if star not in infos:  # once per star, not per night
                    infos[star] = _star_info(catalog, star, projid, field)
                info, k = infos[star], present.get(star)
                products = (_products_of(streams, spans, k) if k is not None else
                            {kind: (r, rk, order[:0]) for kind, (r, rk, order) in streams.items()})
                rows = new_rows(products, frames, napertures)
                if reread:  # the night had frames merged before: the file's rows too
                    rows = merged_rows(lc_path(project, config, projid, info["objectid"]), rows)[0]
                inside = (rows["rjd"] >= interval[0]) & (rows["rjd"] <= interval[1])
                night[info["objectid"]] = (rows[inside], info["ra"], info["dec"])
            trends.append(night_trend(interval, keys, times, templates, night, config))
        return (projid, field), trends

    def record(self, ledger, result: tuple, context: Context) -> None:
        self.found[result[0]] = result[1]

    def update(self, ledger, context: Context) -> Context:
        return dataclasses.replace(context, trends={**context.trends, **self.found})

    def label(self, item: tuple) -> str:
        return "/".join(item[0])


@dataclass
class _Star:
    """A light curve on its way to its file."""

    path: Path
    rows: np.ndarray          # what is written: the new rows (append) or the whole curve
    fresh: np.ndarray         # the new rows
    info: dict
    old_header: object        # the file's table header (None: a new star)
    added: np.ndarray         # per new row: its frame was not in the file before
    layout: object            # the file's layout when the rows are appended, else None


class Merge(Phase):
    """Step 3: each partition's stars merged into their files, detrended, written once."""

    name = "light curves: merge"
    batch = 1

    def __init__(self, detrend: bool):
        self.detrend = detrend
        self.reader = PartitionReader()
        self.files = 0

    def plan(self, ledger, context: Context) -> list[tuple[str, str, str]]:
        frames = context.frames
        if frames is None:
            return []
        groups = sorted(set(zip(frames.projids.tolist(), frames.fields.tolist())))
        return [(p, f, name) for p, f in groups for name in partitions(_scratch(context.project, p, f))]

    def work(self, task: tuple[str, str, str], context: Context) -> dict:
        projid, field, name = task
        config, project, frames = context.config, context.project, context.frames
        napertures = len(config.photometry.apertures)
        catalog = context.catalogs[field]
        streams, stars, spans = _read_stars(self.reader, _scratch(project, projid, field), name,
                                            napertures)
        trends = context.trends.get((projid, field), []) if self.detrend else []
        chunk, size, out = [], 0, {"added": [], "replaced": []}
        for k, star in enumerate(stars.tolist()):
            fresh = new_rows(_products_of(streams, spans, k), frames, napertures)
            info = _star_info(catalog, star, projid, field)
            chunk.append(self._prepare(lc_path(project, config, projid, info["objectid"]),
                                       fresh, info, config))
            size += len(chunk[-1].rows)
            if size >= config.detrend.chunk_rows:
                self._write(chunk, trends, frames, config, project, out)
                chunk, size = [], 0
        self._write(chunk, trends, frames, config, project, out)
        return {kind: (columns_of([i for infos, _ in parts for i in infos]),
                       _concat([st for _, st in parts])) for kind, parts in out.items()}

    @staticmethod
    def _prepare(path: Path, fresh: np.ndarray, info: dict, config: Config) -> _Star:
        """A star to write: appended in place when its new rows are whole nights after
        the file's last row (read: the file's headers only), else merged with the file."""
        layout = lcformat.read_layout(path) if path.exists() else None
        if (layout is not None and len(fresh) and "RJDSTOP" in layout.header
                and fresh["rjd"][0] - layout.header["RJDSTOP"] > config.detrend.night_gap):
            return _Star(path, fresh, fresh, info, layout.header, np.ones(len(fresh), bool), layout)
        rows, old_header, added = merged_rows(path, fresh)
        return _Star(path, rows, fresh, info, old_header, added, None)

    @staticmethod
    def _write(chunk: list[_Star], trends: list, frames: FrameTable, config: Config,
               project: Project, out: dict) -> None:
        """Detrend a chunk of light curves (their nights that receive rows) and write each
        file once: the new rows appended, or the whole file.  Adds to ``out[kind]`` the
        chunk's (lcinfo rows, lcstats columns) of the stars appended or replaced."""
        if trends:
            detrend_nights([(star.rows, star.info) for star in chunk], trends, config)
        napertures, gap = len(config.photometry.apertures), config.detrend.night_gap
        written = {"added": [], "replaced": []}  # (lcinfo row, (rows written, star info))
        for star in chunk:
            header = (lccards.star_cards(star.info, config)
                      + lccards.night_cards(star.old_header, *_night_counts(
                          frames, star.fresh["framekey"], star.added), config)
                      + detrend_cards(star.old_header, trends, star.rows))
            rows, kind = star.rows, "added"
            if star.layout is None or not lcformat.append_lightcurve(star.path, star.layout,
                                                                     rows, header):
                if star.layout is not None:  # no room to append: the whole file
                    rows = merged_rows(star.path, star.rows)[0]
                lcformat.write_lightcurve(star.path, rows, header)
                kind = "replaced"
            star.info["x"], star.info["y"] = position(rows, gap)  # the first night's (kept)
            info = {"projid": star.info["projid"], "objectid": star.info["objectid"],
                    "path": str(star.path.relative_to(project.root)),
                    "rjd_min": float(np.nanmin(rows["rjd"])), "rjd_max": float(np.nanmax(rows["rjd"]))}
            written[kind].append((info, (rows, star.info)))
        for kind, done in written.items():
            if done:
                out[kind].append(([i for i, _ in done],
                                  lcstats_rows([s for _, s in done], napertures, gap)))

    def record(self, ledger, result: dict, context: Context) -> None:
        for kind, (info, stats) in result.items():
            ledger.record_lightcurves(info, stats, added=kind == "added")
            self.files += len(info.get("objectid", ()))

    def update(self, ledger, context: Context) -> Context:
        if context.frames is not None and len(context.frames.keys):
            ledger.mark_merged(context.frames.keys.tolist())
            shutil.rmtree(context.project.redtemp / "lc", ignore_errors=True)
            log.info("light curves: %d stars updated from %d frames", self.files,
                     len(context.frames.keys))
        return dataclasses.replace(context, frames=None, trends={})

    def label(self, task: tuple[str, str, str]) -> str:
        return "/".join(task)

    def summary(self, done: int, failed: int) -> str:
        return f"{self.files} light curves written" + (f" ({failed} partitions failed)"
                                                        if failed else "")


def _night_counts(frames: FrameTable, keys: np.ndarray, added: np.ndarray):
    """Per night of the frames being merged: the star's new rows (frames ``keys``), and
    those whose frame was not in its file before (for the NIGHTnnn cards)."""
    nights = frames.nights[np.searchsorted(frames.keys, keys)]
    return (np.bincount(nights, minlength=len(frames.night_names)),
            np.bincount(nights[added], minlength=len(frames.night_names)), frames.night_names)


def _concat(parts: list[dict]) -> dict:
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
