"""Shared pieces of ``trex bench``: timing, result rows, the synthetic HATPI-like frame."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Row:
    """One line of the benchmark table: trex and a peer on identical inputs."""

    operation: str
    size: str
    trex: float  # seconds
    peer: str
    peer_time: float  # seconds (NaN when the peer is absent)
    check: str = ""

    @property
    def ratio(self) -> float:
        return self.peer_time / self.trex if self.trex > 0 else float("nan")

    def as_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


def median_time(func, repeats: int = 3, reset=None) -> tuple[float, object]:
    """Median wall time of ``func()`` over ``repeats`` calls (``reset()``, untimed,
    before each), and its last result."""
    times, result = [], None
    for _ in range(repeats):
        if reset is not None:
            reset()
        start = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def hatpi_frame(size: int, nstars: int, seed: int = 0, fwhm: float = 2.4,
                sky: float = 1000.0, gain: float = 2.7, rdnoise: float = 10.0):
    """A synthetic HATPI-like frame: round Gaussian stars (pixel-integrated),
    faint-dominated luminosity function, flat sky, Poisson and read noise.

    Returns (image float32 (size, size) ADU, x, y, flux ADU).
    """
    from scipy.special import erf

    rng = np.random.default_rng(seed)
    x = rng.uniform(15, size - 15, nstars)
    y = rng.uniform(15, size - 15, nstars)
    # N(<m) ~ 10^(0.35 m): most stars are faint
    mag = 14.5 - np.log10(1 + rng.random(nstars) * (10 ** (0.35 * 7) - 1)) / 0.35
    flux = 10 ** (-0.4 * (mag - 17.0)) * 30.0
    sigma = fwhm / 2.3548
    half = 6
    image = np.full((size, size), sky, dtype=np.float64)
    offs = np.arange(-half, half + 1)
    ix, iy = np.round(x).astype(int), np.round(y).astype(int)
    edges_x = (ix[:, None] + offs[None, :] - x[:, None]) / (np.sqrt(2) * sigma)
    edges_y = (iy[:, None] + offs[None, :] - y[:, None]) / (np.sqrt(2) * sigma)
    step = 0.5 / (np.sqrt(2) * sigma)
    px = 0.5 * (erf(edges_x + step) - erf(edges_x - step))
    py = 0.5 * (erf(edges_y + step) - erf(edges_y - step))
    stamps = flux[:, None, None] * py[:, :, None] * px[:, None, :]
    rows = iy[:, None, None] + offs[None, :, None]
    cols = ix[:, None, None] + offs[None, None, :]
    np.add.at(image, (np.broadcast_to(rows, stamps.shape), np.broadcast_to(cols, stamps.shape)),
              stamps)
    electrons = rng.poisson(image * gain) + rng.normal(0, rdnoise, image.shape)
    return (electrons / gain).astype(np.float32), x, y, flux
