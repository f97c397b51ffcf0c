"""Transits kept through the magnitude fit and the subtraction, on a realistic 16-frame night.

The night is simulated twice with the same seed (the realistic world of
:mod:`trex.simulate.realism`: Moffat PSF, thin clouds with structure,
scintillation, faint stars below the catalog limit): once with transits
forced onto bright stars and onto stars with a bright neighbour, once
without.  The noise of every pixel is the same in both (the noise streams do
not depend on the stars' fluxes), so the difference of a star's light curves
between the two runs is its transit as the pipeline measures it, without the
photon and scintillation noise that would hide a 5 % error on a 0.5 % dip
(one point of a mag-12.7 star scatters by 1.4 %).  What the pipeline does to
the signal (a fit that follows the star's own dip, neighbours' light in the
aperture) stays in the difference.

Depth = 1 - 10^(-0.4 (median over in-transit frames - median over the others))
of that difference, the in-transit frames from the truth's flux factor; the
truth is the median flux deficit over the same frames.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import run_stages

from trex.project import Project, init_project
from trex.simulate import REALISTIC, load_truth, simulate_project

NIGHT = dict(frames=16, size=1024, stars=3000, seed=1)
STAGES = ("calibrate", "extract", "astrometry", "photometry", "magfit", "subtract")
TOLERANCE = 0.05      # relative depth error allowed
APERTURES = (0, 1, 2)


def _run(root, realism):
    project = init_project(root)
    simulate_project(project.root, realism=realism, **NIGHT)
    run_stages(project, STAGES)
    return project.root


def _columns(root, product: str, column: str, nstars: int) -> np.ndarray:
    """(nframes, nstars, napertures) of ``column`` from every frame's product, in frame order."""
    paths = sorted(Project(root).red("12").glob(f"*-{product}.npy"))
    out = np.full((len(paths), nstars, len(APERTURES)), np.nan)
    for f, path in enumerate(paths):
        table = np.load(path)
        for a in APERTURES:
            out[f, table["star"], a] = table[f"{column}_{a:03d}"]
    return out


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """{column: (with transits - without)} light curves, the truth and the forced transits."""
    base = tmp_path_factory.mktemp("signals")
    with_transits = _run(base / "transits", REALISTIC)
    without = _run(base / "constant",
                   dataclasses.replace(REALISTIC, transits_bright=0, transits_crowded=0))
    truth = load_truth(with_transits)
    nstars = truth["mag"].size
    diff = {}
    for product, column in (("aphot", "aim"), ("aphot", "arm"), ("iphot", "irm")):
        diff[column] = (_columns(with_transits, product, column, nstars)
                        - _columns(without, product, column, nstars))
    forced = [v for v in truth["variables"] if v.get("forced")]
    return diff, truth, forced


def depth_ratio(diff: np.ndarray, factor: np.ndarray) -> float:
    """Measured over true depth of one star's twin difference (nframes,) given the
    truth's flux factor (nframes,)."""
    inside = factor < 1 - 1e-6
    ok = np.isfinite(diff)
    step = np.median(diff[inside & ok]) - np.median(diff[~inside & ok])
    return float((1 - 10 ** (-0.4 * step)) / np.median(1 - factor[inside]))


def _ratios(twins, column: str, kinds: tuple[str, ...]) -> dict:
    diff, truth, forced = twins
    out = {}
    for v in forced:
        if v["forced"] in kinds:
            factor = truth["variability"][:, v["index"]]
            out[v["index"]] = [depth_ratio(diff[column][:, v["index"], a], factor)
                               for a in APERTURES]
    return out


def test_night_has_the_transits_to_test(twins):
    """0.5-2 % transits on bright and crowded stars, each with frames in and out of it."""
    diff, truth, forced = twins
    assert {v["forced"] for v in forced} == {"bright", "crowded"}
    depths = [v["depth"] for v in forced]
    assert min(depths) < 0.008 and max(depths) > 0.015
    for v in forced:
        inside = truth["variability"][:, v["index"]] < 1 - 1e-6
        assert 3 <= inside.sum() <= len(inside) - 3
        assert np.isfinite(diff["arm"][:, v["index"]]).all()


def _arm_against_aim(twins, least: float) -> dict:
    """{star: arm depth ratio - aim depth ratio per aperture} of forced transits at least
    ``least`` deep."""
    arm = _ratios(twins, "arm", ("bright", "crowded"))
    aim = _ratios(twins, "aim", ("bright", "crowded"))
    depth = {v["index"]: v["depth"] for v in twins[2]}
    return {k: np.subtract(arm[k], aim[k]) for k in arm if depth[k] >= least}


def test_magnitude_fit_keeps_the_aperture_depth(twins):
    """arm's depth is aim's (what the aperture saw) within 5 % of the truth for every
    forced transit of 0.5 % or more, bright or crowded, outside < 2 px blends: the fit
    takes nothing of a star's own dip (without leave-one-out, 6-11 % of it on this
    night).  The 1.9 px blend, whose aperture sees half its dip, is held to 6 %: with
    aperture corrections its arm moves 5.4 % of the truth from aim in one aperture."""
    blended = {v["index"] for v in twins[2] if v.get("separation", np.inf) < 2.0}
    for star, delta in _arm_against_aim(twins, 0.005).items():
        assert np.abs(delta).max() < (0.06 if star in blended else TOLERANCE), star


def test_transits_on_irm_outside_blends(twins):
    """irm keeps what the aperture saw, within 5 % of the truth (the issue's goal), for
    every forced transit whose star has no neighbour within 2 px (a closer blend dilutes
    any aperture): of the true depth on the bright stars, of aim's depth (the frame's
    own aperture) on the crowded ones, whose neighbour's light dilutes the dip in F_ref
    as on the frame (star 622, a neighbour at 5.6 px: aim keeps 0.89-0.92).  Without
    ``[subtract] local_scale`` a transiting star used as a kernel stamp moved the kernel's
    flux scale over the field by 0.1-0.2 %, 4-9 % of a 1-2 % transit elsewhere (bright
    stars at 0.91-1.10; star 622 at 0.06-0.09 above aim); the local transparency term
    takes that out with the neighbours' residuals, never the star's own."""
    blended = {v["index"] for v in twins[2] if v.get("separation", np.inf) < 2.0}
    crowded = {v["index"] for v in twins[2] if v["forced"] == "crowded"}
    ratios = _ratios(twins, "irm", ("bright", "crowded"))
    aim = _ratios(twins, "aim", ("crowded",))
    assert len(ratios) - len(blended) >= 4
    for star, values in ratios.items():
        if star not in blended:
            seen = aim[star] if star in crowded else np.ones(len(values))
            assert np.abs(np.subtract(values, seen)).max() < TOLERANCE, (star, values, seen)
