"""Blind matching of two star lists by triangle asterisms.

Two lists of 2-D positions in the same units (pixels of the frame, and
catalog standard coordinates divided by the guessed pixel scale) are related by
an unknown similarity: any shift and rotation, possibly a mirror (flipped
parity), and a scale near 1.  Every star forms triangles with pairs of its
``k`` nearest neighbours; a triangle's invariants (the two shorter sides over
the longest) do not change under such a transform, so triangles are paired by
a cKDTree search in invariant space.  Each pair of triangles proposes a
similarity (solved in closed form with complex numbers); the proposals are
verified all at once by counting how many of the bright sources land within
``radius`` of a catalog star, and the best-supported one wins.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
from scipy.spatial import cKDTree


def triangles(xy: np.ndarray, k: int = 6, min_side: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Triangles of each point with pairs of its ``k`` nearest neighbours.

    Parameters
    ----------
    xy : (n, 2) float64 positions.
    k : neighbours per point.
    min_side : triangles with a side shorter than this (same units) are dropped.

    Returns
    -------
    vertices : (t, 3) int indices, ordered by the length of the opposite side
        (shortest first), so that matching triangles list matching vertices.
    invariants : (t, 2) float64, (s0 / s2, s1 / s2) with sides s0 <= s1 <= s2.
    """
    n = len(xy)
    k = min(k, n - 1)
    if k < 2:
        return np.zeros((0, 3), int), np.zeros((0, 2))
    _, nbr = cKDTree(xy).query(xy, k=k + 1)
    pairs = np.array(list(combinations(range(1, k + 1), 2)))
    tri = np.concatenate([np.broadcast_to(nbr[:, None, :1], (n, len(pairs), 1)),
                          nbr[:, pairs]], axis=2).reshape(-1, 3)
    tri = np.unique(np.sort(tri, axis=1), axis=0)
    p = xy[tri]
    sides = np.stack([np.hypot(*(p[:, 1] - p[:, 2]).T), np.hypot(*(p[:, 0] - p[:, 2]).T),
                      np.hypot(*(p[:, 0] - p[:, 1]).T)], axis=1)  # side opposite each vertex
    order = np.argsort(sides, axis=1)
    sides = np.take_along_axis(sides, order, 1)
    vertices = np.take_along_axis(tri, order, 1)
    keep = sides[:, 0] >= min_side
    return vertices[keep], (sides[keep, :2] / sides[keep, 2:])


def _similarities(src: np.ndarray, cat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closed-form similarity per triangle pair.

    ``src``, ``cat`` : (c, 3) complex vertex positions.  Returns (a, b, flip) so
    that cat ~ a * z + b with z = src, or conj(src) where ``flip``.
    """
    def signed_area(z):
        d1, d2 = z[:, 1] - z[:, 0], z[:, 2] - z[:, 0]
        return (d1.real * d2.imag - d1.imag * d2.real)

    flip = np.sign(signed_area(src)) != np.sign(signed_area(cat))
    z = np.where(flip[:, None], np.conj(src), src)
    zc = z - z.mean(1, keepdims=True)
    wc = cat - cat.mean(1, keepdims=True)
    a = (wc * np.conj(zc)).sum(1) / (np.abs(zc) ** 2).sum(1)
    b = cat.mean(1) - a * z.mean(1)
    return a, b, flip


def apply(a: complex, b: complex, flip: bool, xy: np.ndarray) -> np.ndarray:
    """Apply one similarity to (n, 2) positions; returns (n, 2)."""
    z = xy[:, 0] + 1j * xy[:, 1]
    w = a * (np.conj(z) if flip else z) + b
    return np.stack([w.real, w.imag], axis=1)


def candidates(src_xy: np.ndarray, cat_xy: np.ndarray, *, k: int = 6, tolerance: float = 0.01,
               scale_tolerance: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Similarities proposed by pairs of triangles with matching invariants.

    Returns arrays (a, b, flip) of length c (complex, complex, bool), keeping
    only scales within ``scale_tolerance`` (fraction) of 1.
    """
    s_vert, s_inv = triangles(src_xy, k)
    c_vert, c_inv = triangles(cat_xy, k)
    if len(s_vert) == 0 or len(c_vert) == 0:
        return np.zeros(0, complex), np.zeros(0, complex), np.zeros(0, bool)
    nq = min(8, len(c_vert))
    dist, idx = cKDTree(c_inv).query(s_inv, k=nq, distance_upper_bound=tolerance)
    si, slot = np.nonzero(np.isfinite(dist.reshape(len(s_inv), nq)))
    ci = idx.reshape(len(s_inv), nq)[si, slot]
    zs = src_xy[s_vert[si]] @ np.array([1, 1j])
    zc = cat_xy[c_vert[ci]] @ np.array([1, 1j])
    a, b, flip = _similarities(zs, zc)
    good = np.abs(np.log(np.abs(a))) < np.log1p(scale_tolerance)
    return a[good], b[good], flip[good]


def verify(src_xy: np.ndarray, cat_tree: cKDTree, a: np.ndarray, b: np.ndarray, flip: np.ndarray,
           radius: float) -> np.ndarray:
    """Number of ``src_xy`` points each similarity puts within ``radius`` of a catalog point.

    Vectorised over the c proposals: returns int array of length c.
    """
    z = src_xy[:, 0] + 1j * src_xy[:, 1]
    zz = np.where(flip[:, None], np.conj(z)[None, :], z[None, :])
    w = a[:, None] * zz + b[:, None]
    dist, _ = cat_tree.query(np.stack([w.real.ravel(), w.imag.ravel()], 1),
                             distance_upper_bound=radius)
    return np.isfinite(dist).reshape(w.shape).sum(1)


def match_lists(src_xy: np.ndarray, cat_xy: np.ndarray, verify_xy: np.ndarray, *, radius: float,
                k: int = 6, tolerance: float = 0.01, scale_tolerance: float = 0.1,
                batch: int = 2000) -> tuple[int, complex, complex, bool]:
    """Best similarity taking ``src_xy`` onto the catalog.

    Triangles are formed in ``src_xy`` and ``cat_xy`` (the bright stars of each
    list); proposals are scored on ``verify_xy`` (a deeper catalog list).
    Returns (support, a, b, flip); support 0 when nothing matched.
    """
    a, b, flip = candidates(src_xy, cat_xy, k=k, tolerance=tolerance,
                            scale_tolerance=scale_tolerance)
    if len(a) == 0:
        return 0, 0j, 0j, False
    tree = cKDTree(verify_xy)
    support = np.concatenate([verify(src_xy, tree, a[i:i + batch], b[i:i + batch],
                                     flip[i:i + batch], radius)
                              for i in range(0, len(a), batch)])
    best = int(np.argmax(support))
    return int(support[best]), complex(a[best]), complex(b[best]), bool(flip[best])
