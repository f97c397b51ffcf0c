"""The local residual term: structure finer than a fitted polynomial, from neighbours.

A per-frame fit (the magnitude fit's polynomial, the difference photometry's
zero point) leaves residuals that thin clouds make spatially coherent over a
few hundred px.  Each star's value of that structure is estimated from the
fitted stars around it, never from itself (:func:`local_residual`), shrunk by
the structure's share of the variance (:func:`structure_variance`), and the
structure is trusted only as far as it stands out of its estimate's noise
(:func:`significance`).  Pure array code: positions in px, residuals in mag.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.spatial import cKDTree

#: px: neighbours this close never enter a star's local term (their apertures and sky
#: annuli hold some of its light, hence of its transit)
LOCAL_EXCLUSION = 15.0


class Deletion(NamedTuple):
    """What removing one kept star does to a weighted linear fit (arrays (nkept,))."""

    kept: np.ndarray      # indices of the kept stars among all the stars
    residual: np.ndarray  # their residuals, mag
    weight: np.ndarray    # their weights, 1 / error
    q: np.ndarray | None  # (nkept, nterms): orthonormal basis of the weighted design (QR)

    @property
    def leverage(self) -> np.ndarray:
        """h, the hat-matrix diagonal (capped at 0.99: a star alone in its corner)."""
        return np.minimum(np.sum(self.q * self.q, axis=1), 0.99)

    @property
    def factor(self) -> np.ndarray:
        """h / (1 - h): a star's fitted value without it is its value minus this times
        its residual (the exact deletion formula of linear least squares)."""
        h = self.leverage
        return h / (1.0 - h)

    def shift(self, star: np.ndarray, other: np.ndarray) -> np.ndarray:
        """Change of kept star ``other``'s residual when kept star ``star`` leaves the fit
        (positions among the kept): (q_o . q_s) (w_s / w_o) e_s / (1 - h_s)."""
        cross = np.einsum("ij,ij->i", self.q[other], self.q[star])
        return (cross * self.weight[star] / self.weight[other] * self.residual[star]
                / (1.0 - self.leverage[star]))


class Neighbours(NamedTuple):
    """Pairs of stars closer than a radius but not closer than ``LOCAL_EXCLUSION``:
    ``star`` and ``other`` index all the stars (``other`` among the candidates it was
    built for), ``dist`` px; arrays (npairs,)."""

    star: np.ndarray
    other: np.ndarray
    dist: np.ndarray


def neighbour_pairs(x: np.ndarray, y: np.ndarray, candidates: np.ndarray,
                    radius: float) -> Neighbours:
    """Every star (``x``, ``y`` (nstars,) px) with each of the ``candidates`` (indices)
    within ``radius`` px of it, the star itself and its blends left out: built once
    per frame for the fits of all its apertures (their kept stars are candidates)."""
    candidates = np.asarray(candidates, dtype=np.intp)
    if not len(candidates) or not len(x):
        none = np.zeros(0, dtype=np.intp)
        return Neighbours(none, none, np.zeros(0))
    everyone = cKDTree(np.column_stack([x, y]))
    near = cKDTree(np.column_stack([x[candidates], y[candidates]]))
    pairs = everyone.sparse_distance_matrix(near, radius, output_type="ndarray")
    apart = pairs["v"] >= LOCAL_EXCLUSION             # never the star itself nor its blends
    return Neighbours(pairs["i"][apart], candidates[pairs["j"][apart]], pairs["v"][apart])


def local_residual(x: np.ndarray, y: np.ndarray, fitted: Deletion, scale: float,
                   leave_one_out: bool = True, significance_z: float = 3.0,
                   pairs: Neighbours | None = None) -> np.ndarray:
    """Each star's estimate of the fit residual at its place from the kept stars near it,
    itself left out.

    ``x``, ``y`` (nstars,) px of every star; ``fitted`` the kept stars' fit.
    Neighbours from ``LOCAL_EXCLUSION`` to 3 ``scale`` px count with ``weight^2 g``, ``g = exp(-d^2
    / 2 scale^2)``.  Their weighted mean is shrunk towards 0 (the polynomial)
    by ``S / (S + N)`` (:func:`structure_variance`): ``S`` the variance of the
    residual structure common to neighbours, ``N`` the noise variance of the
    star's mean; with no structure (a clear sky) the term adds no noise, and a
    star with few neighbours keeps most of the polynomial's value.  With
    ``leave_one_out`` a kept star sees its neighbours' residuals from the fit
    without it, so that its own signal reaches its correction neither directly
    nor through the polynomial.  ``pairs``: :func:`neighbour_pairs` within 3 ``scale``
    of candidates that include every kept star (default: built here).  Returns
    (nstars,) mag.
    """
    kept = fitted.kept
    if pairs is None:
        pairs = neighbour_pairs(x, y, kept, 3.0 * scale)
    position = np.full(x.size, -1)
    position[kept] = np.arange(kept.size)
    mine = position[pairs.other] >= 0
    star, other, dist = pairs.star[mine], position[pairs.other[mine]], pairs.dist[mine]
    g = np.exp(-0.5 * (dist / scale) ** 2)
    structure, noise_scale = structure_variance(fitted, position[star], other, g, x.size,
                                                significance_z)
    residual = fitted.residual[other]
    if leave_one_out:
        own = position[star] >= 0
        residual[own] += fitted.shift(position[star[own]], other[own])
    w2 = fitted.weight**2
    k = w2[other] * g
    total = np.bincount(star, k, minlength=x.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(star, k * residual, minlength=x.size) / total
        noise = noise_scale * np.bincount(star, w2[other] * g * g, minlength=x.size) / total**2
        shrink = structure / (structure + noise)
    return np.where(total > 0, shrink * mean, 0.0)


def structure_variance(fitted: Deletion, star: np.ndarray, other: np.ndarray,
                       g: np.ndarray, nstars: int,
                       significance_z: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """(S, c), each (nstars,), for every star from the kept stars other than itself.

    ``S`` mag^2: the covariance of the residuals of neighbouring kept stars (the
    structure they share, such as clouds; their noise is independent and averages
    out), the ``g``-weighted mean of ``e_i e_j`` over the pairs of kept stars
    (``star``: position of the pair's first star among the kept, -1 if not kept;
    ``other``: the second's; each pair listed both ways), >= 0.  ``c``: the scale of
    the squared errors ``1 / weight^2`` that gives the residuals' variance less
    ``S``, >= 1 (errors are not trusted below their stated size).  A kept star's own
    residual (its transit) is left out of both, so that it cannot move its correction.
    """
    pair = star >= 0
    p, q, gp = star[pair], other[pair], g[pair]
    e, w2 = fitted.residual, fitted.weight**2
    nkept = e.size
    own_sum = np.bincount(p, gp * e[q], minlength=nkept) * e    # sum over a star's pairs
    own_g = np.bincount(p, gp, minlength=nkept)
    product = e[p] * e[q]
    total, gsum = np.sum(gp * product), np.sum(gp)
    if gsum <= 0:
        return np.zeros(nstars), np.ones(nstars)
    trust = significance(total / gsum, gp, product, len(p) / nkept, significance_z)
    structure = np.full(nstars, max(trust * total / gsum, 0.0))
    chi2, w2sum = np.sum(e * e * w2), np.sum(w2)
    scale = np.full(nstars, (chi2 - structure[0] * w2sum) / nkept)
    with np.errstate(invalid="ignore", divide="ignore"):
        alone = trust * (total - 2 * own_sum) / (gsum - 2 * own_g)
    alone = np.maximum(np.where(np.isfinite(alone), alone, 0.0), 0.0)
    structure[fitted.kept] = alone
    scale[fitted.kept] = (chi2 - e * e * w2 - alone * (w2sum - w2)) / max(nkept - 1, 1)
    return structure, np.maximum(scale, 1.0)


def significance(structure: float, g: np.ndarray, product: np.ndarray, per_star: float,
                 threshold: float) -> float:
    """The share of an estimated structure ``S`` (mag^2) to trust: ``max(0, 1 -
    (threshold / z)^2)`` with ``z = S / sigma_S``.

    ``sigma_S`` is the standard error of the ``g``-weighted mean of the pair
    ``product`` s, raised by ``sqrt(per_star)`` (pairs listed per kept star: the
    products of one star's pairs share its noise, so they are not independent).
    On a clear sky the pair products of noise give an ``S`` of a few mmag^2 that
    is not structure (its correction does not follow a star's own residual and
    adds its neighbours' noise): z stays below 3 there, while thin clouds give
    z of 10-20 and a 150 px cloud 4.
    """
    if not structure > 0:
        return 0.0
    spread = np.sqrt(np.sum(g * g * (product - structure) ** 2)) / np.sum(g)
    if not spread > 0:  # a single pair, or all alike: nothing to judge it by
        return 1.0
    z = structure / (spread * np.sqrt(max(per_star, 1.0)))
    return float(max(0.0, 1.0 - (threshold / z) ** 2))
