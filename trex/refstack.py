"""The photometric reference's stack: a clipped median of the matched frames, band by band.

Array code over the frames' scratch files (``.npy``, memory-mapped): the stack
is cut into bands of ``BAND_ROWS`` rows, each one item of the farmed phase
:class:`trex.photref.Bands` (:func:`combine_band`, in blocks of
``subtract.stack_block_rows`` rows to bound memory), :func:`assemble` joins
the bands into the reference image and its MASK, and :func:`header` gives its
header (with the measured :func:`pixel_noise_factor`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits as afits
from astropy.wcs import WCS
from scipy.ndimage import median_filter

from trex import _stats
from trex.config import Config
from trex.flags import MASK, grown
from trex.header import FrameMeta
from trex.kernelspec import parse_kernel

#: rows of one band (one item of the stacking phase)
BAND_ROWS = 256


def bands(ny: int) -> list[tuple[int, int]]:
    """(first row, end row) of the bands of a stack of ``ny`` rows."""
    return [(r0, min(ny, r0 + BAND_ROWS)) for r0 in range(0, ny, BAND_ROWS)]


def combine_band(files: list[Path], masks: list[Path], r0: int, r1: int,
                 config: Config) -> dict[str, np.ndarray]:
    """Rows [r0, r1) of the stack: ``image`` float32 (r1 - r0, nx), the clipped median
    (NaN: no frame had data), ``nused`` int16 (frames kept per pixel) and ``saturated``
    bool (SATURATED in any frame's mask)."""
    stacks = [np.load(f, mmap_mode="r") for f in files]
    nx = stacks[0].shape[1]
    out = np.empty((r1 - r0, nx), dtype=np.float32)
    nused = np.empty((r1 - r0, nx), dtype=np.int16)
    saturated = np.zeros((r1 - r0, nx), dtype=bool)
    for m in masks:
        saturated |= (np.load(m, mmap_mode="r")[r0:r1] & MASK["SATURATED"].bit) != 0
    step = config.subtract.stack_block_rows
    for b0 in range(r0, r1, step):
        b1 = min(r1, b0 + step)
        block = np.ascontiguousarray(np.stack([s[b0:b1] for s in stacks]), dtype=np.float32)
        _stats.clipped_combine(block, out[b0 - r0:b1 - r0], nused[b0 - r0:b1 - r0],
                               config.calibrate.clip_sigma, config.calibrate.clip_iters, True)
    return {"image": out, "nused": nused, "saturated": saturated}


def assemble(parts: list[dict[str, np.ndarray]], config: Config) -> tuple[np.ndarray, np.ndarray]:
    """The reference (image float32 with 0 where no data, MASK bits uint8) from its bands
    (:func:`combine_band`, in row order): BADPIX where no frame had data, grown by the
    kernel half-size (the subtract stage convolves the image), SATURATED."""
    image = np.concatenate([p["image"] for p in parts])
    nused = np.concatenate([p["nused"] for p in parts])
    mask = np.zeros(image.shape, dtype=np.uint8)
    empty = (nused == 0) | ~np.isfinite(image)
    mask[grown(empty, parse_kernel(config.subtract.kernel).halfsize)] |= MASK["BADPIX"].bit
    mask[np.concatenate([p["saturated"] for p in parts])] |= MASK["SATURATED"].bit
    return np.where(np.isfinite(image), image, 0.0).astype(np.float32), mask


def combine(files: list[Path], masks: list[Path], shape: tuple[int, int],
            config: Config) -> tuple[np.ndarray, np.ndarray]:
    """The whole stack at once (image, MASK bits): :func:`assemble` of every band."""
    return assemble([combine_band(files, masks, r0, r1, config) for r0, r1 in bands(shape[0])],
                    config)


def header(ref_header, image: np.ndarray, mask: np.ndarray, meta: FrameMeta, n: int,
            framekeys: list[int]) -> afits.Header:
    """The reference's header: the grid's WCS (``ref_header``'s) and what subtraction
    needs of the stack (``meta``: the target frame's parsed header)."""
    header = WCS(ref_header, fix=False).to_header(relax=True)
    header["NOISEFAC"] = (pixel_noise_factor(image, mask, meta.gain, meta.rdnoise),
                          "pixel variance / one frame's sky variance")
    header["MEDSKY"] = (float(np.median(image[mask == 0])), "median of the good pixels, ADU")
    for key, value in (("EXPTIME", meta.exptime), ("GAIN", meta.gain), ("RDNOISE", meta.rdnoise),
                       ("SATURATE", meta.saturate), ("NFRAMES", n), ("NEFF", 2.0 * n / np.pi),
                       ("JD", meta.jd), ("FIELD", meta.field), ("PROJID", meta.projid),
                       ("CCD", meta.ccd)):
        header[key] = value
    header["PRFRAMES"] = ",".join(str(k) for k in framekeys)[:68]
    return header


def pixel_noise_factor(stack: np.ndarray, mask: np.ndarray, gain: float, rdnoise: float) -> float:
    """Measured sky-pixel variance of a stack over one raw frame's (``sky / gain +
    (rdnoise / gain)^2``): high-pass (minus a 7x7 median), 4-sigma clipped, central
    512^2 at most (2.6 x 10^5 pixels: the clipped std to 0.2 %; the median filter of
    1024^2 took 0.9 s).  It stands for the noise of the stacked, resampled, matched pixels."""
    ny, nx = stack.shape
    y0, x0 = max(0, ny // 2 - 256), max(0, nx // 2 - 256)
    cut = stack[y0:y0 + 512, x0:x0 + 512].astype(np.float64)
    good = mask[y0:y0 + 512, x0:x0 + 512] == 0
    high = cut - median_filter(cut, size=7)
    _, sky, _, _ = _stats.clipped_stats(cut[good], 3.0, 5)
    _, _, std, _ = _stats.clipped_stats(high[good], 4.0, 5)
    return float(std**2 / (max(sky, 0.0) / gain + (rdnoise / gain) ** 2))
