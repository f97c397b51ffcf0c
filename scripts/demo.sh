#!/usr/bin/env bash
# make demo: simulate a small night, run the pipeline on it with 2 MPI ranks,
# add a second night and run again (only the new night is processed), then
# show where the results are.
set -euo pipefail
root=${1:-demo}
np=${2:-2}
here=$(cd "$(dirname "$0")/.." && pwd)
bin=$here/.venv/bin
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
step() { printf '\n== %s\n' "$*"; }

rm -rf "$root"
step "trex init $root"
"$bin/trex" init "$root"
step "trex simulate: one night, 30 frames of 1024x1024, 2000 stars"
"$bin/trex" simulate "$root" --frames 30 --size 1024 --stars 2000 --seed 1
step "mpiexec -n $np trex run $root"
"$bin/mpiexec" -n "$np" "$bin/trex" --log-level WARNING run "$root"
"$bin/trex" status "$root"

step "a second night arrives: trex simulate --add-night, then the same trex run"
"$bin/trex" simulate "$root" --add-night
"$bin/mpiexec" -n "$np" "$bin/trex" --log-level WARNING run "$root"
"$bin/trex" status "$root"

if "$bin/trex" --log-level WARNING report "$root"; then :; fi

lc=$(find "$root/LC" -name '*.fits' -print -quit)
cat <<MSG

== results
project        $root/ (configuration: $root/trex.toml)
raw frames     $root/RAW/<night>/
masters        $root/BASE/CAL/
calibrated     $root/RED/<projid>/ (frames, sources, photometry products)
references     $root/BASE/reference-frames/
light curves   $root/LC/<projid>/  ($(find "$root/LC" -name '*.fits' | wc -l) files; e.g. $lc)
report         $root/PROJ/report/
database       $root/trex.sqlite   (sqlite3 $root/trex.sqlite '.tables')
truth          $root/PROJ/truth/   (what the simulator put in)

read a light curve:
  $bin/python -c "from trex.lightcurves import read_lightcurve; print(read_lightcurve('$lc'))"
MSG
