# The contract of trex's Cython kernels, cimported by every cext/*.pyx.
#
# * A kernel is arrays in, caller-allocated arrays out: typed memoryviews,
#   C-contiguous unless said otherwise, no I/O, logging, globals or database.
# * Its Python entry (a ``def``) checks the arguments and reports a failure as
#   a Status through ``trex.kernels.check(status, what)``, the one function
#   that turns a status into an exception; ``nogil`` code never raises: it
#   returns a Status (or fills outputs only).
# * Flag bits are arguments taken from ``trex/flags.py``, never literals here.
# * Units are in each entry's docstring (ADU, px, s).
#
# Keep the Status values in step with trex/kernels.py (tests/test_kernels.py
# compares them).

from libc.stdlib cimport qsort

cdef enum Status:
    OK = 0
    BAD_ARGUMENT = 1   # shapes, lengths or values outside the entry's contract -> ValueError
    NO_MEMORY = 2      # a work buffer could not be allocated -> MemoryError
    BAD_INPUT = 3      # the data cannot be used (input-caused) -> FrameError

# image pixels: float32 frames and float64 arrays go through the same kernel
ctypedef fused pixel_t:
    float
    double

cdef extern from *:
    """
    static int trex_cmp_double(const void *a, const void *b) {
        double x = *(const double *)a, y = *(const double *)b;
        return (x > y) - (x < y);
    }
    """
    int trex_cmp_double(const void *a, const void *b) noexcept nogil


cdef inline void sort_doubles(double* a, Py_ssize_t n) noexcept nogil:
    """Sort a[:n] in place (ascending; NaN-free values)."""
    qsort(a, n, sizeof(double), trex_cmp_double)


cdef inline void sort_small(double* a, Py_ssize_t n) noexcept nogil:
    """Sort a[:n] in place: insertion sort for the short arrays of windows and
    annuli, ``sort_doubles`` above 24 values."""
    cdef Py_ssize_t i, j
    cdef double v
    if n > 24:
        sort_doubles(a, n)
        return
    for i in range(1, n):
        v = a[i]
        j = i - 1
        while j >= 0 and a[j] > v:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = v


cdef inline pixel_t select_kth(pixel_t* a, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """The k-th smallest of a[:n] (quickselect with a median-of-three pivot; a is
    reordered so that a[:k] <= a[k] <= a[k+1:n])."""
    cdef Py_ssize_t lo = 0, hi = n - 1, i, j, m
    cdef pixel_t p, t
    while hi > lo:
        m = lo + (hi - lo) // 2
        if a[m] < a[lo]:
            t = a[m]; a[m] = a[lo]; a[lo] = t
        if a[hi] < a[lo]:
            t = a[hi]; a[hi] = a[lo]; a[lo] = t
        if a[hi] < a[m]:
            t = a[hi]; a[hi] = a[m]; a[m] = t
        p = a[m]
        i = lo
        j = hi
        while i <= j:
            while a[i] < p:
                i += 1
            while a[j] > p:
                j -= 1
            if i <= j:
                t = a[i]; a[i] = a[j]; a[j] = t
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    return a[k]
