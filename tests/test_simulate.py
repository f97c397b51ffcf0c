"""The simulator against independent truth: analytic integrals, astropy, a hand calibration."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest
from astropy.io import fits as afits
from astropy.time import Time
from astropy.wcs import WCS
from scipy.special import erf
from trex._render import add_stars

from trex.config import Config
from trex.fits import read_header, read_image
from trex.header import parse_header
from trex.project import ProjectError, init_project
from trex.simulate import load_truth, make_scene, render_frame, simulate_project
from trex.simulate.optics import shape_to_fwhm
from trex.simulate.stars import variability

SMALL = dict(frames=3, size=256, stars=300, ncal=3, seed=5)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = init_project(tmp_path_factory.mktemp("sim")).root
    simulate_project(root, **SMALL)
    return root


def _files(root) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "trex.toml" not in p.name}


def _box(image, x, y, half):
    i, j = int(round(x)), int(round(y))
    return image[j - half:j + half + 1, i - half:i + half + 1], i - half, j - half


# --- the kernel -------------------------------------------------------------------------

def test_kernel_integrates_over_pixels():
    """Axis-aligned star: each pixel holds the analytic integral (erf) of the Gaussian."""
    sx, sy, x0, y0, flux = 0.8, 1.1, 20.37, 19.81, 5.0e4
    image = np.zeros((40, 40), np.float32)
    s, d = 0.5 * (1 / sx**2 + 1 / sy**2), 0.5 * (1 / sx**2 - 1 / sy**2)
    add_stars(image, np.array([x0]), np.array([y0]), np.array([flux]),
              np.array([s]), np.array([d]), np.array([0.0]), order=5, nsigma=8.0)
    edges = np.arange(41) - 0.5
    px = np.diff(0.5 * erf((edges - x0) / (np.sqrt(2) * sx)))
    py = np.diff(0.5 * erf((edges - y0) / (np.sqrt(2) * sy)))
    expected = flux * py[:, None] * px[None, :]
    bright = expected > 1e-3 * flux
    np.testing.assert_allclose(image[bright], expected[bright], rtol=1e-4)
    assert image.sum() == pytest.approx(flux, rel=1e-6)


def test_kernel_rotated_ellipse_matches_brute_force():
    """Tilted ellipse (K != 0): pixels equal a fine midpoint-rule integration in numpy."""
    s, d, k, x0, y0, flux = 0.9, 0.25, -0.3, 8.3, 7.6, 1.0e4
    image = np.zeros((16, 16), np.float32)
    add_stars(image, np.array([x0]), np.array([y0]), np.array([flux]),
              np.array([s]), np.array([d]), np.array([k]), order=5, nsigma=8.0)
    sub = 64
    grid = (np.arange(16 * sub) + 0.5) / sub - 0.5 - np.array([[x0], [y0]])
    u, v = grid[0][None, :], grid[1][:, None]
    fine = np.exp(-0.5 * (s * (u * u + v * v) + d * (u * u - v * v) + 2 * k * u * v))
    pixels = fine.reshape(16, sub, 16, sub).sum(axis=(1, 3))
    expected = flux * pixels / pixels.sum()
    bright = expected > 1e-3 * flux
    np.testing.assert_allclose(image[bright], expected[bright], rtol=5e-4)


def test_kernel_rejects_bad_shapes():
    image = np.zeros((8, 8), np.float32)
    one = np.array([4.0])
    with pytest.raises(ValueError, match="ellipse"):
        add_stars(image, one, one, one, np.array([0.1]), np.array([0.2]), np.array([0.0]))
    with pytest.raises(ValueError, match="same length"):
        add_stars(image, one, np.array([1.0, 2.0]), one, one, one, one)


@pytest.mark.parametrize("ellipticity", [0.0, 0.6])
def test_noiseless_star_flux_and_centroid(ellipticity):
    scene = make_scene(size=512, nstars=150, seed=3, sky=0.0, ellipticity=ellipticity,
                       border=12, min_separation=21)
    image, truth = render_frame(scene, noise=False)
    assert truth["x"].size > 30
    half = 10
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    for x, y, flux in zip(truth["x"], truth["y"], truth["flux"], strict=True):
        box, i0, j0 = _box(image.astype(np.float64), x, y, half)
        total = box.sum()
        assert total == pytest.approx(flux, rel=1e-4)
        cx = (box * (xx + half + i0)).sum() / total
        cy = (box * (yy + half + j0)).sum() / total
        assert abs(cx - x) < 0.01 and abs(cy - y) < 0.01
    fwhm = shape_to_fwhm(truth["s"], truth["d"], truth["k"])
    assert 1.5 < fwhm.min() and fwhm.max() < 3.0


# --- noise -------------------------------------------------------------------------------

@pytest.mark.parametrize("sky", [20.0, 1500.0])
def test_noise_in_empty_region(sky):
    scene = make_scene(size=256, nstars=0, sky=sky, gain=2.7, rdnoise=10.0)
    image, _ = render_frame(scene, noise=True, seed=11)
    expected = np.sqrt(sky / 2.7 + (10.0 / 2.7) ** 2)
    assert image.std() == pytest.approx(expected, rel=0.05)
    assert image.mean() == pytest.approx(sky, abs=0.05 * expected)


def test_expected_noise_matches_scatter():
    """The truth's aperture noise equals the scatter of aperture sums over noise draws."""
    scene = make_scene(size=64, nstars=1, seed=4, sky=800.0, border=24, mag_range=(11, 11.5))
    _, truth = render_frame(scene, noise=False)
    x, y = truth["x"][0], truth["y"][0]
    yy, xx = np.mgrid[:64, :64]
    aperture = np.hypot(xx - x, yy - y) <= 2.45
    annulus = (np.hypot(xx - x, yy - y) >= 7.0) & (np.hypot(xx - x, yy - y) <= 13.0)
    sums = []
    for seed in range(300):
        image, _ = render_frame(scene, noise=True, seed=seed)
        sums.append(image[aperture].sum() - aperture.sum() * image[annulus].mean())
    # pixel-count aperture differs from the analytic one: compare with 10 %
    assert np.std(sums) == pytest.approx(truth["fluxerr"][0, 1], rel=0.1)


# --- the written project -----------------------------------------------------------------

def test_headers_parse(project):
    night = sorted((project / "RAW").iterdir())[0]
    kinds = {}
    for path in sorted(night.iterdir()):
        meta = parse_header(read_header(path), Config(), path)
        kinds[meta.imagetyp] = kinds.get(meta.imagetyp, 0) + 1
        with afits.open(path) as hdul:
            assert hdul[0].header["BITPIX"] == 16 and hdul[0].header["BZERO"] == 32768
            assert hdul[0].data.dtype == np.uint16
            assert hdul[0].data.shape == (256, 256 + 32)
        assert meta.trimsec == (slice(0, 256), slice(0, 256))
        assert meta.biassec == (slice(0, 256), slice(256, 288))
        assert meta.gain == 2.7 and meta.rdnoise == 10.0 and meta.saturate == 65535.0
        if meta.imagetyp == "object":
            assert meta.exptime == 30.0 and meta.field and meta.projid == "12"
    assert kinds == {"object": 3, "bias": 3, "dark": 3, "flat": 3}


def test_field_is_up_and_times_match(project):
    truth = load_truth(project)
    assert (truth["airmass"] < 1.5).all()
    frames = sorted((project / "RAW" / truth["params"]["nights"][0]["night"]).glob("*.fits"))
    starts = {}
    for path in frames:
        header = read_header(path)
        starts[path.name] = Time(header["DATE-OBS"], scale="utc").jd + 15.0 / 86400
    for name, jd in zip(truth["frame"], truth["jd"], strict=True):
        assert starts[name] == pytest.approx(jd, abs=1e-6)


def _catalog(project):
    path = next((project / "BASE" / "CAT").glob("*.csv"))
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    keys = ("ra", "dec", "pmra", "pmdec", "epoch")
    return {key: np.array([float(r[key]) for r in rows]) for key in keys}


def test_truth_wcs_maps_catalog(project):
    """astropy, reading the truth WCS text, puts the catalog stars at the truth positions."""
    truth, cat = load_truth(project), _catalog(project)
    for f in range(truth["jd"].size):
        years = Time(truth["jd"][f], format="jd").jyear - cat["epoch"]
        dec = cat["dec"] + cat["pmdec"] * years / 3.6e6
        ra = cat["ra"] + cat["pmra"] * years / 3.6e6 / np.cos(np.radians(cat["dec"]))
        wcs = WCS(afits.Header.fromstring(str(truth["wcs"][f]), sep="\n"))
        x, y = wcs.all_world2pix(ra, dec, 0, tolerance=1e-9)
        inside = (x > 0) & (x < 255) & (y > 0) & (y < 255)
        assert inside.sum() > 100
        np.testing.assert_allclose(x[inside], truth["x"][f][inside], atol=1e-3)
        np.testing.assert_allclose(y[inside], truth["y"][f][inside], atol=1e-3)


def _master(project, night, kind, bias=None):
    frames = []
    for path in sorted((project / "RAW" / night).glob("*.fits")):
        image, header = read_image(path)
        if header["IMAGETYP"] == kind:
            frames.append(image[:, :256] - (0 if bias is None else bias))
    return np.median(frames, axis=0)


def test_hand_calibrated_stars_have_true_flux(project):
    """Bias/dark/flat frames calibrate an object frame so bright stars sum to their true flux."""
    truth = load_truth(project)
    night = truth["params"]["nights"][0]["night"]
    bias = _master(project, night, "bias")
    dark = _master(project, night, "dark", bias)
    flat = _master(project, night, "flat", bias)
    flat /= np.median(flat[96:160, 96:160])
    image, _ = read_image(project / "RAW" / night / str(truth["frame"][0]))
    image = (image[:, :256] - bias - dark) / flat
    x, y, flux = truth["x"][0], truth["y"][0], truth["flux_adu"][0]
    yy, xx = np.mgrid[:256, :256]
    checked = 0
    for j in np.flatnonzero((truth["mag"] > 8.5) & (truth["mag"] < 11.5)):
        neighbours = (np.hypot(x - x[j], y - y[j]) < 16) & (flux > 0.01 * flux[j])
        if not (20 < x[j] < 235 and 20 < y[j] < 235) or neighbours.sum() > 1:
            continue
        r = np.hypot(xx - x[j], yy - y[j])
        sky = np.median(image[(r > 9) & (r < 14)])
        measured = (image[r < 6] - sky).sum()
        err = np.sqrt(flux[j] / 2.7 + (r < 6).sum() * (sky / 2.7 + 14))
        assert abs(measured - flux[j]) < 5 * err + 1e-3 * flux[j]
        checked += 1
    assert checked >= 3


def test_same_seed_same_files(project, tmp_path):
    root = init_project(tmp_path / "again").root
    simulate_project(root, **SMALL)
    assert _files(root) == _files(project)
    other = init_project(tmp_path / "other").root
    simulate_project(other, **dict(SMALL, seed=6))
    assert _files(other) != _files(project)


def test_add_night_continues(tmp_path):
    root = init_project(tmp_path / "a").root
    simulate_project(root, **SMALL)
    before = _files(root)
    simulate_project(root, add_night=True)
    after = _files(root)
    assert all(after[name] == digest for name, digest in before.items()
               if not name.endswith("simulation.json"))
    both = init_project(tmp_path / "b").root
    simulate_project(both, nights=2, **SMALL)
    assert _files(both) == after
    with pytest.raises(ProjectError, match="add-night"):
        simulate_project(root, **SMALL)
    nights = [n["night"] for n in load_truth(root)["params"]["nights"]]
    first, second = load_truth(root, nights[0]), load_truth(root, nights[1])
    assert second["jd"][0] - first["jd"][0] == pytest.approx(1.0, abs=0.01)
    last = max(read_header(p)["FRAMENO"] for p in (root / "RAW" / nights[0]).iterdir())
    new = [read_header(root / "RAW" / nights[1] / name)["FRAMENO"] for name in second["frame"]]
    assert min(new) == last + 1
    periodic = [v for v in second["variables"] if v["kind"] != "flare"]
    assert periodic == [v for v in first["variables"] if v["kind"] != "flare"]
    assert {v.get("night") for v in second["variables"]} == {None, 0, 1}


def test_variability_shapes():
    transit = {"kind": "transit", "period": 2.0, "t0": 100.0, "depth": 0.01, "duration": 0.1}
    eb = {"kind": "eb", "period": 2.0, "t0": 100.0, "depth": 0.3, "depth2": 0.05, "duration": 0.1}
    puls = {"kind": "pulsator", "period": 0.4, "t0": 100.0, "amplitude": 0.02}
    flare = {"kind": "flare", "t0": 100.0, "amplitude": 0.5, "decay": 0.01}
    t = np.array([100.0, 104.0, 101.0, 100.1])
    np.testing.assert_allclose(variability(transit, t), [0.99, 0.99, 1.0, 1.0])
    np.testing.assert_allclose(variability(eb, t), [0.7, 0.7, 0.95, 1.0])
    np.testing.assert_allclose(variability(puls, np.array([100.1, 100.3])), [1.02, 0.98])
    np.testing.assert_allclose(variability(flare, np.array([100.0, 100.01, 99.0])),
                               [1.5, 1.0 + 0.5 / np.e, 1.0])


def test_compressed_frames_hold_the_same_pixels(tmp_path):
    small = dict(frames=1, size=128, stars=50, ncal=1, seed=9)
    plain, packed = init_project(tmp_path / "p").root, init_project(tmp_path / "z").root
    simulate_project(plain, **small)
    simulate_project(packed, compress=True, **small)
    names = sorted(p.name for p in (plain / "RAW").rglob("*.fits"))
    packed_names = sorted(p.name for p in (packed / "RAW").rglob("*.fits.fz"))
    assert [n + ".fz" for n in names] == packed_names and len(names) == 4
    for a, b in zip(sorted((plain / "RAW").rglob("*.fits")),
                    sorted((packed / "RAW").rglob("*.fits.fz")), strict=True):
        assert np.array_equal(read_image(a)[0], read_image(b)[0])
        assert read_header(b)["IMAGETYP"] == read_header(a)["IMAGETYP"]
