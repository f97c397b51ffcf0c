"""Photometric reference pieces: ranking, registration masks, block combine, noise, CDIPS."""

import numpy as np
import pytest
from astropy.wcs import WCS
from scipy.ndimage import maximum_filter

from trex import _stats, photref, refstack
from trex.astromref import choose_reference
from trex.config import Config
from trex.flags import MASK, grown
from trex.register import register_frame


def quality(n, seed=0):
    rng = np.random.default_rng(seed)
    return {"framekey": np.arange(10, 10 + n), "meds": rng.uniform(0.8, 1.3, n),
            "medd": rng.normal(0, 0.05, n), "medsky": rng.uniform(500, 2000, n),
            "nsources": rng.integers(100, 300, n), "frameisok": np.arange(n) % 5 != 3}


@pytest.mark.parametrize("seed", range(5))
def test_ranking_starts_with_the_astrometric_choice(seed):
    q = quality(12, seed)
    order = photref.rank_frames(q)
    assert order[0] == choose_reference(q)
    assert len(order) == q["frameisok"].sum() and len(set(order)) == len(order)
    assert not set(order) & set(q["framekey"][~q["frameisok"]])


def test_ranking_prefers_sharp_round_dark_rich_frames():
    q = {"framekey": np.array([1, 2, 3]), "meds": np.array([1.0, 1.2, 0.9]),
         "medd": np.array([0.02, 0.01, 0.05]), "medsky": np.array([900, 800, 1500]),
         "nsources": np.array([200, 220, 150]), "frameisok": np.array([True, True, True])}
    assert list(photref.rank_frames(q)) == [2, 1, 3]


def simple_wcs(n, shift=(0.0, 0.0)):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [60.0, -30.0]
    w.wcs.crpix = [n / 2 + shift[0], n / 2 + shift[1]]
    w.wcs.cdelt = [-0.005, 0.005]
    return w


def test_register_identity_keeps_pixels_and_grows_masks():
    n = 64
    rng = np.random.default_rng(1)
    image = rng.uniform(100, 200, (n, n)).astype(np.float32)
    image[30, 30] = 70000.0
    mask = np.zeros((n, n), np.uint8)
    mask[10, 12] = MASK["BADPIX"].bit
    out, bad, transform = register_frame(image, mask, simple_wcs(n), simple_wcs(n), (n, n),
                                         saturation=65535.0)
    np.testing.assert_allclose(out[2:-2, 2:-2], image[2:-2, 2:-2], rtol=1e-4)
    assert bad[10, 12] & MASK["BADPIX"].bit and not bad[20, 20]
    assert bad[30, 30] & MASK["SATURATED"].bit
    u, v = transform(np.array([5.0]), np.array([7.0]))
    assert u[0] == pytest.approx(5.0, abs=1e-6) and v[0] == pytest.approx(7.0, abs=1e-6)


def test_register_shift_moves_the_frame_onto_the_reference_grid():
    n = 64
    image = np.zeros((n, n), np.float32)
    image[20, 25] = 100.0      # a frame pointed 3 px further in x, 2 px in y
    out, bad, _ = register_frame(image, None, simple_wcs(n, (3.0, 2.0)), simple_wcs(n), (n, n))
    assert out[18, 22] == pytest.approx(100.0, rel=1e-3)
    assert bad[:, -2:].all()   # off the frame: no data


def test_block_combine_equals_one_call(tmp_path):
    rng = np.random.default_rng(2)
    stack = rng.normal(100, 5, (5, 50, 30)).astype(np.float32)
    stack[2, 10, 10] = 1e5                     # an outlier: clipped
    stack[:, 40, 3] = np.nan                   # no data anywhere: BADPIX (grown)
    files, masks = [], []
    for i, frame in enumerate(stack):
        files.append(tmp_path / f"{i}.npy")
        masks.append(tmp_path / f"{i}-mask.npy")
        np.save(files[-1], frame)
        m = np.zeros(frame.shape, np.uint8)
        if i == 1:
            m[5, 5] = MASK["SATURATED"].bit
        np.save(masks[-1], m)
    config = Config().replace("subtract", stack_block_rows=16)  # 4 blocks, the last one short
    image, mask = refstack.combine(files, masks, (50, 30), config)
    expect = np.empty((50, 30), np.float32)
    _stats.clipped_combine(stack, expect, np.empty((50, 30), np.int16), 3.0, 3, True)
    good = np.isfinite(expect)
    np.testing.assert_array_equal(image[good], expect[good])
    assert abs(image[10, 10] - 100) < 15
    assert mask[40, 3] & MASK["BADPIX"].bit and image[40, 3] == 0
    assert mask[40, 7] & MASK["BADPIX"].bit and not mask[40, 8]   # grown by H = 4
    assert mask[5, 5] & MASK["SATURATED"].bit and mask[6, 6] == 0


def test_pixel_noise_factor_of_white_noise():
    rng = np.random.default_rng(3)
    gain, rdnoise, sky = 2.0, 10.0, 1000.0
    raw_var = sky / gain + (rdnoise / gain) ** 2
    stack = sky + rng.normal(0, np.sqrt(0.3 * raw_var), (400, 400))
    factor = refstack.pixel_noise_factor(stack, np.zeros(stack.shape, np.uint8), gain, rdnoise)
    assert factor == pytest.approx(0.3, rel=0.05)


def test_crowded_stars_get_the_catalog_prediction():
    rng = np.random.default_rng(4)
    n = 60
    catmag = rng.uniform(9, 13, n)
    table = np.zeros(n, dtype=[("x", "f8"), ("y", "f8"), ("flux_000", "f8"), ("flag_000", "i4")])
    table["x"], table["y"] = np.arange(n) * 20.0, 0.0
    table["flux_000"] = 10 ** (-0.4 * (catmag - 20))
    table["x"][1] = table["x"][0] + 3.0        # star 0 and 1 blend
    catmag[1] = catmag[0] + 1.0                # star 1 is the fainter: crowded
    truth = 10 ** (-0.4 * (catmag[1] - 20))
    table["flux_000"][1] = truth + 0.5 * table["flux_000"][0]   # diluted by its neighbour
    photref.replace_crowded(table, catmag, 6.0)
    assert table["flux_000"][1] == pytest.approx(truth, rel=1e-6)
    assert table["flux_000"][0] == pytest.approx(10 ** (-0.4 * (catmag[0] - 20)))


@pytest.mark.parametrize("shape, half", [((300, 200), 4), ((7, 5), 4), ((1, 9), 2), ((30, 40), 0)])
def test_grown_masks_are_scipys_maximum_filter(shape, half):
    """The bad pixels grown by the kernel half-size, as scipy grows them."""
    rng = np.random.default_rng(half)
    mask = np.where(rng.random(shape) < 0.01, rng.integers(1, 256, shape), 0).astype(np.uint8)
    mask[0, -1] = MASK["BADPIX"].bit  # a corner
    assert np.array_equal(grown(mask, half), maximum_filter(mask != 0, size=2 * half + 1))
