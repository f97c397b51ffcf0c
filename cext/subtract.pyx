# cython: language_level=3
"""Image-subtraction kernels: normal equations and the spatially varying convolution.

Arrays in, arrays out; no I/O, no globals, no logging.  Polynomials are dense
coefficient arrays ``c[i, j]`` of ``xn**i * yn**j`` in normalised coordinates
``xn = (x - x0) / sx``, ``yn = (y - y0) / sy``; ``norm = (x0, sx, y0, sy)``.
"""
from libc.stdlib cimport malloc, free
from kernels cimport BAD_ARGUMENT, NO_MEMORY
from trex.kernels import check


def stamp_cross(const double[:, :, ::1] vt, const double[:, ::1] data,
                const double[:, ::1] weight, double[:, :, ::1] cross, double[:, ::1] rhs):
    """Weighted cross-products of the basis vectors on each stamp.

    ``cross[s, b, c] = sum_p w[s, p] vt[s, p, b] vt[s, p, c]`` and
    ``rhs[s, b] = sum_p w[s, p] vt[s, p, b] data[s, p]``.

    Parameters
    ----------
    vt : float64, (nstamp, npix, nbasis): basis vectors, pixel-major.
    data, weight : float64, (nstamp, npix): image pixels and 1 / variance.
    cross : float64, (nstamp, nbasis, nbasis), written.
    rhs : float64, (nstamp, nbasis), written.
    """
    cdef Py_ssize_t ns = vt.shape[0], npix = vt.shape[1], nb = vt.shape[2]
    cdef Py_ssize_t s, p, b, c
    cdef double wp, dp, t
    if (data.shape[0] != ns or data.shape[1] != npix or weight.shape[0] != ns
            or weight.shape[1] != npix or cross.shape[0] != ns or cross.shape[1] != nb
            or cross.shape[2] != nb or rhs.shape[0] != ns or rhs.shape[1] != nb):
        check(BAD_ARGUMENT, "stamp_cross: vt, data, weight, cross and rhs disagree in shape")
    with nogil:
        for s in range(ns):
            for b in range(nb):
                rhs[s, b] = 0.0
                for c in range(nb):
                    cross[s, b, c] = 0.0
            for p in range(npix):
                wp = weight[s, p]
                if wp == 0.0:
                    continue
                dp = wp * data[s, p]
                for b in range(nb):
                    t = wp * vt[s, p, b]
                    rhs[s, b] += dp * vt[s, p, b]
                    for c in range(b, nb):  # upper triangle, contiguous in c
                        cross[s, b, c] += t * vt[s, p, c]
            for b in range(nb):
                for c in range(b + 1, nb):
                    cross[s, c, b] = cross[s, b, c]


def normal_equations(const double[:, :, ::1] cross, const double[:, ::1] rhs_stamp,
                     const double[:, ::1] poly, const long[::1] nterm,
                     double[:, ::1] matrix, double[::1] rhs):
    """Assemble the normal equations of a spatially varying linear model.

    Within a stamp the polynomial factors are taken constant (they vary by
    ~1 % over a stamp), so the full matrix is a sum over stamps of the
    per-stamp basis cross-products times products of polynomial terms:
    ``matrix[(b, p), (c, q)] = sum_s poly[s, p] poly[s, q] cross[s, b, c]``.

    Parameters
    ----------
    cross : float64, (nstamp, nbasis, nbasis): weighted basis cross-products.
    rhs_stamp : float64, (nstamp, nbasis): weighted basis-data products.
    poly : float64, (nstamp, nterms): polynomial terms at each stamp centre.
    nterm : int64, (nbasis,): polynomial terms used by each basis (<= nterms).
    matrix : float64, (nunk, nunk), written; nunk = sum(nterm).
    rhs : float64, (nunk,), written.
    """
    cdef Py_ssize_t ns = cross.shape[0], nb = cross.shape[1], npoly = poly.shape[1]
    cdef Py_ssize_t s, b, c, p, q, nunk = rhs.shape[0], ntb, ntc
    cdef double qbc, pp, acc
    cdef double* block
    if rhs_stamp.shape[0] != ns or poly.shape[0] != ns or nterm.shape[0] != nb:
        check(BAD_ARGUMENT, "normal_equations: cross, rhs_stamp, poly and nterm disagree in size")
    cdef Py_ssize_t* start = <Py_ssize_t*>malloc((nb + 1) * sizeof(Py_ssize_t))
    if start == NULL:
        check(NO_MEMORY, "normal_equations: no memory for the work buffers")
    start[0] = 0
    for b in range(nb):
        if nterm[b] > npoly or nterm[b] < 0:
            free(start)
            check(BAD_ARGUMENT, "normal_equations: nterm exceeds the polynomial terms given")
        start[b + 1] = start[b] + nterm[b]
    if start[nb] != nunk or matrix.shape[0] != nunk or matrix.shape[1] != nunk:
        free(start)
        check(BAD_ARGUMENT, "normal_equations: matrix and rhs must have sum(nterm) rows")
    block = <double*>malloc(npoly * npoly * sizeof(double))
    if block == NULL:
        free(start)
        check(NO_MEMORY, "normal_equations: no memory for the work buffers")
    try:
        with nogil:
            for b in range(nb):
                ntb = nterm[b]
                for p in range(ntb):
                    acc = 0.0
                    for s in range(ns):
                        acc = acc + poly[s, p] * rhs_stamp[s, b]
                    rhs[start[b] + p] = acc
                # one (b, c) block at a time, accumulated over stamps in cache
                for c in range(b, nb):
                    ntc = nterm[c]
                    for p in range(ntb * ntc):
                        block[p] = 0.0
                    for s in range(ns):
                        qbc = cross[s, b, c]
                        for p in range(ntb):
                            pp = poly[s, p] * qbc
                            for q in range(ntc):
                                block[p * ntc + q] += pp * poly[s, q]
                    for p in range(ntb):
                        for q in range(ntc):
                            matrix[start[b] + p, start[c] + q] = block[p * ntc + q]
                            matrix[start[c] + q, start[b] + p] = block[p * ntc + q]
    finally:
        free(start)
        free(block)


cdef inline void _row_poly(const double* c, Py_ssize_t n, double yn, float* a) noexcept nogil:
    """a[i] = sum_j c[i * n + j] yn**j for a dense (n, n) polynomial."""
    cdef Py_ssize_t i, j
    cdef double s
    for i in range(n):
        s = 0.0
        for j in range(n - 1, -1, -1):
            s = s * yn + c[i * n + j]
        a[i] = <float>s


cdef inline void _poly_row(const float* a, Py_ssize_t n, const float* xn,
                           float* out, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """out[x] = sum_i a[i] xn[x]**i for x in [lo, hi) (Horner, vectorisable)."""
    cdef Py_ssize_t x, i
    cdef float a0, a1, a2, a3, a4
    if n <= 5:
        a0 = a[0]
        a1 = a[1] if n > 1 else 0.0
        a2 = a[2] if n > 2 else 0.0
        a3 = a[3] if n > 3 else 0.0
        a4 = a[4] if n > 4 else 0.0
        for x in range(lo, hi):
            out[x] = a0 + xn[x] * (a1 + xn[x] * (a2 + xn[x] * (a3 + xn[x] * a4)))
        return
    for x in range(lo, hi):
        out[x] = a[n - 1]
    for i in range(n - 2, -1, -1):
        for x in range(lo, hi):
            out[x] = out[x] * xn[x] + a[i]


def convolve_varying(const float[:, ::1] ref, const double[:, :, :, ::1] kcoef,
                     const double[:, ::1] bcoef, const double[::1] norm,
                     float[:, ::1] out):
    """Convolve an image with a spatially varying kernel and add a background.

    ``out[y, x] = sum_{n,m} K(x, y)[n, m] * ref[y - n, x - m] + B(x, y)``,
    the kernel weight at offset (m, n) being the polynomial ``kcoef[H + n,
    H + m]`` evaluated exactly at every pixel.  Pixels within H of the border
    are not written.

    Parameters
    ----------
    ref : float32, (ny, nx), C-contiguous: the image to convolve (reference).
    kcoef : float64, (2H+1, 2H+1, N+1, N+1): kernel polynomials per offset.
    bcoef : float64, (N+1, N+1): background polynomial.
    norm : float64, (4,): x0, sx, y0, sy.
    out : float32, (ny, nx), written for H <= y < ny - H, H <= x < nx - H.
    """
    cdef Py_ssize_t ny = ref.shape[0], nx = ref.shape[1]
    cdef Py_ssize_t size = kcoef.shape[0], h = (kcoef.shape[0] - 1) // 2
    cdef Py_ssize_t n = kcoef.shape[2], nn, m, x, y, i, noff = 0, k
    cdef double x0 = norm[0], isx = 1.0 / norm[1], y0 = norm[2], isy = 1.0 / norm[3], yn
    cdef const float* rrow
    cdef float a0, a1, a2, a3, a4
    if kcoef.shape[1] != size or size % 2 != 1 or kcoef.shape[3] != n:
        check(BAD_ARGUMENT, "convolve_varying: kcoef must have shape (2H+1, 2H+1, N+1, N+1)")
    if bcoef.shape[0] != n or bcoef.shape[1] != n or norm.shape[0] != 4:
        check(BAD_ARGUMENT, "convolve_varying: "
              "bcoef must be (N+1, N+1) and norm must hold x0, sx, y0, sy")
    if out.shape[0] != ny or out.shape[1] != nx or ny <= 2 * h or nx <= 2 * h:
        check(BAD_ARGUMENT, "convolve_varying: "
              "out must have the shape of ref, larger than the kernel")
    cdef float* xn = <float*>malloc((3 * nx + n) * sizeof(float))
    cdef Py_ssize_t* active = <Py_ssize_t*>malloc(size * size * sizeof(Py_ssize_t))
    if xn == NULL or active == NULL:
        free(xn); free(active)
        check(NO_MEMORY, "convolve_varying: no memory for the work buffers")
    cdef float* acc = xn + nx
    cdef float* coef = xn + 2 * nx
    cdef float* a = xn + 3 * nx
    for k in range(size * size):  # offsets whose polynomial is not identically 0
        for i in range(n * n):
            if kcoef[k // size, k % size, i // n, i % n] != 0.0:
                active[noff] = k
                noff += 1
                break
    try:
        with nogil:
            for x in range(nx):
                xn[x] = <float>((x - x0) * isx)
            for y in range(h, ny - h):
                yn = (y - y0) * isy
                _row_poly(&bcoef[0, 0], n, yn, a)
                _poly_row(a, n, xn, acc, h, nx - h)
                for k in range(noff):
                    nn = active[k] // size - h
                    m = active[k] % size - h
                    _row_poly(&kcoef[nn + h, m + h, 0, 0], n, yn, a)
                    rrow = &ref[y - nn, 0] - m
                    if n <= 5:  # fused Horner + multiply-add, one pass over the row
                        a0 = a[0]
                        a1 = a[1] if n > 1 else 0.0
                        a2 = a[2] if n > 2 else 0.0
                        a3 = a[3] if n > 3 else 0.0
                        a4 = a[4] if n > 4 else 0.0
                        for x in range(h, nx - h):
                            acc[x] = acc[x] + (a0 + xn[x] * (a1 + xn[x] * (a2 + xn[x] * (
                                a3 + xn[x] * a4)))) * rrow[x]
                        continue
                    _poly_row(a, n, xn, coef, h, nx - h)
                    for x in range(h, nx - h):
                        acc[x] = acc[x] + coef[x] * rrow[x]
                for x in range(h, nx - h):
                    out[y, x] = acc[x]
    finally:
        free(xn); free(active)
