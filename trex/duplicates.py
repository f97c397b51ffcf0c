"""Duplicate raw frames: one exposure recorded twice under two names.

Backfills copy nights from several disks, and a night folder often holds a
frame twice (``x.fits`` and ``x (1).fits``, or ``x.fits`` and ``x.fits.fz``).
Processing both would put the exposure twice into every light curve, so the
inventory records the second one bad with the reason ``duplicate of
<rawpath> (identical file)``, or ``(same DATE-OBS, CCD, IMAGETYP and
EXPTIME)`` when the bytes differ.

Two usable frames are the same exposure when their parsed (DATE-OBS, CCD,
IMAGETYP, EXPTIME) are equal; a byte-identical copy of a usable frame always
is (same header).  The first one recorded keeps its place; frames recorded
bad (for any reason) are nobody's original.  :func:`exposure`
and :func:`duplicate_of` are pure; :class:`Exposures` holds what the
inventory has recorded so far.
"""

from __future__ import annotations

import filecmp
import logging
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

#: start of the reason of a duplicate
PREFIX = "duplicate of "

Key = tuple[str, str, str, float]


def exposure(row: Mapping) -> Key | None:
    """(DATE-OBS, CCD, IMAGETYP, EXPTIME) of a usable ``frameinfo`` row (None if not usable)."""
    if not row.get("isok") or row.get("dateobs") is None:
        return None
    return (str(row["dateobs"]), str(row.get("ccd") or ""), str(row.get("imagetyp") or ""),
            round(float(row.get("exptime") or 0.0), 3))


def duplicate_of(row: Mapping, recorded: Mapping[Key, str]) -> str | None:
    """Rawpath of the recorded frame that ``row`` repeats, or None."""
    key = exposure(row)
    other = recorded.get(key) if key is not None else None
    return other if other is not None and other != row["rawpath"] else None


class Exposures:
    """The exposures of the ``frameinfo`` rows, first rawpath of each."""

    def __init__(self, recorded: dict[Key, str] | None = None):
        self.recorded = recorded or {}

    @classmethod
    def of(cls, rows) -> Exposures:
        """From (rawpath, dateobs, ccd, imagetyp, exptime) of usable frames, in the order
        they were recorded (``Queries.exposures``)."""
        recorded: dict[Key, str] = {}
        for rawpath, dateobs, ccd, imagetyp, exptime in rows:
            key = exposure({"isok": True, "dateobs": dateobs, "ccd": ccd, "imagetyp": imagetyp,
                            "exptime": exptime})
            if key is not None:
                recorded.setdefault(key, rawpath)
        return cls(recorded)

    def check(self, row: dict, root: Path) -> None:
        """Mark ``row`` (a new ``frameinfo`` row) bad if it repeats a recorded
        exposure, else remember it."""
        other = duplicate_of(row, self.recorded)
        if other is None:
            key = exposure(row)
            if key is not None:
                self.recorded.setdefault(key, row["rawpath"])
            return
        first, second = Path(root) / other, Path(root) / row["rawpath"]
        same = first.is_file() and filecmp.cmp(first, second, shallow=False)
        how = "identical file" if same else "same DATE-OBS, CCD, IMAGETYP and EXPTIME"
        row.update(isok=False, reason=f"{PREFIX}{other} ({how})")
        log.warning("inventory: %s: %s (recorded, skipped)", row["rawpath"], row["reason"])
