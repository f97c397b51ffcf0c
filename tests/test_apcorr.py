"""Aperture corrections: analytic PSFs on synthetic frames, and realistic nights against the truth.

The synthetic frames hold stars of known total flux whose PSF width grows by
40 % from the centre to the corners (pixel-integrated Gaussian or Moffat,
drawn by the simulator's renderer), on a flat sky with Gaussian noise.  The
pipeline tests run realistic 1024² nights (Moffat PSF with wings, 35 %
broader and 30 % elongated in the corners, a twilight-flat gradient, faint
stars below the catalog limit) and fit each bright constant star's median
over the frames of (magnitude - truth) as a + b rho² (rho the distance from
the centre over the half diagonal).  The truth is the light the star sent
into each calibrated frame (after the atmosphere, with the flat's slope):
``aim`` has b = +0.36, +0.28, +0.21 mag in the three apertures.  Against the
true magnitude above the atmosphere, b of arm also holds the thin clouds'
and the field's airmass pattern that the magnitude-fit master carries (with
corrections taken exactly from the truth, b = -0.014 on the cloudy night of
seed 3, and +-0.04 from seed to seed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trex import apcorr
from trex.bench.apcorr import CLEAR, field_trend, simulate_night
from trex.config import Config
from trex.photometry import aperture_photometry, aphot_dtype
from trex.simulate import REALISTIC
from trex.simulate.psf import draw_stars

RADII = (1.95, 2.45, 2.95)
SIZE = 1024
SKY, SKY_NOISE = 200.0, 8.0


def synthetic_frame(beta: float, seed: int = 4, nstars: int = 700):
    """(image, x, y, flux, sigma): stars on a grid, the PSF sigma 1.0 px at the centre
    and 1.4 px in the corners (quadratic in the distance), fluxes 2e4-1e6 ADU."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(nstars)))
    grid = np.linspace(30, SIZE - 31, side)
    x, y = (a.ravel()[:nstars] + rng.uniform(-3, 3, nstars) for a in np.meshgrid(grid, grid))
    rho2 = ((x - SIZE / 2) ** 2 + (y - SIZE / 2) ** 2) / (0.5 * SIZE**2)
    sigma = 1.0 * (1.0 + 0.4 * rho2)
    flux = 10 ** rng.uniform(np.log10(2e4), 6, nstars)
    image = np.full((SIZE, SIZE), SKY, np.float32)
    s = 1.0 / sigma**2
    draw_stars(image, x, y, flux, s, np.zeros(nstars), np.zeros(nstars), beta=beta)
    image += rng.normal(0, SKY_NOISE, image.shape).astype(np.float32)
    return image, x, y, flux, sigma


def measured(image, x, y):
    res = aperture_photometry(image, x, y, RADII, (7.0, 13.0), gain=1e6)
    return res["flux"], np.all(res["flag"] == 0, axis=1)


def test_psf_width_is_the_gaussian_sigma():
    sigma_x, sigma_y = 1.2, 0.8            # axes along x and y: S = (1/sx² + 1/sy²) / 2, ...
    s = 0.5 * (1 / sigma_x**2 + 1 / sigma_y**2)
    d = 0.5 * (1 / sigma_x**2 - 1 / sigma_y**2)
    assert apcorr.psf_width(s, d, 0.0) == pytest.approx(np.sqrt(sigma_x * sigma_y))
    assert apcorr.psf_width(0.25, 0.0, 0.0) == pytest.approx(2.0)


def test_gaussian_psf_correction_is_the_enclosed_fraction():
    """Gaussian PSF: the correction is 2.5 log10 of the enclosed fraction
    1 - exp(-r²/2σ²), no light beyond R, and corrected fluxes are the true ones at
    every PSF width.  σ² gains 1/12 px² twice: the pixels integrate the PSF, and
    summing pixel values with circle-overlap weights smears the circle by a pixel."""
    image, x, y, flux, sigma = synthetic_frame(beta=0.0)
    ap_flux, ok = measured(image, x, y)
    apc, info = apcorr.frame_corrections(aperture_photometry, image, x, y, ap_flux, ok, sigma,
                                         radius=8.0, gain=1e6)
    assert info["nstars"] >= 100
    assert info["tail"] < 2e-3                          # a Gaussian has no wings
    analytic = 2.5 * np.log10(1 - np.exp(-np.asarray(RADII) ** 2 / (2 * (sigma[:, None] ** 2
                                                                          + 2 / 12))))
    assert np.max(np.abs(apc - analytic)) < 0.01        # whole range, 0.25-0.65 mag
    assert np.ptp(analytic[:, 0]) > 0.25                # the PSF change is large
    corrected = -2.5 * np.log10(ap_flux / flux[:, None]) + apc
    good = ok & (flux > 1e5)
    assert np.abs(np.median(corrected[good], axis=0)).max() < 0.005
    slope = np.polyfit(sigma[good], corrected[good, 0], 1)[0] * 0.4   # over sigma 1.0 -> 1.4
    assert abs(slope) < 0.005


def test_elongated_psf_correction_is_the_enclosed_fraction():
    """Elliptical Gaussian PSFs whose width grows towards the corners and whose
    distortion χ grows from 0 to 0.35 across the frame in x (axis ratio 1 to 0.69):
    corrections against the analytic fraction of light in each circle (1 minus the
    angle average of exp(-r² q / 2) / (a b q), q = cos²θ / a² + sin²θ / b², each axis
    variance widened by the pixels' 2/12 px²)
    are right to 0.005 mag; from the width alone they would be off by over 0.01 mag."""
    rng = np.random.default_rng(5)
    n = 700
    side = int(np.ceil(np.sqrt(n)))
    grid = np.linspace(30, SIZE - 31, side)
    x, y = (a.ravel()[:n] + rng.uniform(-3, 3, n) for a in np.meshgrid(grid, grid))
    width = 1.0 * (1.0 + 0.4 * ((x - SIZE / 2) ** 2 + (y - SIZE / 2) ** 2) / (0.5 * SIZE**2))
    chi = 0.35 * x / SIZE
    ax2, ay2 = width**2 * np.sqrt((1 + chi) / (1 - chi)), width**2 * np.sqrt((1 - chi) / (1 + chi))
    s, d = 0.5 * (1 / ax2 + 1 / ay2), 0.5 * (1 / ax2 - 1 / ay2)
    assert apcorr.psf_width(s, d, 0.0) == pytest.approx(width)
    assert apcorr.psf_distortion(s, d, 0.0) == pytest.approx(chi)
    flux = 10 ** rng.uniform(np.log10(2e4), 6, n)
    image = np.full((SIZE, SIZE), SKY, np.float32)
    draw_stars(image, x, y, flux, s, d, np.zeros(n))
    image += rng.normal(0, SKY_NOISE, image.shape).astype(np.float32)
    ap_flux, ok = measured(image, x, y)
    theta = np.linspace(0, np.pi / 2, 400)[:, None, None]             # (angle, star, radius)
    va, vb = ax2[:, None] + 2 / 12, ay2[:, None] + 2 / 12
    q = np.cos(theta) ** 2 / va + np.sin(theta) ** 2 / vb
    radii = np.asarray(RADII)[None, None, :]
    outside = np.mean(np.exp(-0.5 * radii**2 * q) / (np.sqrt(va * vb) * q), axis=0)
    analytic = 2.5 * np.log10(1 - outside)
    elongated = dict(radius=8.0, gain=1e6)
    apc = apcorr.frame_corrections(aperture_photometry, image, x, y, ap_flux, ok, width,
                                   distortion=chi, **elongated)[0]
    round_ = apcorr.frame_corrections(aperture_photometry, image, x, y, ap_flux, ok, width,
                                      **elongated)[0]
    good = ok & (flux > 1e5)
    error, round_error = (np.abs(c[good] - analytic[good]
                                 - np.median(c[good] - analytic[good], axis=0)).max(axis=0)
                          for c in (apc, round_))
    assert error.max() < 0.005                 # measured 0.001-0.003
    assert round_error.min() > 0.01            # measured 0.012-0.014


def test_moffat_wings_are_extrapolated():
    """Moffat beta = 3 (the realistic simulator's): about 1 % of the light lies beyond
    R = 8 px, more in the corners; the fitted tail finds beta and the light beyond R,
    so corrected fluxes are the true ones, without a trend with the PSF width."""
    image, x, y, flux, sigma = synthetic_frame(beta=3.0)
    ap_flux, ok = measured(image, x, y)
    apc, info = apcorr.frame_corrections(aperture_photometry, image, x, y, ap_flux, ok, sigma,
                                         radius=8.0, gain=1e6)
    assert info["beta"] == pytest.approx(3.0, abs=0.5)
    assert 0.003 < info["tail"] < 0.02
    corrected = -2.5 * np.log10(ap_flux / flux[:, None]) + apc
    good = ok & (flux > 1e5)
    assert np.abs(np.median(corrected[good], axis=0)).max() < 0.005
    for a in range(len(RADII)):
        slope = np.polyfit(sigma[good], corrected[good, a], 1)[0] * 0.4
        assert abs(slope) < 0.005
    # without the extrapolated wings the corners would be off by ~1 %
    truncated = -2.5 * np.log10(ap_flux[:, 0] / flux) + apc[:, 0] - 2.5 * np.log10(
        1 - apcorr.moffat_outside(8.0, sigma, info["fit"]))
    assert np.polyfit(sigma[good], truncated[good], 1)[0] * 0.4 > 0.005



def test_a_star_own_dip_leaves_the_corrections():
    """A 2 % dip of one of the brightest stars (its light scaled, the rest of the frame
    the same) moves no star's correction by more than 1e-4 mag: a correction is a ratio
    of the star's fluxes, and its curve of growth's sky lies beyond its wings."""
    image, x, y, flux, sigma = synthetic_frame(beta=3.0)
    ap_flux, ok = measured(image, x, y)
    apc = apcorr.frame_corrections(aperture_photometry, image, x, y, ap_flux, ok, sigma,
                                   radius=8.0, gain=1e6)[0]
    for star in np.argsort(-np.where(ok, flux, 0.0))[:3]:
        dip = np.zeros_like(image)
        one = slice(star, star + 1)
        draw_stars(dip, x[one], y[one], 0.02 * flux[one], 1.0 / sigma[one] ** 2, np.zeros(1),
                   np.zeros(1), beta=3.0)
        dimmed_flux, dimmed_ok = measured(image - dip, x, y)
        assert dimmed_flux[star, 0] == pytest.approx(0.98 * ap_flux[star, 0], rel=1e-3)
        dimmed = apcorr.frame_corrections(aperture_photometry, image - dip, x, y, dimmed_flux,
                                          dimmed_ok, sigma, radius=8.0, gain=1e6)[0]
        assert np.abs(dimmed - apc).max() < 1e-4

def test_model_extends_along_its_tangent():
    width = np.linspace(1.0, 1.4, 50)
    values = (0.5 * (width - 1.2) ** 2 - 0.3 * width)[:, None]
    round_ = np.zeros(50)
    model = apcorr.fit_model(width, round_, values, np.full(50, 0.01))
    assert apcorr.evaluate(model, width, round_) == pytest.approx(values, abs=1e-9)
    beyond = apcorr.evaluate(model, np.array([1.5]), np.zeros(1))[0, 0]
    assert beyond == pytest.approx(values[-1, 0] + (0.2 - 0.3) * 0.1, abs=1e-9)



def test_odd_curves_are_the_trails():
    """Curves of growth of Moffat stars of widths 1.0-1.4 px with 0.3 % noise, and two
    stars on a satellite trail (light growing linearly with the radius): only those two
    are odd."""
    rng = np.random.default_rng(1)
    width = rng.uniform(1.0, 1.4, 60)
    radii = 8.0 * np.asarray(apcorr.GROWTH_STEPS)
    enclosed = 1 - apcorr.moffat_outside(radii[None, :], width[:, None], apcorr.Tail(3.0, 2.3))
    ratio = enclosed[:, :-1] / enclosed[:, -1:] + rng.normal(0, 0.003, (60, len(radii) - 1))
    ratio[[7, 31]] = radii[:-1] / radii[-1]
    odd = apcorr.odd_curves(width, ratio, np.full(60, 0.003))
    assert np.flatnonzero(odd).tolist() == [7, 31]

def test_isolated_ignores_faint_neighbours():
    x, y = np.array([0.0, 5.0, 100.0, 103.0]), np.zeros(4)
    flux = np.array([1e5, 1e2, 1e5, 1e5])
    assert apcorr.isolated(x, y, flux, 10.0, 0.01).tolist() == [True, False, False, False]


def test_off_or_too_few_stars_give_zero():
    table = np.zeros(5, dtype=aphot_dtype(3))
    table["fsv"] = 0.5
    table["xcc"] = table["ycc"] = np.arange(5) * 40.0 + 20
    image = np.zeros((256, 256), np.float32)
    off = Config().replace("photometry", apcorr_radius=0.0)
    for config in (off, Config()):
        assert not apcorr.table_corrections(aperture_photometry, image, None, table, config,
                                            1.0).any()


# --- realistic nights: corrected magnitudes and arm against the truth over the field -----

def _night(tmp_path_factory, name: str, realism) -> Path:
    return simulate_night(tmp_path_factory.mktemp(name), 3, SIZE, 4, 3000, realism)


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    return _night(tmp_path_factory, "apcorr", REALISTIC)


@pytest.fixture(scope="module")
def clear_night(tmp_path_factory):
    return _night(tmp_path_factory, "apcorr-clear", CLEAR)


def trends_against_the_light(root, column: str, aperture: int) -> tuple[float, float]:
    """(aim's, ``column``'s) centre-to-corner trend against the light in each frame."""
    before = field_trend(root, "aim", aperture, "frame")
    after = field_trend(root, column, aperture, "frame")
    print(f"aperture {aperture}: centre-to-corner trend against the light in each frame: "
          f"aim {before:+.4f}, {column.replace('+', ' + ')} {after:+.4f} mag")
    return before, after


@pytest.mark.parametrize("aperture", [0, 1, 2])
def test_corrected_magnitudes_have_no_trend_over_the_field(night, aperture):
    """aim + apc of each frame against the light the frame received: no light-loss trend
    (the issue's goal, 0.01 mag), where aim has 0.21-0.36 mag.  Measured +0.0072,
    +0.0058, +0.0063; on twelve clear nights (seeds 1-12) +0.003 +- 0.003, at most
    0.0125 (seed 2: the noise of ~70 stars' curves of growth per frame; the same fit to
    their true corrections gives +0.001)."""
    before, after = trends_against_the_light(night, "aim+apc", aperture)
    assert before > 0.15
    assert abs(after) <= 0.01


@pytest.mark.parametrize("aperture", [0, 1, 2])
def test_arm_has_no_trend_over_the_field(clear_night, aperture):
    """arm, aim + the master's mean correction of each star fitted to the master built
    from aim + apc (on the frames' mean system), against the light in each frame: the
    light-loss trend left is the frames' mean error of the corrections.  Measured
    +0.0064, +0.0049, +0.0078 mag; on twelve such nights (seeds 1-12) +0.002 +- 0.004,
    at most 0.012 (seed 2, as aim + apc).  Before the corrections' distortion term and
    the master's light loss (aim fitted alone: its quadratic could not follow the
    loss): +0.0075, +0.0037, +0.0107 here, at most 0.015 on the twelve."""
    before, after = trends_against_the_light(clear_night, "arm", aperture)
    assert before > 0.15
    assert abs(after) <= 0.01


def test_the_master_keeps_each_star_mean_correction(clear_night):
    """The magnitude-fit master's light loss is each star's mean ``apc`` over the frames
    (from the frames' own ``aphot`` products), NaN for stars never measured."""
    from trex import magfit
    from trex.project import Project

    project = Project(clear_night)
    (path,) = project.reference_frames.glob("magfit-*.npy")
    master = magfit.as_master(np.load(path))
    tables = [np.load(p) for p in sorted(project.red("12").glob("*-aphot.npy"))]
    total = np.zeros(master.light_loss.shape)
    count = np.zeros(master.light_loss.shape)
    for table in tables:
        for a in range(total.shape[1]):
            total[table["star"], a] += table[f"apc_{a:03d}"]
            count[table["star"], a] += 1
    with np.errstate(invalid="ignore"):
        expected = total / count
    assert np.isfinite(master.light_loss).sum() > 1000
    assert np.array_equal(np.isfinite(expected), np.isfinite(master.light_loss))
    assert master.light_loss == pytest.approx(expected, abs=1e-12, nan_ok=True)
    assert np.nanmax(master.light_loss) < 0 < np.ptp(master.light_loss[np.isfinite(expected)])
