"""Field catalog reader, proper motion and objectinfo rows."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table

from trex.catalog import find_catalog, objectinfo_columns, propagate, read_catalog
from trex.project import init_project


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


def test_bad_rows_rejected_with_warning(tmp_path, caplog):
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
                    "dup,12,22,14\n")
    with caplog.at_level(logging.WARNING, logger="trex.catalog"):
        cat = read_catalog(path)
    # a repeated objectid keeps its first usable row
    assert list(cat["objectid"]) == ["good1", "good2", "dup"]
    np.testing.assert_array_equal(cat["ra"], [10.0, 0.0, 12.0])  # 360 wraps to 0
    text = caplog.text
    assert "3 rows rejected: missing or non-finite ra/dec" in text
    assert "2 rows rejected: ra/dec out of range" in text
    assert "1 rows rejected: no objectid" in text
    assert "1 rows rejected: repeated objectid" in text


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
