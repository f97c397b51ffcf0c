"""Shared fixtures: temporary projects and a throw-away PostgreSQL database.

PostgreSQL tests read ``TREX_TEST_PG`` (a DSN of a server where the user may
create databases).  Without it they skip locally; in CI (``CI`` set) a
missing or unusable server is an error, never a skip.
"""

from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest


@pytest.fixture
def pg_url():
    """URL of a fresh, empty PostgreSQL database, dropped afterwards."""
    dsn = os.environ.get("TREX_TEST_PG")
    if not dsn:
        if os.environ.get("CI"):
            pytest.fail("TREX_TEST_PG is not set: PostgreSQL tests must run in CI")
        pytest.skip("TREX_TEST_PG not set")
    import psycopg2

    name = f"trex_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    parts = urlsplit(dsn)
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'trex.sqlite'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """Each test using this runs once per engine."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'trex.sqlite'}"
    return request.getfixturevalue("pg_url")


def run_stages(project, stages, url: str | None = None, config=None, **kwargs) -> dict:
    """The pipeline's ``stages`` on a project, serially, through the real driver;
    returns {phase: (items, failed)} of the phases that had work."""
    from trex.config import Config
    from trex.pipeline import run_stages as run

    config = config or Config()
    if url:
        config = config.replace("database", url=url)
    return run(project, config, tuple(stages), **kwargs)


def calibration_counts(summary: dict) -> dict:
    """The old ``calibrate_project`` counts of a pipeline summary: raw files recorded,
    frames calibrated, frames failed."""
    done, failed = summary.get("calibrate", (0, 0))
    return {"scanned": summary.get("inventory", (0, 0))[0], "calibrated": done - failed,
            "failed": failed}


def project_context(project, config, db):
    """The run's context as the pipeline builds it before its reference phases: masters,
    catalogs and the references kept from earlier runs."""
    from trex.catalog import Catalogs
    from trex.frame import Context
    from trex.ledger import Ledger
    from trex.masterframes import recorded_masters
    from trex.parallel import SerialComm
    from trex.pipeline import KnownReferences, run_phase

    ledger = Ledger(db, config)
    context = Context(project, config, recorded_masters(project, ledger.read.masters()))
    for phase in (Catalogs(), KnownReferences()):
        context = run_phase(SerialComm(), ledger, context, phase, {"signal": False})[0]
    return context
