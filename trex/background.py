"""Sky background and its RMS as smooth full-resolution maps.

The frame is cut into a mesh of cells (``mesh`` px on a side); each cell gets
a clipped-mode sky estimate and a clipped RMS (Cython kernel
``trex._background.mesh_stats``).  Cells with under half their pixels usable
take the value of the nearest good cell, the grid is median-filtered over
``filter_size`` cells around a robust plane (suppressing cells spoiled by
bright stars without bending gradients at the edges), and a
natural bicubic spline through the cell centres gives the value at every
pixel (``trex._background.spline_expand``, two separable passes).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from trex import _background

log = logging.getLogger(__name__)


def mesh_edges(n: int, mesh: int) -> np.ndarray:
    """Cell boundaries along an axis of ``n`` px: about ``mesh`` px per cell."""
    ncell = max(1, int(round(n / mesh)))
    return np.linspace(0, n, ncell + 1).round().astype(np.intp)


def _fill_missing(grid: np.ndarray) -> np.ndarray:
    """Give NaN cells the value of their nearest valid cell."""
    bad = ~np.isfinite(grid)
    if bad.all():
        raise ValueError("no usable background cell: image fully masked or non-finite")
    if not bad.any():
        return grid
    nearest = ndimage.distance_transform_edt(bad, return_distances=False, return_indices=True)
    return grid[tuple(nearest)]


def _median_filter(grid: np.ndarray, size: int) -> np.ndarray:
    """Median filter over cells of the residual from a robust plane.

    Taking the plane out first lets a gradient pass the filter unchanged, also
    at the edges and corners where the filter window is truncated.
    """
    if size <= 1:
        return grid
    jj, ii = np.indices(grid.shape)
    design = np.stack([np.ones(grid.size), ii.ravel(), jj.ravel()], axis=1)
    keep = np.ones(grid.size, dtype=bool)
    for _ in range(3):
        coef = np.linalg.lstsq(design[keep], grid.ravel()[keep], rcond=None)[0]
        resid = grid.ravel() - design @ coef
        keep = np.abs(resid) <= 3.0 * 1.4826 * np.median(np.abs(resid[keep])) + 1e-12
    plane = (design @ coef).reshape(grid.shape)
    return plane + ndimage.median_filter(grid - plane, size=size, mode="nearest")


def _expand(grid: np.ndarray, ycentres: np.ndarray, xcentres: np.ndarray,
            shape: tuple[int, int]) -> np.ndarray:
    """Bicubic (natural) spline through cell centres, sampled at every pixel."""
    ny, nx = shape
    columns = np.empty((grid.shape[1], ny), dtype=np.float32)
    _background.spline_expand(np.ascontiguousarray(grid.T), ycentres, columns)
    rows = np.ascontiguousarray(columns.T, dtype=np.float64)
    out = np.empty((ny, nx), dtype=np.float32)
    _background.spline_expand(rows, xcentres, out)
    return out


def background_mesh(image: np.ndarray, mask: np.ndarray | None = None, mesh: int = 64,
                    filter_size: int = 3, nsigma: float = 3.0
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Filtered mesh grids: (sky, rms, ycentres, xcentres); grids are (nmy, nmx) float64."""
    image = np.ascontiguousarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError("image must be 2-D")
    if mesh < 4:
        raise ValueError("mesh must be at least 4 px")
    mask8 = None
    if mask is not None:
        if mask.shape != image.shape:
            raise ValueError("mask must have the shape of image")
        mask8 = np.ascontiguousarray(mask != 0, dtype=np.uint8)
    yedges = mesh_edges(image.shape[0], mesh)
    xedges = mesh_edges(image.shape[1], mesh)
    sky = np.empty((len(yedges) - 1, len(xedges) - 1))
    rms = np.empty_like(sky)
    _background.mesh_stats(image, mask8, yedges, xedges, sky, rms, nsigma)
    sky = _fill_missing(sky)
    rms = _fill_missing(rms)
    sky = _median_filter(sky, filter_size)
    rms = _median_filter(rms, filter_size)
    ycentres = 0.5 * (yedges[:-1] + yedges[1:] - 1.0)
    xcentres = 0.5 * (xedges[:-1] + xedges[1:] - 1.0)
    return sky, rms, ycentres, xcentres


def background(image: np.ndarray, mask: np.ndarray | None = None, mesh: int = 64,
               filter_size: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Smooth sky and sky-RMS maps of ``image``.

    Parameters
    ----------
    image : 2-D array (ny, nx), ADU; non-finite pixels are ignored.
    mask : array (ny, nx) or None; non-zero pixels are ignored.
    mesh : cell size, px (cells are stretched to tile the frame exactly).
    filter_size : median filter over the cell grid, cells (1: none).

    Returns
    -------
    (sky, rms) : float32 arrays (ny, nx), ADU per pixel.
    """
    sky, rms, yc, xc = background_mesh(image, mask, mesh, filter_size)
    shape = np.shape(image)
    log.debug("background: %d x %d cells, median sky %.2f rms %.2f",
              sky.shape[0], sky.shape[1], np.median(sky), np.median(rms))
    return _expand(sky, yc, xc, shape), _expand(rms, yc, xc, shape)
