"""MPI, in one module: nothing else in trex imports mpi4py.

The same code runs serially (no mpi4py, or one rank) and under
``mpiexec -n N`` / ``srun``.  The work split is a task farm: rank 0 holds the
queue and hands out small batches on request; each worker keeps
``PREFETCH`` requests outstanding, so it has its next batch in hand while rank
0 is busy; results go back as separate messages, kept moving by a thread while
the worker goes on (:class:`_Sending`); rank 0 consumes results (it
alone writes the database) and also processes tasks itself, one at a time,
whenever no message is waiting.
A rank that waits (for a message, a barrier) sleeps between looks rather than
spinning in MPI's blocking calls, so on a shared node it leaves the core to the
ranks at work.  An uncaught error on any rank aborts the whole job
(``MPI.Abort``) so that a SLURM allocation never hangs on a dead rank.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import NoReturn

log = logging.getLogger(__name__)

_MPI_ENV = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_RANK", "SLURM_STEP_ID")
_REQUEST, _WORK, _STOP, _RESULT = 1, 2, 3, 4
#: batches a worker holds or has asked for (one being worked on, one waiting)
PREFETCH = 2
#: seconds between two looks for a message while a rank waits (idle, not spinning)
POLL = 0.002
#: seconds a rank that aborts the job waits for its traceback to be forwarded
ABORT_GRACE = 0.5


class SerialComm:
    """Stand-in for an MPI communicator with one rank."""

    rank = 0
    size = 1

    def bcast(self, obj, root=0):
        return obj

    def barrier(self) -> None:
        pass

    def gather(self, obj, root=0):
        return [obj]

    def allreduce_max(self, value: int) -> int:
        return value

    def Abort(self, code: int = 1) -> None:  # noqa: N802 (MPI spelling)
        os._exit(code)


class MPIComm:
    """The world communicator, with pickle-5 messages (no 2 GiB limit)."""

    def __init__(self):
        from mpi4py import MPI
        from mpi4py.util import pkl5

        self.MPI = MPI
        self.comm = pkl5.Intracomm(MPI.COMM_WORLD)
        self.rank = MPI.COMM_WORLD.Get_rank()
        self.size = MPI.COMM_WORLD.Get_size()

    def bcast(self, obj, root=0):
        self.barrier()  # wait idle for the root, then a short broadcast
        return self.comm.bcast(obj, root=root)

    def barrier(self) -> None:
        """Every rank here, waiting idle (MPICH's blocking calls poll at 100 % CPU, which
        on a shared node takes the core from the ranks still working)."""
        request = self.MPI.COMM_WORLD.Ibarrier()
        while not request.Test():
            time.sleep(POLL)

    def gather(self, obj, root=0):
        self.barrier()
        return self.comm.gather(obj, root=root)

    def allreduce_max(self, value: int) -> int:
        """The largest ``value`` over the ranks (every rank gets it)."""
        self.barrier()
        return self.comm.allreduce(value, op=self.MPI.MAX)

    def wait_message(self, status, source: int | None = None) -> None:
        """Return when a message (from ``source``, default any) waits, idle meanwhile."""
        source = self.MPI.ANY_SOURCE if source is None else source
        while not self.comm.iprobe(source=source, tag=self.MPI.ANY_TAG, status=status):
            time.sleep(POLL)

    def Abort(self, code: int = 1) -> None:  # noqa: N802
        self.MPI.COMM_WORLD.Abort(code)


class MPIMismatch(RuntimeError):
    """The launcher started several tasks but MPI sees one world per task."""


def launched_under_mpi(environ: dict | None = None) -> bool:
    """True when a process manager (mpiexec, srun) started this process."""
    environ = os.environ if environ is None else environ
    return any(key in environ for key in _MPI_ENV)


def launched_tasks(environ: dict | None = None) -> tuple[int, str]:
    """(tasks, variable): how many tasks the launcher says it started (the largest of
    its variables, and which one says so); (1, "") when none says.  SLURM's count
    only holds inside an ``srun`` step (a batch script's own shell has
    ``SLURM_NTASKS`` of the allocation but is one task)."""
    environ = os.environ if environ is None else environ
    names = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MPI_LOCALNRANKS"]
    if "SLURM_STEP_ID" in environ:  # the step's own count first (an srun -n 1 in a bigger job)
        names += [next((n for n in ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS")
                        if n in environ), "SLURM_NTASKS")]
    best = (1, "")
    for name in names:
        try:
            value = int(environ.get(name, "1"))
        except ValueError:
            continue
        if value > best[0]:
            best = (value, name)
    return best


def world(environ: dict | None = None) -> SerialComm | MPIComm:
    """The communicator: MPI's world when launched under MPI, else serial.

    Raises :class:`MPIMismatch` when the launcher started several tasks but MPI
    (or a missing mpi4py) gives this one a world of its own: N separate one-rank
    runs of one project."""
    tasks, variable = launched_tasks(environ)
    if not launched_under_mpi(environ) and tasks == 1:
        return SerialComm()
    try:
        comm = MPIComm()
    except ImportError:
        if tasks > 1:
            raise MPIMismatch(f"{variable}={tasks} tasks were started but mpi4py is not "
                              f"importable: {_ADVICE}") from None
        log.warning("launched under MPI but mpi4py is not importable: running serially")
        return SerialComm()
    if comm.size == 1 and tasks > 1:
        library = " ".join(comm.MPI.Get_library_version().strip().splitlines()[0].split())
        raise MPIMismatch(f"{variable}={tasks} tasks were started but MPI sees a world of 1 "
                          f"rank in each (mpi4py's MPI: {library}): {_ADVICE}")
    return comm if comm.size > 1 else SerialComm()


_ADVICE = ("the launcher and mpi4py's MPI library do not match. Under srun use the plugin "
           "of mpi4py's MPI (srun --mpi=pmi2 for MPICH, Intel MPI, MVAPICH; --mpi=pmix for "
           "Open MPI; see srun --mpi=list), or that MPI's own mpiexec; on a cluster build "
           "mpi4py against the cluster's MPI (module load <mpi>; pip install --no-binary "
           "mpi4py mpi4py) rather than using the mpich wheel")


def raise_everywhere(err: BaseException) -> NoReturn:
    """Raise ``err``, which every rank raises at this point of the run together (a
    clean stop: :func:`abort_on_error` lets it end the rank with its exit status)."""
    err.on_every_rank = True
    raise err


@contextmanager
def abort_on_error(comm):
    """Any uncaught exception on this rank aborts every rank (no hung jobs), but one
    raised on every rank together (:func:`raise_everywhere`)."""
    try:
        yield
    except BaseException as err:
        alone = not (isinstance(err, SystemExit) or getattr(err, "on_every_rank", False))
        if comm.size > 1 and alone:
            # one write: the process manager forwards it whole before the abort kills us
            sys.stderr.write(f"rank {comm.rank}: uncaught error, aborting the job\n"
                             + traceback.format_exc())
            sys.stderr.flush()
            # the process manager forwards output asynchronously and drops what it has
            # not forwarded when the abort kills the job: give it a moment
            time.sleep(ABORT_GRACE)
            comm.Abort(1)
        raise


def batches(items: Sequence, size: int) -> list[list]:
    """``items`` cut into consecutive batches of at most ``size``."""
    size = max(1, int(size))
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def split(n: int, nranks: int, rank: int) -> range:
    """Indices of ``n`` items for ``rank`` in a contiguous, balanced split."""
    base, extra = divmod(n, nranks)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def farm(comm, tasks: Sequence, work: Callable[[list], list],
         consume: Callable[[list], bool | None], batch_size: int = 4) -> None:
    """Process ``tasks`` on every rank; call ``consume(results)`` on rank 0 only.

    ``work(batch) -> results`` runs on any rank (it must not touch the
    database); ``consume`` runs on rank 0 for every batch's results, in the
    order they arrive; when it returns False no further batch is started (the
    batches already handed out are finished and consumed: a clean stop).
    Rank 0 passes ``tasks``; the other ranks' ``tasks`` are ignored.  Batches
    hold at most ``batch_size`` tasks, fewer when there are few tasks (about
    four batches per rank, so that the ranks finish together).
    """
    size = max(1, min(int(batch_size), len(tasks) // (4 * comm.size)))
    if comm.size == 1:
        for batch in batches(tasks, size):
            if consume(work(batch)) is False:
                break
        return
    if comm.rank == 0:
        _serve(comm, batches(tasks, size), work, consume)
    else:
        _work(comm, work)
    comm.barrier()


def _serve(comm: MPIComm, queue: list[list], work, consume) -> None:
    """Rank 0: answer every request (a batch, or stop when the queue is empty),
    consume every result, work while nothing is waiting.  Each worker gets
    exactly ``PREFETCH`` stops; every batch sent comes back as one result.
    When fewer batches are left than ranks, a worker that still has one in hand
    gets no second (its request waits until the worker asks again with nothing
    in hand), so that the last batches are shared out rather than queued behind
    each other; near the end a worker gets part of a batch.  Rank 0 takes one
    task at a time from the next batch (it answers between two tasks, so a
    worker never waits behind a whole batch of rank 0's, and rank 0 is never
    the one left holding a batch at the end), and only once every worker's
    first request is answered."""
    MPI = comm.MPI
    status = MPI.Status()
    stops, out = PREFETCH * (comm.size - 1), 0
    held = [0] * comm.size  # batches a worker has and has not returned
    asked = [0] * comm.size  # requests received from a worker
    waiting: list[int] = []  # workers whose request for a second batch waits
    queue = list(reversed(queue))

    def answer(source: int) -> None:
        nonlocal stops, out
        if queue:
            comm.comm.send(_take_batch(queue, comm.size), dest=source, tag=_WORK)
            held[source] += 1
            out += 1
        else:
            comm.comm.send(None, dest=source, tag=_STOP)
            stops -= 1

    started: set[int] = set()  # workers whose first request was answered
    while stops or out:
        while waiting and not queue:
            answer(waiting.pop())
        # a worker's first request is waited for: started behind one of rank 0's tasks,
        # it would idle for the whole task
        if _incoming(comm, status) or not queue or len(started) < comm.size - 1:
            comm.wait_message(status)
            message = comm.comm.recv(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status)
            source = status.Get_source()
            if status.Get_tag() == _RESULT:
                out -= 1
                held[source] -= 1
                if consume(message) is False:
                    queue.clear()
            else:
                asked[source] += 1
                # past its first requests a worker asks as it finishes a batch, whose
                # results come next: that batch is held but not in hand
                in_hand = held[source] - (asked[source] > PREFETCH)
                if in_hand and len(queue) < comm.size:
                    waiting.append(source)
                else:
                    if source in waiting:  # nothing left in hand: both requests now
                        waiting.remove(source)
                        answer(source)
                    answer(source)
            started.add(source)
        elif consume(work([_take_one(queue)])) is False:
            queue.clear()


def _take_batch(queue: list[list], nranks: int) -> list:
    """The next batch for a worker; near the end only part of it (at most a share of
    1 / (2 nranks) of the tasks left), so that the ranks finish together."""
    left = sum(len(batch) for batch in queue)
    share = max(1, -(-left // (2 * nranks)))
    if len(queue[-1]) <= share:
        return queue.pop()
    part, queue[-1] = queue[-1][:share], queue[-1][share:]
    return part


def _take_one(queue: list[list]):
    """The first task of the next batch (the batch leaves the queue when empty)."""
    task = queue[-1].pop(0)
    if not queue[-1]:
        queue.pop()
    return task


def _incoming(comm: MPIComm, status) -> bool:
    """Whether a message waits.  MPICH's first ``MPI_Iprobe`` after a busy spell
    returns false even for a message that arrived long before (it polls progress
    first), so probe twice: otherwise rank 0 would keep working while requests wait."""
    probe = comm.comm.iprobe
    return (probe(source=comm.MPI.ANY_SOURCE, tag=comm.MPI.ANY_TAG, status=status)
            or probe(source=comm.MPI.ANY_SOURCE, tag=comm.MPI.ANY_TAG, status=status))


def _work(comm: MPIComm, work) -> None:
    """A worker: keep ``PREFETCH`` requests outstanding, return each batch's results.

    A large message moves only while its sender is inside MPI, and rank 0 takes it when
    it is free (after a task of its own): so the results go with ``isend`` and a thread
    keeps testing it while the next batch is worked (:class:`_Sending`), and the next
    request goes before them (a small message queued behind a large one waits with it)."""
    MPI = comm.MPI
    status = MPI.Status()
    for _ in range(PREFETCH):
        comm.comm.send(None, dest=0, tag=_REQUEST)
    outstanding, sending = PREFETCH, None
    while outstanding:
        comm.wait_message(status, source=0)
        batch = comm.comm.recv(source=0, tag=MPI.ANY_TAG, status=status)
        outstanding -= 1
        if status.Get_tag() == _STOP:  # the queue is empty: later answers are stops too
            continue
        results = work(batch)
        if sending is not None:
            sending.wait()
        comm.comm.send(None, dest=0, tag=_REQUEST)  # the next batch is already here
        outstanding += 1
        sending = _Sending(comm, comm.comm.isend(results, dest=0, tag=_RESULT))
    if sending is not None:
        sending.wait()


class _Sending:
    """A message on its way, tested by a thread until it is gone (when the MPI library
    allows calls from several threads; otherwise :meth:`wait` sends it)."""

    def __init__(self, comm: MPIComm, request):
        self.request = request
        self.thread = None
        if comm.MPI.Query_thread() == comm.MPI.THREAD_MULTIPLE:
            self.thread = threading.Thread(target=self._wait, daemon=True)
            self.thread.start()

    def _wait(self) -> None:
        while not self.request.test()[0]:
            time.sleep(POLL)

    def wait(self) -> None:
        """Return when the message has gone."""
        if self.thread is None:
            self._wait()
        else:
            self.thread.join()
