"""Transposition into light curves: exact values, order, idempotency, increments, MPI."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_stages

from trex import lcformat, lightcurves
from trex.config import Config
from trex.db import connect
from trex.fitstable import write_table
from trex.lcformat import column_names, read_lightcurve
from trex.ledger import Ledger
from trex.products import save_product
from trex.project import init_project

NSTARS, NFRAMES, NAPER = 40, 24, 3


def make_products(root: Path, seed: int = 0, suffix: str = ""):
    """Frames with aperture photometry products of random subsets of the stars (frame
    files named ``frame-NNNN<suffix>.fits``)."""
    rng = np.random.default_rng(seed)
    catalog = {"objectid": np.array([f"TRX-{i:05d}" for i in range(NSTARS)]),
               "ra": rng.uniform(50, 70, NSTARS), "dec": rng.uniform(-40, -20, NSTARS),
               "mag": rng.uniform(8, 14, NSTARS)}
    dtype = [("star", "i8"), ("rjd", "f8"), ("bjd", "f8"), ("xcc", "f8"), ("ycc", "f8"),
             ("aim_000", "f4"), ("aim_001", "f4"), ("aim_002", "f4"), ("aiq_000", "i2")]
    entries, truth = [], {}
    times = 61000.5 + np.sort(rng.uniform(0, 1, NFRAMES))
    order = rng.permutation(NFRAMES)  # framekeys not in time order
    for i in range(NFRAMES):
        framekey = int(order[i]) + 1
        stars = np.sort(rng.choice(NSTARS, size=30, replace=False))
        rows = np.zeros(len(stars), dtype=dtype)
        rows["star"] = stars
        rows["rjd"] = times[i]
        rows["bjd"] = times[i] + 2400000.0 + 0.001 * stars
        rows["xcc"] = rng.uniform(0, 1000, len(stars))
        rows["ycc"] = rng.uniform(0, 1000, len(stars))
        for a in range(NAPER):
            rows[f"aim_{a:03d}"] = rng.normal(12, 0.1, len(stars))
        redpath = Path("RED") / "7" / f"frame-{framekey:04d}{suffix}.fits"
        save_product(root / redpath, "aphot", rows)
        night = "2026-11-28" if i < NFRAMES // 2 else "2026-11-29"
        entries.append(lightcurves.FrameEntry(framekey, str(redpath), night, "7", "F1", times[i]))
        for r in rows:
            truth.setdefault(int(r["star"]), []).append((framekey, r))
    return catalog, entries, truth


def register(project, catalog, entries) -> None:
    """The frames as the ledger knows them after photometry, and the field catalog."""
    (project.cat / "F1.csv").write_text("objectid,ra,dec,mag\n" + "".join(
        f"{o},{float(r)!r},{float(d)!r},{float(m)!r}\n"
        for o, r, d, m in zip(catalog["objectid"], catalog["ra"], catalog["dec"], catalog["mag"])))
    with connect(project.database_url(Config())) as db:
        db.create_schema()
        for e in entries:
            db.execute("INSERT INTO frameinfo (framekey, rawpath, night, imagetyp, projid, field, "
                       "jd, isok) VALUES (?, ?, ?, 'object', ?, ?, ?, ?)",
                       (e.framekey, f"RAW/{e.night}/{e.framekey}.fits", e.night, e.projid, e.field,
                        e.rjd + 2400000.0, True))
            db.execute("INSERT INTO calibratedframes (framekey, projid, redpath, frameisok) "
                       "VALUES (?, ?, ?, ?)", (e.framekey, e.projid, e.redpath, True))
            db.execute("INSERT INTO framestatus (framekey, stage, status, updated) "
                       "VALUES (?, 'photometry', 'done', 'now')", (e.framekey,))


def lcinfo(project) -> dict[str, np.ndarray]:
    with connect(project.database_url(Config())) as db:
        return db.query_columns("SELECT objectid, nobs, path FROM lcinfo ORDER BY objectid")


@pytest.fixture
def setup(tmp_path):
    project = init_project(tmp_path / "p")
    catalog, entries, truth = make_products(project.root)
    return project, catalog, entries, truth


def lc_files(project):
    return sorted((project.root / "LC" / "7").glob("*.fits"))


def test_values_order_and_header(setup):
    project, catalog, entries, truth = setup
    register(project, catalog, entries)
    summary = run_stages(project, ["lightcurves"])
    assert summary["light curves: scatter"] == (NFRAMES, 0)
    assert len(truth) == len(lc_files(project))
    info = lcinfo(project)
    assert list(info["objectid"]) == [f"TRX-{star:05d}" for star in sorted(truth)]
    for objectid, nobs, path in zip(info["objectid"], info["nobs"], info["path"]):
        assert nobs == len(truth[int(objectid[4:])]) and path == f"LC/7/{objectid}.fits"
    for star, measured in truth.items():
        table = read_lightcurve(project.root / "LC" / "7" / f"TRX-{star:05d}.fits")
        assert table.colnames == ["time"] + column_names(NAPER)
        np.testing.assert_array_equal(table["time"].jd, table["bjd"])
        assert np.all(np.diff(table["rjd"]) > 0)
        expected = sorted(measured, key=lambda m: m[1]["rjd"])
        assert list(table["framekey"]) == [m[0] for m in expected]
        np.testing.assert_array_equal(table["aim_001"], [m[1]["aim_001"] for m in expected])
        np.testing.assert_array_equal(table["xcc"], [m[1]["xcc"] for m in expected])
        assert table["frame"][0] == f"frame-{expected[0][0]:04d}.fits"
        assert np.all(np.isnan(table["irm_000"])) and np.all(table["irq_000"] != 0)
        assert table.meta["OBJECTID"] == f"TRX-{star:05d}" and table.meta["APER_001"] == 2.45
        assert table.meta["NROWS"] == len(expected)
    assert not (project.redtemp / "lc").exists()  # scratch removed


def test_rerun_and_increments_give_identical_files(setup, tmp_path):
    project, catalog, entries, truth = setup
    half = len(entries) // 2
    register(project, catalog, entries[:half])
    run_stages(project, ["lightcurves"])
    register(project, catalog, entries[half:])
    run_stages(project, ["lightcurves"])
    with connect(project.database_url(Config())) as db:  # the second half merged again
        Ledger(db, Config()).forget_stages([e.framekey for e in entries[half:]], ("lightcurves",))
    assert run_stages(project, ["lightcurves"])["light curves: scatter"] == (NFRAMES - half, 0)
    incremental = {p.name: read_lightcurve(p) for p in lc_files(project)}

    other = init_project(tmp_path / "q")
    make_products(other.root)
    register(other, catalog, entries)
    run_stages(other, ["lightcurves"], config=Config().replace("lightcurves", partition_rows=50))
    for path in lc_files(other):
        once = read_lightcurve(path)
        twice = incremental[path.name]
        assert len(once) == len(twice) == len(truth[int(path.stem[4:])])
        for name in once.colnames:
            np.testing.assert_array_equal(once[name], twice[name])
        assert once.meta["NIGHT000"].split()[:2] == twice.meta["NIGHT000"].split()[:2]


def test_mpi_two_ranks_match_serial(setup, tmp_path):
    project, catalog, entries, truth = setup
    register(project, catalog, entries)
    run_stages(project, ["lightcurves"], config=Config().replace("lightcurves", partition_rows=100))
    serial = {p.name: read_lightcurve(p) for p in lc_files(project)}

    other = init_project(tmp_path / "m")
    make_products(other.root)
    register(other, catalog, entries)
    (other.root / "trex.toml").write_text("[lightcurves]\npartition_rows = 100\n")
    trex = Path(sys.executable).parent / "trex"
    mpiexec = Path(sys.executable).parent / "mpiexec"
    out = subprocess.run([str(mpiexec), "-n", "2", str(trex), "lightcurves", str(other.root)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "rank 1" in out.stderr and len(lcinfo(other)["objectid"]) == len(truth)
    assert len(lc_files(other)) == len(serial)
    for path in lc_files(other):
        table = read_lightcurve(path)
        for name in table.colnames:
            np.testing.assert_array_equal(table[name], serial[path.name][name])


def test_object_ids_cannot_escape(tmp_path):
    project = init_project(tmp_path / "p")
    path = lightcurves.lc_path(project, Config(), "7", "../../../etc/passwd")
    assert path.parent == project.root / "LC" / "7"
    sub = lightcurves.lc_path(project, Config().replace("lightcurves", subdirs=True), "7", "A/B")
    assert sub.parent.parent == project.root / "LC" / "7"



def test_long_frame_names_are_kept_whole_across_increments(tmp_path):
    project = init_project(tmp_path / "p")
    catalog, entries, _ = make_products(project.root)
    register(project, catalog, entries[:6])
    run_stages(project, ["lightcurves"])
    suffix = "_" + "x" * 80  # the same products under names of 96 characters
    long_entries = make_products(project.root, suffix=suffix)[1][6:]
    register(project, catalog, long_entries)
    run_stages(project, ["lightcurves"])
    late = {e.framekey for e in long_entries}
    for path in lc_files(project):
        table = read_lightcurve(path)
        names = {int(k): n for k, n in zip(table["framekey"], table["frame"])}
        assert names and all(name == f"frame-{key:04d}{suffix if key in late else ''}.fits"
                             for key, name in names.items())


OLD_CARDS = {"OBJECTID", "RA", "DEC", "MAG", "PROJID", "FIELD", "ZP", "TIMESYS", "BJDREFI",
             "BJDREFF", "TIMEUNIT", "NROWS", "RJDSTART", "RJDSTOP", "TREXVER", "CONFSHA"}


def test_files_of_the_previous_layout_take_new_nights(setup, tmp_path):
    """Light curves written by the previous writer (frame S40, no adq/idq) merge the
    next frames as if they had been written by this one."""
    project, catalog, entries, truth = setup
    half = len(entries) // 2
    register(project, catalog, entries[:half])
    run_stages(project, ["lightcurves"])
    for path in lc_files(project):
        rows, header = lcformat.read_rows(path)
        fields = [(n, "S40" if n == "frame" else rows.dtype[n]) for n in rows.dtype.names
                  if n[:3] not in ("adq", "idq")]
        old = np.array(rows[[n for n, _ in fields]], dtype=fields)
        old_cards = [{"name": r["name"], "value": r["value"]} for r in header.records()
                     if r["name"] in OLD_CARDS or r["name"].startswith(("APER_", "NIGHT"))]
        write_table(path, old, "LIGHTCURVE", old_cards)
        assert "adq_000" not in read_rows_raw(path)
    register(project, catalog, entries[half:])
    run_stages(project, ["lightcurves"])
    other = init_project(tmp_path / "q")
    make_products(other.root)
    register(other, catalog, entries)
    run_stages(other, ["lightcurves"])
    for path in lc_files(other):
        once, merged = read_lightcurve(path), read_lightcurve(project.lc("7") / path.name)
        assert once.colnames == merged.colnames and len(once) == len(truth[int(path.stem[4:])])
        for name in once.colnames:
            np.testing.assert_array_equal(once[name], merged[name], err_msg=name)
        nights = sorted(k for k in once.meta if k.startswith("NIGHT"))
        assert nights
        assert [once.meta[k] for k in nights] == [merged.meta[k] for k in nights]
        assert merged.meta["OBJECT"] == path.stem and merged.meta["NROWS"] == len(once)


def read_rows_raw(path: Path) -> tuple[str, ...]:
    """Column names as the file holds them."""
    from trex.fitstable import read_table

    return read_table(path, "LIGHTCURVE")[0].dtype.names
