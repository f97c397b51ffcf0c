"""A night at a time: adding a night extends the archive, and gives the same light
curves as one run over both nights with the same references; a killed second
night resumes without duplicates."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from trex.cli import main
from trex.db import connect
from trex.lcformat import read_lightcurve
from trex.simulate import simulate_project

STAGES = "calibrate,extract,astrometry,photometry,magfit,lightcurves"
SIM = dict(frames=6, size=512, stars=800, seed=11)


def lightcurves(root: Path) -> dict:
    return {p.name: read_lightcurve(p) for p in sorted((root / "LC").rglob("*.fits"))
}


def run(root: Path) -> None:
    assert main(["run", str(root), "--stages", STAGES]) == 0


def same_light_curves(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and len(a) > 100
    for name in a:
        assert len(a[name]) == len(b[name]), name
        for column in a[name].colnames:
            np.testing.assert_array_equal(a[name][column], b[name][column], err_msg=name)


def count_rows(root: Path) -> tuple[int, int]:
    with connect(f"sqlite:///{root / 'trex.sqlite'}") as db:
        total = db.query("SELECT count(*) FROM ap_photometry")[0][0]
        distinct = db.query("SELECT count(*) FROM (SELECT DISTINCT framekey, objectid, aperture "
                            "FROM ap_photometry) AS t")[0][0]
    return total, distinct


@pytest.fixture(scope="module")
def two_ways(tmp_path_factory):
    base = tmp_path_factory.mktemp("inc")
    # night by night
    step = base / "step"
    main(["init", str(step)])
    simulate_project(step, **SIM)
    run(step)
    after_first = lightcurves(step)
    simulate_project(step, add_night=True)
    run(step)
    # both nights at once, with the references the first night made
    once = base / "once"
    main(["init", str(once)])
    simulate_project(once, nights=2, **SIM)
    shutil.copytree(step / "BASE" / "reference-frames", once / "BASE" / "reference-frames",
                    dirs_exist_ok=True)
    run(once)
    return step, once, after_first


def test_second_night_extends_the_light_curves(two_ways):
    step, _, after_first = two_ways
    now = lightcurves(step)
    grown = [n for n in after_first if n in now and len(now[n]) > len(after_first[n])]
    assert len(grown) > 0.8 * len(after_first)
    table = now[grown[0]]
    nights = sorted(v.split()[0] for k, v in table.meta.items() if k.startswith("NIGHT"))
    assert len(nights) == 2 and table.meta["NROWS"] == len(table)
    assert np.all(np.diff(table["rjd"]) > 0)


def test_night_by_night_equals_all_at_once(two_ways):
    step, once, _ = two_ways
    same_light_curves(lightcurves(step), lightcurves(once))


def test_killed_second_night_resumes_without_duplicates(two_ways, tmp_path):
    _, once, _ = two_ways
    root = tmp_path / "kill"
    main(["init", str(root)])
    simulate_project(root, **SIM)
    run(root)
    simulate_project(root, add_night=True)
    trex = Path(sys.executable).parent / "trex"
    proc = subprocess.Popen([str(trex), "run", str(root), "--stages", STAGES,
                             "--set", "run.progress_seconds=0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    for line in proc.stderr:  # kill -9 once a first batch of the second night is recorded
        if "photometry: 4/" in line or time.time() > deadline:
            os.kill(proc.pid, signal.SIGKILL)
            break
    assert proc.wait() == -signal.SIGKILL
    assert 0 < count_rows(root)[0] < count_rows(once)[0]  # the night was cut short
    run(root)
    total, distinct = count_rows(root)
    assert total == distinct
    same_light_curves(lightcurves(root), lightcurves(once))
