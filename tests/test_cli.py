"""The command line: help texts, ``trex status`` against a hand-built ledger, read-only
commands that never create a database, ``trex simulate --realistic``."""

from __future__ import annotations

import argparse
import json

import pytest

from trex.cli import _Help, build_parser, main
from trex.config import Config
from trex.db import connect
from trex.project import init_project
from trex.stages import BY_NAME, NAMES

EXIT_LINES = ("0  done", "1  a bug", "2  cannot start", "3  the command's stage is not available",
              "4  a write failed", "5  stopped by a signal")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_is_described_and_every_option_shows_its_default():
    parser = build_parser()
    commands = _subparsers(parser)
    assert set(commands) == {"init", "simulate", "run", "status", "report", "bench", *NAMES}
    for name, sub in {"trex": parser, **commands}.items():
        assert sub.description and len(sub.description) > 30, name
        formatter = _Help(prog=sub.prog)
        for action in sub._actions:
            if action.option_strings and action.dest not in ("help", "version"):
                text = formatter._expand_help(action)
                assert "default" in text, (name, action.option_strings, text)
                if action.default not in (None, False, argparse.SUPPRESS):  # the value is shown
                    assert str(action.default) in text, (name, action.option_strings)
        assert "(default: 1)" in commands["simulate"].format_help()  # --nights


def test_help_of_trex_and_trex_run_states_the_exit_statuses(capsys):
    for argv in (["--help"], ["run", "--help"]):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 0
        out = capsys.readouterr().out
        assert "exit status:" in out, argv
        for line in EXIT_LINES:
            assert line in out, (argv, line)


def _insert_frame(db, key: int, night: str, imagetyp: str, isok: bool = True,
                  reason: str | None = None) -> None:
    db.execute("INSERT INTO frameinfo (framekey, rawpath, night, imagetyp, projid, field, isok, "
               "reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
               (key, f"RAW/{night}/f{key}.fits", night, imagetyp, "12", "F1", isok, reason))


def _insert_state(db, key: int, stage: str, status: str, sha: str,
                  reason: str | None = None) -> None:
    db.execute("INSERT INTO framestatus (framekey, stage, status, reason, configsha, inputs, "
               "updated) VALUES (?, ?, ?, ?, ?, '', 'now')", (key, stage, status, reason, sha))


def test_status_lists_stages_in_order_with_waiting_frames(tmp_path, db_url, capsys):
    project = init_project(tmp_path / "p")
    config = Config()
    sha = {name: config.section_sha(BY_NAME[name].settings) for name in NAMES}
    frame_stages = NAMES[:-1]  # detrend is per star, not per frame
    with connect(db_url) as db:
        db.create_schema()
        for key in (1, 2, 3, 4):
            _insert_frame(db, key, "n1", "object")
        _insert_frame(db, 5, "n1", "bias")
        _insert_frame(db, 6, "n1", None, isok=False, reason="truncated: 10 bytes")
        _insert_frame(db, 7, "n2", "object")
        for stage in frame_stages:
            _insert_state(db, 1, stage, "done", sha[stage])   # frame 1: everything done
        _insert_state(db, 2, "calibrate", "done", sha["calibrate"])
        _insert_state(db, 2, "extract", "done", sha["extract"])
        _insert_state(db, 2, "astrometry", "failed", sha["astrometry"], "no catalog for F1")
        _insert_state(db, 3, "calibrate", "done", sha["calibrate"])  # frame 4: nothing yet
        for stage in frame_stages:  # frame 7: magfit done under older settings
            _insert_state(db, 7, stage, "done", "older" if stage == "magfit" else sha[stage])
        db.execute("INSERT INTO phasestatus (phase, item, status, reason, updated) "
                   "VALUES ('catalog', 'F9', 'failed', 'no catalog BASE/CAT/F9.csv', 'now')")
    for name in ("a.fits", "b.fits.fz"):  # on disk, not read yet
        (project.raw / "n3").mkdir(exist_ok=True)
        (project.raw / "n3" / name).write_bytes(b"")

    assert main(["status", str(project.root), "--db", db_url, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert list(status["stages"]) == list(NAMES)
    waiting = {stage: {n: c["pending"] for n, c in per.items()}
               for stage, per in status["stages"].items()}
    # calibrate: frame 4; extract..: frames 3 and 4 (frame 2 failed astrometry: held back
    # from photometry on, but its astrometry state is current); n2: magfit is stale, so
    # magfit and the light curves (which use it) wait, subtract does not
    assert waiting["calibrate"] == {"n1": 1, "n2": 0}
    assert waiting["extract"] == waiting["astrometry"] == {"n1": 2, "n2": 0}
    assert waiting["photometry"] == waiting["subtract"] == {"n1": 2, "n2": 0}
    assert waiting["magfit"] == waiting["lightcurves"] == {"n1": 2, "n2": 1}
    assert waiting["detrend"] == {}
    assert status["stages"]["astrometry"]["n1"] == {"done": 1, "failed": 1, "pending": 2}
    assert status["nights"]["n1"]["types"] == {"object": 4, "bias": 1, "unreadable": 1}
    assert status["nights"]["n1"]["bad"] == 1
    assert status["nights"]["n3"] == {"frames": 0, "bad": 0, "types": {}, "unread": 2}
    assert {"stage": "astrometry", "reason": "no catalog for F1", "frames": 1} in status["failures"]
    assert {"stage": "inventory", "reason": "truncated: 10 bytes", "frames": 1} in status["failures"]
    assert status["phase_failures"] == [{"phase": "catalog", "item": "F9",
                                         "reason": "no catalog BASE/CAT/F9.csv"}]

    assert main(["status", str(project.root), "--db", db_url]) == 0
    text = capsys.readouterr().out
    rows = [line.split()[0] for line in text.splitlines() if line.startswith("    ")
            and line.split()[0] in NAMES]
    assert rows == list(NAMES[:-1]) * 2  # nights n1 and n2, each in pipeline order
    assert f"    {'magfit':12s} {1:7d} {0:7d} {1:7d}" in text  # n2: done, but stale
    assert "2 raw files not read yet" in text and "catalog F9: no catalog" in text
    assert "to try every failed frame again now: trex run --retry-failed" in text


def test_read_only_commands_never_create_a_database(tmp_path, capsys):
    root = tmp_path / "p"
    assert main(["init", str(root)]) == 0
    missing = tmp_path / "elsewhere" / "typo.sqlite"
    for command in ("status", "report"):
        assert main([command, str(root), "--db", f"sqlite:///{missing}"]) == 2
        err = capsys.readouterr().err
        assert f"no database at {missing}: run trex run first or check --db" in err
    assert not missing.exists() and not missing.parent.exists()
    # the project's own database before the first run: status lists the files on disk
    assert main(["report", str(root)]) == 2
    assert main(["status", str(root)]) == 0
    assert "not created yet" in capsys.readouterr().out
    assert not (root / "trex.sqlite").exists()


def test_simulate_realistic_selects_the_realistic_world(tmp_path):
    from trex.simulate import REALISTIC
    from trex.simulate.realism import resolve
    from trex.simulate.truth import load_params

    for flag, world in (([], "simple"), (["--realistic"], "realistic")):
        root = tmp_path / world
        assert main(["simulate", str(root), "--frames", "1", "--size", "96", "--stars", "30",
                     *flag]) == 0
        params = load_params(root)
        assert (resolve(params["realism"]) == REALISTIC) == (world == "realistic")


@pytest.mark.parametrize("command", ["status", "run"])
def test_a_config_value_out_of_its_choices_stops_at_once_with_status_2(tmp_path, capsys, command):
    project = init_project(tmp_path / "p")
    text = project.config_path.read_text().replace('overscan = "row"', 'overscan = "rows"')
    project.config_path.write_text(text)
    assert main([command, str(project.root)]) == 2
    err = capsys.readouterr().err
    assert f"trex: error: {project.config_path}: [calibrate] overscan = \"rows\": allowed: " \
           "row, median, none" in err
    assert not (project.root / "trex.sqlite").exists()  # nothing was started


@pytest.mark.parametrize("argv", [["--log-level", "debug", "status"], ["status", "--log-level", "Debug"],
                                  ["--log-level", "error", "run", "--log-level", "debug"]])
def test_log_level_in_any_case_before_or_after_the_command(tmp_path, argv):
    import logging

    root = tmp_path / "p"
    init_project(root)
    assert main([*argv, str(root)]) == 0
    assert logging.getLogger("trex").level == logging.DEBUG
    main(["--log-level", "warning", "status", str(root)])  # before only: kept
    assert logging.getLogger("trex").level == logging.WARNING


def test_a_closed_pipe_is_not_a_traceback(tmp_path):
    import os
    import subprocess
    import sys

    root = tmp_path / "p"
    init_project(root)
    proc = subprocess.Popen([sys.executable, "-m", "trex", "status", str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    proc.stdout.close()  # like `| head -0`: the reader is gone before trex writes
    err = proc.stderr.read()
    assert proc.wait() == 0
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_nights_must_name_night_folders(tmp_path, capsys):
    project = init_project(tmp_path / "p")
    (project.raw / "2026-11-29").mkdir()
    assert main(["run", str(project.root), "--nights", "2026-11-29, 2026-11-30"]) == 2
    assert f"--nights: no folder {project.raw / '2026-11-30'}" in capsys.readouterr().err
    assert main(["run", str(project.root), "--nights", "2026-11-29"]) == 0


def test_run_nights_works_on_those_nights_only(tmp_path):
    """``--nights``: the other night's raw files are not read, its frames not processed,
    its rows not merged; a second run with the other night adds them."""
    import fitsio

    from trex.simulate import simulate_project

    root = tmp_path / "p"
    init_project(root)
    simulate_project(root, nights=2, frames=3, size=256, stars=200, seed=2)
    first, second = sorted(p.name for p in (root / "RAW").iterdir())
    url = f"sqlite:///{root / 'trex.sqlite'}"

    def recorded() -> dict:
        with connect(url) as db:
            return {night: (files, states) for night, files, states in db.query(
                "SELECT f.night, count(DISTINCT f.framekey), count(s.stage) FROM frameinfo f "
                "LEFT JOIN framestatus s ON s.framekey = f.framekey GROUP BY f.night")}

    def rows() -> set:
        out = set()
        for path in (root / "LC").rglob("*.fits"):
            with fitsio.FITS(str(path)) as fits:
                out.add(fits["LIGHTCURVE"].get_nrows())
        return out

    assert main(["run", str(root), "--nights", first]) == 0
    files = len(list((root / "RAW" / first).iterdir()))
    assert list(recorded()) == [first] and recorded()[first][0] == files
    assert max(rows()) == 3  # the first night's frames only
    assert main(["run", str(root), "--nights", second]) == 0
    assert set(recorded()) == {first, second} and recorded()[second][1] > 0
    assert max(rows()) == 6
