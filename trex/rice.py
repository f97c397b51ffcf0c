"""Rice-compressed integer images (``.fits.fz`` raw frames) decoded by trex's kernel.

cfitsio spends ~55 us of bookkeeping on each tile of a tile-compressed image, and
a camera's ``fpack`` output has one tile per row: 0.12 s a 2048x2080 frame on
this project's machines, where ``trex._rice.decode_image`` takes 0.03 s.  Only
the common layout is decoded here (``RICE_1``, 8-, 16- or 32-bit integers, the
compressed bytes the table's one column, no null value, BSCALE 1, an integer
BZERO); :meth:`RiceImage.of` gives None for anything else, which fitsio reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trex import _rice
from trex.errors import FrameError

#: bytes per value of a ZBITPIX
_BYTEPIX = {8: 1, 16: 2, 32: 4}
#: the COMPRESSED_DATA column: variable-length bytes with 32- (P) or 64-bit (Q) descriptors
_FORM = re.compile(r"1?([PQ])B(\(\d+\))?")
_CORRUPT = "image data unreadable (truncated or corrupt): "


def _layout(keys: dict) -> tuple[int, int, np.dtype] | None:
    """(bytepix, blocksize, descriptor dtype) of a header the kernel can decode, else None."""
    bytepix = _BYTEPIX.get(keys.get("ZBITPIX"))
    form = _FORM.fullmatch(str(keys.get("TFORM1", "")).strip().upper())
    options = {str(keys.get(f"ZNAME{i}", "")).strip().upper(): keys.get(f"ZVAL{i}")
               for i in range(1, 10)}
    zero, scale = keys.get("BZERO", 0), keys.get("BSCALE", 1)
    if (bytepix is None or form is None
            or str(keys.get("ZCMPTYPE", "")).strip().upper() not in ("RICE_1", "RICE_ONE")
            or keys.get("ZNAXIS") != 2 or keys.get("TFIELDS") != 1
            or str(keys.get("TTYPE1", "")).strip().upper() != "COMPRESSED_DATA"
            or options.get("BYTEPIX", bytepix) != bytepix or "ZBLANK" in keys
            or "ZMASKCMP" in keys or not isinstance(zero, (int, float))
            or not float(zero).is_integer() or scale != 1):
        return None
    descriptor = np.dtype(">i4" if form[1] == "P" else ">i8")
    blocksize = options.get("BLOCKSIZE", 32)
    if keys.get("NAXIS1") != 2 * descriptor.itemsize or not isinstance(blocksize, int):
        return None
    return bytepix, blocksize, descriptor


@dataclass(frozen=True)
class RiceImage:
    """A Rice-compressed integer image in a file (:meth:`of` a header the kernel can
    decode): its tile table, and rows decoded on demand."""

    path: Path
    shape: tuple[int, int]        # (ny, nx), px
    tile: tuple[int, int]         # (ZTILE1, ZTILE2), px
    bytepix: int
    blocksize: int
    zero: float                   # BZERO, ADU
    heap_start: int               # byte of the file where the heap begins
    offsets: np.ndarray           # int64 (ntiles,), each tile's bytes in the heap
    sizes: np.ndarray             # int64 (ntiles,)

    @classmethod
    def of(cls, path: Path, data_start: int, cards: list[tuple[str, object, str]]
           ) -> RiceImage | None:
        """The image of the tile-compressed HDU whose binary table (header ``cards``,
        (keyword, value, comment)) starts at byte ``data_start`` of ``path``; None when
        its layout is not the one decoded here, FrameError when the tile table is cut."""
        keys = {name.upper(): value for name, value, _ in cards if name}
        layout = _layout(keys)
        nx, ny, ntiles = keys.get("ZNAXIS1"), keys.get("ZNAXIS2"), keys.get("NAXIS2")
        tile = keys.get("ZTILE1", nx), keys.get("ZTILE2", 1)
        if layout is None or not all(isinstance(v, int) and v > 0 for v in (nx, ny, ntiles, *tile)):
            return None
        heap = keys.get("THEAP", keys["NAXIS1"] * ntiles)  # NAXIS1 is checked by _layout
        if not isinstance(heap, int) or heap <= 0:
            return None
        bytepix, blocksize, descriptor = layout
        with open(path, "rb") as fh:
            fh.seek(data_start)
            table = np.frombuffer(fh.read(2 * descriptor.itemsize * ntiles), descriptor)
        if len(table) < 2 * ntiles:
            raise FrameError(path, _CORRUPT + "the tile table ends early")
        return cls(Path(path), (ny, nx), tile, bytepix, blocksize, float(keys.get("BZERO", 0)),
                   data_start + heap, table[1::2].astype(np.int64), table[0::2].astype(np.int64))

    def rows(self, y0: int, y1: int, dtype: np.dtype = np.float32) -> np.ndarray:
        """Rows ``y0:y1`` (as a slice of the image) as ``dtype`` (float32 or float64,
        BZERO added), decoding only the tiles that hold them."""
        (ny, nx), (tx, ty) = self.shape, self.tile
        y0, y1 = max(y0, 0), min(y1, ny)
        if y1 <= y0:
            return np.empty((0, nx), dtype)
        across = -(-nx // tx)
        first, last = y0 // ty, -(-y1 // ty)          # tile rows
        tiles = slice(first * across, min(last * across, len(self.sizes)))
        offsets, sizes = self.offsets[tiles], self.sizes[tiles]
        start = int(offsets.min()) if len(offsets) else 0
        end = int((offsets + sizes).max()) if len(offsets) else 0
        if start < 0 or end < start:
            raise FrameError(self.path, _CORRUPT + "a tile descriptor points before the heap")
        with open(self.path, "rb") as fh:
            fh.seek(self.heap_start + start)
            heap = np.frombuffer(fh.read(end - start), np.uint8)
        band = np.empty((min(last * ty, ny) - first * ty, nx), np.dtype(dtype).newbyteorder("="))
        try:
            _rice.decode_image(heap, offsets - start, sizes, tx, ty, self.bytepix,
                               self.blocksize, self.zero, band)
        except (FrameError, ValueError) as err:
            reason = err.reason if isinstance(err, FrameError) else str(err)
            raise FrameError(self.path, _CORRUPT + reason) from None
        return band[y0 - first * ty:y1 - first * ty]

