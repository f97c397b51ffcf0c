"""One run per project: the lock file ``ROOT/trex.lock``.

``trex run`` (and every stage command) holds the lock for its whole job, on
rank 0: an ``fcntl.flock`` on the open file ``ROOT/trex.lock``, which holds
the holder's host, pid and start time.  The kernel releases a flock when its
process ends, however it ends (kill -9 included), so a lock left by a killed
job is never in the way: the next run finds the file naming a holder but
the flock free, says so in a warning and takes it over.  A clean end empties
the file.

Where the file system has no flock (``ENOLCK``, ``EOPNOTSUPP``), the file's
contents decide: a holder on this host whose pid is gone is stale and taken
over, any other holder holds the project.  On PostgreSQL the database
advisory lock (:meth:`trex.db.Database.try_project_lock`) guards the
project across hosts as well.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trex.times import utcnow

log = logging.getLogger(__name__)

FILENAME = "trex.lock"
#: seconds between two tries of ``--wait``
POLL_SECONDS = 5.0
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class ProjectLocked(RuntimeError):
    """Another run holds the project (the message names it)."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a lock: host, pid, start time (UTC, ISO 8601)."""

    host: str
    pid: int
    started: str

    def __str__(self) -> str:
        return f"host {self.host}, pid {self.pid}, started {self.started}"

    def text(self) -> str:
        return f"host={self.host} pid={self.pid} started={self.started}\n"

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        """The holder written by :meth:`text` (None for an empty or foreign file)."""
        fields = dict(part.partition("=")[::2] for part in text.split())
        try:
            return cls(fields["host"], int(fields["pid"]), fields["started"])
        except (KeyError, ValueError):
            return None

    def alive(self) -> bool:
        """False only for a holder on this host whose process is gone."""
        if self.host != socket.gethostname():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def me() -> Holder:
    """This process as a holder."""
    return Holder(socket.gethostname(), os.getpid(), utcnow())


class ProjectLock:
    """The lock file of a project (see the module doc); a context manager."""

    def __init__(self, root: Path | str):
        self.path = Path(root) / FILENAME
        self.fd: int | None = None
        self.holder: Holder | None = None  # this run, once it holds the lock

    def try_acquire(self) -> Holder | None:
        """Take the lock: None when taken, else the holder that has it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd) or Holder("unknown", 0, "unknown")
            os.close(fd)
            return holder
        except OSError as err:
            if err.errno not in _NO_FLOCK:
                os.close(fd)
                raise
            holder = _holder(fd)
            if holder is not None and holder.alive():
                os.close(fd)
                return holder
        previous = _holder(fd)
        if previous is not None:
            log.warning("taking over the stale project lock %s of %s (that run ended "
                        "without releasing it)", self.path, previous)
        self.holder = me()
        os.ftruncate(fd, 0)
        os.pwrite(fd, self.holder.text().encode("ascii", "replace"), 0)
        os.fsync(fd)
        self.fd = fd
        return None

    def release(self) -> None:
        """Empty the file and let go of the lock (nothing when not held)."""
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        finally:
            os.close(self.fd)  # closing releases the flock
            self.fd = None


def _holder(fd: int) -> Holder | None:
    return Holder.parse(os.pread(fd, 4096, 0).decode("ascii", "replace"))


def acquire(root: Path | str, wait: bool = False, poll: float | None = None,
            also: Callable[[str], str | None] | None = None) -> ProjectLock:
    """The project lock of ``root``, held; with ``wait``, try every ``poll`` s until
    it is free, else raise :class:`ProjectLocked` naming the holder.

    ``also(started)`` (optional) takes a second lock once the file is held (the
    database's, for a run started at ``started``) and returns None, or who holds it."""
    poll = POLL_SECONDS if poll is None else poll
    lock = ProjectLock(root)
    announced = False
    while True:
        holder = lock.try_acquire()
        if holder is None and also is not None:
            other = also(lock.holder.started)
            if other is not None:
                lock.release()
                holder = other
        if holder is None:
            return lock
        message = f"another trex run holds the project {Path(root)}: {holder}"
        if not wait:
            raise ProjectLocked(message + " (trex run --wait waits for it)")
        if not announced:
            log.warning("%s; waiting for it (--wait)", message)
            announced = True
        time.sleep(poll)
