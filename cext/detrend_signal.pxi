# Included by cext/detrend.pyx: the star's own slow signal, kept out of the EPD and TFA
# fits (trex/protect.py).  Uses _median of detrend.pyx.

from kernels cimport sort_doubles


cdef void _own_signal(const double* mags, Py_ssize_t n, Py_ssize_t window, double clip,
                      double extend, double* v, double* smooth, double* noise, double* scratch,
                      double* edged, Py_ssize_t* rows, double* out) noexcept nogil:
    """The slow signal of one star's rows ``mags[0:n]`` (time order) into ``out[0:n]``
    (0 where none or not measured); ``v``, ``smooth``, ``noise``, ``scratch``, ``edged``
    hold n doubles, ``rows`` n indices."""
    cdef Py_ssize_t i, g, k, ng = 0, half, h, j, best, start, lo, hi
    cdef double centre, sigma, base
    cdef bint core
    for i in range(n):
        out[i] = 0.0
        if isfinite(mags[i]):
            v[ng] = mags[i]
            rows[ng] = i
            ng += 1
    half = ((window if window < ng else ng) - 1) // 2
    if half < 1:
        return
    # point-to-point noise: 1.4826 MAD of the differences / sqrt(2), blind to slow changes
    for g in range(ng - 1):
        scratch[g] = v[g + 1] - v[g]
    centre = _median(scratch, ng - 1)
    for g in range(ng - 1):
        scratch[g] = fabs(v[g + 1] - v[g] - centre)
    sigma = 1.4826 * _median(scratch, ng - 1) / sqrt(2.0)
    # the running median as EPD smooths it (edges repeated): the values given, which
    # the signal must cancel in the EPD fit
    _running_median(v, ng, 2 * half + 1, scratch, edged)
    # ... and over the points within half of each (fewer at the ends: the same inside),
    # whose departures are tested against their noise 1.2533 sigma / sqrt(points)
    for g in range(ng):
        lo = g - half if g >= half else 0
        hi = g + half + 1 if g + half + 1 <= ng else ng
        noise[g] = 1.2533 * sigma / sqrt(<double>(hi - lo))
        if hi - lo == 2 * half + 1:
            smooth[g] = edged[g]
            continue
        for k in range(lo, hi):
            scratch[k - lo] = v[k]
        smooth[g] = _median(scratch, hi - lo)
    # the level: middle of the shortest interval holding half the smoothed values (the
    # star's most common level, not pulled by an eclipse covering up to half the night)
    memcpy(scratch, smooth, ng * sizeof(double))
    sort_doubles(scratch, ng)
    h = ng // 2 + 1
    best = 0
    for j in range(1, ng - h + 1):
        if scratch[j + h - 1] - scratch[j] < scratch[best + h - 1] - scratch[best]:
            best = j
    base = 0.5 * (scratch[best] + scratch[best + h - 1])
    g = 0
    while g < ng:  # runs beyond extend noise holding a point beyond clip noise
        if fabs(smooth[g] - base) <= extend * noise[g]:
            g += 1
            continue
        start = g
        core = False
        while g < ng and fabs(smooth[g] - base) > extend * noise[g]:
            core = core or fabs(smooth[g] - base) > clip * noise[g]
            g += 1
        if core:
            for j in range(start, g):
                out[rows[j]] = edged[j] - base


def own_signals(const double[::1] mags, const int64_t[::1] offsets, Py_ssize_t window,
                double clip, double extend, double[::1] out):
    """The slow signal of each of many stars (its rows ``offsets[s]:offsets[s + 1]`` of
    ``mags``, time order, NaN missing), in magnitudes.

    Over a star's measured rows, with h = (min(window, rows) - 1) // 2: the median of
    its magnitudes over the rows within h of each (fewer at the ends) departs from its
    level (the middle of the shortest interval holding half of those medians) on runs
    of rows by more than ``extend`` times that median's noise (1.2533 sigma /
    sqrt(points), sigma the point-to-point noise 1.4826 MAD(diff) / sqrt(2)); on the
    runs that somewhere depart by more than ``clip`` times it, the signal is the running
    median over 2 h + 1 rows as EPD smooths (scipy ``median_filter``, edges repeated)
    minus the level; 0 elsewhere, on missing rows and for stars with fewer than 3
    measured rows (or window < 3).
    mags float64 (N,); offsets int64 (nstars + 1,); out float64 (N,).
    """
    cdef Py_ssize_t nstars = offsets.shape[0] - 1, total = mags.shape[0], s, n, size, longest = 0
    cdef double* work
    cdef Py_ssize_t* rows
    if out.shape[0] != total:
        check(BAD_ARGUMENT, "own_signals: out must be as long as mags")
    if nstars < 0 or offsets[0] != 0 or offsets[nstars] != total:
        check(BAD_ARGUMENT, "own_signals: offsets must run from 0 to len(mags)")
    if window < 1 or not (0.0 <= extend <= clip):
        check(BAD_ARGUMENT, "own_signals: window >= 1 and 0 <= extend <= clip")
    for s in range(nstars):
        if offsets[s + 1] < offsets[s]:
            check(BAD_ARGUMENT, "own_signals: offsets must not decrease")
        longest = max(longest, offsets[s + 1] - offsets[s])
    size = max(longest, 1)
    work = <double*>malloc(5 * size * sizeof(double))
    rows = <Py_ssize_t*>malloc(size * sizeof(Py_ssize_t))
    try:
        if work == NULL or rows == NULL:
            check(NO_MEMORY, "own_signals: work space")
        with nogil:
            for s in range(nstars):
                n = offsets[s + 1] - offsets[s]
                if n:
                    _own_signal(&mags[offsets[s]], n, window, clip, extend, work, work + size,
                                work + 2 * size, work + 3 * size, work + 4 * size, rows,
                                &out[offsets[s]])
    finally:
        free(work)
        free(rows)
