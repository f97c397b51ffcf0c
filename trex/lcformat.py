"""The light-curve file: HAT column names (SPEC section 5), one table of them.

One FITS file per star, ``LC/<projid>/<objectid>.fits``; HDU 1 is a binary
table named ``LIGHTCURVE`` with one row per frame, sorted by time.  Per-
aperture columns carry the suffix ``_000``, ``_001``, ... in the order of the
configured apertures.  Missing measurements are NaN with a non-zero flag
(``trex.flags.PHOT``).

Every column has its description as the comment of its ``TTYPEn`` card and its
unit as ``TUNITn`` (FITS unit strings, read by astropy).  The time columns
follow the FITS time standard (Rots et al. 2015, FITS 4.0 section 9): the
table's times are Julian dates (``JDREF = 0``) in ``TIMESYS = 'TDB'`` at
``TREFPOS = 'BARYCENTER'``, which is what ``bjd`` is (``TCTYPn = 'TDB'``,
``TRPOSn = 'BARYCENTER'``); ``rjd`` states its own scale, position and zero
point with ``TCTYPn = 'UTC'``, ``TRPOSn = 'TOPOCENTER'`` and ``TCRVLn =
2400000`` (JD = rjd + 2400000).  The primary header names the star (``OBJECT``,
``RA_OBJ``, ...); see README "Light curves" for every keyword.

Header cards (the star, its nights, its ids) are made by :mod:`trex.lccards`.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from astropy.table import Table
from astropy.time import Time

from trex.fits import atomic_write
from trex.fitstable import ColumnSpec, Header, Layout, append_rows, read_file, write_table
from trex.fitstable import read_layout as fitstable_layout
from trex.flags import PHOT
from trex.lccards import decode_ids, is_layout_card, primary_cards, table_cards

if TYPE_CHECKING:
    import lightkurve



class LCColumn(NamedTuple):
    name: str
    description: str  # at most 43 characters: it is the TTYPEn comment, with ", aperture N"
    unit: str | None  # FITS/astropy unit string
    dtype: str
    per_aperture: bool


#: the columns of a light curve, in file order
COLUMNS = (
    LCColumn("rjd", "JD - 2400000, UTC, mid-exposure", "d", "f8", False),
    LCColumn("bjd", "BJD_TDB (full JD), mid-exposure", "d", "f8", False),
    LCColumn("framekey", "frame id in the trex database", None, "i8", False),
    LCColumn("frame", "calibrated frame file name", None, "S", False),
    LCColumn("xcc", "x on the calibrated frame, 0-based", "pix", "f8", False),
    LCColumn("ycc", "y on the calibrated frame, 0-based", "pix", "f8", False),
    LCColumn("bgv", "local sky level per pixel", "adu", "f4", False),
    LCColumn("bge", "error of the local sky level per pixel", "adu", "f4", False),
    LCColumn("fsv", "PSF shape parameter S at the star", "pix-2", "f4", False),
    LCColumn("fdv", "PSF shape parameter D at the star", "pix-2", "f4", False),
    LCColumn("fkv", "PSF shape parameter K at the star", "pix-2", "f4", False),
    LCColumn("aim", "instrumental magnitude", "mag", "f4", True),
    LCColumn("aie", "instrumental magnitude error", "mag", "f4", True),
    LCColumn("aiq", "photometry quality flags (trex.flags.PHOT)", None, "i2", True),
    LCColumn("arm", "magnitude after magnitude fitting", "mag", "f4", True),
    LCColumn("aep", "magnitude after EPD", "mag", "f4", True),
    LCColumn("atf", "magnitude after TFA", "mag", "f4", True),
    LCColumn("adq", "aep/atf quality flags (trex.flags.PHOT)", None, "i2", True),
    LCColumn("ifl", "image-subtraction flux (reference scale)", "adu", "f8", True),
    LCColumn("ife", "image-subtraction flux error", "adu", "f8", True),
    LCColumn("irm", "image-subtraction magnitude", "mag", "f4", True),
    LCColumn("ire", "image-subtraction magnitude error", "mag", "f4", True),
    LCColumn("irq", "subtraction quality flags (trex.flags.PHOT)", None, "i2", True),
    LCColumn("iep", "image-subtraction magnitude after EPD", "mag", "f4", True),
    LCColumn("itf", "image-subtraction magnitude after TFA", "mag", "f4", True),
    LCColumn("idq", "iep/itf quality flags (trex.flags.PHOT)", None, "i2", True),
)
#: width of the ``frame`` column unless a name is longer (the file keeps the longest)
FRAME_WIDTH = 40
#: time keywords of the column (FITS time standard, column-specific form)
TIME_COLUMNS = {
    "rjd": (("TCTYP", "UTC"), ("TCUNI", "d"), ("TRPOS", "TOPOCENTER"), ("TCRVL", 2400000.0)),
    "bjd": (("TCTYP", "TDB"), ("TCUNI", "d"), ("TRPOS", "BARYCENTER")),
}
#: detrended value column -> its flag column: "not detrended" is PHOT NOT_FITTED there,
#: never in ``aiq``/``irq``
DETREND_FLAGS = {"aep": "adq", "atf": "adq", "iep": "idq", "itf": "idq"}
#: blank cards kept in a new table header for the cards of later appends (one per night)
APPEND_ROOM = 36


def _per_aperture(napertures: int):
    """(column, name) of every column of a light curve, in file order."""
    for column in COLUMNS:
        if column.per_aperture:
            for i in range(napertures):
                yield column, f"{column.name}_{i:03d}"
        else:
            yield column, column.name


@functools.lru_cache(maxsize=64)
def _count_apertures(names: tuple[str, ...]) -> int:
    return sum(1 for name in names if name.startswith("aim_"))


def _napertures(dtype: np.dtype) -> int:
    """Apertures of light-curve rows (their ``aim_NNN`` columns)."""
    return _count_apertures(dtype.names)


def column_names(napertures: int) -> list[str]:
    """Every column name of a light curve with ``napertures`` apertures, in file order."""
    return [name for _, name in _per_aperture(napertures)]


@functools.lru_cache(maxsize=16)
def lc_dtype(napertures: int, frame_width: int = FRAME_WIDTH) -> np.dtype:
    """Row dtype of a light curve with ``napertures`` apertures (``frame`` bytes of
    ``frame_width``)."""
    return np.dtype([(name, f"S{frame_width}" if column.dtype == "S" else column.dtype)
                     for column, name in _per_aperture(napertures)])


def empty_rows(n: int, napertures: int, frame_width: int = FRAME_WIDTH) -> np.ndarray:
    """``n`` rows with every value missing: NaN, ``aiq``/``irq`` MISSING (no measurement)
    and ``adq``/``idq`` NOT_FITTED (not detrended)."""
    rows = np.zeros(n, dtype=lc_dtype(napertures, frame_width))
    for name in rows.dtype.names:
        if rows.dtype[name].kind == "f":
            rows[name] = np.nan
        elif name[:3] in ("aiq", "irq"):
            rows[name] = PHOT["MISSING"].bit
        elif name[:3] in ("adq", "idq"):
            rows[name] = PHOT["NOT_FITTED"].bit
    return rows


def frame_names(names: list[str]) -> np.ndarray:
    """Frame file names as ASCII bytes, ``FRAME_WIDTH`` wide or as wide as the longest
    (never cut; a name that is not ASCII raises UnicodeEncodeError)."""
    encoded = [name.encode("ascii") for name in names]
    width = max([FRAME_WIDTH] + [len(name) for name in encoded])
    return np.array(encoded, dtype=f"S{width}")


def concatenate(parts: list[np.ndarray]) -> np.ndarray:
    """Light-curve rows of the same columns one after the other, in the byte order of
    the last part, with ``frame`` as wide as the widest part (nothing cut)."""
    last = parts[-1].dtype
    width = max(_width(part.dtype["frame"]) for part in parts)
    dtype = np.dtype([(n, f"S{width}" if n == "frame" else last[n]) for n in last.names])
    return np.concatenate([part.astype(dtype, copy=False) for part in parts])


def _width(text: np.dtype) -> int:
    """Characters of a text dtype (bytes, or str as fitsio reads a column)."""
    return text.itemsize // 4 if text.kind == "U" else text.itemsize


def describe_columns(napertures: int) -> dict[str, str]:
    """Column name -> description (the TTYPEn comments)."""
    return {name: _description(column, name) for column, name in _per_aperture(napertures)}


def column_units(napertures: int) -> dict[str, str]:
    """Column name -> FITS unit string (the TUNITn values) of the columns with a unit."""
    return {name: column.unit for column, name in _per_aperture(napertures) if column.unit}


def _description(column: LCColumn, name: str) -> str:
    return f"{column.description}, aperture {int(name[4:])}" if column.per_aperture \
        else column.description


@functools.lru_cache(maxsize=16)
def column_spec(napertures: int) -> ColumnSpec:
    """Description and TUNITn/time keywords of every column (``fitstable.ColumnSpec``)."""
    spec = []
    for column, name in _per_aperture(napertures):
        keys = ((("TUNIT", column.unit),) if column.unit else ()) + TIME_COLUMNS.get(name, ())
        spec.append((name, _description(column, name), keys))
    return tuple(spec)


def write_lightcurve(path: Path | str, rows: np.ndarray, header: list[dict]) -> Path:
    """Write ``rows`` (``lc_dtype``) as the LIGHTCURVE table of ``path``, atomically.

    ``header`` are the table cards (``lccards.star_cards`` and ``night_cards``, or the
    cards of a file read before); the column keywords, the time frame and extent,
    ``DATE``, ``NROWS`` and ``RJDSTART``/``RJDSTOP`` are made here from the rows, and
    the primary header from the star's cards.
    """
    napertures = _napertures(rows.dtype)
    cards = table_cards(rows, header, None)
    date = next(c["value"] for c in cards if c["name"] == "DATE")
    room = max(APPEND_ROOM, sum(c["name"].startswith(("NIGHT", "DETR")) for c in cards))
    with atomic_write(path) as tmp:
        write_table(tmp, rows, "LIGHTCURVE", cards, column_spec(napertures),
                    primary_cards(cards, date), blank=room)
    return Path(path)


def read_layout(path: Path | str) -> Layout | None:
    """Where the rows of a light-curve file lie, and its table header (ids decoded),
    reading its headers only; None for a file of another layout."""
    layout = fitstable_layout(path, "LIGHTCURVE")
    return None if layout is None else dataclasses.replace(layout, header=decode_ids(layout.header))


def append_lightcurve(path: Path | str, layout: Layout, rows: np.ndarray,
                      header: list[dict]) -> bool:
    """Append ``rows`` (later in time than the file's) to a light-curve file in place,
    its table header replaced by ``header`` (as for :func:`write_lightcurve`) with the
    extent and row count of the whole; False, nothing written, when the rows' layout
    differs or the header has outgrown its room (then write the whole file).

    Bytes written are those of the new rows and one header: a night added to an
    archive costs the night (the header keeps ``APPEND_ROOM`` or more blank cards
    for new ``NIGHTnnn`` cards, the room doubling as they fill it)."""
    cards = table_cards(rows, header, layout.header)
    return append_rows(path, layout, rows, "LIGHTCURVE", cards,
                       column_spec(_napertures(rows.dtype)))


def upgrade(rows: np.ndarray) -> np.ndarray:
    """Rows of a light curve of the previous layout (no ``adq``/``idq``) in the current
    one: the PHOT bit NOT_FITTED moves from ``aiq``/``irq`` (where detrending used to
    set it) to ``adq``/``idq``, which also get it where both detrended values are NaN.
    Any other rows (the current layout, or not a light curve) are returned as they are."""
    napertures = _napertures(rows.dtype)
    current = lc_dtype(napertures).names
    if rows.dtype.names == current or rows.dtype.names != tuple(
            name for name in current if name[:3] not in ("adq", "idq")):
        return rows
    out = empty_rows(len(rows), napertures, max(FRAME_WIDTH, _width(rows.dtype["frame"])))
    for name in rows.dtype.names:
        out[name] = rows[name]
    bit = PHOT["NOT_FITTED"].bit
    for first, second in (("aep", "atf"), ("iep", "itf")):
        for i in range(napertures):
            flag, quality = flag_columns(f"{first}_{i:03d}")
            none = ~np.isfinite(out[f"{first}_{i:03d}"]) & ~np.isfinite(out[f"{second}_{i:03d}"])
            out[quality] = np.where(none, bit, out[flag] & bit)
            out[flag] &= ~bit
    return out


def read_rows(path: Path | str) -> tuple[np.ndarray, Header]:
    """Raw rows (numpy structured array, current layout: see :func:`upgrade`) and the
    table header of a light-curve file."""
    rows, table, _ = read_file(path, "LIGHTCURVE", primary=False)
    return upgrade(rows), decode_ids(table)


def read_lightcurve(path: Path | str) -> Table:
    """A light curve as an astropy Table: ``time`` (astropy Time, the ``bjd`` column in
    TDB, masked where bjd is NaN) first, then every SPEC column under its own name
    (floats, integers, ``frame`` as str) with its unit and description; the primary
    and table header cards in ``meta`` (table cards win)."""
    rows, table_header, primary = read_file(path, "LIGHTCURVE")
    rows, table_header, primary = upgrade(rows), decode_ids(table_header), decode_ids(primary)
    napertures = _napertures(rows.dtype)
    table = Table(rows, units=column_units(napertures), descriptions=describe_columns(napertures),
                  copy=False)
    if rows.dtype["frame"].kind == "S":
        table["frame"] = np.char.decode(np.char.rstrip(rows["frame"]), "ascii")
        table["frame"].description = describe_columns(napertures)["frame"]
    bjd = rows["bjd"]
    table.add_column(Time(np.ma.masked_invalid(bjd) if np.isnan(bjd).any() else bjd,
                          format="jd", scale="tdb"), index=0, name="time")
    for rec in primary.records() + table_header.records():
        if not is_layout_card(rec["name"]):
            table.meta[rec["name"]] = rec["value"]
    return table


#: photometry column -> its error column
_ERROR = {"aim": "aie", "arm": "aie", "aep": "aie", "atf": "aie", "ifl": "ife", "irm": "ire",
          "iep": "ire", "itf": "ire"}


def flag_columns(column: str) -> tuple[str, ...]:
    """The flag columns that qualify a photometry column: ``aiq_NNN`` for ``aim``/``arm``,
    and ``adq_NNN`` too for ``aep``/``atf``; ``irq_NNN`` for ``ifl``/``irm``, and
    ``idq_NNN`` too for ``iep``/``itf``.  A value is good where all are 0."""
    kind, suffix = column[:3], column[3:]
    measured = "aiq" if kind in ("aim", "aie", "arm", "aep", "atf") else "irq"
    return (measured + suffix,) + ((DETREND_FLAGS[kind] + suffix,) if kind in DETREND_FLAGS
                                   else ())


def to_lightkurve(path: Path | str, column: str = "atf_000") -> lightkurve.LightCurve:
    """A ``lightkurve.LightCurve`` of one photometry column of a light-curve file.

    ``time`` is ``bjd`` (astropy Time, TDB; rows without bjd are left out).  For a
    magnitude column (``aim``, ``arm``, ``aep``, ``atf``, ``irm``, ``iep``, ``itf``
    + ``_NNN``) ``flux`` is the relative flux 10**(-0.4 (m - median m)) (no unit,
    median 1) and ``flux_err`` its error from ``aie_NNN``/``ire_NNN``; for ``ifl_NNN``
    flux and error are ``ifl``/``ife`` in ADU.  ``quality`` is the OR of the column's
    flags (``aiq``, and ``adq`` for aep/atf; ``irq``, and ``idq`` for iep/itf): 0 is
    good.  ``centroid_col``/``centroid_row`` are ``xcc``/``ycc`` (pix, 0-based); every
    other column comes along under its own name, the header cards in ``meta``
    (``LABEL`` = OBJECT, ``FLUX_ORIGIN`` = ``column``).
    """
    import astropy.units as u
    import lightkurve

    table = read_lightcurve(path)
    kind, suffix = column[:3], column[3:]
    if kind not in _ERROR or column not in table.colnames:
        raise ValueError(f"{column!r} is not a photometry column of {path} "
                         f"({', '.join(k + suffix for k in _ERROR)})")
    bjd = np.asarray(table["bjd"])
    table = table[np.isfinite(bjd)]
    values = np.asarray(table[column], dtype=np.float64)
    errors = np.asarray(table[_ERROR[kind] + suffix], dtype=np.float64)
    if kind == "ifl":
        flux, flux_err = values * u.adu, errors * u.adu
    else:
        reference = np.nanmedian(values) if np.isfinite(values).any() else 0.0
        flux = 10 ** (-0.4 * (values - reference)) * u.dimensionless_unscaled
        flux_err = 0.4 * np.log(10.0) * flux * errors
    quality = np.bitwise_or.reduce([np.asarray(table[f]) for f in flag_columns(column)], axis=0)
    data = Table({"centroid_col": table["xcc"], "centroid_row": table["ycc"],
                  "quality": quality.astype(np.int32)})
    for name in table.colnames[1:]:  # all but time
        data[name] = table[name]
    meta = dict(table.meta, LABEL=table.meta.get("OBJECT", table.meta.get("OBJECTID")),
                MISSION=table.meta.get("TELESCOP"), FLUX_ORIGIN=column, FILENAME=str(path))
    times = Time(bjd[np.isfinite(bjd)], format="jd", scale="tdb")
    return lightkurve.LightCurve(time=times, flux=flux, flux_err=flux_err, data=data, meta=meta)
