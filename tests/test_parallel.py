"""The task farm: every task processed exactly once, on every rank, whatever the count."""

import subprocess
import sys
import textwrap
from pathlib import Path

from trex import parallel


def test_serial_farm_batches_and_order():
    seen = []
    parallel.farm(parallel.SerialComm(), list(range(10)), lambda b: [list(b)], seen.extend,
                  batch_size=4)
    assert [t for batch in seen for t in batch] == list(range(10))
    assert max(len(b) for b in seen) == 2  # 10 tasks, one rank: batches shrink to ~4 per rank
    seen.clear()
    parallel.farm(parallel.SerialComm(), list(range(100)), lambda b: [list(b)], seen.extend,
                  batch_size=4)
    assert {len(b) for b in seen} == {4}


def test_mpi_farm_each_task_once_on_both_ranks():
    script = textwrap.dedent("""
        import time
        import numpy as np
        from trex import parallel
        comm = parallel.world()
        comm.barrier()
        for ntasks in (0, 1, 2, 3, 40):
            seen = []
            def work(batch):
                time.sleep(0.1 * len(batch))  # rank 0 busy working leaves requests waiting
                # results of several MB (sent while the worker goes on) arrive whole
                return [(comm.rank, task, np.full(500_000, task)) for task in batch]
            if comm.rank == 0:  # the worker's requests are waiting when rank 0 starts
                while not comm.comm.iprobe(source=1, tag=comm.MPI.ANY_TAG):
                    time.sleep(0.01)
                time.sleep(0.1)
            parallel.farm(comm, list(range(ntasks)), work, seen.extend, batch_size=2)
            if comm.rank == 0:
                assert all((data == task).all() for _, task, data in seen)
                tasks = sorted(task for _, task, _ in seen)
                assert tasks == list(range(ntasks)), (ntasks, tasks)
                ranks = sorted({rank for rank, _, _ in seen})
                print(ntasks, "ranks", *ranks)
    """)
    mpiexec = Path(sys.executable).parent / "mpiexec"
    out = subprocess.run([str(mpiexec), "-n", "2", sys.executable, "-c", script],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "0 ranks" and lines[4] == "40 ranks 0 1", lines
    assert lines[2] == "2 ranks 0 1", lines  # two tasks: one each, not both to the worker


class _FakeWorld:
    """Rank 0's view of a world of one scripted worker (rank 1): its requests are
    already waiting, and it finishes a batch only when rank 0 waits for it."""

    class MPI:
        ANY_SOURCE = ANY_TAG = -1

        class Status:
            def Get_source(self):  # noqa: N802 (mpi4py spelling)
                return self.source

            def Get_tag(self):  # noqa: N802
                return self.tag

    def __init__(self, requests: int):
        self.size, self.rank, self.comm = 2, 0, self
        self.inbox = [(parallel._REQUEST, None)] * requests
        self.held, self.done = [], []

    def iprobe(self, source, tag, status):
        if self.inbox:
            status.source, status.tag = 1, self.inbox[0][0]
        return bool(self.inbox)

    def wait_message(self, status, source=None):
        pass  # recv below makes the worker answer

    def recv(self, source, tag, status):
        if not self.inbox:  # rank 0 waits: the worker finishes its oldest batch
            batch = self.held.pop(0)
            self.done += batch
            self.inbox += [(parallel._REQUEST, None),  # the next request, then the results
                           (parallel._RESULT, [("worker", t) for t in batch])]
        status.source, (status.tag, message) = 1, self.inbox.pop(0)
        return message

    def send(self, message, dest, tag):
        if tag == parallel._WORK:
            self.held.append(message)

    def barrier(self):
        pass


def test_last_batches_are_shared_not_prefetched():
    world, seen = _FakeWorld(requests=parallel.PREFETCH), []
    parallel.farm(world, ["a", "b"], lambda batch: [("rank0", t) for t in batch], seen.extend)
    assert sorted(seen) == [("rank0", "b"), ("worker", "a")]  # one each, not both queued
    world, seen = _FakeWorld(requests=parallel.PREFETCH), []
    parallel.farm(world, list(range(12)), lambda batch: [("rank0", t) for t in batch],
                  seen.extend, batch_size=1)
    assert sorted(t for _, t in seen) == list(range(12))
    assert {who for who, _ in seen} == {"rank0", "worker"}
