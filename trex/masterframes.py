"""Masters of a project: which to build, reuse or borrow, recorded in ``masterframes``.

The thin, database-facing side of :mod:`trex.masters`.  Calibration frames are
grouped by (kind, night, ccd, filter) -- ``filter`` is ``""`` for bias and
dark frames, darks of every exposure time go together since the master dark is
per second.  A group needs ``calibrate.min_frames`` usable frames of one
shape (frames of another shape are marked bad with the reason).

A master file is ``BASE/CAL/<kind>-<night>-<ccd>[-<filter>]-<hash>.fits``
where ``hash`` is the SHA-256 of its inputs (raw paths, sizes, mtimes), the
settings that shape it and the masters it was built on.  A master whose hash
is unchanged is reused; otherwise it is rebuilt, its row replaced and the old
file removed.  A frame that turns out unreadable while stacking is marked bad
(``frameinfo.isok`` false, with the reason) and the master is built without it.

Masters map ``{(kind, night, ccd, filter): Path}`` (``Context.masters``); a
night without its own master of a kind borrows the nearest night's
(:func:`nearest_master`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
from collections import Counter, defaultdict
from pathlib import Path

from trex import records
from trex.config import Config
from trex.db import Database
from trex.fits import FrameError
from trex.inventory import RawFrame, mark_bad, usable_frames
from trex.masters import build_bias, build_dark, build_flat, read_master, write_master
from trex.project import Project, safe_name

log = logging.getLogger(__name__)

MasterKey = tuple[str, str, str, str]   # (kind, night, ccd, filter)


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


def load_masters(project: Project, db: Database) -> dict[MasterKey, Path]:
    """The recorded masters whose files exist."""
    out = {}
    for kind, night, ccd, filt, path in db.query(
            "SELECT kind, night, ccd, filter, path FROM masterframes"):
        full = project.root / path
        if full.is_file():
            out[(kind, night, ccd, filt)] = full
    return out


def _inputs_hash(frames: list[RawFrame], config: Config, deps: dict[str, str]) -> str:
    cal = config.calibrate
    payload = {
        "inputs": sorted((str(f.rawpath.name), f.night, f.filesize, f.mtime) for f in frames),
        "settings": [cal.clip_sigma, cal.clip_iters, cal.overscan, cal.hot_sigma,
                     cal.dead_fraction, cal.dead_box],
        "deps": deps,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _same_shape(frames: list[RawFrame], db: Database) -> list[RawFrame]:
    shape = Counter(f.shape for f in frames).most_common(1)[0][0]
    for f in frames:
        if f.shape != shape:
            reason = (f"shape {f.shape[1]}x{f.shape[0]} differs from its group's "
                      f"{shape[1]}x{shape[0]}")
            log.warning("masters: %s: %s (excluded)", f.rawpath.name, reason)
            mark_bad(db, f.framekey, reason)
    return [f for f in frames if f.shape == shape]


class _Builder:
    """Builds or reuses the masters of one project run."""

    def __init__(self, project: Project, config: Config, db: Database):
        self.project, self.config, self.db = project, config, db
        self.masters = load_masters(project, db)
        self.recorded = {(r[0], r[1], r[2], r[3]): (r[4], r[5]) for r in db.query(
            "SELECT kind, night, ccd, filter, path, inputs FROM masterframes")}
        self.built = 0

    def dependency(self, kind: str, key: MasterKey) -> tuple[Path | None, dict[str, str]]:
        found = nearest_master(self.masters, kind, key[1], key[2])
        if found is None:
            log.warning("masters: no %s master for ccd %r: %s %s built without it",
                        kind, key[2], key[0], key[1])
            return None, {}
        if found[0][1] != key[1]:
            log.warning("masters: %s %s uses the %s of night %s", key[0], key[1], kind, found[0][1])
        return found[1], {kind.upper() + "USED": found[1].name}

    def ensure(self, key: MasterKey, frames: list[RawFrame]) -> None:
        frames = _same_shape(frames, self.db)
        deps: dict[str, str] = {}
        bias = dark = None
        if key[0] in ("dark", "flat"):
            bias, used = self.dependency("bias", key)
            deps.update(used)
        if key[0] == "flat":
            dark, used = self.dependency("dark", key)
            deps.update(used)
        while len(frames) >= self.config.calibrate.min_frames:
            digest = _inputs_hash(frames, self.config, deps)
            old = self.recorded.get(key)
            if old and old[1] == digest and (self.project.root / old[0]).is_file():
                self.masters[key] = self.project.root / old[0]
                return
            try:
                master = self._build(key, frames, bias, dark, deps)
            except FrameError as err:
                bad = [f for f in frames if str(f.rawpath) == err.path]
                if not bad:  # a master it depends on is unreadable
                    log.warning("masters: %s night %s not built: %s", key[0], key[1], err)
                    return
                log.warning("masters: %s: %s (excluded)", bad[0].rawpath.name, err.reason)
                mark_bad(self.db, bad[0].framekey, err.reason)
                frames = [f for f in frames if f is not bad[0]]
                continue
            self._record(key, master, digest, len(frames), old)
            return
        log.warning("masters: %s night %s ccd %r filter %r: %d usable frames, fewer than %d: "
                    "no master", key[0], key[1], key[2], key[3], len(frames),
                    self.config.calibrate.min_frames)
        self._forget(key)

    def _forget(self, key: MasterKey) -> None:
        """Drop a master whose group no longer has enough usable frames."""
        old = self.recorded.pop(key, None)
        self.masters.pop(key, None)
        if old is None:
            return
        self.db.execute("DELETE FROM masterframes WHERE kind = ? AND night = ? AND ccd = ? "
                        "AND filter = ?", key)
        (self.project.root / old[0]).unlink(missing_ok=True)

    def _build(self, key, frames, bias_path, dark_path, deps):
        inputs = [(f.rawpath, f.meta) for f in frames]
        cal = self.config.calibrate
        log.info("masters: building %s night %s ccd %r filter %r from %d frames",
                 key[0], key[1], key[2], key[3], len(frames))
        bias = read_master(bias_path)[0] if bias_path else None
        if key[0] == "bias":
            return build_bias(inputs, cal)
        if key[0] == "dark":
            return build_dark(inputs, bias, cal, deps)
        dark = read_master(dark_path)[0] if dark_path else None
        return build_flat(inputs, bias, dark, cal, deps)

    def _record(self, key, master, digest, ninputs, old) -> None:
        kind, night, ccd, filt = key
        name = "-".join(p for p in (kind, night, ccd or "all", filt) if p)
        path = self.project.cal / f"{safe_name(name)}-{digest[:12]}.fits"
        master.header["NIGHT"] = night
        master.header["INHASH"] = (digest[:32], "hash of the inputs and settings")
        write_master(path, master)
        rel = str(path.relative_to(self.project.root))
        created = records.now()
        with self.db.transaction():
            self.db.execute("DELETE FROM masterframes WHERE kind = ? AND night = ? AND ccd = ? "
                            "AND filter = ?", key)
            self.db.execute("INSERT INTO masterframes (kind, night, ccd, filter, path, inputs, "
                            "ninputs, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (*key, rel, digest, ninputs, created))
        if old and old[0] != rel and (self.project.root / old[0]).is_file():
            (self.project.root / old[0]).unlink()
        self.masters[key] = path
        self.recorded[key] = (rel, digest)
        self.built += 1


def build_masters(project: Project, config: Config, db: Database) -> dict[MasterKey, Path]:
    """Build (or reuse) every master of the project; returns the masters map."""
    builder = _Builder(project, config, db)
    for kind in ("bias", "dark", "flat"):
        groups: dict[MasterKey, list[RawFrame]] = defaultdict(list)
        for f in usable_frames(project, config, db, kind):
            groups[(kind, f.night, f.meta.ccd, f.meta.filter if kind == "flat" else "")].append(f)
        for key in sorted(groups):
            builder.ensure(key, groups[key])
    log.info("masters: %d built, %d available", builder.built, len(builder.masters))
    return builder.masters
