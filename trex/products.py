"""Per-frame products on disk, next to the calibrated frame in ``RED/<projid>/``.

For a calibrated frame ``RED/<projid>/<stem>.fits`` the products are
``<stem>-<kind>.npy`` numpy structured arrays (``sources``, ``aphot``,
``iphot``), written atomically.  They are what the light-curve step
transposes, so a re-run never needs the database to rebuild light curves.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from trex.fits import atomic_path

RAW_SUFFIXES = (".fits.fz", ".fits.gz", ".fits", ".fit", ".fz")


def frame_stem(path: Path | str) -> str:
    """A frame's file name without its FITS suffixes (``1-000123_5.fits.fz`` -> ``1-000123_5``)."""
    name = Path(path).name
    for suffix in RAW_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def product_path(redpath: Path | str, kind: str) -> Path:
    """Path of product ``kind`` of the calibrated frame at ``redpath``."""
    redpath = Path(redpath)
    return redpath.with_name(f"{frame_stem(redpath)}-{kind}.npy")


def save_product(redpath: Path | str, kind: str, table: np.ndarray) -> Path:
    """Write a structured array atomically; returns its path."""
    tmp, final = atomic_path(product_path(redpath, kind))
    with open(tmp, "wb") as fh:
        np.save(fh, table, allow_pickle=False)
    os.replace(tmp, final)
    return final


def load_product(redpath: Path | str, kind: str) -> np.ndarray | None:
    """The product, or None when it was never written."""
    path = product_path(redpath, kind)
    if not path.exists():
        return None
    return np.load(path, allow_pickle=False)
