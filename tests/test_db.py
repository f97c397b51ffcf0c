"""Database layer: schema parity, bulk writes on both engines, idempotency, NULLs."""

import numpy as np
import pytest

import trex.db
from trex.db import DatabaseError, connect, redact

N = 100_000


def _columns(rng, framekeys):
    n = len(framekeys)
    flux = rng.normal(1e4, 100, n)
    flux[rng.random(n) < 0.05] = np.nan
    objectid = np.array([f"HAT-123-{i:07d}" for i in range(n)])
    evil = np.arange(0, n, 97)
    objectid = objectid.astype(object)
    objectid[evil] = [f"x{i}'); DROP TABLE ap_photometry; --" for i in evil]  # stored verbatim
    objectid[1] = "étoile-α"  # non-ASCII survives the UTF-8 path
    objectid = objectid.astype(str)
    return {
        "framekey": np.asarray(framekeys, dtype=np.int64),
        "photkey": np.full(n, "p1"),
        "objectid": objectid,
        "aperture": (np.arange(n) % 3).astype(np.int16),
        "xcc": rng.uniform(0, 2048, n).astype(np.float32),
        "ycc": rng.uniform(0, 2048, n),
        "flux": flux,
        "mag": np.where(np.isnan(flux), np.nan, 17 - 2.5 * np.log10(np.abs(flux))),
        "flag": rng.integers(0, 64, n).astype(np.int32),
    }


def test_schema_parity(sqlite_url, pg_url):
    names = {}
    for url in (sqlite_url, pg_url):
        with connect(url) as db:
            db.create_schema()
            db.create_schema()  # idempotent
            names[db.engine] = {t: list(db.columns(t)) for t in db.tables()}
    assert names["sqlite"] == names["postgresql"]
    for table in ("frameinfo", "calibratedframes", "filters", "astromrefs", "photrefs",
                  "photometryinfo", "ap_photometry", "ism_photometry", "iphotfiles",
                  "iphotobjects", "photindex_iphots", "objectinfo", "lcinfo"):
        assert table in names["sqlite"]


def test_postgresql_sequences(pg_url):
    with connect(pg_url) as db:
        db.create_schema()
        seqs = {r[0] for r in db.query("SELECT sequence_name FROM information_schema.sequences")}
    assert {"frameinfo_framekey_seq", "photrefs_photrefkey_seq"} <= seqs


def test_bulk_write_read_back_with_nulls(db_url):
    rng = np.random.default_rng(5)
    cols = _columns(rng, np.repeat(np.arange(10), N // 10))
    with connect(db_url) as db:
        db.create_schema()
        assert db.write_columns("ap_photometry", cols) == N
        assert db.last_write_method == ("copy" if db.engine == "postgresql" else "executemany")
        back = db.query_columns(
            "SELECT framekey, objectid, aperture, xcc, ycc, flux, mag, flag, "
            "CASE WHEN flux IS NULL THEN 1 ELSE 0 END AS fluxnull FROM ap_photometry")
    order = np.lexsort((back["objectid"].astype(str), back["framekey"]))
    back = {k: v[order] for k, v in back.items()}
    ref = np.lexsort((cols["objectid"], cols["framekey"]))
    np.testing.assert_array_equal(back["framekey"], cols["framekey"][ref])
    np.testing.assert_array_equal(back["objectid"].astype(str), cols["objectid"][ref])
    np.testing.assert_array_equal(back["aperture"], cols["aperture"][ref])
    np.testing.assert_array_equal(back["flag"], cols["flag"][ref])
    for name in ("xcc", "ycc"):  # REAL (float32) on PostgreSQL
        np.testing.assert_array_equal(back[name].astype(np.float32),
                                      cols[name][ref].astype(np.float32))
    np.testing.assert_array_equal(back["flux"], cols["flux"][ref])  # NaN == NaN here
    # missing values are NULL in the database on both engines, not NaN
    np.testing.assert_array_equal(back["fluxnull"], np.isnan(cols["flux"][ref]).astype(int))


def test_rewrite_is_idempotent(db_url):
    rng = np.random.default_rng(6)
    with connect(db_url) as db:
        db.create_schema()
        for _ in range(3):
            db.write_columns("ap_photometry", _columns(rng, np.repeat([1, 2], 500)),
                             replace=("framekey", [1, 2]))
        db.write_columns("ap_photometry", _columns(rng, np.full(300, 3)), replace=("framekey", [3]))
        counts = dict(db.query("SELECT framekey, count(*) FROM ap_photometry GROUP BY framekey"))
    assert counts == {1: 500, 2: 500, 3: 300}


@pytest.mark.parametrize("per", [1, 7, 200])
def test_sqlite_rows_in_statements_of_many_rows_keep_every_row(tmp_path, monkeypatch, per):
    """Rows go in INSERTs of ``per`` rows each, the rest one by one: every row once, in
    its columns."""
    monkeypatch.setattr(trex.db, "ROWS_PER_INSERT", per)
    cols = _columns(np.random.default_rng(8), np.full(437, 4))
    with connect(f"sqlite:///{tmp_path / 't.sqlite'}") as db:
        db.create_schema()
        db.write_columns("ap_photometry", cols)
        back = db.query_columns("SELECT objectid, flag, xcc FROM ap_photometry ORDER BY rowid")
    np.testing.assert_array_equal(back["objectid"].astype(str), cols["objectid"])
    np.testing.assert_array_equal(back["flag"], cols["flag"])
    np.testing.assert_array_equal(back["xcc"], cols["xcc"])


def test_failed_write_rolls_back(db_url):
    rng = np.random.default_rng(7)
    with connect(db_url) as db:
        db.create_schema()
        db.write_columns("ap_photometry", _columns(rng, np.full(100, 1)))
        bad = _columns(rng, np.full(100, 1))
        bad["flag"] = np.full(100, None, dtype=object)  # NOT NULL violated
        with pytest.raises(Exception):  # noqa: B017  (sqlite3/psycopg2 integrity errors)
            db.write_columns("ap_photometry", bad, replace=("framekey", [1]))
        assert db.query("SELECT count(*) FROM ap_photometry")[0][0] == 100


def test_unknown_columns_and_urls_rejected(sqlite_url):
    with connect(sqlite_url) as db:
        db.create_schema()
        with pytest.raises(DatabaseError, match="no column 'nosuch'"):
            db.write_columns("ap_photometry", {"nosuch": np.zeros(3)})
        with pytest.raises(DatabaseError, match="no table"):
            db.columns("nosuch")
    with pytest.raises(DatabaseError, match="unsupported database URL"):
        connect("mysql://x")


def test_credentials_never_shown():
    assert redact("postgresql://me:secret@host:5432/db") == "postgresql://me:***@host:5432/db"
    with pytest.raises(DatabaseError) as err:
        connect("postgresql://me:secret@127.0.0.1:1/db")
    assert "secret" not in str(err.value)


def test_lcinfo_batches_replace_rows_of_their_project_only(db_url):
    from trex.config import Config
    from trex.lcformat import empty_rows
    from trex.lcstats import lcstats_rows
    from trex.ledger import Ledger

    def record(db, projid, ids, nobs, added=False):
        rows = empty_rows(nobs, 1)
        rows["rjd"], rows["arm_000"] = np.arange(nobs) * 0.01, 10.0 + np.arange(nobs) * 0.001
        info = {"projid": np.full(len(ids), projid), "objectid": np.array(ids),
                "path": np.array([f"LC/{projid}/{i}.fits" for i in ids]),
                "rjd_min": np.zeros(len(ids)), "rjd_max": np.full(len(ids), 0.01 * (nobs - 1))}
        stats = lcstats_rows([(rows, {"projid": projid, "objectid": i, "mag": 9.0, "x": 1.0,
                                      "y": 2.0}) for i in ids], 1, 0.25)
        Ledger(db, Config()).record_lightcurves(info, stats, added)

    with connect(db_url) as db:
        db.create_schema()
        record(db, "7", ["A", "B", "it's"], 10)
        record(db, "8", ["A"], 5)
        record(db, "7", ["B", "it's"], 12)  # the light curves written again
        record(db, "8", ["A"], 4, added=True)  # a night appended: 5 + 4 points
        Ledger(db, Config()).record_lightcurves({}, {})
        rows = db.query("SELECT projid, objectid, nobs, median_mag FROM lcinfo "
                        "ORDER BY projid, objectid")
        stats = db.query("SELECT projid, objectid, arm_n, arm_nights FROM lcstats "
                         "ORDER BY projid, objectid")
    assert [r[:3] for r in rows] == [("7", "A", 10), ("7", "B", 12), ("7", "it's", 12),
                                     ("8", "A", 9)]
    assert rows[0][3] == pytest.approx(10.0045) and rows[3][3] == pytest.approx(
        (5 * 10.002 + 4 * 10.0015) / 9)  # the nights' medians, by their points
    assert stats == [("7", "A", 10, 1), ("7", "B", 12, 1), ("7", "it's", 12, 1), ("8", "A", 9, 2)]
