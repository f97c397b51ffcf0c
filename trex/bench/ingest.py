"""Rank-0 ingest: 10^6 rows x 28 columns into PostgreSQL (binary COPY) and SQLite,
against psycopg2 ``executemany`` and text COPY on the same rows."""

from __future__ import annotations

import io
import os
import tempfile
import uuid
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from trex.bench.common import Row, median_time
from trex.db import connect

NAME = "ingest"
NCOLS = 28


def _columns(nrows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cols = {"framekey": np.repeat(np.arange(nrows // 1000 + 1), 1000)[:nrows],
            "objectid": np.array([f"HAT-123-{i % 10**7:07d}" for i in range(nrows)])}
    for j in range(NCOLS - 4):
        values = rng.normal(10, 1, nrows)
        values[rng.random(nrows) < 0.01] = np.nan
        cols[f"v{j:02d}"] = values
    cols["flag"] = rng.integers(0, 64, nrows).astype(np.int32)
    cols["aperture"] = (np.arange(nrows) % 3).astype(np.int16)
    return cols


def _ddl(engine: str) -> str:
    real = "DOUBLE PRECISION" if engine == "postgresql" else "REAL"
    floats = ", ".join(f"v{j:02d} {real}" for j in range(NCOLS - 4))
    return (f"CREATE TABLE bench (framekey BIGINT, objectid TEXT, {floats}, "
            "flag INTEGER, aperture SMALLINT); CREATE INDEX bench_framekey ON bench (framekey)")


def _scratch_pg(dsn: str):
    import psycopg2

    name = f"trex_bench_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(dsn)
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    return admin, name, urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


def run(quick: bool = False) -> list[Row]:
    nrows = 100_000 if quick else 1_000_000
    cols = _columns(nrows)
    size = f"{nrows:.0e} rows x {NCOLS}"
    rows = []
    keys = np.unique(cols["framekey"])
    with tempfile.TemporaryDirectory() as tmp:
        db = connect(f"sqlite:///{os.path.join(tmp, 'b.sqlite')}")
        db.conn.executescript(_ddl("sqlite"))
        t, _ = median_time(lambda: db.write_columns("bench", cols, replace=("framekey", keys)))
        n = db.query("SELECT count(*) FROM bench")[0][0]
        t_raw = _sqlite_prebuilt(db, cols)
        rows.append(Row("ingest SQLite (trex write_columns)", size, t,
                        "sqlite3 executemany, prebuilt tuples", t_raw,
                        f"trex {nrows / t / 1e3:.0f} k rows/s; {n} rows after 3 rewrites"))
        db.close()

    dsn = os.environ.get("TREX_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    admin, name, url = _scratch_pg(dsn)
    try:
        db = connect(url)
        db.execute(_ddl("postgresql"))
        t_copy, _ = median_time(lambda: db.write_columns("bench", cols, replace=("framekey", keys)))
        n = db.query("SELECT count(*) FROM bench")[0][0]
        rate = f"trex {nrows / t_copy / 1e3:.0f} k rows/s; {n} rows after 3 rewrites"
        t_text = _text_copy(db, cols)
        rows.append(Row("ingest PostgreSQL (trex binary COPY)", size, t_copy,
                        "psycopg2 text COPY", t_text, rate))
        sub = min(nrows, 20_000)
        t_many = _executemany(db, cols, sub) * (nrows / sub)
        rows.append(Row("ingest PostgreSQL (trex binary COPY)", size, t_copy,
                        "psycopg2 executemany", t_many, f"peer timed on {sub} rows, scaled"))
        db.close()
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()
    return rows


def _sqlite_prebuilt(db, cols) -> float:
    names = list(cols)
    data = list(zip(*[[None if (isinstance(v, float) and v != v) else v
                       for v in cols[n].tolist()] for n in names]))
    sql = f"INSERT INTO bench ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"

    def write():
        db.conn.execute("DELETE FROM bench")
        db.conn.execute("BEGIN")
        db.conn.executemany(sql, data)
        db.conn.execute("COMMIT")

    t, _ = median_time(write, repeats=1)
    return t


def _text_copy(db, cols) -> float:
    names = list(cols)

    def write():
        buf = io.StringIO()
        table = np.rec.fromarrays([cols[n] for n in names], names=names)
        for rec in table.tolist():
            buf.write("\t".join("\\N" if (isinstance(v, float) and v != v) else str(v)
                                for v in rec))
            buf.write("\n")
        buf.seek(0)
        cur = db.conn.cursor()
        cur.execute("TRUNCATE bench")
        cur.copy_expert(f"COPY bench ({', '.join(names)}) FROM STDIN", buf)
        db.conn.commit()

    t, _ = median_time(write, repeats=1)
    return t


def _executemany(db, cols, nrows: int) -> float:
    names = list(cols)
    data = list(zip(*[[None if (isinstance(v, float) and v != v) else v
                       for v in cols[n][:nrows].tolist()] for n in names]))
    sql = f"INSERT INTO bench ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))})"

    def write():
        cur = db.conn.cursor()
        cur.executemany(sql, data)
        db.conn.commit()

    t, _ = median_time(write, repeats=1)
    return t
