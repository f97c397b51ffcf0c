"""Transposition of per-frame measurements into per-star light curves.

Memory is bounded by one partition (``PARTITION_ROWS`` measurements, see
:func:`trex.partitions.row_bytes`), never by the archive:

1. every rank takes a share of the new frames, reads each frame's ``aphot``
   (and ``iphot``) product once and appends the light-curve columns of its
   rows (a few byte runs per row) to star-range partition streams in
   ``REDTEMP/lc/<projid>/<field>/`` (:mod:`trex.partitions`: one shard per
   rank and product kind, staged in a 64 MiB buffer);
2. rank 0 hands the partitions out as ranks finish (:func:`trex.parallel.farm`);
   a rank reads a partition (into arrays reused from partition to partition),
   groups it by star (a stable numpy sort of the star column; each star's
   rows are gathered once, when it is merged) and merges each star's rows
   into its light-curve file (appending to the existing file; rows of a
   frame seen before replace the old ones, so a re-run never duplicates
   rows).  Aperture and subtraction rows of the same frame are joined per
   star, on rows already in cache; each partition's ``lcinfo`` columns go to
   rank 0 as soon as it is done.

Only frames not yet marked ``lightcurves`` done are collected, so adding a
night costs what the night costs.  ``LC/<projid>/<objectid>.fits``, or with
``[lightcurves] subdirs = true`` ``LC/<projid>/<xx>/<objectid>.fits`` where
``xx`` is the CRC32 of the object id modulo 256, in hex (keeps folders of
10^5+ stars small on parallel filesystems).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trex import lcformat
from trex.config import Config
from trex.lcformat import read_lightcurve, to_lightkurve
from trex.lcstats import lcinfo_stats
from trex.partitions import (
    PartitionReader,
    PartitionWriter,
    conform,
    partitions,
    product_dtypes,
    row_bytes,
    stream_dtypes,
)
from trex.products import product_name, read_product
from trex.project import Project, safe_name
from trex.records import columns_of

log = logging.getLogger(__name__)

__all__ = ["read_lightcurve", "to_lightkurve", "transpose", "FrameEntry", "lc_path"]

#: rows per partition (bounds the memory of the sort step)
PARTITION_ROWS = 500_000


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
    names: np.ndarray  # calibrated-frame file names, bytes (lcformat.frame_names)
    nights: np.ndarray  # index into night_names
    night_names: tuple[str, ...]
    rjd: np.ndarray

    @classmethod
    def of(cls, entries: list[FrameEntry]) -> FrameTable:
        entries = sorted(entries, key=lambda e: e.framekey)
        night_names = tuple(sorted({e.night for e in entries}))
        return cls(np.array([e.framekey for e in entries], dtype=np.int64),
                   lcformat.frame_names([Path(e.redpath).name for e in entries]),
                   np.searchsorted(night_names, [e.night for e in entries]),
                   night_names, np.array([e.rjd for e in entries], dtype=np.float64))


def lc_path(project: Project, config: Config, projid: str, objectid: str) -> Path:
    name = f"{safe_name(objectid)}.fits"
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


def merge_star(path: Path, products: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
               frames: FrameTable, info: dict, config: Config) -> np.ndarray:
    """Merge a star's new measurements into its light-curve file; returns all its rows.

    ``products`` maps a product kind to (rows, framekey of each row, index):
    ``rows[index]`` are this star's rows in the order they were written.  The
    last row written of a frame wins (a frame merged twice in one run), as
    does a new row over the file's row of the same frame.
    """
    keys = _unique(np.concatenate([k[index] for _, k, index in products.values()]))
    fresh = np.repeat(_blank(len(config.photometry.apertures), frames.names.dtype.itemsize),
                      len(keys))
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
    old_header = None
    added = np.ones(len(fresh), dtype=bool)
    if path.exists():
        old, old_header = lcformat.read_rows(path)
        keep = ~np.isin(old["framekey"], keys)
        added = ~np.isin(keys, old["framekey"])
        fresh = lcformat.concatenate([old[keep], fresh])
    order = np.lexsort((fresh["framekey"], fresh["rjd"]))
    rows = fresh if np.all(order[1:] > order[:-1]) else np.take(fresh, order)
    night_rows = np.bincount(frames.nights[where], minlength=len(frames.night_names))
    night_added = np.bincount(frames.nights[where][added], minlength=len(frames.night_names))
    header = lcformat.star_cards(info, config) + lcformat.night_cards(
        old_header, night_rows, night_added, frames.night_names, config)
    lcformat.write_lightcurve(path, rows, header)
    return rows


def _star_info(catalog, star: int, projid: str, field: str) -> dict:
    return {"objectid": str(catalog["objectid"][star]), "ra": catalog["ra"][star],
            "dec": catalog["dec"][star], "mag": catalog["mag"][star], "projid": projid,
            "field": field}


def _scatter(comm, project: Project, config: Config, entries: list[FrameEntry]) -> None:
    """Step 1: each rank appends its frames' product rows to the partition streams."""
    from trex.parallel import split

    napertures = len(config.photometry.apertures)
    dtypes = product_dtypes(napertures)
    limit = min(64 << 20, PARTITION_ROWS * row_bytes(napertures))
    listings: dict[str, set[str]] = {}  # folder -> its file names (a listing, not a stat each)
    per_group: dict[tuple[str, str], int] = {}
    for e in entries:
        per_group[(e.projid, e.field)] = per_group.get((e.projid, e.field), 0) + 1
    writers = {}
    for i in split(len(entries), comm.size, comm.rank):
        entry = entries[i]
        key = (entry.projid, entry.field)
        if key not in writers:
            folder = project.redtemp / "lc" / safe_name(entry.projid) / safe_name(entry.field)
            writers[key] = PartitionWriter(folder, max(1, PARTITION_ROWS // per_group[key]),
                                           comm.rank, napertures, limit)
        folder, redname = os.path.split(os.path.join(project.root, entry.redpath))
        if folder not in listings:
            listings[folder] = set(os.listdir(folder)) if os.path.isdir(folder) else set()
        for kind, dtype in dtypes.items():
            name = product_name(redname, kind)
            if name in listings[folder]:
                rows = read_product(os.path.join(folder, name))
                writers[key].add(kind, entry.framekey, conform(rows, dtype))
    for writer in writers.values():
        writer.flush()


def _merge_partition(project: Project, config: Config, reader: PartitionReader,
                     task: tuple[str, str, str], catalog,
                     frames: FrameTable) -> dict[str, np.ndarray]:
    """Step 2 for one partition ``task`` = (projid, field, name): read its streams
    grouped by star, merge each star; returns the stars' ``lcinfo`` columns."""
    projid, field, name = task
    folder = project.redtemp / "lc" / safe_name(projid) / safe_name(field)
    streams = {kind: reader.read(folder, name, kind, dtype)
               for kind, dtype in stream_dtypes(len(config.photometry.apertures)).items()}
    grouped = {kind: rows["star"][order] for kind, (rows, _, order) in streams.items()}
    stars = _unique(np.concatenate(list(grouped.values())))
    spans = {kind: (np.searchsorted(star, stars, "left"), np.searchsorted(star, stars, "right"))
             for kind, star in grouped.items()}
    out = []
    for k, star in enumerate(stars.tolist()):
        info = _star_info(catalog, star, projid, field)
        path = lc_path(project, config, projid, info["objectid"])
        products = {kind: (rows, keys, order[spans[kind][0][k]:spans[kind][1][k]])
                    for kind, (rows, keys, order) in streams.items()}
        merged = merge_star(path, products, frames, info, config)
        out.append({"projid": projid, "objectid": info["objectid"],
                    "path": str(path.relative_to(project.root)),
                    **lcinfo_stats(merged, ("arm_000", "aim_000"))})
    return columns_of(out)


def transpose(comm, project: Project, config: Config, entries: list[FrameEntry],
              catalogs: dict, consume: Callable[[dict[str, np.ndarray]], None] | None = None
              ) -> int:
    """Merge the frames ``entries`` into the light curves (every rank calls this).

    Partitions are handed out to the ranks as they finish (:func:`trex.parallel.farm`);
    rank 0 passes each partition's ``lcinfo`` columns (projid, objectid, path,
    nobs, rjd_min, rjd_max, median_mag, mad, rms) to ``consume`` as they arrive,
    so no rank holds a row per star of the whole project.  Returns the number
    of light curves written, on rank 0 (0 elsewhere).
    """
    from trex.parallel import farm

    scratch = project.redtemp / "lc"
    if comm.rank == 0 and scratch.exists():
        shutil.rmtree(scratch)  # leftovers of a killed run
    comm.barrier()
    _scatter(comm, project, config, entries)
    comm.barrier()
    tasks = []
    if comm.rank == 0:
        groups = sorted({(e.projid, e.field) for e in entries})
        tasks = [(p, f, name) for p, f in groups
                 for name in partitions(scratch / safe_name(p) / safe_name(f))]
    frames, reader = FrameTable.of(entries), PartitionReader()
    written = 0

    def work(batch: list) -> list[dict[str, np.ndarray]]:
        return [_merge_partition(project, config, reader, task, catalogs[task[1]], frames)
                for task in batch]

    def collect(results: list[dict[str, np.ndarray]]) -> None:
        nonlocal written
        for columns in results:
            written += len(columns.get("objectid", ()))
            if consume is not None:
                consume(columns)

    farm(comm, tasks, work, collect, batch_size=1)
    if comm.rank == 0:
        shutil.rmtree(scratch, ignore_errors=True)
        log.info("light curves: %d stars updated from %d frames", written, len(entries))
    return written
