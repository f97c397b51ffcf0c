# cython: language_level=3
"""Background kernels: clipped-mode statistics per mesh, natural cubic splines.

No I/O, no globals, no logging.  ``mesh_stats`` estimates one sky value and
one RMS per mesh cell (clipping passes are branch-free; the median comes from
a 256-bin histogram refined by quickselect inside one bin, exact); ``spline_expand`` interpolates a row of knot values to
every integer position, so that a mesh grid is expanded to full resolution in
two separable passes.
"""
import numpy as np

from libc.math cimport sqrt, isfinite, NAN, INFINITY
from libc.stdlib cimport malloc, free
from kernels cimport BAD_ARGUMENT, NO_MEMORY, select_kth
from trex.kernels import check


cdef float _hist_select(float* a, Py_ssize_t n, Py_ssize_t k, float lo, float hi) noexcept nogil:
    """k-th smallest of a[:n], all in [lo, hi]: a 256-bin histogram finds the
    bin holding it, quickselect finishes inside that bin (reorders a)."""
    cdef Py_ssize_t counts[256]
    cdef Py_ssize_t i, b, m = 0, below = 0
    cdef double scale
    if not (isfinite(lo) and isfinite(hi) and hi > lo) or n < 512:
        return select_kth(a, n, k)
    scale = 256.0 / (<double>hi - lo)
    for b in range(256):
        counts[b] = 0
    for i in range(n):
        b = <Py_ssize_t>((a[i] - lo) * scale)
        counts[min(max(b, 0), 255)] += 1
    b = 0
    while below + counts[b] <= k:
        below += counts[b]
        b += 1
    for i in range(n):
        if min(max(<Py_ssize_t>((a[i] - lo) * scale), 0), 255) == b:
            a[m] = a[i]
            m += 1
    return select_kth(a, m, k - below)


cdef Py_ssize_t _window_sums(const float* a, Py_ssize_t n, float lo, float hi, double* s,
                             double* ss) noexcept nogil:
    """Sum and sum of squares of the values of a[:n] in [lo, hi]; returns their number.
    Four interleaved partial sums added in a fixed order: branch-free, vectorisable."""
    cdef double p1[4]
    cdef double p2[4]
    cdef float v
    cdef Py_ssize_t i, q, m = 0, whole = n - n % 4
    for q in range(4):
        p1[q] = 0.0
        p2[q] = 0.0
    for i in range(0, whole, 4):
        for q in range(4):
            v = a[i + q] if lo <= a[i + q] <= hi else 0.0
            p1[q] += v
            p2[q] += <double>v * v
            m += lo <= a[i + q] <= hi
    for i in range(whole, n):
        v = a[i] if lo <= a[i] <= hi else 0.0
        p1[0] += v
        p2[0] += <double>v * v
        m += lo <= a[i] <= hi
    s[0] = (p1[0] + p1[1]) + (p1[2] + p1[3])
    ss[0] = (p2[0] + p2[1]) + (p2[2] + p2[3])
    return m


cdef Py_ssize_t _clipped_mode(float* a, Py_ssize_t n, double nsigma, int maxiter,
                              double* mode, double* rms) noexcept nogil:
    """Clip a[:n] around its mean at +-nsigma std until stable; mode and std.

    The mode is 2.5 median - 1.5 mean (SExtractor) unless the clipped
    distribution is too skewed ((mean - median) / std > 0.3), then the median.
    Reorders a; returns the number of surviving values.
    """
    cdef Py_ssize_t i, m = n, last = n
    cdef double s = 0.0, ss = 0.0, mean, std, med
    cdef float lo = -INFINITY, hi = INFINITY
    cdef int it
    _window_sums(a, n, lo, hi, &s, &ss)
    mean = s / n
    std = sqrt(max(ss / n - mean * mean, 0.0))
    for it in range(maxiter):
        if std == 0.0:
            break
        lo = <float>(mean - nsigma * std)
        hi = <float>(mean + nsigma * std)
        m = _window_sums(a, n, lo, hi, &s, &ss)
        if m < 2:
            break
        mean = s / m
        std = sqrt(max(ss / m - mean * mean, 0.0))
        if m == last:
            break
        last = m
    m = 0
    for i in range(n):
        if lo <= a[i] <= hi:
            a[m] = a[i]
            m += 1
    if m == 0:
        m = n
    med = _hist_select(a, m, m // 2, lo, hi)
    if std > 0.0 and (mean - med) / std > 0.3:
        mode[0] = med
    else:
        mode[0] = 2.5 * med - 1.5 * mean
    rms[0] = std
    return m


def mesh_stats(const float[:, ::1] image, const unsigned char[:, ::1] mask,
               const Py_ssize_t[::1] yedges, const Py_ssize_t[::1] xedges,
               double[:, ::1] sky, double[:, ::1] rms, double nsigma=3.0,
               int maxiter=5, double minfrac=0.5):
    """Clipped-mode sky and RMS of every mesh cell.

    Parameters
    ----------
    image : float32 (ny, nx), ADU.  Non-finite pixels are ignored.
    mask : uint8 (ny, nx) or None; non-zero pixels are ignored.
    yedges, xedges : intp (nmy + 1,), (nmx + 1,): cell boundaries, increasing,
        first 0 and last ny (nx).
    sky, rms : float64 (nmy, nmx), written, ADU.  NaN where fewer than
        ``minfrac`` of the cell's pixels are usable.
    nsigma, maxiter : clipping threshold (std) and iteration limit.
    """
    cdef Py_ssize_t nmy = yedges.shape[0] - 1, nmx = xedges.shape[0] - 1
    cdef Py_ssize_t my, mx, i, j, n, maxcell = 0
    cdef bint has_mask = mask is not None
    cdef double mode, sd
    cdef float v
    if sky.shape[0] != nmy or sky.shape[1] != nmx or rms.shape[0] != nmy or rms.shape[1] != nmx:
        check(BAD_ARGUMENT, "mesh_stats: "
              "sky and rms must have shape (len(yedges) - 1, len(xedges) - 1)")
    if has_mask and (mask.shape[0] != image.shape[0] or mask.shape[1] != image.shape[1]):
        check(BAD_ARGUMENT, "mesh_stats: mask must have the shape of image")
    if yedges[0] != 0 or xedges[0] != 0 or yedges[nmy] != image.shape[0] \
            or xedges[nmx] != image.shape[1]:
        check(BAD_ARGUMENT, "mesh_stats: edges must span the image")
    for my in range(nmy):
        for mx in range(nmx):
            maxcell = max(maxcell, (yedges[my + 1] - yedges[my]) * (xedges[mx + 1] - xedges[mx]))
    cdef float* buf = <float*>malloc(max(maxcell, 1) * sizeof(float))
    if buf == NULL:
        check(NO_MEMORY, "mesh_stats: no memory for the work buffers")
    try:
        with nogil:
            for my in range(nmy):
                for mx in range(nmx):
                    n = 0
                    for j in range(yedges[my], yedges[my + 1]):  # branch-free gather
                        if has_mask:
                            for i in range(xedges[mx], xedges[mx + 1]):
                                v = image[j, i]
                                buf[n] = v
                                n += (isfinite(v) != 0) & (mask[j, i] == 0)
                        else:
                            for i in range(xedges[mx], xedges[mx + 1]):
                                v = image[j, i]
                                buf[n] = v
                                n += isfinite(v) != 0
                    if n < 3 or n < minfrac * (yedges[my + 1] - yedges[my]) \
                            * (xedges[mx + 1] - xedges[mx]):
                        sky[my, mx] = NAN
                        rms[my, mx] = NAN
                        continue
                    _clipped_mode(buf, n, nsigma, maxiter, &mode, &sd)
                    sky[my, mx] = mode
                    rms[my, mx] = sd
    finally:
        free(buf)


def spline_expand(const double[:, ::1] values, const double[::1] knots, float[:, ::1] out):
    """Natural cubic spline through each row of ``values``, sampled at 0..npts-1.

    Parameters
    ----------
    values : float64 (nrows, nknots), the knot values of each row.
    knots : float64 (nknots,), strictly increasing positions of the knots.
    out : float32 (nrows, npts), written: out[r, p] = spline_r(p).  Beyond the
        end knots the spline continues linearly (its end slope).

    Every sample is w0 y[k] + w1 y[k+1] + w2 M[k] + w3 M[k+1] (M the second
    derivatives of the row); k and the weights depend only on the sample
    position, so they are computed once for all rows.
    """
    cdef Py_ssize_t nrows = values.shape[0], nk = values.shape[1], npts = out.shape[1]
    cdef Py_ssize_t r, k, p
    cdef double h, t, a, b, x
    if knots.shape[0] != nk or out.shape[0] != nrows:
        check(BAD_ARGUMENT, "spline_expand: knots must have nknots entries and out nrows rows")
    if nk == 1:
        np.asarray(out)[:] = np.asarray(values)
        return
    cdef double* m2 = <double*>malloc((3 * max(nk, 2) + 4 * npts) * sizeof(double))
    cdef Py_ssize_t* seg = <Py_ssize_t*>malloc(max(npts, 1) * sizeof(Py_ssize_t))
    if m2 == NULL or seg == NULL:
        free(m2)
        free(seg)
        check(NO_MEMORY, "spline_expand: no memory for the work buffers")
    cdef double* c = m2 + max(nk, 2)
    cdef double* d = m2 + 2 * max(nk, 2)
    cdef double* w = m2 + 3 * max(nk, 2)
    try:
        with nogil:
            k = 0
            for p in range(npts):
                x = <double>p
                while k < nk - 2 and knots[k + 1] < x:
                    k += 1
                seg[p] = k
                h = knots[k + 1] - knots[k]
                if x < knots[0]:                # linear, end slope
                    t = (x - knots[0]) / h
                    w[4 * p] = 1.0 - t; w[4 * p + 1] = t
                    w[4 * p + 2] = 0.0; w[4 * p + 3] = -h * (x - knots[0]) / 6.0
                elif x > knots[nk - 1]:
                    t = (x - knots[nk - 1]) / h
                    w[4 * p] = -t; w[4 * p + 1] = 1.0 + t
                    w[4 * p + 2] = h * (x - knots[nk - 1]) / 6.0; w[4 * p + 3] = 0.0
                else:
                    t = (x - knots[k]) / h
                    a = 1.0 - t
                    w[4 * p] = a; w[4 * p + 1] = t
                    w[4 * p + 2] = h * h / 6.0 * (a * a * a - a)
                    w[4 * p + 3] = h * h / 6.0 * (t * t * t - t)
            for r in range(nrows):
                # second derivatives, natural ends (Thomas algorithm)
                m2[0] = 0.0
                m2[nk - 1] = 0.0
                c[0] = 0.0
                d[0] = 0.0
                for k in range(1, nk - 1):
                    a = knots[k] - knots[k - 1]
                    h = knots[k + 1] - knots[k]
                    b = 2.0 * (a + h) - a * c[k - 1]
                    c[k] = h / b
                    d[k] = (6.0 * ((values[r, k + 1] - values[r, k]) / h
                                   - (values[r, k] - values[r, k - 1]) / a) - a * d[k - 1]) / b
                for k in range(nk - 2, 0, -1):
                    m2[k] = d[k] - c[k] * m2[k + 1]
                for p in range(npts):
                    k = seg[p]
                    out[r, p] = <float>(w[4 * p] * values[r, k] + w[4 * p + 1] * values[r, k + 1]
                                        + w[4 * p + 2] * m2[k] + w[4 * p + 3] * m2[k + 1])
    finally:
        free(m2)
        free(seg)
