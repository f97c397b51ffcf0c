"""RMS over the noise floor per magnitude bin (trex.bench.floor) against drawn noise."""

import numpy as np

from trex.bench.floor import floor_ratios, frame_index, per_bin


def fake_truth(nframes=40, nstars=3000, seed=0):
    rng = np.random.default_rng(seed)
    mag = rng.uniform(8, 12, nstars)
    flux = np.tile(10 ** (-0.4 * (mag - 20)), (nframes, 1))
    noise = np.sqrt(flux)[:, :, None] * np.array([0.8, 1.0, 1.3])  # three apertures
    saturated = np.zeros((nframes, nstars), dtype=bool)
    saturated[:, 0] = True
    return {"mag": mag, "flux_adu": flux, "noise": noise, "saturated": saturated,
            "variables": [{"index": 1}], "jd": 2461000.5 + np.arange(nframes) * 0.01}


def test_noise_at_the_floor_gives_one_and_the_best_aperture_is_picked():
    truth = fake_truth()
    rng = np.random.default_rng(1)
    sigma = 1.0857 * truth["noise"] / truth["flux_adu"][:, :, None]
    scale = np.array([1.5, 1.0, 0.5])  # the third aperture is clearly the quietest in mag
    mags = truth["mag"][None, :, None] + rng.normal(size=sigma.shape) * sigma * scale
    mags[:25, 5] = np.nan  # measured on fewer than half the frames: left out
    ratios = floor_ratios(mags, truth)
    assert np.isnan(ratios[[0, 1, 5]]).all()  # saturated, variable, too few frames
    bins = per_bin(ratios, truth["mag"], (8.0, 10.0, 12.0))
    assert [b[:2] for b in bins] == [(8.0, 10.0), (10.0, 12.0)]
    for _, _, value, count in bins:
        assert count > 1000 and abs(value - 0.5) < 0.03


def test_frames_are_found_by_time():
    truth = fake_truth(nframes=5)
    rjd = truth["jd"][[3, 0]] - 2400000.0 + 1e-6
    assert frame_index(np.append(rjd, rjd[0] + 0.004), truth).tolist() == [3, 0, -1]
