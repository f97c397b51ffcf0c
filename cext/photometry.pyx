# cython: language_level=3
"""Forced aperture photometry kernel: all stars of a frame in one call.

No I/O, no globals, no logging.  Geometry (0-based, pixel centres at
integers, as numpy/sep/photutils): pixel (j, i) is the square
[i - 0.5, i + 0.5] x [j - 0.5, j + 0.5].

Aperture weights are the exact areas of overlap of each pixel square with
each circle.  They come from the signed corner function

    C(X, Y) = area of the circle (centre 0, radius r) inside the rectangle
              with opposite corners (0, 0) and (X, Y), times sign(X) sign(Y),

evaluated once per pixel corner and radius; the overlap of the square
[x0, x1] x [y0, y1] is C(x1, y1) - C(x0, y1) - C(x1, y0) + C(x0, y0).  Every
pixel of the star's largest aperture is read once and feeds all radii.

Sky pixels are those whose centres lie at r_in <= d < r_out from the star,
read once per star; masked, non-finite or saturated ones and those within
``excl_radius`` of a neighbouring star (CSR lists) are left out.  The sky is
found by iterative sigma clipping around the median, then taken as the mean,
the median or the mode 3 median - 2 mean of the values kept; medians are
exact rank queries on a histogram of the annulus (photometry_sky.pxi), so
the annulus is never sorted.  An annulus partly off the frame gives its sky
from the on-frame part; one with fewer usable pixels than ``min_sky`` (near
a corner, crowded, masked) takes the caller's local background-map value
when it is finite.  Stars are measured in a caller-given order.
"""
from libc.math cimport sqrt, asin, copysign, fabs, floor, ceil, isfinite, NAN, INFINITY, M_PI
from libc.stdlib cimport malloc, free
from libc.string cimport memset
from libc.stdint cimport uint8_t, int32_t, int64_t
from kernels cimport BAD_ARGUMENT, NO_MEMORY, pixel_t, sort_doubles
from trex.kernels import check

cdef enum:
    # sky estimators (values of ``sky_method``)
    SKY_MEAN = 0
    SKY_MEDIAN = 1
    SKY_MODE = 2
    # positions of the flag bits in the ``bits`` argument
    B_OFF = 0
    B_MASKED = 1
    B_SAT = 2
    B_FEWSKY = 3
    B_CROWDED = 4
    B_PARTIAL = 5
    B_MAP = 6
    NBITS = 7


cdef void corner_table(double* table, double* work, Py_ssize_t cw, Py_ssize_t ch,
                       double x0, double y0, double r) noexcept nogil:
    """table[j * cw + i] = C(x0 + i, y0 + j) for the circle of radius r (see top).

    For a corner outside the circle, with X' = min(|X|, r), Y' = min(|Y|, r),

        |C| = (X' sqrt(r^2 - X'^2) + Y' sqrt(r^2 - Y'^2)
               + r^2 (asin(X'/r) + asin(Y'/r) - pi/2)) / 2,

    a sum of a column term and a row term: one asin per grid line, not per corner,
    and none for a line beyond r (X' = r: the terms r^2 pi/2 and 0, as asin(1) is
    pi/2 in double precision).
    """
    cdef Py_ssize_t i, j
    cdef double X, Y, xa, ya, rowterm
    cdef double* colterm = work
    for i in range(cw):
        xa = fabs(x0 + i)
        if xa >= r:
            colterm[i] = r * r * (0.5 * M_PI)
        else:
            colterm[i] = xa * sqrt(r * r - xa * xa) + r * r * asin(xa / r)
    for j in range(ch):
        Y = y0 + j
        ya = fabs(Y)
        if ya >= r:
            rowterm = 0.0
        else:
            rowterm = ya * sqrt(r * r - ya * ya) + r * r * (asin(ya / r) - 0.5 * M_PI)
        for i in range(cw):
            X = x0 + i
            if X * X + Y * Y <= r * r:
                table[j * cw + i] = X * Y
            else:
                table[j * cw + i] = copysign(0.5 * (colterm[i] + rowterm), X * Y)


include "photometry_sky.pxi"


cdef void mark_neighbours(uint8_t* stamp, Py_ssize_t sw, Py_ssize_t ix0,
                          Py_ssize_t iy0, const double[::1] x, const double[::1] y,
                          const int64_t[::1] nb_ptr, const int64_t[::1] nb_idx,
                          Py_ssize_t star, double rex) noexcept nogil:
    """Set stamp pixels (sw x sw, origin ix0, iy0) within rex of star's neighbours."""
    cdef Py_ssize_t k, nb, i, j, i0, i1, j0, j1
    cdef double nx, ny, dx, dy
    for k in range(nb_ptr[star], nb_ptr[star + 1]):
        nb = nb_idx[k]
        nx = x[nb]
        ny = y[nb]
        if not (isfinite(nx) and isfinite(ny)):
            continue
        j0 = max(<Py_ssize_t>ceil(ny - rex) - iy0, 0)
        j1 = min(<Py_ssize_t>floor(ny + rex) - iy0, sw - 1)
        i0 = max(<Py_ssize_t>ceil(nx - rex) - ix0, 0)
        i1 = min(<Py_ssize_t>floor(nx + rex) - ix0, sw - 1)
        for j in range(j0, j1 + 1):
            dy = j + iy0 - ny
            for i in range(i0, i1 + 1):
                dx = i + ix0 - nx
                if dx * dx + dy * dy <= rex * rex:
                    stamp[j * sw + i] = 1


cdef inline void chord(double xc, double dy2, double rr, Py_ssize_t* ia,
                       Py_ssize_t* ib) noexcept nogil:
    """Columns [ia, ib] of the row at squared offset dy2 with (i - xc)^2 + dy2 < rr."""
    cdef double half = sqrt(max(rr - dy2, 0.0))
    ia[0] = <Py_ssize_t>ceil(xc - half)
    ib[0] = <Py_ssize_t>floor(xc + half)
    # settle the rounding of sqrt with the exact test
    while (ia[0] - 1 - xc) ** 2 + dy2 < rr:
        ia[0] -= 1
    while ia[0] <= ib[0] and (ia[0] - xc) ** 2 + dy2 >= rr:
        ia[0] += 1
    while (ib[0] + 1 - xc) ** 2 + dy2 < rr:
        ib[0] += 1
    while ib[0] >= ia[0] and (ib[0] - xc) ** 2 + dy2 >= rr:
        ib[0] -= 1


cdef Py_ssize_t gather_run(const pixel_t[:, ::1] image, const uint8_t[:, ::1] mask,
                           bint use_mask, Py_ssize_t j, Py_ssize_t ia, Py_ssize_t ib,
                           double saturation, const uint8_t* stamp_row, bint crowded,
                           double* buf, Py_ssize_t n, Py_ssize_t* ntotal, Py_ssize_t* nexcl,
                           bint* off) noexcept nogil:
    """Append the usable pixels of row j, columns [ia, ib], to buf[n:]; returns the new n."""
    cdef Py_ssize_t i
    cdef double v
    if ib < ia:
        return n
    if j < 0 or j >= image.shape[0] or ia < 0 or ib >= image.shape[1]:
        off[0] = True
        if j < 0 or j >= image.shape[0]:
            return n
        ia = max(ia, 0)
        ib = min(ib, image.shape[1] - 1)
    ntotal[0] += ib - ia + 1
    for i in range(ia, ib + 1):
        if crowded and stamp_row[i]:
            nexcl[0] += 1
            continue
        v = image[j, i]
        buf[n] = v
        n += isfinite(v) and v < saturation and not (use_mask and mask[j, i])
    return n


cdef Py_ssize_t gather_sky(const pixel_t[:, ::1] image, const uint8_t[:, ::1] mask,
                           bint use_mask, double xc, double yc, double r_in, double r_out,
                           double saturation, const uint8_t* stamp, bint crowded,
                           Py_ssize_t sw, Py_ssize_t ix0, Py_ssize_t iy0, double* buf,
                           Py_ssize_t* ntotal, Py_ssize_t* nexcl, bint* off) noexcept nogil:
    """Copy the usable annulus pixels into buf, row by row; returns their number.

    ntotal counts the annulus pixels on the frame, nexcl those left out around
    neighbours (stamp, sw columns from ix0, rows from iy0); off is set when
    part of the annulus is off the frame.
    """
    cdef Py_ssize_t j, ia, ib, ka, kb, n = 0
    cdef double dy2
    cdef const uint8_t* row = stamp
    ntotal[0] = 0
    nexcl[0] = 0
    for j in range(iy0, <Py_ssize_t>floor(yc + r_out) + 1):
        dy2 = (j - yc) * (j - yc)
        chord(xc, dy2, r_out * r_out, &ia, &ib)
        if crowded:
            row = stamp + (j - iy0) * sw - ix0
        if dy2 < r_in * r_in:
            chord(xc, dy2, r_in * r_in, &ka, &kb)
            n = gather_run(image, mask, use_mask, j, ia, ka - 1, saturation, row, crowded,
                           buf, n, ntotal, nexcl, off)
            ia = max(ia, kb + 1)
        n = gather_run(image, mask, use_mask, j, ia, ib, saturation, row, crowded, buf, n,
                       ntotal, nexcl, off)
    return n


cdef inline int pixel_state(const pixel_t[:, ::1] image, const uint8_t[:, ::1] mask,
                            bint use_mask, Py_ssize_t j, Py_ssize_t i, double saturation,
                            double* v) noexcept nogil:
    """0 usable, 1 off frame, 2 masked or non-finite, 4 saturated; the value in v."""
    if j < 0 or j >= image.shape[0] or i < 0 or i >= image.shape[1]:
        return 1
    v[0] = image[j, i]
    if (use_mask and mask[j, i]) or not isfinite(v[0]):
        return 2
    return 4 if v[0] >= saturation else 0


cdef void aperture_sums(const pixel_t[:, ::1] image, const uint8_t[:, ::1] mask,
                        bint use_mask, double xc, double yc, const double* radii,
                        Py_ssize_t nr, double saturation, double* corners, double* sums,
                        double* areas, int* bad) noexcept nogil:
    """Exact-overlap sums of all radii in one pass over the largest aperture.

    Writes sums[k] = sum a_k p and areas[k] = sum a_k over usable pixels and
    ORs into bad[k] the pixel_state of every pixel with a_k > 0.  Pixels
    wholly inside (outside) a circle have a = 1 (0); the others take their
    area from the corner table of the circle.
    """
    cdef double rmax = radii[nr - 1], v = 0.0, a, r, dx, dy, near2, far2
    cdef Py_ssize_t i0 = <Py_ssize_t>floor(xc - rmax - 0.5) + 1
    cdef Py_ssize_t i1 = <Py_ssize_t>ceil(xc + rmax + 0.5) - 1
    cdef Py_ssize_t j0 = <Py_ssize_t>floor(yc - rmax - 0.5) + 1
    cdef Py_ssize_t j1 = <Py_ssize_t>ceil(yc + rmax + 0.5) - 1
    cdef Py_ssize_t cw = i1 - i0 + 2, cn = cw * (j1 - j0 + 2)
    cdef Py_ssize_t i, j, k, c
    cdef double* t
    cdef int why
    for k in range(nr):
        sums[k] = 0.0
        areas[k] = 0.0
        bad[k] = 0
        corner_table(corners + k * cn, corners + nr * cn, cw, j1 - j0 + 2,
                     i0 - 0.5 - xc, j0 - 0.5 - yc, radii[k])
    for j in range(j0, j1 + 1):
        dy = j - yc
        for i in range(i0, i1 + 1):
            dx = i - xc
            near2 = max(fabs(dx) - 0.5, 0.0) ** 2 + max(fabs(dy) - 0.5, 0.0) ** 2
            if near2 >= rmax * rmax:
                continue
            far2 = (fabs(dx) + 0.5) ** 2 + (fabs(dy) + 0.5) ** 2
            why = pixel_state(image, mask, use_mask, j, i, saturation, &v)
            c = (j - j0) * cw + i - i0
            for k in range(nr - 1, -1, -1):
                r = radii[k]
                if near2 >= r * r:
                    break
                if far2 <= r * r:
                    a = 1.0
                else:
                    t = corners + k * cn
                    a = t[c + cw + 1] - t[c + cw] - t[c + 1] + t[c]
                    if a <= 0.0:
                        continue
                bad[k] |= why
                if why & 3:
                    continue
                sums[k] += a * v
                areas[k] += a


cdef struct Settings:
    const double* radii
    Py_ssize_t nr
    double r_in, r_out, excl_radius, sky_sigma, saturation
    int sky_iters, sky_method, min_sky, map_nsky
    bint use_mask
    const int32_t* bits
    const double* map_sky
    const double* map_sigma


cdef struct Work:
    Py_ssize_t sw          # side of the annulus stamp, px
    double* buf            # sky values, sw * sw
    uint8_t* stamp         # pixels near neighbours, sw * sw
    double* corners        # corner tables, (nr * cw + 1) * cw
    double* sums           # 2 * nr: sums, then areas
    int* bad               # nr
    RankIndex h


cdef int measure_star(const pixel_t[:, ::1] image, const uint8_t[:, ::1] mask,
                      const double[::1] x, const double[::1] y, const int64_t[::1] nb_ptr,
                      const int64_t[::1] nb_idx, Py_ssize_t s, const Settings* p, Work* w,
                      double* sky, double* sd, int32_t* nsky) noexcept nogil:
    """Sky and aperture sums of star s (in w.sums); returns the flags common to all radii."""
    cdef double xc = x[s], yc = y[s]
    cdef Py_ssize_t ix0 = <Py_ssize_t>floor(xc - p.r_out), iy0 = <Py_ssize_t>floor(yc - p.r_out)
    cdef Py_ssize_t n, ntot, nexcl
    cdef bint crowded = nb_ptr[s + 1] > nb_ptr[s], off = False
    cdef int f = 0
    if crowded:
        memset(w.stamp, 0, w.sw * w.sw)
        mark_neighbours(w.stamp, w.sw, ix0, iy0, x, y, nb_ptr, nb_idx, s, p.excl_radius)
    n = gather_sky(image, mask, p.use_mask, xc, yc, p.r_in, p.r_out, p.saturation, w.stamp,
                   crowded, w.sw, ix0, iy0, w.buf, &ntot, &nexcl, &off)
    if off:
        f |= p.bits[B_PARTIAL]
    if 2 * nexcl > ntot:
        f |= p.bits[B_CROWDED]
    if n < p.min_sky and isfinite(p.map_sky[s]):
        sky[0] = p.map_sky[s]
        sd[0] = p.map_sigma[s]
        nsky[0] = p.map_nsky
        f |= p.bits[B_MAP]
    else:
        n = sky_estimate(w.buf, n, p.sky_sigma, p.sky_iters, p.sky_method, sky, sd, &w.h)
        nsky[0] = <int32_t>n
        if n < p.min_sky:
            f |= p.bits[B_FEWSKY]
    aperture_sums(image, mask, p.use_mask, xc, yc, p.radii, p.nr, p.saturation, w.corners,
                  w.sums, w.sums + p.nr, w.bad)
    return f


def photometry_kernel(const pixel_t[:, ::1] image, const uint8_t[:, ::1] mask, bint use_mask,
                      const double[::1] x, const double[::1] y, const int64_t[::1] order,
                      const double[::1] radii, double r_in, double r_out,
                      const int64_t[::1] nb_ptr, const int64_t[::1] nb_idx, double excl_radius,
                      int sky_method, double sky_sigma, int sky_iters, double saturation,
                      const int32_t[::1] bits, const double[::1] map_sky,
                      const double[::1] map_sigma, int map_nsky, double[:, ::1] flux,
                      double[:, ::1] area, int32_t[:, ::1] flag, double[::1] bg,
                      double[::1] bgsigma, int32_t[::1] nsky, int min_sky):
    """Aperture photometry of every star of one frame (GIL released).

    Parameters
    ----------
    image : float32 or float64 (ny, nx), C-contiguous, native byte order; ADU.
    mask : uint8 (ny, nx), non-zero = bad (ignored unless ``use_mask``).
    x, y : float64 (nstars,), star centres, px, 0-based.
    order : int64 (nmeasure,), distinct indices of the stars to measure, in the
        order to measure them (a spatial sort keeps consecutive stars' rows in
        cache); the outputs of the other stars are left as they are.
    radii : float64 (nradii,), increasing aperture radii, px.
    r_in, r_out : sky annulus radii, px (pixel centres in [r_in, r_out)).
    nb_ptr, nb_idx : int64 CSR neighbour lists (nb_ptr has nstars + 1 entries);
        annulus pixels within ``excl_radius`` px of a neighbour are left out.
    sky_method : 0 mean, 1 median, 2 mode (3 median - 2 mean).
    sky_sigma, sky_iters : clipping threshold (sigma) and at most this many iterations.
    saturation : pixels at or above it (ADU) are saturated.
    bits : int32 (7,), flag bits for aperture off frame, masked, saturated, few sky,
        crowded, annulus partly off frame, sky from the map (``trex.flags.PHOT``).
    map_sky, map_sigma : float64 (nstars,), local background-map sky and pixel
        scatter at each star, ADU; used (NaN: never) when the annulus has fewer
        than ``min_sky`` usable pixels, reported with ``map_nsky`` sky pixels.
    min_sky : fewer usable annulus pixels than this take the map's sky, or without
        it set the few-sky bit (as do fewer pixels kept after clipping).

    Outputs (caller-allocated, written)
    -----------------------------------
    flux : float64 (nstars, nradii), sum a (p - sky) over usable pixels, ADU
        (unusable aperture pixels count as sky; NaN without sky or area).
    area : float64 (nstars, nradii), usable aperture area, px^2.
    flag : int32 (nstars, nradii), OR of ``bits``.
    bg, bgsigma : float64 (nstars,), sky per pixel and clipped pixel scatter, ADU.
    nsky : int32 (nstars,), sky pixels kept after clipping (``map_nsky`` for the map).
    """
    cdef Py_ssize_t nstars = x.shape[0], nr = radii.shape[0], q, s, k
    _check_shapes(nstars, nr, y.shape[0], order, nb_ptr.shape[0], bits.shape[0],
                  map_sky.shape[0], map_sigma.shape[0],
                  use_mask and (mask.shape[0] != image.shape[0] or mask.shape[1] != image.shape[1]),
                  (flux.shape[0], flux.shape[1], area.shape[0], area.shape[1], flag.shape[0],
                   flag.shape[1], bg.shape[0], bgsigma.shape[0], nsky.shape[0]))
    cdef Settings p = Settings(&radii[0], nr, r_in, r_out, excl_radius, sky_sigma, saturation,
                               sky_iters, sky_method, min_sky, map_nsky, use_mask, &bits[0],
                               &map_sky[0], &map_sigma[0])
    cdef Work w
    cdef Py_ssize_t cw = 2 * <Py_ssize_t>ceil(radii[nr - 1]) + 4
    cdef double xc, yc, big = r_out + radii[nr - 1] + 1.0
    cdef int f
    w.sw = 2 * <Py_ssize_t>ceil(r_out) + 3
    w.buf = <double*>malloc(w.sw * w.sw * sizeof(double))
    w.stamp = <uint8_t*>malloc(w.sw * w.sw)
    w.corners = <double*>malloc((nr * cw + 1) * cw * sizeof(double))
    w.sums = <double*>malloc(2 * nr * sizeof(double))
    w.bad = <int*>malloc(nr * sizeof(int))
    w.h.code = <uint8_t*>malloc(w.sw * w.sw)
    w.h.sorted = <double*>malloc(w.sw * w.sw * sizeof(double))
    try:
        if not (w.buf and w.stamp and w.corners and w.sums and w.bad and w.h.code
                and w.h.sorted):
            check(NO_MEMORY, "photometry_kernel: no memory for the work buffers")
        with nogil:
            for q in range(order.shape[0]):
                s = order[q]
                xc = x[s]
                yc = y[s]
                if not (-big < xc < image.shape[1] + big and -big < yc < image.shape[0] + big):
                    # NaN, or nowhere near the frame
                    flux[s, :] = NAN
                    area[s, :] = 0.0
                    flag[s, :] = bits[B_OFF]
                    bg[s] = bgsigma[s] = NAN
                    nsky[s] = 0
                    continue
                f = measure_star(image, mask, x, y, nb_ptr, nb_idx, s, &p, &w, &bg[s],
                                 &bgsigma[s], &nsky[s])
                for k in range(nr):
                    area[s, k] = w.sums[nr + k]
                    flux[s, k] = w.sums[k] - bg[s] * w.sums[nr + k] if w.sums[nr + k] > 0 else NAN
                    flag[s, k] = (f | (bits[B_OFF] if w.bad[k] & 1 else 0)
                                  | (bits[B_MASKED] if w.bad[k] & 2 else 0)
                                  | (bits[B_SAT] if w.bad[k] & 4 else 0))
    finally:
        free(w.buf)
        free(w.stamp)
        free(w.corners)
        free(w.sums)
        free(w.bad)
        free(w.h.code)
        free(w.h.sorted)


def _check_shapes(Py_ssize_t nstars, Py_ssize_t nr, Py_ssize_t ny_, const int64_t[::1] order,
                  Py_ssize_t nptr, Py_ssize_t nbits, Py_ssize_t nmap, Py_ssize_t nmapsig,
                  bint bad_mask, tuple outputs):
    if (nr == 0 or ny_ != nstars or nptr != nstars + 1 or nbits != NBITS or nmap != nstars
            or nmapsig != nstars):
        check(BAD_ARGUMENT, "photometry_kernel: "
              "need radii, y, map_sky and map_sigma as long as x, nstars + 1 nb_ptr, 7 bits")
    cdef Py_ssize_t q
    for q in range(order.shape[0]):
        if not 0 <= order[q] < nstars:
            check(BAD_ARGUMENT, "photometry_kernel: order holds an index out of range")
    if bad_mask:
        check(BAD_ARGUMENT, "photometry_kernel: mask must have the shape of the image")
    if outputs != (nstars, nr, nstars, nr, nstars, nr, nstars, nstars, nstars):
        check(BAD_ARGUMENT, "photometry_kernel: "
              "outputs must have shape (nstars, nradii) or (nstars,)")
