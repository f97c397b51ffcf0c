"""Faults of the machine and of the job, on SQLite and PostgreSQL: a read-only light-curve
folder, a file-size limit, kill -9 at 25 %, 50 %, 80 % of a run and in the middle of
detrending, two runs started at once.  Each ends with the documented exit status (or is
killed), leaves no partial light curve and no duplicate row, and once resumed gives light
curves equal to an uninterrupted run's, byte for byte in every column.

One small simulated night (6 frames of 256x256 px, 300 stars) is simulated once and
copied for each case; the uninterrupted run is made once, on SQLite.  Light-curve
detrending works in chunks of 10 stars here, so that a kill lands between two chunks.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import fitsio
import numpy as np
import pytest

from trex import lock as locks
from trex.cli import main
from trex.config import load_config
from trex.db import connect
from trex.simulate import simulate_project

SIM = dict(frames=6, size=256, stars=300, seed=4)
PROJID = "12"  # the simulator's project id
#: everything before the light curves
FRAME_STAGES = "calibrate,extract,astrometry,photometry,magfit,subtract"
#: seconds any run of this test may take (a bound, never asserted as a timing)
TIMEOUT = 300


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults") / "template"
    main(["init", str(root)])
    simulate_project(root, **SIM)
    toml = root / "trex.toml"
    text, n = re.subn(r"(?m)^chunk_rows = 500000$", "chunk_rows = 60", toml.read_text())
    assert n == 1
    toml.write_text(text)
    return root


@pytest.fixture(scope="module")
def clean(template, tmp_path_factory) -> dict:
    """The uninterrupted run: its light curves and its row counts."""
    root = tmp_path_factory.mktemp("clean") / "p"
    shutil.copytree(template, root)
    assert main(["run", str(root)]) == 0
    return {"curves": snapshot(root), "counts": counts(root, None)}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request) -> str | None:
    """The database of a case: the project's SQLite file (None) or a fresh PostgreSQL one."""
    return None if request.param == "sqlite" else request.getfixturevalue("pg_url")


@pytest.fixture
def project(template, tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(locks, "POLL_SECONDS", 0.2)  # resumes --wait for a killed job's session
    root = tmp_path / "p"
    shutil.copytree(template, root)
    return root


def snapshot(root: Path) -> dict:
    """Per light-curve file: column names, the table's bytes and the header cards but the
    time of writing."""
    out = {}
    for path in sorted((root / "LC").rglob("*.fits")):
        with fitsio.FITS(str(path)) as fits:
            data = fits["LIGHTCURVE"].read()
            header = fits["LIGHTCURVE"].read_header()
            cards = [(r["name"], r["value"]) for r in header.records() if r["name"] != "DATE"]
        out[path.relative_to(root).as_posix()] = (data.dtype.names, data.tobytes(), cards)
    return out


def same_curves(root: Path, clean: dict, url: str | None = None) -> None:
    """The light curves of the uninterrupted (SQLite) run.  The configuration hash in
    the headers covers ``[database] url``: another database's run names its own."""
    now = snapshot(root)
    if url:
        ours = load_config(root / "trex.toml", {"database": {"url": url}}).sha
        theirs = load_config(root / "trex.toml").sha
        now = {name: (columns, data, [(k, v.replace(ours, theirs) if isinstance(v, str) else v)
                                      for k, v in cards])
               for name, (columns, data, cards) in now.items()}
    assert sorted(now) == sorted(clean["curves"]) and len(now) > 100
    for name, (columns, data, cards) in now.items():
        want = clean["curves"][name]
        assert columns == want[0], name
        if data != want[1]:  # say which column differs
            got = np.frombuffer(data, fitsio.FITS(str(root / name))["LIGHTCURVE"].read().dtype)
            ref = np.frombuffer(want[1], got.dtype)
            differ = [c for c in columns if got[c].tobytes() != ref[c].tobytes()]
            pytest.fail(f"{name}: columns {differ} differ from the uninterrupted run's")
        assert cards == want[2], name


def db_url(root: Path, url: str | None) -> str:
    return url or f"sqlite:///{root / 'trex.sqlite'}"


def counts(root: Path, url: str | None) -> dict:
    """Rows per table, and whether any (frame, star, aperture) or (frame, stage) repeats."""
    with connect(db_url(root, url)) as db:
        out = {}
        for table, key in (("ap_photometry", "framekey, objectid, aperture"),
                           ("ism_photometry", "framekey, objectid, aperture"),
                           ("framestatus", "framekey, stage"), ("lcinfo", "projid, objectid"),
                           ("lcstats", "projid, objectid, aperture")):
            total = db.query(f"SELECT count(*) FROM {table}")[0][0]
            distinct = db.query(f"SELECT count(*) FROM (SELECT DISTINCT {key} FROM {table}) t")[0][0]
            assert total == distinct, f"duplicate rows in {table}"
            out[table] = total
        out["failed"] = db.query("SELECT count(*) FROM framestatus WHERE status = 'failed'")[0][0]
    return out


def trex(root: Path, url: str | None, *args: str, **popen) -> subprocess.Popen:
    """``trex run ROOT`` in a process of its own."""
    command = [sys.executable, "-m", "trex", "run", str(root), *(["--db", url] if url else []),
               "--log-level", "warning", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


def resume(root: Path, url: str | None, clean: dict) -> None:
    """Run again to the end: the light curves and the row counts of the uninterrupted run."""
    assert main(["run", str(root), *(["--db", url] if url else []), "--wait"]) == 0
    same_curves(root, clean, url)
    assert counts(root, url) == clean["counts"]


def states(root: Path, url: str | None) -> int:
    """Per-frame states recorded so far (0 before the database has its tables)."""
    if url is None:
        path = root / "trex.sqlite"
        if not path.exists():
            return 0
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.5) as db:
                return db.execute("SELECT count(*) FROM framestatus").fetchone()[0]
        except sqlite3.OperationalError:  # no table yet, or the writer holds the file
            return 0
    import psycopg2

    try:
        with psycopg2.connect(url) as db, db.cursor() as cur:
            cur.execute("SELECT count(*) FROM framestatus")
            return cur.fetchone()[0]
    except psycopg2.errors.UndefinedTable:
        return 0


def complete_files_only(root: Path) -> None:
    """Every light-curve file there is reads whole, and no scratch copy is left in LC/."""
    for path in (root / "LC").rglob("*"):
        assert path.is_dir() or path.suffix == ".fits", f"a partial file {path}"
        if path.is_file():
            with fitsio.FITS(str(path)) as fits:
                assert fits["LIGHTCURVE"].get_nrows() == fits["LIGHTCURVE"].read_header()["NROWS"]


# -- kill -9 -----------------------------------------------------------------------------

@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.8])
def test_kill_at_a_fraction_of_the_run_then_resume(project, url, clean, fraction):
    target = fraction * clean["counts"]["framestatus"]
    proc = trex(project, url)
    deadline = time.monotonic() + TIMEOUT
    while states(project, url) < target:
        assert proc.poll() is None, f"the run ended before {fraction:.0%}: {proc.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    done = states(project, url)
    assert target <= done < clean["counts"]["framestatus"]
    counts(project, url)  # no duplicates in what the killed job left
    complete_files_only(project)
    resume(project, url, clean)


def test_kill_in_the_middle_of_detrending_then_resume(project, url, clean, capsys):
    """SIGKILL while light curves are being detrended and written (the third chunk of 10
    stars is held until the kill)."""
    marker = project / "PROJ" / "detrending"
    script = textwrap.dedent(f"""
        import pathlib, sys, time
        import trex.lightcurves as lc
        real, calls = lc.detrend_nights, []
        def held(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                pathlib.Path({str(marker)!r}).touch()
                time.sleep({TIMEOUT})
            return real(*args, **kwargs)
        lc.detrend_nights = held
        from trex.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    argv = ["run", str(project), *(["--db", url] if url else [])]
    proc = subprocess.Popen([sys.executable, "-c", script, *argv], stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    deadline = time.monotonic() + TIMEOUT
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    written = list((project / "LC" / PROJID).glob("*.fits"))
    assert 0 < len(written) < len(clean["curves"])  # cut in the middle of the merge
    complete_files_only(project)
    capsys.readouterr()
    resume(project, url, clean)
    assert "WARNING trex.lock: taking over the stale project lock" in capsys.readouterr().err


# -- failed writes -------------------------------------------------------------------------

def read_only(folder: Path) -> None:
    """No file can be made in ``folder``: chmod for a user, the immutable flag for root
    (whom permissions do not stop)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
    else:
        folder.chmod(0o555)


def writable(folder: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o755)


def one_line_fault(proc: subprocess.Popen, path: Path, cause: str) -> None:
    """Exit status 4 and one error line naming the path and the cause, no traceback."""
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 4, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("trex: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert f"cannot write {path}" in errors[0] and cause in errors[0], errors[0]
    assert "run the same command again" in errors[0]


def test_a_read_only_light_curve_folder_then_resume(project, url, clean):
    folder = project / "LC" / PROJID
    read_only(folder)
    try:
        proc = trex(project, url)
        first = folder / sorted(clean["curves"])[0].split("/")[-1]
        one_line_fault(proc, first, "operation not permitted" if os.geteuid() == 0
                       else "permission denied")
        assert list(folder.iterdir()) == []  # no partial light curve
        done = counts(project, url)  # consistent: no light curve recorded, no frame merged
        assert done["lcinfo"] == done["lcstats"] == done["failed"] == 0
        with connect(db_url(project, url)) as db:
            assert db.query("SELECT count(*) FROM framestatus WHERE stage = 'lightcurves'") == [(0,)]
    finally:
        writable(folder)
    resume(project, url, clean)


def test_a_file_size_limit_mid_run_then_resume(project, url, clean):
    """The frames processed without a limit, then the rest of the run under a 300 kB
    file-size limit (SIGXFSZ ignored, so a write fails with EFBIG): the TFA templates
    (426 kB) cannot be written."""
    proc = trex(project, url, "--stages", FRAME_STAGES)
    assert proc.wait(timeout=TIMEOUT) == 0, proc.stderr.read()[-3000:]

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

    proc = trex(project, url, preexec_fn=limited)
    templates = project / "BASE" / "reference-frames" / f"tfa-{PROJID}-F069.1-30.0.npy"
    one_line_fault(proc, templates, "file too large (file-size limit)")
    assert not templates.exists() and list((project / "LC").rglob("*.fits")) == []
    assert counts(project, url)["lcinfo"] == 0
    resume(project, url, clean)


# -- two runs at once -----------------------------------------------------------------------

def test_two_runs_at_once_one_refuses(project, url, clean):
    first, second = trex(project, url), trex(project, url)
    results = [(p.wait(timeout=TIMEOUT), p.stderr.read()) for p in (first, second)]
    statuses = sorted(status for status, _ in results)
    assert statuses == [0, 2], results
    refusal = next(err for status, err in results if status == 2)
    assert "another trex run holds the project" in refusal and "pid" in refusal
    same_curves(project, clean, url)
    assert counts(project, url) == clean["counts"]


def test_two_runs_at_once_with_wait_the_second_waits(project, url, clean):
    first, second = trex(project, url, "--wait"), trex(project, url, "--wait")
    results = [(p.wait(timeout=TIMEOUT), p.stderr.read()) for p in (first, second)]
    assert [status for status, _ in results] == [0, 0], results
    assert any("waiting for it (--wait)" in err for _, err in results)
    same_curves(project, clean, url)
    assert counts(project, url) == clean["counts"]
