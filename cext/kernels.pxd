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
