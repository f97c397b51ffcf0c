"""Magnitude fitting on simulated frames with known per-frame zero-point patterns."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from trex import framefit, magfit
from trex.framefit import MIN_ERROR, MagfitError, fit_frame, polynomial_terms, spatial_pattern
from trex.magfit import master_reference, mean_over_frames

NSTARS = 600
SIZE = 2048.0


def simulated_field(seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(0, SIZE, NSTARS), rng.uniform(0, SIZE, NSTARS)
    catmag = rng.uniform(8.0, 13.0, NSTARS)
    color = rng.normal(0.8, 0.3, NSTARS)
    true = catmag + rng.normal(0.0, 0.05, NSTARS)        # instrumental = catalog + scatter
    err = 0.002 * 10 ** (0.2 * (catmag - 8.0))             # 2 mmag at 8, 6 mmag at 13
    return rng, x, y, catmag, color, true, err


def pattern(x, y, color, k):
    """Frame k's zero point: offset + tilted plane + quadratic + colour term."""
    u, v = x / SIZE - 0.5, y / SIZE - 0.5
    return (0.3 * k % 1.0 + 0.02 * k * u - 0.015 * v + 0.03 * u * v * (-1) ** k
            + 0.04 * (k % 3) * u**2 + 0.01 * k * color)


def test_polynomial_terms_count():
    assert [len(polynomial_terms(n)) for n in range(5)] == [1, 3, 6, 10, 15]


def test_injected_pattern_is_recovered_to_the_noise_level():
    rng, x, y, catmag, color, true, err = simulated_field()
    ref = true + rng.normal(0, err)                       # reference frame, flat zero point
    truth = pattern(x, y, color, 3)
    mag = true + truth + rng.normal(0, err)
    ok = np.ones(NSTARS, bool)
    fit = fit_frame(mag, err, ok, ref, x, y, catmag, color, order=2)
    # scatter after the fit is that of the two noisy frames; the model error is below it
    resid = mag - fit.correction - ref
    noise = np.sqrt(2) * err
    assert np.std(resid / noise) == pytest.approx(1.0, abs=0.08)
    assert np.sqrt(np.mean((fit.correction - truth) ** 2)) < 0.25 * np.median(noise)
    assert fit.nused > 0.97 * NSTARS
    assert fit.params["coef"][-1] == pytest.approx(0.03, abs=0.002)   # colour term
    # the fit's weights have an error floor; 3-sigma clipping of stars with unequal errors
    # trims the faint tail, so the reported rms runs up to ~10 % below the expectation
    w2 = np.maximum(err, MIN_ERROR) ** -2.0
    expected = np.sqrt(np.sum(w2 * noise**2) / np.sum(w2))
    assert 0.85 * expected < fit.rms <= 1.05 * expected


def test_outliers_and_bad_flags_are_left_out():
    rng, x, y, catmag, color, true, err = simulated_field(1)
    ref = true + rng.normal(0, err)
    truth = pattern(x, y, color, 2)
    mag = true + truth + rng.normal(0, err)
    outlier = rng.choice(NSTARS, 40, replace=False)
    mag[outlier] += rng.choice([-1, 1], 40) * rng.uniform(0.1, 1.0, 40)  # variables, blends
    ok = np.ones(NSTARS, bool)
    ok[:30] = False
    mag[:30] = 99.0                                       # flagged: garbage values
    mag[30] = np.nan
    fit = fit_frame(mag, err, ok, ref, x, y, catmag, color, order=2)
    assert fit.nused <= NSTARS - 30 - 1 - len(set(outlier) - set(range(31)))
    good = np.setdiff1d(np.arange(31, NSTARS), outlier)
    assert np.sqrt(np.mean((fit.correction[good] - truth[good]) ** 2)) < 0.002
    assert np.all(np.isfinite(fit.correction))          # also for the left-out stars


def test_too_few_stars_raise():
    rng, x, y, catmag, color, true, err = simulated_field(2)
    ok = np.zeros(NSTARS, bool)
    ok[:10] = True
    with pytest.raises(MagfitError, match="usable stars"):
        fit_frame(true, err, ok, true, x, y, catmag, color, order=3)


def test_master_reference_converges_to_the_true_magnitudes():
    rng, x, y, catmag, color, true, err = simulated_field(3)
    nframes = 40
    frames = [true + pattern(x, y, color, k) * (k > 0) + rng.normal(0, err)
              for k in range(nframes)]
    frames[5][:20] += 0.8                                 # a bad frame region: clipped away
    ok = np.ones(NSTARS, bool)
    fitted = [f - fit_frame(f, err, ok, frames[0], x, y, catmag, color).correction
              for f in frames]
    passes = []

    def stream():
        passes.append(1)
        return ((f, ok) for f in fitted)

    master, master_err, n = master_reference(stream, NSTARS, clip_sigma=3.0, clip_iters=3)
    assert 2 <= len(passes) <= 4
    # frame 0 (the reference) has a flat zero point, so the master is the true
    # magnitudes plus the mean of nframes noise draws
    assert np.sqrt(np.mean(((master - true) / err) ** 2)) < 1.3 / np.sqrt(nframes)
    assert np.all(n[:20] <= nframes - 1) and np.median(n) >= nframes - 1
    assert np.median(master_err / (err / np.sqrt(nframes))) == pytest.approx(1.0, abs=0.1)
    # second pass against the master: fitted magnitudes scatter by the frame noise only
    arm = [f - fit_frame(f, err, ok, master, x, y, catmag, color).correction for f in frames]
    scatter = np.std(np.array(arm[1:]) - true, axis=0)
    assert np.median(scatter / err) == pytest.approx(1.0, abs=0.1)



def test_mean_over_frames_puts_the_master_on_the_mean_frame_system():
    """Frames carry a quadratic pattern over the field (light loss, clouds), the reference
    frame its own: the clipped mean of the frames fitted to the reference is on the
    reference's pattern; adding the fits' mean polynomial (:func:`mean_over_frames`) puts it
    on the frames' mean pattern, to the noise of the mean."""
    rng, x, y, catmag, color, true, err = simulated_field(8)
    u, v = x / SIZE - 0.5, y / SIZE - 0.5
    nframes = 12
    shapes = [0.2 * rng.normal() * (u * u + v * v) + 0.1 * rng.normal() * u * v
              + 0.1 * rng.normal() * u for _ in range(nframes)]
    frames = [true + shape + rng.normal(0, err) for shape in shapes]
    ok = np.ones(NSTARS, bool)
    fitted, patterns = [], []
    for f in frames:
        fit = fit_frame(f, err, ok, frames[0], x, y, catmag, color)
        fitted.append(f - fit.correction)
        patterns.append(spatial_pattern(fit.params, x, y))
    master = master_reference(lambda: ((f, ok) for f in fitted), NSTARS)[0]
    moved = master + mean_over_frames(iter(patterns))

    def rms_off(values, shape):
        d = values - true - shape
        return np.sqrt(np.mean((d - np.median(d)) ** 2))

    mean_shape = np.mean(shapes, axis=0)
    noise = 2.0 * np.median(err) / np.sqrt(nframes)
    assert rms_off(master, shapes[0]) < noise
    assert rms_off(moved, mean_shape) < noise
    assert rms_off(master, mean_shape) > 5 * noise

@pytest.mark.parametrize("local_scale", [0.0, 300.0])
def test_a_star_own_signal_never_enters_its_correction(local_scale):
    """A 1 % dip of one fitted star leaves its own correction unchanged to 1e-10 mag
    (leave-one-out), while the plain fit follows it by its leverage."""
    rng, x, y, catmag, color, true, err = simulated_field(4)
    ref = true + rng.normal(0, err)
    mag = true + pattern(x, y, color, 1) + rng.normal(0, err)
    ok = np.ones(NSTARS, bool)
    star = int(np.argmax(np.hypot(x - SIZE / 2, y - SIZE / 2)))   # most leverage: a corner
    dipped = mag.copy()
    dipped[star] += 0.01

    def correction(m, loo):
        return fit_frame(m, err, ok, ref, x, y, catmag, color, clip_iters=0,
                         leave_one_out=loo, local_scale=local_scale).correction

    assert correction(dipped, True)[star] == pytest.approx(correction(mag, True)[star], abs=1e-10)
    assert abs(correction(dipped, False)[star] - correction(mag, False)[star]) > 2e-5


def test_leave_one_out_equals_the_fit_without_the_star():
    """The deletion formula gives what a refit without the star gives, for every star."""
    rng, x, y, catmag, color, true, err = simulated_field(5)
    ref = true + rng.normal(0, err)
    mag = true + pattern(x, y, color, 2) + rng.normal(0, err)
    ok = np.ones(NSTARS, bool)
    loo = fit_frame(mag, err, ok, ref, x, y, catmag, color, clip_iters=0).correction
    for star in rng.choice(NSTARS, 5, replace=False):
        without = ok.copy()
        without[star] = False
        refit = fit_frame(mag, err, without, ref, x, y, catmag, color, clip_iters=0,
                          leave_one_out=False).correction
        assert loo[star] == pytest.approx(refit[star], abs=1e-9)


def test_local_term_follows_a_cloud():
    """A 50 mmag cloud 150 px across, which an order-2 polynomial cannot follow, is taken
    out to 45 % of its depth by the local residual term (a Gaussian of sigma 60 px
    smooths the cloud's 50 mmag to 43; the bright stars in its core are 10-25 sigma off
    the polynomial, so the outlier weights (to zero at twice the clipping threshold)
    leave them out of the local mean too; and one cloud on a clear frame is a
    structure of z = 4 only, of which :func:`trex.localterm.significance` trusts half:
    measured 42 %, 35 % without that discount, 85 % without the term; the
    simulator's cloud screen below, shallower and broader, to less than half)."""
    rng, x, y, catmag, color, true, err = simulated_field(6)
    x, y = np.concatenate([x, rng.uniform(0, SIZE, 3000)]), np.concatenate([y, rng.uniform(0, SIZE, 3000)])
    n = x.size
    catmag = np.concatenate([catmag, rng.uniform(8.0, 13.0, 3000)])
    color = np.concatenate([color, rng.normal(0.8, 0.3, 3000)])
    err = 0.002 * 10 ** (0.2 * (catmag - 8.0))
    cloud = 0.05 * np.exp(-0.5 * (np.hypot(x - 700, y - 1300) / 150.0) ** 2)
    ref = catmag + rng.normal(0, err)
    mag = catmag + cloud + rng.normal(0, err)
    ok = np.ones(n, bool)
    inside = np.hypot(x - 700, y - 1300) < 100
    for scale, limit in ((0.0, 0.5), (60.0, 0.45)):
        fit = fit_frame(mag, err, ok, ref, x, y, catmag, color, local_scale=scale)
        left = np.median(cloud[inside] - fit.correction[inside])
        assert abs(left) < limit * 0.05 if scale else abs(left) > 0.7 * 0.05


def test_a_star_crossing_the_clipping_threshold_moves_no_other_by_a_jump(monkeypatch):
    """A corner star (most leverage) walked from 0.5 to 4 clipping thresholds off the fit
    in steps of 0.02: the others' corrections change by < 0.1 mmag per step (measured
    0.04); with a hard clip the step where it leaves the fit moves them by 1.2 mmag."""
    rng, x, y, catmag, color, true, err = simulated_field(7)
    ref = true + rng.normal(0, err)
    mag = true + pattern(x, y, color, 1) + rng.normal(0, err)
    ok = np.ones(NSTARS, bool)
    star = int(np.argmax(np.hypot(x - SIZE / 2, y - SIZE / 2)))
    others = np.arange(NSTARS) != star
    model = fit_frame(mag, err, ok, ref, x, y, catmag, color, leave_one_out=False).correction
    chi = (mag - ref - model) / np.maximum(err, MIN_ERROR)
    threshold = 3.0 * 1.4826 * np.median(np.abs(chi - np.median(chi))) * max(err[star], MIN_ERROR)

    def largest_step():
        corrections = []
        for t in np.arange(0.5, 4.0, 0.02):
            walked = mag.copy()
            walked[star] = ref[star] + model[star] + t * threshold
            corrections.append(fit_frame(walked, err, ok, ref, x, y, catmag, color).correction)
        return max(np.abs(b - a)[others].max() for a, b in zip(corrections, corrections[1:]))

    assert largest_step() < 1e-4
    monkeypatch.setattr(framefit, "CLIP_TAPER", 1.0 + 1e-9)   # a hard clip
    assert largest_step() > 5e-4


def cloudy_frame(seed, cirrus):
    """2500 stars of 8-12 mag over the frame (error 2 mmag at 8, 5 at 10, 13 at 12), a
    reference without clouds and a frame under the simulator's thin-cloud screen
    (structures 200-800 px, relative rms 0.6, mean ``cirrus`` mag); returns the stars,
    the frame's true extinction (mag) and the two frames' magnitudes."""
    from trex.simulate.atmosphere import cloud_extinction, make_screen

    rng = np.random.default_rng(seed)
    n = 2500
    x, y = rng.uniform(0, SIZE, n), rng.uniform(0, SIZE, n)
    catmag = rng.uniform(8.0, 12.0, n)
    color = rng.normal(0.8, 0.3, n)
    err = 0.002 * 10 ** (0.2 * (catmag - 8.0))
    screen = make_screen(rng, 400.0, 600.0)
    cloud = cloud_extinction(screen, x, y, 0.5, cirrus, 0.6)
    ref = catmag + rng.normal(0, err)
    mag = catmag + cloud + rng.normal(0, err)
    return x, y, catmag, color, err, cloud, ref, mag


@pytest.mark.parametrize("seed", [0, 1])
def test_local_term_follows_the_simulated_cloud_screen_and_adds_no_noise_in_a_clear_sky(seed):
    """Against the simulator's cloud screen (truth), the local term (30 px) leaves less than
    half the polynomial's error of the bright stars' corrections; on a clear sky its
    structure is not significant (:func:`trex.localterm.significance`), so the term adds
    nothing (no more than 0.1 % of the polynomial's error)."""
    def error(cirrus, scale):
        x, y, catmag, color, err, cloud, ref, mag = cloudy_frame(seed, cirrus)
        fit = fit_frame(mag, err, np.ones(x.size, bool), ref, x, y, catmag, color,
                        local_scale=scale)
        miss = (fit.correction - cloud)[catmag < 10]
        return np.std(miss)

    cloudy, cloudy_local = error(0.03, 0.0), error(0.03, 30.0)
    clear, clear_local = error(0.0, 0.0), error(0.0, 30.0)
    assert cloudy > 0.010 and cloudy_local < 0.5 * cloudy
    assert clear_local <= 1.001 * clear


def test_significance_of_a_structure():
    """The share of S trusted: none for S <= 0, whole when z is far above the threshold,
    none at or below it, whole with threshold 0, and no warning for a single pair."""
    from trex.localterm import significance

    rng = np.random.default_rng(3)
    g = np.ones(4000)
    noise = rng.normal(0, 1e-3, 4000) * rng.normal(0, 1e-3, 4000)   # products of noise
    assert significance(-1e-7, g, noise, 10.0, 3.0) == 0.0
    s = 2e-7
    product = s + noise
    z = s / (np.sqrt(np.sum((product - s) ** 2)) / g.sum() * np.sqrt(10.0))
    assert significance(s, g, product, 10.0, 3.0) == pytest.approx(max(0.0, 1 - (3 / z) ** 2))
    assert significance(s, g, product, 10.0, 0.0) == 1.0
    assert significance(100 * s, g, 100 * s + noise, 10.0, 3.0) > 0.99
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert significance(s, g[:1], np.array([s]), 1.0, 3.0) == 1.0


def test_the_master_light_loss_leaves_no_field_trend_in_arm():
    """Frames whose aperture light loss grows from 0.1 mag at the centre to 0.35 in the
    corners as rho⁴ (a PSF that broadens fast towards the corners; a quadratic in
    (x, y) cannot follow it) and changes by 1 % from frame to frame (focus), exact
    corrections ``apc``: fitted as ``aim + L`` (L the master's mean correction of each
    star), arm is the true magnitude to the noise (the quadratic takes up the frame's
    loss relative to L); fitted as ``aim`` alone, the quadratic leaves the loss's
    non-quadratic part."""
    from trex.config import Config
    from trex.photometry import aphot_dtype

    rng, x, y, catmag, color, true, err = simulated_field(seed=4)
    catalog = np.zeros(NSTARS, [("mag", "f8"), ("color", "f8")])
    catalog["mag"], catalog["color"] = catmag, color
    rho2 = ((x - SIZE / 2) ** 2 + (y - SIZE / 2) ** 2) / (0.5 * SIZE**2)
    losses = [-(0.1 + 0.25 * rho2**2) * (1 + 0.01 * k) for k in range(6)]   # apc, mag
    light_loss = np.mean(losses, axis=0)[:, None]
    new = rng.choice(NSTARS, 20, replace=False)   # stars the master's frames never measured
    light_loss[new] = np.nan
    config = Config()
    bright = (catmag < 11) & (rho2 < 1)
    changes = []                            # centre to corner of arm - true, mag
    for k, apc in enumerate(losses):
        table = np.zeros(NSTARS, aphot_dtype(1))
        table["star"], table["xcc"], table["ycc"] = np.arange(NSTARS), x, y
        table["aim_000"] = true - apc + 0.2 * k + rng.normal(0, err)
        table["aie_000"], table["apc_000"] = err, apc
        arm = magfit.fit_to(table, true[:, None], catalog, config, light_loss=light_loss)[:, 0]
        alone = magfit.fit_to(table, true[:, None], catalog, config,
                              light_loss=np.zeros_like(light_loss))[:, 0]
        assert np.isfinite(arm).all()             # the new stars take their own apc
        # on the master's system with their own apc (without it they would be 0.1-0.35 off)
        assert np.all(np.abs(arm[new] - true[new] - np.median(arm - true)) < 4 * err[new] + 0.01)
        changes.append([np.diff(np.polyval(np.polyfit(rho2[bright], (fitted - true)[bright], 2),
                                           [0.0, 1.0]))[0] for fitted in (arm, alone)])
    with_loss, alone = np.array(changes).T   # measured: -0.002 to +0.003 (noise); 0.031-0.044
    assert np.abs(with_loss).max() < 0.005 and abs(with_loss.mean()) < 0.002
    assert alone.min() > 0.02
