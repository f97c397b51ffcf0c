# cython: language_level=3
"""Source detection kernels: matched filter, peaks, deblending, pixel ownership.

No I/O, no globals, no logging; every kernel handles a whole frame in one call
and writes into caller-allocated arrays.  Pixel (i, j) is column i, row j;
coordinates are 0-based with pixel centres at integers.  The elliptical
Gaussian fit lives in ``cext/psffit.pxi`` (included below).
"""
from libc.math cimport sqrt, exp, fabs, lround, isfinite, NAN
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free, labs
from kernels cimport BAD_ARGUMENT, NO_MEMORY
from trex.kernels import check

include "psffit.pxi"


def detect_map(const float[:, ::1] image, const float[:, ::1] sky,
               const float[:, ::1] rms, const unsigned char[:, ::1] mask,
               const double[::1] kernel, double threshold,
               float[:, ::1] filtered, unsigned char[:, ::1] above):
    """Filter the sky-subtracted image and mark pixels above threshold.

    Parameters
    ----------
    image, sky, rms : float32 (ny, nx), ADU.
    mask : uint8 (ny, nx) or None; non-zero (and non-finite) pixels count as
        sky in the filter and are never above threshold.
    kernel : float64 (2h + 1,), 1-D filter applied along x then y (normalise
        it to unit sum so ``filtered`` stays in ADU).
    threshold : detection threshold in units of ``rms``.
    filtered : float32 (ny, nx), written: filtered (image - sky), ADU.
    above : uint8 (ny, nx), written: 1 where filtered > threshold * rms.
    """
    cdef Py_ssize_t ny = image.shape[0], nx = image.shape[1]
    cdef Py_ssize_t h = kernel.shape[0] // 2, klen = kernel.shape[0], w = nx + 2 * h
    cdef Py_ssize_t i, j, k, r, next_row = 0
    cdef bint has_mask = mask is not None
    cdef float v, c, thr = threshold
    if kernel.shape[0] % 2 != 1:
        check(BAD_ARGUMENT, "detect_map: kernel length must be odd")
    if (sky.shape[0] != ny or sky.shape[1] != nx or rms.shape[0] != ny or rms.shape[1] != nx
            or filtered.shape[0] != ny or filtered.shape[1] != nx
            or above.shape[0] != ny or above.shape[1] != nx):
        check(BAD_ARGUMENT, "detect_map: all maps must have the shape of image")
    if has_mask and (mask.shape[0] != ny or mask.shape[1] != nx):
        check(BAD_ARGUMENT, "detect_map: mask must have the shape of image")
    # a ring of klen horizontally filtered rows, one padded source row, one
    # row of zeros, one accumulator row; then klen row pointers
    cdef float* ring = <float*>malloc((klen + 3) * w * sizeof(float))
    cdef float** rows = <float**>malloc(klen * sizeof(float*))
    if ring == NULL or rows == NULL:
        free(ring)
        free(rows)
        check(NO_MEMORY, "detect_map: no memory for the work buffers")
    cdef float* src = ring + klen * w
    cdef float* zero = src + w
    cdef float* acc = zero + w
    cdef float* row
    try:
        with nogil:
            for i in range(w):
                src[i] = 0.0
                zero[i] = 0.0
            for j in range(ny):
                while next_row < ny and next_row <= j + h:
                    for i in range(nx):
                        v = image[next_row, i] - sky[next_row, i]
                        if not isfinite(v) or (has_mask and mask[next_row, i]):
                            v = 0.0
                        src[i + h] = v
                    row = ring + (next_row % klen) * w
                    for i in range(nx):
                        row[i] = 0.0
                    for k in range(klen):
                        c = <float>kernel[k]
                        for i in range(nx):
                            row[i] += c * src[i + k]
                    next_row += 1
                for k in range(klen):
                    r = j + k - h
                    rows[k] = ring + (r % klen) * w if 0 <= r < ny else zero
                for i in range(nx):
                    acc[i] = 0.0
                for k in range(klen):
                    c = <float>kernel[k]
                    row = rows[k]
                    for i in range(nx):
                        acc[i] += c * row[i]
                for i in range(nx):
                    filtered[j, i] = acc[i]
                    above[j, i] = acc[i] > thr * rms[j, i] and isfinite(image[j, i]) \
                        and not (has_mask and mask[j, i])
    finally:
        free(ring)
        free(rows)


def component_areas(const int[:, ::1] labels, int64_t[::1] area):
    """Pixels per label: area (int64, nlabels + 1) is written (labels < 0 ignored)."""
    cdef Py_ssize_t ny = labels.shape[0], nx = labels.shape[1], i, j, n = area.shape[0]
    cdef int lab
    with nogil:
        for i in range(n):
            area[i] = 0
        for j in range(ny):
            for i in range(nx):
                lab = labels[j, i]
                if 0 <= lab < n:
                    area[lab] += 1


def find_peaks(const float[:, ::1] filtered, const unsigned char[:, ::1] above,
               Py_ssize_t[::1] px, Py_ssize_t[::1] py):
    """Local maxima (8 neighbours) of ``filtered`` among pixels ``above``.

    Ties go to the first pixel in row-major order.  ``px``, ``py`` (intp,
    capacity >= number of pixels above) receive the peak columns and rows;
    returns the number of peaks (stops when the capacity is reached).
    """
    cdef Py_ssize_t ny = filtered.shape[0], nx = filtered.shape[1]
    cdef Py_ssize_t i, j, di, dj, ii, jj, n = 0, cap = px.shape[0]
    cdef float f
    cdef bint peak
    if py.shape[0] != cap:
        check(BAD_ARGUMENT, "find_peaks: px and py must have the same length")
    with nogil:
        for j in range(ny):
            if n == cap:
                break
            for i in range(nx):
                if not above[j, i]:
                    continue
                f = filtered[j, i]
                peak = True
                for dj in range(-1, 2):
                    jj = j + dj
                    if jj < 0 or jj >= ny:
                        continue
                    for di in range(-1, 2):
                        ii = i + di
                        if ii < 0 or ii >= nx or (di == 0 and dj == 0):
                            continue
                        if filtered[jj, ii] > f or (filtered[jj, ii] == f and
                                                    (dj < 0 or (dj == 0 and di < 0))):
                            peak = False
                if peak:
                    if n == cap:
                        break
                    px[n] = i
                    py[n] = j
                    n += 1
    return n


def deblend_peaks(const float[:, ::1] filtered, const float[:, ::1] rms,
                  const Py_ssize_t[::1] px, const Py_ssize_t[::1] py,
                  const int[::1] label, double noise_factor, double nsigma,
                  double contrast, double gain, unsigned char[::1] keep):
    """Keep the peaks that are separate sources, merge the others.

    Peaks must be sorted by ``label`` (their connected component) and, within
    a component, by decreasing filtered value.  The first peak of a component
    is kept; a later one is kept when, towards every brighter kept peak of its
    component, the filtered image dips below it (minimum along the straight
    line between the two) by at least ``nsigma`` times the filtered noise
    (``noise_factor * sqrt(rms**2 + f / gain)``; no Poisson term when gain
    <= 0) and by at least ``contrast`` times its own height.  ``keep`` (uint8,
    npeaks) is written.
    """
    cdef Py_ssize_t n = px.shape[0], p, q, start = 0, t, nstep, ii, jj
    cdef double fp, fmin, f, sig, depth
    if py.shape[0] != n or label.shape[0] != n or keep.shape[0] != n:
        check(BAD_ARGUMENT, "deblend_peaks: px, py, label and keep must have the same length")
    with nogil:
        for p in range(n):
            if p == 0 or label[p] != label[p - 1]:
                start = p
                keep[p] = 1
                continue
            fp = filtered[py[p], px[p]]
            sig = rms[py[p], px[p]] ** 2
            if gain > 0.0 and fp > 0.0:
                sig = sig + fp / gain
            sig = noise_factor * sqrt(sig)
            keep[p] = 1
            for q in range(start, p):
                if not keep[q]:
                    continue
                nstep = max(labs(px[q] - px[p]), labs(py[q] - py[p]))
                fmin = fp
                for t in range(1, nstep):
                    ii = px[p] + lround((px[q] - px[p]) * t / <double>nstep)
                    jj = py[p] + lround((py[q] - py[p]) * t / <double>nstep)
                    f = filtered[jj, ii]
                    if f < fmin:
                        fmin = f
                depth = fp - fmin
                if depth < nsigma * sig or depth < contrast * fp:
                    keep[p] = 0
                    break


def assign_pixels(int[:, ::1] labels, const Py_ssize_t[::1] first,
                  const Py_ssize_t[::1] count, const Py_ssize_t[::1] px,
                  const Py_ssize_t[::1] py, int[::1] npix):
    """Give every labelled pixel to the nearest source of its component.

    labels : int32 (ny, nx), component labels (0 = none); overwritten in place
        with the owning source index, -1 where none.
    first, count : intp (nlabels + 1,): sources of component L are
        first[L] .. first[L] + count[L] - 1 (sources sorted by label).
    px, py : intp (nsources,), source peak pixels.
    npix : int32 (nsources,), written: number of pixels owned.
    """
    cdef Py_ssize_t ny = labels.shape[0], nx = labels.shape[1], i, j, s, best
    cdef Py_ssize_t nlab = first.shape[0]
    cdef long d2, dbest
    cdef int lab
    if count.shape[0] != nlab or npix.shape[0] != px.shape[0]:
        check(BAD_ARGUMENT, "assign_pixels: first/count must share a length; npix must match px")
    with nogil:
        for s in range(npix.shape[0]):
            npix[s] = 0
        for j in range(ny):
            for i in range(nx):
                lab = labels[j, i]
                if lab <= 0 or lab >= nlab or count[lab] == 0:
                    labels[j, i] = -1
                    continue
                best = first[lab]
                if count[lab] > 1:
                    dbest = (px[best] - i) ** 2 + (py[best] - j) ** 2
                    for s in range(first[lab] + 1, first[lab] + count[lab]):
                        d2 = (px[s] - i) ** 2 + (py[s] - j) ** 2
                        if d2 < dbest:
                            dbest = d2
                            best = s
                labels[j, i] = <int>best
                npix[best] += 1
