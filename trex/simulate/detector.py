"""The simulated CCD: from photo-electrons to raw uint16 frames with an overscan.

Order of effects, as in a real camera: sky and star photons x flat-field
response (vignetting x pixel response) + dark current (with hot pixels), then
shot noise and read noise, then gain, bias level and a weak row pattern that
the overscan strip shares, cosmic-ray hits, and clipping at SATURATE.

Shot noise is exact Poisson below ``POISSON_EXACT`` e- and its Gaussian
approximation above (skewness < 0.1), which keeps a 4096² frame fast.
The fixed patterns (flat, hot pixels, bias rows) depend only on the camera
seed, so every night of a project sees the same camera.

The realistic model (:mod:`trex.simulate.realism`) adds charge bleeding along
columns above a full well (after shot noise, before read-out), an overscan
with its own read noise and row offsets the image does not share, and a
fixed column pattern in the bias; its random draws come after the simple
model's, so the simple model's frames stay the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trex._artefacts import bleed_columns
from trex.simulate.realism import SIMPLE, Realism

POISSON_EXACT = 100.0

#: photometric scale: flux_ADU / s = 10^(-0.4 (mag - ZEROPOINT)) above the atmosphere
ZEROPOINT = 18.8
EXTINCTION = 0.15      # mag per airmass
SKY_MAG = 21.0         # dark sky, mag/arcsec² in the same band


@dataclass(frozen=True)
class Camera:
    """Detector constants (HATPI-like).  Units: e-, ADU, s."""

    gain: float = 2.7              # e-/ADU
    rdnoise: float = 10.0          # e-
    bias: float = 1000.0           # ADU
    row_pattern: float = 1.5       # ADU rms of the bias row pattern
    dark: float = 0.05             # e-/s/px
    hot_fraction: float = 2e-4     # fraction of hot pixels
    saturate: float = 65535.0      # ADU (raw frames are clipped here)
    overscan: int = 32             # overscan columns right of the image
    vignetting: float = 0.35       # flat response lost at the frame corners
    prnu: float = 0.01             # pixel response non-uniformity, rms
    cosmic_per_mpx: float = 1.5    # hits per megapixel per 30 s


@dataclass
class Patterns:
    """Fixed detector patterns of the trimmed area, shape (size, size), float32."""

    flat: np.ndarray       # relative response (vignetting x PRNU), ~1 at the centre
    dark: np.ndarray       # dark current, e-/s
    rows: np.ndarray       # bias row pattern, ADU, shape (size,)
    hot: np.ndarray        # (n, 2) int: (y, x) of hot pixels
    columns: np.ndarray | None = None   # fixed bias column pattern, ADU, shape (size,)


def make_patterns(camera: Camera, size: int, rng: np.random.Generator) -> Patterns:
    """Flat response, dark current map with hot pixels and the bias row pattern."""
    axis = (np.arange(size, dtype=np.float32) - (size - 1) / 2.0) / (size / 2.0)
    r2 = axis[None, :] ** 2 + axis[:, None] ** 2
    flat = (1.0 - camera.vignetting * 0.5 * r2).astype(np.float32)
    flat *= 1.0 + camera.prnu * rng.standard_normal((size, size), dtype=np.float32)
    dark = np.full((size, size), camera.dark, dtype=np.float32)
    nhot = max(1, int(camera.hot_fraction * size * size))
    hot = np.stack([rng.integers(0, size, nhot), rng.integers(0, size, nhot)], axis=1)
    dark[hot[:, 0], hot[:, 1]] = rng.uniform(5.0, 300.0, nhot).astype(np.float32)
    rows = camera.row_pattern * (0.6 * np.sin(np.arange(size) * 2 * np.pi / 97.0)
                                 + 0.8 * rng.standard_normal(size))
    return Patterns(flat=flat, dark=dark, rows=rows.astype(np.float32), hot=hot)


def add_shot_and_read_noise(electrons: np.ndarray, rdnoise: float,
                            rng: np.random.Generator) -> np.ndarray:
    """``electrons`` (float32, any shape) with shot and read noise, in place; returned."""
    z = rng.standard_normal(electrons.shape, dtype=np.float32)
    low = exact = None
    if electrons.min() < POISSON_EXACT:
        low = electrons < POISSON_EXACT
        exact = rng.poisson(np.maximum(electrons[low], 0.0)).astype(np.float32)
        exact += np.float32(rdnoise) * z[low]
    sigma = np.maximum(electrons, np.float32(0.0))
    sigma += np.float32(rdnoise**2)
    np.sqrt(sigma, out=sigma)
    sigma *= z
    electrons += sigma
    if low is not None:
        electrons[low] = exact
    return electrons


def cosmic_rays(electrons: np.ndarray, rng: np.random.Generator, exptime: float,
                per_mpx: float) -> int:
    """Add short cosmic-ray tracks (1-6 px, 500-20000 e- each) in place; return the count."""
    ny, nx = electrons.shape
    count = rng.poisson(per_mpx * nx * ny / 1e6 * exptime / 30.0)
    if count == 0:
        return 0
    length = rng.integers(1, 7, count)
    angle = rng.uniform(0, np.pi, count)
    x0 = rng.uniform(0, nx, count)
    y0 = rng.uniform(0, ny, count)
    energy = rng.uniform(500.0, 20000.0, count)
    step = np.arange(7)
    xs = (x0[:, None] + np.cos(angle)[:, None] * step).astype(int)
    ys = (y0[:, None] + np.sin(angle)[:, None] * step).astype(int)
    keep = (step[None, :] < length[:, None]) & (xs >= 0) & (xs < nx) & (ys >= 0) & (ys < ny)
    deposit = np.broadcast_to((energy / length)[:, None], keep.shape)
    np.add.at(electrons, (ys[keep], xs[keep]), deposit[keep].astype(np.float32))
    return int(count)


def readout(electrons: np.ndarray, camera: Camera, patterns: Patterns,
            rng: np.random.Generator, realism: Realism = SIMPLE) -> np.ndarray:
    """Raw uint16 frame (size, size + overscan) from noisy electrons of the trimmed area.

    The bias level drifts by ~2 ADU from frame to frame and each row gets the
    fixed row pattern plus a 0.5 ADU rms random offset; on the simple model
    the overscan columns see the same bias, so a row-by-row overscan
    correction removes it.  The realistic model reads the overscan with
    ``realism.overscan_rdnoise`` (e-) and adds ``realism.overscan_mismatch``
    (ADU rms) row offsets to it alone, and the image area gets the fixed
    column pattern ``patterns.columns`` (left for the master bias to remove).
    """
    size = electrons.shape[0]
    raw = np.empty((size, size + camera.overscan), dtype=np.float32)
    raw[:, :size] = electrons / np.float32(camera.gain)
    raw[:, size:] = rng.standard_normal((size, camera.overscan), dtype=np.float32) * np.float32(
        camera.rdnoise / camera.gain)
    if realism.overscan_rdnoise > 0:
        raw[:, size:] *= np.float32(realism.overscan_rdnoise / camera.rdnoise)
    rows = patterns.rows + rng.normal(camera.bias, 2.0) + rng.normal(0.0, 0.5, size)
    raw += rows.astype(np.float32)[:, None]
    if realism.overscan_mismatch > 0:
        raw[:, size:] += rng.normal(0.0, realism.overscan_mismatch, (size, 1)).astype(np.float32)
    if patterns.columns is not None:
        raw[:, :size] += patterns.columns[None, :]
    np.clip(raw, 0.0, camera.saturate, out=raw)
    return np.rint(raw).astype(np.uint16)


def full_runs(electrons: np.ndarray, full_well: float) -> np.ndarray:
    """Column runs of pixels at or above ``full_well``: int array (n, 3) of x, first y, last y."""
    mask = electrons >= np.float32(full_well)
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return np.zeros((0, 3), dtype=np.int32)
    step = np.diff(np.pad(mask[:, cols].T.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    col, first = np.nonzero(step == 1)
    _, end = np.nonzero(step == -1)
    return np.column_stack([cols[col], first, end - 1]).astype(np.int32)


def expose(photons: np.ndarray, exptime: float, camera: Camera, patterns: Patterns,
           rng: np.random.Generator, cosmics: bool = True,
           realism: Realism = SIMPLE) -> tuple[np.ndarray, int, np.ndarray]:
    """Raw frame from the expected photo-electrons ``photons`` (before the flat response).

    ``photons`` (float32, trimmed shape) is modified in place.  Returns the raw
    uint16 frame, the number of cosmic-ray hits and the column runs at full
    well after bleeding ((n, 3) int: x, first y, last y; empty without
    ``realism.full_well``).
    """
    photons *= patterns.flat
    photons += patterns.dark * np.float32(exptime)
    add_shot_and_read_noise(photons, camera.rdnoise, rng)
    hits = cosmic_rays(photons, rng, exptime, camera.cosmic_per_mpx) if cosmics else 0
    runs = np.zeros((0, 3), dtype=np.int32)
    if realism.full_well > 0:
        bleed_columns(photons, realism.full_well)
        runs = full_runs(photons, realism.full_well)
    return readout(photons, camera, patterns, rng, realism), hits, runs
