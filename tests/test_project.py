"""Project layout, root discovery, safe file names and the CLI's init/status."""

import json
import subprocess
import sys

import pytest

from trex.cli import main
from trex.config import Config, load_config
from trex.project import Project, ProjectError, find_project, init_project, safe_name

LAYOUT = ["BASE/CAL", "BASE/CAT", "BASE/reference-frames", "LC", "PROJ", "RAW", "RED", "REDTEMP"]


def test_init_creates_layout_and_config(tmp_path):
    project = init_project(tmp_path / "p")
    for sub in LAYOUT:
        assert (project.root / sub).is_dir(), sub
    assert load_config(project.config_path) == Config()
    project.config_path.write_text("[camera]\ngain = 2.0\n")
    init_project(project.root)  # keeps the user's configuration
    assert load_config(project.config_path).camera.gain == 2.0


def test_find_project_from_argument_env_and_parents(tmp_path):
    project = init_project(tmp_path / "p")
    deep = project.root / "RAW" / "night1"
    deep.mkdir()
    assert find_project(str(project.root)).root == project.root
    assert find_project(None, environ={"TREX_ROOT": str(project.root)}).root == project.root
    assert find_project(None, environ={}, cwd=deep).root == project.root
    with pytest.raises(ProjectError, match="not a trex project"):
        find_project(str(tmp_path))
    with pytest.raises(ProjectError, match="no trex.toml"):
        find_project(None, environ={}, cwd=tmp_path)


@pytest.mark.parametrize("name", ["../../etc/passwd", "/abs/path", "a/b", "x\x00y", "HAT 1"])
def test_safe_name_never_leaves_the_folder(tmp_path, name):
    target = (tmp_path / safe_name(name)).resolve()
    assert target.parent == tmp_path.resolve()


@pytest.mark.parametrize("name", ["", ".", ".."])
def test_safe_name_rejects_empty(name):
    with pytest.raises(ValueError):
        safe_name(name)


def test_paths_derive_from_root(tmp_path):
    p = Project(tmp_path)
    assert p.lc("12") == tmp_path / "LC" / "12"
    assert p.red("../x") == tmp_path / "RED" / ".._x"
    assert p.database_url(Config()) == f"sqlite:///{tmp_path / 'trex.sqlite'}"


def test_cli_init_and_status(tmp_path, capsys):
    root = tmp_path / "proj"
    assert main(["init", str(root)]) == 0
    assert main(["status", str(root), "--json"]) == 0
    status = json.loads(capsys.readouterr().out.split("\n", 2)[-1])
    assert status["root"] == str(root.resolve()) and status["nights"] == {}
    assert main(["status", str(tmp_path / "nothing")]) == 2


def test_cli_help_lists_every_stage():
    out = subprocess.run([sys.executable, "-m", "trex", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for command in ("init", "simulate", "run", "calibrate", "extract", "astrometry",
                    "photometry", "subtract", "lightcurves", "detrend", "status", "report",
                    "bench"):
        assert command in out


def test_run_jobs_relaunches_under_mpiexec(tmp_path):
    root = tmp_path / "proj"
    assert main(["init", str(root)]) == 0
    out = subprocess.run([sys.executable, "-m", "trex", "run", str(root), "--jobs", "2",
                          "--stages", "calibrate"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "trex run on 2 rank(s)" in out.stderr


def test_flags_are_distinct_bits_and_decode():
    from trex.flags import MASK, PHOT, SOURCE, describe

    for registry in (MASK, PHOT, SOURCE):
        bits = [f.bit for f in registry.values()]
        assert len(set(bits)) == len(bits) and all(b & (b - 1) == 0 for b in bits)
    assert describe(PHOT, PHOT["MASKED"].bit | PHOT["NOT_FITTED"].bit) == ["MASKED", "NOT_FITTED"]
