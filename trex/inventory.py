"""Frame inventory: every raw file under ``RAW/<night>/`` recorded in ``frameinfo``.

A phase: :meth:`Inventory.plan` walks the night folders for ``*.fits``,
``*.fits.fz`` and ``*.fz`` (hidden files are ignored) and lists the files not
recorded yet or changed on disk (size or mtime), and the recorded headers
to parse again because the header settings changed; :meth:`Inventory.work`
reads a header (any rank) and parses it with :func:`trex.header.parse_header`;
:meth:`Inventory.record` inserts or updates one ``frameinfo`` row per file
(``rawpath`` relative to the project root), with the parsed values in their
columns, so that no later step parses the header again.  A changed file's
state is dropped (it is calibrated again).  A file that cannot be read, is
truncated, or has an unknown IMAGETYP is recorded with ``isok`` false and
the reason, with a WARNING; it never stops the run.  So is an image smaller
than :data:`MIN_SIZE` pixels on a side, a frame whose CCD or FILTER cannot
name a file or an object frame without a usable project id or field name
(:func:`name_problem`), and a second copy of an exposure already recorded
(:mod:`trex.duplicates`, checked in file order once the headers are read).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from astropy.io import fits as afits

from trex.config import Config
from trex.duplicates import Exposures
from trex.errors import FrameError
from trex.fits import _image_hdu, _open, _read_header
from trex.frame import Context
from trex.header import HEADER_SECTIONS, FrameMeta, meta_row, parse_header
from trex.phase import Phase
from trex.project import Project, safe_name

log = logging.getLogger(__name__)

PATTERNS = ("*.fits", "*.fits.fz", "*.fz")
#: smallest usable raw image, px on each side (no survey frame is smaller; the
#: background mesh, the asterisms and the photometry annuli need room)
MIN_SIZE = 64


@dataclass(frozen=True)
class RawItem:
    """A raw file to record: new, changed on disk, or only to parse again."""

    night: str
    rawpath: str                 # relative to the project root
    framekey: int                # its frameinfo row (reserved for a new file)
    header: str | None = None    # the recorded header text (parse again, no file read)


def raw_files(project: Project, night: str | None = None) -> list[tuple[str, Path]]:
    """(night, path) of every raw file (of one night), sorted by night then name."""
    out = []
    for name in [night] if night else project.nights():
        folder = project.raw / name
        names = {p for pattern in PATTERNS for p in folder.glob(pattern)
                 if p.is_file() and not p.name.startswith(".")}
        out.extend((name, p) for p in sorted(names))
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


class Inventory(Phase):
    """Record new and changed raw files (see the module doc)."""

    name = "inventory"
    batch = 32

    def __init__(self):
        self.read: dict[int, dict] = {}  # rank 0: rows of the files read in this run
        self.nights: dict[str, int] = {}  # rank 0: night -> folder mtime (ns) when listed

    def plan(self, ledger, context: Context) -> list[RawItem]:
        """The files of the nights whose folder changed since it was last read (a file
        added, removed or renamed changes it: the other nights cost one stat each), and
        the headers to parse again under new header settings (of ``context.nights``
        only, when given)."""
        project = context.project
        scanned = ledger.read.raw_nights()
        items, new = [], []
        for night in project.nights():
            mtime = (project.raw / night).stat().st_mtime_ns
            if scanned.get(night) == mtime or not context.of_nights(night):
                continue
            self.nights[night] = mtime
            known = ledger.read.raw_files(night)
            for _, path in raw_files(project, night):
                rel = str(path.relative_to(project.root))
                stat = path.stat()
                old = known.get(rel)
                if old is None:
                    new.append((night, rel))
                elif old[1] != stat.st_size or old[2] != float(stat.st_mtime):
                    log.info("inventory: %s changed on disk, read again", rel)
                    items.append(RawItem(night, rel, old[0]))
        # keys in file order whatever the order the headers are read in
        keys = ledger.reserve_raw(new)
        items = [RawItem(night, rel, key) for (night, rel), key in zip(new, keys)] + items
        queued = {i.rawpath for i in items}
        sha = context.config.section_sha(HEADER_SECTIONS)
        items += [RawItem(night, rel, key, text) for key, rel, night, text in
                  ledger.read.headers_parsed_otherwise(sha)
                  if rel not in queued and context.of_nights(night)
                  and (project.root / rel).is_file()]
        return items

    def work(self, item: RawItem, context: Context) -> dict:
        """The ``frameinfo`` values of one file (isok false with the reason when unusable)."""
        project, config = context.project, context.config
        path = project.root / item.rawpath
        row = {"rawpath": item.rawpath, "night": item.night, "isok": True, "reason": None,
               "configsha": config.section_sha(HEADER_SECTIONS)}
        try:
            if item.header is None:
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    raise FrameError(path, "file not found (removed during the run?)") from None
                row.update(filesize=int(stat.st_size), mtime=float(stat.st_mtime))
                header, (ny, nx) = read_raw_header(path)
                row.update(naxis1=nx, naxis2=ny, header=header.tostring(sep="\n", padding=False))
            else:
                header = afits.Header.fromstring(item.header, sep="\n")
            meta = parse_header(header, config, path)
        except FrameError as err:
            log.warning("inventory: %s: %s (recorded, skipped)", item.rawpath, err.reason)
            row.update(isok=False, reason=err.reason)
            return {"item": item, "row": row}
        row.update(meta_row(meta))
        problem = name_problem(meta, config)
        if problem is not None:
            row.update(isok=False, reason=problem)
            log.warning("inventory: %s: %s (recorded, skipped)", item.rawpath, row["reason"])
        return {"item": item, "row": row}

    def record(self, ledger, result: dict, context: Context) -> None:
        ledger.record_raw(result["row"], result["item"].framekey)
        if "filesize" in result["row"]:
            self.read[result["item"].framekey] = result["row"]

    def update(self, ledger, context: Context) -> Context:
        """Files read in this run that repeat an exposure recorded before them (in frame
        key order, so whatever order the ranks read them in) are marked bad; the nights
        read are recorded as read (their folder's mtime)."""
        ledger.record_raw_nights(self.nights)
        if self.read:
            exposures = Exposures.of(ledger.read.exposures(exclude=set(self.read)))
            for framekey in sorted(self.read):
                row = self.read[framekey]
                exposures.check(row, context.project.root)
                if not row["isok"]:
                    ledger.mark_bad(framekey, row["reason"])
        return context

    def label(self, item: RawItem) -> str:
        return item.rawpath

    def summary(self, done: int, failed: int) -> str:
        bad = sum(not row["isok"] for row in self.read.values())
        return f"{done} raw files read ({bad} bad)"
