"""One run per project: the lock file, its stale forms, --wait, the PostgreSQL advisory
lock, and the MPI world check (a launcher's N tasks that MPI sees as N worlds of 1)."""

from __future__ import annotations

import errno
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from trex import lock as locks
from trex.cli import main
from trex.db import connect
from trex.lock import Holder, ProjectLock, ProjectLocked, acquire
from trex.parallel import launched_tasks
from trex.project import init_project


def dead_pid() -> int:
    """The pid of a process that has ended (and was reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def hold_in_subprocess(root: Path, then: str) -> subprocess.Popen:
    """A process that takes the lock of ``root``, says so on stdout, then runs ``then``."""
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        from trex.lock import acquire
        lock = acquire({str(root)!r})
        print("held", flush=True)
        {then}
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_lock_is_refused_naming_the_holder(tmp_path):
    first = acquire(tmp_path)
    text = (tmp_path / "trex.lock").read_text()
    assert Holder.parse(text) == first.holder
    assert first.holder.host == socket.gethostname() and first.holder.pid == os.getpid()
    with pytest.raises(ProjectLocked) as err:
        acquire(tmp_path)  # another open file of the same lock: flock refuses it
    message = str(err.value)
    assert f"pid {os.getpid()}" in message and socket.gethostname() in message
    assert first.holder.started in message and "--wait" in message
    first.release()
    assert (tmp_path / "trex.lock").read_text() == ""  # a clean end empties the file
    acquire(tmp_path).release()


def test_the_lock_of_a_killed_process_is_taken_over_with_a_warning(tmp_path, caplog):
    proc = hold_in_subprocess(tmp_path, "os.kill(os.getpid(), signal.SIGKILL)")
    assert proc.wait() == -9
    holder = Holder.parse((tmp_path / "trex.lock").read_text())
    assert holder.pid == proc.pid  # the killed job's lines are still there
    with caplog.at_level(logging.WARNING, logger="trex.lock"):
        lock = acquire(tmp_path)
    assert "stale" in caplog.text and f"pid {proc.pid}" in caplog.text
    assert lock.holder.pid == os.getpid()
    lock.release()


def test_wait_polls_until_the_holder_ends(tmp_path, caplog):
    proc = hold_in_subprocess(tmp_path, "time.sleep(1.5); lock.release()")
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="trex.lock"):
        lock = acquire(tmp_path, wait=True, poll=0.1)
    assert proc.wait() == 0
    assert time.monotonic() - start > 0.5  # it did wait
    assert f"pid {proc.pid}" in caplog.text and "waiting" in caplog.text
    assert "stale" not in caplog.text  # the holder ended cleanly
    lock.release()


def test_without_flock_a_dead_pid_on_this_host_is_stale(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(locks.fcntl, "flock", no_flock)
    path = tmp_path / "trex.lock"
    alive = Holder(socket.gethostname(), os.getppid(), "2026-12-01T00:00:00+00:00")
    path.write_text(alive.text())
    with pytest.raises(ProjectLocked, match=f"pid {os.getppid()}"):
        acquire(tmp_path)
    elsewhere = Holder("another-host", dead_pid(), "2026-12-01T00:00:00+00:00")
    path.write_text(elsewhere.text())  # a pid on another host cannot be checked: held
    with pytest.raises(ProjectLocked, match="another-host"):
        acquire(tmp_path)
    path.write_text(Holder(socket.gethostname(), dead_pid(), "2026-12-01T00:00:00+00:00").text())
    lock = acquire(tmp_path)
    assert Holder.parse(path.read_text()).pid == os.getpid()
    lock.release()


def test_postgresql_advisory_lock_is_per_project_and_names_its_session(tmp_path, pg_url):
    one, two = connect(pg_url), connect(pg_url)
    try:
        assert one.try_project_lock(tmp_path / "a", "2026-12-01T00:00:00+00:00") is None
        assert two.try_project_lock(tmp_path / "b", "t") is None  # another project: free
        holder = two.try_project_lock(tmp_path / "a" / ".." / "a", "t")  # the same root
        assert holder is not None
        assert f"trex {socket.gethostname()} {os.getpid()} 2026-12-01" in holder
        one.close()  # the session ends: the lock is released
        assert two.try_project_lock(tmp_path / "a", "t") is None
    finally:
        two.close()


@pytest.fixture
def project(tmp_path):
    return init_project(tmp_path / "p")


def test_trex_run_refuses_a_held_project_with_status_2(project, capsys):
    held = ProjectLock(project.root)
    assert held.try_acquire() is None
    try:
        assert main(["run", str(project.root)]) == 2
    finally:
        held.release()
    err = capsys.readouterr().err
    assert "another trex run holds the project" in err and f"pid {os.getpid()}" in err
    assert main(["run", str(project.root)]) == 0


def test_trex_run_wait_runs_once_the_holder_ends(project, monkeypatch):
    monkeypatch.setattr(locks, "POLL_SECONDS", 0.1)
    held = ProjectLock(project.root)
    assert held.try_acquire() is None
    timer = threading.Timer(1.0, held.release)
    timer.start()
    start = time.monotonic()
    assert main(["run", str(project.root), "--wait"]) == 0
    assert time.monotonic() - start >= 0.9
    timer.join()


def test_trex_run_on_postgresql_refuses_when_the_database_lock_is_held(project, pg_url, capsys):
    other = connect(pg_url)
    try:
        assert other.try_project_lock(project.root, "2026-12-01T00:00:00+00:00") is None
        assert main(["run", str(project.root), "--db", pg_url]) == 2
    finally:
        other.close()
    err = capsys.readouterr().err
    assert "database lock of the project" in err and "2026-12-01" in err
    assert (project.root / "trex.lock").read_text() == ""  # the file lock was let go
    assert main(["run", str(project.root), "--db", pg_url]) == 0


@pytest.mark.parametrize("environ, expected", [
    ({}, (1, "")),
    ({"SLURM_NTASKS": "8"}, (1, "")),  # a batch script's own shell: one task
    ({"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS": "8"},
     (4, "SLURM_STEP_NUM_TASKS")),
    ({"SLURM_STEP_ID": "0", "SLURM_NPROCS": "3"}, (3, "SLURM_NPROCS")),
    ({"OMPI_COMM_WORLD_SIZE": "6"}, (6, "OMPI_COMM_WORLD_SIZE")),
    ({"PMI_SIZE": "2", "MPI_LOCALNRANKS": "2"}, (2, "PMI_SIZE")),
])
def test_launched_tasks_reads_the_launchers_variables(environ, expected):
    assert launched_tasks(environ) == expected


@pytest.mark.parametrize("variables", [{"OMPI_COMM_WORLD_SIZE": "3"},
                                       {"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "2"}])
def test_a_world_of_one_among_several_tasks_is_status_2(project, variables):
    """mpi4py (the mpich wheel) started by a launcher it does not speak to: a world of 1."""
    env = {**os.environ, **variables, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-m", "trex", "run", str(project.root)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "MPI sees a world of 1" in out.stderr and "--mpi=pmi2" in out.stderr
    assert not (project.root / "trex.sqlite").exists()  # nothing was started
