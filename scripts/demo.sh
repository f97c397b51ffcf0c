#!/usr/bin/env bash
# make demo: simulate a small night, run the pipeline on it, show where the results are.
set -euo pipefail
root=${1:-demo}
np=${2:-2}
here=$(cd "$(dirname "$0")/.." && pwd)
bin=$here/.venv/bin
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1

rm -rf "$root"
"$bin/trex" init "$root"
if "$bin/trex" simulate "$root" --frames 20 --size 1024 --stars 2000 --seed 1; then
    "$bin/mpiexec" -n "$np" "$bin/trex" run "$root" || echo "(trex run: some stages are not built yet)"
fi
"$bin/trex" status "$root"
echo
echo "project:       $root"
echo "raw frames:    $root/RAW/"
echo "calibrated:    $root/RED/"
echo "light curves:  $root/LC/"
echo "database:      $root/trex.sqlite"
