"""Difference photometry: flux changes in reference units, errors, rows, noise factors."""

import numpy as np
import pytest
from scipy.signal import fftconvolve

from trex.config import Config
from trex.diffphot import (
    apply_transparency,
    difference_photometry,
    index_rows,
    iphot_dtype,
    ism_rows,
    local_transparency,
    variance_factor,
)
from trex.photometry import aperture_photometry, apertures, measure
from trex.subtract import subtract

N = 256
GAIN, RDNOISE, SKY = 2.0, 8.0, 800.0


def gaussian(sigma, half=7):
    y, x = np.mgrid[-half:half + 1, -half:half + 1]
    k = np.exp(-(x**2 + y**2) / (2 * sigma**2))
    return k / k.sum()


def refphot_of(reference, x, y, config):
    radii, annuli = apertures(config)
    res = aperture_photometry(reference, x, y, radii, annuli[0], gain=GAIN * 50)
    fields = [("star", "i8"), ("x", "f8"), ("y", "f8")]
    for name, dtype in (("flux", "f8"), ("fluxerr", "f8"), ("flag", "i4")):
        fields += [(f"{name}_{i:03d}", dtype) for i in range(len(radii))]
    table = np.zeros(len(x), dtype=fields)
    table["star"], table["x"], table["y"] = np.arange(len(x)), x, y
    for i in range(len(radii)):
        table[f"flux_{i:03d}"], table[f"fluxerr_{i:03d}"] = res["flux"][:, i], res["fluxerr"][:, i]
        table[f"flag_{i:03d}"] = res["flag"][:, i]
    return table


def on_image(image, x, y, config):
    """The frame's own fluxes and sky (what its aphot holds) of the stars at (x, y)."""
    res = measure(image, x, y, config, gain=GAIN)
    return {"frame_flux": res["flux"], "frame_sky": res["bg"][:, -1]}


@pytest.fixture(scope="module")
def scene():
    """Noiseless reference (sigma 1.0 px stars on a grid); the image has a broader PSF,
    a flux scale 0.9, a sky of its own, Poisson + read noise, and star 0 is 3 % fainter."""
    rng = np.random.default_rng(4)
    g = np.arange(20, N - 20, 18)
    x, y = (a.ravel().astype(float) for a in np.meshgrid(g, g))
    x += rng.uniform(-0.5, 0.5, x.size)
    y += rng.uniform(-0.5, 0.5, y.size)
    flux = 10 ** rng.uniform(3.5, 5.0, x.size)
    flux[0] = 5e4
    delta = np.zeros((N, N))
    np.add.at(delta, (np.rint(y).astype(int), np.rint(x).astype(int)), flux)
    x, y = np.rint(x), np.rint(y)
    reference = fftconvolve(delta, gaussian(1.0), mode="same") + SKY
    change = delta.copy()
    change[int(y[0]), int(x[0])] *= 0.97
    clean = 0.9 * fftconvolve(change, gaussian(1.4), mode="same") + 0.9 * SKY + 30
    image = rng.poisson(clean * GAIN) / GAIN + rng.normal(0, RDNOISE / GAIN, clean.shape)
    return reference.astype(np.float32), image.astype(np.float32), x, y, clean


def test_flux_change_in_reference_units(scene):
    reference, image, x, y, clean = scene
    config = Config()
    # one stamp per cell: the 3 % fainter star 0 is then no stamp (a stamp star fits itself)
    diff, sol = subtract(image, reference, kernel="b/1;i/1;d=4/1", gain=GAIN, rdnoise=RDNOISE,
                         ngrid=6, per_cell=1)
    refphot = refphot_of(reference, x, y, config)
    table, info = difference_photometry(diff, image - diff, sol.flux_scale, refphot, config,
                                        **on_image(image, x, y, config), gain=GAIN,
                                        rdnoise=RDNOISE, exptime=30.0,
                                        mask=np.zeros(image.shape, np.uint8))
    # the broader image PSF puts less flux in the small aperture: q < 1 corrects it
    assert info["q"][0] < info["q"][-1] <= 1.01
    rel = table["ifl_001"] / refphot["flux_001"] - 1
    assert rel[0] == pytest.approx(-0.03, abs=0.0015)
    # constant stars: dF consistent with ife (stamp stars excepted: they fit themselves)
    far = np.ones(len(x), dtype=bool)
    for sx, sy in sol.stamps:
        far &= np.hypot(x - sx, y - sy) > 3
    chi = (table["ifl_001"] - refphot["flux_001"])[1:] / table["ife_001"][1:]
    assert abs(np.mean(chi[far[1:]])) < 0.3 and 0.8 < np.std(chi[far[1:]]) < 1.25
    assert np.all(table["irq_001"] == 0)
    zp = config.camera.zeropoint
    np.testing.assert_allclose(table["irm_001"], zp - 2.5 * np.log10(table["ifl_001"] / 30.0),
                               atol=1e-5)


def test_negative_flux_differences_are_not_flagged(scene):
    reference, image, x, y, _ = scene
    config = Config()
    diff, sol = subtract(image, reference, kernel="b/1;i/1;d=4/1", gain=GAIN, ngrid=6)
    refphot = refphot_of(reference, x, y, config)
    refphot["flux_000"][1] = -1000.0  # F = F_ref + dF <= 0 (dF ~ 250 ADU rms): NONPOSITIVE
    table, _ = difference_photometry(diff, image - diff, sol.flux_scale, refphot, config,
                                     **on_image(image, x, y, config), gain=GAIN,
                                     rdnoise=RDNOISE, exptime=30.0,
                                     mask=np.zeros(image.shape, np.uint8))
    assert table["irq_000"][0] == 0 and table["dfl_000"][0] < 0
    assert table["irq_000"][1] & 16 and np.isnan(table["irm_000"][1])


def test_ism_rows_and_index_rows():
    table = np.zeros(3, dtype=iphot_dtype(2))
    table["star"] = [4, 7, 9]
    table["ifl_001"] = [1.0, 2.0, 3.0]
    rows = ism_rows(12, 3, table, np.array(["a", "b", "c"]))
    assert set(rows) == {"framekey", "photrefkey", "objectid", "aperture", "xcc", "ycc",
                         "dflux", "dfluxerr", "flux", "fluxerr", "mag", "magerr", "flag"}
    assert all(len(v) == 6 for v in rows.values())
    assert list(rows["objectid"]) == ["a", "b", "c"] * 2
    np.testing.assert_array_equal(rows["flux"][3:], [1.0, 2.0, 3.0])
    index = index_rows(12, 3, "RED/x-iphot.npy", 3, 61000.5, ("12", "F", "5"), "now")
    assert index["iphotfiles"]["iphotfilekey"] == [12]
    assert index["photindex_iphots"]["iphotfilekey"] == [12]


@pytest.mark.parametrize("method", ["flux", "bilinear"])
def test_resampling_variance_factor(method):
    table = variance_factor(method)
    assert table[0, 0] == pytest.approx(1.0, abs=0.06)
    assert table[4, 4] < 0.8 * table[0, 0]          # half-pixel phase smooths the most
    np.testing.assert_allclose(table, table.T, atol=0.08)


def screened_table(clouds: float, depth: float = 0.0, seed: int = 21):
    """An ``iphot`` table (one aperture) of 3000 stars of 8-13 mag on 1024^2 px seen
    through a transparency screen of ``clouds`` mag amplitude with 220-260 px structure
    (what an order-4 kernel polynomial cannot follow), independent noise of each star's
    ``ire``, and star 0 (9 mag, in the middle) dimmed by ``depth`` (a transit).  Returns
    (table, true magnitudes, each star's noise and transit in mag)."""
    rng = np.random.default_rng(seed)
    n = 3000
    x, y = rng.uniform(0, 1024, n), rng.uniform(0, 1024, n)
    mag = rng.uniform(8.0, 13.0, n)
    x[0], y[0], mag[0] = 512.0, 512.0, 9.0
    err = 0.002 * 10 ** (0.2 * (mag - 8.0))                  # 2 mmag at 8 mag, 20 at 13
    screen = clouds * np.sin(2 * np.pi * x / 450 + 1.0) * np.cos(2 * np.pi * y / 520)
    seen = err * rng.standard_normal(n) - 2.5 * np.log10(1.0 - depth * (np.arange(n) == 0))
    f_ref = 10 ** (-0.4 * (mag - 20.0))
    flux = f_ref * 10 ** (-0.4 * (seen + screen))
    table = np.zeros(n, dtype=iphot_dtype(1))
    table["star"], table["xref"], table["yref"] = np.arange(n), x, y
    table["ifl_000"], table["dfl_000"] = flux, flux - f_ref
    table["ife_000"], table["ire_000"] = flux * err / 1.0857, err
    table["irm_000"] = 20.0 - 2.5 * np.log10(flux)
    return table, mag, seen


def corrected_irm(table, scale=30.0):
    table = table.copy()
    apply_transparency(table, local_transparency(table, scale))
    return table


def test_local_transparency_takes_out_a_cloud_screen_and_keeps_a_transit():
    """Bright constant stars under 20 mmag clouds: the correction brings irm back near
    its noise; the transiting star's own residual never corrects itself, so its depth
    (the twin table without the transit, same noise) is kept to 0.1 mmag."""
    table, mag, seen = screened_table(0.02, depth=0.02)
    truth = mag + seen                          # what irm would be without the clouds
    bright = (mag < 11.0) & (np.arange(len(table)) > 0)
    before = np.std(table["irm_000"][bright] - truth[bright])
    fixed = corrected_irm(table)
    after = np.std(fixed["irm_000"][bright] - truth[bright])
    assert before > 0.01 and after < 0.35 * before
    twin = corrected_irm(screened_table(0.02)[0])
    assert fixed["irm_000"][0] - twin["irm_000"][0] == pytest.approx(
        -2.5 * np.log10(0.98), abs=1e-4)
    # ire is relative and unchanged; F, dF and ife scale together
    np.testing.assert_allclose(fixed["ire_000"], table["ire_000"])
    np.testing.assert_allclose(fixed["ife_000"] / fixed["ifl_000"],
                               table["ife_000"] / table["ifl_000"])
    np.testing.assert_allclose(fixed["ifl_000"] - fixed["dfl_000"],
                               table["ifl_000"] - table["dfl_000"])


def test_local_transparency_adds_no_noise_on_a_clear_sky():
    table, mag, _ = screened_table(0.0)
    bright = mag < 11.0
    before = np.std(table["irm_000"][bright] - mag[bright])     # the stars' own noise
    after = np.std(corrected_irm(table)["irm_000"][bright] - mag[bright])
    assert after < 1.05 * before + 1e-5
