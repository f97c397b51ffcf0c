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
        from trex import parallel
        comm = parallel.world()
        for ntasks in (0, 1, 3, 40):
            seen = []
            def work(batch):
                time.sleep(0.01 * len(batch))  # rank 0 busy working leaves requests waiting
                return [(comm.rank, task) for task in batch]
            parallel.farm(comm, list(range(ntasks)), work, seen.extend, batch_size=2)
            if comm.rank == 0:
                tasks = sorted(task for _, task in seen)
                assert tasks == list(range(ntasks)), (ntasks, tasks)
                ranks = sorted({rank for rank, _ in seen})
                print(ntasks, "ranks", *ranks)
    """)
    mpiexec = Path(sys.executable).parent / "mpiexec"
    out = subprocess.run([str(mpiexec), "-n", "2", sys.executable, "-c", script],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "0 ranks" and lines[3] == "40 ranks 0 1", lines
