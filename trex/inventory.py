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
the reason, with a WARNING; it never stops the run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from astropy.io import fits as afits

from trex.errors import FrameError
from trex.fits import _image_hdu, _open, _to_header
from trex.frame import Context
from trex.header import HEADER_SECTIONS, meta_row, parse_header
from trex.phase import Phase
from trex.project import Project

log = logging.getLogger(__name__)

PATTERNS = ("*.fits", "*.fits.fz", "*.fz")


@dataclass(frozen=True)
class RawItem:
    """A raw file to record: new, changed on disk, or only to parse again."""

    night: str
    rawpath: str                 # relative to the project root
    framekey: int                # its frameinfo row (reserved for a new file)
    header: str | None = None    # the recorded header text (parse again, no file read)


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
    """Header and (ny, nx) of a raw file; raises FrameError when it is unreadable
    or shorter than its header declares (a truncated copy)."""
    size = path.stat().st_size
    with _open(path) as fits:
        index = _image_hdu(fits, path)
        hdu = fits[index]
        end = hdu.get_offsets()["data_end"]
        if end > size:
            raise FrameError(path, f"truncated: {size} bytes, the header declares {end}")
        try:
            header = _to_header(hdu.read_header())
        except OSError as err:
            raise FrameError(path, f"header unreadable: {str(err).strip()[:200]}") from None
        ny, nx = hdu.get_dims()
    return header, (int(ny), int(nx))


class Inventory(Phase):
    """Record new and changed raw files (see the module doc)."""

    name = "inventory"
    batch = 32

    def plan(self, ledger, context: Context) -> list[RawItem]:
        project = context.project
        known = ledger.read.raw_files()
        sha = context.config.section_sha(HEADER_SECTIONS)
        items, new = [], []
        for night, path in raw_files(project):
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
        stale = {k for k, _, _, s in known.values() if s != sha}
        items += [RawItem(night, rel, key, text) for key, rel, night, text in ledger.read.raw_headers()
                  if key in stale and (project.root / rel).is_file()
                  and not any(i.rawpath == rel for i in items)]
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
        if meta.imagetyp == "object" and not meta.projid:
            row.update(isok=False, reason="no PROJID in the header and no project.projid configured")
            log.warning("inventory: %s: %s (recorded, skipped)", item.rawpath, row["reason"])
        return {"item": item, "row": row}

    def record(self, ledger, result: dict, context: Context) -> None:
        ledger.record_raw(result["row"], result["item"].framekey)

    def label(self, item: RawItem) -> str:
        return item.rawpath
