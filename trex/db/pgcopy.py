"""PostgreSQL binary COPY payloads built from numpy columns, without a Python loop per row.

The binary COPY format is a header, then per row a 16-bit field count and per
field a 32-bit length (-1 for NULL) followed by the big-endian value.  Rows
that share the same NULL pattern and the same text lengths have the same
layout, so each such group is laid out at once as a numpy structured array.
A measurement batch has few distinct patterns, so this runs at memory speed.
"""

from __future__ import annotations

import numpy as np

HEADER = b"PGCOPY\n\xff\r\n\x00" + np.array([0, 0], dtype=">i4").tobytes()
TRAILER = np.array([-1], dtype=">i2").tobytes()

#: PostgreSQL type name -> big-endian numpy dtype of its binary form.
BINARY_TYPES = {
    "double precision": ">f8",
    "real": ">f4",
    "bigint": ">i8",
    "integer": ">i4",
    "smallint": ">i2",
    "boolean": "?",
}


def null_mask(values: np.ndarray) -> np.ndarray:
    """True where a value is missing: NaN for floats, None for objects."""
    if values.dtype.kind == "f":
        return np.isnan(values)
    if values.dtype.kind == "O":
        return np.array([v is None for v in values], dtype=bool)
    return np.zeros(len(values), dtype=bool)


def _text_bytes(values: np.ndarray) -> np.ndarray:
    """UTF-8 encoded values as a numpy bytes array (``S``)."""
    if values.dtype.kind == "S":
        return values
    return np.char.encode(values.astype(str), "utf-8")


def encode(columns: list[np.ndarray], types: list[str]) -> bytes:
    """Binary COPY payload (header, rows, trailer) for equally long columns.

    ``types`` are PostgreSQL type names; ``text`` columns take str/bytes
    arrays, the others numeric or boolean arrays.  NaN or None become NULL.
    """
    nrows = len(columns[0]) if columns else 0
    ncols = len(columns)
    nulls = np.zeros((nrows, ncols), dtype=bool)
    lengths = np.zeros((nrows, ncols), dtype=np.int64)
    prepared = []
    for j, (values, kind) in enumerate(zip(columns, types)):
        values = np.asarray(values)
        if kind == "text":
            nulls[:, j] = null_mask(values)
            if nulls[:, j].any():
                values = np.where(nulls[:, j], "", values)
            values = _text_bytes(values)
            lengths[:, j] = np.char.str_len(values)
        elif kind in BINARY_TYPES:
            nulls[:, j] = null_mask(values)
            dtype = np.dtype(BINARY_TYPES[kind])
            if nulls[:, j].any() and values.dtype.kind == "f":
                values = np.where(nulls[:, j], 0, values)
            values = values.astype(dtype)
            lengths[:, j] = dtype.itemsize
        else:
            raise TypeError(f"no binary COPY encoding for PostgreSQL type {kind!r}")
        lengths[nulls[:, j], j] = -1
        prepared.append(values)

    chunks = [HEADER]
    if nrows:
        # one group per distinct row layout (NULL pattern and text lengths)
        layouts, inverse = np.unique(lengths, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        for g, layout in enumerate(layouts):
            rows = np.flatnonzero(inverse == g)
            fields = [("n", ">i2")]
            for j, length in enumerate(layout):
                fields.append((f"l{j}", ">i4"))
                if length > 0:
                    dtype = f"S{length}" if types[j] == "text" else prepared[j].dtype
                    fields.append((f"v{j}", dtype))
            block = np.empty(len(rows), dtype=np.dtype(fields))
            block["n"] = ncols
            for j, length in enumerate(layout):
                block[f"l{j}"] = length
                if length > 0:
                    block[f"v{j}"] = prepared[j][rows]
            chunks.append(block.tobytes())
    chunks.append(TRAILER)
    return b"".join(chunks)
