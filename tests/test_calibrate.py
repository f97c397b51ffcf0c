"""Calibration against synthetic raw frames with a known truth.

The tiny camera below makes raw frames (uint16, 280 x 256 with a 24-column
overscan strip) from: a per-frame bias level and row pattern (seen by the
overscan), a fixed 2-D bias structure, dark current with hot pixels, a flat
(vignetting, pixel response, dead pixels), sky and stars, Poisson and read
noise, and saturation.  The calibrated frame must equal sky + stars within
the noise predicted from the same model.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import fitsio
import numpy as np
import pytest
from conftest import calibration_counts, run_stages
from trex._stats import calibrate_pixels

from trex import masters as masters_module
from trex.calibrate import KERNEL_BITS, red_name
from trex.config import Config
from trex.db import connect
from trex.fits import read_image
from trex.flags import MASK
from trex.frame import Context
from trex.header import parse_header
from trex.ledger import Ledger
from trex.masterframes import Masters, nearest_master, recorded_masters
from trex.masters import block_rows, build_master
from trex.parallel import SerialComm
from trex.pipeline import run_phase
from trex.project import init_project
from trex.stages import per_frame


def calibrate_project(project, config, db) -> dict:
    """The calibrate stage through the pipeline (inventory, masters, frames)."""
    return calibration_counts(run_stages(project, ["calibrate"], db.url, config))

NY, NX, NOVER = 256, 280, 24
BIASSEC, TRIMSEC = "[257:280,1:256]", "[3:256,3:256]"
TRIM = (slice(2, 256), slice(2, 256))
GAIN, RDNOISE_E, SATURATE = 2.0, 10.0, 60000.0
SIG_R2 = (RDNOISE_E / GAIN) ** 2 + 1.0 / 12.0           # read noise + quantisation, ADU^2
SIG_OVS2 = np.pi / 2 * SIG_R2 / NOVER                   # per-row overscan median, ADU^2
NB, ND, NF, TD, TF, TOBJ, LFLAT, SKY = 12, 6, 6, 60.0, 5.0, 30.0, 20000.0, 800.0


class Camera:
    """Fixed detector properties and a raw-frame writer."""

    def __init__(self, seed: int = 1):
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:NY, 0:NX].astype(float)
        self.bias2d = 3.0 * np.sin(x / 7.0) + 0.01 * y
        self.bias2d[:, NX - NOVER:] = 0.0
        self.dark = 0.05 + 0.02 * x / NX
        self.hot = np.zeros((NY, NX), bool)
        self.hot[rng.integers(10, 250, 15), rng.integers(10, 250, 15)] = True
        self.dark[self.hot] = 200.0
        r2 = ((x - 128) ** 2 + (y - 128) ** 2) / 128.0**2
        self.flat = (1.0 - 0.3 * r2) * rng.normal(1.0, 0.01, (NY, NX))
        self.dead = np.zeros((NY, NX), bool)
        self.dead[rng.integers(10, 250, 8), rng.integers(10, 250, 8)] = True
        self.flat[self.dead] *= 0.2
        self.flat /= np.median(self.flat[TRIM])
        self.sky = self.object_signal(rng)

    @staticmethod
    def object_signal(rng) -> np.ndarray:
        """Sky and Gaussian stars (ADU, before the flat), some bright enough to saturate."""
        y, x = np.mgrid[0:NY, 0:NX].astype(float)
        signal = np.full((NY, NX), SKY)
        for k in range(40):
            x0, y0 = rng.uniform(10, 245, 2)
            peak = 90000.0 if k < 3 else rng.uniform(200, 8000)
            signal += peak * np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * 1.2**2))
        signal[:, NX - NOVER:] = 0.0
        return signal

    def raw(self, rng, exptime: float, signal: np.ndarray | None) -> np.ndarray:
        level = 1000.0 + rng.normal(0, 20)
        rows = rng.normal(0, 3.0, NY)[:, None]
        electrons = GAIN * self.dark * exptime
        if signal is not None:
            electrons = electrons + GAIN * self.flat * signal
        electrons[:, NX - NOVER:] = 0.0
        adu = level + rows + self.bias2d + rng.poisson(electrons) / GAIN
        adu += rng.normal(0, RDNOISE_E / GAIN, adu.shape)
        return np.clip(np.round(adu), 0, SATURATE).astype(np.uint16)

    def write(self, path: Path, kind: str, exptime: float, rng, signal=None, date="2026-11-29",
              index=0, filt="r", compress=False, data=None) -> np.ndarray:
        data = self.raw(rng, exptime, signal) if data is None else data
        header = [
            {"name": "IMAGETYP", "value": kind}, {"name": "EXPTIME", "value": exptime},
            {"name": "DATE-OBS", "value": f"{date}T03:{index // 60:02d}:{index % 60:02d}"},
            {"name": "OBJECT", "value": "F1"}, {"name": "PROJID", "value": "P1"},
            {"name": "CCD", "value": "1"}, {"name": "FILTER", "value": filt},
            {"name": "GAIN", "value": GAIN}, {"name": "RDNOISE", "value": RDNOISE_E},
            {"name": "SATURATE", "value": SATURATE}, {"name": "BIASSEC", "value": BIASSEC},
            {"name": "TRIMSEC", "value": TRIMSEC},
        ]
        path.parent.mkdir(parents=True, exist_ok=True)
        fitsio.write(str(path), data, header=header, clobber=True,
                     **({"compress": "rice"} if compress else {}))
        return data


def make_night(root: Path, cam: Camera, night: str, seed: int, bias=NB, dark=ND, flat=NF,
               objects=2) -> dict:
    rng = np.random.default_rng(seed)
    folder = root / "RAW" / night
    date = f"{night[:4]}-{night[4:6]}-{night[6:]}"
    out = {"objects": []}
    for i in range(bias):
        cam.write(folder / f"bias-{i:03d}.fits", "zero", 0.0, rng, date=date, index=i)
    for i in range(dark):
        cam.write(folder / f"dark-{i:03d}.fits", "DARK", TD, rng, date=date, index=20 + i)
    for i in range(flat):
        cam.write(folder / f"flat-{i:03d}.fits", "skyflat", TF, rng,
                  np.full((NY, NX), LFLAT), date=date, index=30 + i)
    for i in range(objects):
        path = folder / f"obj-{i:03d}.fits"
        out["objects"].append((path, cam.write(path, "object", TOBJ, rng, cam.sky, date=date,
                                               index=40 + i)))
    return out


def open_project(root: Path, url: str | None = None):
    project = init_project(root)
    db = connect(url or f"sqlite:///{root / 'trex.sqlite'}")
    db.create_schema()
    return project, db


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """One night calibrated; tests below only read it."""
    root = tmp_path_factory.mktemp("night")
    cam = Camera()
    night = make_night(root, cam, "20261129", seed=2)
    project, db = open_project(root)
    counts = calibrate_project(project, Config(), db)
    return {"root": root, "cam": cam, "project": project, "db": db, "counts": counts,
            "objects": night["objects"]}


def expected_variance(cam: Camera) -> np.ndarray:
    """Per-pixel variance of (calibrated - truth), ADU^2, from the camera model."""
    f, s, d = cam.flat[TRIM], cam.sky[TRIM], cam.dark[TRIM]
    vb = (SIG_R2 + SIG_OVS2) / NB
    ved = (d * TD / GAIN + SIG_R2 + SIG_OVS2) / TD**2 / ND
    vflat = (f * LFLAT / GAIN + SIG_R2 + SIG_OVS2) / (LFLAT * f) ** 2 / NF
    additive = ((s * f + d * TOBJ) / GAIN + SIG_R2 + SIG_OVS2 + vb * (1 - TOBJ / TD) ** 2
                + TOBJ**2 * ved)
    return additive / f**2 + s**2 * vflat


def test_calibrated_frame_equals_truth_within_the_noise(calibrated):
    assert calibrated["counts"]["calibrated"] == 2 and calibrated["counts"]["failed"] == 0
    cam, root = calibrated["cam"], calibrated["root"]
    path = root / "RED" / "P1" / red_name("obj-000.fits", "20261129")
    image, header = read_image(path)
    mask, _ = read_image(path, hdu="MASK")
    assert image.shape == (254, 254) and image.dtype == np.float32
    good = mask == 0
    resid = (image - cam.sky[TRIM])[good]
    z = resid / np.sqrt(expected_variance(cam)[good])
    assert good.sum() > 0.95 * good.size
    assert abs(z.mean()) < 0.03, z.mean()                 # sigma of the mean ~0.006
    assert abs(z.std() - 1.0) < 0.05, z.std()
    assert abs(np.median(image[good]) - SKY) < 3.0          # overscan (~1000 ADU) removed
    assert 900 < header["OVERSCAN"] < 1100
    assert header["MBIAS"].startswith("bias-20261129") and header["MFLAT"].startswith("flat-")
    assert header["IMAGETYP"] == "object" and header["LTV1"] == -2


def test_saturated_hot_and_dead_pixels_are_masked(calibrated):
    cam, root = calibrated["cam"], calibrated["root"]
    path, raw = calibrated["objects"][0]
    mask, _ = read_image(root / "RED" / "P1" / red_name(path, "20261129"), hdu="MASK")
    mask = mask.astype(np.uint8)
    sat = raw[TRIM] >= SATURATE
    assert sat.sum() > 5
    assert np.all(mask[sat] & MASK["SATURATED"].bit)
    assert not np.any(mask[~sat] & MASK["SATURATED"].bit)
    hot, dead = cam.hot[TRIM], cam.dead[TRIM]
    assert hot.sum() > 5 and dead.sum() > 3
    assert np.all(mask[hot] & MASK["BADPIX"].bit)
    assert np.all(mask[dead] & MASK["BADPIX"].bit)
    assert (mask & MASK["BADPIX"].bit).astype(bool).sum() <= hot.sum() + dead.sum() + 3


def test_masters_recorded_with_provenance_and_reproducible(calibrated):
    project, db = calibrated["project"], calibrated["db"]
    rows = db.query("SELECT kind, night, ccd, filter, path, ninputs FROM masterframes "
                    "ORDER BY kind")
    assert [(r[0], r[3], r[5]) for r in rows] == [("bias", "", NB), ("dark", "", ND),
                                                  ("flat", "r", NF)]
    bias_path = project.root / rows[0][4]
    image, header = read_image(bias_path)
    assert header["NINPUTS"] == NB and header["CLIPSIG"] == 3.0 and header["TRXVERS"]
    assert header["INPUT001"] == "bias-000.fits"
    # the master bias is the fixed structure (the overscan took the level and row pattern)
    assert np.std(image - calibrated["cam"].bias2d[TRIM]) < 2.0
    dark, _ = read_image(project.root / rows[1][4])
    quiet = ~calibrated["cam"].hot[TRIM]
    assert abs(np.median(dark[quiet]) - np.median(calibrated["cam"].dark[TRIM])) < 0.01
    inputs = []
    for i in range(NB):
        p = project.raw / "20261129" / f"bias-{i:03d}.fits"
        inputs.append((p, parse_header(read_image(p)[1], Config(), p)))
    again = build_master("bias", inputs, Config().calibrate)
    assert np.array_equal(again.image, image)
    assert np.array_equal(again.image, build_master("bias", inputs, Config().calibrate).image)


def test_rerun_writes_nothing_new(calibrated):
    project, db = calibrated["project"], calibrated["db"]
    tables = ("frameinfo", "framestatus", "masterframes", "calibratedframes")
    before = {t: db.query(f"SELECT * FROM {t}") for t in tables}
    files = {p: p.stat().st_mtime_ns for p in project.root.rglob("*.fits")}
    counts = calibrate_project(project, Config(), db)
    assert counts == {"scanned": 0, "calibrated": 0, "failed": 0}
    assert {t: db.query(f"SELECT * FROM {t}") for t in tables} == before
    assert {p: p.stat().st_mtime_ns for p in project.root.rglob("*.fits")} == files


def test_changed_bias_rebuilds_masters_and_recalibrates(tmp_path, db_url):
    cam = Camera()
    make_night(tmp_path, cam, "20261129", seed=3, bias=4, dark=3, flat=3, objects=1)
    project, db = open_project(tmp_path, db_url)
    calibrate_project(project, Config(), db)
    old = dict((r[0], r[1]) for r in db.query("SELECT kind, path FROM masterframes"))
    cam.write(project.raw / "20261129" / "bias-003.fits", "bias", 0.0, np.random.default_rng(9))
    counts = calibrate_project(project, Config(), db)
    new = dict((r[0], r[1]) for r in db.query("SELECT kind, path FROM masterframes"))
    assert all(new[k] != old[k] for k in old)               # bias, then dark and flat on it
    assert not any((project.root / p).exists() for p in old.values())
    assert counts == {"scanned": 1, "calibrated": 1, "failed": 0}
    assert db.query("SELECT masterbias FROM calibratedframes") == [(new["bias"],)]


def test_missing_flat_and_nearest_night(tmp_path, caplog):
    cam = Camera()
    make_night(tmp_path, cam, "20261129", seed=4, bias=4, dark=3, flat=0, objects=1)
    make_night(tmp_path, cam, "20261201", seed=5, bias=0, dark=0, flat=0, objects=1)
    project, db = open_project(tmp_path)
    with caplog.at_level(logging.WARNING, logger="trex"):
        counts = calibrate_project(project, Config(), db)
    assert counts["calibrated"] == 2 and counts["failed"] == 0
    text = caplog.text
    assert "no master flat" in text and "uses the master bias of night 20261129" in text
    rows = db.query("SELECT f.night, c.frameisok, c.masterbias, c.masterflat FROM "
                    "calibratedframes c JOIN frameinfo f USING (framekey) ORDER BY f.night")
    assert [r[:2] for r in rows] == [("20261129", 1), ("20261201", 1)]
    assert rows[0][2] == rows[1][2] and "bias-20261129" in rows[1][2]
    assert rows[0][3] is None
    image, header = read_image(project.root / "RED" / "P1" / "20261201_obj-000.fits")
    assert header["MFLAT"] == "none"
    # no flat: the result is sky * flat (vignetting left in), overscan and bias removed
    ratio = np.median(image / (cam.sky * cam.flat)[TRIM])
    assert abs(ratio - 1.0) < 0.01


def test_corrupt_and_unclassifiable_files_are_recorded_and_skipped(tmp_path, caplog, db_url):
    cam = Camera()
    make_night(tmp_path, cam, "20261129", seed=6, bias=5, dark=0, flat=0, objects=1)
    folder = tmp_path / "RAW" / "20261129"
    good = (folder / "bias-000.fits").read_bytes()
    (folder / "bias-trunc.fits").write_bytes(good[: len(good) // 2])
    (folder / "junk.fits").write_bytes(b"not a fits file at all" * 10)
    cam.write(folder / "odd.fits", "pointing", 1.0, np.random.default_rng(1))
    project, db = open_project(tmp_path, db_url)
    with caplog.at_level(logging.WARNING, logger="trex"):
        calibrate_project(project, Config(), db)
    reasons = dict(db.query("SELECT rawpath, reason FROM frameinfo WHERE NOT isok"))
    assert "truncated" in reasons["RAW/20261129/bias-trunc.fits"]
    assert "not a FITS file" in reasons["RAW/20261129/junk.fits"]
    assert "unknown IMAGETYP" in reasons["RAW/20261129/odd.fits"]
    assert "bias-trunc.fits" in caplog.text
    assert db.query("SELECT ninputs FROM masterframes WHERE kind = 'bias'") == [(5,)]


def build_masters_in_bands(project, db, ranks: int, kinds=("bias", "dark", "flat")) -> dict:
    """The masters of ``kinds`` of a project whose inventory is done, each cut into
    ``ranks`` bands of rows (stacked one after the other here, as the ranks of an MPI
    run would stack them side by side); returns the recorded masters."""
    ledger = Ledger(db, Config())
    context = Context(project, Config(), {}, ranks=ranks)
    for kind in kinds:
        context, done, failed = run_phase(SerialComm(), ledger, context, Masters(kind),
                                          {"signal": False})
        assert (done, failed) == (ranks, 0)  # a band of a frame found unreadable is done
    return recorded_masters(project, ledger.read.masters())


def test_masters_stacked_in_bands_equal_masters_stacked_whole(tmp_path):
    """Bands of rows stacked apart and joined on rank 0 make the master stacked whole:
    image, inputs kept, bad pixels, flat levels (every 4th row and column of the whole
    frame, read strided)."""
    made = {}
    for ranks in (1, 3):
        make_night(tmp_path / str(ranks), Camera(), "20261129", seed=5, objects=0)
        project, db = open_project(tmp_path / str(ranks))
        run_stages(project, [], db.url)  # the inventory only
        made[ranks] = build_masters_in_bands(project, db, ranks)
    assert made[1].keys() == made[3].keys() and len(made[1]) == 3
    for key in made[1]:
        whole, banded = (fitsio.FITS(str(made[r][key])) for r in (1, 3))
        for hdu in range(len(whole)):
            assert np.array_equal(whole[hdu].read(), banded[hdu].read()), (key, hdu)
        for card in ("NINPUTS", "LEVELMIN", "LEVELMAX"):
            assert whole[0].read_header().get(card) == banded[0].read_header().get(card)
    flat = fitsio.read_header(str(made[1][("flat", "20261129", "1", "r")]))
    # the flats hold LFLAT ADU times a flat field of median 1 over the trimmed frame
    assert abs(flat["LEVELMIN"] / LFLAT - 1) < 0.01 and abs(flat["LEVELMAX"] / LFLAT - 1) < 0.01


@pytest.mark.parametrize("ranks", [1, 2])
def test_frame_broken_after_the_scan_is_excluded_from_its_master(tmp_path, ranks):
    """The last rows of a bias frame cut off after the inventory: the master is made
    without it and the frame is marked bad.  In two bands of rows, the band that meets
    it has rank 0 stack the master whole without it."""
    make_night(tmp_path, Camera(), "20261129", seed=7, bias=5, dark=0, flat=0, objects=0)
    project, db = open_project(tmp_path)
    run_stages(project, [], db.url)  # the inventory only
    path = project.raw / "20261129" / "bias-002.fits"
    stat = path.stat()
    path.write_bytes(path.read_bytes()[: stat.st_size - 2880 * 20])
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    if ranks == 1:
        run_stages(project, ["calibrate"], db.url)
        masters = recorded_masters(project, Ledger(db, Config()).read.masters())
    else:
        masters = build_masters_in_bands(project, db, ranks, kinds=("bias",))
    assert db.query("SELECT isok FROM frameinfo WHERE rawpath LIKE '%bias-002.fits'") == [(0,)]
    assert read_image(masters[("bias", "20261129", "1", "")])[1]["NINPUTS"] == 4


def test_fz_frames_and_a_saturated_frame(tmp_path, db_url):
    cam = Camera()
    night = make_night(tmp_path, cam, "20261129", seed=8, bias=3, dark=3, flat=3, objects=1)
    folder = tmp_path / "RAW" / "20261129"
    cam.write(folder / "copy.fits.fz", "object", TOBJ, None, data=night["objects"][0][1],
              compress=True, index=50)
    burnt = np.full((NY, NX), 65000, np.uint16)
    burnt[:, :20] = 1000  # a strip below saturation: the frame fails by its masked fraction
    cam.write(folder / "burnt.fits", "object", TOBJ, None, data=burnt, index=51)
    project, db = open_project(tmp_path, db_url)
    counts = calibrate_project(project, Config(), db)
    assert counts == {"scanned": 12, "calibrated": 2, "failed": 1}
    red = project.root / "RED" / "P1"
    assert np.array_equal(read_image(red / "20261129_copy.fits")[0],
                          read_image(red / "20261129_obj-000.fits")[0])
    status = db.query("SELECT s.status, s.reason FROM framestatus s JOIN frameinfo f "
                      "USING (framekey) WHERE f.rawpath LIKE '%burnt.fits'")
    assert status[0][0] == "failed" and "masked" in status[0][1]
    context = Context(project, Config(), recorded_masters(project, Ledger(db, Config()).read.masters()))
    assert Ledger(db, Config()).pending(per_frame(("calibrate",)), context) == []
    assert calibrate_project(project, Config(), db) == {"scanned": 0, "calibrated": 0, "failed": 0}


def test_stacking_reads_row_blocks_only(tmp_path, monkeypatch):
    cam = Camera()
    make_night(tmp_path, cam, "20261129", seed=9, bias=6, dark=0, flat=0, objects=0)
    paths = sorted((tmp_path / "RAW" / "20261129").glob("bias-*.fits"))
    inputs = [(p, parse_header(read_image(p)[1], Config(), p)) for p in paths]
    stacks, reads = [], []
    real_combine, real_read = masters_module.clipped_combine, masters_module.RawReader._read
    monkeypatch.setattr(masters_module, "clipped_combine",
                        lambda s, *a: (stacks.append(s.shape), real_combine(s, *a))[1])
    monkeypatch.setattr(masters_module.RawReader, "_read",
                        lambda self, y0, y1, x=slice(None), step=1: (
                            reads.append(y1 - y0), real_read(self, y0, y1, x, step))[1])
    cal = Config().replace("calibrate", block_rows=40).calibrate
    master = build_master("bias", inputs, cal)
    assert max(s[1] for s in stacks) == 40 and sum(s[1] for s in stacks) == 254
    assert all(s[0] == 6 and s[2] == 254 for s in stacks)
    assert max(reads) <= 40
    full = build_master("bias", inputs, Config().calibrate)
    assert np.array_equal(master.image, full.image)
    assert block_rows(100, 4096, Config().calibrate) == 256        # 512 MB allow 327 rows
    assert block_rows(100, 4096, Config().replace("calibrate", stack_mb=16.0).calibrate) == 10


def test_calibrate_pixels_kernel_matches_numpy():
    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 100, (30, 40)).astype(np.float32)
    ovs = rng.uniform(0, 5, 20).astype(np.float32)
    bias, dark = (rng.normal(0, 1, (20, 30)).astype(np.float32) for _ in range(2))
    flat = rng.uniform(0.5, 1.5, (20, 30)).astype(np.float32)
    flat[0, 0], flat[1, 1] = 0.01, np.nan
    bpm = np.zeros((20, 30), np.uint8)
    bpm[2, 2] = 1
    out, mask = np.empty((20, 30), np.float32), np.empty((20, 30), np.uint8)
    view = raw[5:25, 3:33]
    nbad = calibrate_pixels(view, ovs, bias, dark, 2.5, flat, bpm, 95.0, 0.05, KERNEL_BITS,
                            out, mask)
    want = (view.astype(np.float64) - ovs[:, None] - bias - dark * 2.5)
    ok = np.isfinite(flat) & (flat >= 0.05)
    want[ok] /= flat[ok]
    assert np.allclose(out, want, rtol=1e-6, atol=1e-4)
    noflat, saturated = MASK["NOFLAT"].bit, MASK["SATURATED"].bit
    assert mask[0, 0] == noflat and mask[1, 1] == noflat and mask[2, 2] == 1
    assert np.array_equal(mask & saturated > 0, view >= 95.0)
    assert nbad == np.count_nonzero(mask)
    # the kernel sets the bits it is given, none of its own
    other = np.empty_like(mask)
    calibrate_pixels(view, ovs, bias, dark, 2.5, flat, bpm, 95.0, 0.05,
                     np.array([16, 32, 64], np.uint8), out, other)
    np.testing.assert_array_equal(other == 32, mask == noflat)
    np.testing.assert_array_equal(other & 16 > 0, mask & saturated > 0)


def test_nearest_master_prefers_the_closest_then_earlier_night():
    masters = {("bias", n, "1", ""): Path(n) for n in ("20261101", "20261110", "20261112")}
    assert nearest_master(masters, "bias", "20261111", "1")[1] == Path("20261110")
    assert nearest_master(masters, "bias", "20261130", "1")[1] == Path("20261112")
    assert nearest_master(masters, "bias", "20261110", "1")[1] == Path("20261110")
    assert nearest_master(masters, "bias", "20261110", "2") is None
    assert nearest_master(masters, "dark", "20261110", "1") is None


def test_inventory_records_each_file_once_and_lists_pending(tmp_path):
    cam = Camera()
    make_night(tmp_path, cam, "20261129", seed=10, bias=2, dark=1, flat=0, objects=2)
    project, db = open_project(tmp_path)
    assert run_stages(project, [], db.url)["inventory"] == (5, 0)
    assert "inventory" not in run_stages(project, [], db.url)  # nothing new
    rows = db.query("SELECT rawpath, night, imagetyp, exptime, naxis1, naxis2, gain, isok "
                    "FROM frameinfo ORDER BY rawpath")
    assert len(rows) == 5
    assert rows[0] == ("RAW/20261129/bias-000.fits", "20261129", "bias", 0.0, NX, NY, GAIN, 1)
    assert [r[2] for r in rows] == ["bias", "bias", "dark", "object", "object"]
    pending = Ledger(db, Config()).pending(per_frame(("calibrate",)), Context(project, Config()))
    assert [Path(p.rawpath).name for p in pending] == ["obj-000.fits", "obj-001.fits"]
    assert pending[0].meta.biassec == (slice(0, 256), slice(256, 280))


def test_median_overscan_mode_removes_the_level(tmp_path):
    cam = Camera()
    make_night(tmp_path, cam, "20261129", seed=12, bias=4, dark=3, flat=3, objects=1)
    project, db = open_project(tmp_path)
    config = Config().replace("calibrate", overscan="median")
    assert calibrate_project(project, config, db)["calibrated"] == 1
    image, header = read_image(project.root / "RED" / "P1" / "20261129_obj-000.fits")
    assert header["OVSCMODE"] == "median" and 900 < header["OVERSCAN"] < 1100
    assert abs(np.median(image) - SKY) < 3.0
