# cython: language_level=3
"""Sigma-clipped statistics kernels (arrays in, numbers or arrays out).

No I/O, no globals, no logging.  Clipping is done on a sorted copy of the
finite values, so each iteration only moves the two ends of a window:
the centre is the window's median, the scale its standard deviation, and a
value survives when ``centre - lo*std <= v <= centre + hi*std``.
"""
import numpy as np

from libc.math cimport sqrt, isfinite, NAN
from libc.stdlib cimport malloc, free
from kernels cimport BAD_ARGUMENT, NO_MEMORY, sort_small
from trex.kernels import check

cdef extern from *:
    """
    /* In-place ascending sort of a[0:n] for short arrays (a stack of frames):
       quicksort on the median of three down to 64 elements, then insertion sort
       (fewer mispredicted branches than qsort for a stack of tens of frames). */
    static void trex_sort_short(double *a, Py_ssize_t n) {
        Py_ssize_t lo = 0, hi = n - 1, stack[128], top = 0, i, j;
        double p, t;
        for (;;) {
            while (hi - lo >= 64 && top < 126) {
                Py_ssize_t m = lo + (hi - lo) / 2;
                if (a[m] < a[lo]) { t = a[m]; a[m] = a[lo]; a[lo] = t; }
                if (a[hi] < a[lo]) { t = a[hi]; a[hi] = a[lo]; a[lo] = t; }
                if (a[hi] < a[m]) { t = a[hi]; a[hi] = a[m]; a[m] = t; }
                p = a[m]; i = lo; j = hi;
                while (i <= j) {
                    while (a[i] < p) i++;
                    while (a[j] > p) j--;
                    if (i <= j) { t = a[i]; a[i] = a[j]; a[j] = t; i++; j--; }
                }
                if (j - lo < hi - i) { stack[top++] = i; stack[top++] = hi; hi = j; }
                else { stack[top++] = lo; stack[top++] = j; lo = i; }
            }
            for (i = lo + 1; i <= hi; i++) {
                t = a[i]; j = i - 1;
                while (j >= lo && a[j] > t) { a[j + 1] = a[j]; j--; }
                a[j + 1] = t;
            }
            if (top == 0) break;
            hi = stack[--top]; lo = stack[--top];
        }
    }
    """
    void trex_sort_short(double *a, Py_ssize_t n) noexcept nogil


cdef inline double _median(const double* a, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Median of the sorted slice a[lo:hi] (hi > lo)."""
    cdef Py_ssize_t n = hi - lo, m = lo + (hi - lo) // 2
    if n % 2:
        return a[m]
    return 0.5 * (a[m - 1] + a[m])


cdef Py_ssize_t clip_sorted(const double* a, Py_ssize_t n, double lo_sigma,
                            double hi_sigma, int maxiter, double* mean,
                            double* median, double* std) noexcept nogil:
    """Iteratively clip the sorted array ``a[:n]``.

    Writes the mean, median and standard deviation of the surviving window and
    returns its length (0 when ``n`` is 0; then the outputs are NaN).
    """
    cdef Py_ssize_t lo = 0, hi = n, newlo, newhi, i
    cdef double s, ss, c, d, m, sd
    cdef int it = 0
    if n <= 0:
        mean[0] = NAN
        median[0] = NAN
        std[0] = NAN
        return 0
    while True:
        s = 0.0
        for i in range(lo, hi):
            s += a[i]
        m = s / (hi - lo)
        ss = 0.0
        for i in range(lo, hi):
            d = a[i] - m
            ss += d * d
        sd = sqrt(ss / (hi - lo - 1)) if hi - lo > 1 else 0.0
        c = _median(a, lo, hi)
        if it >= maxiter or sd == 0.0:
            break
        newlo = lo
        newhi = hi
        while newlo < newhi and a[newlo] < c - lo_sigma * sd:
            newlo += 1
        while newhi > newlo and a[newhi - 1] > c + hi_sigma * sd:
            newhi -= 1
        if (newlo == lo and newhi == hi) or newhi - newlo < 2:
            break
        lo = newlo
        hi = newhi
        it += 1
    mean[0] = m
    median[0] = c
    std[0] = sd
    return hi - lo


def clipped_stats(values, double nsigma=3.0, int maxiter=5):
    """Sigma-clipped mean, median, standard deviation and count of ``values``.

    Parameters
    ----------
    values : array_like, any shape, any real dtype
        Non-finite values are ignored.
    nsigma : float
        Symmetric clipping threshold in units of the standard deviation.
    maxiter : int
        Maximum number of clipping iterations.

    Returns
    -------
    (mean, median, std, n) : (float, float, float, int)
        NaN statistics and n = 0 when no finite value is given.
    """
    cdef double[::1] v = np.ascontiguousarray(values, dtype=np.float64).ravel()
    cdef Py_ssize_t n = v.shape[0], i, k = 0
    cdef double mean, median, std
    cdef double* buf = <double*>malloc(max(n, 1) * sizeof(double))
    if buf == NULL:
        check(NO_MEMORY, "clipped_stats: no memory for the work buffers")
    try:
        with nogil:
            for i in range(n):
                if isfinite(v[i]):
                    buf[k] = v[i]
                    k += 1
            sort_small(buf, k)
            k = clip_sorted(buf, k, nsigma, nsigma, maxiter, &mean, &median, &std)
    finally:
        free(buf)
    return mean, median, std, int(k)


def clipped_combine(const float[:, :, ::1] stack, float[:, ::1] out,
                    short[:, ::1] nused, double nsigma=3.0, int maxiter=3,
                    bint use_median=False):
    """Combine a stack of images pixel by pixel with sigma clipping.

    Parameters
    ----------
    stack : float32 array, shape (nimages, ny, nx), C-contiguous
        Non-finite values are ignored.  Callers pass row blocks so that the
        whole stack of a night never sits in memory.
    out : float32 array, shape (ny, nx), written
        Clipped mean (or median with ``use_median``) of each pixel; NaN where
        no finite value exists.
    nused : int16 array, shape (ny, nx), written
        Number of values that survived clipping.
    nsigma, maxiter : clipping threshold (sigma) and iteration limit.
    """
    cdef Py_ssize_t nimg = stack.shape[0], ny = stack.shape[1], nx = stack.shape[2]
    cdef Py_ssize_t i, j, k, n
    cdef double mean, median, std, v
    if out.shape[0] != ny or out.shape[1] != nx or nused.shape[0] != ny or nused.shape[1] != nx:
        check(BAD_ARGUMENT, "clipped_combine: out and nused must have shape (ny, nx) of the stack")
    # Row j of every image is first copied, transposed, into ``tile`` so that the
    # values of one pixel are adjacent (reading the stack pixel by pixel would
    # jump a whole image block between values).
    cdef double* buf = <double*>malloc(max(nimg, 1) * sizeof(double))
    cdef double* tile = <double*>malloc(max(nimg * nx, 1) * sizeof(double))
    if buf == NULL or tile == NULL:
        free(buf)
        free(tile)
        check(NO_MEMORY, "clipped_combine: no memory for the work buffers")
    try:
        with nogil:
            for j in range(ny):
                for k in range(nimg):
                    for i in range(nx):
                        tile[i * nimg + k] = stack[k, j, i]
                for i in range(nx):
                    n = 0
                    for k in range(nimg):
                        v = tile[i * nimg + k]
                        if isfinite(v):
                            buf[n] = v
                            n += 1
                    trex_sort_short(buf, n)
                    n = clip_sorted(buf, n, nsigma, nsigma, maxiter, &mean, &median, &std)
                    out[j, i] = median if use_median else mean
                    nused[j, i] = <short>n
    finally:
        free(buf)
        free(tile)


def calibrate_pixels(const float[:, :] raw, const float[::1] overscan,
                     const float[:, ::1] bias, const float[:, ::1] dark, double dark_scale,
                     const float[:, ::1] flat, const unsigned char[:, ::1] badpix,
                     double saturate, double min_flat, const unsigned char[::1] bits,
                     float[:, ::1] out, unsigned char[:, ::1] mask):
    """Calibrate one trimmed frame in a single pass: ``(raw - overscan - bias - dark*t) / flat``.

    Parameters
    ----------
    raw : float32, shape (ny, nx), rows contiguous (any row stride)
        The trimmed view of the raw frame, ADU (a slice of a C-contiguous array).
    overscan : float32, shape (ny,)
        Overscan level of each row, ADU.
    bias : float32, shape (ny, nx), C-contiguous, or None (not subtracted)
        Master bias, ADU.
    dark : float32, shape (ny, nx), C-contiguous, or None (not subtracted)
        Master dark current, ADU/s; multiplied by ``dark_scale`` (exposure, s).
    flat : float32, shape (ny, nx), C-contiguous, or None (not divided)
        Normalised master flat.  Where it is below ``min_flat`` or not finite
        the pixel is left undivided and flagged NOFLAT.
    badpix : uint8, shape (ny, nx), C-contiguous, or None
        Bad-pixel map; its bits are copied into the mask.
    saturate : raw values at or above this are flagged SATURATED.
    bits : uint8 (3,), the ``trex.flags.MASK`` bits SATURATED, NOFLAT, NONFINITE.
    out : float32, shape (ny, nx), written: the calibrated frame, ADU.
    mask : uint8, shape (ny, nx), written: bits of ``trex.flags.MASK``;
        non-finite results are flagged NONFINITE.

    Returns
    -------
    int : number of pixels with a non-zero mask.
    """
    cdef Py_ssize_t ny = raw.shape[0], nx = raw.shape[1], i, j, nbad = 0
    cdef bint has_bias = bias is not None, has_dark = dark is not None
    cdef bint has_flat = flat is not None, has_bpm = badpix is not None
    cdef float v, f, ok, sat = <float>saturate, fmin = <float>min_flat, t = <float>dark_scale
    cdef unsigned char m
    cdef const float* r
    cdef const float* b
    cdef const float* d
    cdef const float* fl
    cdef const unsigned char* bp
    if out.shape[0] != ny or out.shape[1] != nx or mask.shape[0] != ny or mask.shape[1] != nx:
        check(BAD_ARGUMENT, "calibrate_pixels: out and mask must have the shape of raw")
    if bits.shape[0] != 3:
        check(BAD_ARGUMENT, "calibrate_pixels: bits must hold SATURATED, NOFLAT, NONFINITE")
    cdef unsigned char satbit = bits[0], noflatbit = bits[1], nonfinitebit = bits[2]
    if overscan.shape[0] != ny:
        check(BAD_ARGUMENT, "calibrate_pixels: overscan must have one value per row")
    if nx > 1 and raw.strides[1] != sizeof(float):
        check(BAD_ARGUMENT, "calibrate_pixels: "
              "raw rows must be contiguous (a row or column slice of a C array)")
    for name, arr in (("bias", bias), ("dark", dark), ("flat", flat), ("badpix", badpix)):
        if arr is not None and (arr.shape[0] != ny or arr.shape[1] != nx):
            check(BAD_ARGUMENT, "calibrate_pixels: "
                  f"{name} must have the shape of the trimmed frame ({ny}, {nx})")
    if ny == 0 or nx == 0:
        return 0
    # a missing master is a row of zeros (bias, dark, badpix) or ones (flat)
    zeros = np.zeros(nx, np.float32)
    ones = np.ones(nx, np.float32)
    nobpm = np.zeros(nx, np.uint8)
    cdef const float[::1] zrow = zeros
    cdef const float[::1] orow = ones
    cdef const unsigned char[::1] brow = nobpm
    with nogil:
        for j in range(ny):
            r = &raw[j, 0]
            b = &bias[j, 0] if has_bias else &zrow[0]
            d = &dark[j, 0] if has_dark else &zrow[0]
            fl = &flat[j, 0] if has_flat else &orow[0]
            bp = &badpix[j, 0] if has_bpm else &brow[0]
            for i in range(nx):
                f = fl[i]
                ok = f >= fmin and isfinite(f)
                v = (r[i] - overscan[j] - b[i] - d[i] * t) / (f if ok else 1.0)
                m = bp[i] | (satbit if r[i] >= sat else 0) | (0 if ok else noflatbit)
                m = m | (0 if isfinite(v) else nonfinitebit)
                out[j, i] = v
                mask[j, i] = m
                nbad += m != 0
    return int(nbad)
