# cython: language_level=3
"""EPD and TFA fits of many light curves in one call (arrays in, arrays out).

No I/O, no globals, no logging (the contract of ``cext/kernels.pxd``: failures
go through ``trex.kernels.check``).  The light curves are concatenated: star
``s`` owns rows ``offsets[s]:offsets[s + 1]`` of ``mags`` and ``params``, in
time order.  Each star is fitted exactly as :func:`trex.epd.epd` describes:
parameters never measured on the star are left out, rows with a missing
magnitude or parameter are not fitted, the columns are standardised over the
good rows (a constant column is left out), the target is the running median
of the good magnitudes (scipy ``median_filter`` semantics: edges repeated, the
upper median of an even window), and the least-squares fit (Householder QR) is
repeated with points beyond ``clip`` robust sigmas of the raw residuals left
out, at most ``iters`` times.  ``masked_fits`` is the TFA fit of the series
that leave frames out, each on its own frames against one design.
``own_signals`` (``detrend_signal.pxi``) finds each star's own slow signal, which
the fits are kept from (``trex/protect.py``).
"""
from libc.math cimport sqrt, fabs, isfinite, NAN, copysign
from libc.stdlib cimport malloc, free
from libc.string cimport memmove, memcpy
from libc.stdint cimport int64_t
from kernels cimport BAD_ARGUMENT, NO_MEMORY, select_kth, sort_small

from trex.kernels import check


cdef double _median(double* a, Py_ssize_t n) noexcept nogil:
    """Median of a[0:n] as numpy gives it (mean of the two middle values when n is
    even); a is reordered."""
    cdef Py_ssize_t k = n // 2, i
    cdef double upper = select_kth(a, n, k), lower
    if n % 2:
        return upper
    lower = a[0]
    for i in range(1, k):
        if a[i] > lower:
            lower = a[i]
    return 0.5 * (lower + upper)


cdef void _running_median(const double* x, Py_ssize_t n, Py_ssize_t width, double* window,
                          double* out) noexcept nogil:
    """scipy.ndimage.median_filter(x, size=min(width, n), mode="nearest") of x[0:n]; a
    copy when width <= 1 or n < 3.  ``window`` holds ``width`` doubles."""
    cdef Py_ssize_t size = width if width < n else n, half, i, t, lo, hi, mid
    cdef double v
    if width <= 1 or n < 3:
        memcpy(out, x, n * sizeof(double))
        return
    half = size // 2
    for t in range(size):  # the window of row 0, sorted
        i = t - half
        window[t] = x[0 if i < 0 else (n - 1 if i >= n else i)]
    sort_small(window, size)
    for i in range(n):
        out[i] = window[half]
        if i == n - 1:
            break
        t = i - half  # leaves
        v = x[0 if t < 0 else (n - 1 if t >= n else t)]
        lo = 0
        hi = size - 1
        while lo < hi:  # any position holding v
            mid = (lo + hi) // 2
            if window[mid] < v:
                lo = mid + 1
            else:
                hi = mid
        memmove(window + lo, window + lo + 1, (size - 1 - lo) * sizeof(double))
        t = i - half + size  # enters
        v = x[0 if t < 0 else (n - 1 if t >= n else t)]
        lo = 0
        hi = size - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if window[mid] < v:
                lo = mid + 1
            else:
                hi = mid
        memmove(window + lo + 1, window + lo, (size - 1 - lo) * sizeof(double))
        window[lo] = v





cdef inline void _reflect(const double* v, double* y, Py_ssize_t r, Py_ssize_t n,
                          double vnorm2) noexcept nogil:
    """y[r:n] -= 2 (v.y / v.v) v: the Householder reflection of v applied to y."""
    cdef Py_ssize_t i
    cdef double s = 0.0
    for i in range(r, n):
        s += v[i] * y[i]
    s = 2.0 * s / vnorm2
    for i in range(r, n):
        y[i] -= s * v[i]


cdef Py_ssize_t _lstsq(double* a, double* b, Py_ssize_t n, Py_ssize_t m,
                      double* x) noexcept nogil:
    """Least squares of the column-major (n, m) matrix ``a`` against ``b`` (n,) by
    Householder QR (a and b are overwritten); x (m,) gets the solution.  A column
    whose part independent of the columns before it is below round-off (relative to
    its norm, as ``numpy.linalg.lstsq``'s default cut) gets 0 and is left out, so the
    model is still the projection of b on the columns.  Returns the rank."""
    cdef Py_ssize_t i, j, k, r = 0
    cdef double norm, full, alpha, s, vnorm2
    cdef double eps = 2.220446049250313e-16 * (n if n > m else m)
    cdef double* col
    for k in range(m):
        col = a + k * n
        full = 0.0
        for i in range(n):
            full += col[i] * col[i]
        norm = 0.0
        for i in range(r, n):
            norm += col[i] * col[i]
        x[k] = NAN  # marks a column left out until it is accepted
        if r >= n or norm <= eps * eps * full or norm == 0.0:
            continue
        norm = sqrt(norm)
        alpha = -copysign(norm, col[r])
        col[r] -= alpha
        vnorm2 = 0.0
        for i in range(r, n):
            vnorm2 += col[i] * col[i]
        for j in range(k + 1, m):
            _reflect(col, a + j * n, r, n, vnorm2)
        _reflect(col, b, r, n, vnorm2)
        col[r] = alpha  # R's diagonal entry of row r
        x[k] = 0.0
        r += 1
    # back substitution over the accepted columns: row i of R belongs to the i-th of them
    i = r
    for k in range(m - 1, -1, -1):
        if x[k] != x[k]:  # left out
            x[k] = 0.0
            continue
        i -= 1
        s = b[i]
        for j in range(k + 1, m):
            s -= a[j * n + i] * x[j]
        x[k] = s / a[k * n + i]
    return r


cdef struct Work:
    double* z        # (n, p) standardised parameters of the good rows, row-major
    double* a        # (n, m) design of the fitted rows, column-major
    double* b        # (n,) target of the fitted rows
    double* target   # (n,) running median of the good magnitudes
    double* resid    # (n,) residuals of the good rows
    double* scratch  # (n,) for medians
    double* window   # (smooth,) running-median window
    double* coef     # (m,) standardised coefficients
    double* mean     # (p,) column means
    double* scale    # (p,) column scales
    Py_ssize_t* rows  # (n,) index of each good row in the star's rows
    Py_ssize_t* cols  # (p,) the usable columns
    char* fit        # (n,) fitted among the good rows
    char* keep       # (n,)


cdef int _epd_star(const double* mags, const double* params, const unsigned char* exclude,
                   Py_ssize_t n, Py_ssize_t p, Py_ssize_t smooth, double clip, int iters,
                   Py_ssize_t min_finite, Py_ssize_t min_points, Work* w, double* out,
                   double* coef_out) noexcept nogil:
    """EPD of one star (rows ``mags[0:n]``, ``params[0:n, 0:p]``); returns 1 when fitted."""
    cdef Py_ssize_t i, j, c, g, k, ng = 0, nfit = 0, measured = 0, nkept = 0, nuse = 0, need
    cdef Py_ssize_t m, nkeep, it
    cdef double v, s, med, sigma, lim, level
    cdef bint ok, same
    for i in range(n):
        out[i] = NAN
    for j in range(p + 1):
        coef_out[j] = NAN
    for i in range(n):
        if isfinite(mags[i]):
            measured += 1
    if measured < min_finite or measured == 0:
        return 0
    # parameters never measured on this star are left out (cols: the kept ones for now)
    for j in range(p):
        for i in range(n):
            if isfinite(params[i * p + j]):
                w.cols[nkept] = j
                nkept += 1
                break
    for i in range(n):
        ok = isfinite(mags[i])
        for c in range(nkept):
            ok = ok and isfinite(params[i * p + w.cols[c]])
        if ok:
            w.rows[ng] = i
            ng += 1
    need = min_points if min_points > 0 else max(max(10, 3 * (nkept + 1)), smooth)
    if ng < need:
        return 0
    # standardised columns over the good rows; a constant one is left out
    for c in range(nkept):
        j = w.cols[c]
        s = 0.0
        for g in range(ng):
            s += params[w.rows[g] * p + j]
        w.mean[c] = s / ng
        s = 0.0
        for g in range(ng):
            v = params[w.rows[g] * p + j] - w.mean[c]
            s += v * v
        w.scale[c] = sqrt(s / ng)
    for c in range(nkept):
        j = w.cols[c]
        coef_out[1 + j] = 0.0
        if w.scale[c] > 1e-12 * max(fabs(w.mean[c]), 1.0):
            w.cols[nuse] = j
            w.mean[nuse] = w.mean[c]
            w.scale[nuse] = w.scale[c]
            nuse += 1
    m = 1 + nuse
    for g in range(ng):
        for c in range(nuse):
            w.z[g * p + c] = (params[w.rows[g] * p + w.cols[c]] - w.mean[c]) / w.scale[c]
        w.scratch[g] = mags[w.rows[g]]
    _running_median(w.scratch, ng, smooth, w.window, w.target)
    for g in range(ng):
        w.fit[g] = exclude == NULL or not exclude[w.rows[g]]
        nfit += w.fit[g]
    if nfit < need:
        for g in range(ng):
            w.fit[g] = 1
    for it in range(max(iters, 0) + 1):
        k = 0
        for g in range(ng):
            if w.fit[g]:
                w.a[k] = 1.0
                for c in range(nuse):
                    w.a[(c + 1) * ng + k] = w.z[g * p + c]
                w.b[k] = w.target[g]
                k += 1
        _compact(w.a, ng, k, m)
        _lstsq(w.a, w.b, k, m, w.coef)
        for g in range(ng):
            s = w.coef[0]
            for c in range(nuse):
                s += w.coef[c + 1] * w.z[g * p + c]
            w.resid[g] = mags[w.rows[g]] - s
        memcpy(w.scratch, w.resid, ng * sizeof(double))
        med = _median(w.scratch, ng)
        for g in range(ng):
            w.scratch[g] = fabs(w.resid[g] - med)
        sigma = 1.4826 * _median(w.scratch, ng)
        lim = clip * max(sigma, 1e-9)
        nkeep = 0
        same = True
        for g in range(ng):
            w.keep[g] = w.fit[g] and fabs(w.resid[g] - med) <= lim
            nkeep += w.keep[g]
            same = same and w.keep[g] == w.fit[g]
        if nkeep < need or same:
            break
        memcpy(w.fit, w.keep, ng)
    for g in range(ng):
        w.scratch[g] = mags[w.rows[g]]
    level = _median(w.scratch, ng)
    for g in range(ng):
        out[w.rows[g]] = w.resid[g] + level
    s = w.coef[0]
    for c in range(nuse):
        coef_out[1 + w.cols[c]] = w.coef[c + 1] / w.scale[c]
        s -= coef_out[1 + w.cols[c]] * w.mean[c]
    coef_out[0] = s
    return 1


cdef void _compact(double* a, Py_ssize_t stride, Py_ssize_t k, Py_ssize_t m) noexcept nogil:
    """Columns of ``a`` stored ``stride`` apart, of which the first ``k`` rows are used:
    moved to be ``k`` apart (a column-major (k, m) matrix)."""
    cdef Py_ssize_t c
    if k == stride:
        return
    for c in range(1, m):
        memmove(a + c * k, a + c * stride, k * sizeof(double))


def epd_batch(const double[::1] mags, const double[:, ::1] params, const int64_t[::1] offsets,
              const unsigned char[::1] exclude, Py_ssize_t smooth, double clip, int iters,
              Py_ssize_t min_finite, Py_ssize_t min_points, double[::1] out,
              double[:, ::1] coefficients, unsigned char[::1] fitted):
    """EPD of many stars' light curves (see the module doc).

    mags : float64 (N,), magnitudes, NaN missing; params : float64 (N, p), C-contiguous,
    external parameters; offsets : int64 (nstars + 1,), star s owns rows
    offsets[s]:offsets[s + 1] (time order); exclude : uint8 (N,), rows left out of
    the fit (still corrected), or empty; smooth : running-median width, points;
    clip : robust sigmas; iters : clipping iterations; min_finite : fewest measured
    magnitudes a star needs to be tried; min_points : fewest good points fitted
    (0: max(10, 3 (p' + 1), smooth) with p' the parameters measured on the star).
    Outputs: out float64 (N,), detrended magnitudes (NaN where not good or not
    fitted); coefficients float64 (nstars, 1 + p): constant, then the slope of each
    parameter in its units (0: constant on the star; NaN: never measured or star
    not fitted); fitted uint8 (nstars,).
    """
    cdef Py_ssize_t nstars = offsets.shape[0] - 1, p = params.shape[1], s, longest = 0, n
    cdef Py_ssize_t total = mags.shape[0]
    cdef Work w
    cdef const unsigned char* ex = NULL
    if params.shape[0] != total or out.shape[0] != total or fitted.shape[0] != nstars:
        check(BAD_ARGUMENT, "epd_batch: mags, params, out and fitted disagree in length")
    if coefficients.shape[0] != nstars or coefficients.shape[1] != p + 1:
        check(BAD_ARGUMENT, "epd_batch: coefficients must be (nstars, 1 + p)")
    if exclude.shape[0] not in (0, total):
        check(BAD_ARGUMENT, "epd_batch: exclude must be empty or as long as mags")
    if nstars < 0 or offsets[0] != 0 or offsets[nstars] != total:
        check(BAD_ARGUMENT, "epd_batch: offsets must run from 0 to len(mags)")
    for s in range(nstars):
        if offsets[s + 1] < offsets[s]:
            check(BAD_ARGUMENT, "epd_batch: offsets must not decrease")
        longest = max(longest, offsets[s + 1] - offsets[s])
    if exclude.shape[0]:
        ex = &exclude[0]
    n = max(longest, 1)
    w.z = <double*>malloc(n * max(p, 1) * sizeof(double))
    w.a = <double*>malloc(n * (p + 1) * sizeof(double))
    w.b = <double*>malloc(n * sizeof(double))
    w.target = <double*>malloc(n * sizeof(double))
    w.resid = <double*>malloc(n * sizeof(double))
    w.scratch = <double*>malloc(n * sizeof(double))
    w.window = <double*>malloc(max(smooth, 1) * sizeof(double))
    w.coef = <double*>malloc((p + 1) * sizeof(double))
    w.mean = <double*>malloc(max(p, 1) * sizeof(double))
    w.scale = <double*>malloc(max(p, 1) * sizeof(double))
    w.rows = <Py_ssize_t*>malloc(n * sizeof(Py_ssize_t))
    w.cols = <Py_ssize_t*>malloc(max(p, 1) * sizeof(Py_ssize_t))
    w.fit = <char*>malloc(n)
    w.keep = <char*>malloc(n)
    try:
        if (w.z == NULL or w.a == NULL or w.b == NULL or w.target == NULL or w.resid == NULL
                or w.scratch == NULL or w.window == NULL or w.coef == NULL or w.mean == NULL
                or w.scale == NULL or w.rows == NULL or w.cols == NULL or w.fit == NULL
                or w.keep == NULL):
            check(NO_MEMORY, "epd_batch: work space")
        with nogil:
            for s in range(nstars):
                n = offsets[s + 1] - offsets[s]
                fitted[s] = _epd_star(
                    &mags[offsets[s]] if n else NULL,
                    &params[offsets[s], 0] if n and p else NULL,
                    ex + offsets[s] if ex != NULL else NULL, n, p, smooth, clip, iters,
                    min_finite, min_points, &w, &out[offsets[s]] if n else NULL,
                    &coefficients[s, 0])
    finally:
        free(w.z); free(w.a); free(w.b); free(w.target); free(w.resid); free(w.scratch)
        free(w.window); free(w.coef); free(w.mean); free(w.scale); free(w.rows)
        free(w.cols); free(w.fit); free(w.keep)


def masked_fits(const double[:, ::1] design, const double[:, ::1] y,
                const unsigned char[:, ::1] fit, Py_ssize_t min_points, double[:, ::1] model,
                unsigned char[::1] fitted):
    """Least-squares fits of many series against one design, each on its own frames.

    design : float64 (nf, q), the columns (e.g. TFA templates and a constant); y :
    float64 (ns, nf), the series; fit : uint8 (ns, nf), the frames each series is
    fitted on (its y there must be finite); min_points : fewest frames a series
    needs to be fitted.  Outputs: model float64 (ns, nf), design @ coefficients on
    every frame (NaN for a series not fitted); fitted uint8 (ns,).  Householder QR,
    as ``numpy.linalg.lstsq`` within round-off (the same projection when columns
    are dependent).
    """
    cdef Py_ssize_t nf = design.shape[0], q = design.shape[1], ns = y.shape[0]
    cdef Py_ssize_t s, f, c, k
    cdef double v
    cdef double* a
    cdef double* b
    cdef double* x
    if y.shape[1] != nf or fit.shape[0] != ns or fit.shape[1] != nf or model.shape[0] != ns \
            or model.shape[1] != nf or fitted.shape[0] != ns:
        check(BAD_ARGUMENT, "masked_fits: design, y, fit, model and fitted disagree in shape")
    a = <double*>malloc(max(nf * q, 1) * sizeof(double))
    b = <double*>malloc(max(nf, 1) * sizeof(double))
    x = <double*>malloc(max(q, 1) * sizeof(double))
    try:
        if a == NULL or b == NULL or x == NULL:
            check(NO_MEMORY, "masked_fits: work space")
        with nogil:
            for s in range(ns):
                k = 0
                for f in range(nf):
                    if fit[s, f]:
                        for c in range(q):
                            a[c * nf + k] = design[f, c]
                        b[k] = y[s, f]
                        k += 1
                fitted[s] = k >= min_points and k > 0
                if not fitted[s]:
                    for f in range(nf):
                        model[s, f] = NAN
                    continue
                _compact(a, nf, k, q)
                _lstsq(a, b, k, q, x)
                for f in range(nf):
                    v = 0.0
                    for c in range(q):
                        v += design[f, c] * x[c]
                    model[s, f] = v
    finally:
        free(a); free(b); free(x)


cdef void _running_mean(const double* x, Py_ssize_t n, Py_ssize_t width, double* out) noexcept nogil:
    """scipy.ndimage.uniform_filter1d(x, width, mode="constant") of x[0:n] (zeros beyond
    the ends), computed as scipy does: the first window's sum over ``width``, then each
    step adds (entering - leaving) / width."""
    cdef Py_ssize_t half = width // 2, i, t
    cdef double acc = 0.0, enter, leave
    for t in range(width):
        i = t - half
        if 0 <= i < n:
            acc += x[i]
    acc /= width
    out[0] = acc
    for i in range(1, n):
        t = i - half + width - 1
        enter = x[t] if 0 <= t < n else 0.0
        t = i - half - 1
        leave = x[t] if 0 <= t < n else 0.0
        acc += (enter - leave) / width
        out[i] = acc


def sustained_outliers(const double[:, ::1] resid, Py_ssize_t window, double clip,
                       unsigned char[:, ::1] out):
    """Frames (ns, nf) of each series where the ``window``-frame running mean of its
    finite residuals ``resid`` (float64 (ns, nf), NaN missing) is more than ``clip``
    robust sigmas (1.4826 MAD, at least 1e-6) from its median, widened by half a window
    on each side; only frames with a finite residual.  out: uint8 (ns, nf)."""
    cdef Py_ssize_t ns = resid.shape[0], nf = resid.shape[1], s, f, k, nm, lo, hi, half
    cdef double centre, sigma, lim
    cdef double* value
    cdef double* ok
    cdef double* total
    cdef double* count
    cdef double* mean
    cdef double* scratch
    cdef Py_ssize_t* hits
    if out.shape[0] != ns or out.shape[1] != nf:
        check(BAD_ARGUMENT, "sustained_outliers: out must be shaped like resid")
    if window < 1:
        check(BAD_ARGUMENT, "sustained_outliers: window must be at least 1")
    half = window // 2
    value = <double*>malloc(max(nf, 1) * 6 * sizeof(double))
    hits = <Py_ssize_t*>malloc((nf + 1) * sizeof(Py_ssize_t))
    try:
        if value == NULL or hits == NULL:
            check(NO_MEMORY, "sustained_outliers: work space")
        ok = value + nf
        total = ok + nf
        count = total + nf
        mean = count + nf
        scratch = mean + nf
        with nogil:
            for s in range(ns):
                for f in range(nf):
                    ok[f] = 1.0 if isfinite(resid[s, f]) else 0.0
                    value[f] = resid[s, f] if ok[f] else 0.0
                _running_mean(value, nf, window, total)
                _running_mean(ok, nf, window, count)
                nm = 0
                for f in range(nf):
                    mean[f] = total[f] / count[f] if ok[f] and count[f] > 0 else NAN
                    if isfinite(mean[f]):
                        scratch[nm] = mean[f]
                        nm += 1
                hits[0] = 0
                if nm:
                    centre = _median(scratch, nm)
                    nm = 0
                    for f in range(nf):
                        if isfinite(mean[f]):
                            scratch[nm] = fabs(mean[f] - centre)
                            nm += 1
                    sigma = 1.4826 * _median(scratch, nm)
                    lim = clip * max(sigma, 1e-6)
                for f in range(nf):  # hits[f + 1]: hits among frames 0..f
                    hits[f + 1] = hits[f] + (nm > 0 and fabs(mean[f] - centre) > lim)
                for f in range(nf):
                    lo = min(max(f - half, 0), nf)
                    hi = min(max(f - half + window, 0), nf)
                    out[s, f] = ok[f] > 0 and hits[hi] > hits[lo]
    finally:
        free(value)
        free(hits)


include "detrend_signal.pxi"
