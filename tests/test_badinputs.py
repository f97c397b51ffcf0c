"""Bad raw inputs, kind by kind, at the layer that catches each (corpus: tests/badinputs.py),
and the rules behind them: header bytes, header values, names, duplicates, pixels."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.io import fits as afits
from astropy.time import Time, TimeDelta
from badinputs import FIRST_PASS, corpus_kinds, recorded_outcome, write_corpus
from conftest import run_stages

from trex import astrometry, calibrate, catalog, extract, photometry
from trex.calibrate import pixel_problem
from trex.cli import main
from trex.config import Config
from trex.db import connect
from trex.duplicates import Exposures, duplicate_of, exposure
from trex.errors import FrameError, one_line
from trex.fits import read_header, write_image
from trex.fitscards import CardError, parse_cards, replaced_keywords
from trex.flags import PHOT
from trex.frame import Context, Frame
from trex.header import parse_header
from trex.inventory import name_problem, read_raw_header
from trex.project import Project, init_project
from trex.simulate import simulate_project

STAGES = (("calibrate", calibrate.run), ("extract", extract.run),
          ("astrometry", astrometry.run), ("photometry", photometry.run))
KINDS = corpus_kinds()


def _ids(kind) -> str:
    return kind.name


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """One simulated frame, the corpus made from it in the same night, scanned once."""
    root = tmp_path_factory.mktemp("corpus") / "p"
    project = init_project(root)
    simulate_project(root, frames=1, size=384, stars=800, seed=7, ncal=0)
    night = next(project.raw.iterdir())
    good = sorted(night.glob("*.fits"))[0]
    write_corpus(night, good, project.cat)
    config = project.load_config()
    url = project.database_url(config)
    with connect(url) as db:
        db.create_schema()
        run_stages(project, [], url, config)  # the inventory
        fields = [r[0] for r in db.query("SELECT DISTINCT field FROM frameinfo WHERE isok")]
    catalogs = {}
    for field in fields:
        try:
            catalogs[field] = catalog.read_catalog(catalog.find_catalog(project, field))
        except FileNotFoundError:
            continue
    return SimpleNamespace(project=project, config=config, night=night, good=good, url=url,
                           context=Context(project, config, catalogs=catalogs))


def _rawpath(corpus, kind) -> str:
    return str((corpus.night / kind.filename).relative_to(corpus.project.root))


def _frame(corpus, path: Path) -> Frame:
    meta = parse_header(read_header(path), corpus.config, path)
    return Frame(framekey=1, rawpath=path, night=corpus.night.name, meta=meta)


def _first_pass(frame: Frame, context: Context) -> tuple[Frame, tuple[str, str] | None]:
    """The first-pass stages on one frame; (frame, (stage, reason) of the failure or None)."""
    for name, run in STAGES:
        try:
            frame = run(frame, context)
        except FrameError as err:
            return frame, (name, err.reason)
    return frame, None


# -- every kind, at its layer ---------------------------------------------------------------------

def test_the_corpus_has_the_kinds_asked_for():
    names = {k.name for k in KINDS}
    assert len(names) == len(KINDS) >= 25
    assert {"empty", "truncated", "not-fits", "garbage-header", "nonascii-comment", "no-image",
            "cube", "tiny", "all-nan", "all-zero", "constant", "saturated", "nan-stripes",
            "no-dateobs", "bad-dateobs", "future-dateobs", "no-exptime", "zero-exptime",
            "negative-exptime", "text-exptime", "unknown-imagetyp", "object-quotes",
            "object-path", "object-sql", "no-catalog", "pointing-off", "wrong-pixscale",
            "corrupt-fz", "duplicate"} <= names


@pytest.mark.parametrize("kind", [k for k in KINDS if k.expected == "bad"], ids=_ids)
def test_bad_kind_is_recorded_bad_at_inventory(corpus, kind):
    with connect(corpus.url) as db:
        outcome, reason = recorded_outcome(db, _rawpath(corpus, kind))
    assert outcome == "bad"
    assert re.search(kind.reason, reason), reason
    assert reason == one_line(reason)


@pytest.mark.parametrize("kind", [k for k in KINDS if k.expected != "bad"], ids=_ids)
def test_other_kinds_pass_the_inventory_and_meet_their_stage(corpus, kind):
    with connect(corpus.url) as db:
        isok = db.query("SELECT isok FROM frameinfo WHERE rawpath = ?", (_rawpath(corpus, kind),))
    assert isok and isok[0][0]
    frame, failure = _first_pass(_frame(corpus, corpus.night / kind.filename), corpus.context)
    if kind.expected == "processed":
        assert failure is None
        assert len(frame.products["aphot"]) > 100
    else:
        assert failure is not None and failure[0] == kind.stage, failure
        assert re.search(kind.reason, failure[1]), failure[1]
        assert failure[1] == one_line(failure[1])


def test_nan_stripes_are_measured_on_the_good_part(corpus):
    frame, failure = _first_pass(_frame(corpus, corpus.night / "bad-nan-stripes.fits"),
                                 corpus.context)
    assert failure is None
    table = frame.products["aphot"]
    radius = 7.0 + 6.0  # outer sky radius, px
    near = ((table["xcc"] > 100 - radius) & (table["xcc"] < 116 + radius)) | (
        (table["ycc"] > 300 - radius) & (table["ycc"] < 306 + radius))
    inside = ((table["xcc"] > 100 + 3) & (table["xcc"] < 116 - 4))
    assert inside.any() and (~near).sum() > 100
    assert np.all(table["aiq_001"][inside] & PHOT["MASKED"].bit)
    far = ~near
    assert np.mean(np.isfinite(table["aim_001"][far])) > 0.9


def test_a_non_ascii_comment_is_kept_with_a_note(corpus):
    header = read_header(corpus.night / "bad-nonascii-comment.fits")
    assert "observer: Jos? Garcia" in [str(c) for c in header["COMMENT"]]
    assert replaced_keywords(header) == {"COMMENT": "non-ASCII byte 0xe9"}
    assert parse_header(header, Config()).field == read_header(corpus.good)["OBJECT"]


def test_first_pass_on_postgresql_records_every_kind(corpus, pg_url):
    """The same corpus through ``trex run`` (first pass) on PostgreSQL: the inventory
    records what it records on SQLite, and the driver records every stage failure."""
    stages = ",".join(FIRST_PASS)
    assert main(["run", str(corpus.project.root), "--db", pg_url, "--stages", stages]) == 0
    wrong = []
    with connect(pg_url) as db:
        for kind in KINDS:
            outcome, reason = recorded_outcome(db, _rawpath(corpus, kind))
            if outcome != kind.expected or (reason or "") and not re.search(kind.reason, reason):
                wrong.append((kind.name, kind.expected, outcome, reason))
        on_pg = {r[0]: (bool(r[1]), r[2]) for r in db.query(
            "SELECT rawpath, isok, reason FROM frameinfo")}
    assert wrong == []
    with connect(corpus.url) as db:
        on_sqlite = {r[0]: (bool(r[1]), r[2]) for r in db.query(
            "SELECT rawpath, isok, reason FROM frameinfo")}
    assert on_pg == on_sqlite


# -- header bytes ---------------------------------------------------------------------------------

def _cards(*texts: str) -> bytes:
    raw = b"".join(t.encode("latin-1").ljust(80) for t in (*texts, "END"))
    return raw.ljust(-(-len(raw) // 2880) * 2880)


def test_header_reader_agrees_with_astropy(corpus):
    ours = read_header(corpus.good)
    theirs = afits.getheader(corpus.good)
    keys = [k for k in theirs if k not in ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2",
                                           "EXTEND", "BZERO", "BSCALE", "COMMENT", "")]
    assert len(keys) > 15
    assert {k: ours[k] for k in keys} == {k: theirs[k] for k in keys}
    assert not replaced_keywords(ours)


def test_compressed_frame_has_the_same_header(corpus, tmp_path):
    image = afits.getdata(corpus.good)
    header = read_header(corpus.good)
    write_image(tmp_path / "x.fits.fz", image, header, compress=True)
    assert dict(read_header(tmp_path / "x.fits.fz")) == dict(header)


def test_bytes_outside_ascii_are_replaced_and_noted():
    cards, notes = parse_cards(_cards("OBJECT  = 'F1\xe9'  / field", "COMMENT caf\xe9",
                                      "EXPTIME =  30.0", "OB\x01ECT  = 'x'"))
    assert ("OBJECT", "F1?", "field") in cards and ("COMMENT", "caf?", "") in cards
    assert ("EXPTIME", 30.0, "") in cards
    assert not any(c[0].startswith("OB") and c[0] != "OBJECT" for c in cards)  # name garbled
    assert notes == ["trex replaced non-ASCII byte 0xe9 in OBJECT by '?'",
                     "trex replaced non-ASCII byte 0xe9 in COMMENT by '?'",
                     "trex dropped card 4 'OB?ECT': unprintable byte 0x01 in its keyword"]


def test_unparsable_value_comes_back_as_text():
    cards, _ = parse_cards(_cards("EXPTIME =  3 0. / s", "DATE-OBS= '2026-11-29"))
    assert dict((k, v) for k, v, _ in cards) == {"EXPTIME": "3 0.", "DATE-OBS": "2026-11-29"}


def test_header_without_end_is_refused():
    with pytest.raises(CardError, match="no END card"):
        parse_cards(b"SIMPLE  =                    T".ljust(2880))


def test_random_header_damage_never_escapes_as_another_exception(corpus, tmp_path):
    """Whatever bytes a header holds, reading it gives a header or a FrameError."""
    raw = corpus.good.read_bytes()
    end = raw.index(b"END     ")
    rng = np.random.default_rng(5)
    outcomes = {"read": 0, "refused": 0}
    for trial in range(150):
        damaged = np.frombuffer(raw, np.uint8).copy()
        where = rng.integers(80, end + 80, size=rng.integers(1, 6))
        alphabet = (32, 127) if trial % 2 else (0, 256)  # printable junk, then any byte
        damaged[where] = rng.integers(*alphabet, size=len(where), dtype=np.uint8)
        path = tmp_path / f"d{trial}.fits"
        path.write_bytes(damaged.tobytes())
        try:
            header, _ = read_raw_header(path)
            parse_header(header, Config(), path)
            outcomes["read"] += 1
        except FrameError as err:
            assert err.reason == one_line(err.reason)
            outcomes["refused"] += 1
    assert outcomes["read"] > 10 and outcomes["refused"] > 10


# -- header values --------------------------------------------------------------------------------

def _header(**cards) -> afits.Header:
    base = {"IMAGETYP": "object", "EXPTIME": 30.0, "DATE-OBS": "2026-11-29T03:00:00.000",
            "OBJECT": "G1", "PROJID": "12", "GAIN": 2.7, "SATURATE": 60000.0}
    base.update(cards)
    header = afits.Header()
    for key, value in base.items():
        if value is not None:
            header[key] = value
    return header


NOW = Time("2026-12-01T12:00:00", scale="utc")


@pytest.mark.parametrize("date, ok", [
    ("1979-12-31T23:59:59", False), ("1980-01-01T00:00:01", True),
    ((NOW + TimeDelta(0.9, format="jd")).isot, True), ((NOW + TimeDelta(1.1, format="jd")).isot, False),
    ("2099-01-01T00:00:00", False)])
def test_dateobs_between_1980_and_tomorrow(date, ok):
    header = _header(**{"DATE-OBS": date})
    if ok:
        assert parse_header(header, Config(), now=NOW).dateobs.startswith(date[:16])
    else:
        with pytest.raises(FrameError, match=r"DATE-OBS .* (is before 1980|is in the future)"):
            parse_header(header, Config(), now=NOW)


@pytest.mark.parametrize("imagetyp, ok", [("object", False), ("bias", True), ("dark", True)])
def test_zero_exptime_only_for_calibration_frames(imagetyp, ok):
    header = _header(IMAGETYP=imagetyp, EXPTIME=0.0)
    if ok:
        assert parse_header(header, Config()).exptime == 0.0
    else:
        with pytest.raises(FrameError, match="EXPTIME 0.0 s: an object frame needs a positive"):
            parse_header(header, Config())


@pytest.mark.parametrize("cards, reason", [
    ({"GAIN": 0.0}, "^GAIN 0 must be positive$"),
    ({"SATURATE": -5.0}, "^SATURATE -5 must be positive$"),
    ({"RDNOISE": -1.0}, "^RDNOISE -1 must be >= 0$"),
    ({"PIXSCALE": 0.0}, "^PIXSCALE 0 must be positive$"),
    ({"RA": "nan", "DEC": -30.0}, "bad RA/DEC: right ascension not finite"),
    ({"RA": 10.0, "DEC": "nan"}, "bad RA/DEC: declination out of range"),
    ({"SITELAT": 100.0}, "^SITELAT 100 is not a latitude$"),
    ({"EXPTIME": "inf"}, "EXPTIME is not finite"),
])
def test_impossible_values_name_keyword_and_value(cards, reason):
    with pytest.raises(FrameError) as err:
        parse_header(_header(**cards), Config())
    assert re.search(reason, err.value.reason), err.value.reason


def test_replaced_bytes_matter_only_in_keywords_trex_reads():
    header = _header(OBSERVER="Jos?")
    header.add_history("trex replaced non-ASCII byte 0xe9 in OBSERVER by '?'")
    assert parse_header(header, Config()).field == "G1"
    header.add_history("trex replaced non-ASCII byte 0xe9 in TARGET by '?'")
    target = Config().replace("header", object="TARGET")
    with pytest.raises(FrameError, match="non-ASCII byte 0xe9 in header keyword TARGET"):
        parse_header(header, target)


@pytest.mark.parametrize("cards, reason", [
    ({"CCD": ".."}, "CCD '..' cannot name a file"),
    ({"FILTER": "."}, "FILTER '.' cannot name a file"),
    ({"PROJID": None}, "no PROJID in the header"),
    ({"OBJECT": "..."}, "field name '...' cannot name a catalog file"),
    ({"OBJECT": "../../etc"}, None), ({"OBJECT": "x'; DROP TABLE frameinfo; --"}, None)])
def test_names_that_cannot_name_a_file(cards, reason):
    problem = name_problem(parse_header(_header(**cards), Config()), Config())
    if reason is None:
        assert problem is None
    else:
        assert re.search(reason, problem), problem


def test_a_field_that_cannot_name_a_file_has_no_catalog(tmp_path):
    with pytest.raises(FileNotFoundError, match="no catalog for field '..'"):
        catalog.find_catalog(Project(tmp_path), "..")


# -- duplicates -----------------------------------------------------------------------------------

def _row(rawpath, **values):
    row = {"rawpath": rawpath, "isok": True, "dateobs": "2026-11-29T03:00:00.000", "ccd": "5",
           "imagetyp": "object", "exptime": 30.0}
    row.update(values)
    return row


def test_duplicate_of_is_the_first_recorded_same_exposure():
    recorded = {exposure(_row("a.fits")): "a.fits"}
    assert duplicate_of(_row("b.fits"), recorded) == "a.fits"
    assert duplicate_of(_row("a.fits"), recorded) is None  # a file re-read is not its own copy
    assert duplicate_of(_row("b.fits", exptime=20.0), recorded) is None
    assert duplicate_of(_row("b.fits", ccd="6"), recorded) is None
    assert duplicate_of(_row("b.fits", dateobs="2026-11-29T03:00:01.000"), recorded) is None
    assert duplicate_of(_row("b.fits", isok=False), recorded) is None
    assert exposure(_row("a.fits", isok=False)) is None


def test_a_rewritten_copy_is_a_duplicate_too(tmp_path, corpus):
    (tmp_path / "RAW").mkdir()
    first, second = tmp_path / "RAW" / "a.fits", tmp_path / "RAW" / "b.fits"
    shutil.copyfile(corpus.good, first)
    header = read_header(corpus.good)
    header["COMMENT"] = "re-written by a copy program"
    write_image(second, afits.getdata(corpus.good), header)
    exposures = Exposures()
    rows = [_row("RAW/a.fits"), _row("RAW/b.fits"), _row("RAW/a.fits")]
    for row in rows:
        exposures.check(row, tmp_path)
    assert rows[0]["isok"] and rows[2]["isok"]
    assert rows[1] == {**_row("RAW/b.fits"), "isok": False, "reason":
                       "duplicate of RAW/a.fits (same DATE-OBS, CCD, IMAGETYP and EXPTIME)"}


# -- pixels and stages ----------------------------------------------------------------------------

def test_pixel_problem():
    rng = np.random.default_rng(1)
    image = rng.normal(1000.0, 10.0, (64, 64)).astype(np.float32)
    assert pixel_problem(image, 65535.0) is None
    image[:, 10:20] = np.nan
    assert pixel_problem(image, 65535.0) is None
    assert pixel_problem(np.full((64, 64), np.inf, np.float32), 65535.0).startswith(
        "no finite pixel: all 4096 pixels")
    assert pixel_problem(np.full((64, 64), 7.0), 65535.0) == "every pixel is 7 ADU: no image was read out"
    assert pixel_problem(np.full((64, 64), 7.0), 5.0) == "every pixel is at or above SATURATE (5 ADU)"
    assert pixel_problem(np.r_[np.full(100, np.nan), 3.0, 3.0], 9.0).startswith("every pixel is 3")


def test_photometry_without_enough_sources_for_the_psf_map(corpus):
    """Too few well-measured sources for the PSF shape fit: shapes NaN, photometry kept."""
    frame = _frame(corpus, corpus.good)
    for _, run in STAGES[:3]:
        frame = run(frame, corpus.context)
    frame.sources = frame.sources[np.argsort(frame.sources["snr"])[:12]]  # the faintest
    with pytest.raises(extract.ShapeMapError):
        extract.shape_map(frame.sources)
    table = photometry.run(frame, corpus.context).products["aphot"]
    assert np.all(np.isnan(table["fsv"])) and np.mean(np.isfinite(table["aim_001"])) > 0.9


def test_reasons_are_one_printable_line():
    err = FrameError("x.fits", "FITSIO status = 107\ncould not\tread \xe9\x00 " + "z" * 400)
    assert err.reason.startswith("FITSIO status = 107 could not read ?? z")
    assert len(err.reason) == 300 and err.reason.endswith("...")


def _wcs_header(**cards) -> afits.Header:
    base = {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 10.0, "CRVAL2": -20.0,
            "CRPIX1": 200.0, "CRPIX2": 200.0, "CD1_1": -0.0055, "CD1_2": 0.0, "CD2_1": 0.0,
            "CD2_2": 0.0055}
    base.update(cards)
    return afits.Header(base)


@pytest.mark.parametrize("cards", [
    {"CD1_1": 0.0, "CD2_2": 0.0},                                        # reads as 1 deg/px
    {"CD1_1": 1e-3, "CD1_2": 1e-3, "CD2_1": 1e-3, "CD2_2": 1e-3},        # singular
    {"CTYPE1": "RA---XYZ", "CTYPE2": "DEC--XYZ"},                        # unknown projection
    {"CTYPE1": "RA---TAN-SIP", "CTYPE2": "DEC--TAN-SIP", "A_ORDER": 2},  # SIP without B
])
def test_a_broken_header_wcs_gives_way_to_ra_dec_pixscale(cards):
    meta = parse_header(_header(RA=60.0, DEC=-30.0, PIXSCALE=20.0), Config())
    wcs = astrometry.initial_wcs(meta, (400, 400), _wcs_header(**cards))
    assert list(wcs.wcs.crval) == [60.0, -30.0]
    assert np.allclose(wcs.pixel_scale_matrix, [[-20 / 3600, 0], [0, 20 / 3600]])


def test_a_sound_header_wcs_is_the_first_guess():
    meta = parse_header(_header(RA=60.0, DEC=-30.0, PIXSCALE=20.0), Config())
    wcs = astrometry.initial_wcs(meta, (400, 400), _wcs_header())
    assert list(wcs.wcs.crval) == [10.0, -20.0]


def test_pairs_skip_sources_projected_nowhere():
    from scipy.spatial import cKDTree

    tree = cKDTree(np.array([[0.0, 0.0], [10.0, 0.0]]))
    si, ci = astrometry._nearest_pairs(np.array([[np.nan, 1.0], [9.5, 0.2], [np.inf, 0.0]]),
                                       tree, 2.0)
    assert si.tolist() == [1] and ci.tolist() == [1]
