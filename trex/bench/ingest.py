"""Rank-0 ingest: 10^6 rows x 28 columns into PostgreSQL (binary COPY) and SQLite,
against psycopg2 text COPY and ``execute_values`` on the same rows.

Peers (each from the same numpy columns, their conversion timed with them):

* text COPY: every column to text in bulk (``str`` of ``tolist()`` per column,
  rows joined in C, NaN -> ``\\N``), one ``copy_expert``.  Python's float repr
  is the fastest exact formatting here: on 2x10^5 rows ``np.savetxt`` with
  ``%.17g`` took 1.7x as long and ``astype(str)`` 1.4x (measured 2026-12-02), so
  the peer uses it; the check splits formatting from the COPY itself;
* ``psycopg2.extras.execute_values`` (the multi-row INSERT a user would write,
  default page size), on ``EXECUTE_VALUES_ROWS`` rows when that is fewer than
  all (scaled to all rows, which the check says).

Check: the table each loader left (rows, non-NULL ``v00``, sum of ``v00`` and
``flag``) against the numpy columns it was given.

The ``ap_photometry`` row is the pipeline's own write: 10^6 rows of the real
table (schema of ``trex/db/sql``, its ``framekey`` index included) written one
frame at a time (10^4 stars x 3 apertures per frame) with ``write_columns`` and
``replace`` as the ledger records a frame, one transaction per ``[run]
batch_frames`` frames; its peer is the server alone: one
psycopg2 binary COPY of the same rows encoded beforehand (not timed).  Two
more rows time that COPY into the table without its ``framekey`` index and
then also ``UNLOGGED`` (what a backfill could gain from them; trex keeps both:
the index serves the per-frame replace, the WAL the crash safety).
"""

from __future__ import annotations

import io
import os
import tempfile
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from trex.bench.common import Row, median_time
from trex.config import Config
from trex.db import connect

NAME = "ingest"
NCOLS = 28
#: rows ``execute_values`` is timed on in the full run (~30 s at ~8 k rows/s), scaled to all
EXECUTE_VALUES_ROWS = 250_000


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


def ap_frames(nframes: int, nstars: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``ap_photometry`` columns of ``nframes`` frames of ``nstars`` stars x 3 apertures
    (as :func:`trex.photometry.ap_photometry_rows` makes them; NaN in 1 % of fluxes)."""
    from trex.photometry import ap_photometry_rows, aphot_dtype

    rng = np.random.default_rng(seed)
    ids = np.array([f"HAT-123-{i:07d}" for i in range(nstars)])
    frames = []
    for key in range(1, nframes + 1):
        table = np.zeros(nstars, aphot_dtype(3))
        for name in table.dtype.names[1:]:
            table[name] = rng.normal(10, 1, nstars)
        table["flux_000"][rng.random(nstars) < 0.01] = np.nan
        frames.append(ap_photometry_rows(key, "0123456789abcdef", table, ids))
    return frames


def ap_photometry_rows(url: str, nrows: int) -> list[Row]:
    """Rows/s of the ``ap_photometry`` table written frame by frame (trex) against one
    COPY of the same rows encoded beforehand (the server alone), median of 3."""
    import psycopg2

    from trex.db import pgcopy

    frames = ap_frames(max(1, round(nrows / 30_000)), 10_000)
    nrows = sum(len(f["framekey"]) for f in frames)
    db = connect(url)
    db.create_schema()

    def per_frame():
        batch = Config().run.batch_frames
        for i in range(0, len(frames), batch):
            with db.transaction():  # as the ledger records a batch of frames
                for f in frames[i:i + batch]:
                    db.write_columns("ap_photometry", f, replace=("framekey", f["framekey"][:1]))

    t_trex, _ = median_time(per_frame, reset=lambda: db.execute("TRUNCATE ap_photometry"))
    count = db.query("SELECT count(*), count(flux) FROM ap_photometry")[0]
    names = list(frames[0])
    known = db.columns("ap_photometry")
    payload = pgcopy.encode([np.concatenate([f[n] for f in frames]) for n in names],
                            [known[n] for n in names])
    db.close()
    conn = psycopg2.connect(url)

    def copy():
        conn.cursor().copy_expert(f"COPY ap_photometry ({', '.join(names)}) FROM STDIN WITH "
                                  "(FORMAT binary)", io.BytesIO(payload))
        conn.commit()

    def truncate():
        conn.cursor().execute("TRUNCATE ap_photometry")
        conn.commit()

    t_copy, _ = median_time(copy, reset=truncate)
    conn.cursor().execute("DROP INDEX ap_photometry_framekey")
    t_noindex, _ = median_time(copy, reset=truncate)
    conn.cursor().execute("ALTER TABLE ap_photometry SET UNLOGGED")
    t_unlogged, _ = median_time(copy, reset=truncate)
    conn.close()
    nulls = sum(int(np.isnan(f["flux"]).sum()) for f in frames)
    same = tuple(count) == (nrows, nrows - nulls)
    size = f"{nrows:.1e} rows, {len(frames)} frames"
    return [Row("ingest ap_photometry, frame by frame (trex write_columns)", size, t_trex,
                "psycopg2 binary COPY, encoded beforehand", t_copy,
                f"trex {nrows / t_trex / 1e3:.0f} k rows/s, server alone "
                f"{nrows / t_copy / 1e3:.0f} k rows/s; {count[0]} rows, "
                f"{'NULLs as numpy' if same else 'DIFFER from numpy'}"),
            Row("ingest ap_photometry: server alone, no framekey index", size, t_noindex,
                "same with the index", t_copy, f"{nrows / t_noindex / 1e3:.0f} k rows/s"),
            Row("ingest ap_photometry: server alone, no index, UNLOGGED table", size, t_unlogged,
                "same with the index, logged", t_copy, f"{nrows / t_unlogged / 1e3:.0f} k rows/s")]


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
        rate = f"trex {nrows / t_copy / 1e3:.0f} k rows/s, {table_check(db, cols, nrows)} after 3 rewrites"
        t_text, t_format = _text_copy(db, cols)
        rows.append(Row("ingest PostgreSQL (trex binary COPY)", size, t_copy,
                        "psycopg2 text COPY, bulk str", t_text,
                        f"{rate}; peer: formatting {t_format:.1f} s + COPY "
                        f"{t_text - t_format:.1f} s, {table_check(db, cols, nrows)}"))
        sub = min(nrows, EXECUTE_VALUES_ROWS)
        t_values = _execute_values(db, cols, sub)
        scaled = f"timed on {sub} rows, scaled x{nrows / sub:g}" if sub < nrows else "all rows"
        rows.append(Row("ingest PostgreSQL (trex binary COPY)", size, t_copy,
                        "psycopg2 execute_values", t_values * nrows / sub,
                        f"peer {sub / t_values / 1e3:.1f} k rows/s, {scaled}; "
                        f"{table_check(db, cols, sub)}"))
        db.close()
        rows += ap_photometry_rows(url, nrows)
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()
    return rows


def table_check(db, cols: dict[str, np.ndarray], nrows: int) -> str:
    """Whether the table holds the first ``nrows`` rows of ``cols``: row count, non-NULL
    ``v00``, sums of ``v00`` and ``flag`` (relative 1e-9: summation order differs)."""
    count, nonnull, total, flags = db.query(
        "SELECT count(*), count(v00), sum(v00), sum(flag) FROM bench")[0]
    v00 = cols["v00"][:nrows]
    expect = (nrows, int(np.isfinite(v00).sum()), float(np.nansum(v00)),
              int(cols["flag"][:nrows].sum()))
    same = ((int(count), int(nonnull), int(flags)) == (expect[0], expect[1], expect[3])
            and abs(float(total) - expect[2]) <= 1e-9 * abs(expect[2]))
    return f"{int(count)} rows {'same as numpy' if same else 'DIFFER from numpy'}"

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


def text_rows(cols: dict[str, np.ndarray]) -> str:
    """COPY text of the columns: ``str`` of each value (exact for floats), tab-separated,
    NaN as ``\\N`` (no column holds the letters 'nan' otherwise)."""
    strs = [list(map(str, cols[n].tolist())) for n in cols]
    return ("\n".join(map("\t".join, zip(*strs))) + "\n").replace("nan", "\\N")


def _text_copy(db, cols) -> tuple[float, float]:
    """(wall time of formatting + COPY, of the formatting alone), one run."""
    names = list(cols)
    cur = db.conn.cursor()
    cur.execute("TRUNCATE bench")
    db.conn.commit()
    start = time.perf_counter()
    text = text_rows(cols)
    formatted = time.perf_counter()
    cur.copy_expert(f"COPY bench ({', '.join(names)}) FROM STDIN", io.StringIO(text))
    db.conn.commit()
    end = time.perf_counter()
    return end - start, formatted - start


def _execute_values(db, cols, nrows: int) -> float:
    """Wall time of converting the first ``nrows`` rows to tuples and inserting them with
    ``execute_values`` (default page size) into the emptied table, one run."""
    from psycopg2.extras import execute_values

    names = list(cols)
    sql = f"INSERT INTO bench ({', '.join(names)}) VALUES %s"
    cur = db.conn.cursor()
    cur.execute("TRUNCATE bench")
    db.conn.commit()
    start = time.perf_counter()
    data = list(zip(*[[None if (isinstance(v, float) and v != v) else v
                       for v in cols[n][:nrows].tolist()] for n in names]))
    execute_values(cur, sql, data)
    db.conn.commit()
    return time.perf_counter() - start
