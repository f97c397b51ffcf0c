# shellcheck shell=bash
# Shared by the trex SLURM job scripts (jobs/*.sbatch); sourced, never run.
#
# Site set-up: edit the two lines marked EDIT below, or export the variables
# before sbatch (sbatch passes the environment on):
#   TREX_MODULES   modules to load, e.g. "gcc/12 openmpi/4.1.6": the MPI that
#                  mpi4py was built against (README "MPI on a cluster")
#   TREX_VENV      the Python environment holding trex, e.g. $HOME/trex/.venv
# Other knobs:
#   TREX_DB        database URL *without* a password, e.g.
#                  postgresql://trex@dbhost:5432/trex; the password goes in
#                  ~/.pgpass (chmod 600) or the file named by PGPASSFILE, which
#                  libpq reads.  A URL with a password is refused: it would show
#                  in `ps` on every node and in the job record.
#   TREX_SRUN_MPI  srun --mpi plugin; default from mpi4py's MPI library
#                  (MPICH, Intel MPI, MVAPICH: pmi2; Open MPI: pmix)
#   TREX_PYTHON    the Python of trex (default: the one beside `trex`)
#   TREX_MAX_REQUEUES  requeues after a stop by signal (default 20)
#
# Stopping before the time limit: the scripts ask for `--signal=USR1@300`
# (without `B:`), so 300 s before the limit SLURM sends USR1 to every task of
# the running step, i.e. to every trex rank: trex finishes the frames in
# hand, records them and exits with status 5 ("stopped by a signal; re-run to
# resume").  The batch shell is not signalled by SLURM; should it get USR1 or
# TERM anyway (scancel --signal=USR1 --batch, or `B:` in the directive), it
# passes the signal on to srun, which forwards it to the tasks.  Status 5 from
# trex leads to `scontrol requeue` (the job needs --requeue): the requeued job
# resumes where the stopped one left off.

: "${TREX_MODULES:=}"   # EDIT: e.g. TREX_MODULES="gcc/12 openmpi/4.1.6"
: "${TREX_VENV:=}"      # EDIT: e.g. TREX_VENV="$HOME/trex/.venv"

#: exit status of `trex run` stopped by SIGTERM/SIGUSR1 (re-run to resume)
TREX_STOPPED=5

trex_die() {  # trex_die STATUS MESSAGE: print the message and end the job
    echo "trex job: $2" >&2
    exit "$1"
}

trex_setup() {
    # Modules, venv and one BLAS thread per rank (each rank is one process).
    if [[ -n $TREX_MODULES ]]; then
        type module >/dev/null 2>&1 ||
            trex_die 2 "TREX_MODULES is set but there is no 'module' command (source your site's modules init first)"
        # shellcheck disable=SC2086 # a list of module names
        module load $TREX_MODULES
    fi
    if [[ -n $TREX_VENV ]]; then
        [[ -f $TREX_VENV/bin/activate ]] || trex_die 2 "TREX_VENV=$TREX_VENV has no bin/activate"
        # shellcheck disable=SC1091
        source "$TREX_VENV/bin/activate"
    fi
    command -v trex >/dev/null || trex_die 2 "no 'trex' command on PATH: set TREX_VENV or TREX_MODULES"
    if [[ -z ${TREX_PYTHON:-} ]]; then
        TREX_PYTHON=$(dirname "$(command -v trex)")/python
        [[ -x $TREX_PYTHON ]] || TREX_PYTHON=python3
    fi
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
    export MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
}

trex_db_args() {  # trex_db_args required|optional: sets the array TREX_DB_ARGS
    TREX_DB_ARGS=()
    local url=${TREX_DB:-}
    if [[ -z $url ]]; then
        [[ $1 == required ]] &&
            trex_die 2 "set TREX_DB to a PostgreSQL URL without a password, e.g. postgresql://trex@dbhost:5432/trex"
        return 0
    fi
    if [[ $url =~ ^[A-Za-z][A-Za-z0-9+.-]*://[^/@?#]*:[^/@?#]*@ || $url =~ [?\&]password= ]]; then
        trex_die 2 "TREX_DB holds a password: refused (it would show in ps and in the job record). Put the password in ~/.pgpass (chmod 600) or in the file named by PGPASSFILE and set TREX_DB without it, e.g. postgresql://user@host:5432/db"
    fi
    if [[ $url == postgres* ]]; then
        local pgpass=${PGPASSFILE:-$HOME/.pgpass}
        if [[ ! -f $pgpass ]]; then
            echo "trex job: no $pgpass: libpq will connect without a password" >&2
        elif [[ -n $(find "$pgpass" -perm /077 2>/dev/null) ]]; then
            echo "trex job: $pgpass is readable by others: libpq ignores it (chmod 600 $pgpass)" >&2
        fi
    fi
    # shellcheck disable=SC2034 # used by the job scripts
    TREX_DB_ARGS=(--db "$url")
}

trex_mpi_plugin() {  # prints the srun --mpi plugin that matches mpi4py's MPI
    if [[ -n ${TREX_SRUN_MPI:-} ]]; then
        echo "$TREX_SRUN_MPI"
        return 0
    fi
    local library
    library=$("$TREX_PYTHON" -c 'import mpi4py
mpi4py.rc.initialize = mpi4py.rc.finalize = False
from mpi4py import MPI
print(MPI.Get_library_version())') ||
        trex_die 2 "$TREX_PYTHON cannot import mpi4py.MPI: load the MPI module mpi4py was built against (TREX_MODULES)"
    case $library in
        *"Open MPI"*) echo pmix ;;
        *MPICH* | *"Intel(R) MPI"* | *MVAPICH*) echo pmi2 ;;
        *) trex_die 2 "unknown MPI library for srun --mpi: '${library%%$'\n'*}'; set TREX_SRUN_MPI (see srun --mpi=list)" ;;
    esac
}

trex_check_mpi() {  # sets TREX_MPI; fails early unless srun starts one MPI world of SLURM_NTASKS
    local ntasks=${SLURM_NTASKS:-${SLURM_NPROCS:-}}
    [[ -n $ntasks ]] || trex_die 2 "SLURM_NTASKS is not set: submit with sbatch"
    TREX_MPI=$(trex_mpi_plugin) || exit $?
    local plugins  # (not piped into grep -q: with pipefail its early exit fails the pipe)
    plugins=$(srun --mpi=list 2>&1) || true
    grep -qw -- "$TREX_MPI" <<<"$plugins" ||
        trex_die 2 "this srun has no --mpi=$TREX_MPI plugin (srun --mpi=list); set TREX_SRUN_MPI"
    # World-size check: with a plugin that does not match the MPI library every
    # task starts its own world of size 1, i.e. N independent trex runs.
    local sizes
    sizes=$(srun --mpi="$TREX_MPI" --ntasks="$ntasks" "$TREX_PYTHON" -c \
        'from mpi4py import MPI; print(MPI.COMM_WORLD.Get_size())' | sort -u | tr '\n' ' ') ||
        trex_die 2 "world-size check: srun --mpi=$TREX_MPI $TREX_PYTHON failed"
    [[ $sizes == "$ntasks " ]] ||
        trex_die 2 "srun --mpi=$TREX_MPI gave MPI world sizes '${sizes% }' instead of $ntasks: mpi4py's MPI does not match; set TREX_SRUN_MPI or rebuild mpi4py against the loaded MPI"
}

trex_launch() {  # trex_launch COMMAND...: run it, passing USR1/TERM/INT on; sets TREX_STATUS
    "$@" &
    local child=$!
    # shellcheck disable=SC2064 # the child's pid is fixed now
    trap "kill -s USR1 $child 2>/dev/null || true" USR1
    # shellcheck disable=SC2064
    trap "kill -s TERM $child 2>/dev/null || true" TERM INT
    while :; do
        TREX_STATUS=0
        wait "$child" || TREX_STATUS=$?
        # a status above 128 with the child still there: a trapped signal woke wait
        ((TREX_STATUS > 128)) && kill -0 "$child" 2>/dev/null && continue
        break
    done
    trap - USR1 TERM INT
}

trex_finish() {  # trex_finish STATUS: end the job; status 5 requeues it
    local status=$1
    if ((status == TREX_STOPPED)); then
        local restarts=${SLURM_RESTART_COUNT:-0} limit=${TREX_MAX_REQUEUES:-20}
        ((restarts < limit)) ||
            trex_die "$status" "stopped by a signal after $restarts requeues (TREX_MAX_REQUEUES=$limit): resubmit to resume"
        echo "trex job: trex stopped by a signal (status 5): requeueing job $SLURM_JOB_ID to resume" >&2
        scontrol requeue "$SLURM_JOB_ID" ||
            trex_die "$status" "scontrol requeue $SLURM_JOB_ID failed: resubmit the job to resume"
        exit 0
    fi
    ((status == 0)) || trex_die "$status" "trex exited with status $status"
}
