"""The subtract phase on a small simulated night, without trex.pipeline: photometric
reference, per-frame subtraction and difference photometry, checked against the truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.wcs import WCS
from conftest import project_context, run_stages

from trex import runner, subtract
from trex.cli import main
from trex.db import connect
from trex.fits import read_image
from trex.ledger import Ledger, Task
from trex.products import load_product
from trex.project import Project
from trex.simulate import load_truth, simulate_project
from trex.stages import per_frame

NREF = 4      # half of the 8 frames: the other half are independent of the reference
APERTURE = 1
SET = ["--set", f"subtract.nref={NREF}"]
CHAIN = per_frame(("subtract",))


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    root = tmp_path_factory.mktemp("subtract") / "p"
    main(["init", str(root)])
    simulate_project(root, frames=8, size=512, stars=800, seed=3)
    assert main(["run", str(root), "--stages", "calibrate,extract,astrometry,photometry"]) == 0
    assert main(["subtract", str(root), *SET]) == 0
    project = Project(root)
    config = project.load_config({"subtract": {"nref": NREF}})
    db = connect(project.database_url(config))
    yield root, project_context(project, config, db), db
    db.close()


def _light_curves(root: Path, key: str) -> tuple[list[int], np.ndarray, dict]:
    """framekeys, common stars and {field: (nframes, nstars)} of the iphot products."""
    with connect(f"sqlite:///{root / 'trex.sqlite'}") as db:
        rows = db.query("SELECT framekey, redpath FROM calibratedframes ORDER BY framekey")
    tables = [load_product(root / r, "iphot") for _, r in rows]
    stars = tables[0]["star"]
    for t in tables[1:]:
        stars = np.intersect1d(stars, t["star"])
    out = {f: np.array([t[f"{f}_{APERTURE:03d}"][np.searchsorted(t["star"], stars)]
                        for t in tables]) for f in ("ifl", "ife", "irm", "ire", "irq")}
    return [k for k, _ in rows], stars, out


def test_reference_recorded_and_kept(night):
    root, context, db = night
    (group, ref), = context.photref.items()
    row = db.query("SELECT photrefkey, nframes, isactive, framekeys FROM photrefs")
    assert row == [(ref.photrefkey, NREF, 1, ",".join(map(str, ref.framekeys)))]
    image, header = read_image(root / ref.path)
    mask, _ = read_image(root / ref.path, hdu="MASK")
    astrom = root / db.query("SELECT path FROM astromrefs WHERE isactive")[0][0]
    ref_image, astrom_header = read_image(astrom)
    assert image.shape == mask.shape == ref_image.shape and np.isfinite(image).all()
    pix = np.array([[10.0, 20.0], [400.0, 300.0]])
    np.testing.assert_allclose(WCS(header).all_pix2world(pix, 0),
                               WCS(astrom_header).all_pix2world(pix, 0), atol=1e-9)
    phot = ref.phot
    assert len(phot) > 300 and np.nanmedian(phot["flux_001"]) > 0
    assert np.isfinite(phot["flux_001"][phot["flag_001"] == 0]).all()
    mtime = (root / ref.path).stat().st_mtime
    assert main(["subtract", str(root), *SET]) == 0  # kept, nothing to do
    assert (root / ref.path).stat().st_mtime == mtime
    assert db.query("SELECT count(*) FROM photrefs")[0][0] == 1
    assert Ledger(db, context.config).pending(CHAIN, context) == []


def test_database_rows(night):
    root, context, db = night
    n = db.query("SELECT count(*), count(DISTINCT framekey) FROM ism_photometry")[0]
    nstars = len(load_product(root / db.query("SELECT redpath FROM calibratedframes")[0][0],
                              "iphot"))
    assert n[1] == 8 and n[0] > 8 * 300
    assert db.query("SELECT count(*) FROM iphotfiles")[0][0] == 8
    assert db.query("SELECT count(*) FROM photindex_iphots")[0][0] == 8
    assert nstars > 300


def test_difference_image_noise_matches_expectation(night):
    root, context, db = night
    ref = next(iter(context.photref.values()))
    ratios = {}
    for task in _tasks(db, context, ref.framekeys):
        frame = runner.load_frame(task, CHAIN, context)
        ratios[task.framekey] = subtract.run(frame, context).products["diff_noise_ratio"]
    print("diff_noise_ratio of the frames outside the stack:", ratios)
    assert len(ratios) == 8 - NREF
    assert all(abs(r - 1) < 0.1 for r in ratios.values()), ratios


def _tasks(db, context, members) -> list[Task]:
    """Subtract tasks of the frames outside the reference stack (already done)."""
    rows = db.query("SELECT f.framekey, f.rawpath, f.night, c.redpath FROM frameinfo f "
                    "JOIN calibratedframes c ON c.framekey = f.framekey ORDER BY f.framekey")
    metas = Ledger(db, context.config).frame_metas([int(r[0]) for r in rows])
    return [Task(int(k), raw, n, metas[int(k)], ("subtract",), red) for k, raw, n, red in rows
            if int(k) not in members]


def test_constant_stars_scatter_like_their_errors(night):
    root, context, db = night
    members = next(iter(context.photref.values())).framekeys
    keys, stars, lc = _light_curves(root, "ifl")
    truth = load_truth(root)
    var = truth["variability"][:, stars]
    outside = [i for i, k in enumerate(keys) if k not in members]
    ok = np.all(lc["irq"] == 0, axis=0) & np.all(var == 1, axis=0)
    irm, ire = lc["irm"][outside][:, ok], lc["ire"][outside][:, ok]
    bright = np.median(ire, axis=0) < np.percentile(np.median(ire, axis=0), 30)
    chi2 = ((irm - irm.mean(0)) ** 2 / ire**2).sum(0)[bright] / (len(outside) - 1)
    print(f"irm chi2/dof of {bright.sum()} bright constant stars: {chi2.mean():.3f}")
    assert bright.sum() > 50 and 0.8 < chi2.mean() < 1.25, chi2.mean()


def test_flux_ratios_follow_the_truth(night):
    """Every good star's frame-to-frame flux ratio (variables and flares included)
    agrees with the simulated variability within its errors."""
    root, context, db = night
    members = next(iter(context.photref.values())).framekeys
    keys, stars, lc = _light_curves(root, "ifl")
    truth = load_truth(root)
    outside = [i for i, k in enumerate(keys) if k not in members]
    ok = np.all(lc["irq"][outside] == 0, axis=0)
    flux, err = lc["ifl"][outside][:, ok], lc["ife"][outside][:, ok]
    var = truth["variability"][outside][:, stars[ok]]
    z = (flux[1:] / flux[0] - var[1:] / var[0]) / np.hypot(err[1:] / flux[1:], err[0] / flux[0])
    print(f"flux ratio vs truth: median z {np.median(z):.3f}, std z {np.std(z):.3f}")
    assert abs(np.median(z)) < 0.15 and 0.85 < np.std(z) < 1.2
    flaring = [v["index"] for v in truth["variables"] if v["kind"] == "flare"]
    assert np.isin(flaring, stars[ok]).any()


def test_injected_dimming_recovered(night):
    """A 2 % dip injected into a frame copy (the star's own light scaled, noise
    included) comes out of irm with a depth error under 5 %.  The star is not a
    kernel stamp: the spatially varying flux term absorbs part of a stamp star's
    change (the same holds for fitsh; stamps are chosen on the reference)."""
    root, context, db = night
    members = next(iter(context.photref.values())).framekeys
    task = _tasks(db, context, members)[0]
    truth = load_truth(root)
    row = list(truth["frame"]).index(Path(task.rawpath).name)
    frame = runner.load_frame(task, CHAIN, context)
    before = subtract.run(frame, context).products
    star = _isolated_bright_star(truth, row, frame.image.shape, before["stamps"],
                                 next(iter(context.photref.values())).phot)
    before = before["iphot"]
    depth = 0.02
    x, y = (int(round(truth[c][row, star])) for c in ("x", "y"))
    box = frame.image[y - 7:y + 8, x - 7:x + 8]
    sky = np.median(np.concatenate([box[0], box[-1], box[:, 0], box[:, -1]]))
    box -= depth * (box - sky)
    after = subtract.run(frame, context).products["iphot"]
    i = np.searchsorted(before["star"], star)
    f0, f1 = before[f"ifl_{APERTURE:03d}"][i], after[f"ifl_{APERTURE:03d}"][i]
    measured = 1 - 10 ** (-0.4 * (after[f"irm_{APERTURE:03d}"][i] - before[f"irm_{APERTURE:03d}"][i]))
    print(f"injected depth {depth}, recovered {measured:.5f} (irm), {1 - f1 / f0:.5f} (ifl)")
    assert abs(measured / depth - 1) < 0.05 and abs((1 - f1 / f0) / depth - 1) < 0.05


def _isolated_bright_star(truth: dict, row: int, shape, stamps: np.ndarray,
                          refphot: np.ndarray) -> int:
    """A bright, unsaturated, constant star with no neighbour within 12 px and no
    kernel stamp within 25 px of its reference position."""
    x, y, flux = truth["x"][row], truth["y"][row], truth["flux_adu"][row]
    ny, nx = shape
    inside = (x > 20) & (x < nx - 21) & (y > 20) & (y < ny - 21) & ~truth["saturated"][row]
    inside &= np.all(truth["variability"] == 1, axis=0)
    inside[np.setdiff1d(np.arange(len(x)), refphot["star"])] = False
    for s in np.argsort(-np.where(inside, flux, 0)):
        near = np.hypot(x - x[s], y - y[s]) < 12
        at = refphot[np.searchsorted(refphot["star"], s)]
        stamp = np.hypot(stamps[:, 0] - at["x"], stamps[:, 1] - at["y"]).min() < 25
        if inside[s] and near.sum() == 1 and not stamp:
            return int(s)
    raise AssertionError("no isolated bright star")


def test_rebuild_makes_a_new_reference_and_redoes_the_frames(night):
    """Last in the module: it replaces the reference of the other tests."""
    root, context, db = night
    before = db.query("SELECT count(*) FROM ism_photometry")[0][0]
    old = next(iter(context.photref.values())).photrefkey
    summary = run_stages(Project(root), ["subtract"], config=context.config,
                         rebuild_references=True)
    assert summary["photometric reference"] == (1, 0) and summary["subtract"] == (8, 0)
    (new,), = db.query("SELECT photrefkey FROM photrefs WHERE isactive")
    assert new != old
    assert db.query("SELECT count(*) FROM ism_photometry")[0][0] == before
    assert db.query("SELECT DISTINCT photrefkey FROM ism_photometry") == [(new,)]
    assert db.query("SELECT DISTINCT photrefkey FROM iphotfiles") == [(new,)]
