# cython: language_level=3
"""Rice decoding of a tile-compressed FITS image (``ZCMPTYPE = 'RICE_1'``): every
tile of one image in one call, into the caller's array.

No I/O, no globals, no logging.  The coding is that of the FITS tiled image
convention (Pence, Seaman & White 2009; Rice coding as in White & Greenfield
1999), for integers of ``bytepix`` = 1, 2 or 4 bytes.  A tile's bytes open with
its first value (``bytepix`` bytes, big-endian, not coded); then come blocks of
``blocksize`` values, read most significant bit first, each opening with a code
of ``fsbits`` = 3, 4 or 5 bits:

* 0: every difference in the block is zero;
* ``fsmax + 1`` (6, 14 or 25, plus 1): each difference follows in 8 ``bytepix`` bits;
* else k = code - 1: each difference is a quotient in unary (as many 0 bits,
  closed by a 1) and k low bits: ``quotient << k | low``.

A difference is zig-zag mapped (even 2m is m, odd 2m + 1 is -(m + 1)) and adds to
the previous value modulo 2^(8 bytepix); the values are then the FITS integers
(signed for 2 and 4 bytes, unsigned for 1).
"""
from libc.stdint cimport uint8_t, int16_t, int32_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, free
from kernels cimport OK, BAD_ARGUMENT, NO_MEMORY, BAD_INPUT, pixel_t
from trex.kernels import check

cdef extern from *:
    """
    static inline int trex_clz64(unsigned long long x) { return __builtin_clzll(x); }
    """
    int trex_clz64(unsigned long long x) noexcept nogil


cdef struct Bits:
    const uint8_t* data   # the tile's bytes
    Py_ssize_t size       # how many
    Py_ssize_t pos        # bytes moved into acc (past size: zeros, and counted)
    uint64_t acc          # the next bits, the first of them the highest
    int n                 # bits held in acc


cdef inline void refill(Bits* b) noexcept nogil:
    """At least 57 bits in acc (zero bytes past the tile)."""
    while b.n <= 56:
        if b.pos < b.size:
            b.acc |= (<uint64_t>b.data[b.pos]) << (56 - b.n)
        b.pos += 1
        b.n += 8


cdef inline uint32_t take(Bits* b, int k) noexcept nogil:
    """The next k bits (1 <= k <= 32) as a number."""
    cdef uint32_t v
    refill(b)
    v = <uint32_t>(b.acc >> (64 - k))
    b.acc <<= k
    b.n -= k
    return v


cdef inline uint32_t zeros(Bits* b) noexcept nogil:
    """Count the 0 bits before the next 1 bit and consume them and the 1 (at most
    what is left of the tile, then the count is past it)."""
    cdef uint32_t count = 0
    cdef int z
    while True:
        refill(b)
        if b.acc == 0:
            count += b.n
            b.n = 0
            if b.pos > b.size + 8:
                return count
            continue
        z = trex_clz64(b.acc)
        b.acc <<= z
        b.acc <<= 1
        b.n -= z + 1
        return count + z


cdef int decode_tile(const uint8_t* data, Py_ssize_t size, uint32_t* out, Py_ssize_t n,
                     int bytepix, int blocksize) noexcept nogil:
    """The n values of one tile into out (modulo 2^(8 bytepix)); BAD_INPUT when
    the bytes end before the values do."""
    cdef int fsbits = 3 if bytepix == 1 else (4 if bytepix == 2 else 5)
    cdef int fsmax = 6 if bytepix == 1 else (14 if bytepix == 2 else 25)
    cdef int bbits = 8 * bytepix, code, k, j
    cdef uint32_t mask = 0xFFFFFFFF if bytepix == 4 else ((<uint32_t>1 << bbits) - 1)
    cdef uint32_t last = 0, diff
    cdef Py_ssize_t i = 0, end
    cdef Bits b
    if size < bytepix:
        return BAD_INPUT
    for j in range(bytepix):
        last = (last << 8) | data[j]
    b.data = data + bytepix
    b.size = size - bytepix
    b.pos = 0
    b.acc = 0
    b.n = 0
    while i < n:
        code = <int>take(&b, fsbits)
        end = min(i + blocksize, n)
        if code == 0:
            while i < end:
                out[i] = last
                i += 1
        else:
            k = code - 1
            while i < end:
                if k == fsmax:
                    diff = take(&b, bbits)
                elif k == 0:
                    diff = zeros(&b)
                else:
                    diff = zeros(&b) << k
                    diff |= take(&b, k)
                diff = (diff >> 1) if (diff & 1) == 0 else ~(diff >> 1)
                last = (last + diff) & mask
                out[i] = last
                i += 1
        if 8 * b.pos - b.n > 8 * b.size:  # bits used beyond the tile
            return BAD_INPUT
    return OK


cdef inline double as_integer(uint32_t v, int bytepix) noexcept nogil:
    """The FITS integer of a decoded value: signed for 2 and 4 bytes, unsigned for 1."""
    if bytepix == 2:
        return <double><int16_t>v
    if bytepix == 4:
        return <double><int32_t>v
    return <double>v


def decode_image(const uint8_t[::1] heap, const int64_t[::1] offsets,
                 const int64_t[::1] sizes, Py_ssize_t tile_x, Py_ssize_t tile_y,
                 int bytepix, int blocksize, double zero, pixel_t[:, ::1] out):
    """Decode every tile of a Rice-compressed image into ``out`` (GIL released).

    Parameters
    ----------
    heap : uint8 (nbytes,), the binary table's heap.
    offsets, sizes : int64 (ntiles,), each tile's bytes in the heap (its
        COMPRESSED_DATA descriptor), tiles in FITS order (the first axis fastest).
    tile_x, tile_y : tile size, px (ZTILE1, ZTILE2); edge tiles are cut by the image.
    bytepix : 1, 2 or 4 bytes per value (ZVAL of BYTEPIX); blocksize : values per
        coding block (ZVAL of BLOCKSIZE, 32 by default).
    zero : added to every value (BZERO), ADU.
    out : float32 or float64 (ny, nx), written: the integer values plus ``zero``.

    Raises ValueError for arguments outside this contract and FrameError when a
    tile's bytes end before its values (a corrupt or truncated file).
    """
    cdef Py_ssize_t ny = out.shape[0], nx = out.shape[1], ntiles, across, t, x0, y0, w, h, i, j
    cdef uint32_t* values
    cdef int status = OK
    if tile_x < 1 or tile_y < 1 or bytepix not in (1, 2, 4) or blocksize < 1:
        check(BAD_ARGUMENT, "decode_image: tiles, bytepix or blocksize out of range")
    across = (nx + tile_x - 1) // tile_x
    ntiles = across * ((ny + tile_y - 1) // tile_y)
    if offsets.shape[0] != ntiles or sizes.shape[0] != ntiles:
        check(BAD_ARGUMENT, f"decode_image: {ntiles} tiles need as many offsets and sizes")
    for t in range(ntiles):
        if offsets[t] < 0 or sizes[t] < 0 or offsets[t] + sizes[t] > heap.shape[0]:
            check(BAD_INPUT, f"Rice tile {t + 1} lies beyond the heap (truncated or corrupt)")
    # a tile holds at most min(tile, image) values a side (ZTILE may exceed the image)
    values = <uint32_t*>malloc(max(min(tile_x, nx) * min(tile_y, ny), 1) * sizeof(uint32_t))
    if values == NULL:
        check(NO_MEMORY, "decode_image: no memory for a tile")
    try:
        with nogil:
            for t in range(ntiles):
                x0 = (t % across) * tile_x
                y0 = (t // across) * tile_y
                w = min(tile_x, nx - x0)
                h = min(tile_y, ny - y0)
                status = decode_tile(&heap[offsets[t]] if sizes[t] else NULL, sizes[t], values,
                                     w * h, bytepix, blocksize)
                if status != OK:
                    break
                for j in range(h):
                    for i in range(w):
                        out[y0 + j, x0 + i] = <pixel_t>(as_integer(values[j * w + i], bytepix)
                                                        + zero)
        if status != OK:
            check(status, f"Rice tile {t + 1}: its bytes end before its "
                          f"{w * h} values (truncated or corrupt)")
    finally:
        free(values)
