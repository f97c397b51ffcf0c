# cython: language_level=3
"""Resampling kernels: an image onto another pixel grid through a polynomial map.

Arrays in, arrays out; no I/O, no globals, no logging.  Pixel coordinates are
0-based with pixel centres at integers.  Polynomials are dense coefficient
arrays ``c[i, j]`` (float64, shape (N+1, N+1)) of ``xn**i * yn**j`` in
normalised coordinates ``xn = (x - x0) / sx``, ``yn = (y - y0) / sy``; the
``norm`` argument is ``(x0, sx, y0, sy, v0, sv)``, where ``(v0, sv)``
normalises the source row coordinate used by the mixed polynomial.

Non-finite source pixels count as 0.
"""
import numpy as np

from libc.math cimport floor, isfinite, NAN
from libc.stdlib cimport malloc, free
from kernels cimport BAD_ARGUMENT, NO_MEMORY
from trex.kernels import check


cdef inline void _row_coef(const double[:, ::1] c, double yn, double* a) noexcept nogil:
    """a[i] = sum_j c[i, j] yn**j: the polynomial restricted to one row."""
    cdef Py_ssize_t n = c.shape[0], i, j
    cdef double s
    for i in range(n):
        s = 0.0
        for j in range(n - 1, -1, -1):
            s = s * yn + c[i, j]
        a[i] = s


cdef inline double _horner(const double* a, Py_ssize_t n, double xn) noexcept nogil:
    cdef double s = 0.0
    cdef Py_ssize_t i
    for i in range(n - 1, -1, -1):
        s = s * xn + a[i]
    return s


cdef inline void _horner_all(const double* a, Py_ssize_t n, const double* xn, double* out,
                             Py_ssize_t m) noexcept nogil:
    """out[i] = sum_k a[k] xn[i]**k for i < m, by Horner's rule coefficient by
    coefficient (each value rounds as one Horner evaluation; the loops vectorise)."""
    cdef Py_ssize_t i, k
    for i in range(m):
        out[i] = 0.0
    for k in range(n - 1, -1, -1):
        for i in range(m):
            out[i] = out[i] * xn[i] + a[k]


cdef inline double _cum_interp(const double* s, Py_ssize_t stride, int n, double e) noexcept nogil:
    """Cubic interpolation of a cumulative sum at source coordinate ``e``.

    ``s[k * stride]`` for k = 0 .. n + 2 holds the cumulative flux up to the
    pixel edge at coordinate ``k - 1.5`` (one ghost node at each end).  The
    cubic through four edges is the integral of the parabola that keeps the
    fluxes of three neighbouring pixels, so pixel fluxes are reproduced
    exactly and the total is conserved.  Outside the image the flux is 0:
    ``e`` is clamped to the image, where the weights select the end node
    exactly (no branch, so that loops of it vectorise).
    """
    cdef double t = e + 0.5, f, w0, w1, w2, w3
    cdef int k
    t = 0.0 if t < 0.0 else t
    t = <double>n if t > n else t
    k = <int>t
    k = n - 1 if k > n - 1 else k
    f = t - k
    w0 = -f * (f - 1.0) * (f - 2.0) / 6.0
    w1 = (f + 1.0) * (f - 1.0) * (f - 2.0) * 0.5
    w2 = -(f + 1.0) * f * (f - 2.0) * 0.5
    w3 = (f + 1.0) * f * (f - 1.0) / 6.0
    return (w0 * s[k * stride] + w1 * s[(k + 1) * stride]
            + w2 * s[(k + 2) * stride] + w3 * s[(k + 3) * stride])


cdef inline void _cum_interp_all(const double* s, Py_ssize_t step, Py_ssize_t stride, int n,
                                 const double* e, double* out, Py_ssize_t m) noexcept nogil:
    """out[i] = _cum_interp(s + i * step, stride, n, e[i]) for i < m."""
    cdef Py_ssize_t i
    for i in range(m):
        out[i] = _cum_interp(s + i * step, stride, n, e[i])


def resample_flux(const float[:, ::1] image, const double[:, ::1] vcoef,
                  const double[:, ::1] umix, const double[::1] norm,
                  float[:, ::1] out, float fill=NAN):
    """Flux-conserving resampling in two 1-D conservative passes.

    Target pixel (x, y) receives the flux of the source over its footprint:
    pass 1 integrates each source row between the mapped column edges
    ``u = umix(x -+ 0.5, v)``, pass 2 integrates the result along the column
    between the mapped row edges ``v = vcoef(x, y -+ 0.5)``.  Both integrals use
    a piecewise-parabolic surface that reproduces every pixel's flux, and
    shared edges telescope, so the total flux is conserved exactly.

    Parameters
    ----------
    image : float32, shape (ny_src, nx_src), C-contiguous, flux per pixel.
    vcoef : float64, (N+1, N+1): source row v as a polynomial of target (x, y).
    umix : float64, (M+1, M+1): source column u as a polynomial of (x, v).
    norm : float64, (6,): x0, sx, y0, sy, v0, sv (see module docstring).
    out : float32, shape (ny, nx), written: flux per target pixel; ``fill``
        where the target pixel centre maps outside the source.

    Scratch memory: 8 * (ny_src + 3) * nx bytes (134 MB for 4096^2).
    """
    cdef Py_ssize_t nys = image.shape[0], nxs = image.shape[1]
    cdef Py_ssize_t ny = out.shape[0], nx = out.shape[1]
    cdef Py_ssize_t nv = vcoef.shape[0], nu = umix.shape[0]
    cdef Py_ssize_t i, j, k, r
    cdef double x0 = norm[0], isx = 1.0 / norm[1], y0 = norm[2], isy = 1.0 / norm[3]
    cdef double v0 = norm[4], isv = 1.0 / norm[5]
    cdef double acc, val, vc, uc
    if norm.shape[0] != 6:
        check(BAD_ARGUMENT, "resample_flux: norm must hold x0, sx, y0, sy, v0, sv")
    if nys >= 2 ** 30 or nxs >= 2 ** 30:
        check(BAD_ARGUMENT, "resample_flux: the source image is too large")
    cdef double* cs = <double*>malloc((nys + 3) * nx * sizeof(double))
    cdef double* row = <double*>malloc((nxs + 3) * sizeof(double))
    # per target column (nx + 1 column edges): normalised x of the edges and of the
    # centres, the mapped coordinates of the last and the current edge, interpolated sums
    cdef double* work = <double*>malloc(6 * (nx + 1) * sizeof(double))
    cdef double* a = <double*>malloc((nv + nu) * sizeof(double))
    cdef Py_ssize_t* xlo = <Py_ssize_t*>malloc(2 * nys * sizeof(Py_ssize_t))
    if cs == NULL or row == NULL or work == NULL or a == NULL or xlo == NULL:
        free(cs); free(row); free(work); free(a); free(xlo)
        check(NO_MEMORY, "resample_flux: no memory for the work buffers")
    cdef Py_ssize_t* xhi = xlo + nys
    cdef double* xedge = work
    cdef double* xmid = work + (nx + 1)
    cdef double* prev = work + 2 * (nx + 1)
    cdef double* cur = work + 3 * (nx + 1)
    cdef double* edge = work + 4 * (nx + 1)
    cdef double* val_row = work + 5 * (nx + 1)
    cdef double* swap
    try:
        with nogil:
            for i in range(nx + 1):
                xedge[i] = (i - 0.5 - x0) * isx
                xmid[i] = (i - x0) * isx
            # pass 1: cs[j + 1, i] = flux of source rows < j in target column i
            # (row 0 and row nys + 2 are ghost nodes for the interpolation)
            for i in range(nx):
                cs[nx + i] = 0.0
            for j in range(nys):
                acc = 0.0
                for k in range(nxs):
                    val = image[j, k]
                    if isfinite(val):
                        acc = acc + val
                    row[k + 2] = acc
                row[1] = 0.0
                row[0] = -(row[2] - row[1])
                row[nxs + 2] = row[nxs + 1] + (row[nxs + 1] - row[nxs])
                _row_coef(umix, (j - v0) * isv, a)
                _horner_all(a, nu, xedge, prev, nx + 1)
                _cum_interp_all(row, 0, 1, <int>nxs, prev, edge, nx + 1)
                xlo[j] = nx
                xhi[j] = -1
                for i in range(nx):
                    cs[(j + 2) * nx + i] = cs[(j + 1) * nx + i] + edge[i + 1] - edge[i]
                    uc = 0.5 * (prev[i] + prev[i + 1])
                    if uc >= -0.5 and uc <= nxs - 0.5:
                        if xlo[j] > i:
                            xlo[j] = i
                        xhi[j] = i
            for i in range(nx):
                cs[i] = -(cs[2 * nx + i] - cs[nx + i])
                cs[(nys + 2) * nx + i] = 2.0 * cs[(nys + 1) * nx + i] - cs[nys * nx + i]
            # pass 2: integrate each target column between the mapped row edges;
            # the upper edge of one row is the lower edge of the next
            _row_coef(vcoef, (-0.5 - y0) * isy, a)
            _horner_all(a, nv, xmid, prev, nx)
            _cum_interp_all(cs, 1, nx, <int>nys, prev, edge, nx)
            for r in range(ny):
                _row_coef(vcoef, (r + 0.5 - y0) * isy, a)
                _horner_all(a, nv, xmid, cur, nx)
                _cum_interp_all(cs, 1, nx, <int>nys, cur, val_row, nx)
                for i in range(nx):
                    vc = 0.5 * (prev[i] + cur[i])
                    k = <Py_ssize_t>floor(vc + 0.5)
                    if vc < -0.5 or vc > nys - 0.5 or k < 0 or k >= nys or i < xlo[k] or i > xhi[k]:
                        out[r, i] = fill
                    else:
                        out[r, i] = <float>(val_row[i] - edge[i])
                swap = prev
                prev = cur
                cur = swap
                swap = edge
                edge = val_row
                val_row = swap
    finally:
        free(cs); free(row); free(work); free(a); free(xlo)


cdef inline double _keys(double t) noexcept nogil:
    """Keys (a = -0.5) cubic convolution weight at distance t."""
    t = -t if t < 0 else t
    if t < 1.0:
        return (1.5 * t - 2.5) * t * t + 1.0
    if t < 2.0:
        return ((-0.5 * t + 2.5) * t - 4.0) * t + 2.0
    return 0.0


cdef inline double _px(const float[:, ::1] im, Py_ssize_t j, Py_ssize_t i) noexcept nogil:
    cdef double v = im[j, i]
    return v if isfinite(v) else 0.0


cdef inline double _interp(const float[:, ::1] im, double u, double v, bint cubic) noexcept nogil:
    cdef Py_ssize_t ny = im.shape[0], nx = im.shape[1], iu, iv, p, q, jj, ii
    cdef double fu, fv, s
    iu = <Py_ssize_t>floor(u)
    iv = <Py_ssize_t>floor(v)
    fu = u - iu
    fv = v - iv
    if not cubic:
        if iu >= nx - 1:
            iu = nx - 2
            fu = u - iu
        if iv >= ny - 1:
            iv = ny - 2
            fv = v - iv
        return ((1.0 - fv) * ((1.0 - fu) * _px(im, iv, iu) + fu * _px(im, iv, iu + 1))
                + fv * ((1.0 - fu) * _px(im, iv + 1, iu) + fu * _px(im, iv + 1, iu + 1)))
    cdef double wu[4]
    cdef double wr[4]
    for p in range(4):
        wu[p] = _keys(p - 1 - fu)
        wr[p] = _keys(p - 1 - fv)
    s = 0.0
    if iu >= 1 and iv >= 1 and iu < nx - 2 and iv < ny - 2:  # interior: no clamping
        for q in range(4):
            s += wr[q] * (wu[0] * _px(im, iv + q - 1, iu - 1) + wu[1] * _px(im, iv + q - 1, iu)
                          + wu[2] * _px(im, iv + q - 1, iu + 1) + wu[3] * _px(im, iv + q - 1, iu + 2))
        return s
    for q in range(4):
        jj = min(max(iv + q - 1, 0), ny - 1)
        for p in range(4):
            ii = min(max(iu + p - 1, 0), nx - 1)
            s += wr[q] * wu[p] * _px(im, jj, ii)
    return s


def resample_interp(const float[:, ::1] image, const double[:, ::1] ucoef,
                    const double[:, ::1] vcoef, const double[::1] norm,
                    float[:, ::1] out, bint cubic=False, float fill=NAN):
    """Bilinear or bicubic (Keys, a = -0.5) resampling times the pixel-area ratio.

    The source is interpolated at ``(u, v) = (ucoef(x, y), vcoef(x, y))`` for
    each target pixel centre and multiplied by the local Jacobian determinant
    of the map, so that fluxes per pixel stay fluxes per pixel.

    Parameters
    ----------
    image : float32, shape (ny_src, nx_src), C-contiguous.
    ucoef, vcoef : float64, (N+1, N+1) each: source column / row of target (x, y).
    norm : float64, (6,): x0, sx, y0, sy (v0, sv unused).
    out : float32, shape (ny, nx), written; ``fill`` outside the source.
    cubic : Keys bicubic when true, bilinear otherwise.
    """
    cdef Py_ssize_t nys = image.shape[0], nxs = image.shape[1]
    cdef Py_ssize_t ny = out.shape[0], nx = out.shape[1], n = ucoef.shape[0]
    cdef Py_ssize_t i, j, k
    cdef double x0 = norm[0], isx = 1.0 / norm[1], y0 = norm[2], isy = 1.0 / norm[3]
    cdef double xn, yn, u, v, ux, vx, uy, vy, jac
    if vcoef.shape[0] != n or norm.shape[0] != 6:
        check(BAD_ARGUMENT, "resample_interp: "
              "ucoef and vcoef must have the same shape; norm must have 6 values")
    if nys < 2 or nxs < 2:
        check(BAD_ARGUMENT, "resample_interp: the source image must be at least 2 x 2")
    cdef double* a = <double*>malloc(4 * n * sizeof(double))
    if a == NULL:
        check(NO_MEMORY, "resample_interp: no memory for the work buffers")
    cdef double* b = a + n
    cdef double* ad = a + 2 * n
    cdef double* bd = a + 3 * n
    try:
        with nogil:
            for j in range(ny):
                yn = (j - y0) * isy
                _row_coef(ucoef, yn, a)
                _row_coef(vcoef, yn, b)
                for k in range(n):  # d/dyn of the row coefficients
                    ad[k] = 0.0
                    bd[k] = 0.0
                    for i in range(n - 1, 0, -1):
                        ad[k] = ad[k] * yn + i * ucoef[k, i]
                        bd[k] = bd[k] * yn + i * vcoef[k, i]
                for i in range(nx):
                    xn = (i - x0) * isx
                    u = _horner(a, n, xn)
                    v = _horner(b, n, xn)
                    if u < -0.5 or v < -0.5 or u > nxs - 0.5 or v > nys - 0.5:
                        out[j, i] = fill
                        continue
                    ux = 0.0
                    vx = 0.0
                    for k in range(n - 1, 0, -1):
                        ux = ux * xn + k * a[k]
                        vx = vx * xn + k * b[k]
                    uy = _horner(ad, n, xn)
                    vy = _horner(bd, n, xn)
                    jac = (ux * vy - uy * vx) * isx * isy
                    out[j, i] = <float>(jac * _interp(image, min(max(u, 0.0), nxs - 1.0),
                                                      min(max(v, 0.0), nys - 1.0), cubic))
    finally:
        free(a)
