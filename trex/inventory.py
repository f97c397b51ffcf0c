"""Frame inventory: every raw file under ``RAW/<night>/`` recorded in ``frameinfo``.

:func:`scan` walks the night folders for ``*.fits``, ``*.fits.fz`` and ``*.fz``
(hidden files are ignored), parses each header with
:func:`trex.header.parse_header` and inserts or updates one ``frameinfo`` row per
file (``rawpath`` relative to the project root).  A file whose size and mtime
are unchanged since it was recorded is not opened again; a changed file is
re-read, and its calibration rows (``calibratedframes``, ``framestatus``) are
dropped so that it is calibrated again.  A file that cannot be read, is
truncated, or has an unknown IMAGETYP is recorded with ``isok`` false and the
reason, with a WARNING; it never stops the scan.  So is an image smaller than
:data:`MIN_SIZE` pixels on a side, a frame whose CCD or FILTER cannot name a
file or an object frame without a usable project id or field name
(:func:`name_problem`), and a second copy of an exposure
already recorded (:mod:`trex.duplicates`).

:func:`pending_object_frames` lists the object frames still to calibrate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from astropy.io import fits as afits

from trex.config import Config
from trex.db import Database
from trex.duplicates import Exposures
from trex.fits import FrameError, _image_hdu, _open, _read_header
from trex.header import FrameMeta, parse_header
from trex.project import Project, safe_name

log = logging.getLogger(__name__)

PATTERNS = ("*.fits", "*.fits.fz", "*.fz")

#: smallest usable raw image, px on each side (no survey frame is smaller; the
#: background mesh, the asterisms and the photometry annuli need room)
MIN_SIZE = 64

COLUMNS = ("rawpath", "night", "imagetyp", "projid", "field", "ccd", "filter", "exptime",
           "dateobs", "jd", "ra", "decl", "gain", "rdnoise", "saturate", "naxis1", "naxis2",
           "filesize", "mtime", "isok", "reason", "header")


@dataclass(frozen=True)
class RawFrame:
    """One usable raw frame as recorded in ``frameinfo``."""

    framekey: int
    rawpath: Path          # absolute
    night: str
    meta: FrameMeta
    shape: tuple[int, int]  # (naxis2, naxis1)
    filesize: int
    mtime: float


def raw_files(project: Project) -> list[tuple[str, Path]]:
    """(night, path) of every raw file, sorted by night then name."""
    out = []
    for night in project.nights():
        folder = project.raw / night
        names = {p for pattern in PATTERNS for p in folder.glob(pattern)
                 if p.is_file() and not p.name.startswith(".")}
        out.extend((night, p) for p in sorted(names))
    return out


def read_raw_header(path: Path) -> tuple[afits.Header, tuple[int, int]]:
    """Header and (ny, nx) of a raw file; raises FrameError when it is unreadable,
    shorter than its header declares (a truncated copy), holds no 2-D image or
    one smaller than :data:`MIN_SIZE`."""
    size = path.stat().st_size
    with _open(path) as fits:
        hdu = fits[_image_hdu(fits, path)]
        end = hdu.get_offsets()["data_end"]
        if end > size:
            raise FrameError(path, f"truncated: {size} bytes, the header declares {end}")
        header = _read_header(hdu, path)
        ny, nx = (int(n) for n in hdu.get_dims())
    if min(ny, nx) < MIN_SIZE:
        raise FrameError(path, f"image {nx}x{ny} px is smaller than the minimum "
                               f"{MIN_SIZE}x{MIN_SIZE} px")
    return header, (ny, nx)


def _nameable(name: str) -> bool:
    try:
        safe_name(name)
    except ValueError:
        return False
    return True


def name_problem(meta: FrameMeta, config: Config) -> str | None:
    """Why a frame cannot be processed from the names in its header (None: it can).

    CCD and FILTER name master and reference files; an object frame also
    needs a project id and a field name.  Each must be usable as a file name
    (:func:`trex.project.safe_name`: not empty, ``.`` or ``..``)."""
    keys = config.header
    for key, value in ((keys.ccd, meta.ccd), (keys.filter, meta.filter)):
        if value and not _nameable(value):
            return f"{key} {value!r} cannot name a file"
    if meta.imagetyp != "object":
        return None
    if not meta.projid:
        return f"no {keys.projid} in the header and no project.projid configured"
    if not _nameable(meta.projid):
        return f"{keys.projid} {meta.projid!r} cannot name a folder"
    if not meta.field:
        return f"no {keys.object} or {keys.field} in the header and no project.field configured"
    if not _nameable(meta.field):
        return f"field name {meta.field!r} cannot name a catalog file"
    return None


def _record(project: Project, config: Config, night: str, path: Path) -> dict:
    """The ``frameinfo`` values of one file (isok 0 with the reason when unusable)."""
    stat = path.stat()
    row = dict.fromkeys(COLUMNS)
    row.update(rawpath=str(path.relative_to(project.root)), night=night,
               filesize=int(stat.st_size), mtime=float(stat.st_mtime), isok=True)
    try:
        header, (ny, nx) = read_raw_header(path)
        row.update(naxis1=nx, naxis2=ny, header=header.tostring(sep="\n", padding=False))
        meta = parse_header(header, config, path)
    except FrameError as err:
        log.warning("inventory: %s: %s (recorded, skipped)", row["rawpath"], err.reason)
        row.update(isok=False, reason=err.reason)
        return row
    row.update(imagetyp=meta.imagetyp, projid=meta.projid, field=meta.field, ccd=meta.ccd,
               filter=meta.filter, exptime=meta.exptime, dateobs=meta.dateobs, jd=meta.jd,
               ra=meta.ra, decl=meta.dec, gain=meta.gain, rdnoise=meta.rdnoise,
               saturate=meta.saturate)
    problem = name_problem(meta, config)
    if problem is not None:
        row.update(isok=False, reason=problem)
        log.warning("inventory: %s: %s (recorded, skipped)", row["rawpath"], row["reason"])
    return row


def scan(project: Project, config: Config, db: Database) -> list[str]:
    """Record new and changed raw files in ``frameinfo``; returns their rawpaths."""
    known = {r[1]: (r[0], r[2], r[3]) for r in
             db.query("SELECT framekey, rawpath, filesize, mtime FROM frameinfo")}
    changed = []
    insert = (f"INSERT INTO frameinfo ({', '.join(COLUMNS)}) "
              f"VALUES ({', '.join('?' * len(COLUMNS))})")
    update = f"UPDATE frameinfo SET {', '.join(c + ' = ?' for c in COLUMNS)} WHERE framekey = ?"
    exposures = Exposures.from_db(db)
    for night, path in raw_files(project):
        rel = str(path.relative_to(project.root))
        stat = path.stat()
        old = known.get(rel)
        if old is not None and old[1] == stat.st_size and old[2] == float(stat.st_mtime):
            continue
        row = _record(project, config, night, path)
        exposures.check(row, project.root)
        values = [row[c] for c in COLUMNS]
        with db.transaction():
            if old is None:
                db.execute(insert, values)
            else:
                log.info("inventory: %s changed on disk, re-read", rel)
                db.execute(update, values + [old[0]])
                db.execute("DELETE FROM calibratedframes WHERE framekey = ?", (old[0],))
                db.execute("DELETE FROM framestatus WHERE framekey = ?", (old[0],))
        changed.append(rel)
    if changed:
        log.info("inventory: %d new or changed raw files recorded", len(changed))
    return changed


def meta_from_text(text: str, config: Config, path: Path | str) -> FrameMeta:
    """FrameMeta from the header text stored in ``frameinfo.header``."""
    return parse_header(afits.Header.fromstring(text, sep="\n"), config, path)


def usable_frames(project: Project, config: Config, db: Database,
                  imagetyp: str | None = None) -> list[RawFrame]:
    """The frames with ``isok`` true (of one type when given), by night and time."""
    sql = ("SELECT framekey, rawpath, night, header, naxis2, naxis1, filesize, mtime "
           "FROM frameinfo WHERE isok")
    params: tuple = ()
    if imagetyp:
        sql += " AND imagetyp = ?"
        params = (imagetyp,)
    out = []
    for key, rel, night, text, ny, nx, size, mtime in db.query(sql + " ORDER BY night, jd, rawpath",
                                                                params):
        path = project.root / rel
        try:
            meta = meta_from_text(text, config, path)
        except FrameError as err:  # configuration changed since the scan
            log.warning("inventory: %s: %s (skipped)", rel, err.reason)
            continue
        out.append(RawFrame(int(key), path, night, meta, (int(ny), int(nx)), int(size),
                            float(mtime)))
    return out


def pending_object_frames(project: Project, config: Config, db: Database,
                          stage: str = "calibrate") -> list[RawFrame]:
    """Usable object frames with no ``framestatus`` row for ``stage`` yet."""
    done = {r[0] for r in db.query("SELECT framekey FROM framestatus WHERE stage = ?", (stage,))}
    return [f for f in usable_frames(project, config, db, "object") if f.framekey not in done]


def mark_bad(db: Database, framekey: int, reason: str) -> None:
    """Record that a frame recorded as ok turned out unusable."""
    db.execute("UPDATE frameinfo SET isok = ?, reason = ? WHERE framekey = ?",
               (False, reason, framekey))
