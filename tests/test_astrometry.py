"""Astrometry against synthetic fields with a known (true) TAN-SIP WCS."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from astropy.io import fits as afits
from astropy.wcs import WCS, Sip

from trex import asterism
from trex.astrometry import AstrometryError, initial_wcs, run, solve, write_wcs
from trex.catalog import propagate, read_catalog
from trex.config import Config
from trex.fits import FrameError
from trex.frame import Context, Frame
from trex.header import parse_header
from trex.project import Project
from trex.wcsfit import inverse_gnomonic

SIZE = 2048
SCALE = 20.0 / 3600.0     # deg/px
SOURCE_DTYPE = [("x", "f8"), ("y", "f8"), ("flux", "f8"), ("snr", "f8"), ("s", "f8"),
                ("d", "f8"), ("k", "f8"), ("flag", "i4")]


def true_wcs(ra0: float, dec0: float, angle: float = 0.0, flip: bool = False) -> WCS:
    """2048^2 TAN-SIP WCS, 20"/px, north rotated by ``angle`` deg; SIP of ~3 px at the corners."""
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    parity = np.diag([1.0, 1.0] if flip else [-1.0, 1.0])
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    wcs.wcs.crval = [ra0, dec0]
    wcs.wcs.crpix = [SIZE / 2 + 0.5, SIZE / 2 + 0.5]
    wcs.wcs.cd = SCALE * np.array([[c, -s], [s, c]]) @ parity
    a, b = np.zeros((4, 4)), np.zeros((4, 4))
    a[2, 0], a[1, 1], a[0, 2], a[3, 0], a[1, 2] = 1.5e-6, -0.8e-6, 0.6e-6, 1.2e-9, 0.9e-9
    b[0, 2], b[1, 1], b[2, 0], b[0, 3], b[2, 1] = 1.2e-6, 0.7e-6, -0.5e-6, 1.1e-9, -0.8e-9
    wcs.sip = Sip(a, b, None, None, wcs.wcs.crpix)
    wcs.pixel_shape = (SIZE, SIZE)
    return wcs


def catalog(rng, nstars: int, ra0: float = 60.0, dec0: float = -30.0, half: float = 7.0):
    """Stars uniform on a (2 half)^2 deg tangent-plane square; faint-dominated magnitudes 6-14."""
    xi, eta = rng.uniform(-half, half, (2, nstars))
    ra, dec = inverse_gnomonic(xi, eta, ra0, dec0)
    lo = 10 ** (-0.3 * 8)
    mag = 14 + np.log10(rng.uniform(lo, 1, nstars)) / 0.3
    return ra, dec, mag


def sources(rng, wcs: WCS, ra, dec, mag, noise=0.05, drop=0.10, spurious=0.05,
            snr_noise=False) -> np.ndarray:
    """Detected sources: true positions + noise, ``drop`` lost, ``spurious`` fraction of fakes.

    With ``snr_noise`` the S/N runs from 15 (mag 14) to ~600 (mag 6) and the
    centroid noise per axis is 1.7 / snr px (as found by trex.extract on
    simulated frames) instead of the constant ``noise``; else snr is 0 (unknown).
    """
    x, y = wcs.all_world2pix(ra, dec, 0)
    inside = (x > 0) & (x < SIZE - 1) & (y > 0) & (y < SIZE - 1) & (rng.uniform(size=len(x)) > drop)
    n = int(inside.sum())
    flux = 10 ** (-0.4 * (mag[inside] - 20)) * rng.lognormal(0, 0.1, n)
    snr = 15 * 10 ** (-0.2 * (mag[inside] - 14)) if snr_noise else np.zeros(n)
    sigma = 1.7 / snr if snr_noise else noise
    nfake = int(spurious * n)
    out = np.zeros(n + nfake, SOURCE_DTYPE)
    for name, true in (("x", x[inside]), ("y", y[inside])):
        fake = rng.uniform(0, SIZE - 1, nfake)
        out[name] = np.concatenate([true + rng.normal(0, 1, n) * sigma, fake])
    out["flux"] = np.concatenate([flux, rng.choice(flux, nfake)])
    out["snr"] = np.concatenate([snr, rng.choice(snr, nfake)])
    return out[rng.permutation(len(out))]


def offset(ra0: float, dec0: float, dist: float, angle: float) -> tuple[float, float]:
    """A point ``dist`` deg from (ra0, dec0) at position angle ``angle`` deg."""
    ra, dec = inverse_gnomonic(dist * np.sin(np.radians(angle)), dist * np.cos(np.radians(angle)),
                               ra0, dec0)
    return float(ra), float(dec)


def grid_error(truth: WCS, solved: WCS) -> np.ndarray:
    """Pixel distance, on a 20x20 grid over the frame, between the true and solved WCS."""
    gy, gx = np.mgrid[0:SIZE - 1:20j, 0:SIZE - 1:20j]
    ra, dec = truth.all_pix2world(gx.ravel(), gy.ravel(), 0)
    x, y = solved.all_world2pix(ra, dec, 0)
    return np.hypot(x - gx.ravel(), y - gy.ravel())


@pytest.fixture(scope="module")
def sky():
    """A 14x14 deg catalog around (60, -30): ~3500 stars on the frame."""
    return catalog(np.random.default_rng(5), 5300)


def solve_case(sky, seed, angle=0.0, flip=False, miss=0.0, scale=1.0, **kw):
    rng = np.random.default_rng(seed)
    ra, dec, mag = sky
    truth = true_wcs(60.0, -30.0, angle, flip)
    src = sources(rng, truth, ra, dec, mag)
    gra, gdec = offset(60.0, -30.0, miss, rng.uniform(0, 360))
    wcs, quality = solve(src, ra, dec, mag, (SIZE, SIZE), ra=gra, dec=gdec,
                         pixscale=20.0 * scale, **kw)
    return truth, src, wcs, quality


def test_solution_matches_true_wcs(sky):
    truth, src, wcs, quality = solve_case(sky, 1, miss=0.2)
    error = grid_error(truth, wcs)
    assert np.median(error) < 0.03
    assert error.max() < 0.1
    # residuals of 0.05 px Gaussian noise per axis: radii have median 0.0589 px
    assert 0.045 < quality["wcs_median"] < 0.075
    assert 0.04 < quality["wcs_std"] < 0.06
    assert quality["wcs_nmatch"] > 0.85 * 0.95 * len(src)
    assert wcs.sip is not None and wcs.sip.a_order == 3


def test_snr_weighted_fit_keeps_faint_stars(sky):
    rng = np.random.default_rng(2)
    ra, dec, mag = sky
    truth = true_wcs(60.0, -30.0, 20.0)
    src = sources(rng, truth, ra, dec, mag, snr_noise=True)
    wcs, quality = solve(src, ra, dec, mag, (SIZE, SIZE), ra=60.3, dec=-30.2, pixscale=20.0)
    assert np.median(grid_error(truth, wcs)) < 0.01
    # every real source is kept: clipping works on S/N-normalised residuals (a clip
    # on raw residuals loses ~2 % of the faint ones here)
    assert quality["wcs_nmatch"] > 0.99 * len(src) / 1.05
    true_radii = np.hypot(*(1.7 / 15 * 10 ** (0.2 * (mag - 14)) * rng.normal(0, 1, (2, len(mag)))))
    assert quality["wcs_median"] == pytest.approx(np.median(true_radii), rel=0.2)


@pytest.mark.parametrize("angle, flip, miss, scale", [
    (90.0, False, 0.0, 1.0), (180.0, False, 0.0, 1.0), (270.0, False, 0.0, 1.0),
    (37.5, False, 0.0, 1.0), (0.0, True, 0.0, 1.0), (0.0, False, 1.0, 1.0),
    (0.0, False, 0.0, 1.05), (0.0, False, 0.0, 0.95), (123.0, True, 1.0, 1.05),
    (301.0, True, 1.0, 0.95),
])
def test_solves_any_orientation_offset_and_scale(sky, angle, flip, miss, scale):
    truth, _, wcs, _ = solve_case(sky, 7, angle, flip, miss, scale)
    assert np.median(grid_error(truth, wcs)) < 0.03


@pytest.mark.parametrize("ra0, dec0", [(0.5, 10.0), (10.0, -88.0)])
def test_ra_wrap_and_pole_in_field(ra0, dec0):
    rng = np.random.default_rng(17)
    ra, dec, mag = catalog(rng, 5300, ra0, dec0)
    truth = true_wcs(ra0, dec0, 33.0)
    src = sources(rng, truth, ra, dec, mag)
    gra, gdec = offset(ra0, dec0, 1.0, 77.0)
    wcs, _ = solve(src, ra, dec, mag, (SIZE, SIZE), ra=gra, dec=gdec, pixscale=20.5)
    assert np.median(grid_error(truth, wcs)) < 0.03


def test_too_few_usable_sources_fail_cleanly(sky):
    ra, dec, mag = sky
    src = sources(np.random.default_rng(18), true_wcs(60.0, -30.0), ra, dec, mag)
    src["flag"] = 4                     # every source saturated: none usable in the fit
    with pytest.raises(AstrometryError, match="too few to fit"):
        solve(src, ra, dec, mag, (SIZE, SIZE), ra=60.0, dec=-30.0, pixscale=20.0)


def test_sparse_field():
    sky = catalog(np.random.default_rng(11), 450)
    truth, src, wcs, quality = solve_case(sky, 12, 71.0, False, 0.7, 1.03)
    assert len(src) < 320
    assert np.median(grid_error(truth, wcs)) < 0.03


def test_crowded_field():
    sky = catalog(np.random.default_rng(13), 40000)
    truth, src, wcs, quality = solve_case(sky, 14, 250.0, True, 0.8, 0.97)
    assert len(src) > 20000
    assert np.median(grid_error(truth, wcs)) < 0.03
    assert quality["wcs_nmatch"] > 0.8 * len(src)


def test_plain_tan_order_1(sky):
    truth, _, wcs, _ = solve_case(sky, 3, 10.0, sip_order=1, max_median=10.0, max_p90=10.0)
    assert wcs.sip is None
    # a linear WCS cannot follow the ~3 px SIP distortion at the corners
    assert np.median(grid_error(truth, wcs)) > 0.1


def test_wrong_field_fails_with_reason(sky):
    rng = np.random.default_rng(21)
    other = catalog(rng, 5300)          # different stars over the same area
    src = sources(rng, true_wcs(60.0, -30.0), *other)
    with pytest.raises(AstrometryError, match="no asterism match"):
        solve(src, *sky, (SIZE, SIZE), ra=60.0, dec=-30.0, pixscale=20.0)


def test_limits_fail_with_quality(sky):
    with pytest.raises(AstrometryError, match="residuals too large") as err:
        solve_case(sky, 4, max_median=0.02)
    assert err.value.quality["wcs_median"] > 0.02


def test_header_wcs_guess_is_used(sky):
    ra, dec, mag = sky
    truth = true_wcs(60.0, -30.0, 200.0, True)
    src = sources(np.random.default_rng(8), truth, ra, dec, mag)
    guess = truth.deepcopy()            # linear part only, nudged by ~0.02 deg
    guess.sip = None
    guess.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    guess.wcs.crval = [60.02, -30.01]
    wcs, _ = solve(src, ra, dec, mag, (SIZE, SIZE), guess)
    assert np.median(grid_error(truth, wcs)) < 0.03


def test_initial_wcs_from_meta_and_header():
    header = afits.Header({"IMAGETYP": "object", "EXPTIME": 30.0, "DATE-OBS": "2026-11-01T03:00:00",
                           "OBJECT": "F1", "RA": "04:00:00", "DEC": "-30:00:00", "PIXSCALE": 20.0})
    meta = parse_header(header, Config())
    wcs = initial_wcs(meta, (SIZE, SIZE), header)
    centre = wcs.all_pix2world([[(SIZE - 1) / 2, (SIZE - 1) / 2]], 0)[0]
    np.testing.assert_allclose(centre, [60.0, -30.0], atol=1e-9)
    # north up, east left: one pixel up is +20" in dec, one pixel right is -RA
    c = SIZE / 2
    step = wcs.all_pix2world([[c, c], [c, c + 1], [c + 1, c]], 0)
    assert step[1, 1] - step[0, 1] == pytest.approx(20 / 3600, rel=1e-3)
    assert step[2, 0] < step[0, 0]
    truth = true_wcs(10.0, 20.0, 30.0)
    header.update(truth.to_header(relax=True))
    from_header = initial_wcs(meta, (SIZE, SIZE), header)
    np.testing.assert_allclose(from_header.wcs.crval, [10.0, 20.0])
    assert initial_wcs(dataclasses.replace(meta, ra=None), (SIZE, SIZE)) is None


def test_write_wcs_replaces_old_keywords(sky):
    truth, _, wcs, _ = solve_case(sky, 9, 45.0)
    header = afits.Header({"OBJECT": "F1", "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN",
                           "CRVAL1": 1.0, "CRVAL2": 2.0, "CD1_1": 1.0, "CD2_2": 1.0,
                           "CROTA2": 5.0, "PV2_1": 0.1})
    write_wcs(header, wcs)
    assert header["OBJECT"] == "F1" and "CD1_1" not in header and "CROTA2" not in header
    again = WCS(header)
    gy, gx = np.mgrid[0:SIZE:9j, 0:SIZE:9j]
    np.testing.assert_allclose(again.all_pix2world(gx.ravel(), gy.ravel(), 0),
                               wcs.all_pix2world(gx.ravel(), gy.ravel(), 0), atol=1e-9)
    # the fitted inverse polynomial (AP/BP) alone brings sky positions back within 0.01 px
    ra, dec = wcs.all_pix2world(gx.ravel(), gy.ravel(), 0)
    linear = np.array(again.wcs_world2pix(ra, dec, 0)) - (again.wcs.crpix[:, None] - 1)
    x, y = np.array(again.sip_foc2pix(*linear, 0)) - 1.0   # foc2pix adds the 1-based CRPIX
    assert np.hypot(x - gx.ravel(), y - gy.ravel()).max() < 0.01


def write_csv(path, ra, dec, mag, pmra=None, pmdec=None):
    n = len(ra)
    pmra = np.zeros(n) if pmra is None else pmra
    pmdec = np.zeros(n) if pmdec is None else pmdec
    rows = [f"S{i:05d},{ra[i]:.10f},{dec[i]:.10f},{mag[i]:.3f},{pmra[i]:.3f},{pmdec[i]:.3f},2000.0"
            for i in range(n)]
    path.write_text("objectid,ra,dec,mag,pmra,pmdec,epoch\n" + "\n".join(rows) + "\n")
    return path


def make_frame(tmp_path, src, header_extra=None):
    header = afits.Header({"IMAGETYP": "object", "EXPTIME": 30.0, "DATE-OBS": "2026-01-01T00:00:00",
                           "OBJECT": "F1", "RA": 60.3, "DEC": -29.6, "PIXSCALE": 20.5})
    header.update(header_extra or {})
    meta = parse_header(header, Config())
    return Frame(framekey=1, rawpath=tmp_path / "raw.fits", night="n1", meta=meta,
                 image=np.zeros((SIZE, SIZE), np.float32), header=header,
                 redpath=tmp_path / "red.fits", sources=src)


@pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")
def test_stage_propagates_proper_motion_and_writes_header(tmp_path, sky):
    rng = np.random.default_rng(31)
    ra, dec, mag = sky
    pmra, pmdec = rng.normal(0, 300, (2, len(ra)))      # mas/yr; 26 yr -> ~0.4 px
    cat = read_catalog(write_csv(tmp_path / "F1.csv", ra, dec, mag, pmra, pmdec))
    truth = true_wcs(60.0, -30.0, 150.0, True)
    frame = make_frame(tmp_path, None)
    now_ra, now_dec = propagate(cat, 2000.0 + (frame.meta.jd - 2451545.0) / 365.25)
    frame.sources = sources(rng, truth, now_ra, now_dec, cat["mag"])
    context = Context(project=Project(tmp_path), config=Config(), catalogs={"F1": cat})
    frame = run(frame, context)
    assert frame.quality["wcs_median"] < 0.075
    assert set(frame.quality) >= {"wcs_nmatch", "wcs_median", "wcs_p90", "wcs_std"}
    assert np.median(grid_error(truth, WCS(frame.header))) < 0.03
    # without propagation the catalog is ~0.4 px off: the same frame fits far worse
    static = cat.copy()
    static["pmra"] = 0.0
    static["pmdec"] = 0.0
    frame.quality.clear()
    with pytest.raises(FrameError, match="residuals too large"):
        run(frame, Context(project=Project(tmp_path), config=Config(), catalogs={"F1": static}))
    assert frame.quality["wcs_median"] > 0.2


def test_stage_fails_cleanly(tmp_path, sky):
    rng = np.random.default_rng(41)
    other = catalog(rng, 5300)
    frame = make_frame(tmp_path, sources(rng, true_wcs(60.0, -30.0), *other))
    cat = read_catalog(write_csv(tmp_path / "F1.csv", *sky))
    context = Context(project=Project(tmp_path), config=Config(), catalogs={"F1": cat})
    with pytest.raises(FrameError, match="astrometry: no asterism match") as err:
        run(frame, context)
    assert err.value.path == str(tmp_path / "red.fits")
    with pytest.raises(FrameError, match="no catalog for field 'F1'"):
        run(frame, Context(project=Project(tmp_path), config=Config(), catalogs={}))


def similar(xy, scale, angle, flip, shift):
    """(n, 2) points through a similarity: mirror x first if ``flip``, then rotate, scale, shift."""
    z = xy[:, 0] + 1j * xy[:, 1]
    z = scale * np.exp(1j * np.radians(angle)) * (np.conj(z) if flip else z) + complex(*shift)
    return np.stack([z.real, z.imag], 1)


def test_triangle_invariants_survive_similarity_and_mirror():
    xy = np.random.default_rng(51).uniform(-1000, 1000, (50, 2))
    moved = similar(xy, 1.04, 77.0, True, (300.0, -120.0))
    v1, inv1 = asterism.triangles(xy)
    v2, inv2 = asterism.triangles(moved, min_side=10.0 * 1.04)
    order1, order2 = np.lexsort(v1.T[::-1]), np.lexsort(v2.T[::-1])
    np.testing.assert_array_equal(v1[order1], v2[order2])      # same vertices, same order
    np.testing.assert_allclose(inv1[order1], inv2[order2], atol=1e-9)
    assert np.all((inv1 > 0) & (inv1 <= 1)) and np.all(inv1[:, 0] <= inv1[:, 1])


def test_match_lists_recovers_the_similarity():
    rng = np.random.default_rng(52)
    cat = rng.uniform(-1000, 1000, (80, 2))
    src = similar(cat[:60], 1 / 1.05, -140.0, True, (25.0, 40.0)) + rng.normal(0, 0.05, (60, 2))
    src[:10] = rng.uniform(-1000, 1000, (10, 2))               # 10 spurious sources
    support, a, b, flip = asterism.match_lists(src, cat[:60], cat, radius=3.0)
    assert flip and support >= 45
    np.testing.assert_allclose(asterism.apply(a, b, flip, src[10:]), cat[10:60], atol=2.0)
    # unrelated lists find no proposal with real support
    support, *_ = asterism.match_lists(rng.uniform(-1000, 1000, (60, 2)), cat[:60], cat, radius=3.0)
    assert support < 8
