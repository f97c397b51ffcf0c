"""PostgreSQL binary COPY payloads from numpy columns.

The row encoding itself is the Cython kernel ``trex._pgcopy.encode_rows``;
this module maps PostgreSQL column types to its type codes, turns NaN/None
into NULLs and adds the COPY header and trailer.
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


def null_mask(values: np.ndarray) -> np.ndarray:
    """True where a value is missing: NaN for floats, None for objects."""
    if values.dtype.kind == "f":
        return np.isnan(values)
    if values.dtype.kind == "O":
        return np.array([v is None for v in values], dtype=bool)
    return np.zeros(len(values), dtype=bool)


def _utf8(values: np.ndarray) -> np.ndarray:
    """Text values as a numpy bytes (``S``) array in UTF-8."""
    if values.dtype.kind == "S":
        return values
    try:
        return values.astype("S")  # ASCII, in C
    except UnicodeEncodeError:
        return np.char.encode(values.astype(str), "utf-8")


def encode(columns: list[np.ndarray], types: list[str]) -> bytearray:
    """Binary COPY payload (header, rows, trailer) for equally long columns.

    ``types`` are PostgreSQL type names; text columns take str/bytes arrays,
    the others numeric or boolean arrays.  NaN or None become NULL.
    """
    nrows = len(columns[0]) if columns else 0
    nulls = np.zeros((len(columns), nrows), dtype=np.uint8)
    kinds = np.empty(len(columns), dtype=np.int32)
    slots = np.empty(len(columns), dtype=np.int32)
    floats, ints, texts, lengths = [], [], [], []
    for j, (values, kind) in enumerate(zip(columns, types)):
        if kind not in KINDS:
            raise TypeError(f"no binary COPY encoding for PostgreSQL type {kind!r}")
        values = np.asarray(values)
        missing = null_mask(values)
        nulls[j] = missing
        kinds[j] = KINDS[kind]
        if kind == "text":
            if missing.any():
                values = np.where(missing, "", values)
            encoded = _utf8(values)
            slots[j] = len(texts)
            texts.append(encoded)
            lengths.append(np.char.str_len(encoded).astype(np.int32))
        elif kinds[j] in _FLOAT_KINDS:
            slots[j] = len(floats)
            floats.append(np.where(missing, 0.0, values) if missing.any() else values)
        else:
            slots[j] = len(ints)
            ints.append(np.where(missing, 0, values) if missing.any() else values)
    floats = np.array(floats, dtype=np.float64).reshape(len(floats), nrows)
    ints = np.array(ints, dtype=np.int64).reshape(len(ints), nrows)
    return encode_rows(floats, ints, nulls, kinds, slots, texts, lengths, HEADER, TRAILER)
