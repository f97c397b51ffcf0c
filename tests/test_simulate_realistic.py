"""The realistic simulator against independent definitions of each effect it adds.

Each test measures one effect in the images (or the true mapping) and
compares it with its textbook form computed here: a Moffat fit, a polynomial
fit of the astropy-read WCS, astropy's airmass, Young's scintillation
formula, plane fits to flats and sky, overscan statistics, and the truth
files.  Frames are small (256²-512²); noise-free photon images come from
:func:`trex.simulate.exposure.frame_photons`.
"""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import AltAz, SkyCoord
from astropy.io import fits as afits
from astropy.time import Time
from astropy.wcs import WCS
from scipy.optimize import least_squares
from trex._artefacts import add_trail, bleed_columns
from trex._render import add_moffat

from trex.config import ConfigError, build_config
from trex.fits import read_header, read_image
from trex.project import init_project
from trex.simulate import REALISTIC, SIMPLE, default_params, load_truth, simulate_project
from trex.simulate.exposure import frame_photons, object_frame, star_light
from trex.simulate.field import make_field
from trex.simulate.optics import Optics, wcs_header
from trex.simulate.plan import make_plan
from trex.simulate.realism import resolve
from trex.times import site

SMALL = dict(frames=12, size=256, stars=600, ncal=3, seed=11)
YOUNG_D = REALISTIC.aperture          # cm, the lens aperture in Young's formula


def world(size=256, stars=600, seed=3, cadence=0.0, frames=3, **changes):
    """A realistic field and night plan in memory (no files)."""
    realism = dataclasses.replace(REALISTIC, **changes)
    params = default_params(frames=frames, stars=stars, size=size, seed=seed, realism=realism,
                            cadence=cadence)
    field = make_field(params)
    return field, make_plan(params, 0, realism)


def photons(field, plan, i=0):
    image, truth = frame_photons(field, plan, 0, i, np.ones(field.catalog["mag"].size))
    return image.astype(np.float64), truth


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = init_project(tmp_path_factory.mktemp("real")).root
    simulate_project(root, realism=dataclasses.replace(REALISTIC, trail_rate=0.5), **SMALL)
    return root


# --- kernels -----------------------------------------------------------------------------

@pytest.mark.parametrize("s, d, k, beta", [(0.2, 0.05, -0.04, 2.7),      # FWHM 2.3 px
                                           (0.3027, -0.0462, -0.0476, 4.0)])   # 1.6 px
def test_moffat_kernel_matches_fine_integration(s, d, k, beta):
    """Pixels of a tilted Moffat star equal a 32x32 midpoint integration of its formula."""
    x0, y0 = 20.3, 19.6
    image = np.zeros((40, 40), np.float32)
    add_moffat(image, np.array([x0]), np.array([y0]), np.array([1.0]), np.array([s]),
               np.array([d]), np.array([k]), np.array([beta]), wing_cut=1e-4)
    sub = 32
    g = (np.arange(40 * sub) + 0.5) / sub - 0.5
    du, dv = g[None, :] - x0, g[:, None] - y0
    q = s * (du**2 + dv**2) + d * (du**2 - dv**2) + 2 * k * du * dv
    norm = (beta - 1) * np.sqrt(s * s - d * d - k * k) / np.pi
    exact = norm * ((1 + q) ** -beta).reshape(40, sub, 40, sub).mean(axis=(1, 3))
    bright = exact > 1e-4
    np.testing.assert_allclose(image[bright], exact[bright], rtol=1e-3)
    assert image.sum() == pytest.approx(exact.sum(), rel=2e-4)
    with pytest.raises(ValueError, match="beta > 1"):
        add_moffat(image, np.array([5.0]), np.array([5.0]), np.array([1.0]), np.array([s]),
                   np.array([d]), np.array([k]), np.array([1.0]))


@pytest.mark.parametrize("flux", [300.0, 3.0e4, 3.0e6])
def test_moffat_kernel_faint_wings_within_min_level(flux):
    """With min_level: bright pixels to 1e-3, faint ones to ~min_level, none left out above it."""
    s, d, k, beta, x0, y0, level = 0.18, 0.02, -0.01, 3.0, 40.3, 39.6, 0.1
    image = np.zeros((80, 80), np.float32)
    add_moffat(image, np.array([x0]), np.array([y0]), np.array([flux]), np.array([s]),
               np.array([d]), np.array([k]), np.array([beta]), wing_cut=1e-5, min_level=level)
    sub = 32
    g = (np.arange(80 * sub) + 0.5) / sub - 0.5
    du, dv = g[None, :] - x0, g[:, None] - y0
    q = s * (du**2 + dv**2) + d * (du**2 - dv**2) + 2 * k * du * dv
    exact = flux * (beta - 1) * np.sqrt(s * s - d * d - k * k) / np.pi * (
        (1 + q) ** -beta).reshape(80, sub, 80, sub).mean(axis=(1, 3))
    drawn = image > 0
    bright = exact > 100 * level
    np.testing.assert_allclose(image[bright], exact[bright], rtol=1e-3)
    assert (np.abs(image - exact)[drawn & ~bright] < 2 * level).all()
    assert exact[~drawn].max(initial=0.0) < level and (~drawn).sum() > 100


def test_trail_kernel_profile_and_bleed_conserves_charge():
    image = np.zeros((60, 60), np.float32)
    add_trail(image, -10.0, 30.0, 80.0, 30.0, 1.5, 100.0)    # horizontal, through row 30
    np.testing.assert_allclose(image[:, 20], 100.0 * np.exp(-(np.arange(60) - 30.0) ** 2 / 4.5),
                               atol=1e-3 + 100.0 * np.exp(-12.5))
    column = np.zeros((30, 4), np.float32)
    column[15, 2] = 1000.0
    total = column.sum()
    full = bleed_columns(column, 100.0)
    assert column.sum() == pytest.approx(total)
    assert full == 9 and (column[11:20, 2] == 100.0).all()          # 1 + 4 up + 4 down
    assert column[10, 2] == column[20, 2] == 50.0 and column[:, [0, 1, 3]].sum() == 0


# --- PSF -----------------------------------------------------------------------------------

def _moffat_model(p, x, y, half=7):
    """Pixel-integrated elliptical Moffat + constant (4x4 Gauss-Legendre per pixel)."""
    x0, y0, flux, s, d, k, beta, bg = p
    nodes, weights = np.polynomial.legendre.leggauss(4)
    nodes, weights = 0.5 * nodes, 0.5 * weights
    grid = np.arange(-half, half + 1)
    du = (grid[None, :, None, None] + x - x0 + nodes[None, None, None, :])
    dv = (grid[:, None, None, None] + y - y0 + nodes[None, None, :, None])
    q = s * (du**2 + dv**2) + d * (du**2 - dv**2) + 2 * k * du * dv
    w = weights[:, None] * weights[None, :]
    norm = (beta - 1) * np.sqrt(max(s * s - d * d - k * k, 1e-12)) / np.pi
    return flux * norm * ((1 + q) ** -beta * w).sum(axis=(2, 3)) + bg


def _fit_moffat(image, x, y, half=7):
    i, j = int(round(x)), int(round(y))
    box = image[j - half:j + half + 1, i - half:i + half + 1]
    start = [x, y, box.sum() - box.min() * box.size, 0.25, 0.0, 0.0, 2.0, box.min()]
    lower = [x - 1, y - 1, 0, 0.01, -1, -1, 1.2, -np.inf]
    upper = [x + 1, y + 1, np.inf, 5, 1, 1, 20, np.inf]
    fit = least_squares(lambda p: (_moffat_model(p, i, j, half) - box).ravel()
                        / np.sqrt(np.maximum(box, 1.0)).ravel(), start, bounds=(lower, upper),
                        x_scale="jac")
    return fit.x


def isolate(field, plan, mags, separation, border):
    """Keep only catalog stars in ``mags`` that are ``separation`` px from every other kept one."""
    light = star_light(field, plan, 0, field.catalog)
    x, y, mag = light["x"], light["y"], field.catalog["mag"]
    size = field.optics.size
    kept = []
    for n in np.flatnonzero((mag >= mags[0]) & (mag <= mags[1])):
        if not (border < x[n] < size - 1 - border and border < y[n] < size - 1 - border):
            continue
        if all(np.hypot(x[n] - x[m], y[n] - y[m]) > separation for m in kept):
            kept.append(n)
    field.catalog = {key: value[kept] for key, value in field.catalog.items()}
    return field


def test_psf_is_moffat_broadening_and_elongating_to_the_corners():
    """Fitted PSFs: beta as configured, FWHM = fwhm*focus*(1 + corner * r²/(size²/2))."""
    field, plan = world(size=256, stars=1500, seed=4, faint_depth=0.0, trail_rate=0.0)
    image, truth = photons(isolate(field, plan, (8.0, 10.5), 25.0, 10), plan)
    assert truth["x"].size >= 12
    centre, fwhm, rho2, ell = (256 - 1) / 2.0, [], [], []
    for n in range(truth["x"].size):
        x0, y0, flux, s, d, k, beta, _ = _fit_moffat(image, truth["x"][n], truth["y"][n])
        assert beta == pytest.approx(REALISTIC.psf_beta, rel=0.1)
        assert flux == pytest.approx(truth["flux_e"][n] * truth["scintillation"][n], rel=0.01)
        det = s * s - d * d - k * k
        fwhm.append(2 * np.sqrt(2 ** (1 / beta) - 1) * det ** -0.25)
        rho2.append(((truth["x"][n] - centre) ** 2 + (truth["y"][n] - centre) ** 2)
                    / (0.5 * 256**2))
        lam = np.linalg.eigvalsh([[s + d, k], [k, s - d]])
        ell.append(1 - np.sqrt(lam[0] / lam[1]))
    fwhm, rho2, ell = np.array(fwhm), np.array(rho2), np.array(ell)
    configured = REALISTIC.fwhm * plan.focus[0] * (1 + REALISTIC.fwhm_corner * rho2)
    np.testing.assert_allclose(fwhm, configured, rtol=0.03)
    slope = np.polyfit(rho2, fwhm / (REALISTIC.fwhm * plan.focus[0]), 1)[0]
    assert slope == pytest.approx(REALISTIC.fwhm_corner, abs=0.05)
    # radial elongation growing as r² to the corners, plus the optics' constant astigmatism
    theta = np.arctan2(truth["y"] - centre, truth["x"] - centre)
    astig = np.radians(field.optics.astig_angle)
    e1 = REALISTIC.ellipticity * rho2 * np.cos(2 * theta) + field.optics.astigmatism * np.cos(2 * astig)
    e2 = REALISTIC.ellipticity * rho2 * np.sin(2 * theta) + field.optics.astigmatism * np.sin(2 * astig)
    np.testing.assert_allclose(ell, np.hypot(e1, e2), atol=0.03)
    assert ell.max() > 0.15


def test_moffat_wings_hold_more_light_than_a_gaussian_of_the_same_fwhm():
    """Encircled energy beyond 2 FWHM: the beta = 3 Moffat value, far above the Gaussian's."""
    field, plan = world(size=256, stars=1500, seed=4, faint_depth=0.0, trail_rate=0.0)
    image, truth = photons(isolate(field, plan, (8.0, 10.0), 40.0, 25), plan)
    assert truth["x"].size >= 3
    yy, xx = np.mgrid[:256, :256]
    c = (2 ** (1 / 3.0) - 1) / (2 * np.log(2))
    moffat = (1 + c * (2 * 2.3548) ** 2) ** -2.0          # beta 3, r = 2 FWHM
    gauss = np.exp(-0.5 * (2 * 2.3548) ** 2)
    for n in range(truth["x"].size):
        r = np.hypot(xx - truth["x"][n], yy - truth["y"][n])
        sky = np.median(image[(r > 16) & (r < 20)])
        total = truth["flux_e"][n] * truth["scintillation"][n]
        width = 2.3548 * ((truth["s"][n] + truth["d"][n]) * (truth["s"][n] - truth["d"][n])
                          - truth["k"][n] ** 2) ** -0.25
        outside = total - (image[r < 2 * width] - sky).sum()
        assert outside / total == pytest.approx(moffat, rel=0.2)
        assert outside / total > 100 * gauss


def test_moffat_scene_noise_matches_scatter():
    """render_frame with a Moffat PSF: truth fluxerr = scatter of aperture sums."""
    from trex.simulate import make_scene, render_frame
    scene = make_scene(size=64, nstars=1, seed=4, sky=800.0, border=24, mag_range=(11, 11.5),
                       psf_beta=3.0)
    _, truth = render_frame(scene, noise=False)
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(xx - truth["x"][0], yy - truth["y"][0])
    aperture, annulus = r <= 2.45, (r >= 7.0) & (r <= 13.0)
    sums = [image[aperture].sum() - aperture.sum() * image[annulus].mean()
            for image in (render_frame(scene, noise=True, seed=s)[0] for s in range(300))]
    assert np.std(sums) == pytest.approx(truth["fluxerr"][0, 1], rel=0.1)


# --- distortion, pointing -------------------------------------------------------------------

@pytest.mark.parametrize("realism, worst", [(SIMPLE, (0.0, 1e-6)), (REALISTIC, (0.05, 1e-6))])
def test_distortion_needs_order_five(realism, worst):
    """Polynomial fits of the astropy-read true WCS: order 3 leaves > 0.05 px only when realistic."""
    params = default_params(size=2048, realism=realism)
    optics = Optics(**params["optics"])
    wcs = WCS(wcs_header(optics, (60.0, -30.0), 0.3))
    grid = np.linspace(0, 2047, 41)
    x, y = (a.ravel() for a in np.meshgrid(grid, grid))
    ra, dec = wcs.all_pix2world(x, y, 0)
    plane = wcs.wcs.s2p(np.column_stack([ra, dec]), 0)["imgcrd"] * 3600 / optics.pixscale
    uu, vv = (x - optics.crpix + 1) / 1024, (y - optics.crpix + 1) / 1024

    def residual(order):
        design = np.column_stack([uu**p * vv**q for p in range(order + 1)
                                  for q in range(order + 1 - p)])
        return max(np.abs(plane[:, c] - design @ np.linalg.lstsq(design, plane[:, c],
                                                                  rcond=None)[0]).max()
                   for c in range(2))

    assert residual(3) >= worst[0] and (realism is SIMPLE) == (residual(3) < 1e-6)
    assert residual(5) < worst[1]


def test_truth_wcs_maps_catalog_and_header_pointing_is_off(project):
    truth = load_truth(project)
    night = truth["params"]["nights"][0]["night"]
    for f, name in enumerate(truth["frame"][:3]):
        wcs = WCS(afits.Header.fromstring(str(truth["wcs"][f]), sep="\n"))
        assert wcs.sip.a_order == 5
        years = Time(truth["jd"][f], format="jd").jyear - 2016.0
        cat = truth["params"]
        assert cat["realism"]["name"] == "realistic"
        field = make_field(truth["params"])
        ra = field.catalog["ra"] + field.catalog["pmra"] * years / 3.6e6 / np.cos(
            np.radians(field.catalog["dec"]))
        dec = field.catalog["dec"] + field.catalog["pmdec"] * years / 3.6e6
        x, y = wcs.all_world2pix(ra, dec, 0, tolerance=1e-9)
        inside = (x > 0) & (x < 255) & (y > 0) & (y < 255)
        np.testing.assert_allclose(x[inside], truth["x"][f][inside], atol=1e-3)
        header = read_header(project / "RAW" / night / str(name))
        told = SkyCoord(header["RA"] * u.deg, header["DEC"] * u.deg)
        true = SkyCoord(*truth["crval"][f] * u.deg)
        assert 0.1 - 0.02 < told.separation(true).deg < 0.3 + 0.02
        night_error = np.hypot(*truth["pointing_error"]) * 20.0 / 3600   # px -> deg
        assert told.separation(true).deg == pytest.approx(night_error, abs=0.02)
        axis = wcs.all_pix2world([[127.5, 127.5]], 0)[0]
        assert SkyCoord(*axis * u.deg).separation(true).arcsec < 1.0
    assert np.std(truth["rotation"]) > 0.005


# --- atmosphere -------------------------------------------------------------------------------

def test_extinction_follows_star_airmass_and_colour():
    """Truth extinction = (k + k_c colour) X with X from astropy's AltAz at each star."""
    field, plan = world(size=2048, stars=400, seed=6, cadence=3 * 3600.0, cirrus=0.0,
                        cloud_structure=0.0)
    plan.transparency[:] = 1.0
    plan.cloud_mag[:] = 0.0
    light = star_light(field, plan, 0, field.catalog)       # 3 h before the meridian
    p = field.params
    frame = SkyCoord(field.catalog["ra"] * u.deg, field.catalog["dec"] * u.deg).transform_to(
        AltAz(obstime=Time(plan.mid[0], format="jd"), location=site(**p["site"])))
    secz = np.asarray(frame.secz)
    expected = (p["extinction"] + REALISTIC.extinction_color * field.catalog["color"]) * secz
    np.testing.assert_allclose(light["extinction"], expected, atol=0.003)
    assert np.ptp(secz) > 0.1                                    # varies over the field
    k_c = np.polyfit(field.catalog["color"], light["extinction"] / light["airmass"], 1)[0]
    assert k_c == pytest.approx(REALISTIC.extinction_color, rel=0.02)
    flux0 = p["exptime"] * 10 ** (-0.4 * (field.catalog["mag"] - p["zeropoint"]))
    np.testing.assert_allclose(light["flux_adu"], flux0 * 10 ** (-0.4 * expected), rtol=0.003)


def test_clouds_are_smooth_varied_and_moving():
    field, plan = world(size=1024, stars=2000, seed=7, cirrus=0.05, cloud_structure=0.6)
    a, b = (star_light(field, plan, i, field.catalog) for i in (0, 2))
    inside = (a["x"] > 0) & (a["x"] < 1023) & (a["y"] > 0) & (a["y"] < 1023)
    clouds = a["clouds"][inside]
    assert clouds.std() > 0.2 * clouds.mean() > 0
    x, y = a["x"][inside], a["y"][inside]
    pairs = np.argsort(np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :]), axis=1)[:, 1]
    near = np.abs(clouds - clouds[pairs]).mean()
    shuffled = np.abs(clouds - np.random.default_rng(0).permutation(clouds)).mean()
    assert near < 0.3 * shuffled
    change = (b["clouds"][inside] / plan.cloud_mag[2]) - (clouds / plan.cloud_mag[0])
    assert np.abs(change).mean() > 0.05


def test_scintillation_scatter_follows_young():
    """Aperture sums with/without scintillation: relative scatter = Young's formula."""
    field, plan = world(size=512, stars=3000, seed=8, frames=12, faint_depth=0.0,
                        trail_rate=0.0)
    field = isolate(field, plan, (6.0, 12.0), 36.0, 20)
    quiet = dataclasses.replace(field, realism=dataclasses.replace(field.realism, aperture=0.0))
    yy, xx = np.mgrid[:512, :512]
    ratios, expected = [], []
    for i in range(12):
        with_s, truth = photons(field, plan, i)
        without, _ = photons(quiet, plan, i)
        for n in range(truth["x"].size):
            x, y = truth["x"][n], truth["y"][n]
            if not (20 < x < 491 and 20 < y < 491):
                continue
            box = (slice(int(y) - 19, int(y) + 21), slice(int(x) - 19, int(x) + 21))
            r = np.hypot(xx[box] - x, yy[box] - y)
            ap, ring = r < 8, (r > 12) & (r < 18)
            base = without[box][ap].sum() - ap.sum() * np.median(without[box][ring])
            ratios.append((with_s[box][ap].sum() - without[box][ap].sum()) / base)
            expected.append(0.09 * YOUNG_D ** (-2 / 3) * truth["airmass"][n] ** 1.75
                            * np.exp(-field.params["site"]["altitude"] / 8000)
                            / np.sqrt(2 * 30.0))
    ratios, expected = np.array(ratios), np.array(expected)
    assert ratios.size > 700
    # 3.5 sigma of the estimators: std of a std is 1/sqrt(2n), of a mean 1/sqrt(n)
    assert np.std(ratios / expected) == pytest.approx(1.0, abs=3.5 / np.sqrt(2 * ratios.size))
    assert abs(np.mean(ratios / expected)) < 3.5 / np.sqrt(ratios.size)


# --- sky content --------------------------------------------------------------------------------

def _catalog_rows(root):
    path = next((root / "BASE" / "CAT").glob("*.csv"))
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_faint_stars_in_the_image_not_in_the_catalog(project):
    truth = load_truth(project)
    rows = _catalog_rows(project)
    catmag = np.array([float(r["mag"]) for r in rows])
    limit = truth["params"]["mag_range"][1]
    assert truth["faint_mag"].size > 2 * len(rows) and (truth["faint_mag"] > limit).all()
    assert catmag.max() < limit + 0.1
    cat = SkyCoord([float(r["ra"]) for r in rows] * u.deg, [float(r["dec"]) for r in rows] * u.deg)
    faint = SkyCoord(truth["faint_ra"] * u.deg, truth["faint_dec"] * u.deg)
    assert faint.match_to_catalog_sky(cat)[1].arcsec.min() > 0.5
    # the image: the faint stars are the difference between frames with and without them
    field = make_field(truth["params"])
    plan = make_plan(truth["params"], 0, field.realism)
    with_faint, _ = photons(field, plan)
    bare = dataclasses.replace(field, faint={k: v[:0] for k, v in field.faint.items()})
    without, light = photons(bare, plan)
    diff = with_faint - without
    wcs = WCS(afits.Header.fromstring(str(truth["wcs"][0]), sep="\n"))
    x, y = wcs.all_world2pix(truth["faint_ra"], truth["faint_dec"], 0)
    inside = (x > 3) & (x < 252) & (y > 3) & (y < 252)
    p = truth["params"]
    flux = (p["exptime"] * 2.7 * 10 ** (-0.4 * (truth["faint_mag"] - p["zeropoint"]))
            * 10 ** (-0.4 * np.median(light["extinction"])))
    assert diff.sum() == pytest.approx(flux[inside].sum(), rel=0.05)
    brightest = np.argsort(truth["faint_mag"] + 99 * ~inside)[:20]
    for n in brightest:
        i, j = int(round(x[n])), int(round(y[n]))
        box = diff[j - 1:j + 2, i - 1:i + 2]
        assert box.sum() > 0.3 * flux[n]


def test_forced_transits_on_bright_and_crowded_stars(project):
    truth = load_truth(project)
    forced = [v for v in truth["variables"] if v.get("forced")]
    kinds = [v["forced"] for v in forced]
    assert 1 <= kinds.count("bright") <= REALISTIC.transits_bright
    assert 1 <= kinds.count("crowded") <= REALISTIC.transits_crowded
    for v in forced:
        n = v["index"]
        assert v["kind"] == "transit" and 0.005 <= v["depth"] <= 0.02
        assert truth["variability"][:, n].min() == pytest.approx(1 - v["depth"], rel=1e-4)
        if v["forced"] == "bright":
            assert 8.5 <= truth["mag"][n] <= 10.5
        else:
            j = v["neighbour"]
            sep = np.hypot(truth["x"][:, n] - truth["x"][:, j], truth["y"][:, n] - truth["y"][:, j])
            assert sep.max() < REALISTIC.crowded_radius + 0.1
            assert truth["mag"][j] <= truth["mag"][n] + 0.5


# --- detector and calibration ---------------------------------------------------------------------

def _frames(root, night, kind):
    out = []
    for path in sorted((root / "RAW" / night).glob("*.fits")):
        image, header = read_image(path)
        if header["IMAGETYP"] == kind:
            out.append(image.astype(np.float64))
    return out


def _plane(image, block=32):
    """Slopes over the half frame of a plane fitted to block medians (plus quadratic terms)."""
    n = image.shape[0] // block
    med = np.median(image[:n * block, :n * block].reshape(n, block, n, block), axis=(1, 3))
    axis = ((np.arange(n) + 0.5) * block - image.shape[0] / 2) / (image.shape[0] / 2)
    ax, ay = np.meshgrid(axis, axis)
    design = np.column_stack([np.ones(ax.size), ax.ravel(), ay.ravel(), ax.ravel() ** 2,
                              ay.ravel() ** 2])
    coef = np.linalg.lstsq(design, med.ravel(), rcond=None)[0]
    return coef[1:3] / coef[0]


def test_flat_illumination_differs_from_the_night_sky(project):
    truth = load_truth(project)
    night = truth["params"]["nights"][0]["night"]
    bias = np.median(_frames(project, night, "bias"), axis=0)[:, :256]
    dark = np.median(_frames(project, night, "dark"), axis=0)[:, :256] - bias
    flat = np.median(_frames(project, night, "flat"), axis=0)[:, :256] - bias
    objects = _frames(project, night, "object")
    sky = objects[0][:, :256] - bias - dark
    measured = _plane(flat / sky)
    expected = truth["flat_illumination"] - truth["gradient"][0]
    np.testing.assert_allclose(measured, expected, atol=0.006)
    assert np.hypot(*truth["flat_illumination"]) == pytest.approx(REALISTIC.flat_gradient)


@pytest.mark.parametrize("realism", ["simple", "realistic"])
def test_overscan_has_its_own_noise_and_row_offsets(tmp_path, realism):
    """Bias frames: overscan noise = its read noise; image-minus-overscan row offsets = mismatch."""
    root = init_project(tmp_path).root
    simulate_project(root, frames=1, size=512, stars=50, ncal=5, seed=2, realism=realism)
    night = load_truth(root)["params"]["nights"][0]["night"]
    options, gain = resolve(realism), 2.7
    rd_os = (options.overscan_rdnoise or 10.0) / gain
    biases = _frames(root, night, "bias")
    diffs = []
    for raw in biases:
        image, over = raw[:, :512], raw[:, 512:]
        noise = (over - over.mean(axis=1, keepdims=True)).std() * np.sqrt(32 / 31)
        assert noise == pytest.approx(rd_os, rel=0.03)
        diff = image.mean(axis=1) - over.mean(axis=1)
        diffs.append(diff - diff.mean())
    diffs = np.concatenate(diffs)
    floor = rd_os**2 / 32 + (10.0 / gain) ** 2 / 512              # pixel read noise alone
    excess = diffs.var() - floor
    tolerance = 4 * diffs.var() * np.sqrt(2 / diffs.size)
    assert excess == pytest.approx(options.overscan_mismatch**2, abs=tolerance)
    columns = np.median(biases, axis=0)[:, :512].mean(axis=0)
    assert columns.std() == pytest.approx(options.bias_columns, abs=0.3)


def test_trails_where_the_truth_says(project):
    truth = load_truth(project)
    night = truth["params"]["nights"][0]["night"]
    assert len(truth["trails"]) >= 2
    bias = np.median(_frames(project, night, "bias"), axis=0)
    for frame, x0, y0, x1, y1, _, peak in truth["trails"]:
        raw, _ = read_image(project / "RAW" / night / str(truth["frame"][int(frame)]))
        image = raw.astype(np.float64) - bias
        t = np.linspace(0, 1, 4000)
        xs, ys = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
        normal = np.array([-(y1 - y0), x1 - x0]) / np.hypot(x1 - x0, y1 - y0)
        keep = (xs > 12) & (xs < 243) & (ys > 12) & (ys < 243)
        on = image[np.rint(ys[keep]).astype(int), np.rint(xs[keep]).astype(int)]
        off = image[np.rint(ys[keep] + 8 * normal[1]).astype(int),
                    np.rint(xs[keep] + 8 * normal[0]).astype(int)]
        # pixel centres lie up to 0.5 px off the line; the flat response is 0.8-1.0
        assert 0.6 * peak < np.median(on) - np.median(off) < 1.05 * peak


def test_bleeding_along_columns_from_saturated_stars():
    field, plan = world(size=256, stars=600, seed=5, trail_rate=0.0)
    field.catalog["mag"][:10] = 5.5                     # the brightest rows: ~half land inside
    raw, truth = object_frame(field, plan, 0, 0, np.ones(field.catalog["mag"].size))
    runs = truth["bleed"]
    assert len(runs) > 0 and truth["saturated"].sum() >= 2
    for col, first, last in runs:
        assert (raw[first:last + 1, col] >= 65535).all()
        assert (truth["saturated"] & (np.abs(truth["x"] - col) < 3)
                & (truth["y"] > first - 3) & (truth["y"] < last + 3)).any()
    lengths = runs[:, 2] - runs[:, 1] + 1
    widths = np.bincount(runs[:, 0]).max()
    assert lengths.max() >= 3 * 2 * widths              # trails run along columns
    assert truth["saturated"].sum() <= len(np.unique(runs[:, 0]))


# --- options ------------------------------------------------------------------------------------

def test_realism_is_saved_and_add_night_continues_it(tmp_path):
    root = init_project(tmp_path).root
    simulate_project(root, frames=1, size=128, stars=80, ncal=1, seed=4, realism="realistic")
    simulate_project(root, add_night=True)
    params = load_truth(root)["params"]
    assert resolve(params["realism"]) == REALISTIC
    second = load_truth(root, params["nights"][1]["night"])
    assert second["psf_beta"] == REALISTIC.psf_beta and second["faint_mag"].size > 0
    assert resolve(None) == SIMPLE and SIMPLE.is_simple and not REALISTIC.is_simple
    with pytest.raises(ConfigError, match="unknown realism"):
        resolve("fancy")
    with pytest.raises(ConfigError, match="unknown realism options"):
        resolve({"psf_beta": 3.0, "sharpness": 1})


def test_noise_truth_in_configured_apertures_includes_scintillation(tmp_path):
    """One 4 px aperture in trex.toml: truth noise there; its scintillation part is Young's."""
    config = build_config({"photometry": {"apertures": ["4.0:9.0:5.0"]}})
    truths = []
    for name, options in (("on", REALISTIC), ("off", dataclasses.replace(REALISTIC, aperture=0))):
        root = init_project(tmp_path / name, config).root
        simulate_project(root, frames=1, size=256, stars=300, ncal=1, seed=6, realism=options)
        truths.append(load_truth(root))
    truth, quiet = truths
    assert truth["noise"].shape == truth["x"].shape + (1,)
    np.testing.assert_allclose(truth["noise_radii"], [4.0])
    np.testing.assert_allclose(truth["noise_annuli"], [[9.0, 14.0]])
    fwhm = 2.3548 * ((truth["s"][0] + truth["d"][0]) * (truth["s"][0] - truth["d"][0])
                     - truth["k"][0] ** 2) ** -0.25
    beta = REALISTIC.psf_beta
    alpha2 = (fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))) ** 2
    inside = 1 - (1 + 16.0 / alpha2) ** (1 - beta)                 # Moffat encircled energy
    young = (0.09 * YOUNG_D ** (-2 / 3) * truth["airmass_star"][0] ** 1.75
             * np.exp(-truth["params"]["site"]["altitude"] / 8000) / np.sqrt(60.0))
    scint = truth["noise"][0, :, 0] ** 2 - quiet["noise"][0, :, 0] ** 2
    big = truth["mag"] < 13.0                    # float32 noise: a difference of squares
    np.testing.assert_allclose(np.sqrt(scint[big]),
                               (young * inside * truth["flux_adu"][0])[big], rtol=1e-3)
    bright = truth["mag"] < 9.0                  # scintillation dominates the bright stars
    assert (np.sqrt(scint[bright]) > 0.5 * truth["noise"][0, bright, 0]).all()
