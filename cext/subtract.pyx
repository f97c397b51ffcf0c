# cython: language_level=3
"""Image-subtraction kernels: per-stamp normal equations and the spatially varying convolution.

Arrays in, arrays out; no I/O, no globals, no logging.  Polynomials are dense
coefficient arrays ``c[i, j]`` of ``xn**i * yn**j`` in normalised coordinates
``xn = (x - x0) / sx``, ``yn = (y - y0) / sy``; ``norm = (x0, sx, y0, sy)``.
"""
from libc.math cimport fmax, isfinite, sqrt
from libc.stdlib cimport malloc, free
from scipy.linalg.cython_blas cimport ddot, dgemv, dsyrk
from kernels cimport BAD_ARGUMENT, NO_MEMORY
from trex.kernels import check


def stamp_normals(const float[:, ::1] ref, const float[:, ::1] image,
                  const unsigned char[:, ::1] bad, const long[:, ::1] centres, Py_ssize_t half,
                  const long[:, ::1] taps, const double[::1] values, const long[::1] first,
                  bint background, const double[:, ::1] coef, double gain, double rdnoise,
                  double[:, :, ::1] cross, double[:, ::1] rhs, double[::1] dwd,
                  double[::1] npix):
    """Weighted normal-equation blocks of the kernel basis on each stamp.

    On stamp s (the box of half-size ``half`` around ``centres[s] = (x, y)``)
    basis vector b at pixel (x, y) is ``V[p, b] = sum_t values[t] *
    ref[y - taps[t, 0], x - taps[t, 1]]`` over its taps ``first[b] <= t <
    first[b + 1]`` (the non-zero pixels (n, m) of its kernel image), plus a
    constant column of ones when ``background``.  Pixel weights: 0 on ``bad``
    pixels and non-finite image pixels, else ``1 / (max(model, 0) / gain +
    (rdnoise / gain)**2)`` with ``model = V[p] . coef[s]`` (``coef`` with no
    rows: the reference pixel itself, basis 0 being the identity).
    Non-finite reference pixels count as 0.  Then, with BLAS:
    ``cross[s] = V^T W V``, ``rhs[s] = V^T W d``, ``dwd[s] = d^T W d`` and
    ``npix[s]`` = the pixels with w > 0.

    Parameters
    ----------
    ref, image : float32, (ny, nx): reference and image on one grid, ADU.
    bad : uint8, (ny, nx): non-zero on pixels to leave out.
    centres : int64, (ns, 2): stamp centres x, y, px, at least ``half`` + the
        largest tap offset inside the frame (else ValueError).
    taps : int64, (ntap, 2): (n, m) offsets; values : float64, (ntap,).
    first : int64, (nk + 1,): the taps of kernel basis k are first[k]:first[k + 1].
    coef : float64, (ns, nb) or (0, 0): model coefficients per stamp.
    gain, rdnoise : e-/ADU and e-.
    cross : float64, (ns, nb, nb); rhs : (ns, nb); dwd, npix : (ns,), written;
        nb = nk + 1 with ``background``, else nk.
    """
    cdef Py_ssize_t ny = ref.shape[0], nx = ref.shape[1], ns = centres.shape[0]
    cdef Py_ssize_t nk = first.shape[0] - 1, nb = nk + (1 if background else 0)
    cdef Py_ssize_t side = 2 * half + 1, npx = side * side
    cdef Py_ssize_t s, j, i, p, b, t, x, y, reach = 0
    cdef double v, w, model, rn2 = (rdnoise / gain) ** 2, one = 1.0, zero = 0.0
    cdef float r
    cdef double* a
    cdef double* d
    cdef int n_i, k_i, inc = 1
    cdef char uplo = b'U'
    cdef char trans = b'N'
    cdef bint with_coef = coef.shape[0] > 0
    if image.shape[0] != ny or image.shape[1] != nx or bad.shape[0] != ny or bad.shape[1] != nx:
        check(BAD_ARGUMENT, "stamp_normals: ref, image and bad must have one shape")
    if (nk < 1 or cross.shape[0] != ns or cross.shape[1] != nb or cross.shape[2] != nb
            or rhs.shape[0] != ns or rhs.shape[1] != nb or dwd.shape[0] != ns
            or npix.shape[0] != ns or centres.shape[1] != 2 or taps.shape[1] != 2
            or first[0] != 0 or first[nk] != taps.shape[0] or values.shape[0] != taps.shape[0]):
        check(BAD_ARGUMENT, "stamp_normals: centres, taps, first, cross, rhs, dwd and npix "
              "disagree in shape")
    if with_coef and (coef.shape[0] != ns or coef.shape[1] != nb):
        check(BAD_ARGUMENT, "stamp_normals: coef must be (nstamps, nbasis) or empty")
    if not gain > 0.0 or half < 0:
        check(BAD_ARGUMENT, "stamp_normals: gain must be positive and half non-negative")
    for t in range(taps.shape[0]):
        reach = max(reach, abs(taps[t, 0]), abs(taps[t, 1]))
    for s in range(ns):
        x, y = centres[s, 0], centres[s, 1]
        if x < half + reach or y < half + reach or x >= nx - half - reach or y >= ny - half - reach:
            check(BAD_ARGUMENT, "stamp_normals: a stamp reaches beyond the frame")
    a = <double*>malloc(npx * (nb + 1) * sizeof(double))
    if a == NULL:
        check(NO_MEMORY, "stamp_normals: no memory for the work buffer")
    d = a + npx * nb
    n_i, k_i = <int>nb, <int>npx
    try:
        with nogil:
            for s in range(ns):
                npix[s] = 0.0
                p = 0
                for j in range(-half, half + 1):
                    y = centres[s, 1] + j
                    for i in range(-half, half + 1):
                        x = centres[s, 0] + i
                        for b in range(nk):
                            v = 0.0
                            for t in range(first[b], first[b + 1]):
                                r = ref[y - taps[t, 0], x - taps[t, 1]]
                                if isfinite(r):
                                    v = v + values[t] * r
                            a[p * nb + b] = v
                        if background:
                            a[p * nb + nk] = 1.0
                        if with_coef:
                            model = 0.0
                            for b in range(nb):
                                model = model + a[p * nb + b] * coef[s, b]
                        else:
                            model = a[p * nb]
                        w = 0.0
                        if bad[y, x] == 0 and isfinite(image[y, x]):
                            w = sqrt(1.0 / (fmax(model, 0.0) / gain + rn2 + 1e-12))
                            npix[s] += 1.0
                        for b in range(nb):
                            a[p * nb + b] *= w
                        d[p] = w * image[y, x] if w > 0.0 else 0.0
                        p += 1
                # a is column-major (nb x npx): cross = a a^T, rhs = a d
                dsyrk(&uplo, &trans, &n_i, &k_i, &one, a, &n_i, &zero, &cross[s, 0, 0], &n_i)
                dgemv(&trans, &n_i, &k_i, &one, a, &n_i, d, &inc, &zero, &rhs[s, 0], &inc)
                dwd[s] = ddot(&k_i, d, &inc, d, &inc)
                for b in range(nb):  # the column-major upper triangle is the C lower one
                    for t in range(b + 1, nb):
                        cross[s, b, t] = cross[s, t, b]
    finally:
        free(a)


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
