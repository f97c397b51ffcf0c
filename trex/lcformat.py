"""The light-curve file: HAT column names (SPEC section 5), one table of them.

One FITS file per star, ``LC/<projid>/<objectid>.fits``; HDU 1 is a binary
table named ``LIGHTCURVE`` with one row per frame, sorted by time.  Per-
aperture columns carry the suffix ``_000``, ``_001``, ... in the order of the
configured apertures.  Missing measurements are NaN with a non-zero flag
(``trex.flags.PHOT``).

The header keeps the star's ids exactly: ``OBJECTID`` (the pipeline's id) and
``CATID`` (the id in the field catalog).  An id longer than one card goes on
CONTINUE cards; an id with characters a FITS header cannot hold (anything but
printable ASCII: tabs, newlines, accents, ...; or a ``%``) is written
percent-encoded (:func:`id_text`: UTF-8 bytes as ``%XX``, ``%`` as ``%25``) in
both cards, and the card ``IDENC`` says so; :func:`read_rows` and
:func:`read_lightcurve` decode it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np
from astropy.table import Table

from trex.fits import atomic_write
from trex.fitstable import Header, read_table, write_table

#: (name, description, numpy dtype, per aperture)
COLUMNS = (
    ("rjd", "reduced JD (JD - 2400000), UTC mid-exposure", "f8", False),
    ("bjd", "BJD_TDB mid-exposure", "f8", False),
    ("framekey", "frame id in the database", "i8", False),
    ("frame", "calibrated frame name", "S40", False),
    ("xcc", "x on the calibrated frame, px, 0-based", "f8", False),
    ("ycc", "y on the calibrated frame, px, 0-based", "f8", False),
    ("bgv", "local sky per pixel, ADU", "f4", False),
    ("bge", "error of the local sky, ADU", "f4", False),
    ("fsv", "PSF shape S at the star, 1/px^2", "f4", False),
    ("fdv", "PSF shape D at the star, 1/px^2", "f4", False),
    ("fkv", "PSF shape K at the star, 1/px^2", "f4", False),
    ("aim", "instrumental magnitude", "f4", True),
    ("aie", "instrumental magnitude error", "f4", True),
    ("aiq", "aperture photometry quality flag (trex.flags.PHOT)", "i2", True),
    ("arm", "magnitude after magnitude fitting", "f4", True),
    ("aep", "magnitude after EPD", "f4", True),
    ("atf", "magnitude after TFA", "f4", True),
    ("adq", "detrending flag of aep/atf (trex.flags.PHOT NOT_FITTED: not detrended)", "i2", True),
    ("ifl", "image-subtraction flux, ADU (reference scale)", "f8", True),
    ("ife", "image-subtraction flux error, ADU", "f8", True),
    ("irm", "image-subtraction magnitude", "f4", True),
    ("ire", "image-subtraction magnitude error", "f4", True),
    ("irq", "image-subtraction quality flag (trex.flags.PHOT)", "i2", True),
    ("iep", "image-subtraction magnitude after EPD", "f4", True),
    ("itf", "image-subtraction magnitude after TFA", "f4", True),
    ("idq", "detrending flag of iep/itf (trex.flags.PHOT NOT_FITTED: not detrended)", "i2", True),
)


def column_names(napertures: int) -> list[str]:
    """Every column name of a light curve with ``napertures`` apertures, in file order."""
    names = []
    for name, _, _, per_aperture in COLUMNS:
        names += [f"{name}_{i:03d}" for i in range(napertures)] if per_aperture else [name]
    return names


@functools.lru_cache(maxsize=8)
def lc_dtype(napertures: int) -> np.dtype:
    """Row dtype of a light curve with ``napertures`` apertures."""
    fields = []
    for name, _, dtype, per_aperture in COLUMNS:
        if per_aperture:
            fields += [(f"{name}_{i:03d}", dtype) for i in range(napertures)]
        else:
            fields.append((name, dtype))
    return np.dtype(fields)


def empty_rows(n: int, napertures: int) -> np.ndarray:
    """``n`` rows with every value missing (NaN, flag MISSING)."""
    from trex.flags import PHOT

    rows = np.zeros(n, dtype=lc_dtype(napertures))
    for name in rows.dtype.names:
        kind = rows.dtype[name].kind
        if kind == "f":
            rows[name] = np.nan
        elif name[:3] in ("aiq", "irq"):
            rows[name] = PHOT["MISSING"].bit
        elif name[:3] in ("adq", "idq"):
            rows[name] = PHOT["NOT_FITTED"].bit
    return rows


def describe_columns(napertures: int) -> dict[str, str]:
    """Column name -> description (for headers and documentation)."""
    out = {}
    for name, text, _, per_aperture in COLUMNS:
        if per_aperture:
            out.update({f"{name}_{i:03d}": f"{text}, aperture {i}" for i in range(napertures)})
        else:
            out[name] = text
    return out


#: header cards holding an object id
ID_CARDS = ("OBJECTID", "CATID")
#: header card present when the id cards are percent-encoded
IDENC = "IDENC"
#: characters an id keeps in its FITS text form: printable ASCII but ``%``
_KEPT = "".join(chr(c) for c in range(32, 127) if chr(c) != "%")


def id_text(objectid: str) -> str:
    """FITS (printable ASCII) text of an object id: characters other than
    printable ASCII, and ``%``, become ``%XX`` per UTF-8 byte; any other id is
    its own text.  :func:`id_from_text` undoes it."""
    return quote(objectid, safe=_KEPT)


def id_from_text(text: str) -> str:
    """The object id whose :func:`id_text` is ``text``."""
    return unquote(text, errors="strict")


def encode_ids(cards: list[dict]) -> list[dict]:
    """Header cards as written: if an id card's value is not its own
    :func:`id_text`, every id card holds its text and ``IDENC`` is added."""
    cards = [c for c in cards if c["name"] != IDENC]
    if all(id_text(str(c["value"])) == c["value"] for c in cards if c["name"] in ID_CARDS):
        return cards
    out = [dict(c, value=id_text(str(c["value"]))) if c["name"] in ID_CARDS else c
           for c in cards]
    return out + [{"name": IDENC, "value": "percent-encoded UTF-8",
                   "comment": "OBJECTID, CATID: %XX is a byte"}]


def decode_ids(header: Header) -> Header:
    """``header`` with the id cards decoded (as :func:`encode_ids` wrote them)."""
    if IDENC not in header:
        return header
    return Header([(r["name"], id_from_text(r["value"]) if r["name"] in ID_CARDS
                    else r["value"], r["comment"]) for r in header.records()
                   if r["name"] != IDENC])


def write_lightcurve(path: Path | str, rows: np.ndarray, header: list[dict]) -> Path:
    """Write ``rows`` (``lc_dtype``) as the LIGHTCURVE table of ``path``, atomically."""
    with atomic_write(path) as tmp:
        write_table(tmp, rows, "LIGHTCURVE", encode_ids(header))
    return Path(path)


_STRUCTURAL = ("XTENSION", "BITPIX", "NAXIS", "PCOUNT", "GCOUNT", "TFIELDS", "EXTNAME",
               "TTYPE", "TFORM", "TUNIT", "TDIM", "TNULL", "TSCAL", "TZERO", "TDISP")


def header_cards(header: Header) -> list[dict]:
    """The user cards of a light curve's table header (structural table cards dropped),
    to write them again."""
    return [{"name": r["name"], "value": r["value"], "comment": r.get("comment", "")}
            for r in header.records()
            if r.get("name") and not r["name"].startswith(_STRUCTURAL)]


def read_rows(path: Path | str) -> tuple[np.ndarray, Header]:
    """Raw rows (numpy structured array) and header (ids decoded) of a light-curve file."""
    rows, header = read_table(path, "LIGHTCURVE")
    return rows, decode_ids(header)


def read_lightcurve(path: Path | str) -> Table:
    """A light curve as an astropy Table (SPEC section 5 columns, header in ``meta``)."""
    rows, header = read_rows(path)
    table = Table(rows)
    table["frame"] = np.char.decode(np.char.rstrip(table["frame"].data.astype("S")), "ascii")
    skip = {"XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "PCOUNT", "GCOUNT", "TFIELDS",
            "EXTNAME"}
    for rec in header.records():
        name = rec.get("name")
        if name and name not in skip and not name.startswith(("TTYPE", "TFORM", "TUNIT")):
            table.meta[name] = rec.get("value")
    return table
