# cython: language_level=3
"""Rendering kernels: add many pixel-integrated elliptical Gaussian or Moffat stars to an image.

No I/O, no globals, no logging.  The PSF follows the fistar (fitsh) shape
convention: the surface brightness around a star at (x0, y0) is

    I(dx, dy) ∝ exp(-0.5 * (S*(dx²+dy²) + D*(dx²-dy²) + 2*K*dx*dy)),

with dx = x - x0, dy = y - y0 in pixels (S, D, K in px⁻²; a round star has
D = K = 0 and S = 1/sigma²).  Each pixel receives the integral of I over its
area, evaluated with ``order`` x ``order``-point Gauss-Legendre quadrature, inside a
square stamp of half size ``ceil(nsigma * sigma_major)`` around the nearest
pixel.  The stamp (including any part that falls outside the image) is
normalised to sum exactly to the star's flux, so an isolated star fully inside
the image adds exactly its flux.  ``add_moffat`` draws Moffat profiles with
the same shape convention (see its docstring).
"""
import numpy as np

from libc.math cimport exp, sqrt, ceil, floor, fabs, fmin, isfinite, log1p, pow, M_PI
from libc.stdlib cimport malloc, free
from kernels cimport BAD_ARGUMENT, NO_MEMORY
from trex.kernels import check

#: largest stamp half size, px (a wider star is an error, not a slow call)
DEF MAX_HALFSIZE = 256
#: smallest Moffat stamp half size, px (covers the photometric apertures of faint stars)
DEF MIN_HALFSIZE = 4


cdef inline Py_ssize_t _halfsize(double s, double d, double k, double nsigma) noexcept nogil:
    """Stamp half size from the smallest eigenvalue of the shape matrix, px."""
    cdef double a = s + d, c = s - d, m = 0.5 * (a + c)
    cdef double r = sqrt(0.25 * (a - c) * (a - c) + k * k)
    cdef double lmin = m - r
    if not lmin * MAX_HALFSIZE * MAX_HALFSIZE > nsigma * nsigma:   # also catches NaN
        return -1
    return <Py_ssize_t>ceil(nsigma / sqrt(lmin))


cdef double _stamp(double* buf, double* work, Py_ssize_t h, double fx, double fy, double s,
                   double d, double k, const double* node, const double* weight,
                   int order) noexcept nogil:
    """Fill buf[(2h+1)²] with the pixel integrals around offset (fx, fy); return their sum.

    With u = ui + node[p], v = vj + node[q] (ui, vj: pixel centre offsets) the
    integrand factorises as exp(-a u²/2) exp(-c v²/2) exp(-k ui vj)
    exp(-k ui node[q]) exp(-k node[p] vj) exp(-k node[p] node[q]), so only
    O(n·order) exponentials are needed per star instead of O(n²·order²).
    ``work`` holds 4·n·order + order² doubles.
    """
    cdef Py_ssize_t n = 2 * h + 1, i, j, p, q, no = n * order
    cdef double a = s + d, c = s - d, total = 0.0, ui, vj, u, v, acc, inner
    cdef double* ex = work              # [i, p] exp(-a u²/2)
    cdef double* ey = work + no         # [j, q] exp(-c v²/2)
    cdef double* cx = work + 2 * no     # [i, q] exp(-k ui node[q])
    cdef double* cy = work + 3 * no     # [j, p] exp(-k node[p] vj)
    cdef double* cn = work + 4 * no     # [p, q] exp(-k node[p] node[q])
    for i in range(n):
        ui = (i - h) - fx
        vj = (i - h) - fy
        for p in range(order):
            u = ui + node[p]
            v = vj + node[p]
            ex[i * order + p] = weight[p] * exp(-0.5 * a * u * u)
            ey[i * order + p] = weight[p] * exp(-0.5 * c * v * v)
            cx[i * order + p] = exp(-k * ui * node[p])
            cy[i * order + p] = exp(-k * node[p] * vj)
    for p in range(order):
        for q in range(order):
            cn[p * order + q] = exp(-k * node[p] * node[q])
    for j in range(n):
        vj = (j - h) - fy
        for i in range(n):
            ui = (i - h) - fx
            acc = 0.0
            for q in range(order):
                inner = 0.0
                for p in range(order):
                    inner += ex[i * order + p] * cy[j * order + p] * cn[p * order + q]
                acc += inner * ey[j * order + q] * cx[i * order + q]
            acc *= exp(-k * ui * vj)
            buf[j * n + i] = acc
            total += acc
    return total


def add_stars(float[:, ::1] image, const double[::1] x, const double[::1] y,
              const double[::1] flux, const double[::1] s, const double[::1] d,
              const double[::1] k, int order=5, double nsigma=5.0):
    """Add elliptical Gaussian stars, integrated over pixels, into ``image`` in place.

    Parameters
    ----------
    image : float32 array, shape (ny, nx), C-contiguous, modified in place
        Any unit (the unit of ``flux``).
    x, y : float64 arrays, shape (nstars,)
        Star centres, px, 0-based with pixel centres at integers.
    flux : float64 array, shape (nstars,)
        Total flux of each star (image units); non-finite or <= 0 is skipped.
    s, d, k : float64 arrays, shape (nstars,)
        Shape parameters S, D, K of each star, px⁻² (see module docstring).
    order : Gauss-Legendre nodes per pixel side (1-16); 5 gets every pixel holding
        > 0.1 % of the flux of an FWHM = 1.5 px star to 2e-7 (4: 2e-5, 3: 6e-4).
    nsigma : stamp half size in units of the major-axis sigma.

    Returns
    -------
    int : number of stars that put flux into the image.

    Raises ValueError for mismatched lengths, ``order`` outside 1..16 or a shape
    matrix that is not positive definite.
    """
    cdef Py_ssize_t n = x.shape[0], ny = image.shape[0], nx = image.shape[1]
    cdef Py_ssize_t i, h, hmax = 0, ci, cj, sx, sy, ii, jj, w, wmax, bad = -1, added = 0
    cdef double scale
    cdef double* buf
    if not (y.shape[0] == n and flux.shape[0] == n and s.shape[0] == n
            and d.shape[0] == n and k.shape[0] == n):
        check(BAD_ARGUMENT, "add_stars: x, y, flux, s, d, k must have the same length")
    if not 1 <= order <= 16 or nsigma <= 0:
        check(BAD_ARGUMENT, "add_stars: order must be in 1..16 and nsigma > 0")
    gl_nodes, gl_weights = np.polynomial.legendre.leggauss(order)
    cdef double[::1] node = np.ascontiguousarray(0.5 * gl_nodes)
    cdef double[::1] weight = np.ascontiguousarray(0.5 * gl_weights)
    with nogil:
        for i in range(n):
            h = _halfsize(s[i], d[i], k[i], nsigma)
            if h < 0:
                bad = i
                break
            if h > hmax:
                hmax = h
    if bad >= 0:
        check(BAD_ARGUMENT, f"add_stars: star {bad}: S, D, K do not describe an ellipse "
              f"narrower than {MAX_HALFSIZE / nsigma:.0f} px sigma (need S > sqrt(D^2 + K^2))")
    wmax = 2 * hmax + 1
    buf = <double*>malloc((wmax * wmax + 4 * wmax * order + order * order) * sizeof(double))
    if buf == NULL:
        check(NO_MEMORY, "add_stars: no memory for the work buffers")
    try:
        with nogil:
            for i in range(n):
                if not (isfinite(flux[i]) and flux[i] > 0 and fabs(x[i]) < 1e9
                        and fabs(y[i]) < 1e9):
                    continue
                h = _halfsize(s[i], d[i], k[i], nsigma)
                ci = <Py_ssize_t>floor(x[i] + 0.5)
                cj = <Py_ssize_t>floor(y[i] + 0.5)
                if ci + h < 0 or cj + h < 0 or ci - h >= nx or cj - h >= ny:
                    continue
                w = 2 * h + 1
                scale = flux[i] / _stamp(buf, buf + wmax * wmax, h, x[i] - ci, y[i] - cj, s[i],
                                         d[i], k[i], &node[0], &weight[0], order)
                for jj in range(w):
                    sy = cj - h + jj
                    if sy < 0 or sy >= ny:
                        continue
                    for ii in range(w):
                        sx = ci - h + ii
                        if 0 <= sx < nx:
                            image[sy, sx] += <float>(scale * buf[jj * w + ii])
                added += 1
    finally:
        free(buf)
    return int(added)


# --- Moffat stars ---------------------------------------------------------------------------

cdef inline double _moffat_pixel(double ui, double vj, double a, double c, double k,
                                 double beta, const double* node, const double* weight,
                                 int order) noexcept nogil:
    """Integral over the pixel centred at offset (ui, vj) of (1 + Q)^-beta (unnormalised)."""
    cdef int p, q
    cdef double u, v, acc = 0.0, row
    for q in range(order):
        v = vj + node[q]
        row = 0.0
        for p in range(order):
            u = ui + node[p]
            row += weight[p] * exp(-beta * log1p(a * u * u + c * v * v + 2.0 * k * u * v))
        acc += weight[q] * row
    return acc


def add_moffat(float[:, ::1] image, const double[::1] x, const double[::1] y,
               const double[::1] flux, const double[::1] s, const double[::1] d,
               const double[::1] k, const double[::1] beta, int order=3,
               double wing_cut=1e-3, double min_level=0.0):
    """Add elliptical Moffat stars, integrated over pixels, into ``image`` in place.

    The surface brightness of a star of total flux F at (x0, y0) is

        I = F (beta - 1) sqrt(det M) / pi * (1 + Q)^-beta,
        Q = S (dx² + dy²) + D (dx² - dy²) + 2 K dx dy,   det M = S² - D² - K²,

    which integrates to F over the plane (beta > 1).  A round star has
    D = K = 0 and S = 1/alpha², FWHM = 2 alpha sqrt(2^(1/beta) - 1).  Pixels are
    integrated with ``order`` x ``order`` Gauss-Legendre nodes where the profile
    is curved (beta (beta + 1) lambda_max / (1 + Q) > 0.5 at the pixel centre,
    lambda_max the largest eigenvalue of M, and brighter than 100 ``min_level``;
    or within 1.5 px of the centre), with 2 x 2 nodes further out, and at the
    pixel centre where the profile is below 10 ``min_level``.  Pixels holding
    > 1e-4 of the flux and brighter than 100 ``min_level`` are within ~1e-3
    of their exact integral; fainter ones within ~``min_level``.  The stamp is the square that holds the
    ellipse beyond which at most ``wing_cut`` of the flux lies, or, if smaller,
    the one beyond which the surface brightness is below ``min_level`` (image units
    per pixel; 0 = no floor); it is at least 4 px and at most 256 px in half
    size.  There is no renormalisation: the light beyond the stamp is left out.

    Parameters
    ----------
    image : float32 array, shape (ny, nx), C-contiguous, modified in place (units of flux).
    x, y : float64 arrays, shape (nstars,): centres, px, 0-based, pixel centres at integers.
    flux : float64 array, shape (nstars,): total flux; non-finite or <= 0 is skipped.
    s, d, k : float64 arrays, shape (nstars,): Moffat shape S, D, K, px⁻².
    beta : float64 array, shape (nstars,): Moffat exponent, > 1.
    order : Gauss-Legendre nodes per pixel side in the core (1-16).

    Returns
    -------
    int : number of stars that put flux into the image.

    Raises ValueError for mismatched lengths, bad ``order``/``wing_cut``, beta <= 1
    or a shape matrix that is not positive definite.
    """
    cdef Py_ssize_t n = x.shape[0], ny = image.shape[0], nx = image.shape[1]
    cdef Py_ssize_t i, h, ci, cj, sx, sy, ii, jj, bad = -1, added = 0
    cdef double a, c, kk, lmin, lmax, mid, rad, det, norm, q0, qf, qc, ui, vj, b, value
    cdef double q_fine, q_coarse
    if not (y.shape[0] == n and flux.shape[0] == n and s.shape[0] == n
            and d.shape[0] == n and k.shape[0] == n and beta.shape[0] == n):
        check(BAD_ARGUMENT, "add_moffat: x, y, flux, s, d, k, beta must have the same length")
    if not 1 <= order <= 16 or not 0 < wing_cut < 1 or min_level < 0:
        check(BAD_ARGUMENT, "add_moffat: "
              "order must be in 1..16, 0 < wing_cut < 1 and min_level >= 0")
    gl_nodes, gl_weights = np.polynomial.legendre.leggauss(order)
    cdef double[::1] node = np.ascontiguousarray(0.5 * gl_nodes)
    cdef double[::1] weight = np.ascontiguousarray(0.5 * gl_weights)
    two_nodes, two_weights = np.polynomial.legendre.leggauss(2)
    cdef double[::1] node2 = np.ascontiguousarray(0.5 * two_nodes)
    cdef double[::1] weight2 = np.ascontiguousarray(0.5 * two_weights)
    with nogil:
        for i in range(n):
            a = s[i] + d[i]
            c = s[i] - d[i]
            if not (beta[i] > 1.0 and s[i] > 0 and a * c - k[i] * k[i] > 0):
                bad = i
                break
    if bad >= 0:
        check(BAD_ARGUMENT, f"add_moffat: star {bad}: "
              f"need beta > 1 and S > sqrt(D^2 + K^2) (an ellipse)")
    with nogil:
        for i in range(n):
            if not (isfinite(flux[i]) and flux[i] > 0 and fabs(x[i]) < 1e9
                    and fabs(y[i]) < 1e9):
                continue
            a = s[i] + d[i]
            c = s[i] - d[i]
            kk = k[i]
            b = beta[i]
            mid = 0.5 * (a + c)
            rad = sqrt(0.25 * (a - c) * (a - c) + kk * kk)
            lmin = mid - rad
            lmax = mid + rad
            det = a * c - kk * kk
            norm = flux[i] * (b - 1.0) * sqrt(det) / M_PI
            q0 = pow(wing_cut, 1.0 / (1.0 - b)) - 1.0
            if min_level > 0:
                qf = pow(norm / min_level, 1.0 / b) - 1.0
                if qf < q0:
                    q0 = qf
            h = <Py_ssize_t>ceil(sqrt(q0 / lmin))
            if h < MIN_HALFSIZE:
                h = MIN_HALFSIZE
            if h > MAX_HALFSIZE:
                h = MAX_HALFSIZE
            ci = <Py_ssize_t>floor(x[i] + 0.5)
            cj = <Py_ssize_t>floor(y[i] + 0.5)
            if ci + h < 0 or cj + h < 0 or ci - h >= nx or cj - h >= ny:
                continue
            # relative curvature ~ beta (beta + 1) lmax / (1 + Q): full quadrature where it
            # is > 0.5, 2 x 2 nodes in the smooth wings, the pixel centre where the wing
            # is fainter than 10 min_level (error < ~0.1 of the pixel, < min_level)
            q_fine = b * (b + 1.0) * lmax / 0.5 - 1.0
            q_coarse = 1e300
            if min_level > 0:
                q_coarse = pow(norm / (10.0 * min_level), 1.0 / b) - 1.0
                # pixels fainter than 100 min_level need no more than 2 x 2 nodes
                q_fine = fmin(q_fine, pow(norm / (100.0 * min_level), 1.0 / b) - 1.0)
            for jj in range(-h, h + 1):
                sy = cj + jj
                if sy < 0 or sy >= ny:
                    continue
                vj = jj - (y[i] - cj)
                for ii in range(-h, h + 1):
                    sx = ci + ii
                    if sx < 0 or sx >= nx:
                        continue
                    ui = ii - (x[i] - ci)
                    qc = a * ui * ui + c * vj * vj + 2.0 * kk * ui * vj
                    if qc < q_fine or (ii * ii + jj * jj) <= 2:
                        value = _moffat_pixel(ui, vj, a, c, kk, b, &node[0], &weight[0], order)
                    elif qc < q_coarse:
                        value = _moffat_pixel(ui, vj, a, c, kk, b, &node2[0], &weight2[0], 2)
                    else:
                        value = exp(-b * log1p(qc))
                    image[sy, sx] += <float>(norm * value)
            added += 1
    return int(added)
