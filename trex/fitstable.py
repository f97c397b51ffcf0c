"""A minimal, fast writer and reader of one FITS binary table (the light-curve files).

Light-curve transposition and detrending read and write one small file per
star, so the per-file cost of a general FITS library (opening, parsing the
header card by card into Python objects, re-reading HDU information after
each step: ~7 ms with fitsio for a light curve of 60 columns) dominates.
The writer lays the file out directly: a primary HDU without data (its
header cards given), then one BINTABLE extension whose column cards (TTYPEn
with a description as comment, TFORMn, then any TUNITn, TCTYPn, ... given per
column) are built once per column layout, and the rows as big-endian bytes,
each part padded to 2880 bytes as the FITS standard requires.  String values
too long for one card use the long-string convention (CONTINUE cards, FITS 4.0
section 4.2.1.2): nothing is cut.  The reader reads such files (any file whose
first extension is a BINTABLE of scalar columns and text) in one read and
hands anything else to fitsio.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trex.errors import writing

log = logging.getLogger(__name__)

BLOCK = 2880
_TFORM = {"f8": "D", "f4": "E", "i8": "K", "i4": "J", "i2": "I", "u1": "B"}
_DTYPE = {form: np.dtype(">" + kind) for kind, form in _TFORM.items()}
#: a card's value: a quoted string ('' is a quote), or anything up to the comment slash
_VALUE = re.compile(r"\s*(?:'((?:[^']|'')*)'|([^/]*))\s*(?:/\s?(.*))?$")
_COMMENTARY = ("COMMENT", "HISTORY", "")
#: characters of a string in one card: 80 - len("KEYWORD = '") - len("&'")
_PIECE = 67

#: per column of a table: (name, description, ((keyword stem, value), ...)), e.g.
#: ("rjd", "JD - 2400000", (("TUNIT", "d"), ("TCTYP", "UTC")))
ColumnSpec = tuple[tuple[str, str, tuple[tuple[str, object], ...]], ...]


def _number(value) -> str:
    if isinstance(value, bool):
        return "T" if value else "F"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if not np.isfinite(float(value)):
        raise ValueError(f"FITS header values must be finite, got {value}")
    return repr(float(value)).upper()  # the shortest text that reads back the same double


def _words(text: str, width: int) -> list[str]:
    """``text`` in pieces of at most ``width`` characters, broken at spaces where possible."""
    pieces = []
    while len(text) > width:
        cut = text.rfind(" ", 1, width + 1)
        cut = cut if cut > 0 else width
        pieces.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    return pieces + [text]


def _quoted_pieces(text: str) -> list[str]:
    """``text`` quoted (' doubled) in pieces of at most ``_PIECE`` characters; a doubled
    quote is never split."""
    pieces, current = [], ""
    for char in text:
        char = "''" if char == "'" else char
        if len(current) + len(char) > _PIECE:
            pieces.append(current)
            current = ""
        current += char
    return pieces + [current]


def _string_cards(key: str, text: str, comment: str) -> str:
    quoted = text.replace("'", "''")
    line = f"{key:<8}= '{quoted:<8}'"
    if len(line) <= 80 and len(line) + (len(comment) + 3 if comment else 0) <= 80:
        return f"{line + (f' / {comment}' if comment else ''):<80}"
    pieces = _quoted_pieces(text)
    if text.endswith("&"):
        pieces.append("")  # a last piece ending in & would read as continued
    lines = [f"{'CONTINUE  ' if i else f'{key:<8}= '}'{piece}&'" for i, piece in enumerate(pieces)]
    last = lines[-1][:-2] + "'"  # the last piece without '&' when the comment fits after it
    if not comment or len(last) + 3 + len(comment) <= 80:
        lines[-1] = last + (f" / {comment}" if comment else "")
    else:  # the comment on cards of its own, as astropy writes it
        parts = _words(comment, 80 - len("CONTINUE  '&' / "))
        lines += [f"CONTINUE  '{'&' if i < len(parts) - 1 else ''}' / {part}"
                  for i, part in enumerate(parts)]
    return "".join(f"{line:<80}" for line in lines)


@functools.lru_cache(maxsize=4096, typed=True)
def card(key: str, value, comment: str = "") -> str:
    """The header card(s) of one keyword, 80 characters each: numbers and logicals in
    fixed format (free format when that leaves the comment room), strings too long
    for one card continued on CONTINUE cards, COMMENT/HISTORY text on as many cards
    as it takes.  Raises ValueError for a keyword longer than 8 characters or a
    non-finite number.  Cached: most cards repeat from file to file."""
    if len(key) > 8:
        raise ValueError(f"keyword {key!r} is longer than 8 characters")
    if key in _COMMENTARY:
        return "".join(f"{key:<8}{part:<72}" for part in _words(str(value), 72))
    if not isinstance(value, (bool, int, float, np.integer, np.floating)):
        return _string_cards(key, str(value), comment)
    text = _number(value)
    line = f"{key:<8}= {text:>20}"
    if comment and len(line) + 3 + len(comment) > 80:
        line = f"{key:<8}= {text}"
        if len(line) + 3 + len(comment) > 80:
            log.warning("header card %s: comment cut to fit 80 characters: %r", key, comment)
            comment = comment[:80 - len(line) - 3]
    if comment:
        line += f" / {comment}"
    return f"{line:<80}"


def _pad(data: bytes, fill: bytes) -> bytes:
    return data + fill * (-len(data) % BLOCK)


@functools.lru_cache(maxsize=16)
def _layout(dtype: np.dtype, columns: ColumnSpec | None) -> tuple[str, int, np.dtype]:
    """(column cards, row width in bytes, big-endian dtype) of a row dtype and the
    descriptions and keywords of its columns (by name; columns not named get
    TTYPE and TFORM only)."""
    spec = {name: (text, keys) for name, text, keys in columns or ()}
    cards, width, big = [], 0, []
    for i, name in enumerate(dtype.names, start=1):
        field = dtype[name]
        if field.kind == "S":
            form = f"{field.itemsize}A"
        else:
            form = _TFORM[f"{field.kind}{field.itemsize}"]
        text, keys = spec.get(name, ("", ()))
        cards += [card(f"TTYPE{i}", name, text), card(f"TFORM{i}", form)]
        cards += [card(f"{stem}{i}", value) for stem, value in keys]
        width += field.itemsize
        big.append((name, field.newbyteorder(">") if field.kind != "S" else field))
    return "".join(cards), width, np.dtype(big)


def _primary(cards: list[dict]) -> bytes:
    header = [card("SIMPLE", True, "conforms to FITS standard"), card("BITPIX", 8),
              card("NAXIS", 0), card("EXTEND", True)]
    header += [card(c["name"], c["value"], c.get("comment", "")) for c in cards]
    header.append(f"{'END':<80}")
    return _pad("".join(header).encode("ascii", errors="replace"), b" ")


PRIMARY = _primary([])


@functools.lru_cache(maxsize=16)
def _ascii(dtype: np.dtype) -> np.dtype:
    """``dtype`` with its str fields as bytes of as many characters."""
    return np.dtype([(n, f"S{max(1, dtype[n].itemsize // 4)}" if dtype[n].kind == "U"
                      else dtype[n]) for n in dtype.names])


def _table_header(dtype: np.dtype, nrows: int, extname: str, cards: list[dict],
                  columns: ColumnSpec | None, blank: int = 0, size: int | None = None
                  ) -> bytes | None:
    """The BINTABLE header of ``nrows`` rows of ``dtype``: ``blank`` blank cards before
    END (room for later cards), or, with ``size``, as many as fill exactly ``size``
    bytes (None when the cards do not fit in it)."""
    column_cards, width, _ = _layout(dtype, columns)
    header = [card("XTENSION", "BINTABLE", "binary table extension"), card("BITPIX", 8),
              card("NAXIS", 2), card("NAXIS1", width, "bytes per row"),
              card("NAXIS2", nrows, "rows"), card("PCOUNT", 0), card("GCOUNT", 1),
              card("TFIELDS", len(dtype.names)), column_cards, card("EXTNAME", extname)]
    header += [card(c["name"], c["value"], c.get("comment", "")) for c in cards]
    text = "".join(header).encode("ascii", errors="replace")
    if size is not None:
        blank = (size - len(text)) // 80 - 1
        if blank < 0:
            return None
    text += b" " * (80 * blank) + f"{'END':<80}".encode("ascii")
    out = _pad(text, b" ")
    return out if size is None or len(out) == size else None


def write_table(path: Path | str, rows: np.ndarray, extname: str, cards: list[dict],
                columns: ColumnSpec | None = None, primary: list[dict] | None = None,
                blank: int = 0) -> None:
    """Write ``rows`` (structured array of float, integer and bytes fields) as the first
    extension of a new FITS file at ``path``.  ``cards`` are extra table header cards
    and ``primary`` the cards of the primary header ({"name", "value", "comment"});
    ``columns`` gives columns a description (the TTYPEn comment) and keywords such as
    TUNITn (see ``ColumnSpec``); ``blank`` blank cards are left before END, room for
    the cards of later appends (:func:`append_rows`)."""
    ascii_dtype = _ascii(rows.dtype)
    if ascii_dtype != rows.dtype:  # text as ASCII bytes
        rows = rows.astype(ascii_dtype)
    big = _layout(rows.dtype, columns)[2]
    data = rows.astype(big, copy=False)  # rows already big-endian are written as they are
    with open(path, "wb") as fh:
        fh.write((_primary(primary) if primary else PRIMARY)
                 + _table_header(rows.dtype, len(rows), extname, cards, columns, blank))
        fh.write(data.data)
        fh.write(b"\0" * (-data.nbytes % BLOCK))


@dataclass(frozen=True)
class Layout:
    """Where a table written by :func:`write_table` lies in its file (headers only read)."""

    header: Header       # the table header's cards
    table_start: int     # byte offset of the table header
    data_start: int      # byte offset of the rows
    nrows: int
    dtype: np.dtype      # the rows as stored (big-endian)


def read_layout(path: Path | str, extname: str) -> Layout | None:
    """The :class:`Layout` of the table ``extname`` of ``path``, reading its headers only;
    None when the file is not laid out as :func:`write_table` writes."""
    with open(path, "rb") as fh:
        data = b""
        while True:  # the two headers: a few blocks
            more = fh.read(4 * BLOCK)
            data += more
            try:
                naxis, start = _skip(data, 0)
                cards, data_start = _cards(data, start)
                break
            except ValueError:
                if not more:
                    return None
    values = Header(cards)._values
    if (naxis != 0 or values.get("XTENSION") != "BINTABLE" or values.get("PCOUNT", 0) != 0
            or values.get("EXTNAME") != extname):
        return None
    try:
        dtype = _table_dtype(tuple(map(values.__getitem__, _column_keys(int(values["TFIELDS"])))))
    except (KeyError, ValueError, TypeError):
        return None
    if dtype.itemsize != values["NAXIS1"]:
        return None
    return Layout(Header(cards), start, data_start, int(values["NAXIS2"]), dtype)


def append_rows(path: Path | str, layout: Layout, rows: np.ndarray, extname: str,
                cards: list[dict], columns: ColumnSpec | None = None) -> bool:
    """Append ``rows`` to the table of ``path`` in place and replace its header cards by
    ``cards``; False (nothing written) when the rows' layout differs or the new header
    does not fit in the old one's blocks.

    The rows go after the old ones (over the old padding), then the table header,
    of the same length, is written over the old one: a job killed before that leaves
    the old table (the file's end is cut back to it by the next append)."""
    rows = rows.astype(_ascii(rows.dtype), copy=False)
    big = _layout(rows.dtype, columns)[2]
    if big != layout.dtype:
        return False
    header = _table_header(rows.dtype, layout.nrows + len(rows), extname, cards, columns,
                           size=layout.data_start - layout.table_start)
    if header is None:
        return False
    data = rows.astype(big, copy=False)
    end = layout.data_start + layout.nrows * layout.dtype.itemsize
    fd = os.open(path, os.O_WRONLY)
    try:
        with writing(path):
            os.ftruncate(fd, end)
            os.pwrite(fd, data.tobytes() + b"\0" * (-(end + data.nbytes - layout.data_start)
                                                     % BLOCK), end)
            os.pwrite(fd, header, layout.table_start)
    finally:
        os.close(fd)
    return True


class Header:
    """The cards of a header: ``get``/``[]`` by keyword, ``records()`` like
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
    if key == "CONTINUE":
        string, _, comment = _VALUE.match(line[10:]).groups()
        return key, (string or "").replace("''", "'").rstrip(), (comment or "").strip()
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


@functools.lru_cache(maxsize=256)
def _block(block: bytes) -> tuple[tuple[tuple[str, object, str], ...], bool, bool]:
    """The cards of one 2880-byte header block (blank ones left out), whether it ends
    the header and whether it has CONTINUE cards.  Cached: the blocks of column cards
    are the same in every light curve of a project."""
    text = block.decode("ascii", errors="replace")
    cards = []
    for i in range(0, BLOCK, 80):
        card = _card(text[i:i + 80])
        if card is None:
            break
        if card[0]:
            cards.append(card)
    return tuple(cards), card is None, any(c[0] == "CONTINUE" for c in cards)


def _join(cards: list[tuple[str, object, str]]) -> list[tuple[str, object, str]]:
    """CONTINUE cards joined to the string value (ending in '&') they continue."""
    out: list[tuple[str, object, str]] = []
    for card in cards:
        if card[0] == "CONTINUE" and out and isinstance(out[-1][1], str) \
                and out[-1][1].endswith("&"):
            name, value, comment = out[-1]
            out[-1] = (name, value[:-1] + card[1], " ".join(filter(None, (comment, card[2]))))
        elif card[0] != "CONTINUE":
            out.append(card)
    return out


def _cards(data: bytes, start: int) -> tuple[list[tuple[str, object, str]], int]:
    """The cards of the header at byte ``start`` (CONTINUE cards joined to the string
    they continue) and where its data begin."""
    cards: list[tuple[str, object, str]] = []
    pos, continued = start, False
    while pos + BLOCK <= len(data):
        block, end, more = _block(data[pos:pos + BLOCK])
        pos += BLOCK
        cards += block
        continued |= more
        if end:
            return _join(cards) if continued else cards, pos
    raise ValueError("no END card")


def _skip(data: bytes, start: int) -> tuple[int, int]:
    """NAXIS of the header at byte ``start`` and where its data begin, without
    parsing its other cards (the primary header, read for its layout only)."""
    naxis, pos = -1, start
    while pos + BLOCK <= len(data):
        block = data[pos:pos + BLOCK]
        pos += BLOCK
        for i in range(0, BLOCK, 80):
            key = block[i:i + 8]
            if key == b"NAXIS   ":
                naxis = _card(block[i:i + 80].decode("ascii", errors="replace"))[1]
            elif key == b"END     ":
                return naxis, pos
    raise ValueError("no END card")


@functools.lru_cache(maxsize=8)
def _column_keys(ncols: int) -> tuple[str, ...]:
    return tuple(f"{stem}{i}" for i in range(1, ncols + 1) for stem in ("TTYPE", "TFORM"))


@functools.lru_cache(maxsize=8)
def _table_dtype(columns: tuple) -> np.dtype:
    """Big-endian row dtype of TTYPE1, TFORM1, TTYPE2, ... of scalar columns and text."""
    fields = []
    for name, form in zip(map(str, columns[::2]), map(str, columns[1::2])):
        match = re.fullmatch(r"(\d*)([A-Z])", form.strip())
        repeat, code = match.groups() if match else ("", "?")
        if code == "A":
            fields.append((name, f"S{int(repeat or 1)}"))
        elif code in _DTYPE and repeat in ("", "1"):
            fields.append((name, _DTYPE[code]))
        else:
            raise ValueError(f"column {name}: TFORM {form} is not a scalar")
    return np.dtype(fields)


def read_file(path: Path | str, extname: str,
              primary: bool = True) -> tuple[np.ndarray, Header, Header | None]:
    """Rows (native byte order), table header and primary header (None unless
    ``primary``) of the binary table ``extname`` of ``path``, read directly when it is
    laid out as :func:`write_table` writes it (the first extension, scalar columns
    and text); any other layout (vector columns, a heap, a primary image, another
    extension first) is read by fitsio."""
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        if primary:
            first, start = _cards(data, 0)
            naxis = dict((name, value) for name, value, _ in first).get("NAXIS")
        else:
            first, (naxis, start) = [], _skip(data, 0)
        cards, start = _cards(data, start)
        header = Header(cards)
        values = header._values
        if (naxis != 0 or values.get("XTENSION") != "BINTABLE" or values.get("PCOUNT", 0) != 0
                or values.get("EXTNAME") != extname):
            raise ValueError("not a plain binary table after an empty primary HDU")
        dtype = _table_dtype(tuple(map(values.__getitem__, _column_keys(int(values["TFIELDS"])))))
        if dtype.itemsize != values["NAXIS1"]:
            raise ValueError("NAXIS1 is not the sum of the columns")
        rows = np.frombuffer(data, dtype=dtype, count=int(values["NAXIS2"]), offset=start)
    except (ValueError, KeyError, TypeError):
        return _read_fitsio(path, extname, primary)
    return rows.astype(dtype.newbyteorder("=")), header, Header(first) if primary else None


def read_table(path: Path | str, extname: str) -> tuple[np.ndarray, Header]:
    """Rows (native byte order) and header of the binary table ``extname`` of ``path``
    (:func:`read_file` without the primary header)."""
    rows, header, _ = read_file(path, extname, primary=False)
    return rows, header


def _records(header) -> Header:
    return Header([(r["name"], r["value"], r.get("comment", "") or "")
                   for r in header.records() if r.get("name")])


def _read_fitsio(path: Path | str, extname: str,
                 primary: bool) -> tuple[np.ndarray, Header, Header | None]:
    import fitsio

    with fitsio.FITS(str(path)) as fits:
        ext = fits[extname]
        rows, header = ext.read(), ext.read_header()
        first = _records(fits[0].read_header()) if primary else None
    return rows, _records(header), first
