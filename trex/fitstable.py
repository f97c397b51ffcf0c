"""A minimal, fast writer of one FITS binary table (the light-curve files).

Light-curve transposition writes one small file per star, so the per-file
cost of a general FITS library (opening, re-reading HDU information after
each step) dominates.  This writer lays the file out directly: an empty
primary HDU, then one BINTABLE extension whose header is built once per
column layout, and the rows as big-endian bytes, each part padded to 2880
bytes as the FITS standard requires.  Reading is left to fitsio/astropy.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

BLOCK = 2880
_TFORM = {"f8": "D", "f4": "E", "i8": "K", "i4": "J", "i2": "I", "u1": "B"}


def card(key: str, value, comment: str = "") -> str:
    """One 80-character header card (fixed format for numbers and logicals)."""
    if isinstance(value, bool):
        text = f"{'T' if value else 'F':>20}"
    elif isinstance(value, (int, np.integer)):
        text = f"{int(value):>20d}"
    elif isinstance(value, (float, np.floating)):
        number = f"{float(value):.16G}"
        if "." not in number and "E" not in number and "N" not in number and "I" not in number:
            number += ".0"
        text = f"{number:>20}"
    else:
        quoted = str(value).replace("'", "''")
        text = f"'{quoted:<8}'"
    line = f"{key:<8}= {text}"
    if comment:
        line += f" / {comment}"
    if len(line) > 80:
        line = line[:80]
    return f"{line:<80}"


def _pad(data: bytes, fill: bytes) -> bytes:
    return data + fill * (-len(data) % BLOCK)


@functools.lru_cache(maxsize=8)
def _layout(dtype: np.dtype) -> tuple[str, int, np.dtype]:
    """(TTYPE/TFORM cards, row width in bytes, big-endian dtype) of a row dtype."""
    cards, width, big = [], 0, []
    for i, name in enumerate(dtype.names, start=1):
        field = dtype[name]
        if field.kind == "S":
            form = f"{field.itemsize}A"
        else:
            form = _TFORM[f"{field.kind}{field.itemsize}"]
        cards += [card(f"TTYPE{i}", name), card(f"TFORM{i}", form)]
        width += field.itemsize
        big.append((name, field.newbyteorder(">") if field.kind != "S" else field))
    return "".join(cards), width, np.dtype(big)


PRIMARY = _pad("".join([card("SIMPLE", True, "conforms to FITS standard"), card("BITPIX", 8),
                        card("NAXIS", 0), card("EXTEND", True), f"{'END':<80}"]).encode(), b" ")


def write_table(path: Path | str, rows: np.ndarray, extname: str, cards: list[dict]) -> None:
    """Write ``rows`` (structured array of float, integer and bytes fields) as the first
    extension of a new FITS file at ``path``; ``cards`` are extra header cards
    ({"name", "value", "comment"})."""
    if any(rows.dtype[name].kind == "U" for name in rows.dtype.names):  # text as ASCII bytes
        rows = rows.astype([(n, f"S{rows.dtype[n].itemsize // 4}" if rows.dtype[n].kind == "U"
                             else rows.dtype[n]) for n in rows.dtype.names])
    columns, width, big = _layout(rows.dtype)
    header = [card("XTENSION", "BINTABLE", "binary table extension"), card("BITPIX", 8),
              card("NAXIS", 2), card("NAXIS1", width, "bytes per row"),
              card("NAXIS2", len(rows), "rows"), card("PCOUNT", 0), card("GCOUNT", 1),
              card("TFIELDS", len(rows.dtype.names)), columns, card("EXTNAME", extname)]
    header += [card(c["name"], c["value"], c.get("comment", "")) for c in cards]
    header.append(f"{'END':<80}")
    data = rows.astype(big, copy=False)  # rows already big-endian are written as they are
    with open(path, "wb") as fh:
        fh.write(PRIMARY)
        fh.write(_pad("".join(header).encode("ascii", errors="replace"), b" "))
        fh.write(data.data)
        fh.write(b"\0" * (-data.nbytes % BLOCK))
