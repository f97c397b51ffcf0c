"""A night at a time, in place: a new night's rows are appended to each light curve (the
file's bytes before them untouched), detrended from the night's own rows, and its
statistics combined with the recorded ones; night A then night B equals A and B at once;
a job killed in the middle of an append resumes to the same light curves."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import run_stages
from test_lightcurves import register

from trex import lcformat, lightcurves
from trex.db import connect
from trex.lcformat import read_lightcurve
from trex.photometry import aphot_dtype
from trex.products import save_product
from trex.project import init_project

NSTARS, PER_NIGHT, NAPER = 50, 60, 3
STAGES = ["lightcurves", "detrend"]


def make_nights(root: Path, nights: int = 2, seed: int = 4):
    """Products of ``nights`` nights of ``PER_NIGHT`` frames of every star, with a PSF
    width trend, a common (cloud) trend and noise, so that EPD and TFA have work."""
    rng = np.random.default_rng(seed)
    catalog = {"objectid": np.array([f"TRX-{i:05d}" for i in range(NSTARS)]),
               "ra": rng.uniform(59, 61, NSTARS), "dec": rng.uniform(-31, -29, NSTARS),
               "mag": rng.uniform(8, 12, NSTARS)}
    x, y = rng.uniform(20, 2000, NSTARS), rng.uniform(20, 2000, NSTARS)
    entries = []
    for n in range(nights):
        t = 61000.55 + n + np.linspace(0, 0.3, PER_NIGHT)
        s = 0.35 + 0.04 * np.sin(2 * np.pi * (t - t[0]) / 0.2 + n)
        common = 0.01 * np.sin(2 * np.pi * (t - t[0]) / 0.13 + 2 * n)
        for i in range(PER_NIGHT):
            key = n * PER_NIGHT + i + 1
            rows = np.zeros(NSTARS, dtype=aphot_dtype(NAPER))
            rows["star"] = np.arange(NSTARS)
            rows["rjd"], rows["bjd"] = t[i], t[i] + 2400000.0
            rows["xcc"], rows["ycc"] = x + rng.normal(0, 0.1, NSTARS), y
            rows["bgv"], rows["bge"] = 800.0, 2.0
            rows["fsv"], rows["fdv"], rows["fkv"] = s[i], 0.01, 0.005
            for a in range(NAPER):
                mag = catalog["mag"] + 0.3 * (s[i] - 0.35) + common[i] + rng.normal(0, 0.003, NSTARS)
                rows[f"aim_{a:03d}"] = rows[f"arm_{a:03d}"] = mag
                rows[f"aie_{a:03d}"] = 0.003
            redpath = Path("RED") / "7" / f"frame-{key:05d}.fits"
            save_product(root / redpath, "aphot", rows)
            entries.append(lightcurves.FrameEntry(key, str(redpath), f"2026-11-{28 + n}", "7",
                                                  "F1", t[i]))
    return catalog, entries


def curves(root: Path) -> dict:
    return {p.name: read_lightcurve(p) for p in sorted((root / "LC" / "7").glob("*.fits"))}


def same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and len(a) == NSTARS
    for name in a:
        assert a[name].colnames == b[name].colnames
        for column in a[name].colnames:
            if column != "time":
                np.testing.assert_array_equal(a[name][column], b[name][column], err_msg=name)
        nights = sorted(k for k in a[name].meta if k.startswith("NIGHT"))
        assert [a[name].meta[k].split()[:2] for k in nights] == \
            [b[name].meta[k].split()[:2] for k in nights]


def lcstats(root: Path) -> dict:
    with connect(f"sqlite:///{root / 'trex.sqlite'}") as db:
        return db.query_columns("SELECT * FROM lcstats ORDER BY objectid, aperture")


@pytest.fixture(scope="module")
def two_ways(tmp_path_factory):
    """Night A then night B (appended) and both at once, with the same templates."""
    base = tmp_path_factory.mktemp("append")
    step = init_project(base / "step")
    catalog, entries = make_nights(step.root)
    register(step, catalog, entries[:PER_NIGHT])
    run_stages(step, STAGES)
    first = {p.name: p.read_bytes() for p in (step.root / "LC" / "7").glob("*.fits")}
    register(step, catalog, entries[PER_NIGHT:])
    summary = run_stages(step, STAGES)
    once = init_project(base / "once")
    make_nights(once.root)
    register(once, catalog, entries)
    shutil.copytree(step.reference_frames, once.reference_frames, dirs_exist_ok=True)
    run_stages(once, STAGES)
    return step, once, first, summary


def test_a_new_night_is_appended_in_place(two_ways):
    step, _, first, summary = two_ways
    assert summary["light curves: scatter"] == (PER_NIGHT, 0)
    for name, before in first.items():
        path = step.root / "LC" / "7" / name
        layout = lcformat.read_layout(path)
        assert layout.nrows == 2 * PER_NIGHT
        old = slice(layout.data_start, layout.data_start + PER_NIGHT * layout.dtype.itemsize)
        after = path.read_bytes()
        assert after[old] == before[old], name  # the first night's rows: the same bytes
        assert after[:layout.table_start] == before[:layout.table_start]  # primary header


def test_night_by_night_equals_both_at_once(two_ways):
    step, once, _, _ = two_ways
    a, b = curves(step.root), curves(once.root)
    same(a, b)
    fitted = sum(int(np.isfinite(t["atf_001"]).sum()) for t in a.values())
    assert fitted > 0.9 * NSTARS * 2 * PER_NIGHT  # both nights detrended
    sa, sb = lcstats(step.root), lcstats(once.root)
    for name in sa:
        if sa[name].dtype.kind == "f":
            np.testing.assert_allclose(sa[name], sb[name], rtol=1e-9, atol=1e-12, err_msg=name)
        else:
            assert list(sa[name]) == list(sb[name]), name
    assert set(sa["atf_nights"]) == {2}


def test_a_job_killed_in_an_append_resumes_to_the_same_light_curves(two_ways, tmp_path):
    _, once, _, _ = two_ways
    root = tmp_path / "kill"
    project = init_project(root)
    catalog, entries = make_nights(root)
    register(project, catalog, entries[:PER_NIGHT])
    shutil.copytree(once.reference_frames, project.reference_frames, dirs_exist_ok=True)
    run_stages(project, STAGES)
    register(project, catalog, entries[PER_NIGHT:])
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from trex import fitstable
        calls = []
        real = os.pwrite
        def pwrite(fd, data, offset):
            calls.append(offset)
            if len(calls) == 10:  # the fifth star: its rows written, not its header
                os._exit(9)
            return real(fd, data, offset)
        fitstable.os.pwrite = pwrite
        from conftest import run_stages
        from trex.project import Project
        run_stages(Project(__import__("pathlib").Path({str(root)!r})), {STAGES!r})
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 9, out.stderr[-2000:]
    run_stages(project, STAGES)  # resume
    same(curves(root), curves(once.root))
    import fitsio
    for path in (root / "LC" / "7").glob("*.fits"):
        with fitsio.FITS(str(path)) as fits:
            assert len(fits) == 2 and fits[1].get_nrows() == 2 * PER_NIGHT
