# cython: language_level=3
"""Detector and sky artefact kernels of the simulator: satellite trails, charge bleeding.

No I/O, no globals, no logging.  Both kernels work in place on a float32
image (any unit for ``add_trail``; electrons for ``bleed_columns``) and
release the GIL.
"""
from libc.math cimport exp, sqrt, floor, ceil, fmin, fmax
from kernels cimport BAD_ARGUMENT
from trex.kernels import check


def add_trail(float[:, ::1] image, double x0, double y0, double x1, double y1,
              double sigma, double peak):
    """Add a straight trail with a Gaussian cross-section into ``image`` in place.

    Every pixel whose centre lies within 5 ``sigma`` of the segment from
    (x0, y0) to (x1, y1) (px, 0-based, pixel centres at integers; the ends may
    lie outside the image) gains ``peak * exp(-dist² / (2 sigma²))``, with
    ``dist`` the distance of the pixel centre from the segment (px).  ``peak``
    is in image units per pixel.  Returns the number of pixels changed.
    Raises ValueError for sigma <= 0.
    """
    cdef Py_ssize_t ny = image.shape[0], nx = image.shape[1], i, j, i0, i1, j0, j1, count = 0
    cdef double reach, dx, dy, length2, t, px, py, dist2, inv
    if not sigma > 0:
        check(BAD_ARGUMENT, "add_trail: sigma must be > 0")
    reach = 5.0 * sigma
    dx = x1 - x0
    dy = y1 - y0
    length2 = dx * dx + dy * dy
    i0 = <Py_ssize_t>fmax(0.0, floor(fmin(x0, x1) - reach))
    i1 = <Py_ssize_t>fmin(nx - 1.0, ceil(fmax(x0, x1) + reach))
    j0 = <Py_ssize_t>fmax(0.0, floor(fmin(y0, y1) - reach))
    j1 = <Py_ssize_t>fmin(ny - 1.0, ceil(fmax(y0, y1) + reach))
    inv = 1.0 / (2.0 * sigma * sigma)
    with nogil:
        for j in range(j0, j1 + 1):
            for i in range(i0, i1 + 1):
                t = 0.0
                if length2 > 0:
                    t = ((i - x0) * dx + (j - y0) * dy) / length2
                    t = fmin(1.0, fmax(0.0, t))
                px = i - (x0 + t * dx)
                py = j - (y0 + t * dy)
                dist2 = px * px + py * py
                if dist2 <= reach * reach:
                    image[j, i] += <float>(peak * exp(-dist2 * inv))
                    count += 1
    return int(count)


def bleed_columns(float[:, ::1] electrons, double full_well):
    """Spill the charge above ``full_well`` along columns (axis 0), in place.

    A pixel holding more than ``full_well`` e- keeps ``full_well``; half of its
    excess flows to lower rows, half to higher rows, filling each pixel it
    meets up to ``full_well`` before moving on (a full pixel passes it on).
    Charge that reaches the first or last row is lost off the chip.  Returns
    the number of pixels that end at ``full_well``.  Raises ValueError for
    full_well <= 0.
    """
    cdef Py_ssize_t ny = electrons.shape[0], nx = electrons.shape[1], i, j, m, full = 0
    cdef float fw = <float>full_well
    cdef double excess, carry, value
    if not full_well > 0:
        check(BAD_ARGUMENT, "bleed_columns: full_well must be > 0")
    with nogil:
        for i in range(nx):
            for j in range(ny):
                if electrons[j, i] <= fw:
                    continue
                excess = electrons[j, i] - fw
                electrons[j, i] = fw
                carry = 0.5 * excess                    # towards higher rows
                m = j + 1
                while carry > 0 and m < ny:
                    value = electrons[m, i] + carry
                    if value > fw:
                        carry = value - fw
                        electrons[m, i] = fw
                    else:
                        electrons[m, i] = <float>value
                        carry = 0.0
                    m += 1
                carry = 0.5 * excess                    # towards lower rows
                m = j - 1
                while carry > 0 and m >= 0:
                    value = electrons[m, i] + carry
                    if value > fw:
                        carry = value - fw
                        electrons[m, i] = fw
                    else:
                        electrons[m, i] = <float>value
                        carry = 0.0
                    m -= 1
            for j in range(ny):
                if electrons[j, i] >= fw:
                    full += 1
    return int(full)
