"""Field catalog reader, proper motion and objectinfo rows."""

from __future__ import annotations

import csv
import logging
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table

from trex.catalog import find_catalog, objectinfo_columns, propagate, read_catalog
from trex.cli import main
from trex.db import connect
from trex.db.queries import Queries
from trex.lccards import header_cards, id_from_text, id_text
from trex.lcformat import empty_rows, read_lightcurve, read_rows, write_lightcurve
from trex.lcstats import lcstats_rows
from trex.project import RESERVED, init_project, lc_filename
from trex.simulate import load_truth, simulate_project


def test_csv_with_optional_columns(tmp_path):
    path = tmp_path / "F.csv"
    path.write_text("objectid,ra,dec,mag,color,pmra,pmdec,epoch\n"
                    "0012,10.5,-3.25,12.1,0.8,5.0,-7.5,2016.0\n"
                    "HAT-1,359.5,45,9.75,,,,\n")
    cat = read_catalog(path)
    assert list(cat["objectid"]) == ["0012", "HAT-1"]          # leading zeros kept
    np.testing.assert_array_equal(cat["ra"], [10.5, 359.5])
    np.testing.assert_array_equal(cat["dec"], [-3.25, 45.0])
    np.testing.assert_array_equal(cat["mag"], [12.1, 9.75])
    assert cat["color"][0] == 0.8 and np.isnan(cat["color"][1])
    np.testing.assert_array_equal(cat["pmra"], [5.0, 0.0])      # missing motion: none
    np.testing.assert_array_equal(cat["pmdec"], [-7.5, 0.0])
    assert cat["epoch"][0] == 2016.0 and np.isnan(cat["epoch"][1])


def test_minimal_csv_and_upper_case_names(tmp_path):
    path = tmp_path / "F.csv"
    path.write_text("OBJECTID,RA,DEC,MAG\na,1,2,3\n")
    cat = read_catalog(path)
    assert cat["objectid"][0] == "a" and cat["ra"][0] == 1.0 and cat["pmra"][0] == 0.0
    assert np.isnan(cat["color"][0]) and np.isnan(cat["epoch"][0])


def test_fits_with_gaia_names(tmp_path):
    path = tmp_path / "F.fits"
    table = Table({"source_id": np.array([4295806720, 38655544960], dtype=np.int64),
                   "ra": [45.0, 46.0], "dec": [0.5, -0.5], "phot_g_mean_mag": [11.0, 12.5],
                   "bp_rp": [0.7, 1.1], "pmra": [1.0, 2.0], "pmdec": [3.0, 4.0],
                   "ref_epoch": [2016.0, 2016.0]})
    table.write(path)
    cat = read_catalog(path)
    assert list(cat["objectid"]) == ["4295806720", "38655544960"]
    np.testing.assert_array_equal(cat["mag"], [11.0, 12.5])
    np.testing.assert_array_equal(cat["color"], [0.7, 1.1])
    np.testing.assert_array_equal(cat["epoch"], [2016.0, 2016.0])
    np.testing.assert_array_equal(cat["pmdec"], [3.0, 4.0])


def test_bad_rows_skipped_and_repeats_kept_with_warnings(tmp_path, caplog):
    path = tmp_path / "F.csv"
    path.write_text("objectid,ra,dec,mag\n"
                    "dup,,20,11\n"
                    "good1,10,20,11\n"
                    "noRA,,20,11\n"
                    "nanDec,10,nan,11\n"
                    "badDec,10,95,11\n"
                    "badRA,-5,20,11\n"
                    ",10,20,11\n"
                    "good1,11,21,12\n"
                    "good2,360,-90,13\n"
                    "dup,12,22,14\n"
                    "textRA,ten,20,11\n")
    with caplog.at_level(logging.WARNING, logger="trex.catalog"):
        cat = read_catalog(path)
    # the first usable row keeps a repeated id, the next is kept as <id>#2
    assert list(cat["objectid"]) == ["good1", "good1#2", "good2", "dup"]
    assert list(cat["catid"]) == ["good1", "good1", "good2", "dup"]
    np.testing.assert_array_equal(cat["ra"], [10.0, 11.0, 0.0, 12.0])  # 360 wraps to 0
    text = caplog.text
    assert "4 rows skipped (ra/dec missing, not a number or not finite): " \
           "line 2, line 4, line 5, line 12" in text
    assert "2 rows skipped (ra/dec out of range): line 6, line 7" in text
    assert "1 rows skipped (no objectid): line 8" in text
    assert "line 9 'good1' (first on line 3) -> 'good1#2'" in text


def test_missing_required_column(tmp_path):
    path = tmp_path / "F.csv"
    path.write_text("objectid,ra,mag\na,1,3\n")
    with pytest.raises(ValueError, match="lacks column"):
        read_catalog(path)


def _catalog(ra, dec, pmra, pmdec, epoch):
    n = len(ra)
    cat = np.zeros(n, dtype=[("objectid", "U8"), ("ra", "f8"), ("dec", "f8"), ("mag", "f8"),
                             ("color", "f8"), ("pmra", "f8"), ("pmdec", "f8"), ("epoch", "f8")])
    cat["ra"], cat["dec"], cat["pmra"], cat["pmdec"], cat["epoch"] = ra, dec, pmra, pmdec, epoch
    return cat


def test_proper_motion_direction_and_size():
    # 100 mas/yr over 10 years is 1 arcsec: north for pmdec, east for pmra (cos dec included)
    cat = _catalog([10.0, 10.0, 359.99999, 200.0, 33.0], [20.0, 20.0, -60.0, 89.9999, 5.0],
                   [0.0, 100.0, 100.0, 100.0, 100.0], [100.0, 0.0, 0.0, 0.0, 0.0],
                   [2000.0, 2000.0, 2000.0, 2000.0, np.nan])
    ra, dec = propagate(cat, 2010.0)
    before = SkyCoord(cat["ra"] * u.deg, cat["dec"] * u.deg)
    after = SkyCoord(ra * u.deg, dec * u.deg)
    sep = before.separation(after).to_value(u.arcsec)
    np.testing.assert_allclose(sep[:4], 1.0, rtol=1e-6)
    assert sep[4] == 0.0                                        # no epoch: no motion
    pa = before[:4].position_angle(after[:4]).to_value(u.deg)
    np.testing.assert_allclose(pa, [0.0, 90.0, 90.0, 90.0], atol=1e-3)
    assert 0.0 <= ra[2] < 0.001                                 # crossed RA 0 going east
    assert np.all((ra >= 0) & (ra < 360))


def test_proper_motion_backwards_in_time():
    cat = _catalog([10.0], [20.0], [0.0], [100.0], [2016.0])
    _, dec = propagate(cat, 2006.0)
    assert dec[0] == pytest.approx(20.0 - 1.0 / 3600.0, abs=1e-9)


def test_find_catalog(tmp_path):
    project = init_project(tmp_path / "root")
    with pytest.raises(FileNotFoundError, match="no catalog for field 'F 1'"):
        find_catalog(project, "F 1")
    fits = project.cat / "F_1.fits"
    fits.write_text("x")
    assert find_catalog(project, "F 1") == fits
    csv = project.cat / "F_1.csv"
    csv.write_text("x")
    assert find_catalog(project, "F 1") == csv                  # CSV preferred


def test_objectinfo_columns_fit_the_table(tmp_path):
    path = tmp_path / "F.csv"
    path.write_text("objectid,ra,dec,mag,pmra,pmdec,epoch\nA,1,2,10,5,6,2016\nB,3,4,11,,,\n")
    columns = objectinfo_columns(read_catalog(path), "F")
    conn = sqlite3.connect(":memory:")
    conn.executescript((Path(__file__).parents[1] / "sql" / "sqlite.sql").read_text())
    names = list(columns)
    rows = [[None if isinstance(v, float) and np.isnan(v) else v for v in row]
            for row in zip(*(columns[n].tolist() for n in names), strict=True)]
    marks = ", ".join("?" * len(names))
    conn.executemany(f"INSERT INTO objectinfo ({', '.join(names)}) VALUES ({marks})", rows)
    got = conn.execute("SELECT objectid, field, ra, decl, mag, color, pmra, pmdec, epoch "
                       "FROM objectinfo ORDER BY objectid").fetchall()
    assert got == [("A", "F", 1.0, 2.0, 10.0, None, 5.0, 6.0, 2016.0),
                   ("B", "F", 3.0, 4.0, 11.0, None, 0.0, 0.0, None)]


# --- awkward object ids --------------------------------------------------------------------

#: ids that are fine for a catalog but not as file names as they are
HOSTILE = ["x" * 300, "with space", 'quo"te', "it's", "tab\there", "new\nline",
           "cr\r\nlf", "../../escape", "/abs/path", "a\\b", ".hidden", "..", ".", "-dash",
           "ünïcode", "日本", "CON", "nul.txt", "lcstats", "50%", "a:b", "a*b?", "~tilde",
           "x" * 200 + "y", "\x01ctl", "end."]


def write_csv(path: Path, rows: list[list]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)


def test_hostile_catalog_keeps_every_good_star_exactly(tmp_path, caplog):
    rows = [["objectid", "ra", "dec", "mag"]]
    good = HOSTILE + ["000123", "4295806720123456789", "HAT-199-0012345"]
    rows += [[oid, 10 + 0.01 * i, -30 + 0.01 * i, 11.0] for i, oid in enumerate(good)]
    rows += [["dup", 11.0, -29.0, 12.0], ["badpos", "nan", -29.0, 12.0],
             ["dup", 11.1, -29.1, 12.5], ["far", 10.0, 91.0, 12.0], ["", 10.0, -30.0, 12.0],
             ["dup", 11.2, -29.2, 13.0]]
    path = tmp_path / "F.csv"
    write_csv(path, rows)
    with caplog.at_level(logging.WARNING, logger="trex.catalog"):
        cat = read_catalog(path)
    ids = list(cat["objectid"])
    assert ids == good + ["dup", "dup#2", "dup#3"]                # exact, in file order
    assert list(cat["catid"]) == good + ["dup"] * 3
    np.testing.assert_array_equal(cat["ra"][-3:], [11.0, 11.1, 11.2])
    # the CSV's line numbers count the newlines inside quoted ids
    lines = {oid: 2 + i + sum(o.count("\n") for o in good[:i]) for i, oid in enumerate(good)}
    first_dup = lines[good[-1]] + 1
    assert f"line {first_dup + 2} 'dup' (first on line {first_dup}) -> 'dup#2'" in caplog.text
    assert f"line {first_dup + 5} 'dup' (first on line {first_dup}) -> 'dup#3'" in caplog.text
    assert f"(ra/dec missing, not a number or not finite): line {first_dup + 1}" in caplog.text
    assert f"(ra/dec out of range): line {first_dup + 3}" in caplog.text
    assert f"(no objectid): line {first_dup + 4}" in caplog.text


def test_ids_stay_text_in_csv_and_fits(tmp_path):
    gaia = [4295806720123456789, 6917528997577384320, 12]
    path = tmp_path / "G.csv"
    path.write_text("source_id,ra,dec,phot_g_mean_mag\n" +
                    "".join(f"{g},1,2,3\n" for g in gaia) + "000123,1,2,3\n1e5,1,2,3\n")
    assert list(read_catalog(path)["objectid"]) == [str(g) for g in gaia] + ["000123", "1e5"]
    fits_path = tmp_path / "G.fits"
    Table({"source_id": np.array(gaia, dtype=np.int64), "ra": [1.0] * 3, "dec": [2.0] * 3,
           "phot_g_mean_mag": [3.0] * 3}).write(fits_path)
    assert list(read_catalog(fits_path)["objectid"]) == [str(g) for g in gaia]
    text_path = tmp_path / "T.fits"
    Table({"objectid": np.array([b"007", "ünï".encode()]), "ra": [1.0, 1.0], "dec": [2.0, 2.0],
           "mag": [3.0, 3.0]}).write(text_path)
    assert list(read_catalog(text_path)["objectid"]) == ["007", "ünï"]


def test_a_disambiguated_id_never_takes_an_existing_one(tmp_path):
    path = tmp_path / "F.csv"
    path.write_text("objectid,ra,dec,mag\na,1,2,3\na,1,2,3\na#2,1,2,3\na,1,2,3\n")
    assert list(read_catalog(path)["objectid"]) == ["a", "a#3", "a#2", "a#4"]


def test_unreadable_rows_and_values_reported(tmp_path, caplog):
    path = tmp_path / "F.csv"
    path.write_bytes(b"objectid,ra,dec,mag,pmra\n"
                     b"ok,1,2,3,4\n"
                     b"short,1,2\n"
                     b"long,1,2,3,4,5\n"
                     b"\n"
                     b"nul\x00id,1,2,3,4\n"
                     b"latin\xe9,1,2,3,4\n"
                     b"badmag,1,2,bright,x\n")
    with caplog.at_level(logging.WARNING, logger="trex.catalog"):
        cat = read_catalog(path)
    assert list(cat["objectid"]) == ["ok", "badmag"]
    assert np.isnan(cat["mag"][1]) and cat["pmra"][1] == 0.0
    assert "2 lines skipped (not as many fields as the header): line 3, line 4" in caplog.text
    assert "2 rows skipped (objectid is not UTF-8 text or holds a NUL): line 6, line 7" \
        in caplog.text
    assert "1 values of mag are not numbers, taken as missing: line 8" in caplog.text
    assert "1 values of pmra are not numbers, taken as missing: line 8" in caplog.text


def test_ids_differing_in_letter_case_reported(tmp_path, caplog):
    path = tmp_path / "F.csv"
    path.write_text("objectid,ra,dec,mag\nStar-1,1,2,3\nSTAR-1,1,2,3\nother,1,2,3\n")
    with caplog.at_level(logging.WARNING, logger="trex.catalog"):
        assert len(read_catalog(path)) == 3
    assert "differ only in letter case" in caplog.text and "'Star-1' and 'STAR-1'" in caplog.text


def test_file_names_are_safe_and_collision_free(tmp_path):
    ids = HOSTILE + ["a b", "a\tb", "a/b", "a_b", "a\nb", "a b ", "ä b", "a_b~x",
                     "A_B", "x" * 300 + "1", "x" * 300 + "2", "x" * 200, "Con", "con.1",
                     "plain", "plain.v2", "lcstats.fits", "LCSTATS", "dup#2", "dup_2", "+1"]
    assert len(set(ids)) == len(ids)
    names = [lc_filename(oid) for oid in ids]
    assert len(set(names)) == len(ids)                            # no two ids share a name
    assert lc_filename("plain") == "plain.fits" and lc_filename("x" * 200) == "x" * 200 + ".fits"
    assert lc_filename("HAT-199-0012345") == "HAT-199-0012345.fits"
    folder = tmp_path / "LC" / "7"
    folder.mkdir(parents=True)
    for oid, name in zip(ids, names):
        assert not name.startswith(".") and name.endswith(".fits"), name
        assert name.isascii() and name.isprintable() and len(name.encode()) <= 205, name
        assert "/" not in name and "\\" not in name
        assert (folder / name).resolve().parent == folder.resolve()
        assert name.split(".")[0].lower() not in RESERVED
        if oid in ("with space", "../../escape", "ünïcode"):
            assert name.startswith(("with_space~", "escape~", "unicode~")), name
        (folder / name).write_text(oid)
    assert sorted(os.listdir(folder)) == sorted(names)            # one file each, all here
    assert lc_filename("dup#2") != lc_filename("dup_2") != lc_filename("dup#3")


def test_light_curve_header_keeps_hostile_ids(tmp_path):
    rows = empty_rows(2, 1)
    rows["rjd"] = [1.0, 2.0]
    for i, oid in enumerate(HOSTILE + ["50%", "plain"]):
        path = tmp_path / f"{i}.fits"
        write_lightcurve(path, rows, [{"name": "OBJECTID", "value": oid},
                                      {"name": "CATID", "value": oid.upper()},
                                      {"name": "RA", "value": 1.0}])
        table = read_lightcurve(path)
        assert table.meta["OBJECTID"] == oid and table.meta["CATID"] == oid.upper()
        with fits.open(path) as hdul:                             # standard FITS
            hdul.verify("exception")
            raw = hdul["LIGHTCURVE"].header
            assert ("IDENC" in raw) == (id_text(oid) != oid)
            assert id_from_text(raw["OBJECTID"]) == oid
        again, header = read_rows(path)
        write_lightcurve(path, again, header_cards(header))       # as detrend rewrites it
        assert read_lightcurve(path).meta["OBJECTID"] == oid
    with connect(f"sqlite:///{tmp_path / 'stats.sqlite'}") as db:  # the statistics keep them too
        db.create_schema()
        for oid in HOSTILE:
            db.write_columns("lcstats", lcstats_rows([(rows, {"projid": "7", "objectid": oid,
                                                              "mag": 1.0, "x": 0.0, "y": 0.0})],
                                                     1, 0.25))
        back = Queries(db).lcstats("7")["objectid"]
    assert sorted(back) == sorted(HOSTILE)


# --- a whole run with awkward ids ----------------------------------------------------------

#: ids given to measurable stars of a simulated field (and "dup" to two of them)
RUN_IDS = ["x" * 300, "with space", 'quo"te', "tab\there", "new\nline", "../../escape",
           ".hidden", "ünïcode", "000123", "CON", "a/b", "lcstats", "50%", "dup", "dup"]


def test_run_with_hostile_ids_gives_every_star_its_light_curve(tmp_path, capfd):
    root = tmp_path / "p"
    assert main(["init", str(root)]) == 0
    simulate_project(root, frames=4, size=512, stars=400, seed=5)
    truth = load_truth(root)
    path = next((root / "BASE" / "CAT").glob("*.csv"))
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert [r[0] for r in rows[1:]] == list(truth["objectid"])
    inside = np.all((truth["x"] > 40) & (truth["x"] < 470) & (truth["y"] > 40)
                    & (truth["y"] < 470), axis=0)
    chosen = np.flatnonzero(inside & (truth["mag"] > 9.5) & (truth["mag"] < 13))[:len(RUN_IDS)]
    assert len(chosen) == len(RUN_IDS)
    for star, oid in zip(chosen, RUN_IDS):
        rows[1 + star][0] = oid
    rows.insert(5, ["nanstar", "nan", rows[5][2]] + rows[5][3:])  # a bad row among good ones
    rows.insert(9, [""] + rows[9][1:])                            # a copy without an id
    write_csv(path, rows)
    assert main(["run", str(root)]) == 0
    log = capfd.readouterr().err
    assert "1 rows repeat an objectid, kept under new ids" in log and "-> 'dup#2'" in log
    assert "(ra/dec missing, not a number or not finite): line 6" in log
    assert "(no objectid): line 10" in log

    expected = [oid for oid in RUN_IDS[:-1]] + ["dup#2"]
    with connect(f"sqlite:///{root / 'trex.sqlite'}") as db:
        measured = {r[0] for r in db.query("SELECT DISTINCT objectid FROM ap_photometry")}
        lcinfo = dict(db.query("SELECT objectid, path FROM lcinfo"))
    assert set(expected) <= measured                              # the awkward stars measured
    assert len(measured) > 100
    files = [p for p in (root / "LC").rglob("*") if p.is_file()]
    folder = root / "LC" / "12"
    assert all(p.parent == folder and not p.name.startswith(".") for p in files)
    assert sorted(os.listdir(tmp_path)) == ["p"]                  # nothing escaped the project
    by_id = {}
    for p in files:
        table = read_lightcurve(p)
        by_id[table.meta["OBJECTID"]] = (p, table.meta["CATID"])
    assert len(by_id) == len(files)                               # one file per id
    assert set(by_id) == measured                                 # every measured star, exactly
    for oid, (p, catid) in by_id.items():
        assert p.name == lc_filename(oid) and lcinfo[oid] == str(p.relative_to(root))
        assert catid == ("dup" if oid == "dup#2" else oid)
