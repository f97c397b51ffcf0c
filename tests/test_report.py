"""The noise model against hand-computed values; the report on a tiny project."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_stages
from test_detrend import write_project

from trex import lcformat
from trex.db import Database
from trex.db.queries import Queries
from trex.fits import write_image
from trex.lcstats import noise_model, robust_stats
from trex.report import make_report


def test_noise_model_matches_hand_computation():
    # F/t = 1e4 ADU/s for 10 s, gain 2: 2e5 e-; sky 100 ADU = 200 e-/px; r = 2 px; RON 5 e-
    mag = 17.0 - 2.5 * np.log10(1e4)
    out = noise_model([mag], zeropoint=17.0, exptime=10.0, gain=2.0, rdnoise=5.0, sky=100.0,
                      radius=2.0)
    npix = np.pi * 4.0
    expected = 2.5 / np.log(10) * np.sqrt(2e5 + npix * (200.0 + 25.0)) / 2e5
    assert out["total"][0] == pytest.approx(expected, rel=1e-12)
    assert out["star"][0] == pytest.approx(1.0857362 / np.sqrt(2e5), rel=1e-6)
    # the sky estimate of an annulus 6..12 px adds npix / nsky of the sky and read terms
    ann = noise_model([mag], zeropoint=17.0, exptime=10.0, gain=2.0, rdnoise=5.0, sky=100.0,
                      radius=2.0, annulus=(6.0, 6.0))
    nsky = np.pi * (144.0 - 36.0)
    factor = 1 + npix / nsky
    assert ann["total"][0] == pytest.approx(
        2.5 / np.log(10) * np.sqrt(2e5 + npix * factor * 225.0) / 2e5, rel=1e-12)
    # the faint end is sky/read limited: error grows as 10^(0.4 dm)
    faint = noise_model([mag + 10, mag + 11], zeropoint=17.0, exptime=10.0, gain=2.0,
                        rdnoise=5.0, sky=100.0, radius=2.0)["total"]
    assert faint[1] / faint[0] == pytest.approx(10 ** 0.4, rel=0.01)


def test_robust_stats_against_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(10, 0.01, (3, 500))
    x[0, :5] = 11.0  # outliers: the clipped RMS ignores them
    x[2, 100:] = np.nan
    st = robust_stats(x)
    assert st["n"].tolist() == [500, 500, 100]
    assert st["rms"][1] == pytest.approx(np.std(x[1], ddof=1))
    assert st["crms"][0] == pytest.approx(0.01, rel=0.1) and st["rms"][0] > 0.05
    assert st["median"][2] == pytest.approx(np.median(x[2, :100]))


def _positions(project, framekey: int) -> tuple[np.ndarray, np.ndarray]:
    xy = [r[["xcc", "ycc"]][r["framekey"] == framekey]
          for r, _ in map(lcformat.read_rows, project.lc("7").glob("TRX-*.fits"))]
    xy = np.concatenate(xy)
    return xy["xcc"], xy["ycc"]


def make_database(project, nframes: int = 240, with_frame: bool = True) -> Database:
    """frameinfo + calibratedframes rows for the frames of ``write_project``."""
    rows, _ = lcformat.read_rows(next(project.lc("7").glob("TRX-*.fits")))
    db = Database(f"sqlite:///{project.root / 'trex.sqlite'}")
    db.create_schema()
    redpath = "RED/7/ref.fits"
    for i, (key, rjd) in enumerate(zip(rows["framekey"], rows["rjd"], strict=True)):
        db.execute("INSERT INTO frameinfo (framekey, rawpath, night, projid, exptime, jd, gain, "
                   "rdnoise, isok) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (int(key), f"RAW/n/{key}.fits", "n", "7", 30.0, float(rjd) + 2400000.0,
                    2.0, 6.0, 1))
        db.execute("INSERT INTO calibratedframes (framekey, projid, redpath, frameisok, medsky, "
                   "meds, ellipticity, nsources, wcs_median) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (int(key), "7", redpath if i == 0 else f"RED/7/{key}.fits", 1,
                    800.0 + i, 0.35, 0.05, 500 - i % 7, 0.05))
    if with_frame:
        image = np.random.default_rng(0).normal(800, 10, (1000, 1000))
        yy, xx = np.mgrid[:1000, :1000]
        for x, y in zip(*_positions(project, int(rows["framekey"][0])), strict=True):
            near = (np.abs(xx - x) < 8) & (np.abs(yy - y) < 8)
            image[near] += 3000 * np.exp(-((xx[near] - x) ** 2 + (yy[near] - y) ** 2) / 4.5)
        image = image.astype(np.float32)
        write_image(project.root / redpath, image)
        db.execute("INSERT INTO astromrefs (projid, field, ccd, framekey, path, isactive, "
                   "created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   ("7", "F1", "1", int(rows["framekey"][0]), redpath, 1, "now"))
    return db


def test_report_writes_every_plot(tmp_path):
    project, config, _ = write_project(tmp_path / "p", nstars=30)
    run_stages(project, ["detrend"])
    db = make_database(project)
    index = make_report(project, config, Queries(db))
    assert index == project.root / "PROJ" / "report" / "index.md"
    text = index.read_text()
    for name in ("rms_7.png", "preview_7.png", "lightcurves_7.png", "frames.png"):
        png = index.parent / name
        assert png.is_file() and png.stat().st_size > 10_000, name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in text
    assert "| `atf_000` |" in text  # the RMS / noise table
    # a run summary first; apertures named by their radius, never by their index
    assert text.startswith("# trex report\n\n## Run summary\n")
    assert f"| configuration hash | `{config.sha}` |" in text and "| trex | " in text
    radius = config.photometry.apertures[0].split(":")[0]
    assert f"| aperture {float(radius):g} px | `atf_000` |" in text
    assert "aperture 0" not in text
    assert "Not available: WCS residual p90, px" in text  # NULL column skipped with a note
    # this project has no sources product: the residual plot is skipped with its reason
    assert "Astrometric residuals, project 7" in text and "no sources or catalog" in text


def test_report_without_database_or_stats(tmp_path):
    project, config, _ = write_project(tmp_path / "p", nstars=12)
    out = tmp_path / "elsewhere"
    index = make_report(project, config, None, out=out)
    assert index == out / "index.md"
    text = index.read_text()
    assert "run `trex detrend`" in text and "no calibrated frames" in text
    assert "## Run summary" in text and "Light curves: none yet." in text
    assert (out / "lightcurves_7.png").stat().st_size > 10_000
