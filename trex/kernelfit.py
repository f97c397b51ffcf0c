"""The kernel of image subtraction, fitted on stamps: ``M = R conv K(x, y) + B(x, y)``.

The kernel's basis coefficients (:mod:`trex.kernelspec`) are polynomials in the
normalised pixel coordinates, and the background a polynomial; they are fitted
by weighted linear least squares on stamps around bright stars
(:func:`fit_kernel`), rejecting stamps whose chi^2 stands out.  Each stamp's
block of the normal equations is built in one Cython pass
(``trex._subtract.stamp_normals``: the delta and Gauss-Hermite bases as sparse
taps, BLAS for the products), the blocks are combined with the polynomial
terms in one matrix product (:func:`normal_equations`), and the varying kernel
is applied in Cython (:meth:`Solution.model`).  Pixel coordinates are 0-based,
pixel centres at integers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from trex import _subtract
from trex.kernelspec import Basis, KernelSpec, dense_coefficients, nterms, poly_terms

log = logging.getLogger(__name__)

#: stamps of the first fit, which only sets the model of the pixel weights
WEIGHT_STAMPS = 128


@dataclass(frozen=True)
class Solution:
    """A fitted kernel and background.

    Attributes
    ----------
    spec : the kernel specification.
    kcoef : float64, (nterms(N), 2H+1, 2H+1): kernel images per polynomial
        term, ``K(x, y) = sum_p P_p(xn, yn) kcoef[p]``; ``K[H + n, H + m]``
        multiplies ``R[y - n, x - m]``.
    bcoef : float64, (nterms(N),): background polynomial.
    params : float64, (nbasis, nterms(N)): fitted coefficient of each basis of
        ``spec.basis()`` (rows) per polynomial term (zero beyond its order).
    norm : (x0, sx, y0, sy): xn = (x - x0) / sx, yn = (y - y0) / sy.
    stamps : int, (nstamps, 2): (x, y) centres of the stamps kept in the fit.
    rejected : int, (nrejected, 2): centres of the stamps rejected.
    chi2 : float64, (nstamps,): reduced chi^2 of the kept stamps.
    """

    spec: KernelSpec
    kcoef: np.ndarray
    bcoef: np.ndarray
    params: np.ndarray
    norm: tuple[float, float, float, float]
    stamps: np.ndarray
    rejected: np.ndarray
    chi2: np.ndarray

    @property
    def order(self) -> int:
        return int(round((np.sqrt(8 * self.kcoef.shape[0] + 1) - 3) / 2))

    def _terms(self, x, y) -> np.ndarray:
        x0, sx, y0, sy = self.norm
        xn = (np.asarray(x, dtype=np.float64) - x0) / sx
        return poly_terms(xn, (np.asarray(y, dtype=np.float64) - y0) / sy, self.order)

    def kernel(self, x: float, y: float) -> np.ndarray:
        """The kernel image at pixel (x, y): float64, shape (2H+1, 2H+1)
        (arrays of positions add leading axes)."""
        return np.tensordot(self._terms(x, y), self.kcoef, axes=(0, 0))

    def flux_scale(self, x, y) -> np.ndarray:
        """Sum of the kernel at (x, y) (scalars or arrays): image flux / reference flux."""
        return np.tensordot(self.kcoef.sum(axis=(1, 2)), self._terms(x, y), axes=(0, 0))

    def background(self, x, y) -> np.ndarray:
        """Background polynomial at (x, y), ADU."""
        return np.tensordot(self.bcoef, self._terms(x, y), axes=(0, 0))

    def model(self, reference: np.ndarray) -> np.ndarray:
        """``R conv K + B`` as float32; NaN within H of the border."""
        ref = np.ascontiguousarray(reference, dtype=np.float32)
        kdense = dense_coefficients(np.moveaxis(self.kcoef, 0, -1), self.order)
        bdense = dense_coefficients(self.bcoef, self.order)
        out = np.full(ref.shape, np.nan, dtype=np.float32)  # the kernel leaves the border
        _subtract.convolve_varying(ref, np.ascontiguousarray(kdense), bdense,
                                   np.array(self.norm, dtype=np.float64), out)
        return out


def _solve(matrix: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    scale = 1.0 / np.sqrt(np.where(np.diag(matrix) > 0, np.diag(matrix), 1.0))
    scaled = matrix * scale[:, None] * scale[None, :]
    try:
        factor = scipy.linalg.cho_factor(scaled, overwrite_a=True, check_finite=False)
        sol = scipy.linalg.cho_solve(factor, rhs * scale, check_finite=False)
    except np.linalg.LinAlgError:
        # degenerate terms (e.g. a background order the stamps cannot constrain): the
        # minimum-norm solution is the right answer, nothing for the user to act on
        log.debug("kernel normal equations singular: using least squares")
        sol = np.linalg.lstsq(scaled, rhs * scale, rcond=None)[0]
    return sol * scale


def _taps(basis: Basis) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The basis images as sparse taps for ``_subtract.stamp_normals``: (n, m) offsets
    (ntap, 2), their values (ntap,) and each basis's first tap (nbasis + 1,)."""
    h = basis.halfsize
    taps, values, first = [], [], [0]
    for image in basis.images:
        rows, cols = np.nonzero(image)
        taps += [(r - h, c - h) for r, c in zip(rows, cols)]
        values += image[rows, cols].tolist()
        first.append(len(taps))
    return (np.array(taps, dtype=np.int64).reshape(-1, 2), np.array(values, dtype=np.float64),
            np.array(first, dtype=np.int64))


@dataclass(frozen=True)
class StampNormals:
    """Per-stamp normal-equation blocks (``_subtract.stamp_normals``) for one weighting."""

    cross: np.ndarray    # (ns, nb, nb)
    rhs: np.ndarray      # (ns, nb)
    dwd: np.ndarray      # (ns,)
    npix: np.ndarray     # (ns,)

    def chi2(self, coef: np.ndarray) -> np.ndarray:
        """Reduced chi^2 per stamp of the model coefficients ``coef`` (ns, nb)."""
        quad = np.einsum("sb,sbc,sc->s", coef, self.cross, coef)
        chi2 = self.dwd - 2.0 * np.einsum("sb,sb->s", coef, self.rhs) + quad
        return np.maximum(chi2, 0.0) / np.maximum(self.npix, 1.0)


def stamp_normals(image: np.ndarray, reference: np.ndarray, bad: np.ndarray,
                  centres: np.ndarray, basis: Basis, halfsize: int, coef: np.ndarray | None,
                  gain: float, rdnoise: float) -> StampNormals:
    """:class:`StampNormals` of the stamps (float32 frames, uint8 ``bad``; ``coef``
    (ns, nb) the model of the weights, None: the reference)."""
    taps, values, first = _taps(basis)
    ns, nb = len(centres), len(basis.images) + (basis.background_order >= 0)
    out = StampNormals(np.empty((ns, nb, nb)), np.empty((ns, nb)), np.empty(ns), np.empty(ns))
    coef = np.empty((0, 0)) if coef is None else np.ascontiguousarray(coef, dtype=np.float64)
    _subtract.stamp_normals(reference, image, bad, np.ascontiguousarray(centres, dtype=np.int64),
                            halfsize, taps, values, first, basis.background_order >= 0, coef,
                            gain, rdnoise, out.cross, out.rhs, out.dwd, out.npix)
    return out


def normal_equations(cross: np.ndarray, rhs: np.ndarray, poly: np.ndarray,
                     nterm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The normal equations of the spatially varying model from per-stamp blocks.

    Within a stamp the polynomial factors are taken constant (they vary by ~1 %
    over it): ``matrix[(b, p), (c, q)] = sum_s poly[s, p] poly[s, q] cross[s, b, c]``
    and ``rhs[(b, p)] = sum_s poly[s, p] rhs[s, b]`` for ``p < nterm[b]``,
    ``q < nterm[c]``: one matrix product per pair of basis groups of one order.
    cross (ns, nb, nb), rhs (ns, nb), poly (ns, npoly); returns ((nunk, nunk),
    (nunk,)) with nunk = sum(nterm), unknowns ordered (b, p).
    """
    ns, nb = rhs.shape
    start = np.concatenate([[0], np.cumsum(nterm)])
    groups = [np.flatnonzero(nterm == n) for n in np.unique(nterm) if n > 0]
    index = [(start[g][:, None] + np.arange(nterm[g[0]])).ravel() for g in groups]
    matrix, vector = np.empty((start[-1], start[-1])), np.empty(start[-1])
    for a, ga in enumerate(groups):
        na = nterm[ga[0]]
        vector[index[a]] = (poly[:, :na].T @ rhs[:, ga]).T.ravel()
        for b in range(a, len(groups)):
            gb = groups[b]
            nb_ = nterm[gb[0]]
            pairs = (poly[:, :na, None] * poly[:, None, :nb_]).reshape(ns, -1)
            sub = cross if len(groups) == 1 else cross[:, ga][:, :, gb]
            block = (pairs.T @ sub.reshape(ns, -1)).reshape(na, nb_, len(ga), len(gb))
            block = block.transpose(2, 0, 3, 1).reshape(len(ga) * na, len(gb) * nb_)
            if len(groups) == 1:
                return block, vector
            matrix[np.ix_(index[a], index[b])] = block
            matrix[np.ix_(index[b], index[a])] = block.T
    return matrix, vector


def _params(matrix: np.ndarray, rhs: np.ndarray, nterm: np.ndarray, npoly: int) -> np.ndarray:
    """Solve the normal equations: (nbasis, npoly) coefficients, 0 beyond each order."""
    params = np.zeros((len(nterm), npoly))
    params[np.arange(npoly) < nterm[:, None]] = _solve(matrix, rhs)
    return params


def fit_kernel(image: np.ndarray, reference: np.ndarray, centres: np.ndarray,
               spec: KernelSpec, *, bad: np.ndarray, halfsize: int = 10,
               gain: float = 1.0, rdnoise: float = 0.0, reject: float = 3.0,
               maxiter: int = 3) -> Solution:
    """Least-squares kernel fit on stamps, with iterative rejection of bad stamps.

    ``centres`` (n, 2) are stamp centres (x, y) at least ``halfsize`` + H from
    the border; ``bad`` (image shape) is non-zero on pixels to ignore.  The
    pixel variance is ``max(model, 0) / gain + (rdnoise / gain)**2``: a first
    fit on ``WEIGHT_STAMPS`` of the stamps, with the reference standing in for
    the model, gives the model of the final weighting.  Then a stamp is
    rejected when its reduced chi^2 exceeds the median by ``reject`` robust
    sigmas and the fit repeated (the rejected stamps' share taken out of the
    normal equations), until no stamp is rejected or ``maxiter`` times.
    """
    basis = spec.basis()
    ny, nx = reference.shape
    norm = (0.5 * (nx - 1), max(0.5 * (nx - 1), 1.0), 0.5 * (ny - 1), max(0.5 * (ny - 1), 1.0))
    img = np.ascontiguousarray(image, dtype=np.float32)
    ref = np.ascontiguousarray(reference, dtype=np.float32)
    bad = np.ascontiguousarray(bad, dtype=np.uint8)
    orders = list(basis.orders) + ([basis.background_order] if basis.background_order >= 0 else [])
    nterm = np.array([nterms(int(o)) for o in orders], dtype=np.int64)
    poly = poly_terms((centres[:, 0] - norm[0]) / norm[1], (centres[:, 1] - norm[2]) / norm[3],
                      basis.max_order).T
    npoly = poly.shape[1]
    sample = slice(None, None, max(1, len(centres) // WEIGHT_STAMPS))
    first = stamp_normals(img, ref, bad, centres[sample], basis, halfsize, None, gain, rdnoise)
    params = _params(*normal_equations(first.cross, first.rhs, poly[sample], nterm), nterm, npoly)
    normals = stamp_normals(img, ref, bad, centres, basis, halfsize, poly @ params.T, gain,
                            rdnoise)
    matrix, rhs = normal_equations(normals.cross, normals.rhs, poly, nterm)
    keep = np.ones(len(centres), dtype=bool)
    for it in range(maxiter + 1):
        params = _params(matrix, rhs, nterm, npoly)
        chi2 = normals.chi2(poly @ params.T)
        med = np.median(chi2[keep])
        mad = 1.4826 * np.median(np.abs(chi2[keep] - med))
        new = keep & (chi2 <= med + reject * max(mad, 1e-3 * med))
        log.debug("kernel fit pass %d: %d stamps, median chi2 %.3f", it, keep.sum(), med)
        too_few = normals.npix[new].sum() <= 2 * nterm.sum()
        if it == maxiter or too_few or np.array_equal(new, keep):
            break
        drop = keep & ~new  # take the rejected stamps' share out of the equations
        dmatrix, drhs = normal_equations(normals.cross[drop], normals.rhs[drop], poly[drop], nterm)
        matrix, rhs, keep = matrix - dmatrix, rhs - drhs, new
    nk = len(basis.orders)
    kcoef = np.einsum("bp,bij->pij", params[:nk], basis.images)
    bcoef = params[nk] if basis.background_order >= 0 else np.zeros(poly.shape[1])
    return Solution(spec, kcoef, bcoef, params, norm, centres[keep], centres[~keep], chi2[keep])
