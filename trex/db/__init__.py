"""The database layer: one small class over SQLite (embedded default) and PostgreSQL.

Both engines hold the schema of ``sql/``.  SQL in trex is written once with
``?`` placeholders and always parameterized; table and column names used by the
bulk writer are checked against the live schema.  Missing values are NULL on
both engines: NaN floats and None become NULL on the way in, and NULL comes
back as NaN in numeric columns.

Bulk writes (:meth:`Database.write_columns`) take numpy columns and use binary
COPY on PostgreSQL and ``executemany`` in one transaction on SQLite; with
``replace`` the rows of the given keys are deleted first in the same
transaction, so writing a frame twice leaves one copy.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from trex.db import pgcopy
from trex.errors import WriteFault, write_cause

log = logging.getLogger(__name__)

SCHEMA_DIR = Path(__file__).resolve().parent / "sql"
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
#: rows per INSERT statement on SQLite (fewer when the columns would pass its limit of
#: bound variables)
ROWS_PER_INSERT = 200
#: SQLite's words for a write the machine refused (no errno comes with them)
_SQLITE_FAULTS = ("disk I/O error", "database or disk is full", "readonly database",
                  "unable to open database file")


class DatabaseError(RuntimeError):
    """The database cannot be opened or used."""


def redact(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe to log)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def connect(url: str) -> Database:
    """Open ``sqlite:///path`` or ``postgresql://user@host:port/db``."""
    return Database(url)


class Database:
    """A connection to the trex database (SQLite or PostgreSQL)."""

    def __init__(self, url: str):
        self.url = url
        self._depth = 0
        self._columns: dict[str, dict[str, str]] = {}
        self.last_write_method = ""
        self._disk_full: tuple[type[Exception], ...] = ()
        if url.startswith("sqlite:///"):
            self.engine = "sqlite"
            path = self.path = url[len("sqlite:///"):]
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            try:
                self.conn = sqlite3.connect(path, isolation_level=None, timeout=60)
            except sqlite3.Error as err:
                raise DatabaseError(f"cannot open {url}: {err}") from None
            self.conn.execute("PRAGMA journal_mode=DELETE")  # WAL breaks on network filesystems
            self.conn.execute("PRAGMA synchronous=NORMAL")
        elif url.startswith(("postgresql://", "postgres://")):
            import psycopg2
            import psycopg2.errors

            self.engine = "postgresql"
            self.path = redact(url)
            self._disk_full = (psycopg2.errors.DiskFull,)
            try:
                self.conn = psycopg2.connect(url)
            except psycopg2.Error as err:
                raise DatabaseError(f"cannot open {redact(url)}: {str(err).strip()}") from None
        else:
            raise DatabaseError(f"unsupported database URL {redact(url)!r}: "
                                "use sqlite:///path or postgresql://user@host:port/db")

    # -- connection basics -------------------------------------------------
    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _sql(self, sql: str) -> str:
        if self.engine == "postgresql":
            return sql.replace("%", "%%").replace("?", "%s")
        return sql

    @contextmanager
    def faults(self) -> Iterator[None]:
        """A write the machine refused (disk full, file-size limit, read-only folder;
        on PostgreSQL the server's disk full) becomes a :class:`trex.errors.WriteFault`
        naming the database; any other database error stays what it is."""
        try:
            yield
        except sqlite3.OperationalError as err:
            cause = write_cause(self.path, OSError(str(err))) if any(
                word in str(err) for word in _SQLITE_FAULTS) else None
            if cause is None:
                raise
            raise WriteFault(self.path, f"{cause} ({err})") from None
        except self._disk_full as err:
            raise WriteFault(self.path, f"the database server's disk is full "
                                        f"({str(err).strip()})") from None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything inside commits together or not at all (nests as one)."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        with self.faults():
            if self.engine == "sqlite":
                self.conn.execute("BEGIN")
            self._depth = 1
            done = False
            try:
                yield
                done = True
            finally:
                self._depth = 0
                self._end(done)

    def _end(self, commit: bool) -> None:
        """Commit (or roll back) the transaction; a failed commit is rolled back."""
        if commit:
            try:
                self.conn.commit()
                return
            except (sqlite3.Error, *self._disk_full):
                self.conn.rollback()
                raise
        self.conn.rollback()  # an exception (or an interrupt) left the block: nothing stays

    def _run(self, sql: str, params: Sequence = (), many: bool = False,
             fetch: bool = False) -> tuple[list, list[str]]:
        """Run one statement: (rows, column names) when ``fetch``; committed at once
        outside a transaction (PostgreSQL)."""
        with self.faults():
            cur = self.conn.cursor()
            if many:
                cur.executemany(self._sql(sql), params)
            else:
                cur.execute(self._sql(sql), tuple(params))
            rows = cur.fetchall() if fetch else []
            names = [d[0] for d in cur.description] if fetch else []
            cur.close()
            if not self._depth and self.engine == "postgresql":
                self.conn.commit()
        return rows, names

    def execute(self, sql: str, params: Sequence = ()) -> None:
        """Run one statement (committed at once outside a transaction)."""
        self._run(sql, params)

    def executemany(self, sql: str, rows) -> None:
        self._run(sql, rows, many=True)

    def query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        """Rows of a query as tuples."""
        return self._run(sql, params, fetch=True)[0]

    def query_dicts(self, sql: str, params: Sequence = ()) -> list[dict]:
        """Rows of a query as dicts keyed by column name."""
        rows, names = self._run(sql, params, fetch=True)
        return [dict(zip(names, row)) for row in rows]

    def query_columns(self, sql: str, params: Sequence = ()) -> dict[str, np.ndarray]:
        """A query's result as numpy columns; NULL is NaN in numeric columns."""
        rows, names = self._run(sql, params, fetch=True)
        return {name: _column_array([r[j] for r in rows]) for j, name in enumerate(names)}

    # -- the project lock (PostgreSQL) ----------------------------------------------
    def try_project_lock(self, root: Path | str, started: str) -> str | None:
        """Take the session advisory lock of the project at ``root`` (PostgreSQL; held
        until this connection closes): None when taken, else who holds it.  The
        holder's session is named ``trex <host> <pid> <started>`` so that a second
        run can say who it is.  SQLite: always None (the lock file suffices)."""
        if self.engine != "postgresql":
            return None
        key = project_key(root)
        if self.query("SELECT pg_try_advisory_lock(?)", (key,))[0][0]:
            self.query("SELECT set_config('application_name', ?, false)",
                       (f"trex {socket.gethostname()} {os.getpid()} {started}"[:63],))
            return None
        rows = self.query(
            "SELECT a.application_name, a.client_addr, a.pid, a.backend_start FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND "
            "l.granted AND l.classid::bigint = ? AND l.objid::bigint = ? AND l.objsubid = 1",
            ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF))
        if not rows:
            return "a session of the database (gone since: try again)"
        name, addr, pid, since = rows[0]
        return (f"the database lock of the project, held by session {pid} "
                f"({name or 'no name'}) from {addr or 'a local socket'} since {since}")

    # -- schema ---------------------------------------------------------------
    def create_schema(self) -> None:
        """Create every table and sequence of ``sql/`` that does not exist yet."""
        text = (SCHEMA_DIR / f"{self.engine}.sql").read_text()
        if self.engine == "sqlite":
            with self.faults():
                self.conn.executescript(text)
        else:
            self.execute(text)
        self._columns.clear()

    def columns(self, table: str) -> dict[str, str]:
        """Column name -> declared type (lower case) of ``table``."""
        if table not in self._columns:
            if self.engine == "sqlite":
                rows = self.query(f"PRAGMA table_info({_identifier(table)})")
                cols = {r[1]: r[2].lower() for r in rows}
            else:
                rows = self.query(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_name = ? AND table_schema = current_schema() "
                    "ORDER BY ordinal_position", (table,))
                cols = dict(rows)
            if not cols:
                raise DatabaseError(f"no table {table!r} (run 'trex init' or create_schema())")
            self._columns[table] = cols
        return self._columns[table]

    def tables(self) -> list[str]:
        """Names of the tables in the database."""
        if self.engine == "sqlite":
            rows = self.query("SELECT name FROM sqlite_master WHERE type = 'table'")
        else:
            rows = self.query("SELECT table_name FROM information_schema.tables "
                              "WHERE table_schema = current_schema()")
        return sorted(r[0] for r in rows)

    # -- bulk writes ----------------------------------------------------------
    def write_columns(self, table: str, columns: dict[str, np.ndarray],
                      replace: tuple[str, Sequence] | None = None) -> int:
        """Append rows given as equally long numpy columns; returns the row count.

        ``replace=(key_column, keys)`` first deletes the rows whose key is in
        ``keys``, in the same transaction, which makes a rewrite idempotent.
        """
        known = self.columns(table)
        names = list(columns)
        for name in names + ([replace[0]] if replace else []):
            if name not in known:
                raise DatabaseError(f"table {table} has no column {name!r}")
        arrays = [np.asarray(columns[n]) for n in names]
        nrows = len(arrays[0]) if arrays else 0
        if any(len(a) != nrows for a in arrays):
            raise ValueError("columns must have the same length")
        with self.transaction():
            if replace is not None:
                self.delete_in(table, *replace)
            if nrows:
                if self.engine == "postgresql":
                    self._copy(table, names, arrays, [known[n] for n in names])
                else:
                    self._executemany_insert(table, names, arrays)
        return nrows

    def delete_in(self, table: str, column: str, keys: Sequence, **equal) -> None:
        """Delete the rows whose ``column`` is one of ``keys`` (and whose columns named
        in ``equal`` hold those values): one statement on PostgreSQL."""
        known = self.columns(table)
        for name in (column, *equal):
            if name not in known:
                raise DatabaseError(f"table {table} has no column {name!r}")
        extra = "".join(f" AND {name} = ?" for name in equal)
        values = [_python(v) for v in equal.values()]
        keys = [_python(k) for k in np.unique(np.asarray(keys))]
        if self.engine == "postgresql":
            self.execute(f"DELETE FROM {table} WHERE {column} = ANY(?){extra}", (keys, *values))
        else:
            self.executemany(f"DELETE FROM {table} WHERE {column} = ?{extra}",
                             [(k, *values) for k in keys])

    def _copy(self, table, names, arrays, types) -> None:
        cur = self.conn.cursor()
        cur.copy_expert(f"COPY {table} ({', '.join(names)}) FROM STDIN WITH (FORMAT binary)",
                        pgcopy.CopyStream(arrays, types))
        cur.close()
        self.last_write_method = "copy"

    def _executemany_insert(self, table, names, arrays) -> None:
        """Rows in statements of ``ROWS_PER_INSERT`` rows each (multi-row VALUES: a
        quarter faster than one row per statement), the rest one by one."""
        lists = [_python_list(a) for a in arrays]
        insert = f"INSERT INTO {table} ({', '.join(names)}) VALUES "
        row = f"({', '.join('?' * len(names))})"
        limit = self.conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) \
            if hasattr(self.conn, "getlimit") else 999  # 999: SQLite's least limit
        per = max(1, min(ROWS_PER_INSERT, limit // len(names)))
        nrows = len(lists[0])
        whole = nrows - nrows % per
        if whole:
            values = list(chain.from_iterable(zip(*(column[:whole] for column in lists))))
            step = per * len(names)
            self.conn.executemany(insert + ", ".join([row] * per),
                                  (values[i:i + step] for i in range(0, len(values), step)))
        if whole < nrows:
            self.conn.executemany(insert + row, zip(*(column[whole:] for column in lists)))
        self.last_write_method = "executemany"


def project_key(root: Path | str) -> int:
    """The advisory-lock key of a project: a signed 64-bit hash of its resolved root."""
    digest = hashlib.sha256(str(Path(root).resolve()).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _identifier(name: str) -> str:
    if not _IDENTIFIER.match(name):
        raise DatabaseError(f"not a valid table name: {name!r}")
    return name


def _python(value):
    return value.item() if isinstance(value, np.generic) else value


def _python_list(values: np.ndarray) -> list:
    """Python values of a numpy column with NaN/None as None."""
    out = values.tolist()
    for i in np.flatnonzero(pgcopy.null_mask(values)):
        out[i] = None
    return out


def _column_array(values: list) -> np.ndarray:
    if all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
        if any(v is None for v in values) or any(isinstance(v, float) for v in values):
            return np.array(values, dtype=np.float64)
        return np.array(values, dtype=np.int64)
    return np.array(values, dtype=object)
