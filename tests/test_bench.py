"""``trex bench`` modules: the check columns compare real outputs of trex and the peer.

No timing is asserted (machines are noisy); the inputs are tiny.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from trex.bench import calibrate, endtoend, extract, photometry, subtract, transpose
from trex.bench.common import hatpi_frame


@pytest.fixture(scope="module")
def small_frame():
    return hatpi_frame(256, 120, seed=7)


def test_photometry_check_compares_both_outputs(small_frame):
    image, x, y, flux = small_frame
    stars = photometry.bright_isolated(x, y, flux, fraction=0.2)
    assert stars.size > 3
    mine = photometry.run_trex(image, x, y, sky="mean")
    peer = photometry.run_sep(image, x, y)
    assert mine.shape == peer.shape == (x.size, 3)
    assert photometry.flux_check(mine[:, 1], peer[:, 1], stars).startswith("flux ratio 1.000")
    # a peer 10 % brighter shows up in the ratio
    assert "flux ratio 0.909" in photometry.flux_check(mine[:, 1], 1.1 * peer[:, 1], stars)


def test_photutils_peer_matches_sep(small_frame):
    image, x, y, flux = small_frame
    stars = photometry.bright_isolated(x, y, flux, fraction=0.2)
    check = photometry.flux_check(photometry.run_photutils(image, x, y)[:, 1],
                                  photometry.run_sep(image, x, y)[:, 1], stars)
    assert check.startswith("flux ratio 1.00")


def test_read_fiphot_takes_flux_columns(tmp_path):
    path = tmp_path / "out.phot"
    path.write_text("0 10.5 11.5 100.0 1.0 5.0 0.1 200.0 2.0 5.0 0.1 300.0 3.0 5.0 0.1\n"
                    "2 20.5 21.5 - - - - 7.0 1.0 5.0 0.1 8.0 1.0 5.0 0.1\n")
    flux = photometry.read_fiphot(path, 3)
    np.testing.assert_array_equal(flux[0], [100.0, 200.0, 300.0])
    assert np.isnan(flux[1]).all() and np.isnan(flux[2, 0]) and flux[2, 2] == 8.0


def test_extract_match_check(small_frame):
    image = small_frame[0]
    mine, peer = extract.run_trex(image), extract.run_sep(image)
    assert len(mine) > 20 and len(peer) > 20
    assert "of peer's matched" in extract.match_check(mine, peer)
    shifted = extract.match_check(mine, mine + [0.3, 0.4])
    assert "100.0% of peer's matched" in shifted and "median offset 0.5000 px" in shifted
    far = extract.match_check(mine, np.vstack([mine, mine + 50.0]))
    assert f"trex {len(mine)} / peer {2 * len(mine)}" in far


def test_resample_check_uses_area_ratio():
    transform = subtract.test_transform(128)
    area = subtract.area_ratio(transform, np.arange(0, 128, 4.0)[None, :],
                               np.arange(0, 128, 4.0)[:, None])
    assert area.shape == (32, 32) and np.allclose(area, 1.004 ** 2, atol=2e-3)
    peer = np.random.default_rng(1).uniform(900, 1100, (128, 128))
    mine = peer * np.kron(area, np.ones((4, 4)))
    assert "1.0000 +- 0.0e+00" in subtract.agreement_check(mine, peer, area)
    assert "1.0500" in subtract.agreement_check(1.05 * mine, peer, area)


def test_resample_trex_agrees_with_scipy(small_frame):
    from scipy.ndimage import map_coordinates

    image = small_frame[0]
    transform = subtract.test_transform(256)
    yy, xx = np.mgrid[0:256, 0:256].astype(float)
    u, v = transform(xx, yy)
    peer = map_coordinates(image, [v, u], order=1, cval=np.nan)
    area = subtract.area_ratio(transform, np.arange(0, 256, 4.0)[None, :],
                               np.arange(0, 256, 4.0)[:, None])
    mine = subtract.resample(image, transform, (256, 256), "bilinear")
    assert "1.0000" in subtract.agreement_check(mine, peer, area)


def test_noise_check_of_pure_noise():
    rng = np.random.default_rng(2)
    model = np.full((200, 200), 1000.0)
    reference = model.copy()
    kernel = np.zeros((9, 9))
    kernel[4, 4] = 1.0
    var = model / subtract.GAIN + (subtract.RDNOISE / subtract.GAIN) ** 2
    var_ref = (model / subtract.GAIN + (subtract.RDNOISE / subtract.GAIN) ** 2) / subtract.NSTACK
    diff = rng.normal(0, 1, model.shape) * np.sqrt(var + var_ref)
    check = subtract.noise_check(diff, model, reference, kernel)
    assert 0.97 < float(check.split()[2]) < 1.03
    assert 1.9 < float(subtract.noise_check(2 * diff, model, reference, kernel).split()[2]) < 2.1


def test_calibrate_checks(tmp_path):
    assert "0.00e+00 ADU" in calibrate.difference_check(np.ones((4, 4)), np.ones((4, 4)), 1.0)
    assert "max |trex - numpy| 2.00e+00 ADU (1.0e+00 sigma)" == calibrate.difference_check(
        np.ones((4, 4)), np.full((4, 4), 3.0), 2.0)
    row = calibrate.bench_master(64, 5, tmp_path)
    median = float(row.check.split("median ")[1].split(",")[0])
    assert median < 0.05  # trex and numpy clipped means of the same frames
    row = calibrate.bench_frame(256, tmp_path)
    assert "max |trex - numpy|" in row.check and float(row.check.split()[4]) < 1e-2


def test_transpose_matches_numpy(tmp_path):
    from trex.config import Config
    from trex.project import init_project

    project = init_project(tmp_path / "p")
    catalog, entries = transpose.make_products(project.root, 6, 12)
    peer = transpose.numpy_sort(transpose.load_frames(project, entries))
    mine = transpose.scatter_sort(project, Config(), entries, collect=True)
    assert transpose.order_check(mine, peer) == "72 rows, same order and values as numpy"
    swapped = mine[0].copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    assert "DIFFERENT" in transpose.order_check((swapped, mine[1]), peer)
    nobs = transpose.transpose_nobs(project, Config(), entries, catalog)
    assert transpose.lc_check(project, nobs, peer) == "12 LC files, 72 rows; 5 stars identical to numpy"
    peer[0]["aim_001"][peer[0]["star"] == 0] += 1.0
    assert "DIFFER from numpy" in transpose.lc_check(project, nobs, peer)


def test_endtoend_rss_wrapper_and_lc_comparison(tmp_path):
    from trex.lcformat import empty_rows, write_lightcurve

    grow = [sys.executable, "-c", "x = bytearray(80 * 2**20); x[::4096] = b'1' * len(x[::4096])"]
    _, rss, _ = endtoend.run_measured(grow, tmp_path / "one")
    assert len(rss) == 1 and rss[0] > 80
    _, rss, _ = endtoend.run_measured(grow, tmp_path / "two", mpi_ranks=2)
    assert len(rss) == 2 and min(rss) > 80
    for name, value in (("a", 1.0), ("b", 1.0), ("c", 2.0)):
        rows = empty_rows(3, 3)
        rows["aim_000"] = value
        write_lightcurve(Path(tmp_path / name / "LC" / "7" / "S1.fits"), rows, [])
    import fitsio

    fitsio.write(str(tmp_path / "a" / "LC" / "7" / "lcstats.fits"), np.zeros(2, [("x", "f8")]),
                 extname="STATS")  # not a light curve: left out
    assert endtoend.same_lightcurves(tmp_path / "a", tmp_path / "b").endswith("1 sampled identical")
    assert "DIFFERENT" in endtoend.same_lightcurves(tmp_path / "a", tmp_path / "c")


@pytest.mark.skipif(not shutil.which("fitrans"), reason="fitsh not installed")
def test_fitrans_peer_uses_the_same_map(small_frame, tmp_path):
    image = small_frame[0]
    transform = subtract.test_transform(256)
    peer = subtract.fitrans_runner(image, transform, tmp_path)()
    mine = subtract.resample(image, transform, (256, 256), "flux")
    check = subtract.agreement_check(mine, peer, 1.0, "fitrans")
    assert abs(float(check.split()[1]) - 1.0) < 2e-3, check


@pytest.mark.skipif(not shutil.which("fiphot"), reason="fitsh not installed")
def test_fiphot_peer_reads_back_its_fluxes(small_frame, tmp_path):
    import subprocess

    image, x, y, flux = small_frame
    subprocess.run(photometry.fiphot_command(image, x, y, tmp_path), check=True,
                   capture_output=True)
    peer = photometry.read_fiphot(tmp_path / "out.phot", x.size)
    stars = photometry.bright_isolated(x, y, flux, fraction=0.2)
    check = photometry.flux_check(photometry.run_trex(image, x, y)[:, 1], peer[:, 1], stars)
    assert abs(float(check.split()[2]) - 1.0) < 0.01, check


def test_nights_archive_grows_with_synthetic_nights_the_run_leaves_alone(tmp_path):
    from trex.bench import nights
    from trex.db import connect
    from trex.lcformat import read_rows
    from trex.project import init_project
    from trex.simulate import simulate_project

    root = tmp_path / "night"
    init_project(root)
    simulate_project(root, frames=3, size=256, stars=150, seed=2, ncal=3)
    first = nights.run_night(root)
    assert first["frames"] == 3 and first["written"] > 0 and first["cpu"] > 0
    assert {"calibrate+extract+astrometry+photometry", "light curves: merge"} <= {
        p[0] for p in first["phases"]}
    with connect(f"sqlite:///{root / 'trex.sqlite'}") as db:
        before = db.query("SELECT count(*) FROM framestatus")[0][0]
    archive = nights.Archive(root)
    path = archive.files[0]
    base = len(archive.base[path])
    archive.grow(2)
    rows, header = read_rows(path)
    assert len(rows) == 3 * base and np.all(np.diff(rows["rjd"]) > 0)
    assert len(np.unique(rows["framekey"])) == len(rows)
    assert sorted(str(header[f"NIGHT{i:03d}"]).split()[0] for i in range(3)) == \
        ["2026-11-27", "2026-11-28", "2026-11-29"]
    low, high = nights.rows_per_star(root)
    assert high == 3 * max(len(r) for r in archive.base.values())
    with connect(f"sqlite:///{root / 'trex.sqlite'}") as db:
        assert db.query("SELECT count(*) FROM framestatus")[0][0] == 3 * before
    again = nights.run_night(root)  # the synthetic nights are done: nothing to redo
    assert again["frames"] == 0 and len(read_rows(path)[0]) == 3 * base


@pytest.mark.skipif(bool(__import__("trex.bench.fitshchain", fromlist=["x"]).missing_tools()),
                    reason="fitsh not installed")
def test_chain_both_chains_write_light_curves(tmp_path):
    from trex.bench import chain

    # without the pipe-trex grid variant (a second ficonv per frame; its files are below)
    measured = chain.measure(tmp_path, {"frames": 5, "size": 384, "stars": 900}, grid=False)
    mine, peer = measured.lightcurves
    assert len(mine.stars) > 100 and len(peer.stars) > 100
    # the same stars got light curves from both chains
    assert len(mine.stars & peer.stars) >= 0.9 * max(len(mine.stars), len(peer.stars))
    assert mine.bright >= 3 and peer.bright >= 3
    for rms in (mine.rms_arm, mine.rms_irm, peer.rms_arm, peer.rms_irm):
        assert 0 < rms < 0.05  # both chains measured the bright stars to a few mmag
    rows = chain.chain_rows(measured)
    assert len(rows) == len(chain.GROUPS) + 2  # the phases, the whole chain's CPU and wall
    for row in rows:
        assert row.operation.startswith("chain (") and row.size.startswith("384^2 x5")
        assert row.trex > 0 and row.peer_time > 0 and np.isfinite(row.ratio)
        assert "whole processes" in row.check or row.operation.startswith("chain (CPU")
    assert rows[-2].operation.startswith("chain (CPU s/frame): whole chain")
    assert "in both:" in rows[-1].check and "grmatch median residual" in rows[2].check
    # trex's light curves read back onto the truth's frames and stars: RMS / floor of
    # order 1 (low on 5 frames: the MAD of 5 points after the fit; measured 0.38-0.59
    # for arm); the wrong frames or stars would give several
    for name in ("trex arm", "trex irm"):
        ratios = [r for _, _, r, count in measured.bins[name] if count >= 10]
        assert ratios and all(0.25 < r < 3 for r in ratios), (name, ratios)


def test_ficonv_stamp_files_hold_trex_stamps(tmp_path):
    centres = np.array([[30, 40], [100, 7]])
    subtract.write_stamps(tmp_path / "stamps.txt", centres, 10)
    table = np.loadtxt(tmp_path / "stamps.txt")
    # ficonv centres a stamp on pixel int(x), int(y) of its own coordinates (+0.5)
    np.testing.assert_array_equal(table.astype(int), [[30, 40, 10], [100, 7, 10]])
    assert subtract.stamp_pixels(centres, 10) == 2 * 21 ** 2
    assert subtract.stamp_pixels(np.array([[5, 5], [6, 5]]), 1) == 12  # overlap counted once
    grid = subtract.grid_centres((2048, 2048))
    assert grid.shape == (900, 2) and grid.min() == 34 and grid.max() == 2013


def test_backfill_ingests_transposes_and_detrends_every_row(tmp_path):
    from trex.bench import backfill
    from trex.project import init_project

    project = init_project(tmp_path / "p")
    backfill.make_products(project, 24, 30)
    result = backfill.measure(project, "sqlite", 1, 24)
    check = result["check"]
    assert check["ap_rows"] == 24 * 30 * backfill.NAPER
    assert check["lc_files"] == check["lcstats_stars"] == 30
    assert check["arm_n"] == 24 * 30 and 0 < check["aep_n"] <= check["arm_n"]
    names = [p["name"] for p in result["phases"]]
    assert names.index("ingest") < names.index("light curves: merge")
    assert all(len(p["peak_mb"]) == 1 and p["peak_mb"][0] > 0 for p in result["phases"])
    rows = backfill.rows_of(result, None, "sqlite", "24 x 30", 24, 30)
    assert rows[0].operation.startswith("backfill SQLite, serial: ingest") and rows[0].trex > 0


def test_endtoend_reads_the_phase_timers_into_the_ingest_model(caplog):
    """The timer lines trex.pipeline logs are what the bench parses: 40 frames, 50 s of
    work in each of the two passes over two ranks, rank 0 recording 10 s in each: w = 2.5 s,
    r = 0.5 s a frame, rank 0 saturates at 1 + w / r = 6 ranks."""
    import logging

    from trex.pipeline import _log_timing

    clocks = [{"items": 15, "work": 30.0, "work_cpu": 29.0, "record": 10.0, "record_cpu": 9.0},
              {"items": 25, "work": 20.0, "work_cpu": 19.0, "record": 0.0, "record_cpu": 0.0}]
    with caplog.at_level(logging.INFO, logger="trex.pipeline"):
        _log_timing("calibrate+extract+astrometry+photometry", 41.5, clocks)
        _log_timing("magfit+subtract", 40.0, clocks)
        _log_timing("master bias", 1.0, clocks)
    text = "\n".join(f"{r.name}: {r.getMessage()}" for r in caplog.records)
    phases = endtoend.phase_times(text)
    assert phases["calibrate+extract+astrometry+photometry"] == {
        "wall": 41.5, "ranks": [(15, 30.0), (25, 20.0)], "record": 10.0}
    rate, record, saturates = endtoend.ingest_model(phases)
    assert rate == pytest.approx(40 / 100.0)
    assert record == pytest.approx(40 / 20.0)
    assert saturates == pytest.approx(6.0)
