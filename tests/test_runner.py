"""The frame runner: serial vs MPI, failures recorded, kill -9 and resume, no duplicates.

The stages here are small stand-ins with the real protocol (``run(frame,
context) -> frame`` plus a ``save``), so the driver is tested on its own.
"""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from trex.config import Config
from trex.db import connect
from trex.fits import FrameError, write_image
from trex.frame import Context
from trex.ledger import Ledger
from trex.parallel import SerialComm
from trex.pipeline import run_phase
from trex.project import Project, init_project
from trex.runner import FramePass
from trex.stages import Stage

NFRAMES = 12


def make_project(root: Path) -> None:
    project = init_project(root)
    with connect(project.database_url(Config())) as db:
        db.create_schema()
        for i in range(NFRAMES):
            rawpath = f"RAW/n1/f{i:03d}.fits"
            value = np.nan if i == 5 else float(i)  # frame 5 is bad
            write_image(root / rawpath, np.full((8, 8), value, np.float32),
                        {"IMAGETYP": "object", "EXPTIME": 30.0, "OBJECT": "F",
                         "PROJID": "1", "DATE-OBS": f"2026-11-29T0{i // 6}:{i % 6}0:00"})
            db.execute("INSERT INTO frameinfo (rawpath, night, imagetyp, jd, isok) "
                       "VALUES (?, 'n1', 'object', ?, ?)", (rawpath, 2461008.5 + i / 100, True))


def fake_calibrate(frame, context):
    from trex.fits import read_image

    frame.image, frame.header = read_image(frame.rawpath)
    if not np.isfinite(frame.image).all():
        raise FrameError(frame.rawpath, "non-finite pixels")
    if os.environ.get("TREX_TEST_DIE_AT") == frame.rawpath.name:
        os._exit(9)  # like kill -9 in the middle of a run
    frame.redpath = context.project.red("1") / frame.rawpath.name
    frame.mask = np.zeros(frame.image.shape, np.uint8)
    write_image(frame.redpath, frame.image, frame.header, extensions=[("MASK", frame.mask, None)])
    frame.quality["medsky"] = float(np.median(frame.image))
    frame.quality["nsources"] = int(os.environ.get("PMI_RANK", 0))  # which rank did it
    if "PMI_RANK" in os.environ:
        time.sleep(0.2)  # frames take time, so that every rank gets some
    return frame


def fake_photometry(frame, context):
    frame.products["flux"] = frame.image.sum() * np.arange(1, 6)
    return frame


def save_photometry(frame, context):
    n = len(frame.products["flux"])
    return {"ap_photometry": {
        "framekey": np.full(n, frame.framekey), "photkey": np.full(n, "k"),
        "objectid": np.array([f"s{i}" for i in range(n)]), "aperture": np.zeros(n, np.int16),
        "flux": frame.products["flux"], "flag": np.zeros(n, np.int32)}}


CHAIN = (Stage("calibrate", "fake", (), run=fake_calibrate),
         Stage("photometry", "fake", (), ("calibrate",), run=fake_photometry, save=save_photometry))


def fake_magfit(frame, context):
    if frame.rawpath.name == "f003.fits":
        raise FrameError(frame.rawpath, "no fit")
    frame.products["flux"] = 2 * frame.image.sum() * np.arange(1, 6)  # the "fitted" values
    return frame


def photometry_rows(frame, context):  # the rows as photometry left them
    return save_photometry(fake_photometry(frame, context), context)


def unchanged(frame, context):
    return frame


#: the first pass with every stage the real magfit stage needs done before it
FIRST_PASS = (CHAIN[0], Stage("extract", "fake", (), ("calibrate",), run=unchanged),
              Stage("astrometry", "fake", (), ("extract",), run=unchanged), CHAIN[1])
MAGFIT = Stage("magfit", "fake", (), ("photometry",), run=fake_magfit, save=save_photometry,
               rewrites=("ap_photometry",), failed_rows=photometry_rows, pixels=True)


def run(root: Path, comm=None) -> int:
    """The chain over the project's pending frames (on rank 0 of ``comm`` with the
    database; the other ranks pass None); returns the frames that failed."""
    config = Config().replace("run", batch_frames=1)
    project = Project(root)
    comm = comm or SerialComm()
    context, stop = Context(project, config), {"signal": False}
    if comm.rank:
        return run_phase(comm, None, context, FramePass(CHAIN), stop)[2]
    with connect(project.database_url(config)) as db:
        return run_phase(comm, Ledger(db, config), context, FramePass(CHAIN), stop)[2]


def pending(db) -> list:
    return Ledger(db, Config()).pending(CHAIN, Context(None, Config()))


def table(root: Path) -> list:
    with connect(f"sqlite:///{root / 'trex.sqlite'}") as db:
        return db.query("SELECT framekey, objectid, flux FROM ap_photometry "
                        "ORDER BY framekey, objectid")


def test_serial_run_records_everything(tmp_path):
    make_project(tmp_path)
    assert run(tmp_path) == 1
    with connect(f"sqlite:///{tmp_path / 'trex.sqlite'}") as db:
        failed = db.query("SELECT stage, reason FROM framestatus WHERE status = 'failed'")
        assert failed == [("calibrate", "non-finite pixels")]
        bad = db.query("SELECT frameisok, reason FROM calibratedframes WHERE NOT frameisok")
        assert bad == [(0, "calibrate: non-finite pixels")]
        assert db.query("SELECT count(*) FROM framestatus WHERE status = 'done'")[0][0] == 22
        assert pending(db) == []
    rows = table(tmp_path)
    assert len(rows) == 5 * (NFRAMES - 1)
    assert run(tmp_path) == 0  # nothing left to do
    assert table(tmp_path) == rows


def test_resume_after_kill(tmp_path):
    make_project(tmp_path)
    env = {**os.environ, "TREX_TEST_DIE_AT": "f008.fits"}
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_runner import run
        run(__import__("pathlib").Path({str(tmp_path)!r}))
    """)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert out.returncode == 9
    partial = table(tmp_path)
    assert 0 < len(partial) < 5 * (NFRAMES - 1)
    run(tmp_path)  # resume
    rows = table(tmp_path)
    assert len(rows) == 5 * (NFRAMES - 1) == len(set((r[0], r[1]) for r in rows))


def test_rows_a_later_pass_rewrites_are_written_by_it_once(tmp_path):
    """In a run of both passes the first leaves ap_photometry to the magfit stage, which
    writes it, and on the frame where it fails writes the rows photometry made."""
    make_project(tmp_path)
    config = Config().replace("run", batch_frames=1)
    context, stop = Context(Project(tmp_path), config), {"signal": False}
    with connect(f"sqlite:///{tmp_path / 'trex.sqlite'}") as db:
        ledger = Ledger(db, config)
        run_phase(SerialComm(), ledger, context, FramePass(FIRST_PASS, later=(MAGFIT,)), stop)
        assert db.query("SELECT count(*) FROM ap_photometry")[0][0] == 0
        run_phase(SerialComm(), ledger, context, FramePass((MAGFIT,)), stop)
        failed = db.query("SELECT stage, reason FROM framestatus WHERE status = 'failed'")
        rows = db.query("SELECT rawpath, objectid, flux FROM ap_photometry "
                        "JOIN frameinfo USING (framekey)")
    assert sorted(failed) == [("calibrate", "non-finite pixels"), ("magfit", "no fit")]
    assert len(rows) == 5 * (NFRAMES - 1) == len({(r[0], r[1]) for r in rows})
    for rawpath, objectid, flux in rows:
        i, star = int(rawpath[-8:-5]), int(objectid[1:])
        assert flux == 64 * i * (star + 1) * (1 if i == 3 else 2)


@pytest.mark.parametrize("nranks", [2])
def test_mpi_matches_serial(tmp_path, nranks):
    make_project(tmp_path / "serial")
    run(tmp_path / "serial")
    make_project(tmp_path / "mpi")
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_runner import run
        from trex import parallel
        comm = parallel.world()
        assert comm.size == {nranks}
        run(__import__("pathlib").Path({str(tmp_path / "mpi")!r}), comm)
    """)
    mpiexec = Path(sys.executable).parent / "mpiexec"
    out = subprocess.run([str(mpiexec), "-n", str(nranks), sys.executable, "-c", script],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert table(tmp_path / "mpi") == table(tmp_path / "serial")
    with connect(f"sqlite:///{tmp_path / 'mpi' / 'trex.sqlite'}") as db:
        ranks = {r[0] for r in db.query("SELECT nsources FROM calibratedframes WHERE frameisok")}
    assert ranks == {0, 1}  # both ranks processed frames


def test_uncaught_error_aborts_all_ranks(tmp_path):
    script = textwrap.dedent("""
        import time
        from trex import parallel
        comm = parallel.world()
        with parallel.abort_on_error(comm):
            if comm.rank == 1:
                raise RuntimeError("a bug on rank 1")
            time.sleep(60)  # rank 0 would wait forever without the abort
    """)
    mpiexec = Path(sys.executable).parent / "mpiexec"
    out = subprocess.run([str(mpiexec), "-n", "2", sys.executable, "-c", script],
                         capture_output=True, text=True, timeout=50)
    assert out.returncode != 0
    assert "a bug on rank 1" in out.stderr
