"""Registration: polynomial maps from matches or WCSs, and resampling onto a grid."""

import numpy as np
import pytest
from astropy.wcs import WCS
from scipy.ndimage import map_coordinates
from scipy.special import erf

from trex.register import fit_transform, resample, transform_from_wcs

N = 320
THETA, SCALE, SHIFT = np.deg2rad(0.5), 1.01, (3.3, -2.7)


def similarity(x, y):
    """Reference (x, y) -> frame (u, v): rotation, 1 % scale and a shift about the centre."""
    c = N / 2
    u = c + SCALE * (np.cos(THETA) * (x - c) - np.sin(THETA) * (y - c)) + SHIFT[0]
    v = c + SCALE * (np.sin(THETA) * (x - c) + np.cos(THETA) * (y - c)) + SHIFT[1]
    return u, v


def grid_transform(func, order=3):
    gx, gy = np.meshgrid(np.linspace(-0.5, N - 0.5, 16), np.linspace(-0.5, N - 0.5, 16))
    u, v = func(gx.ravel(), gy.ravel())
    return fit_transform(gx.ravel(), gy.ravel(), u, v, order=order)


def pixel_integrated_stars(shape, u, v, flux, sigma=1.0):
    """Gaussian stars integrated exactly over pixels (independent of trex)."""
    def profile(c, n):
        g = np.arange(n)[None, :]
        s = np.sqrt(2.0) * sigma
        return 0.5 * (erf((g + 0.5 - c[:, None]) / s) - erf((g - 0.5 - c[:, None]) / s))
    return np.einsum("s,sy,sx->yx", flux, profile(v, shape[0]), profile(u, shape[1]))


@pytest.fixture(scope="module")
def star_field():
    """Isolated stars on the frame, at the frame positions of known reference positions."""
    gx, gy = np.meshgrid(np.arange(40, N - 39, 30.0), np.arange(40, N - 39, 30.0))
    rng = np.random.default_rng(7)
    x = gx.ravel() + rng.uniform(-3, 3, gx.size)
    y = gy.ravel() + rng.uniform(-3, 3, gx.size)
    flux = 10 ** rng.uniform(3, 5, x.size)
    u, v = similarity(x, y)
    frame = pixel_integrated_stars((N, N), u, v, flux)
    return x, y, flux, frame


def test_fit_recovers_a_cubic_map_and_drops_bad_matches():
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, 500, (2, 300))
    u = 3 + 1.001 * x + 0.002 * y + 2e-6 * x * y + 1e-8 * x**3
    v = -5 + 0.999 * y - 0.003 * x + 3e-6 * x**2 - 2e-8 * y**2 * x
    u[:4] += 25.0  # four false matches
    t = fit_transform(x, y, u, v, order=3)
    xt, yt = rng.uniform(0, 500, (2, 50))
    ut, vt = t(xt, yt)
    assert np.max(np.abs(ut - (3 + 1.001 * xt + 0.002 * yt + 2e-6 * xt * yt + 1e-8 * xt**3))) < 1e-6
    vtrue = -5 + 0.999 * yt - 0.003 * xt + 3e-6 * xt**2 - 2e-8 * yt**2 * xt
    assert np.max(np.abs(vt - vtrue)) < 1e-6
    assert t.rms < 1e-6


def test_fit_needs_enough_pairs():
    with pytest.raises(ValueError, match="matched pairs"):
        fit_transform(np.arange(5.0), np.arange(5.0), np.arange(5.0), np.arange(5.0), order=3)


def test_transform_from_wcs_matches_the_wcs_chain():
    ref = WCS(naxis=2)
    ref.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    ref.wcs.crval = [120.0, -30.0]
    ref.wcs.crpix = [N / 2, N / 2]
    ref.wcs.cdelt = [-10 / 3600, 10 / 3600]
    frame = WCS(naxis=2)
    frame.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    frame.wcs.crval = [120.05, -29.97]
    frame.wcs.crpix = [N / 2 + 4, N / 2 - 3]
    c, s = np.cos(THETA), np.sin(THETA)
    frame.wcs.cd = np.array([[-c, s], [s, c]]) * 10.1 / 3600
    t = transform_from_wcs(ref, frame, (N, N))
    x, y = np.random.default_rng(3).uniform(0, N - 1, (2, 100))
    u, v = t(x, y)
    uw, vw = frame.world_to_pixel_values(*ref.pixel_to_world_values(x, y))
    assert np.max(np.hypot(u - uw, v - vw)) < 1e-3


@pytest.mark.parametrize("method,tol", [("flux", 1e-5), ("bicubic", 1e-3), ("bilinear", 1e-2)])
def test_isolated_star_flux_is_conserved(star_field, method, tol):
    x, y, flux, frame = star_field
    out = resample(frame, grid_transform(similarity), (N, N), method=method)
    ix, iy = np.round(x).astype(int), np.round(y).astype(int)
    sums = np.array([out[j - 10:j + 11, i - 10:i + 11].sum() for i, j in zip(ix, iy, strict=True)])
    assert np.max(np.abs(sums / flux - 1)) < tol


def test_resampled_stars_land_on_their_reference_positions(star_field):
    x, y, flux, frame = star_field
    out = resample(frame, grid_transform(similarity), (N, N), method="flux")
    yy, xx = np.mgrid[-6:7, -6:7]
    for i, j, xt, yt in zip(np.round(x).astype(int), np.round(y).astype(int), x, y, strict=True):
        box = out[j - 6:j + 7, i - 6:i + 7].astype(np.float64)
        assert abs((box * (xx + i)).sum() / box.sum() - xt) < 0.02
        assert abs((box * (yy + j)).sum() / box.sum() - yt) < 0.02


def distorted(x, y):
    """A similarity plus cubic distortion, as a wide-field lens gives."""
    u, v = similarity(x, y)
    c = N / 2
    return u + 3.7e-7 * (x - c) ** 3, v - 3e-7 * (y - c) ** 2 * (x - c)  # ~1.5 px at the edge


def test_flux_is_conserved_under_distortion_with_matched_stars():
    rng = np.random.default_rng(11)
    gx, gy = np.meshgrid(np.arange(40, N - 39, 30.0), np.arange(40, N - 39, 30.0))
    x = gx.ravel() + rng.uniform(-3, 3, gx.size)
    y = gy.ravel() + rng.uniform(-3, 3, gx.size)
    flux = 10 ** rng.uniform(3, 5, x.size)
    u, v = distorted(x, y)
    frame = pixel_integrated_stars((N, N), u, v, flux)
    # the map fitted from the (noisy) matched star positions themselves
    t = fit_transform(x, y, u + rng.normal(0, 0.01, x.size), v + rng.normal(0, 0.01, x.size))
    assert t.rms < 0.03
    out = resample(frame, t, (N, N), method="flux")
    ix, iy = np.round(x).astype(int), np.round(y).astype(int)
    sums = np.array([out[j - 10:j + 11, i - 10:i + 11].sum() for i, j in zip(ix, iy, strict=True)])
    assert np.max(np.abs(sums / flux - 1)) < 1e-3


@pytest.mark.parametrize("method", ["flux", "bilinear", "bicubic"])
def test_flat_field_scales_by_pixel_area(method):
    out = resample(np.full((N, N), 100.0), grid_transform(similarity), (N, N), method=method)
    inner = out[20:-20, 20:-20]
    assert np.all(np.isfinite(inner))
    assert np.allclose(inner, 100.0 * SCALE**2, rtol=1e-5)


def test_integer_shift_moves_pixels_exactly():
    img = np.random.default_rng(5).normal(100.0, 10.0, (N, N)).astype(np.float32)
    out = resample(img, grid_transform(lambda x, y: (x + 3.0, y - 2.0), order=1), (N, N), "flux")
    assert np.allclose(out[5:-5, 5:-5], img[3:-7, 8:-2], rtol=0, atol=1e-3)
    assert np.all(np.isnan(out[:, -2:])) and np.all(np.isnan(out[:1, :]))


def test_bilinear_matches_scipy_times_pixel_area():
    img = np.random.default_rng(6).normal(100.0, 10.0, (N, N)).astype(np.float32)
    out = resample(img, grid_transform(similarity), (N, N), method="bilinear")
    yy, xx = np.mgrid[10:N - 10, 10:N - 10].astype(np.float64)
    u, v = similarity(xx, yy)
    expected = map_coordinates(img.astype(np.float64), [v, u], order=1) * SCALE**2
    assert np.allclose(out[10:N - 10, 10:N - 10], expected, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("method", ["flux", "bilinear", "bicubic"])
def test_non_finite_pixels_do_not_spread(method):
    img = np.full((N, N), 10.0)
    img[100, 100] = np.nan
    out = resample(img, grid_transform(similarity), (N, N), method=method)
    assert np.all(np.isfinite(out[20:-20, 20:-20]))
    assert np.allclose(out[150:-20, 20:-20], 10.0 * SCALE**2, rtol=1e-5)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown resampling method"):
        resample(np.zeros((8, 8)), grid_transform(similarity, order=1), (8, 8), method="lanczos")
