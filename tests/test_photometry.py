"""Forced aperture photometry against photutils, analytic cases and noise simulations."""

from __future__ import annotations

import numpy as np
import pytest
from photutils.aperture import CircularAperture
from photutils.aperture import aperture_photometry as photutils_photometry

from trex.aperture import neighbour_lists
from trex.flags import MASK, PHOT, pixels_with
from trex.photometry import aperture_photometry, saturated_near

OFF, MASKED, SAT = PHOT["OFF_FRAME"].bit, PHOT["MASKED"].bit, PHOT["SATURATED"].bit
FEW, NONPOS, CROWDED = PHOT["FEW_SKY"].bit, PHOT["NONPOSITIVE"].bit, PHOT["CROWDED"].bit


def gaussian_stars(shape, x, y, flux, sigma=1.0):
    """Noise-free image of circular Gaussian stars (pixel-centre sampled)."""
    yy, xx = np.indices(shape, dtype=float)
    image = np.zeros(shape)
    for xs, ys, f in zip(x, y, flux, strict=True):
        image += f / (2 * np.pi * sigma**2) * np.exp(
            -((xx - xs) ** 2 + (yy - ys) ** 2) / (2 * sigma**2))
    return image


def clipped_sky(values, nsigma, iters, method):
    """Reference sky: the documented clipping, on a sorted numpy copy."""
    v = np.sort(values)
    for it in range(iters + 1):
        med, mean, sd = np.median(v), v.mean(), v.std(ddof=1)
        if it == iters or sd == 0:
            break
        keep = np.abs(v - med) <= nsigma * sd
        if keep.all() or keep.sum() < 2:
            break
        v = v[keep]
    sky = {"mode": 3 * med - 2 * mean, "median": med, "mean": mean}[method]
    return sky, sd, v.size


@pytest.mark.parametrize("radius", [0.5, 1.0, 1.95, 2.95, 4.3, 10.0])
def test_sums_equal_photutils_exact(radius):
    rng = np.random.default_rng(int(radius * 100))
    image = rng.uniform(50.0, 150.0, (120, 100))
    x = rng.uniform(-2.0, 102.0, 200)
    y = rng.uniform(-2.0, 122.0, 200)
    x[:30], y[:30] = np.round(x[:30]), np.round(y[:30])              # pixel centres
    x[30:60], y[30:60] = np.round(x[30:60]) + 0.5, np.round(y[30:60]) + 0.5  # corners
    x[60:70], y[60:70] = np.array([0, 99, -0.5, 99.5, 50] * 2), np.array([0, 119] * 5)
    res = aperture_photometry(image, x, y, radii=[radius], annulus=(11.0, 14.0))
    total = res["flux"][:, 0] + res["bg"] * res["area"][:, 0]
    truth = photutils_photometry(image, CircularAperture(np.column_stack([x, y]), radius),
                                 method="exact")["aperture_sum"].value
    np.testing.assert_allclose(total, truth, rtol=1e-9)
    full = res["flag"][:, 0] & OFF == 0
    np.testing.assert_allclose(res["area"][full, 0], np.pi * radius**2, rtol=1e-12)


def test_several_radii_in_one_call_match_single_radius_calls():
    rng = np.random.default_rng(5)
    image = rng.normal(100.0, 10.0, (80, 80))
    x, y = rng.uniform(15, 65, 40), rng.uniform(15, 65, 40)
    radii = (1.95, 2.45, 2.95, 6.0)
    many = aperture_photometry(image, x, y, radii=radii)
    for k, r in enumerate(radii):
        one = aperture_photometry(image, x, y, radii=[r])
        np.testing.assert_array_equal(many["flux"][:, k], one["flux"][:, 0])
        np.testing.assert_array_equal(many["flag"][:, k], one["flag"][:, 0])


def test_constant_image_gives_zero_flux_and_the_constant_as_sky():
    image = np.full((60, 60), 1234.5)
    x, y = np.array([30.0, 25.3, 33.5]), np.array([30.0, 31.7, 28.5])
    res = aperture_photometry(image, x, y, radii=(1.5, 3.0), annulus=(7.0, 13.0))
    np.testing.assert_allclose(res["flux"], 0.0, atol=1e-9 * 1234.5 * np.pi * 9)
    np.testing.assert_array_equal(res["bg"], 1234.5)
    np.testing.assert_array_equal(res["bgerr"], 0.0)
    yy, xx = np.indices(image.shape)
    for s in range(3):
        d2 = (xx - x[s]) ** 2 + (yy - y[s]) ** 2
        assert res["nsky"][s] == np.count_nonzero((d2 >= 49) & (d2 < 169))


@pytest.mark.parametrize("method", ["mode", "median", "mean"])
@pytest.mark.parametrize("iters", [0, 2, 5])
def test_sky_matches_reference_clipping(method, iters):
    rng = np.random.default_rng(iters)
    image = rng.normal(1000.0, 30.0, (100, 100))
    hot = rng.integers(0, 100, (400, 2))
    image[hot[:, 0], hot[:, 1]] += rng.exponential(300.0, 400)   # stars, cosmics
    x, y = rng.uniform(15, 85, 30), rng.uniform(15, 85, 30)
    res = aperture_photometry(image, x, y, sky_method=method, sky_iters=iters)
    yy, xx = np.indices(image.shape)
    for s in range(x.size):
        d2 = (xx - x[s]) ** 2 + (yy - y[s]) ** 2
        sky, sd, n = clipped_sky(image[(d2 >= 49) & (d2 < 169)], 3.0, iters, method)
        assert res["nsky"][s] == n
        assert res["bg"][s] == pytest.approx(sky, abs=1e-9)
        assert res["bgsigma"][s] == pytest.approx(sd, abs=1e-9)


def test_float32_and_big_endian_give_the_same_answer():
    rng = np.random.default_rng(2)
    image32 = rng.normal(500.0, 20.0, (90, 90)).astype(np.float32)
    x, y = rng.uniform(5, 85, 50), rng.uniform(5, 85, 50)
    ref = aperture_photometry(image32.astype(np.float64), x, y, disjoint_radius=1.0)
    for image in (image32, image32.astype(">f4"), image32.astype(">f8")):
        res = aperture_photometry(image, x, y, disjoint_radius=1.0)
        for key in ("flux", "fluxerr", "flag", "bg", "bgerr", "nsky"):
            np.testing.assert_array_equal(res[key], ref[key])


def test_flags():
    x = np.array([50.0, 1.0, 30.0, 70.0, 50.0, np.nan])
    y = np.array([50.0, 50.0, 20.0, 80.0, 80.0, 0.0])
    image = 100.0 + gaussian_stars((100, 100), x[[0, 2, 3]], y[[0, 2, 3]], [1e4] * 3)
    mask = np.zeros(image.shape, dtype=bool)
    mask[20, 31] = True                               # in star 2's aperture
    image[80, 70] = image[50, 50] = 6e4               # saturates stars 3 and 0
    mask[62:99, 35:66] = True                         # hides star 4's annulus
    res = aperture_photometry(image, x, y, radii=(2.0,), mask=mask, saturation=5e4)
    flag = res["flag"][:, 0]
    assert flag[0] == SAT and flag[3] == SAT
    assert flag[1] & OFF and not flag[1] & (MASKED | SAT)
    assert flag[2] == MASKED
    assert flag[4] & FEW and res["nsky"][4] == 0 and np.isnan(res["flux"][4, 0])
    assert flag[5] & OFF and np.isnan(res["flux"][5, 0])
    far = aperture_photometry(image, [1e30, -5e3], [50.0, 50.0])
    assert np.all(far["flag"] & OFF) and np.all(np.isnan(far["flux"]))
    # a masked aperture pixel counts as sky (the pixel lies wholly in the aperture)
    clean = aperture_photometry(image, x[2:3], y[2:3], radii=(2.0,))
    assert clean["flag"][0, 0] == 0 and clean["bg"][0] == res["bg"][2]
    expect = clean["flux"][0, 0] - (image[20, 31] - clean["bg"][0])
    assert res["flux"][2, 0] == pytest.approx(expect, rel=1e-12)
    assert res["area"][2, 0] == pytest.approx(clean["area"][0, 0] - 1.0, rel=1e-12)


def test_nonpositive_flux_has_no_magnitude():
    image = np.full((60, 60), 100.0) - gaussian_stars((60, 60), [20.0], [20.0], [500.0])
    image += gaussian_stars((60, 60), [40.0], [40.0], [5000.0])
    res = aperture_photometry(image, [20.0, 40.0], [20.0, 40.0], radii=(3.0,),
                              zeropoint=20.0, exptime=10.0)
    assert res["flag"][0, 0] == NONPOS and np.isnan(res["mag"][0, 0])
    assert res["flag"][1, 0] == 0
    f, e = res["flux"][1, 0], res["fluxerr"][1, 0]
    assert res["mag"][1, 0] == pytest.approx(20.0 - 2.5 * np.log10(f / 10.0))
    assert res["magerr"][1, 0] == pytest.approx(2.5 / np.log(10) * e / f)


def test_crowded_annulus_and_disjoint_radius():
    x = np.array([40.0, 49.0, 20.0])
    y = np.array([40.0, 40.0, 20.0])
    image = 50.0 + gaussian_stars((80, 80), x, y, [5000.0, 5000.0, 5000.0])
    plain = aperture_photometry(image, x, y, radii=(2.0,), sky_iters=0, sky_method="mean")
    res = aperture_photometry(image, x, y, radii=(2.0,), sky_iters=0, sky_method="mean",
                              disjoint_radius=4.0)
    # the neighbour's light raises the unclipped mean sky; leaving it out restores it
    assert plain["bg"][0] > 50.5
    assert res["bg"][0] == pytest.approx(50.0, abs=0.05)
    assert res["nsky"][0] < plain["nsky"][0] and res["nsky"][2] == plain["nsky"][2]
    assert not res["flag"][0, 0] & CROWDED
    heavy = aperture_photometry(image, x, y, radii=(2.0,), disjoint_radius=12.0)
    assert heavy["flag"][0, 0] & CROWDED and not heavy["flag"][2, 0] & CROWDED


def test_only_some_stars_measured_with_every_neighbour_left_out():
    x = np.array([40.0, 49.0, 20.0])
    y = np.array([40.0, 40.0, 20.0])
    image = 50.0 + gaussian_stars((80, 80), x, y, [5000.0, 5000.0, 5000.0])
    options = {"radii": (2.0, 3.0), "sky_iters": 0, "sky_method": "mean", "disjoint_radius": 4.0}
    full = aperture_photometry(image, x, y, **options)
    part = aperture_photometry(image, x, y, only=np.array([0]), **options)
    # star 0's annulus still leaves out star 1, which is not measured
    assert part["bg"][0] == full["bg"][0] == pytest.approx(50.0, abs=0.05)
    np.testing.assert_array_equal(part["flux"][0], full["flux"][0])
    assert np.isnan(part["flux"][1:]).all() and np.isnan(part["bg"][1:]).all()


def test_neighbour_lists_match_brute_force():
    rng = np.random.default_rng(7)
    x, y = rng.uniform(0, 100, 300), rng.uniform(0, 100, 300)
    x[5] = np.nan
    indptr, indices = neighbour_lists(x, y, 8.0)
    d = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    for s in range(x.size):
        expect = np.flatnonzero(d[s] <= 8.0)
        assert sorted(indices[indptr[s]:indptr[s + 1]]) == sorted(set(expect) - {s})


def test_flux_error_matches_scatter_of_noisy_copies():
    """500 Poisson + read-noise realisations: the scatter of F is the reported sigma_F."""
    rng = np.random.default_rng(11)
    gain, rdnoise, sky = 2.0, 6.0, 200.0
    grid = np.arange(20.0, 140.0, 40.0)
    x, y = (g.ravel() + rng.uniform(-0.5, 0.5, 9) for g in np.meshgrid(grid, grid))
    flux = np.geomspace(300.0, 3e4, 9)
    model = sky + gaussian_stars((160, 160), x, y, flux)
    fluxes, errors = [], []
    for _ in range(500):
        electrons = rng.poisson(model * gain) + rng.normal(0.0, rdnoise, model.shape)
        res = aperture_photometry(electrons / gain, x, y, radii=(3.0,), gain=gain,
                                  sky_method="mean")
        fluxes.append(res["flux"][:, 0])
        errors.append(res["fluxerr"][:, 0])
    empirical = np.var(fluxes, axis=0, ddof=1)
    predicted = np.mean(np.square(errors), axis=0)
    assert np.sqrt(empirical.sum() / predicted.sum()) == pytest.approx(1.0, abs=0.05)
    np.testing.assert_allclose(np.sqrt(empirical / predicted), 1.0, atol=0.15)


def test_bad_arguments_are_refused():
    image = np.zeros((20, 20))
    with pytest.raises(ValueError, match="increasing"):
        aperture_photometry(image, [10.0], [10.0], radii=(3.0, 2.0))
    with pytest.raises(ValueError, match="annulus"):
        aperture_photometry(image, [10.0], [10.0], annulus=(5.0, 4.0))
    with pytest.raises(ValueError, match="sky_method"):
        aperture_photometry(image, [10.0], [10.0], sky_method="biweight")
    with pytest.raises(ValueError, match="mask shape"):
        aperture_photometry(image, [10.0], [10.0], mask=np.zeros((5, 5)))


def test_saturated_near_finds_every_star_within_reach_of_a_saturated_pixel():
    """Against the distance of every star to every saturated pixel (brute force)."""
    rng = np.random.default_rng(11)
    mask = np.zeros((300, 400), np.uint8)
    mask[rng.integers(0, 300, 60), rng.integers(0, 400, 60)] |= MASK["SATURATED"].bit
    mask[rng.integers(0, 300, 60), rng.integers(0, 400, 60)] |= MASK["BADPIX"].bit  # not these
    x, y = rng.uniform(-5, 405, 3000), rng.uniform(-5, 305, 3000)
    x[7], y[8] = np.nan, np.nan
    sy, sx = np.nonzero(mask & MASK["SATURATED"].bit)
    for radius in (1.95, 2.95, 6.0):
        with np.errstate(invalid="ignore"):
            dist = np.hypot(x[:, None] - sx[None, :], y[:, None] - sy[None, :]).min(axis=1)
        np.testing.assert_array_equal(saturated_near(mask, x, y, radius), dist <= radius + 0.71)
    assert not saturated_near(mask & ~np.uint8(MASK["SATURATED"].bit), x, y, 2.95).any()
    for part in (mask, mask[:, :397], mask[:, 3:].copy()):  # 8-pixel words, a view, an odd width
        py, px = pixels_with(part, 0xFF)
        assert sorted(zip(py.tolist(), px.tolist())) == sorted(zip(*(a.tolist()
                                                                     for a in np.nonzero(part))))
