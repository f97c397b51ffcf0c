"""Masters of a project: which to build, reuse or borrow (a phase per kind).

The phase side of :mod:`trex.masters`.  Calibration frames are grouped by
(kind, night, ccd, filter) -- ``filter`` is ``""`` for bias and dark frames,
darks of every exposure time go together since the master dark is per
second.  A group needs ``calibrate.min_frames`` usable frames of one shape
(frames of another shape are marked bad with the reason).

A master file is ``BASE/CAL/<kind>-<night>-<ccd>[-<filter>]-<hash>.fits``
where ``hash`` is the SHA-256 of its inputs (raw paths, sizes, mtimes), the
settings that shape it and the masters it was built on.  A master whose hash
is unchanged is reused; otherwise it is rebuilt, its row replaced and the old
file removed.  A frame that turns out unreadable while stacking is marked bad
(``frameinfo.isok`` false, with the reason) and the master is built without it.

Masters map ``{(kind, night, ccd, filter): Path}`` (``Context.masters``); a
night without its own master of a kind borrows the nearest night's
(:func:`nearest_master`).  Bias masters are built first, then darks (which
use them), then flats (which use both): one :class:`Masters` phase per kind.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trex.config import Config
from trex.errors import FrameError
from trex.frame import Context
from trex.header import FrameMeta, meta_from_row
from trex.masters import StackedRows, build_master, finish_master, read_master, stack_master, write_master
from trex.phase import Phase, Pieces
from trex.project import Project, safe_name

log = logging.getLogger(__name__)

MasterKey = tuple[str, str, str, str]   # (kind, night, ccd, filter)
KINDS = ("bias", "dark", "flat")


@dataclass(frozen=True)
class RawFrame:
    """One usable calibration frame as recorded in ``frameinfo``."""

    framekey: int
    rawpath: Path          # absolute
    night: str
    meta: FrameMeta
    shape: tuple[int, int]  # (naxis2, naxis1)
    filesize: int
    mtime: float


@dataclass(frozen=True)
class MasterItem:
    """A master to build: its key, inputs, the masters it uses, the hash and the old file."""

    key: MasterKey
    frames: tuple[RawFrame, ...]
    bias: Path | None
    dark: Path | None
    deps: dict
    old: str | None
    band: tuple[int, int] = (0, 1)  # (i, n): the i-th of n bands of rows, stacked apart


@dataclass(frozen=True)
class BandResult:
    """One band of a master stacked apart (``stacked`` None: a frame was unreadable)."""

    item: MasterItem
    stacked: StackedRows | None


@dataclass(frozen=True)
class MasterResult:
    key: MasterKey
    path: str | None          # relative to the root; None: too few usable frames, no master
    digest: str
    ninputs: int
    bad: tuple[tuple[int, str], ...]  # (framekey, reason) of inputs found unusable


def _night_ordinal(night: str) -> int | None:
    match = re.search(r"(\d{4})-?(\d{2})-?(\d{2})", night)
    if not match:
        return None
    try:
        return dt.date(*(int(g) for g in match.groups())).toordinal()
    except ValueError:
        return None


def nearest_master(masters: dict, kind: str, night: str, ccd: str,
                   filter: str = "") -> tuple[MasterKey, Path] | None:
    """The master of ``kind`` for (ccd, filter) from ``night``, else the nearest night.

    Nights are compared as dates when their names hold one (YYYYMMDD or
    YYYY-MM-DD), else by their sorted order; ties go to the earlier night.
    """
    candidates = {k[1]: (k, p) for k, p in masters.items()
                  if k[0] == kind and k[2] == ccd and k[3] == filter}
    if not candidates:
        return None
    if night in candidates:
        return candidates[night]
    names = sorted(set(candidates) | {night})
    ordinals = {n: _night_ordinal(n) for n in names}
    if all(v is not None for v in ordinals.values()):
        position = ordinals
    else:
        position = {n: i for i, n in enumerate(names)}
    best = min(candidates, key=lambda n: (abs(position[n] - position[night]), n))
    return candidates[best]


def recorded_masters(project: Project, recorded: dict) -> dict[MasterKey, Path]:
    """The recorded masters (``Queries.masters``) whose files exist."""
    return {key: project.root / path for key, (path, _) in recorded.items()
            if (project.root / path).is_file()}


def _inputs_hash(frames, config: Config, deps: dict[str, str]) -> str:
    cal = config.calibrate
    payload = {
        "inputs": sorted((str(f.rawpath.name), f.night, f.filesize, f.mtime) for f in frames),
        "settings": [cal.clip_sigma, cal.clip_iters, cal.overscan, cal.hot_sigma,
                     cal.dead_fraction, cal.dead_box],
        "deps": deps,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _raw_frame(project: Project, row: dict) -> RawFrame:
    return RawFrame(int(row["framekey"]), project.root / row["rawpath"], row["night"],
                    meta_from_row(row), (int(row["naxis2"]), int(row["naxis1"])),
                    int(row["filesize"]), float(row["mtime"]))


class Masters(Phase):
    """Build (or reuse) every master of one kind (see the module doc)."""

    def __init__(self, kind: str):
        self.kind, self.name = kind, f"master {kind}"
        self.batch = 1
        self.built: dict[MasterKey, Path | None] = {}
        self.bands = Pieces()  # rank 0: the bands of each master so far

    def plan(self, ledger, context: Context) -> list[MasterItem]:
        groups: dict[MasterKey, list[RawFrame]] = defaultdict(list)
        for row in ledger.read.raw_file_rows(self.kind):
            frame = _raw_frame(context.project, row)
            groups[(self.kind, frame.night, frame.meta.ccd,
                    frame.meta.filter if self.kind == "flat" else "")].append(frame)
        recorded = ledger.read.masters()
        items = []
        for key in sorted(groups):
            frames = self._same_shape(groups[key], ledger)
            bias, dark, deps = self._dependencies(key, context)
            digest = _inputs_hash(frames, context.config, deps)
            old = recorded.get(key)
            if old and old[1] == digest and (context.project.root / old[0]).is_file():
                continue  # unchanged: context.masters has it already
            item = MasterItem(key, tuple(frames), bias, dark, deps, old[0] if old else None)
            items += [dataclasses.replace(item, band=(i, context.ranks))
                      for i in range(context.ranks)]
        return items

    @staticmethod
    def _same_shape(frames: list[RawFrame], ledger) -> list[RawFrame]:
        shape = Counter(f.shape for f in frames).most_common(1)[0][0]
        for f in frames:
            if f.shape != shape:
                reason = (f"shape {f.shape[1]}x{f.shape[0]} differs from its group's "
                          f"{shape[1]}x{shape[0]}")
                log.warning("masters: %s: %s (excluded)", f.rawpath.name, reason)
                ledger.mark_bad(f.framekey, reason)
        return [f for f in frames if f.shape == shape]

    def _dependencies(self, key: MasterKey, context: Context) -> tuple[Path | None, Path | None, dict]:
        found = {}
        for kind in KINDS[:KINDS.index(self.kind)]:
            near = nearest_master(context.masters, kind, key[1], key[2])
            if near is None:
                log.warning("masters: no %s master for ccd %r: %s %s built without it",
                            kind, key[2], key[0], key[1])
            elif near[0][1] != key[1]:
                log.warning("masters: %s %s uses the %s of night %s", key[0], key[1], kind,
                            near[0][1])
            found[kind] = near[1] if near else None
        deps = {kind.upper() + "USED": path.name for kind, path in found.items() if path}
        return found.get("bias"), found.get("dark"), deps

    def work(self, item: MasterItem, context: Context) -> MasterResult | BandResult:
        """The master (one band of it when there are several: finished on rank 0)."""
        if item.band[1] == 1:
            return self._whole(item, context)
        try:
            return BandResult(item, stack_master(*self._arguments(item, list(item.frames), context),
                                                 band=item.band))
        except FrameError as err:
            log.info("masters: %s: %s (the master is made whole, without the frame)",
                     self.label(item), err.reason)
            return BandResult(item, None)

    def _whole(self, item: MasterItem, context: Context) -> MasterResult:
        """The master stacked whole; a frame unreadable meanwhile is left out."""
        frames, bad = list(item.frames), []
        while len(frames) >= context.config.calibrate.min_frames:
            try:
                master = build_master(*self._arguments(item, frames, context), item.deps)
            except FrameError as err:
                culprit = [f for f in frames if str(f.rawpath) == err.path]
                if not culprit:  # a master it depends on is unreadable
                    raise
                log.warning("masters: %s: %s (excluded)", culprit[0].rawpath.name, err.reason)
                bad.append((culprit[0].framekey, err.reason))
                frames.remove(culprit[0])
                continue
            return self._write(item, frames, master, bad, context)
        log.warning("masters: %s night %s ccd %r filter %r: %d usable frames, fewer than %d: "
                    "no master", *item.key, len(frames), context.config.calibrate.min_frames)
        if item.old:
            (context.project.root / item.old).unlink(missing_ok=True)
        return MasterResult(item.key, None, "", len(frames), tuple(bad))

    def _write(self, item: MasterItem, frames: list[RawFrame], master, bad: list,
               context: Context) -> MasterResult:
        project = context.project
        digest = _inputs_hash(frames, context.config, item.deps)
        kind, night, ccd, filt = item.key
        name = "-".join(p for p in (kind, night, ccd or "all", filt) if p)
        path = project.cal / f"{safe_name(name)}-{digest[:12]}.fits"
        master.header["NIGHT"] = night
        master.header["INHASH"] = (digest[:32], "hash of the inputs and settings")
        write_master(path, master)
        if item.old and (project.root / item.old) != path:
            (project.root / item.old).unlink(missing_ok=True)
        return MasterResult(item.key, str(path.relative_to(project.root)), digest,
                            len(frames), tuple(bad))

    def _arguments(self, item: MasterItem, frames: list[RawFrame], context: Context) -> tuple:
        """(kind, inputs, calibrate settings, bias, dark) of :mod:`trex.masters`."""
        log.info("masters: stacking %s from %d frames", self.label(item), len(frames))
        bias = read_master(item.bias)[0] if item.bias else None
        dark = read_master(item.dark)[0] if item.dark and item.key[0] == "flat" else None
        return (item.key[0], [(f.rawpath, f.meta) for f in frames],
                context.config.calibrate, bias, dark)

    def record(self, ledger, result: MasterResult | BandResult, context: Context) -> None:
        if isinstance(result, BandResult):
            result = self._join(ledger, result, context)
            if result is None:
                return
        for framekey, reason in result.bad:
            ledger.mark_bad(framekey, reason)
        if result.path is None:
            ledger.forget_master(result.key)
            self.built[result.key] = None
        else:
            ledger.record_master(result.key, result.path, result.digest, result.ninputs)
            self.built[result.key] = context.project.root / result.path
        ledger.record_phase("masters", "/".join(result.key))

    def _join(self, ledger, band: BandResult, context: Context) -> MasterResult | None:
        """Rank 0: the master once all its bands are in (None before, or when it
        failed); stacked whole when a band met an unreadable frame."""
        bands = self.bands.add(band.item.key, *band.item.band, band.stacked)
        if bands is None:
            return None
        item = dataclasses.replace(band.item, band=(0, 1))
        if any(stacked is None for stacked in bands.values()):
            try:
                return self._whole(item, context)
            except FrameError as err:
                log.warning("%s: %s: %s", self.name, self.label(item), err.reason)
                self.fail(ledger, item, err.reason, context)
                return None
        parts = [bands[i] for i in range(len(bands))]
        stacked = StackedRows(np.concatenate([p.image for p in parts]),
                        np.concatenate([p.nused for p in parts]), parts[0].levels)
        inputs = [(f.rawpath, f.meta) for f in item.frames]
        master = finish_master(item.key[0], inputs, stacked, context.config.calibrate, item.deps)
        return self._write(item, list(item.frames), master, [], context)

    def update(self, ledger, context: Context) -> Context:
        masters = dict(context.masters)
        for key, path in self.built.items():
            if path is None:
                masters.pop(key, None)
            else:
                masters[key] = path
        return dataclasses.replace(context, masters=masters)

    def label(self, item: MasterItem) -> str:
        i, n = item.band
        return "/".join(item.key) + (f" rows {i + 1}/{n}" if n > 1 else "")
