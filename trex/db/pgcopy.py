"""PostgreSQL binary COPY payloads from numpy columns, streamed in chunks.

The row encoding itself is the Cython kernel ``trex._pgcopy.encode_rows``,
which reads the numpy columns as they are (float32 or float64, any signed
integer width, ``S`` or ASCII ``U`` strings) and writes each chunk of rows in
one pass; this module maps PostgreSQL column types to its type codes,
prepares the columns it cannot read directly (object arrays with None,
non-ASCII text, floats bound for integer columns) and hands the COPY a file
whose ``read`` encodes the next :data:`CHUNK_ROWS` rows, so the client encodes
a chunk while the server stores the previous one and the payload is never
held whole in memory.
"""

from __future__ import annotations

import numpy as np

from trex._pgcopy import encode_rows

HEADER = b"PGCOPY\n\xff\r\n\x00" + np.array([0, 0], dtype=">i4").tobytes()
TRAILER = np.array([-1], dtype=">i2").tobytes()

#: PostgreSQL type name -> kernel type code (see cext/pgcopy.pyx)
KINDS = {"double precision": 0, "real": 1, "bigint": 2, "integer": 3, "smallint": 4,
         "boolean": 5, "text": 6}
_FLOAT_KINDS = (0, 1)
#: rows per COPY chunk (~10 MB of ap_photometry rows)
CHUNK_ROWS = 1 << 16


def null_mask(values: np.ndarray) -> np.ndarray:
    """True where a value is missing: NaN for floats, None for objects."""
    if values.dtype.kind == "f":
        return np.isnan(values)
    if values.dtype.kind == "O":
        return np.array([v is None for v in values], dtype=bool)
    return np.zeros(len(values), dtype=bool)


def _text(values: np.ndarray) -> np.ndarray:
    """Text values as ``S`` (UTF-8) or, when all ASCII, ``U`` as they are."""
    if values.dtype.kind == "S":
        return values
    if values.dtype.kind != "U":
        values = values.astype(str)
    if values.size == 0 or values.view(np.uint32).max(initial=0) < 128:
        return values
    return np.char.encode(values, "utf-8")


def prepare(values: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(column the kernel reads, NULL mask or None) of one column bound for ``kind``."""
    if kind not in KINDS:
        raise TypeError(f"no binary COPY encoding for PostgreSQL type {kind!r}")
    values = np.asarray(values)
    code = KINDS[kind]
    mask = null_mask(values) if values.dtype.kind == "O" or (
        values.dtype.kind == "f" and code not in _FLOAT_KINDS) else None
    if mask is not None and not mask.any():
        mask = None
    if code == KINDS["text"]:
        if mask is not None:
            values = np.where(mask, "", values)
        values = _text(values)
    elif code in _FLOAT_KINDS:
        if values.dtype.kind != "f" or values.dtype.itemsize not in (4, 8):
            values = np.where(mask, np.nan, values) if mask is not None else values
            values = values.astype(np.float64)
            mask = None
    elif values.dtype.kind not in "iub" or values.dtype.itemsize > 8 or (
            values.dtype.kind == "u" and values.dtype.itemsize > 1):
        values = (np.where(mask, 0, values) if mask is not None else values).astype(np.int64)
    return np.ascontiguousarray(values), mask


class CopyStream:
    """A read-only file over the binary COPY payload of equally long columns.

    ``types`` are PostgreSQL type names; text columns take str/bytes arrays,
    the others numeric or boolean arrays.  NaN or None become NULL.  Each
    ``read`` returns the next chunk of ``chunk_rows`` rows (the header before
    the first, the trailer after the last), then ``b""``.
    """

    def __init__(self, columns: list[np.ndarray], types: list[str], chunk_rows: int = CHUNK_ROWS):
        prepared = [prepare(values, kind) for values, kind in zip(columns, types)]
        self.columns = [c for c, _ in prepared]
        self.nulls = [m for _, m in prepared]
        self.kinds = np.array([KINDS[t] for t in types], dtype=np.int32)
        self.nrows = len(self.columns[0]) if self.columns else 0
        self.chunk_rows, self.start, self.done = max(1, int(chunk_rows)), 0, False

    def read(self, size: int = -1) -> bytes:
        """The next chunk of the payload (``size`` is ignored: chunks are whole rows)."""
        if self.done:
            return b""
        stop = min(self.start + self.chunk_rows, self.nrows)
        chunk = encode_rows(self.columns, self.nulls, self.kinds, self.start, stop,
                            HEADER if self.start == 0 else b"",
                            TRAILER if stop == self.nrows else b"")
        self.start, self.done = stop, stop == self.nrows
        return chunk


def encode(columns: list[np.ndarray], types: list[str]) -> bytes:
    """The whole binary COPY payload (header, rows, trailer) of equally long columns."""
    stream = CopyStream(columns, types, chunk_rows=max(1, len(columns[0]) if columns else 1))
    return stream.read()
