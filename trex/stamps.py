"""Stamps for the kernel fit: bright, clean, isolated stars spread over the frame.

The frame is tiled by an ``ngrid`` x ``ngrid`` grid (:func:`grid_cells`); in
each cell the brightest local maxima of the reference that stand
``threshold`` sky noises above the sky, have no brighter pixel in their
stamp and no bad, saturated or non-finite pixel within the stamp grown by
the kernel's half-size are the candidates (:func:`stamp_candidates`, found
once per reference); each frame picks the first ``per_cell`` of each cell
whose box is clean on that frame too (:meth:`StampCandidates.pick`).  Pure
array code, used by :mod:`trex.subtract`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trex._stats import clipped_stats


def _grid_edges(shape: tuple[int, int], ngrid: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column edges of an ngrid x ngrid grid over shape (ny, nx)."""
    return tuple(np.linspace(0, n, ngrid + 1).round().astype(int) for n in shape)


def grid_cells(shape: tuple[int, int], ngrid: int) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of the ngrid x ngrid cells that tile an image of shape (ny, nx)."""
    ye, xe = _grid_edges(shape, ngrid)
    return [(ye[j], ye[j + 1], xe[i], xe[i + 1]) for j in range(ngrid) for i in range(ngrid)]


@dataclass(frozen=True)
class StampCandidates:
    """The stars of a reference that may hold stamps, found once per reference.

    ``centres`` int64 (n, 2) (x, y) and ``cell`` int64 (n,): the ``tries``
    brightest local maxima of each grid cell that pass the reference's own
    checks, by cell and brightest first; ``reach`` px around a centre (stamp
    half-size + kernel half-size) must be free of bad pixels.
    """

    centres: np.ndarray
    cell: np.ndarray
    reach: int

    def pick(self, bad: np.ndarray | None, per_cell: int = 1) -> np.ndarray:
        """Centres (n, 2) of the ``per_cell`` first candidates of each cell whose box
        holds no pixel of ``bad`` ((ny, nx), non-zero: bad; None: no further check)."""
        ok = np.ones(len(self.centres), dtype=bool)
        if bad is not None and len(ok):
            ok = ~_cutouts(np.asarray(bad) != 0, self.centres, self.reach).any(axis=(1, 2))
        cell = self.cell[ok]
        rank = np.arange(cell.size) - np.searchsorted(cell, cell)
        return self.centres[ok][rank < per_cell]


def stamp_candidates(reference: np.ndarray, ngrid: int = 8, halfsize: int = 10, border: int = 4,
                     mask: np.ndarray | None = None, saturation: float | None = None,
                     threshold: float = 10.0, tries: int = 16) -> StampCandidates:
    """:class:`StampCandidates` of a reference (see :func:`select_stamps`)."""
    ref = np.asarray(reference, dtype=np.float32)
    ny, nx = ref.shape
    lo = halfsize + border
    none = StampCandidates(np.empty((0, 2), dtype=np.int64), np.empty(0, dtype=np.int64), lo)
    if ny <= 2 * lo or nx <= 2 * lo:
        return none
    _, sky, noise, _ = clipped_stats(ref[::4, ::4], 3.0, 5)
    bad = ~np.isfinite(ref)
    if mask is not None:
        bad |= np.asarray(mask) != 0
    if saturation is not None:
        bad |= ref >= saturation
    core = ref[lo:ny - lo, lo:nx - lo]
    ys, xs = np.nonzero(core > sky + threshold * max(noise, 1e-12))
    ys, xs = ys + lo, xs + lo
    peak = ref[ys, xs]
    is_max = np.ones(ys.size, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                is_max &= peak >= ref[ys + dy, xs + dx]
    ys, xs = ys[is_max], xs[is_max]
    ye, xe = _grid_edges((ny, nx), ngrid)
    cell = (np.searchsorted(ye, ys, "right") - 1) * ngrid + np.searchsorted(xe, xs, "right") - 1
    order = np.lexsort((-ref[ys, xs], cell))
    first = np.searchsorted(cell[order], cell[order])
    order = order[np.arange(order.size) - first < tries]  # the brightest few per cell
    cand = np.stack([xs[order], ys[order]], axis=1)
    ok = ~_cutouts(bad, cand, lo).any(axis=(1, 2))
    ok &= _cutouts(ref, cand, halfsize).max(axis=(1, 2)) <= ref[cand[:, 1], cand[:, 0]]
    return StampCandidates(cand[ok], cell[order][ok], lo)


def select_stamps(reference: np.ndarray, ngrid: int = 8, halfsize: int = 10, border: int = 4,
                  mask: np.ndarray | None = None, saturation: float | None = None,
                  threshold: float = 10.0, tries: int = 16, per_cell: int = 1) -> np.ndarray:
    """Centres (x, y) of stamps on the ``per_cell`` brightest suitable stars of each grid cell.

    A star qualifies when its peak is ``threshold`` sky noises above the sky, no
    brighter pixel lies in its stamp, and the stamp (grown by ``border``, the
    kernel half-size) lies inside the frame and holds no masked, saturated
    (``>= saturation``) or non-finite pixel.  The ``tries`` brightest peaks
    of each cell are examined; cells without a qualifying star get no stamp.
    Stamps of two qualifying stars never hold each other's centre.

    Returns
    -------
    int64 array, shape (nstamps, 2): x, y.
    """
    return stamp_candidates(reference, ngrid, halfsize, border, mask, saturation, threshold,
                            tries).pick(None, per_cell)


def _cutouts(array: np.ndarray, centres: np.ndarray, half: int) -> np.ndarray:
    """Boxes of side 2 * half + 1 around (x, y) centres: float64 (n, side, side), NaN -> 0."""
    span = np.arange(-half, half + 1)
    rows = (centres[:, 1, None] + span)[:, :, None]
    cols = (centres[:, 0, None] + span)[:, None, :]
    cut = np.asarray(array[rows, cols], dtype=np.float64)
    return np.nan_to_num(cut, nan=0.0, posinf=0.0, neginf=0.0)
