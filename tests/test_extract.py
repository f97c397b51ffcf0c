"""Source extraction against simulated truth (trex.background, trex.extract).

Stars are rendered here as pixel-integrated elliptical Gaussians by 10 x 10
sub-pixel sampling, independently of the 2 x 2 quadrature used by the fit.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial import cKDTree

from trex import _background
from trex.background import background
from trex.config import Config
from trex.extract import completeness, extract_sources, run, shape_map
from trex.fits import FrameError
from trex.flags import MASK, SOURCE
from trex.frame import Context, Frame

SKY = 1000.0
S0 = 1.0 / 1.02 ** 2          # sigma 1.02 px: FWHM 2.4 px (HATPI-like)
FIT_FAILED = SOURCE["FIT_FAILED"].bit


def render(shape, x, y, flux, s, d=0.0, k=0.0, half=7, over=10):
    """Image of pixel-integrated elliptical Gaussians (float64, ADU)."""
    n = len(x)
    s, d, k = (np.broadcast_to(np.asarray(v, float), (n,)) for v in (s, d, k))
    u = (np.arange(over) + 0.5) / over - 0.5
    offs = np.arange(-half, half + 1)
    cx, cy = np.round(x).astype(int), np.round(y).astype(int)
    ii = cx[:, None, None] + offs[None, None, :]
    jj = cy[:, None, None] + offs[None, :, None]
    ex = ii[..., None, None] + u[None, None, None, None, :] - x[:, None, None, None, None]
    ey = jj[..., None, None] + u[None, None, None, :, None] - y[:, None, None, None, None]
    sh = (slice(None),) + (None,) * 4
    q = s[sh] * (ex ** 2 + ey ** 2) + d[sh] * (ex ** 2 - ey ** 2) + 2 * k[sh] * ex * ey
    norm = flux * np.sqrt(s * s - d * d - k * k) / (2 * np.pi)
    stamps = norm[:, None, None] * np.exp(-0.5 * q).mean(axis=(3, 4))
    ii, jj = np.broadcast_to(ii, stamps.shape), np.broadcast_to(jj, stamps.shape)
    ok = (ii >= 0) & (ii < shape[1]) & (jj >= 0) & (jj < shape[0])
    image = np.zeros(shape)
    np.add.at(image, (jj[ok], ii[ok]), stamps[ok])
    return image


def noisy(model, rng, read=5.0):
    return (rng.poisson(model) + rng.normal(0.0, read, model.shape)).astype(np.float32)


def isolated_field(rng, n=150, size=384, mindist=12.0, border=10.0):
    """Star positions at least ``mindist`` px apart."""
    pts = []
    while len(pts) < n:
        p = rng.uniform(border, size - border, 2)
        if all(np.hypot(*(p - q)) >= mindist for q in pts):
            pts.append(p)
    pts = np.array(pts)
    return pts[:, 0], pts[:, 1]


def match(src, x, y, radius=1.0):
    dist, idx = cKDTree(np.c_[src["x"], src["y"]]).query(np.c_[x, y])
    return dist <= radius, idx


def test_background_follows_gradient_and_rms():
    rng = np.random.default_rng(3)
    ny, nx = 384, 512
    yy, xx = np.mgrid[0:ny, 0:nx]
    truth = SKY + 0.6 * xx - 0.4 * yy + 3e-4 * (xx - 256.0) ** 2
    x, y = rng.uniform(0, nx, 300), rng.uniform(0, ny, 300)
    image = noisy(truth + render((ny, nx), x, y, 10 ** rng.uniform(3, 5, 300), S0), rng)
    sky, rms = background(image, mesh=32)
    assert sky.shape == image.shape and sky.dtype == np.float32
    err = sky - truth
    assert np.sqrt(np.mean(err ** 2)) < 2.0            # gradient spans ~500 ADU
    assert np.abs(err[16:-16, 16:-16]).max() < 6.0
    noise = np.sqrt(truth + 25.0)
    assert np.median(rms / noise) == pytest.approx(1.0, abs=0.05)


def _clipped_mode_reference(values, nsigma=3.0, maxiter=5):
    """The documented mesh estimator, in plain numpy."""
    a = values.astype(np.float64)
    mean, std, last = a.mean(), a.std(), len(a)
    for _ in range(maxiter):
        lo, hi = np.float32(mean - nsigma * std), np.float32(mean + nsigma * std)
        a = a[(a >= lo) & (a <= hi)]
        mean, std = a.mean(), a.std()
        if len(a) == last:
            break
        last = len(a)
    median = np.sort(a)[len(a) // 2]
    mode = median if (mean - median) / std > 0.3 else 2.5 * median - 1.5 * mean
    return mode, std


def test_mesh_kernel_matches_the_documented_estimator():
    rng = np.random.default_rng(29)
    image = rng.normal(SKY, 30.0, (96, 160)).astype(np.float32)
    image[rng.integers(0, 96, 300), rng.integers(0, 160, 300)] += 800.0   # star light
    image[5, 7] = np.nan
    mask = np.zeros(image.shape, np.uint8)
    mask[40:60, 100:130] = 1
    yedges, xedges = np.array([0, 48, 96], np.intp), np.array([0, 64, 100, 160], np.intp)
    sky, rms = np.empty((2, 3)), np.empty((2, 3))
    _background.mesh_stats(image, mask, yedges, xedges, sky, rms)
    for my in range(2):
        for mx in range(3):
            cell = np.s_[yedges[my]:yedges[my + 1], xedges[mx]:xedges[mx + 1]]
            values = image[cell][(mask[cell] == 0) & np.isfinite(image[cell])]
            mode, std = _clipped_mode_reference(values)
            assert sky[my, mx] == pytest.approx(mode, abs=1e-6)
            assert rms[my, mx] == pytest.approx(std, rel=1e-6)


@pytest.mark.parametrize("d0,k0", [(0.0, 0.0), (0.08, -0.05)])
def test_bright_isolated_stars_centroid_and_shape(d0, k0):
    rng = np.random.default_rng(7)
    x, y = isolated_field(rng)
    flux = 10 ** rng.uniform(4.3, 5.3, len(x))
    image = noisy(SKY + render((384, 384), x, y, flux, S0, d0, k0), rng)
    src = extract_sources(image, 5.0, gain=1.0)
    found, idx = match(src, x, y)
    assert found.all()                                  # every bright star detected
    s = src[idx]
    assert (s["flag"] & FIT_FAILED == 0).all()
    err = np.hypot(s["x"] - x, s["y"] - y)
    assert np.sqrt(np.mean(err ** 2)) < 0.02 * np.sqrt(2)   # 0.02 px rms per axis
    assert np.median(s["s"]) == pytest.approx(S0, rel=0.03)
    assert np.median(s["d"]) == pytest.approx(d0, abs=0.01)
    assert np.median(s["k"]) == pytest.approx(k0, abs=0.01)
    assert np.median(s["flux"] / flux) == pytest.approx(1.0, abs=0.02)
    assert np.median(s["bg"]) == pytest.approx(SKY, abs=5.0)
    assert len(src) < len(x) * 1.05                     # hardly any spurious source


def test_close_pair_is_split():
    rng = np.random.default_rng(11)
    sep_px = 2.5 * 2.4
    x = np.array([100.0, 100.0 + sep_px, 60.3, 60.3 + 0.6 * sep_px])
    y = np.array([80.0, 80.4, 40.2, 40.2 + 0.8 * sep_px])
    flux = np.array([40000.0, 40000.0, 50000.0, 15000.0])
    image = noisy(SKY + render((128, 160), x, y, flux, S0), rng)
    src = extract_sources(image, 5.0, mesh=32, gain=1.0)
    assert len(src) == 4
    found, idx = match(src, x, y, radius=0.3)
    assert found.all() and len(set(idx)) == 4
    assert (src["flag"] & SOURCE["BLENDED"].bit).all()   # each pair was one component
    assert (src["flag"] & FIT_FAILED == 0).all()


def test_masked_pixels_never_seed_detections():
    rng = np.random.default_rng(5)
    x, y = isolated_field(rng, n=40, size=256)
    image = noisy(SKY + render((256, 256), x, y, np.full(40, 2e4), S0), rng)
    mask = np.zeros(image.shape, dtype=np.uint8)
    image[:, 131] += 30000.0                             # hot column
    image[200:203, 20:23] = 60000.0                      # hot cluster
    mask[:, 131] = MASK["BADPIX"].bit
    mask[200:203, 20:23] = MASK["NOFLAT"].bit
    bad = cKDTree(np.argwhere(mask)[:, ::-1])

    def near_bad(src):
        return bad.query(np.c_[src["x"], src["y"]])[0] < 3.0

    unmasked = extract_sources(image, 5.0)
    assert near_bad(unmasked).sum() >= 2                 # the defects do look like sources
    src = extract_sources(image, 5.0, mask=mask)
    found, idx = match(src, x, y)
    stray = np.ones(len(src), dtype=bool)
    stray[idx[found]] = False
    assert not (stray & near_bad(src)).any()
    assert found.sum() >= len(x) - 2                     # stars on the column may be lost
    flagged = src["flag"][idx[found]] & SOURCE["MASKED"].bit
    near_col = np.abs(x[found] - 131) <= 3
    assert (flagged[near_col] > 0).all()


def test_saturated_star_is_found_once_and_flagged():
    rng = np.random.default_rng(23)
    model = SKY + render((96, 96), np.array([40.4]), np.array([50.7]), np.array([2e6]), S0)
    image = np.minimum(noisy(model, rng), 65535.0)
    mask = np.where(image >= 65535.0, np.uint8(MASK["SATURATED"].bit), np.uint8(0))
    assert mask.sum() > 4
    src = extract_sources(image, 5.0, mask=mask, mesh=32)
    near = np.hypot(src["x"] - 40.4, src["y"] - 50.7) < 2.0
    assert near.sum() == 1 and len(src) == 1
    assert src["flag"][near][0] & SOURCE["SATURATED"].bit


def test_fit_failure_is_flagged_and_fit_can_be_skipped():
    rng = np.random.default_rng(2)
    image = noisy(np.full((96, 96), SKY), rng)
    image[40, 50] += 6000.0                              # a cosmic ray: no Gaussian fits it
    image += render((96, 96), np.array([20.3]), np.array([70.6]), np.array([3e4]), S0)
    src = extract_sources(image, 5.0, mesh=32)
    cosmic = src[np.hypot(src["x"] - 50, src["y"] - 40) < 1]
    assert len(cosmic) == 1 and cosmic["flag"][0] & FIT_FAILED
    assert np.isnan(cosmic["s"][0])
    plain = extract_sources(image, 5.0, mesh=32, fit_shape=False)
    assert len(plain) == len(src) and np.isnan(plain["s"]).all()
    assert (plain["flag"] & FIT_FAILED == 0).all()
    star = plain[np.hypot(plain["x"] - 20.3, plain["y"] - 70.6) < 0.2]
    assert len(star) == 1


def test_completeness_vs_snr():
    rng = np.random.default_rng(13)
    x, y = isolated_field(rng, n=250, size=448, mindist=10.0)
    flux = 10 ** rng.uniform(2.3, 4.0, len(x))
    image = noisy(SKY + render((448, 448), x, y, flux, S0), rng)
    src = extract_sources(image, 5.0)
    noise = np.sqrt(flux + (SKY + 25.0) * 4 * np.pi / S0)   # optimal PSF-fit S/N
    bins = np.array([0, 10, 15, 20, 25, 30, 40, 1000])
    _, frac, total = completeness(src, x, y, flux / noise, bins)
    logging.getLogger(__name__).info("completeness per S/N bin %s: %s (n=%s)",
                                     bins, np.round(frac, 3), total)
    # a 5 rms threshold on the filtered image sits near S/N 17 of a PSF fit
    assert (total > 5).all()
    assert frac[0] < 0.05 and frac[1] < 0.5
    assert (frac[-2:] == 1.0).all() and frac[-3] >= 0.95
    assert np.all(np.diff(frac) > -0.1)


def test_shape_map_recovers_a_varying_psf():
    rng = np.random.default_rng(17)
    x, y = isolated_field(rng, n=200, size=448, mindist=10.0)
    s_true = S0 * (1.0 + 0.15 * (x - 224) / 224)
    d_true = 0.05 * (y - 224) / 224
    image = noisy(SKY + render((448, 448), x, y, 10 ** rng.uniform(4, 5, len(x)),
                               s_true, d_true, 0.02), rng)
    src = extract_sources(image, 5.0, gain=1.0)
    psf = shape_map(src, order=2)
    s, d, k = psf(x, y)
    assert s.shape == x.shape
    assert np.abs(s / s_true - 1).max() < 0.02
    assert np.abs(d - d_true).max() < 0.01
    assert np.abs(k - 0.02).max() < 0.01


def _frame(image):
    meta = SimpleNamespace(gain=1.0)
    return Frame(framekey=1, rawpath=Path("/raw/f1.fits"), night="n1", meta=meta, image=image)


def test_run_fills_sources_and_quality():
    rng = np.random.default_rng(19)
    x, y = isolated_field(rng, n=60, size=256)
    image = noisy(SKY + render((256, 256), x, y, np.full(60, 3e4), S0, 0.05, 0.0), rng)
    context = Context(project=None, config=Config())
    frame = run(_frame(image), context)
    q = frame.quality
    assert q["nsources"] == len(frame.sources) == 60
    assert q["fwhm"] == pytest.approx(2.3548 * 1.02, rel=0.02)
    assert q["medd"] == pytest.approx(0.05, abs=0.01)
    assert q["ellipticity"] == pytest.approx(1 - np.sqrt((S0 - 0.05) / (S0 + 0.05)), abs=0.01)
    assert q["medsky"] == pytest.approx(SKY, abs=3.0)
    assert q["skyrms"] == pytest.approx(np.sqrt(SKY + 25.0), rel=0.05)
    with pytest.raises(FrameError, match="sources detected"):
        run(_frame(noisy(np.full((128, 128), SKY), rng)), context)


def test_mask_shape_is_checked():
    with pytest.raises(ValueError, match="mask"):
        extract_sources(np.zeros((64, 64), np.float32), mask=np.zeros((32, 32), bool))


def test_tiny_frame_single_background_cell():
    rng = np.random.default_rng(31)
    image = noisy(SKY + render((40, 48), np.array([20.2]), np.array([17.6]),
                               np.array([2e4]), S0), rng)
    sky, _ = background(image)                          # one 64 px cell: a constant
    assert np.ptp(sky) == 0.0 and sky[0, 0] == pytest.approx(SKY, abs=5.0)
    src = extract_sources(image)
    assert len(src) == 1
    assert src["x"][0] == pytest.approx(20.2, abs=0.05)
    assert src["y"][0] == pytest.approx(17.6, abs=0.05)


def test_masked_background_cells_are_filled():
    rng = np.random.default_rng(37)
    image = noisy(np.full((128, 128), SKY), rng)
    mask = np.zeros(image.shape, bool)
    mask[:64, :64] = True
    image[:64, :64] = 50000.0                          # garbage under the mask
    sky, rms = background(image, mask=mask, mesh=32)
    assert np.abs(sky - SKY).max() < 5.0
    assert np.median(rms) == pytest.approx(np.sqrt(SKY + 25.0), rel=0.05)
    with pytest.raises(ValueError, match="no usable background cell"):
        background(image, mask=np.ones(image.shape, bool))
