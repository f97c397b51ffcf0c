"""Logs a batch job can be read by: progress and the summary at ``--log-level WARNING``,
third-party warnings as formatted log lines (or not at all), no warning for a
singular kernel fit; a small full run of the ``trex`` command whose stderr holds
nothing else."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from trex.log import setup_logging
from trex.stages import NAMES

#: a line of trex's log: 2026-11-29T22:30:00 rank 0 INFO trex.calibrate: message
LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d rank \d+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
                  r"[\w.]+: ")
#: what a warning of Python, astropy or matplotlib looks like when printed bare
BARE = re.compile(r"Warning\b|warnings\.warn|^WARNING: |Matplotlib is", re.MULTILINE)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def restore_logging():
    """Undo what setup_logging does to warnings and the root logger."""
    saved = warnings.showwarning, list(logging.getLogger().handlers)
    yield
    warnings.showwarning = saved[0]
    logging.getLogger().handlers[:] = saved[1]


@pytest.mark.parametrize("level, shown", [("DEBUG", True), ("INFO", True),
                                          ("warning", True), ("ERROR", False)])
def test_progress_has_its_own_level(level, shown, restore_logging):
    out = io.StringIO()
    setup_logging(level, stream=out)
    logging.getLogger("trex.progress").info("photometry: 5/10 (50 %)")
    logging.getLogger("trex.pipeline").info("photometry: 10 to do")
    text = out.getvalue()
    assert ("photometry: 5/10 (50 %)" in text) == shown
    assert ("10 to do" in text) == (level.upper() in ("DEBUG", "INFO"))
    assert all(LINE.match(line) for line in text.splitlines())


def test_third_party_warnings_become_one_log_line_each(restore_logging):
    from astropy.io.fits.verify import VerifyWarning

    out = io.StringIO()
    setup_logging("WARNING", rank=3, stream=out)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        for _ in range(3):
            warnings.warn("Card is too long", VerifyWarning, stacklevel=1)
            warnings.warn("tight_layout not applied", UserWarning, stacklevel=1)
            np.log(np.zeros(1))  # numpy RuntimeWarning: divide by zero
    logging.getLogger("matplotlib").warning("building the font cache")
    lines = out.getvalue().splitlines()
    assert all(LINE.match(line) and " rank 3 " in line for line in lines), lines
    assert sum("VerifyWarning: Card is too long" in line for line in lines) == 1
    assert sum("UserWarning: tight_layout not applied" in line for line in lines) == 1
    assert sum("RuntimeWarning: divide by zero" in line for line in lines) == 1
    assert any("matplotlib: building the font cache" in line for line in lines)
    assert all("trex.warnings" in line for line in lines if "Warning:" in line)


def test_a_singular_kernel_fit_is_solved_without_a_warning(caplog):
    from trex.kernelfit import _solve

    matrix = np.array([[4.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 9.0]])  # rank 2
    rhs = np.array([2.0, 1.0, 3.0])
    with caplog.at_level(logging.DEBUG, logger="trex"):
        sol = _solve(matrix.copy(), rhs)
    np.testing.assert_allclose(matrix @ sol, rhs, atol=1e-9)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("singular" in r.getMessage() for r in caplog.records)


def _trex(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "trex", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=900)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """scripts/demo.sh on a small night: init, simulate, run and report at WARNING,
    status; {step: completed process}."""
    here = tmp_path_factory.mktemp("demo")
    root = here / "demo"
    steps = {
        "init": ("init", str(root)),
        "simulate": ("simulate", str(root), "--frames", "6", "--size", "512", "--stars", "600"),
        "run": ("--log-level", "WARNING", "run", str(root)),
        "status": ("status", str(root)),
        "report": ("--log-level", "WARNING", "report", str(root)),
    }
    done = {}
    for name, args in steps.items():
        done[name] = _trex(*args, cwd=here)
        assert done[name].returncode == 0, (name, done[name].stderr)
    return root, done


def test_a_run_at_warning_shows_progress_and_the_summary(small_run):
    _, done = small_run
    lines = done["run"].stderr.splitlines()
    progress = [line for line in lines if " INFO trex.progress: " in line]
    for phase in ("inventory", "calibrate+extract+astrometry+photometry", "magfit+subtract",
                  "light curves: merge"):
        assert any(re.search(rf"trex.progress: {re.escape(phase)}: (\d+)/\1 \(100 %\), "
                             r"[\d.]+/s, elapsed \d+:\d\d:\d\d, ETA \d+:\d\d:\d\d$", line)
                   for line in progress), phase
    root, _ = small_run
    written = len(list((root / "LC").rglob("*.fits")))
    summary = progress[-1]
    assert re.search(r"trex run done in \d+:\d\d:\d\d: ", summary), summary
    # the raw files (6 object + the simulator's calibration frames), frames per pass,
    # and the light curves written, as counted on disk
    raw = len([p for p in (root / "RAW").rglob("*") if p.is_file()])
    for part in (f"{raw} raw files read (0 bad)", "calibrate+extract+astrometry+photometry 6 frames",
                 "magfit+subtract 6 frames", f"{written} light curves written"):
        assert part in summary, (part, summary)
    assert len(progress) == len(lines)  # nothing else at WARNING on a good night


def test_no_bare_warning_text_in_a_small_full_run(small_run):
    root, done = small_run
    for name, proc in done.items():
        stray = [line for line in proc.stderr.splitlines() if not LINE.match(line)]
        assert not stray, (name, stray)
        assert not BARE.search(proc.stderr), (name, proc.stderr)
        assert "trex.warnings" not in proc.stderr, (name, proc.stderr)
    # the frames trex wrote have no card that astropy would have to cut
    from astropy.io import fits
    from astropy.io.fits.verify import VerifyWarning

    from trex.fits import read_header

    written = sorted((root / "RED").rglob("*.fits")) + sorted((root / "BASE").rglob("*.fits"))
    assert len(written) >= 6
    for path in written:
        with warnings.catch_warnings():
            warnings.simplefilter("error", VerifyWarning)
            read_header(path).tostring()
            fits.getheader(path).tostring()


def test_status_and_report_of_the_small_run(small_run):
    root, done = small_run
    out = done["status"].stdout
    rows = [line.split() for line in out.splitlines() if line.startswith("    ")]
    assert [r[0] for r in rows[1:]] == list(NAMES[:-1])
    assert all(r[1:] == ["6", "0", "0"] for r in rows[1:]), rows  # done, failed, waiting
    index = (root / "PROJ" / "report" / "index.md").read_text()
    assert index.startswith("# trex report\n\n## Run summary\n")
    assert "| lightcurves | 6 | 0 | 0 |" in index and "| trex | " in index
    # the RMS table comes from the lcstats table of the database, by aperture radius
    assert "| aperture 2.45 px | `arm_001` |" in index
    assert "no light-curve statistics" not in index and "aperture 0" not in index
