"""``trex.bench.quality`` on a small reduced night against the simulation's truth.

The night is the simple world (the pipeline's own models: Gaussian PSF, one
extinction per frame, no clouds) with three transits forced onto bright stars
and two onto stars with a bright neighbour: 512², 20 frames (enough for EPD
and TFA), 1000 catalog stars, every stage of ``trex run``.  On this world a
reduction reaches about the simulator's noise floor, so light curves read back
onto the wrong frames or stars would show as ratios far from 1.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_stages

from trex.bench import quality
from trex.project import init_project
from trex.simulate import simulate_project
from trex.simulate.realism import Realism
from trex.stages import NAMES

POPULATED = 10      # stars in a bin for its median ratio to be checked


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    project = init_project(tmp_path_factory.mktemp("quality"))
    simulate_project(project.root, realism=Realism(name="transits", transits_bright=3,
                                                   transits_crowded=2),
                     frames=20, size=512, stars=1000, seed=5)
    run_stages(project, NAMES)
    return quality.measure(project.root)


def test_every_column_is_near_the_floor_in_populated_bins(measured):
    """arm, aep, atf, irm, iep, itf: finite RMS / floor of 0.5-3 wherever a bin holds
    enough constant stars (measured 0.76-2.4 with the bins of 2-11 stars included)."""
    assert set(measured.bins) == set(quality.COLUMNS)
    checked = 0
    for column, rows in measured.bins.items():
        for lo, hi, ratio, count in rows:
            if count >= POPULATED:
                assert np.isfinite(ratio) and 0.5 < ratio < 3.0, (column, lo, hi, ratio)
                checked += 1
    assert checked >= 6 * 4     # at least four populated bins in every column


def test_depths_of_the_forced_transits(measured):
    """Every forced transit is in the table with a finite depth ratio in every column, and
    arm (no detrending) finds the bright stars' transits within 4 standard errors."""
    forced = [d for d in measured.depths if d["forced"]]
    assert {d["forced"] for d in forced} == {"bright", "crowded"} and len(forced) >= 4
    for d in measured.depths:
        assert 0 < d["depth"] < 0.5 and d["inside"] >= 2
        for column in quality.DEPTH_COLUMNS:
            ratio, error = d["ratios"][column]
            assert np.isfinite(ratio) and 0 < error < np.inf, (d["star"], column)
    for d in forced:
        if d["forced"] == "bright":
            ratio, error = d["ratios"]["arm"]
            assert abs(ratio - 1) < 4 * error, (d["star"], ratio, error)


def test_centre_to_corner_trend_follows_the_aperture(measured):
    """The PSF broadens towards the corners, so without aperture corrections (aim) a
    smaller aperture loses more light there: b > 0 and decreasing with the radius."""
    label, trends = measured.trends[0]
    assert label == "8.5-11"
    b = [trends[f"aim_{a:03d}"][0] for a in range(3)]
    assert b[0] > b[1] > b[2] > 0, b
    assert all(trends[k][2] >= 20 and trends[k][1] < 0.02 for k in trends)


def test_markdown_has_the_three_tables(measured):
    text = quality.markdown(measured)
    assert sum(line.startswith("| --- |") for line in text.splitlines()) == 3
    assert "| 11-12 | " in text and "transit (bright)" in text


def test_trend_fit_recovers_an_injected_slope():
    """centre_to_corner on synthetic values: a 30 mmag rise to the corners, 5 mmag
    scatter and two blends 1 mag off, recovered within 3 standard errors."""
    rng = np.random.default_rng(3)
    n, size = 400, 1024
    x, y = rng.uniform(0, size, n), rng.uniform(0, size, n)
    truth = {"x": np.tile(x, (3, 1)), "y": np.tile(y, (3, 1)), "mag": rng.uniform(9, 11, n)}
    rho2 = ((x - (size - 1) / 2) ** 2 + (y - (size - 1) / 2) ** 2) / (0.5 * size**2)
    offset = 0.2 + 0.030 * rho2 + rng.normal(0, 0.005, n)
    offset[:2] -= 1.0
    values = np.tile(truth["mag"] + offset, (3, 1))
    b, error, stars = quality.centre_to_corner(values, truth, size, np.ones(n, bool))
    assert stars == n - 2 and abs(b - 0.030) < 3 * error and error < 0.002
