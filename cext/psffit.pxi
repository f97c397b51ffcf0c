# Elliptical Gaussian fit of the pixel-integrated profile (included by extract.pyx).
#
# Model of the pixel centred at (X, Y):
#     bg + amp * <exp(-0.5 [S(dx^2 + dy^2) + D(dx^2 - dy^2) + 2 K dx dy])>_pixel
# with dx = X - x0, dy = Y - y0 and <>_pixel the mean over the pixel, done by
# 2 x 2 Gauss-Legendre quadrature (error ~1e-3 of the value for sigma ~ 1 px).
# Parameters p = (amp, bg, x0, y0, S, D, K); unweighted least squares by
# Levenberg-Marquardt.

cdef enum:
    NPAR = 7
    FIT_OK = 0
    FIT_FAILED = 1

cdef double _GL = 0.28867513459481287   # 0.5 / sqrt(3): Gauss-Legendre nodes on [-0.5, 0.5]


cdef double _accumulate(const double* X, const double* Y, const double* v, Py_ssize_t n,
                        const double* p, double* jtj, double* jtr, int radius,
                        double* tab) noexcept nogil:
    """Sum of squared residuals; normal matrix (lower triangle) and J^T r.

    X, Y are integer offsets in [-radius, radius].  The exponent is split as
    -0.5 (A ex^2 + B ey^2) - K (xo yo + xo ub + ua yo + ua ub) with
    ex = xo + ua, ey = yo + ub, so each sub-sample value is a product of a
    column factor, a row factor and a per-pixel cross factor (tables in
    ``tab``, 8 side + side^2 doubles), ~70 exp() per call instead of 4 n.
    """
    cdef double A = p[4] + p[5], B = p[4] - p[5], K = p[6], amp = p[0]
    cdef double chi2 = 0.0, ex, ey, xo, yo, ua, ub, c, g, gex, gey, G, Gx, Gy, Gxx, Gyy, Gxy, r
    cdef double J[NPAR]
    cdef Py_ssize_t m, i, k, side = 2 * radius + 1, ti, tj
    cdef double* Fx = tab
    cdef double* Fy = tab + 4 * side
    cdef double* C = tab + 8 * side
    cdef int a, b
    for ti in range(side):
        xo = ti - radius - p[2]
        yo = ti - radius - p[3]
        for a in range(2):
            ua = _GL if a else -_GL
            for b in range(2):
                ub = _GL if b else -_GL
                Fx[4 * ti + 2 * a + b] = exp(-0.5 * A * (xo + ua) * (xo + ua) - K * xo * ub)
                Fy[4 * ti + 2 * a + b] = exp(-0.5 * B * (yo + ub) * (yo + ub)
                                             - K * ua * (yo + ub))
    for tj in range(side):
        yo = tj - radius - p[3]
        c = exp(K * (radius + p[2]) * yo)
        r = exp(-K * yo)
        for ti in range(side):
            C[tj * side + ti] = c
            c *= r
    for i in range(NPAR * NPAR):
        jtj[i] = 0.0
    for i in range(NPAR):
        jtr[i] = 0.0
    for m in range(n):
        ti = <Py_ssize_t>X[m] + radius
        tj = <Py_ssize_t>Y[m] + radius
        c = C[tj * side + ti]
        # moments of the sub-sample values g: sums of g, g ex, g ey, g ex^2, ...
        G = 0.0; Gx = 0.0; Gy = 0.0; Gxx = 0.0; Gyy = 0.0; Gxy = 0.0
        for a in range(2):
            ex = X[m] - p[2] + (_GL if a else -_GL)
            for b in range(2):
                ey = Y[m] - p[3] + (_GL if b else -_GL)
                g = c * Fx[4 * ti + 2 * a + b] * Fy[4 * tj + 2 * a + b]
                gex = g * ex
                gey = g * ey
                G += g
                Gx += gex
                Gy += gey
                Gxx += gex * ex
                Gyy += gey * ey
                Gxy += gex * ey
        r = v[m] - (0.25 * amp * G + p[1])
        chi2 += r * r
        J[0] = 0.25 * G
        J[1] = 1.0
        J[2] = 0.25 * amp * (A * Gx + K * Gy)
        J[3] = 0.25 * amp * (B * Gy + K * Gx)
        J[4] = -0.125 * amp * (Gxx + Gyy)
        J[5] = -0.125 * amp * (Gxx - Gyy)
        J[6] = -0.25 * amp * Gxy
        for i in range(NPAR):
            jtr[i] += J[i] * r
            for k in range(i + 1):
                jtj[i * NPAR + k] += J[i] * J[k]
    return chi2


cdef bint _solve(const double* jtj, const double* jtr, double lam, double* x) noexcept nogil:
    """Solve (JTJ + lam diag JTJ) x = JTr by Cholesky; False if not positive definite."""
    cdef double L[NPAR * NPAR]
    cdef double s
    cdef Py_ssize_t i, j, k
    for i in range(NPAR):
        for j in range(i + 1):
            s = jtj[i * NPAR + j] * (1.0 + lam if i == j else 1.0)
            for k in range(j):
                s -= L[i * NPAR + k] * L[j * NPAR + k]
            if i == j:
                if s <= 0.0:
                    return False
                L[i * NPAR + i] = sqrt(s)
            else:
                L[i * NPAR + j] = s / L[j * NPAR + j]
    for i in range(NPAR):
        s = jtr[i]
        for k in range(i):
            s -= L[i * NPAR + k] * x[k]
        x[i] = s / L[i * NPAR + i]
    for i in range(NPAR - 1, -1, -1):
        s = x[i]
        for k in range(i + 1, NPAR):
            s -= L[k * NPAR + i] * x[k]
        x[i] = s / L[i * NPAR + i]
    return True


cdef bint _valid(const double* p, double shift, int radius) noexcept nogil:
    """Positive definite, centre within ``shift`` px, cross factors of
    ``_accumulate`` far from overflow (|K| (2 radius + 1)^2 < 600)."""
    return (p[0] > 0.0 and 0.0 < p[4] < 25.0 and p[4] * p[4] - p[5] * p[5] - p[6] * p[6] > 0.0
            and fabs(p[2]) <= shift and fabs(p[3]) <= shift
            and fabs(p[6]) * (2 * radius + 1) * (2 * radius + 1) < 600.0)


cdef int _levmar(const double* X, const double* Y, const double* v, Py_ssize_t n,
                 double* p, int radius, int maxiter, double* tab) noexcept nogil:
    """Refine p in place; FIT_OK on convergence."""
    cdef double jtj[NPAR * NPAR]
    cdef double jtr[NPAR]
    cdef double tjtj[NPAR * NPAR]
    cdef double tjtr[NPAR]
    cdef double trial[NPAR]
    cdef double step[NPAR]
    cdef double chi2, c2, lam = 1e-3, tol
    cdef Py_ssize_t i
    cdef int it
    chi2 = _accumulate(X, Y, v, n, p, jtj, jtr, radius, tab)
    for it in range(maxiter):
        if lam > 1e6:
            return FIT_OK        # no step lowers chi2 any more: at the minimum
        if not _solve(jtj, jtr, lam, step):
            lam *= 10.0
            continue
        for i in range(NPAR):
            trial[i] = p[i] + step[i]
        if not _valid(trial, radius, radius):
            lam *= 10.0
            continue
        c2 = _accumulate(X, Y, v, n, trial, tjtj, tjtr, radius, tab)
        if c2 > chi2:
            lam *= 10.0
            continue
        for i in range(NPAR):
            p[i] = trial[i]
        for i in range(NPAR * NPAR):
            jtj[i] = tjtj[i]
        for i in range(NPAR):
            jtr[i] = tjtr[i]
        chi2 = c2
        lam = max(0.1 * lam, 1e-7)
        tol = 1e-3 * p[4]
        if (fabs(step[2]) < 1e-3 and fabs(step[3]) < 1e-3 and fabs(step[4]) < tol
                and fabs(step[5]) < tol and fabs(step[6]) < tol):
            return FIT_OK
    return FIT_FAILED


cdef void _moments(const double* X, const double* Y, const double* v, Py_ssize_t n,
                   double* p, double radius) noexcept nogil:
    """First guess of p from the positive part of (v - p[1]); p[1] must be set."""
    cdef double w, sw = 0.0, sx = 0.0, sy = 0.0, sxx = 0.0, syy = 0.0, sxy = 0.0, mx, my
    cdef double cxx, cyy, cxy, det, vmax = 0.0
    cdef Py_ssize_t m
    for m in range(n):
        w = v[m] - p[1]
        if w > vmax:
            vmax = w
        if w <= 0.0:
            continue
        sw += w
        sx += w * X[m]
        sy += w * Y[m]
        sxx += w * X[m] * X[m]
        syy += w * Y[m] * Y[m]
        sxy += w * X[m] * Y[m]
    p[0] = vmax
    if sw <= 0.0:
        p[2] = 0.0; p[3] = 0.0; p[4] = 1.0; p[5] = 0.0; p[6] = 0.0
        return
    mx = sx / sw
    my = sy / sw
    p[2] = mx if fabs(mx) < 1.0 else 0.0
    p[3] = my if fabs(my) < 1.0 else 0.0
    cxx = sxx / sw - mx * mx - 1.0 / 12.0
    cyy = syy / sw - my * my - 1.0 / 12.0
    cxy = sxy / sw - mx * my
    det = cxx * cyy - cxy * cxy
    if cxx < 0.1 or cyy < 0.1 or det < 0.01 or cxx + cyy > radius * radius:
        w = min(max(0.5 * (cxx + cyy), 0.3), 0.25 * radius * radius)
        p[4] = 1.0 / w; p[5] = 0.0; p[6] = 0.0
        return
    # precision matrix [[S + D, K], [K, S - D]] is the inverse covariance
    p[4] = 0.5 * (cxx + cyy) / det
    p[5] = 0.5 * (cyy - cxx) / det
    p[6] = -cxy / det


def fit_sources(const float[:, ::1] image, const float[:, ::1] sky,
                const unsigned char[:, ::1] mask, const int[:, ::1] owner,
                const Py_ssize_t[::1] px, const Py_ssize_t[::1] py, int radius,
                bint fit, int satbit, const int[::1] flagbits,
                double[:, ::1] out, int[::1] nused, int[::1] flag, int maxiter=30):
    """Measure every source in a (2 radius + 1)^2 window around its peak pixel.

    Parameters
    ----------
    image, sky : float32 (ny, nx), ADU.
    mask : uint8 (ny, nx) or None, bits of ``trex.flags.MASK``; masked
        pixels are left out.  ``satbit`` is the saturated bit.
    owner : int32 (ny, nx): source index owning each pixel (-1: none); pixels
        owned by another source are left out of a window.
    px, py : intp (nsources,): peak pixel of each source.
    fit : when False only the window statistics are measured.
    flagbits : int32 (4,): SOURCE bits FIT_FAILED, MASKED, SATURATED, EDGE.
    out : float64 (nsources, 9), written, columns x, y (px, 0-based), amp
        (ADU, Gaussian peak), bg (ADU), S, D, K (px^-2), wsum (ADU, sum of
        image - sky over the window) and peak (ADU, image - sky at the peak
        pixel).  When the fit fails or is not done: x, y are the
        first-moment centroid (the peak pixel if that is over 1 px away),
        amp and S, D, K are NaN, bg is the sky map.
    nused : int32 (nsources,), written: window pixels used.
    flag : int32 (nsources,), written: OR of ``flagbits``.
    """
    cdef Py_ssize_t ny = image.shape[0], nx = image.shape[1], ns = px.shape[0]
    cdef Py_ssize_t s, i, j, n, side = 2 * radius + 1
    cdef bint has_mask = mask is not None
    cdef double p[NPAR]
    cdef double wsum, skyv
    cdef int f, status
    if radius < 1 or flagbits.shape[0] != 4 or out.shape[0] != ns or out.shape[1] != 9 \
            or nused.shape[0] != ns or flag.shape[0] != ns or py.shape[0] != ns:
        check(BAD_ARGUMENT, "fit_sources: bad radius, flagbits or output shapes")
    cdef double* X = <double*>malloc((4 * side * side + 8 * side) * sizeof(double))
    if X == NULL:
        check(NO_MEMORY, "fit_sources: no memory for the work buffers")
    cdef double* Y = X + side * side
    cdef double* v = X + 2 * side * side
    cdef double* tab = X + 3 * side * side
    try:
        with nogil:
            for s in range(ns):
                f = 0
                n = 0
                wsum = 0.0
                if px[s] < radius or py[s] < radius or px[s] + radius >= nx \
                        or py[s] + radius >= ny:
                    f |= flagbits[3]
                for j in range(max(py[s] - radius, 0), min(py[s] + radius + 1, ny)):
                    for i in range(max(px[s] - radius, 0), min(px[s] + radius + 1, nx)):
                        if has_mask and mask[j, i]:
                            if mask[j, i] & satbit:
                                f |= flagbits[2]
                            if mask[j, i] & ~satbit:
                                f |= flagbits[1]
                            continue
                        if (owner[j, i] >= 0 and owner[j, i] != s) or not isfinite(image[j, i]):
                            continue
                        X[n] = i - px[s]
                        Y[n] = j - py[s]
                        v[n] = image[j, i]
                        wsum += image[j, i] - sky[j, i]
                        n += 1
                skyv = sky[py[s], px[s]]
                p[1] = skyv
                _moments(X, Y, v, n, p, radius)
                out[s, 7] = wsum
                out[s, 8] = image[py[s], px[s]] - skyv
                nused[s] = <int>n
                status = FIT_FAILED
                if fit and n > 2 * NPAR:
                    status = _levmar(X, Y, v, n, p, radius, maxiter, tab)
                    if status == FIT_OK and (not _valid(p, 2.0, radius) or p[4] > 16.0
                                             or p[4] < 1.0 / (radius * radius)):
                        status = FIT_FAILED
                if status != FIT_OK:
                    if fit:
                        f |= flagbits[0]
                    p[1] = skyv
                    _moments(X, Y, v, n, p, radius)
                    p[0] = NAN; p[1] = skyv; p[4] = NAN; p[5] = NAN; p[6] = NAN
                out[s, 0] = px[s] + p[2]
                out[s, 1] = py[s] + p[3]
                for i in range(2):
                    out[s, 2 + i] = p[i]
                for i in range(3):
                    out[s, 4 + i] = p[4 + i]
                flag[s] = f
    finally:
        free(X)
