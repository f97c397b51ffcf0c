"""A minimal, fast writer and reader of one FITS binary table (the light-curve files).

Light-curve transposition and detrending read and write one small file per
star, so the per-file cost of a general FITS library (opening, parsing the
header card by card into Python objects, re-reading HDU information after
each step: ~7 ms with fitsio for a light curve of 60 columns) dominates.
The writer lays the file out directly: an empty primary HDU, then one
BINTABLE extension whose header is built once per column layout, and the
rows as big-endian bytes, each part padded to 2880 bytes as the FITS
standard requires.  The reader reads such files (any file whose first
extension is a BINTABLE of scalar columns and text) in one read and hands
anything else to fitsio.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

BLOCK = 2880
_TFORM = {"f8": "D", "f4": "E", "i8": "K", "i4": "J", "i2": "I", "u1": "B"}
_DTYPE = {form: np.dtype(">" + kind) for kind, form in _TFORM.items()}
#: a card's value: a quoted string ('' is a quote), or anything up to the comment slash
_VALUE = re.compile(r"\s*(?:'((?:[^']|'')*)'|([^/]*))\s*(?:/\s?(.*))?$")


#: characters of a quoted string that fit on one card (80 - "KEYWORD= " - 2 quotes)
_STRING_ROOM = 68


def _long_string(key: str, value: str, comment: str) -> str:
    """A string too long for one card, over CONTINUE cards (FITS 4.0 section 4.2.1.2):
    each card but the last ends its piece with ``&``; a doubled quote is never split."""
    pieces, piece, size = [], "", 0
    for char in value:
        width = 2 if char == "'" else 1
        if size + width > _STRING_ROOM - 1:
            pieces.append(piece)
            piece, size = "", 0
        piece += char
        size += width
    pieces.append(piece)
    if value.endswith("&"):
        pieces.append("")  # a last piece ending in & would read as continued
    lines = []
    for i, text in enumerate(pieces):
        quoted = text.replace("'", "''") + ("&" if i < len(pieces) - 1 else "")
        line = (f"{key:<8}= " if i == 0 else "CONTINUE  ") + f"'{quoted}'"
        if i == len(pieces) - 1 and comment:
            line += f" / {comment}"
        lines.append(f"{line[:80]:<80}")
    return "".join(lines)


def card(key: str, value, comment: str = "") -> str:
    """One 80-character header card (fixed format for numbers and logicals); a
    string longer than a card holds goes on as many CONTINUE cards as it needs."""
    if isinstance(value, str) and len(value.replace("'", "''")) > _STRING_ROOM:
        return _long_string(key, value, comment)
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


class Header:
    """The cards of a table header: ``get``/``[]`` by keyword, ``records()`` like
    fitsio's (dicts with ``name``, ``value``, ``comment``)."""

    def __init__(self, cards: list[tuple[str, object, str]]):
        self._cards = cards
        self._values = {name: value for name, value, _ in cards}

    def records(self) -> list[dict]:
        return [{"name": n, "value": v, "comment": c} for n, v, c in self._cards]

    def get(self, name: str, default=None):
        return self._values.get(name, default)

    def __getitem__(self, name: str):
        return self._values[name]

    def __contains__(self, name: str) -> bool:
        return name in self._values


@functools.lru_cache(maxsize=4096)
def _card(line: str) -> tuple[str, object, str] | None:
    """(keyword, value, comment) of one 80-character card, None for END.  Cached: the
    column cards repeat in every light curve of a project."""
    key = line[:8].strip()
    if key == "END":
        return None
    if line[8:10] != "= ":
        return key, line[8:].rstrip(), ""
    string, other, comment = _VALUE.match(line[10:]).groups()
    comment = (comment or "").strip()
    if string is not None:
        return key, string.replace("''", "'").rstrip(), comment
    other = other.strip()
    if other in ("T", "F"):
        return key, other == "T", comment
    for kind in (int, lambda text: float(text.replace("D", "E"))):
        try:
            return key, kind(other), comment
        except ValueError:
            pass
    return key, other, comment


def _continued(value) -> bool:
    """True if ``value`` is a string that goes on in a CONTINUE card."""
    return isinstance(value, str) and value.endswith("&")


def _cards(data: bytes, start: int) -> tuple[list[tuple[str, object, str]], int]:
    """The cards of the header at byte ``start`` and where its data begin."""
    cards, pos = [], start
    while pos + BLOCK <= len(data):
        block = data[pos:pos + BLOCK].decode("ascii", errors="replace")
        pos += BLOCK
        for i in range(0, BLOCK, 80):
            card = _card(block[i:i + 80])
            if card is None:
                return cards, pos
            if card[0] == "CONTINUE" and cards and _continued(cards[-1][1]):
                string, _, comment = _VALUE.match(block[i + 10:i + 80]).groups()
                name, value, _ = cards[-1]
                cards[-1] = (name, value[:-1] + (string or "").replace("''", "'").rstrip(),
                             (comment or "").strip())
            elif card[0]:
                cards.append(card)
    raise ValueError("no END card")


@functools.lru_cache(maxsize=8)
def _table_dtype(columns: tuple[tuple[str, str], ...]) -> np.dtype:
    """Big-endian row dtype of (TTYPE, TFORM) pairs of scalar columns and text."""
    fields = []
    for name, form in columns:
        match = re.fullmatch(r"(\d*)([A-Z])", form.strip())
        repeat, code = match.groups() if match else ("", "?")
        if code == "A":
            fields.append((name, f"S{int(repeat or 1)}"))
        elif code in _DTYPE and repeat in ("", "1"):
            fields.append((name, _DTYPE[code]))
        else:
            raise ValueError(f"column {name}: TFORM {form} is not a scalar")
    return np.dtype(fields)


def read_table(path: Path | str, extname: str) -> tuple[np.ndarray, Header]:
    """Rows (native byte order) and header of the binary table ``extname`` of
    ``path``, read directly when it is laid out as :func:`write_table` writes it
    (the first extension, scalar columns and text); any other layout (vector
    columns, a heap, a primary image, another extension first) is read by fitsio."""
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        primary, start = _cards(data, 0)
        cards, start = _cards(data, start)
        values = dict((name, value) for name, value, _ in cards)
        if (dict((name, value) for name, value, _ in primary).get("NAXIS") != 0
                or values.get("XTENSION") != "BINTABLE" or values.get("PCOUNT", 0) != 0
                or values.get("EXTNAME") != extname):
            raise ValueError("not a plain binary table after an empty primary HDU")
        ncols = int(values["TFIELDS"])
        dtype = _table_dtype(tuple((str(values[f"TTYPE{i}"]), str(values[f"TFORM{i}"]))
                                   for i in range(1, ncols + 1)))
        if dtype.itemsize != values["NAXIS1"]:
            raise ValueError("NAXIS1 is not the sum of the columns")
        rows = np.frombuffer(data, dtype=dtype, count=int(values["NAXIS2"]), offset=start)
    except (ValueError, KeyError, TypeError):
        return _read_fitsio(path, extname)
    return rows.astype(dtype.newbyteorder("=")), Header(cards)


def _read_fitsio(path: Path | str, extname: str) -> tuple[np.ndarray, Header]:
    import fitsio

    with fitsio.FITS(str(path)) as fits:
        ext = fits[extname]
        rows, header = ext.read(), ext.read_header()
    return rows, Header([(r["name"], r["value"], r.get("comment", "") or "")
                         for r in header.records() if r.get("name")])
