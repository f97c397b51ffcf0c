"""The sky of stars near bright neighbours, in crowds and at the frame edges, against the truth."""

from __future__ import annotations

import numpy as np
import pytest
from photutils.aperture import CircularAperture
from photutils.aperture import aperture_photometry as photutils_photometry

from trex.aperture import SkyMap
from trex.config import Config
from trex.flags import PHOT
from trex.photometry import aperture_photometry, measure
from trex.simulate.psf import draw_stars

SKY, GAIN = 700.0, 2.0
S_FWHM24 = 1.0 / (2.4 / 2.355) ** 2          # Gaussian shape S of a 2.4 px FWHM PSF
PARTIAL, MAP, FEW, OFF = (PHOT[n].bit for n in ("PARTIAL_SKY", "SKY_MAP", "FEW_SKY", "OFF_FRAME"))


def star_image(shape, x, y, flux, beta=3.0, rng=None):
    """Sky + Moffat (beta) stars of FWHM 2.4 px, with Poisson noise when ``rng`` is given."""
    image = np.zeros(shape, np.float32)
    n = len(x)
    draw_stars(image, np.asarray(x, float), np.asarray(y, float), np.asarray(flux, float),
               np.full(n, S_FWHM24), np.zeros(n), np.zeros(n), beta=beta)
    image += SKY
    return image if rng is None else (rng.poisson(image * GAIN) / GAIN).astype(np.float32)


@pytest.mark.parametrize("distance", [6.0, 10.0, 15.0])
def test_sky_beside_a_bright_neighbour_holds_the_true_sky(distance):
    """A faint target with a 10^7 ADU Moffat neighbour in or beside its annulus.

    Two clipping passes (the old default) left the mode 120-300 ADU below the
    true sky; clipping until nothing changes keeps it within 0.6 of the pixel
    scatter (sqrt(700/2) = 18.7 ADU): what is left is the neighbour's faint wing
    light, below the clipping threshold, which no annulus estimator can tell from sky."""
    rng = np.random.default_rng(int(distance))
    skies = {2: [], None: []}           # two clipping passes, and the default
    for _ in range(16):
        xt, yt = 40 + rng.uniform(-0.5, 0.5, 2)
        angle = rng.uniform(0, 2 * np.pi)
        x = np.array([xt, xt + distance * np.cos(angle)])
        y = np.array([yt, yt + distance * np.sin(angle)])
        image = star_image((80, 80), x, y, [1e4, 1e7], rng=rng)
        for iters in skies:
            res = aperture_photometry(image, x, y, annulus=(7.0, 13.0), gain=GAIN,
                                      disjoint_radius=2.0, **({"sky_iters": iters} if iters else {}))
            skies[iters].append(res["bg"][0])
    old, new = np.mean(skies[2]) - SKY, np.mean(skies[None]) - SKY
    assert old < -60.0                                      # the failure this guards against
    assert abs(new) < 0.6 * np.sqrt(SKY / GAIN), (old, new)


def crowd(rng, n_ring=14, radius=10.0):
    """A target at (100, 100) inside a ring of neighbours on its annulus, on a 200^2 frame."""
    angle = np.linspace(0, 2 * np.pi, n_ring, endpoint=False)
    x = np.concatenate([[100.3], 100.3 + radius * np.cos(angle), rng.uniform(20, 180, 30)])
    y = np.concatenate([[99.8], 99.8 + radius * np.sin(angle), rng.uniform(20, 180, 30)])
    flux = np.concatenate([[2e5], np.full(n_ring, 2e4), np.full(30, 1e4)])
    return x, y, flux


def test_crowded_annulus_takes_the_background_map_and_says_so():
    rng = np.random.default_rng(3)
    x, y, flux = crowd(rng)
    truth = star_image((200, 200), x, y, flux, beta=0.0)       # Gaussian: no wings in the sky
    image = (rng.poisson(truth * GAIN) / GAIN).astype(np.float32)
    args = dict(radii=(2.95,), annulus=(7.0, 13.0), gain=GAIN, disjoint_radius=2.0)
    alone = aperture_photometry(image, x, y, **args)
    assert alone["flag"][0, 0] & FEW and not alone["flag"][0, 0] & MAP   # no map: FEW_SKY
    res = aperture_photometry(image, x, y, **args, sky_map=SkyMap(image, None, 64, 3))
    assert res["flag"][0, 0] & MAP and not res["flag"][0, 0] & FEW
    assert res["bg"][0] == pytest.approx(SKY, abs=1.0)
    assert res["nsky"][0] == 64 * 64
    # the target's flux against the noise-free truth image measured with the true sky
    exact = photutils_photometry(truth - SKY, CircularAperture([(x[0], y[0])], 2.95),
                                 method="exact")["aperture_sum"].value[0]
    assert abs(res["flux"][0, 0] - exact) < 3 * res["fluxerr"][0, 0]
    # stars with enough annulus pixels are measured exactly as without a map
    lone = np.flatnonzero(alone["flag"][:, 0] & FEW == 0)
    for key in ("flux", "bg", "flag", "nsky"):
        np.testing.assert_array_equal(res[key][lone], alone[key][lone])


def clipped_mode(values, nsigma=3.0, iters=10):
    """The documented clipping (median +- nsigma std, until nothing changes), numpy."""
    v = np.sort(values.astype(np.float64))
    for _ in range(iters):
        keep = np.abs(v - np.median(v)) <= nsigma * v.std(ddof=1)
        if keep.all():
            break
        v = v[keep]
    return 3 * np.median(v) - 2 * v.mean()


def test_edge_stars_are_measured_with_the_on_frame_annulus():
    """Stars 3-12 px from the edges (annulus partly off the frame) against their true flux."""
    rng = np.random.default_rng(5)
    ny, nx = 120, 160
    x = np.array([3.0, 5.2, 8.7, 11.4, nx - 4.1, 80.3, 70.6, 3.4, nx - 3.5])
    y = np.array([60.0, 30.3, 90.6, 15.1, 70.8, 3.2, ny - 5.3, 3.6, ny - 3.5])
    flux = np.full(x.size, 5e4)
    truth = star_image((ny, nx), x, y, flux, beta=0.0)
    image = (rng.poisson(truth * GAIN) / GAIN).astype(np.float32)
    res = measure(image, x, y, Config(), gain=GAIN)
    flag = res["flag"][:, -1]
    assert np.all(flag & PARTIAL) and not np.any(flag & (OFF | FEW))
    assert not np.any(flag & MAP)           # even a corner keeps over a quarter of its annulus
    exact = photutils_photometry(truth - SKY, CircularAperture(np.column_stack([x, y]), 2.95),
                                 method="exact")["aperture_sum"].value
    pull = (res["flux"][:, -1] - exact) / res["fluxerr"][:, -1]
    assert np.all(np.abs(pull) < 4), pull
    assert np.sqrt(np.mean(pull ** 2)) < 2.0
    # the on-frame sky is the documented estimator over the annulus pixels on the frame
    yy, xx = np.indices(image.shape)
    for s in range(x.size):
        d2 = (xx - x[s]) ** 2 + (yy - y[s]) ** 2
        near = [(xx - x[o]) ** 2 + (yy - y[o]) ** 2 <= 4.95 ** 2 for o in range(x.size) if o != s]
        sky = (d2 >= 49) & (d2 < 169) & ~np.any(near, axis=0)    # disjoint_radius 2 + 2.95 px
        assert res["bg"][s, -1] == pytest.approx(clipped_mode(image[sky]), abs=1e-9)
