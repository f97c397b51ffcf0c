# Sky of an annulus by iterative sigma clipping, without sorting the annulus.
# Included by photometry.pyx (shares its cimports); no I/O, no globals.

cdef enum:
    NBIN = 64            # histogram bins over +-4 estimated sigma (plus 2 overflow bins)
    NSAMPLE = 16         # values sampled to place the histogram
    SMALL_SORT = 48      # bins with more values than this are sorted with sort_doubles

cdef struct RankIndex:
    # histogram of a[:n] that finds the t-th smallest value without sorting a:
    # value i is in bin code[i] (0 below lo, NBIN + 1 above the top), cum[b]
    # values lie in the bins before b; the last bin looked into is kept sorted.
    double lo
    double inv
    int cum[NBIN + 3]
    uint8_t* code
    double* sorted
    int sorted_bin


cdef void insertion_sort(double* a, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef double v
    for i in range(1, n):
        v = a[i]
        j = i - 1
        while j >= 0 and a[j] > v:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = v


cdef void rank_index(RankIndex* h, const double* a, Py_ssize_t n) noexcept nogil:
    """Place NBIN bins over the centre +-4 sigma estimated from a sample, fill them (n >= 1)."""
    cdef double sample[NSAMPLE]
    cdef Py_ssize_t ns = max(min(n, <Py_ssize_t>NSAMPLE), 1), step = max(n // ns, 1), i
    cdef double scale, t
    cdef int b
    for i in range(NSAMPLE):
        sample[i] = a[min(i * step, n - 1)]
    insertion_sort(sample, ns)
    scale = (sample[(3 * ns) // 4] - sample[ns // 4]) / 1.349
    if not scale > 0:
        scale = (sample[ns - 1] - sample[0]) / 4.0
    if not scale > 0:
        scale = 1.0
    h.lo = sample[ns // 2] - 4.0 * scale
    h.inv = NBIN / (8.0 * scale)
    for b in range(NBIN + 3):
        h.cum[b] = 0
    for i in range(n):
        t = (a[i] - h.lo) * h.inv
        b = 0 if t < 0 else (NBIN + 1 if t >= NBIN else <int>t + 1)
        h.code[i] = <uint8_t>b
        h.cum[b + 1] += 1
    for b in range(NBIN + 2):
        h.cum[b + 1] += h.cum[b]
    h.sorted_bin = -1


cdef double rank_value(RankIndex* h, const double* a, Py_ssize_t n, Py_ssize_t t) noexcept nogil:
    """t-th smallest (0-based, t < n) of the values indexed by h."""
    cdef int b = 0
    cdef Py_ssize_t i, m = 0
    while h.cum[b + 1] <= t:
        b += 1
    if b != h.sorted_bin:
        for i in range(n):
            h.sorted[m] = a[i]
            m += h.code[i] == b
        if m > SMALL_SORT:
            sort_doubles(h.sorted, m)
        else:
            insertion_sort(h.sorted, m)
        h.sorted_bin = b
    return h.sorted[t - h.cum[b]]


cdef double rank_median(RankIndex* h, const double* a, Py_ssize_t n, Py_ssize_t lo,
                        Py_ssize_t hi) noexcept nogil:
    """Median of the values of ranks lo..hi-1."""
    cdef Py_ssize_t m = hi - lo
    cdef double v = rank_value(h, a, n, lo + (m - 1) // 2)
    if m % 2:
        return v
    return 0.5 * (v + rank_value(h, a, n, lo + m // 2))


cdef Py_ssize_t sky_estimate(double* a, Py_ssize_t n, double nsigma, int iters, int method,
                             double* sky, double* sigma, RankIndex* h) noexcept nogil:
    """Clipped sky of a[:n]; returns the number of values kept.

    Each iteration takes the median m and standard deviation s (ddof 1) of the
    values kept and keeps those with |v - m| <= nsigma s.  The statistics of
    the final set give the sky (mean, median or 3 median - 2 mean) and sigma.
    The values kept are those in a window [wlo, whi], i.e. a range of ranks
    [lo, hi), so medians are rank queries on one histogram of a; moments
    are sums about the first median c.
    """
    cdef Py_ssize_t i, lo = 0, hi = n, newlo, newhi, m = n
    cdef double c, med, s1 = 0.0, s2 = 0.0, t1, t2, d, sd, wlo, whi, v
    cdef int it = 0
    if n == 0:
        sky[0] = NAN
        sigma[0] = NAN
        return 0
    rank_index(h, a, n)
    med = c = rank_median(h, a, n, 0, n)
    for i in range(n):
        d = a[i] - c
        s1 += d
        s2 += d * d
    wlo = -INFINITY
    whi = INFINITY
    while True:
        sd = sqrt(max(s2 - s1 * s1 / m, 0.0) / (m - 1)) if m > 1 else 0.0
        if it >= iters or sd == 0.0:
            break
        wlo = max(wlo, med - nsigma * sd)
        whi = min(whi, med + nsigma * sd)
        newlo = 0
        newhi = 0
        t1 = 0.0
        t2 = 0.0
        for i in range(n):
            v = a[i]
            newlo += v < wlo
            newhi += v <= whi
            d = (v - c) if (v >= wlo and v <= whi) else 0.0
            t1 += d
            t2 += d * d
        if (newlo == lo and newhi == hi) or newhi - newlo < 2:
            break
        lo = newlo
        hi = newhi
        m = hi - lo
        s1 = t1
        s2 = t2
        med = rank_median(h, a, n, lo, hi)
        it += 1
    if method == SKY_MEDIAN:
        sky[0] = med
    elif method == SKY_MEAN:
        sky[0] = c + s1 / m
    else:
        sky[0] = 3.0 * med - 2.0 * (c + s1 / m)
    sigma[0] = sd
    return m
