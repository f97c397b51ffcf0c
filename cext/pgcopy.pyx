# cython: language_level=3
"""PostgreSQL binary COPY row encoder (arrays in, bytes out; no I/O).

Each row is a 16-bit field count, then per field a 32-bit big-endian length
(-1 for NULL) and the big-endian value.  Numeric columns arrive as float64 or
int64 arrays with a per-column type code; text columns as a fixed-width bytes
array (numpy ``S``) with the length of each value.
"""
import numpy as np

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

# type codes, in the order of trex.db.pgcopy.KINDS
cdef enum:
    F8 = 0
    F4 = 1
    I8 = 2
    I4 = 3
    I2 = 4
    BOOL = 5
    TEXT = 6

cdef int[7] WIDTH = [8, 4, 8, 4, 2, 1, 0]


cdef inline uint8_t* put16(uint8_t* p, uint16_t v) noexcept nogil:
    p[0] = v >> 8
    p[1] = v & 0xff
    return p + 2


cdef inline uint8_t* put32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = v >> 24
    p[1] = (v >> 16) & 0xff
    p[2] = (v >> 8) & 0xff
    p[3] = v & 0xff
    return p + 4


cdef inline uint8_t* put64(uint8_t* p, uint64_t v) noexcept nogil:
    p = put32(p, <uint32_t>(v >> 32))
    return put32(p, <uint32_t>(v & 0xffffffffU))


def encode_rows(const double[:, ::1] floats, const int64_t[:, ::1] ints,
                const uint8_t[:, ::1] nulls, const int[::1] kinds,
                const int[::1] slots, list texts, list text_lengths,
                bytes header=b"", bytes trailer=b""):
    """Binary COPY payload: ``header``, the rows, ``trailer``.

    Parameters
    ----------
    floats : float64, shape (nfloat, nrows): values of the float columns.
    ints : int64, shape (nint, nrows): values of the integer/boolean columns.
    nulls : uint8, shape (ncols, nrows): 1 where the value is NULL.
    kinds : int32, shape (ncols,): type code of each column (F8..TEXT).
    slots : int32, shape (ncols,): row of ``floats``/``ints`` or index into
        ``texts`` holding each column.
    texts : list of numpy ``S`` arrays (nrows,), the text columns, UTF-8.
    text_lengths : list of int32 arrays (nrows,), byte length of each text value.

    Returns
    -------
    bytearray
    """
    cdef Py_ssize_t ncols = kinds.shape[0], nrows = nulls.shape[1], i, j, k
    cdef int64_t total = 0
    cdef int kind
    cdef Py_ssize_t ntext = len(texts)
    cdef const uint8_t** tptr = NULL
    cdef Py_ssize_t* twidth = NULL
    cdef const int** tlen = NULL
    cdef const uint8_t[::1] tview
    cdef const int[::1] lview
    cdef unsigned char[::1] outview
    cdef Py_ssize_t nhead
    keep = []  # holds the buffers the raw pointers point into
    tarrays = [np.ascontiguousarray(t) for t in texts]
    larrays = [np.ascontiguousarray(n, dtype=np.int32) for n in text_lengths]
    tptr = <const uint8_t**>PyMem_Malloc(max(ntext, 1) * sizeof(void*))
    twidth = <Py_ssize_t*>PyMem_Malloc(max(ntext, 1) * sizeof(Py_ssize_t))
    tlen = <const int**>PyMem_Malloc(max(ntext, 1) * sizeof(void*))
    try:
        for k in range(ntext):
            twidth[k] = tarrays[k].dtype.itemsize
            tview = tarrays[k].view(np.uint8).ravel() if twidth[k] else np.zeros(1, np.uint8)
            lview = larrays[k]
            keep.append((tview, lview))
            tptr[k] = &tview[0]
            tlen[k] = &lview[0]
        # size of the payload
        nhead = len(header)
        total = nrows * 2 + nhead + len(trailer)
        with nogil:
            for j in range(ncols):
                kind = kinds[j]
                for i in range(nrows):
                    total += 4
                    if not nulls[j, i]:
                        total += tlen[slots[j]][i] if kind == TEXT else WIDTH[kind]
        out = bytearray(total)
        out[:len(header)] = header
        out[total - len(trailer):] = trailer
        outview = out
        with nogil:
            _fill(outview, nhead, floats, ints, nulls, kinds, slots, tptr, twidth, tlen,
                  nrows, ncols)
        return out
    finally:
        PyMem_Free(tptr)
        PyMem_Free(twidth)
        PyMem_Free(tlen)


cdef void _fill(unsigned char[::1] out, Py_ssize_t start, const double[:, ::1] floats, const int64_t[:, ::1] ints,
                const uint8_t[:, ::1] nulls, const int[::1] kinds, const int[::1] slots,
                const uint8_t** tptr, Py_ssize_t* twidth, const int** tlen,
                Py_ssize_t nrows, Py_ssize_t ncols) noexcept nogil:
    cdef uint8_t* p = &out[start]
    cdef Py_ssize_t i, j
    cdef int kind, slot, n
    cdef double dv
    cdef float fv
    cdef int64_t iv
    for i in range(nrows):
        p = put16(p, <uint16_t>ncols)
        for j in range(ncols):
            if nulls[j, i]:
                p = put32(p, 0xffffffffU)
                continue
            kind = kinds[j]
            slot = slots[j]
            if kind == F8:
                dv = floats[slot, i]
                p = put32(p, 8)
                p = put64(p, (<uint64_t*>&dv)[0])
            elif kind == F4:
                fv = <float>floats[slot, i]
                p = put32(p, 4)
                p = put32(p, (<uint32_t*>&fv)[0])
            elif kind == I8:
                iv = ints[slot, i]
                p = put32(p, 8)
                p = put64(p, <uint64_t>iv)
            elif kind == I4:
                p = put32(p, 4)
                p = put32(p, <uint32_t>(<int>ints[slot, i]))
            elif kind == I2:
                p = put32(p, 2)
                p = put16(p, <uint16_t>(<short>ints[slot, i]))
            elif kind == BOOL:
                p = put32(p, 1)
                p[0] = 1 if ints[slot, i] else 0
                p += 1
            else:
                n = tlen[slot][i]
                p = put32(p, <uint32_t>n)
                memcpy(p, tptr[slot] + i * twidth[slot], n)
                p += n
