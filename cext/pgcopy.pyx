# cython: language_level=3
"""PostgreSQL binary COPY row encoder (arrays in, bytes out; no I/O).

Each row is a 16-bit field count, then per field a 32-bit big-endian length
(-1 for NULL) and the big-endian value.  Columns arrive as they are stored in
numpy (no conversion copies): float64/float32 (NaN is NULL), signed integers
of 1-8 bytes, unsigned bytes or booleans, fixed-width bytes (``S``, UTF-8)
or fixed-width ASCII ``U`` (UCS-4) strings, each with an optional NULL mask.
The payload of rows ``start:stop`` is built in two passes over contiguous
columns: its exact size, then the rows, written straight into the bytes
object handed to the COPY.
"""
import numpy as np

from trex.kernels import check

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from kernels cimport BAD_ARGUMENT, NO_MEMORY

# target (PostgreSQL) type codes, in the order of trex.db.pgcopy.KINDS
cdef enum:
    F8 = 0
    F4 = 1
    I8 = 2
    I4 = 3
    I2 = 4
    BOOL = 5
    TEXT = 6

# source (numpy) storage codes
cdef enum:
    SRC_FLOAT = 0   # float64 or float32 (by itemsize)
    SRC_INT = 1     # signed integer of itemsize bytes
    SRC_UINT = 2    # unsigned byte or boolean
    SRC_BYTES = 3   # numpy S, itemsize bytes, trailing NULs are padding
    SRC_UCS4 = 4    # numpy U, itemsize / 4 code points, all < 128

cdef int[7] WIDTH = [8, 4, 8, 4, 2, 1, 0]


ctypedef struct Column:
    const uint8_t* data
    const uint8_t* nulls   # NULL when the column has no mask
    Py_ssize_t itemsize
    int source
    int kind


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


cdef inline double get_float(const Column* c, Py_ssize_t i) noexcept nogil:
    if c.itemsize == 8:
        return (<const double*>c.data)[i]
    return (<const float*>c.data)[i]


cdef inline int64_t get_int(const Column* c, Py_ssize_t i) noexcept nogil:
    if c.source == SRC_UINT:
        return c.data[i]
    if c.itemsize == 8:
        return (<const int64_t*>c.data)[i]
    if c.itemsize == 4:
        return (<const int32_t*>c.data)[i]
    if c.itemsize == 2:
        return (<const int16_t*>c.data)[i]
    return (<const int8_t*>c.data)[i]


cdef inline Py_ssize_t text_length(const Column* c, Py_ssize_t i) noexcept nogil:
    """Bytes of value ``i`` of a text column (UCS-4: code points, all ASCII)."""
    cdef Py_ssize_t n
    cdef const uint8_t* b
    cdef const uint32_t* u
    if c.source == SRC_BYTES:
        b = c.data + i * c.itemsize
        n = c.itemsize
        while n > 0 and b[n - 1] == 0:
            n -= 1
        return n
    u = <const uint32_t*>(c.data + i * c.itemsize)
    n = c.itemsize // 4
    while n > 0 and u[n - 1] == 0:
        n -= 1
    return n


cdef inline bint is_null(const Column* c, Py_ssize_t i) noexcept nogil:
    cdef double v
    if c.nulls != NULL and c.nulls[i]:
        return True
    if c.source == SRC_FLOAT and c.kind != TEXT:
        v = get_float(c, i)
        return v != v
    return False


def encode_rows(list columns, list nulls, const int[::1] kinds, Py_ssize_t start,
                Py_ssize_t stop, bytes header=b"", bytes trailer=b""):
    """Binary COPY payload: ``header``, rows ``start:stop``, ``trailer``.

    Parameters
    ----------
    columns : list of C-contiguous 1-d numpy arrays, all of the same length:
        float64/float32, int8-int64, uint8/bool, ``S`` (UTF-8) or ``U`` (ASCII only).
    nulls : list (one per column) of None or a uint8/bool array, 1 where NULL
        (float values that are NaN are NULL without a mask).
    kinds : int32, shape (ncols,): PostgreSQL type code of each column (F8..TEXT).
    start, stop : the rows to encode.

    Returns
    -------
    bytes
    """
    cdef Py_ssize_t ncols = len(columns), j
    cdef uint8_t* p
    cdef Py_ssize_t nrows = max(stop - start, 0)
    cdef Py_ssize_t nhead = len(header), ntrail = len(trailer)
    cdef int64_t total = nhead + ntrail + 2 * nrows
    cdef Column* cols = <Column*>PyMem_Malloc(max(ncols, 1) * sizeof(Column))
    cdef const uint8_t[::1] view
    keep = []  # the buffers the raw pointers point into
    if cols == NULL:
        check(NO_MEMORY, "copy encoder: no memory for the column table")
    try:
        for j in range(ncols):
            array = columns[j]
            cols[j].itemsize = array.dtype.itemsize
            cols[j].kind = kinds[j]
            cols[j].source = _source(array.dtype)
            view = array.view(np.uint8).reshape(-1) if array.size else np.zeros(1, np.uint8)
            keep.append(view)
            cols[j].data = &view[0]
            cols[j].nulls = NULL
            if nulls[j] is not None:
                view = nulls[j].view(np.uint8) if len(nulls[j]) else np.zeros(1, np.uint8)
                keep.append(view)
                cols[j].nulls = &view[0]
        with nogil:
            for j in range(ncols):
                total += _column_bytes(&cols[j], start, stop)
        out = PyBytes_FromStringAndSize(NULL, total)
        p = <uint8_t*>PyBytes_AS_STRING(out)
        memcpy(p, <const char*>header, nhead)
        memcpy(p + total - ntrail, <const char*>trailer, ntrail)
        with nogil:
            _fill(p + nhead, cols, ncols, start, stop)
        return out
    finally:
        PyMem_Free(cols)


cdef int _source(dtype) except -1:
    if dtype.kind == "f" and dtype.itemsize in (4, 8):
        return SRC_FLOAT
    if dtype.kind == "i" and dtype.itemsize in (1, 2, 4, 8):
        return SRC_INT
    if dtype.kind in "ub" and dtype.itemsize == 1:
        return SRC_UINT
    if dtype.kind == "S":
        return SRC_BYTES
    if dtype.kind == "U":
        return SRC_UCS4
    check(BAD_ARGUMENT, f"copy encoder: no binary COPY encoding of numpy {dtype}")
    return -1


cdef int64_t _column_bytes(const Column* c, Py_ssize_t start, Py_ssize_t stop) noexcept nogil:
    """Bytes of the column's fields (length words included) in rows ``start:stop``."""
    cdef int64_t total = 4 * (stop - start)
    cdef Py_ssize_t i
    for i in range(start, stop):
        if not is_null(c, i):
            total += text_length(c, i) if c.kind == TEXT else WIDTH[c.kind]
    return total


cdef void _fill(uint8_t* p, const Column* cols, Py_ssize_t ncols, Py_ssize_t start,
                Py_ssize_t stop) noexcept nogil:
    cdef Py_ssize_t i, j, k, n
    cdef const Column* c
    cdef double dv
    cdef float fv
    cdef uint64_t bits64
    cdef uint32_t bits32
    cdef const uint32_t* ucs
    for i in range(start, stop):
        p = put16(p, <uint16_t>ncols)
        for j in range(ncols):
            c = &cols[j]
            if is_null(c, i):
                p = put32(p, 0xffffffffU)
                continue
            if c.kind == F8:
                dv = get_float(c, i) if c.source == SRC_FLOAT else <double>get_int(c, i)
                memcpy(&bits64, &dv, 8)
                p = put32(p, 8)
                p = put64(p, bits64)
            elif c.kind == F4:
                fv = <float>get_float(c, i) if c.source == SRC_FLOAT else <float>get_int(c, i)
                memcpy(&bits32, &fv, 4)
                p = put32(p, 4)
                p = put32(p, bits32)
            elif c.kind == I8:
                p = put32(p, 8)
                p = put64(p, <uint64_t>get_int(c, i))
            elif c.kind == I4:
                p = put32(p, 4)
                p = put32(p, <uint32_t>(<int32_t>get_int(c, i)))
            elif c.kind == I2:
                p = put32(p, 2)
                p = put16(p, <uint16_t>(<int16_t>get_int(c, i)))
            elif c.kind == BOOL:
                p = put32(p, 1)
                p[0] = 1 if get_int(c, i) else 0
                p += 1
            else:
                n = text_length(c, i)
                p = put32(p, <uint32_t>n)
                if c.source == SRC_BYTES:
                    memcpy(p, c.data + i * c.itemsize, n)
                else:
                    ucs = <const uint32_t*>(c.data + i * c.itemsize)
                    for k in range(n):
                        p[k] = <uint8_t>ucs[k]
                p += n
