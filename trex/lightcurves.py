"""Transposition of per-frame measurements into per-star light curves.

Memory is bounded by one frame plus one partition, never by the archive:

1. every rank takes a share of the new frames, reads each frame's ``aphot``
   (and ``iphot``) product once and appends its rows to star-range partition
   files in ``REDTEMP/lc/<projid>/<field>/`` (one shard per rank);
2. every rank takes a share of the partitions, sorts each one by (star,
   time) with numpy and merges each star's rows into its light-curve file
   (appending to the existing file; rows of a frame seen before replace the
   old ones, so a re-run never duplicates rows).

Only frames not yet marked ``lightcurves`` done are collected, so adding a
night costs what the night costs.  ``LC/<projid>/<objectid>.fits``, or with
``[lightcurves] subdirs = true`` ``LC/<projid>/<xx>/<objectid>.fits`` where
``xx`` is the CRC32 of the object id modulo 256, in hex (keeps folders of
10^5+ stars small on parallel filesystems).
"""

from __future__ import annotations

import functools
import logging
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trex import __version__, lcformat
from trex.config import Config
from trex.lcformat import read_lightcurve
from trex.products import load_product
from trex.project import Project, safe_name

log = logging.getLogger(__name__)

__all__ = ["read_lightcurve", "transpose", "FrameEntry", "lc_path"]

#: rows per partition (bounds the memory of the sort step)
PARTITION_ROWS = 2_000_000


@dataclass(frozen=True)
class FrameEntry:
    """A frame to transpose: where its products are and what to call it."""

    framekey: int
    redpath: str  # relative to the project root
    night: str
    projid: str
    field: str


@functools.lru_cache(maxsize=8)
def part_dtype(napertures: int) -> np.dtype:
    """Partition row: the star's catalog index, the frame, and the light-curve
    columns that come from the per-frame products (the frame name, the night and
    the detrended columns are added when the star's file is written)."""
    lc = lcformat.lc_dtype(napertures)
    later = {"framekey", "frame"} | {n for n in lc.names if n[:3] in ("aep", "atf", "iep", "itf")}
    return np.dtype([("star", "i8"), ("framekey", "i8")]
                    + [(n, lc[n]) for n in lc.names if n not in later])


@functools.lru_cache(maxsize=8)
def _blank(napertures: int) -> np.ndarray:
    """One partition row with every value missing (NaN, flag MISSING)."""
    blank = np.zeros(1, dtype=part_dtype(napertures))
    empty = lcformat.empty_rows(1, napertures)
    for name in blank.dtype.names[2:]:
        blank[name] = empty[name]
    return blank


def frame_rows(root: Path, entry: FrameEntry, napertures: int) -> np.ndarray | None:
    """Partition rows of one frame (aperture and subtraction photometry joined)."""
    redpath = root / entry.redpath
    aphot = load_product(redpath, "aphot")
    iphot = load_product(redpath, "iphot")
    if aphot is None and iphot is None:
        return None
    stars = np.union1d(aphot["star"] if aphot is not None else [],
                       iphot["star"] if iphot is not None else []).astype(np.int64)
    rows = np.empty(len(stars), dtype=part_dtype(napertures))
    rows[:] = _blank(napertures)
    rows["star"] = stars
    rows["framekey"] = entry.framekey
    for product in (aphot, iphot):
        if product is None:
            continue
        at = np.searchsorted(stars, product["star"])
        for name in product.dtype.names:
            if name in rows.dtype.names and name not in ("star", "framekey"):
                rows[name][at] = product[name]
    return rows


class PartitionWriter:
    """Appends rows to star-range partition shards of one (projid, field)."""

    def __init__(self, folder: Path, stars_per_part: int, rank: int):
        self.folder, self.stars_per_part, self.rank = folder, stars_per_part, rank
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, rows: np.ndarray) -> None:
        part = rows["star"] // self.stars_per_part
        if part.min() == part.max():  # the usual case: the frame fits one partition
            with open(self.folder / f"p{int(part[0]):07d}.r{self.rank:05d}.bin", "ab") as fh:
                rows.tofile(fh)
            return
        order = np.argsort(part, kind="stable")
        part, rows = part[order], rows[order]
        starts = np.flatnonzero(np.diff(part, prepend=-1))
        for chunk in np.split(np.arange(len(rows)), starts[1:]):
            p = int(part[chunk[0]])
            with open(self.folder / f"p{p:07d}.r{self.rank:05d}.bin", "ab") as fh:
                rows[chunk].tofile(fh)


def partitions(folder: Path) -> list[str]:
    """Partition names (``p0000012``) present in a folder."""
    return sorted({p.name.split(".")[0] for p in folder.glob("p*.bin")})


def read_partition(folder: Path, name: str, dtype: np.dtype) -> np.ndarray:
    """Every shard of a partition, grouped by star (a stable sort: each star's rows
    stay in the order they were written; :func:`merge_star` orders them by time
    and keeps the last row written of a frame)."""
    raw = np.dtype((np.void, dtype.itemsize))  # whole rows as opaque bytes: fast to gather
    rows = np.concatenate([np.fromfile(p, dtype=raw) for p in sorted(folder.glob(f"{name}.*"))])
    order = np.argsort(rows.view(dtype)["star"], kind="stable")
    return rows[order].view(dtype)


def lc_path(project: Project, config: Config, projid: str, objectid: str) -> Path:
    name = f"{safe_name(objectid)}.fits"
    folder = project.lc(projid)
    if config.lightcurves.subdirs:
        folder = folder / f"{zlib.crc32(objectid.encode()) % 256:02x}"
    return folder / name


def _night_cards(old_header, nights_of_rows: np.ndarray, added: np.ndarray,
                 config: Config) -> list[dict]:
    """NIGHTnnn cards: per contributing night its row count, trex version and config hash.

    ``added`` marks the new rows whose frame was not in the file before.
    """
    nights: dict[str, tuple[int, str]] = {}
    if old_header is not None:
        for rec in old_header.records():
            if rec["name"].startswith("NIGHT") and rec["name"][5:].isdigit():
                night, count, text = str(rec["value"]).split(" ", 2)
                nights[night] = (int(count.split("=")[1]), text)
    names, counts = np.unique(nights_of_rows[added], return_counts=True)
    touched = set(np.unique(nights_of_rows).astype(str))
    for night in touched:
        before = nights.get(night, (0, ""))[0]
        extra = int(counts[names.astype(str) == night].sum())
        nights[night] = (before + extra, f"trex={__version__} config={config.sha}")
    return [{"name": f"NIGHT{i:03d}", "value": f"{night} rows={n} {text}",
             "comment": "night: rows, trex version, config hash"}
            for i, (night, (n, text)) in enumerate(sorted(nights.items()))]


def merge_star(path: Path, new_rows: np.ndarray, frames: np.ndarray, nights: np.ndarray,
               info: dict, config: Config) -> np.ndarray:
    """Merge a star's new rows (partition dtype) into its light-curve file; returns all rows.

    ``frames`` and ``nights`` are the calibrated-frame name and night of each new row.
    """
    napertures = len(config.photometry.apertures)
    # the last row written of a frame wins (a frame merged twice in one run)
    _, last = np.unique(new_rows["framekey"][::-1], return_index=True)
    keep_new = len(new_rows) - 1 - last
    new_rows, frames, nights = new_rows[keep_new], frames[keep_new], nights[keep_new]
    fresh = lcformat.empty_rows(len(new_rows), napertures)
    for name in new_rows.dtype.names[1:]:
        fresh[name] = new_rows[name]
    fresh["frame"] = frames
    old_header = None
    added = np.ones(len(new_rows), dtype=bool)
    if path.exists():
        old, old_header = lcformat.read_rows(path)
        keep = ~np.isin(old["framekey"], fresh["framekey"])
        added = ~np.isin(fresh["framekey"], old["framekey"])
        fresh = np.concatenate([old[keep].astype(fresh.dtype), fresh])
    rows = fresh[np.lexsort((fresh["framekey"], fresh["rjd"]))]
    header = _header(info, rows, config) + _night_cards(old_header, nights, added, config)
    lcformat.write_lightcurve(path, rows, header)
    return rows


def _header(info: dict, rows: np.ndarray, config: Config) -> list[dict]:
    cards = [
        {"name": "OBJECTID", "value": info["objectid"]},
        {"name": "RA", "value": float(info["ra"]), "comment": "deg, ICRS, catalog epoch"},
        {"name": "DEC", "value": float(info["dec"]), "comment": "deg, ICRS, catalog epoch"},
        {"name": "MAG", "value": float(info["mag"]), "comment": "catalog magnitude"},
        {"name": "PROJID", "value": info["projid"]},
        {"name": "FIELD", "value": info["field"]},
        {"name": "ZP", "value": config.camera.zeropoint, "comment": "magnitude zero point"},
        {"name": "TIMESYS", "value": "TDB", "comment": "time scale of the bjd column"},
        {"name": "BJDREFI", "value": 0, "comment": "bjd column is the full BJD_TDB"},
        {"name": "BJDREFF", "value": 0.0},
        {"name": "TIMEUNIT", "value": "d"},
        {"name": "NROWS", "value": len(rows), "comment": "frames in this light curve"},
        {"name": "RJDSTART", "value": float(rows["rjd"].min()), "comment": "JD - 2400000, UTC"},
        {"name": "RJDSTOP", "value": float(rows["rjd"].max()), "comment": "JD - 2400000, UTC"},
        {"name": "TREXVER", "value": __version__, "comment": "trex version"},
        {"name": "CONFSHA", "value": config.sha, "comment": "configuration hash"},
    ]
    for i, spec in enumerate(config.photometry.apertures):
        cards.append({"name": f"APER_{i:03d}", "value": float(spec.split(":")[0]),
                      "comment": "aperture radius, px"})
    return cards


def lc_stats(rows: np.ndarray) -> dict:
    """nobs, time span and robust scatter of the best available magnitude column."""
    mags = rows["arm_000"] if np.isfinite(rows["arm_000"]).any() else rows["aim_000"]
    good = mags[np.isfinite(mags)]
    stats = {"nobs": int(len(good)), "rjd_min": float(rows["rjd"].min()),
             "rjd_max": float(rows["rjd"].max()), "median_mag": None, "mad": None, "rms": None}
    if len(good):
        median = float(np.median(good))
        stats.update(median_mag=median, mad=float(np.median(np.abs(good - median))),
                     rms=float(np.std(good)))
    return stats


def _star_info(catalog, star: int, projid: str, field: str) -> dict:
    return {"objectid": str(catalog["objectid"][star]), "ra": catalog["ra"][star],
            "dec": catalog["dec"][star], "mag": catalog["mag"][star], "projid": projid,
            "field": field}


def _scatter(comm, project: Project, config: Config, entries: list[FrameEntry]) -> None:
    """Step 1: each rank appends its frames' rows to the partition shards."""
    from trex.parallel import split

    napertures = len(config.photometry.apertures)
    per_group: dict[tuple[str, str], int] = {}
    for e in entries:
        per_group[(e.projid, e.field)] = per_group.get((e.projid, e.field), 0) + 1
    writers = {}
    for i in split(len(entries), comm.size, comm.rank):
        entry = entries[i]
        rows = frame_rows(project.root, entry, napertures)
        if rows is None:
            continue
        key = (entry.projid, entry.field)
        if key not in writers:
            folder = project.redtemp / "lc" / safe_name(entry.projid) / safe_name(entry.field)
            writers[key] = PartitionWriter(folder, max(1, PARTITION_ROWS // per_group[key]),
                                           comm.rank)
        writers[key].add(rows)


def _merge_partition(project: Project, config: Config, projid: str, field: str, name: str,
                     catalog, frames: dict[int, tuple[str, str]]) -> list[dict]:
    """Step 2 for one partition: sort, then merge each star into its file.

    ``frames`` maps a framekey to (calibrated-frame name, night)."""
    napertures = len(config.photometry.apertures)
    folder = project.redtemp / "lc" / safe_name(projid) / safe_name(field)
    rows = read_partition(folder, name, part_dtype(napertures))
    keys = np.array(sorted(frames), dtype=np.int64)
    at = np.searchsorted(keys, rows["framekey"])
    names = np.array([frames[k][0] for k in keys.tolist()], dtype="S40")[at]
    nights = np.array([frames[k][1] for k in keys.tolist()])[at]
    starts = np.flatnonzero(np.diff(rows["star"], prepend=-1))
    out = []
    for lo, hi in zip(starts, [*starts[1:], len(rows)]):
        info = _star_info(catalog, int(rows["star"][lo]), projid, field)
        path = lc_path(project, config, projid, info["objectid"])
        merged = merge_star(path, rows[lo:hi], names[lo:hi], nights[lo:hi], info, config)
        out.append({"projid": projid, "objectid": info["objectid"],
                    "path": str(path.relative_to(project.root)), **lc_stats(merged)})
    return out


def transpose(comm, project: Project, config: Config, entries: list[FrameEntry],
              catalogs: dict) -> list[dict]:
    """Merge the frames ``entries`` into the light curves (every rank calls this).

    Returns the ``lcinfo`` rows of the stars written, on rank 0 (empty elsewhere).
    """
    from trex.parallel import split

    scratch = project.redtemp / "lc"
    if comm.rank == 0 and scratch.exists():
        shutil.rmtree(scratch)  # leftovers of a killed run
    comm.barrier()
    _scatter(comm, project, config, entries)
    comm.barrier()
    tasks = None
    if comm.rank == 0:
        groups = sorted({(e.projid, e.field) for e in entries})
        tasks = [(p, f, name) for p, f in groups
                 for name in partitions(scratch / safe_name(p) / safe_name(f))]
    tasks = comm.bcast(tasks)
    frames = {e.framekey: (Path(e.redpath).name, e.night) for e in entries}
    info = []
    for i in split(len(tasks), comm.size, comm.rank):
        projid, field, name = tasks[i]
        info += _merge_partition(project, config, projid, field, name, catalogs[field], frames)
    gathered = comm.gather(info)
    comm.barrier()
    if comm.rank == 0:
        shutil.rmtree(scratch, ignore_errors=True)
        info = [row for part in gathered for row in part]
        log.info("light curves: %d stars updated from %d frames", len(info), len(entries))
        return info
    return []
