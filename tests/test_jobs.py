"""The SLURM job scripts (jobs/): their shell logic under stub srun, scontrol, trex
and python commands that log what they are asked to do."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

JOBS = Path(__file__).parents[1] / "jobs"
RUNS = ("one-node.sbatch", "multi-node.sbatch", "backfill.sbatch")
OPEN_MPI = "Open MPI v4.1.6, package: Open MPI builder Distribution, ident: 4.1.6"
MPICH = "MPICH Version:      4.2.0\nMPICH Release date: Fri Feb  9 2024"

STUBS = {
    # srun: log; answer --mpi=list; otherwise run the command (rank 0's process)
    "srun": r'''#!/bin/bash
echo "srun $*" >> "$STUB_LOG"
for arg; do
    if [[ $arg == --mpi=list ]]; then printf 'MPI plugin types are...\n'
        for p in ${FAKE_SRUN_PLUGINS:-none pmi2 pmix}; do printf '\t%s\n' "$p"; done; exit 0; fi
done
while [[ $# -gt 0 && $1 == -* ]]; do shift; done
exec "$@"
''',
    "scontrol": '#!/bin/bash\necho "scontrol $*" >> "$STUB_LOG"\n',
    # trex: log argv and a few variables; `run` exits FAKE_TREX_STATUS, or with
    # FAKE_TREX_WAIT waits for USR1/TERM and exits 5 as trex does
    "trex": r'''#!/bin/bash
echo "trex $* | OMP_NUM_THREADS=$OMP_NUM_THREADS TREX_DB=${TREX_DB:-}" >> "$STUB_LOG"
if [[ $1 == run && -n ${FAKE_TREX_WAIT:-} ]]; then
    trap 'echo "trex got a signal" >> "$STUB_LOG"; exit 5' USR1 TERM
    echo "trex waiting" >> "$STUB_LOG"
    for _ in $(seq 600); do sleep 0.1; done
    exit 9
fi
[[ $1 == run ]] && exit "${FAKE_TREX_STATUS:-0}"
exit 0
''',
    # python (beside trex): mpi4py's library version and world size
    "python": r'''#!/bin/bash
case "$*" in
    *Get_library_version*) [[ -n ${FAKE_MPI_LIBRARY:-} ]] || exit 1; echo "$FAKE_MPI_LIBRARY" ;;
    *Get_size*) echo "${FAKE_WORLD_SIZE:-$SLURM_NTASKS}" ;;
    *) exit 1 ;;
esac
''',
}


@pytest.fixture
def cluster(tmp_path):
    """Stub commands first on PATH, a project with three nights, SLURM variables."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in STUBS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    root = tmp_path / "ROOT"
    for night in ("2026-11-30", "2026-11-28", "2026-11-29"):
        (root / "RAW" / night).mkdir(parents=True)
    (root / "RAW" / "notes.txt").write_text("not a night")
    log = tmp_path / "stub.log"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "STUB_LOG": str(log),
           "SLURM_JOB_ID": "1234", "SLURM_NTASKS": "4", "SLURM_ARRAY_TASK_ID": "1",
           "SLURM_SUBMIT_DIR": str(tmp_path), "FAKE_MPI_LIBRARY": MPICH,
           "TREX_DB": "postgresql://trex@dbhost:5432/trex"}
    return root, env, log


def submit(script: str, root: Path, env: dict, **extra) -> tuple[int, str, list[str]]:
    """Run a job script with bash as sbatch would; (status, stderr, stub log lines)."""
    done = subprocess.run(["bash", str(JOBS / script), str(root)], env={**env, **extra},
                          capture_output=True, text=True, timeout=120)
    log = Path(env["STUB_LOG"])
    return done.returncode, done.stderr, log.read_text().splitlines() if log.exists() else []


def runs(lines: list[str]) -> list[str]:
    return [line.split(" | ")[0] for line in lines if line.startswith("trex run")]


@pytest.mark.parametrize("script", sorted(p.name for p in JOBS.iterdir()))
def test_every_script_parses(script):
    done = subprocess.run(["bash", "-n", str(JOBS / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("script", RUNS)
def test_directives_stop_before_the_limit_and_leave_placeholders(script):
    text = (JOBS / script).read_text()
    assert "#SBATCH --signal=USR1@300\n" in text and "#SBATCH --requeue\n" in text
    for placeholder in ("##SBATCH --partition=", "##SBATCH --account=", "##SBATCH --mem-per-cpu="):
        assert placeholder in text
    assert "srun " not in text.replace('trex_launch srun --mpi="$TREX_MPI"', "")


@pytest.mark.parametrize("task, night", [("0", "2026-11-28"), ("1", "2026-11-29"),
                                         ("2", "2026-11-30")])
def test_array_index_picks_the_night(cluster, task, night):
    root, env, _ = cluster
    status, err, lines = submit("backfill.sbatch", root, env, SLURM_ARRAY_TASK_ID=task)
    assert status == 0, err
    assert runs(lines) == [f"trex run {root} --nights {night} --db {env['TREX_DB']}"]


def test_array_index_from_a_nights_file_and_out_of_range(cluster, tmp_path):
    root, env, log = cluster
    nights = tmp_path / "nights.txt"
    nights.write_text("# to redo\n2026-11-29\n\n  2026-11-30  # clouds at the end\n")
    status, err, lines = submit("backfill.sbatch", root, env, TREX_NIGHTS_FILE=str(nights))
    assert status == 0, err
    assert runs(lines) == [f"trex run {root} --nights 2026-11-30 --db {env['TREX_DB']}"]
    log.unlink()
    status, err, lines = submit("backfill.sbatch", root, env, SLURM_ARRAY_TASK_ID="3")
    assert status == 2 and "array task 3: only 3 nights" in err and runs(lines) == []


@pytest.mark.parametrize("script", RUNS)
@pytest.mark.parametrize("library, override, plugin", [(MPICH, "", "pmi2"),
                                                       (OPEN_MPI, "", "pmix"),
                                                       ("Intel(R) MPI Library 2021.9", "", "pmi2"),
                                                       (OPEN_MPI, "pmi2", "pmi2")])
def test_srun_mpi_matches_the_library(cluster, script, library, override, plugin):
    root, env, _ = cluster
    status, err, lines = submit(script, root, env, FAKE_MPI_LIBRARY=library,
                                TREX_SRUN_MPI=override)
    assert status == 0, err
    steps = [line for line in lines if line.startswith("srun") and "--mpi=list" not in line]
    assert len(steps) == 2 and all(f"--mpi={plugin} " in line for line in steps)
    assert "Get_size" in steps[0] and "--ntasks=4" in steps[0]   # the world-size check first
    assert " trex run " in steps[1]


def test_mpi_plugin_of_the_installed_mpi4py(cluster):
    # the real mpi4py of this environment (the mpich wheel): pmi2
    _, env, _ = cluster
    done = subprocess.run(["bash", "-c", f"source {JOBS / 'common.sh'}; trex_mpi_plugin"],
                          env={**env, "TREX_PYTHON": sys.executable}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "pmi2\n", done.stderr


@pytest.mark.parametrize("script", RUNS)
def test_unmatched_mpi_fails_before_trex_runs(cluster, script):
    root, env, log = cluster
    cases = [({"FAKE_MPI_LIBRARY": "Foo MPI 1.0"}, "unknown MPI library"),
             ({"FAKE_MPI_LIBRARY": ""}, "cannot import mpi4py.MPI"),
             ({"FAKE_MPI_LIBRARY": OPEN_MPI, "FAKE_SRUN_PLUGINS": "none pmi2"},
              "no --mpi=pmix plugin"),
             ({"FAKE_WORLD_SIZE": "1"}, "world sizes '1' instead of 4")]
    for extra, message in cases:
        status, err, lines = submit(script, root, env, **extra)
        assert status == 2 and message in err, (extra, err)
        assert runs(lines) == []
        log.unlink(missing_ok=True)


@pytest.mark.parametrize("script", RUNS)
@pytest.mark.parametrize("url", ["postgresql://trex:s3cret@dbhost:5432/trex",
                                 "postgresql://trex:s3cret@dbhost/trex?sslmode=require",
                                 "postgresql://trex@dbhost/trex?sslmode=require&password=s3cret"])
def test_a_password_in_the_url_is_refused(cluster, script, url):
    root, env, _ = cluster
    status, err, lines = submit(script, root, env, TREX_DB=url)
    assert status == 2 and "TREX_DB holds a password" in err and ".pgpass" in err
    assert not any("s3cret" in line for line in lines if not line.startswith("trex "))
    assert runs(lines) == []


def test_url_without_password_goes_on_and_sqlite_is_the_default(cluster, tmp_path):
    root, env, _ = cluster
    (tmp_path / ".pgpass").write_text("dbhost:5432:trex:trex:s3cret\n")
    (tmp_path / ".pgpass").chmod(0o600)
    status, err, lines = submit("multi-node.sbatch", root, env)
    assert status == 0, err
    assert runs(lines) == [f"trex run {root} --db postgresql://trex@dbhost:5432/trex"]
    assert "OMP_NUM_THREADS=1" in lines[-1] and "no " not in err
    env = {k: v for k, v in env.items() if k != "TREX_DB"}
    Path(env["STUB_LOG"]).unlink()
    status, err, lines = submit("one-node.sbatch", root, env)
    assert status == 0 and runs(lines) == [f"trex run {root}"]
    assert any(line.startswith(f"trex status {root}") for line in lines)
    status, err, _ = submit("multi-node.sbatch", root, env)
    assert status == 2 and "set TREX_DB" in err


@pytest.mark.parametrize("script", RUNS)
def test_status_5_requeues_other_failures_do_not(cluster, script):
    root, env, log = cluster
    status, err, lines = submit(script, root, env, FAKE_TREX_STATUS="5")
    assert status == 0 and lines[-1] == "scontrol requeue 1234", err
    log.unlink()
    status, err, lines = submit(script, root, env, FAKE_TREX_STATUS="5", SLURM_RESTART_COUNT="20")
    assert status == 5 and "after 20 requeues" in err
    assert not any(line.startswith("scontrol") for line in lines)
    log.unlink()
    status, err, lines = submit(script, root, env, FAKE_TREX_STATUS="3")
    assert status == 3 and not any(line.startswith(("scontrol", "trex status")) for line in lines)


def test_a_signal_to_the_batch_shell_reaches_trex_and_requeues(cluster):
    root, env, log = cluster
    job = subprocess.Popen(["bash", str(JOBS / "one-node.sbatch"), str(root)],
                           env={**env, "FAKE_TREX_WAIT": "1"}, stderr=subprocess.PIPE, text=True)
    for _ in range(600):  # until the stub trex waits for its signal
        if log.exists() and "trex waiting" in log.read_text():
            break
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)
    err = job.communicate(timeout=60)[1]
    lines = log.read_text().splitlines()
    assert job.returncode == 0, err
    assert "trex got a signal" in lines and lines[-1] == "scontrol requeue 1234"


def test_venv_activation_and_bench(cluster, tmp_path):
    root, env, _ = cluster
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text('echo "activated" >> "$STUB_LOG"\n')
    status, err, lines = submit("bench.sbatch", root, env, TREX_VENV=str(venv))
    assert status == 0, err
    assert lines[0] == "activated" and lines[1].startswith("trex bench --json trex-bench-1234.json")
    status, err, _ = submit("bench.sbatch", root, env, TREX_VENV=str(tmp_path / "none"))
    assert status == 2 and "has no bin/activate" in err
