"""What the CPU running trex can do (``trex.cpu`` chooses the kernels' build by it)."""

cdef extern from *:
    """
    static int trex_has_avx2(void) {
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") != 0;
    #else
        return 0;
    #endif
    }
    """
    int trex_has_avx2() nogil


def has_avx2() -> bool:
    """True when the CPU (and the operating system) support AVX2 instructions."""
    return trex_has_avx2() != 0
