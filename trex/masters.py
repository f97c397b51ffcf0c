"""Master bias, dark and flat frames and the bad-pixel map (pure part: no database).

Every raw frame is first overscan-corrected and trimmed (:class:`RawReader`):

* overscan, ``config.calibrate.overscan``: ``row`` (default) subtracts from each
  row the median of that row's BIASSEC columns (BIASSEC's row range is
  ignored: the strip is taken at every row), which follows row-to-row bias
  patterns; ``median`` subtracts one median of the whole BIASSEC region;
  ``none`` (or no BIASSEC) subtracts nothing;
* trim: TRIMSEC (IRAF 1-based inclusive, parsed by ``parse_header``), else the
  whole frame.

Masters (float32, trimmed shape):

* bias: sigma-clipped mean of the corrected bias frames, ADU;
* dark: clipped mean of ``(dark - bias) / exptime``, ADU/s;
* flat: each ``(flat - bias - dark * exptime)`` divided by its own median,
  then clipped-mean combined and divided by the median of the result.

The bad-pixel map (uint8, ``MASK['BADPIX']``) is stored as a ``BADPIX`` HDU in
the master dark (hot pixels: more than ``hot_sigma`` clipped standard
deviations above the median dark current) and in the master flat (dead or
low pixels: below ``dead_fraction`` of the flat's median in a ``dead_box``
box); pixels where no input survived are bad in both.

Memory: stacking reads the inputs by row blocks (fitsio reads a row range of
an uncompressed image, and of a Rice ``.fz`` image tile row by tile row), so
only ``nframes x rows x nx`` float32 values sit in memory, with
``rows = min(block_rows, stack_mb / (nframes * nx * 4 bytes))``, plus the
master being built and the masters it depends on (one frame each).  A flat's
level is the median of every 4th row and column of the whole frame (a strided
read).  A master can be stacked in bands of rows on several ranks
(:func:`stack_master` with ``band``) and finished from the joined bands
(:func:`finish_master`): the same master as stacked whole.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits as afits

from trex import __version__
from trex._stats import clipped_combine, clipped_stats
from trex.config import CalibrateSection
from trex.fits import FrameError, _image_hdu, _open, cfitsio_errors, read_image, rice_of, write_image
from trex.flags import MASK
from trex.header import FrameMeta

log = logging.getLogger(__name__)

BADPIX = MASK["BADPIX"].bit
UNITS = {"bias": "ADU", "dark": "ADU/s", "flat": "relative"}


def overscan_levels(rows: np.ndarray, meta: FrameMeta, mode: str,
                    region_level: float | None = None) -> np.ndarray:
    """Overscan level (float32, one per row) of full-width raw ``rows``.

    ``region_level`` is the median of the whole BIASSEC region (mode ``median``).
    """
    n = rows.shape[0]
    if mode == "none" or meta.biassec is None:
        return np.zeros(n, np.float32)
    if mode == "median":
        return np.full(n, region_level, np.float32)
    if mode != "row":
        raise ValueError(f"calibrate.overscan must be row, median or none, not {mode!r}")
    strip = rows[:, meta.biassec[1]]
    return np.median(strip, axis=1).astype(np.float32)


def trim_slices(meta: FrameMeta, shape: tuple[int, int], path: Path | str) -> tuple[slice, slice]:
    """The TRIMSEC slices (whole frame without one), checked against ``shape``."""
    ny, nx = shape
    if meta.trimsec is None:
        return slice(0, ny), slice(0, nx)
    ys, xs = meta.trimsec
    if ys.stop > ny or xs.stop > nx:
        raise FrameError(path, f"TRIMSEC outside the {nx}x{ny} image")
    if meta.biassec is not None and (meta.biassec[1].stop > nx or meta.biassec[0].stop > ny):
        raise FrameError(path, f"BIASSEC outside the {nx}x{ny} image")
    return ys, xs


def correct_frame(raw: np.ndarray, meta: FrameMeta, mode: str,
                  path: Path | str = "<image>") -> tuple[np.ndarray, np.ndarray]:
    """(trimmed view of ``raw``, overscan level of each trimmed row) of a whole frame."""
    ys, xs = trim_slices(meta, raw.shape, path)
    region = None
    if mode == "median" and meta.biassec is not None:
        region = float(np.median(raw[meta.biassec]))
    levels = overscan_levels(raw[ys], meta, mode, region)
    return raw[ys, xs], levels


class RawReader:
    """Overscan-corrected, trimmed rows of one raw frame, read from disk on demand."""

    def __init__(self, path: Path | str, meta: FrameMeta, mode: str):
        self.path, self.meta, self.mode = Path(path), meta, mode
        with _open(self.path) as fits:
            hdu = fits[_image_hdu(fits, self.path)]
            dims = hdu.get_dims()
            self.rice = rice_of(hdu, self.path)  # Rice-compressed rows: trex's kernel reads them
        self.raw_shape = (int(dims[0]), int(dims[1]))
        self.ys, self.xs = trim_slices(meta, self.raw_shape, self.path)
        self.shape = (self.ys.stop - self.ys.start, self.xs.stop - self.xs.start)
        self._region: float | None = None

    def _read(self, y0: int, y1: int, x: slice = slice(None), step: int = 1) -> np.ndarray:
        if self.rice is not None:
            return self.rice.rows(y0, y1)[::step, x]
        with _open(self.path) as fits:
            hdu = fits[_image_hdu(fits, self.path)]
            with cfitsio_errors(self.path, "image data unreadable (truncated or corrupt)"):
                data = hdu[y0:y1:step, x]
        return np.asarray(data, dtype=np.float32)

    def rows(self, t0: int, t1: int, step: int = 1) -> np.ndarray:
        """Trimmed rows ``t0:t1:step`` with the overscan subtracted, float32 (a ``.fz``
        image decompresses only the tile rows read)."""
        if self.mode == "median" and self.meta.biassec is not None and self._region is None:
            bys, bxs = self.meta.biassec
            self._region = float(np.median(self._read(bys.start, bys.stop, bxs)))
        raw = self._read(self.ys.start + t0, self.ys.start + t1, step=step)
        levels = overscan_levels(raw, self.meta, self.mode, self._region)
        out = raw[:, self.xs]
        out -= levels[:, None]
        return out


def block_rows(nframes: int, nx: int, cal: CalibrateSection) -> int:
    """Rows per block: ``block_rows`` capped so a block of the stack fits ``stack_mb``."""
    fit = int(cal.stack_mb * 2**20 // max(1, nframes * nx * 4))
    return max(1, min(cal.block_rows, fit))


Correction = Callable[[int, np.ndarray, int, int], np.ndarray]


def stack(readers: Sequence[RawReader], cal: CalibrateSection,
          correct: Correction | None = None,
          rows: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Clipped-mean combine of the readers' frames, block of rows by block of rows.

    ``correct(k, rows, t0, t1)`` turns rows ``t0:t1`` of frame ``k`` into what is
    combined (in place is fine).  ``rows`` = (start, stop): only those trimmed rows
    (all by default).  Returns (image float32, nused int16) of those rows.
    """
    ny, nx = readers[0].shape
    for r in readers:
        if r.shape != (ny, nx):
            raise FrameError(r.path, f"trimmed shape {r.shape} differs from {(ny, nx)}")
    start, stop = rows or (0, ny)
    out = np.empty((stop - start, nx), np.float32)
    nused = np.empty((stop - start, nx), np.int16)
    nrows = block_rows(len(readers), nx, cal)
    buf = np.empty((len(readers), nrows, nx), np.float32)
    for t0 in range(start, stop, nrows):
        t1 = min(stop, t0 + nrows)
        block = buf if t1 - t0 == nrows else np.empty((len(readers), t1 - t0, nx), np.float32)
        for k, reader in enumerate(readers):
            raw = reader.rows(t0, t1)
            block[k] = correct(k, raw, t0, t1) if correct else raw
        clipped_combine(block, out[t0 - start:t1 - start], nused[t0 - start:t1 - start],
                        cal.clip_sigma, cal.clip_iters, False)
    return out, nused


@dataclass
class Master:
    """A master frame and its provenance."""

    kind: str
    image: np.ndarray                 # float32, trimmed shape
    nused: np.ndarray                 # int16, inputs surviving the clipping per pixel
    header: afits.Header
    badpix: np.ndarray | None = None  # uint8 bits of MASK, for dark and flat


def _provenance(kind: str, paths: Sequence[Path | str], first: FrameMeta,
                cal: CalibrateSection, used: dict[str, str]) -> afits.Header:
    header = afits.Header()
    header["MASTER"] = (kind, "master frame type")
    header["BUNIT"] = (UNITS[kind], "unit of the pixel values")
    header["CCD"] = first.ccd
    if kind == "flat":
        header["FILTER"] = first.filter
    header["NINPUTS"] = (len(paths), "number of input frames")
    header["CLIPSIG"] = (cal.clip_sigma, "sigma clipping threshold")
    header["CLIPITER"] = (cal.clip_iters, "sigma clipping iterations")
    header["COMBINE"] = ("clipped mean", "combination")
    header["OVERSCAN"] = (cal.overscan, "overscan subtraction mode")
    for name, value in used.items():
        header[name] = value
    header["TRXVERS"] = (__version__, "trex version")
    for i, path in enumerate(paths, 1):
        header[f"INPUT{i:03d}"] = Path(path).name
    return header


def _checked(master: np.ndarray | None, shape: tuple, what: str) -> np.ndarray | None:
    if master is not None and master.shape != shape:
        log.warning("master %s has shape %s, frames %s: not applied", what, master.shape, shape)
        return None
    return master


def row_band(ny: int, band: tuple[int, int]) -> tuple[int, int]:
    """Rows (start, stop) of band ``(i, n)``: the i-th of n equal parts of ``ny`` rows."""
    i, n = band
    return ny * i // n, ny * (i + 1) // n


@dataclass
class StackedRows:
    """A band of rows of a master before it is finished (:func:`finish_master`)."""

    image: np.ndarray              # float32, clipped mean of the corrected inputs
    nused: np.ndarray              # int16
    levels: tuple[float, ...] = ()  # flats: each input's median level, ADU


def stack_master(kind: str, inputs: Sequence[tuple[Path, FrameMeta]], cal: CalibrateSection,
                 bias: np.ndarray | None = None, dark: np.ndarray | None = None,
                 band: tuple[int, int] = (0, 1)) -> StackedRows:
    """The rows of ``band`` (:func:`row_band`; all by default) of a master of ``kind``
    from (path, meta) of its frames, corrected as the module doc says: the bias and
    dark masters (whole frames) are subtracted where given, a flat divided by its
    level (the median of every 4th row and column of the whole frame, whatever the
    band, so that bands stacked apart make the same master)."""
    if not inputs:
        raise ValueError("no input frames")
    readers = [RawReader(path, meta, cal.overscan) for path, meta in inputs]
    bias = _checked(bias, readers[0].shape, "bias")
    dark = _checked(dark, readers[0].shape, "dark")
    rows = row_band(readers[0].shape[0], band)
    if kind == "bias":
        return StackedRows(*stack(readers, cal, rows=rows))
    for r in readers:
        if kind == "dark" and r.meta.exptime <= 0:
            raise FrameError(r.path, "dark frame with zero exposure time")

    def remove(k, rows, t0, t1, step=1):  # rows t0:t1:step (columns ::step) of frame k
        if bias is not None:
            rows -= bias[t0:t1:step, ::step]
        if dark is not None and kind == "flat":
            rows -= dark[t0:t1:step, ::step] * np.float32(readers[k].meta.exptime)
        return rows

    if kind == "dark":
        return StackedRows(*stack(readers, cal, lambda k, rows, t0, t1:
                            remove(k, rows, t0, t1) / np.float32(readers[k].meta.exptime), rows))
    levels = []
    for k, reader in enumerate(readers):
        ny = reader.shape[0]
        sample = remove(k, reader.rows(0, ny, step=4)[:, ::4], 0, ny, step=4)
        level = float(np.nanmedian(sample))
        if not np.isfinite(level) or level <= 0:
            raise FrameError(reader.path, f"flat level {level:.4g} ADU is not positive")
        levels.append(np.float32(level))
    image, nused = stack(readers, cal, lambda k, rows, t0, t1: remove(k, rows, t0, t1) / levels[k],
                         rows)
    return StackedRows(image, nused, tuple(float(v) for v in levels))


def finish_master(kind: str, inputs: Sequence[tuple[Path, FrameMeta]], stacked: StackedRows,
                  cal: CalibrateSection, used: dict[str, str] | None = None) -> Master:
    """The master of ``kind`` from the stack of all its rows: a flat divided by its
    median, the bad-pixel map of a dark or flat, the provenance header."""
    image, nused = stacked.image, stacked.nused
    header = _provenance(kind, [path for path, _ in inputs], inputs[0][1], cal, used or {})
    if kind == "bias":
        return Master("bias", image, nused, header)
    if kind == "dark":
        return Master("dark", image, nused, header, hot_pixels(image, nused, cal.hot_sigma))
    image /= np.float32(np.nanmedian(image))
    header["LEVELMIN"] = (min(stacked.levels), "lowest input flat median, ADU")
    header["LEVELMAX"] = (max(stacked.levels), "highest input flat median, ADU")
    return Master("flat", image, nused, header,
                  dead_pixels(image, nused, cal.dead_fraction, cal.dead_box))


def build_master(kind: str, inputs: Sequence[tuple[Path, FrameMeta]], cal: CalibrateSection,
                 bias: np.ndarray | None = None, dark: np.ndarray | None = None,
                 used: dict[str, str] | None = None) -> Master:
    """A master of ``kind`` (bias ADU, dark ADU/s, flat relative) from (path, meta) of
    its frames, after the master bias (dark, flat) and dark (flat) where given."""
    return finish_master(kind, inputs, stack_master(kind, inputs, cal, bias, dark), cal, used)


def hot_pixels(dark: np.ndarray, nused: np.ndarray, hot_sigma: float) -> np.ndarray:
    """BADPIX where the dark current is ``hot_sigma`` clipped sigmas above the median."""
    _, median, std, _ = clipped_stats(dark[::2, ::2], 3.0, 10)
    bad = ~(dark <= median + hot_sigma * std) | (nused == 0)   # NaN counts as bad
    return (bad * BADPIX).astype(np.uint8)


def local_median(image: np.ndarray, box: int) -> np.ndarray:
    """Median of ``image`` in ``box`` x ``box`` cells, repeated back to full size."""
    ny, nx = image.shape
    gy, gx = -(-ny // box), -(-nx // box)
    padded = np.full((gy * box, gx * box), np.nan, np.float32)
    padded[:ny, :nx] = image
    cells = np.nanmedian(padded.reshape(gy, box, gx, box).swapaxes(1, 2).reshape(gy, gx, -1),
                         axis=2)
    return np.repeat(np.repeat(cells, box, axis=0), box, axis=1)[:ny, :nx]


def dead_pixels(flat: np.ndarray, nused: np.ndarray, fraction: float, box: int) -> np.ndarray:
    """BADPIX where the flat is below ``fraction`` of its local median (or not finite)."""
    bad = ~(flat >= fraction * local_median(flat, box)) | (nused == 0)
    return (bad * BADPIX).astype(np.uint8)


def write_master(path: Path | str, master: Master) -> Path:
    """Write the master (primary HDU), NUSED and BADPIX extensions, atomically."""
    extensions = [("NUSED", master.nused, None)]
    if master.badpix is not None:
        extensions.append(("BADPIX", master.badpix, None))
    return write_image(path, master.image, master.header, extensions)


def read_master(path: Path | str) -> tuple[np.ndarray, np.ndarray | None]:
    """(image float32, BADPIX uint8 or None) of a master written by :func:`write_master`."""
    image, header = read_image(path, hdu=0)
    if header.get("MASTER") not in ("dark", "flat"):
        return image, None
    badpix, _ = read_image(path, hdu="BADPIX")
    return image, badpix.astype(np.uint8)
