"""Per-frame products on disk, next to the calibrated frame in ``RED/<projid>/``.

For a calibrated frame ``RED/<projid>/<stem>.fits`` the products are
``<stem>-<kind>.npy`` numpy structured arrays (``sources``, ``aphot``,
``iphot``), written atomically.  They are what the light-curve step
transposes, so a re-run never needs the database to rebuild light curves.
"""

from __future__ import annotations

import ast
import functools
import io
import os
from pathlib import Path

import numpy as np

from trex.fits import atomic_write

RAW_SUFFIXES = (".fits.fz", ".fits.gz", ".fits", ".fit", ".fz")


def frame_stem(path: Path | str) -> str:
    """A frame's file name without its FITS suffixes (``1-000123_5.fits.fz`` -> ``1-000123_5``)."""
    name = os.path.basename(path)
    for suffix in RAW_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]


def product_path(redpath: Path | str, kind: str) -> Path:
    """Path of product ``kind`` of the calibrated frame at ``redpath``."""
    folder, name = os.path.split(redpath)
    return Path(folder, product_name(name, kind))


def product_name(redname: str, kind: str) -> str:
    """File name of product ``kind`` of the calibrated frame named ``redname``."""
    return f"{frame_stem(redname)}-{kind}.npy"


def save_product(redpath: Path | str, kind: str, table: np.ndarray) -> Path:
    """Write a structured array atomically; returns its path."""
    final = product_path(redpath, kind)
    with atomic_write(final) as tmp, open(tmp, "wb") as fh:
        np.save(fh, table, allow_pickle=False)
    return final


def load_product(redpath: Path | str, kind: str) -> np.ndarray | None:
    """The product, or None when it was never written."""
    try:
        return read_product(product_path(redpath, kind))
    except FileNotFoundError:
        return None


def read_product(path: Path | str) -> np.ndarray:
    """The product in file ``path``."""
    with open(path, "rb") as fh:
        data = bytearray(os.fstat(fh.fileno()).st_size)
        fh.readinto(data)
    return _from_npy(data)


@functools.lru_cache(maxsize=64)
def _dtype_of(head: bytes) -> np.dtype:
    """The dtype of an npy header's text up to its shape (parsed once per layout)."""
    fields = ast.literal_eval(head.decode("latin1") + "}")
    if fields.get("fortran_order"):
        raise ValueError("Fortran-ordered product")
    return np.lib.format.descr_to_dtype(fields["descr"])


def _from_npy(data: bytearray) -> np.ndarray:
    """A 1-D array from the bytes of an npy file, without copying them.

    ``np.load`` parses every header with ``ast.literal_eval`` (~0.3 ms, more
    than reading a 500-star product); the light-curve step reads every product
    of a backfill, so the header text before the shape is parsed once per
    layout and cached.  Anything but the 1-D arrays :func:`save_product`
    writes goes to ``np.load``.
    """
    if len(data) < 12 or data[:6] != b"\x93NUMPY" or data[6] not in (1, 2, 3):
        raise ValueError("not an npy product")
    size, start = (2, 10) if data[6] == 1 else (4, 12)
    length = int.from_bytes(data[8:8 + size], "little")
    head, _, tail = bytes(data[start:start + length]).partition(b"'shape': (")
    shape = tail.split(b")")[0].split(b",")
    if len(shape) != 2 or shape[1].strip():  # not 1-D
        return np.load(io.BytesIO(data), allow_pickle=False)
    return np.frombuffer(data, dtype=_dtype_of(head), count=int(shape[0]),
                         offset=start + length)
