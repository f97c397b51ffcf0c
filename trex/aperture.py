"""Aperture photometry of many stars on one image: the core of ``trex.photometry``.

Pure array code: one call measures every star of one frame.  The pixel work
is done in the Cython kernel ``trex._photometry`` with the GIL released.

Conventions
-----------
* Coordinates are 0-based with pixel centres at integers (numpy, sep,
  photutils); the FITS/WCS pixel is the value + 1.
* Aperture weights are exact pixel/circle overlap areas.  Masked, non-finite
  and off-frame aperture pixels count as sky (they are left out of both the
  sum and the area) and flag the measurement.
* Sky: pixels whose centres lie in the annulus ``r_in <= d < r_out``, leaving
  out masked, non-finite and saturated ones and, with ``disjoint_radius``,
  those within ``max(radii) + disjoint_radius`` of another star.  Iterative
  clipping at ``sky_sigma`` standard deviations around the median (until
  nothing changes, at most ``sky_iters`` times: the wings of a bright
  neighbour are clipped away, where two passes left the mode estimator
  biased low by tens of ADU), then the mean, the median or the mode
  3 median - 2 mean of what is left; ``sigma_sky`` is its standard deviation.
  An annulus partly off the frame gives the sky of its on-frame part
  (PARTIAL_SKY); one with fewer than ``min_sky_pixels`` usable pixels (a
  corner, a crowd, masked pixels) takes the local background map's sky and
  scatter instead (SKY_MAP, with N_sky = the pixels of one mesh cell).
* Flux ``F = sum(a p) - sky A`` and its error

      sigma_F = sqrt(max(F, 0) / gain + A sigma_sky^2 (1 + A / N_sky))

  with A the aperture area (px^2) and N_sky the sky pixels kept.  Read noise
  (and dark current) is not a separate term: it is in the measured pixel
  scatter sigma_sky.  The A/N_sky term is the variance of a *mean* sky; the
  median and mode estimators are noisier (for Gaussian noise about pi/2 and
  ~6 times that term), which this formula, like fiphot's, does not include.
* Magnitudes (with ``zeropoint``): ``m = ZP - 2.5 log10(F / exptime)``,
  ``sigma_m = 1.0857 sigma_F / F``; NaN with the NONPOSITIVE flag when F <= 0.

Flags are the bits of :data:`trex.flags.PHOT`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import numpy as np
from scipy.spatial import cKDTree

from trex import _photometry
from trex.background import background
from trex.flags import PHOT

log = logging.getLogger(__name__)

SKY_METHODS = {"mean": 0, "median": 1, "mode": 2}
_KERNEL_BITS = np.array(
    [PHOT[n].bit for n in ("OFF_FRAME", "MASKED", "SATURATED", "FEW_SKY", "CROWDED",
                           "PARTIAL_SKY", "SKY_MAP")],
    dtype=np.int32,
)
MAG_ERR_FACTOR = 2.5 / np.log(10.0)  # 1.0857...
#: stars are measured band by band (rows of this height, then by x), so that
#: consecutive stars read image rows that are still in the CPU cache
ORDER_BAND = 64


def _native_image(image: np.ndarray) -> np.ndarray:
    """float32 stays float32, anything else becomes float64; native order, C-contiguous."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {image.shape}")
    dtype = np.float32 if image.dtype.kind == "f" and image.dtype.itemsize == 4 else np.float64
    return np.ascontiguousarray(image, dtype=np.dtype(dtype).newbyteorder("="))


def _native_mask(mask: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    if mask is None:
        return np.zeros((1, 1), dtype=np.uint8)
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {shape}")
    if mask.dtype == np.uint8:  # the kernel tests mask != 0 itself
        return np.ascontiguousarray(mask)
    return np.ascontiguousarray(mask != 0, dtype=np.uint8)


def neighbour_lists(x: np.ndarray, y: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """CSR lists of the other stars within ``radius`` px of each star.

    Returns ``(indptr, indices)`` (int64): the neighbours of star ``s`` are
    ``indices[indptr[s]:indptr[s + 1]]``.  Stars with non-finite positions
    have no neighbours and are nobody's neighbour.
    """
    n = len(x)
    good = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    tree = cKDTree(np.column_stack([x[good], y[good]]))
    pairs = good[tree.query_pairs(radius, output_type="ndarray")]
    first = np.concatenate([pairs[:, 0], pairs[:, 1]])
    second = np.concatenate([pairs[:, 1], pairs[:, 0]])
    order = np.argsort(first, kind="stable")
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(first, minlength=n), out=indptr[1:])
    return indptr, np.ascontiguousarray(second[order], dtype=np.int64)


def _geometry(x: np.ndarray, y: np.ndarray, radius: float | None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(measuring order, indptr, indices) of the stars at (x, y): bands of
    ``ORDER_BAND`` rows, then x; :func:`neighbour_lists` within ``radius`` (None:
    none).  The last few position sets are kept: difference photometry measures the
    reference's positions on every frame, twice."""
    return _cached_geometry(np.stack([x, y]).tobytes(), radius)


@functools.lru_cache(maxsize=4)
def _cached_geometry(positions: bytes, radius: float | None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y = np.frombuffer(positions).reshape(2, -1)
    order = np.lexsort((x, np.floor(y / ORDER_BAND))).astype(np.int64)
    if radius is None:
        indptr, indices = np.zeros(len(x) + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    else:
        indptr, indices = neighbour_lists(x, y, radius)
    for array in (order, indptr, indices):
        array.flags.writeable = False  # shared by the calls that hit the cache
    return order, indptr, indices


def _check_geometry(radii: np.ndarray, annulus: Sequence[float]) -> tuple[float, float]:
    if radii.ndim != 1 or radii.size == 0 or np.any(radii <= 0) or np.any(np.diff(radii) < 0):
        raise ValueError(f"radii must be positive and increasing, got {radii.tolist()}")
    r_in, r_out = (float(a) for a in annulus)
    if not 0 <= r_in < r_out:
        raise ValueError(f"annulus must satisfy 0 <= r_in < r_out, got {annulus}")
    return r_in, r_out


def add_magnitudes(result: dict, zeropoint: float, exptime: float = 1.0) -> dict:
    """Add ``mag`` and ``magerr`` to a result of :func:`aperture_photometry`."""
    flux, fluxerr = result["flux"], result["fluxerr"]
    good = flux > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        result["mag"] = np.where(good, zeropoint - 2.5 * np.log10(flux / exptime), np.nan)
        result["magerr"] = np.where(good, MAG_ERR_FACTOR * fluxerr / flux, np.nan)
    return result


def aperture_photometry(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    radii: Sequence[float] = (1.95, 2.45, 2.95),
    annulus: Sequence[float] = (7.0, 13.0),
    gain: float = 2.7,
    mask: np.ndarray | None = None,
    *,
    sky_method: str = "mode",
    sky_sigma: float = 3.0,
    sky_iters: int = 10,
    disjoint_radius: float | None = None,
    min_sky_pixels: int = 40,
    saturation: float | None = None,
    sky_map: SkyMap | None = None,
    exptime: float = 1.0,
    zeropoint: float | None = None,
    only: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Measure every star of one frame in several circular apertures.

    Parameters
    ----------
    image : (ny, nx) float32 or float64 (any byte order; other dtypes become
        float64), ADU.
    x, y : (nstars,) star centres, px, 0-based, pixel centres at integers.
    radii : aperture radii, px, increasing.
    annulus : (r_in, r_out) of the sky annulus, px.
    gain : e-/ADU, for the photon noise of the star.
    mask : optional (ny, nx) uint8 or bool, non-zero = bad pixel.
    sky_method : "mode" (3 median - 2 mean), "median" or "mean".
    sky_sigma, sky_iters : sigma clipping of the annulus (at most ``sky_iters``
        iterations; it stops when no value leaves or joins).
    disjoint_radius : None, or px: annulus pixels closer than
        ``max(radii) + disjoint_radius`` to another star are left out.
    min_sky_pixels : an annulus with fewer usable pixels takes its sky from
        ``sky_map`` (SKY_MAP); without one, or with fewer pixels kept after
        clipping, the star is flagged FEW_SKY.
    saturation : ADU; aperture pixels at or above it flag SATURATED and are
        never used as sky.
    sky_map : None, or a :class:`SkyMap` of this image (only made when a star needs it).
    exptime, zeropoint : s and mag, for ``mag`` / ``magerr`` (only with a zeropoint).
    only : None, or indices of the stars to measure (the others, NaN in the outputs,
        still count as neighbours).

    Returns
    -------
    dict of arrays: ``flux``, ``fluxerr`` (ADU), ``area`` (usable aperture
    area, px^2), ``flag`` (int32, bits of ``trex.flags.PHOT``) with shape
    (nstars, nradii); ``bg``, ``bgerr`` (sky per pixel and its error
    sigma_sky / sqrt(N_sky), ADU), ``bgsigma`` (sky pixel scatter, ADU),
    ``nsky`` (int32) with shape (nstars,); ``mag``, ``magerr`` (nstars,
    nradii) when ``zeropoint`` is given.
    """
    if sky_method not in SKY_METHODS:
        raise ValueError(f"sky_method must be one of {sorted(SKY_METHODS)}, got {sky_method!r}")
    if gain <= 0:
        raise ValueError(f"gain must be positive, got {gain}")
    image = _native_image(image)
    x = np.ascontiguousarray(x, dtype=np.float64).ravel()
    y = np.ascontiguousarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.size} != {y.size}")
    radii = np.ascontiguousarray(radii, dtype=np.float64).ravel()
    r_in, r_out = _check_geometry(radii, annulus)
    nstars, nradii = x.size, radii.size
    exclusion = 0.0 if disjoint_radius is None else radii[-1] + float(disjoint_radius)
    order, indptr, indices = _geometry(x, y, None if disjoint_radius is None
                                       else r_out + exclusion)

    out = {
        "flux": np.empty((nstars, nradii)),
        "area": np.empty((nstars, nradii)),
        "flag": np.empty((nstars, nradii), dtype=np.int32),
        "bg": np.empty(nstars),
        "bgsigma": np.empty(nstars),
        "nsky": np.empty(nstars, dtype=np.int32),
    }
    mask8 = _native_mask(mask, image.shape)

    def run(order: np.ndarray, map_sky: np.ndarray, map_sigma: np.ndarray, map_nsky: int) -> None:
        _photometry.photometry_kernel(
            image, mask8, mask is not None, x, y, order, radii, r_in, r_out, indptr, indices,
            exclusion, SKY_METHODS[sky_method], float(sky_sigma), int(sky_iters),
            np.inf if saturation is None else float(saturation), _KERNEL_BITS,
            map_sky, map_sigma, map_nsky, out["flux"], out["area"], out["flag"], out["bg"],
            out["bgsigma"], out["nsky"], int(min_sky_pixels))

    none = np.full(nstars, np.nan)
    if only is not None:
        for name in out:
            out[name].fill(0 if name in ("flag", "nsky") else np.nan)
        order = order[np.isin(order, only)]
    run(order, none, none, 0)
    few = np.flatnonzero(out["flag"][:, 0] & PHOT["FEW_SKY"].bit)
    if sky_map is not None and few.size:
        map_sky, map_sigma = none.copy(), none.copy()
        map_sky[few], map_sigma[few] = sky_map.at(x[few], y[few])
        run(few.astype(np.int64), map_sky, map_sigma, sky_map.npix)
    _add_errors(out, gain)
    if zeropoint is not None:
        add_magnitudes(out, zeropoint, exptime)
    return out


class SkyMap:
    """The local background map of one image (:func:`trex.background.background`),
    made on first use: the sky of stars whose annulus is too small or crowded.

    ``npix`` (the pixels of one mesh cell) stands for N_sky in the flux error.
    """

    def __init__(self, image: np.ndarray, mask: np.ndarray | None, mesh: int, filter_size: int):
        self._args = (image, mask, mesh, filter_size)
        self._maps: tuple[np.ndarray, np.ndarray] | None = None
        self.npix = mesh * mesh

    def at(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(sky, pixel scatter) of the map at the pixels nearest (x, y), ADU, shape of x."""
        if self._maps is None:
            self._maps = background(*self._args)
            log.debug("sky map made: %d stars need it", len(x))
        sky, rms = self._maps
        i = np.clip(np.rint(x), 0, sky.shape[1] - 1).astype(np.intp)
        j = np.clip(np.rint(y), 0, sky.shape[0] - 1).astype(np.intp)
        return sky[j, i].astype(np.float64), rms[j, i].astype(np.float64)


def _add_errors(out: dict, gain: float) -> None:
    """fluxerr and bgerr (module docstring formula); NONPOSITIVE on F <= 0."""
    flux, area = out["flux"], out["area"]
    sky_var = out["bgsigma"][:, None] ** 2
    nsky = np.maximum(out["nsky"], 1)
    with np.errstate(invalid="ignore"):
        out["fluxerr"] = np.sqrt(
            np.maximum(flux, 0) / gain + area * sky_var * (1 + area / nsky[:, None]))
        out["bgerr"] = out["bgsigma"] / np.sqrt(nsky)
        out["flag"][flux <= 0] |= PHOT["NONPOSITIVE"].bit
