"""``trex bench``: throughput of trex beside its peers, measured in one run.

Each benchmark module has ``NAME`` and ``run(quick) -> list[Row]``; it makes
its synthetic inputs in memory (or a scratch folder), runs trex and the
peer on identical inputs, takes the median of repeats and checks that both
gave the same answer.  A module whose trex stage or peer is missing is left
out with a note, never faked.  Timings are single-threaded (``make bench``
sets OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import platform
import time

from trex import __version__

log = logging.getLogger(__name__)

#: benchmark modules, in the order of the table
MODULES = ("photometry", "extract", "subtract", "calibrate", "transpose", "ingest", "backfill",
           "endtoend", "nights", "chain")


class _NoteCollector(logging.Handler):
    """Turns a benchmark's warnings (e.g. a peer that is not installed) into notes."""

    def __init__(self, name: str, notes: list[str]):
        super().__init__(logging.WARNING)
        self.name, self.notes = name, notes

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        self.notes.append(text if text.startswith(f"{self.name}:") else f"{self.name}: {text}")


def machine() -> dict:
    """CPU, cores and versions, for the JSON output."""
    import numpy
    import scipy

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "trex": __version__, "numpy": numpy.__version__, "scipy": scipy.__version__,
            "threads": os.environ.get("OMP_NUM_THREADS", "unset")}


def format_table(rows) -> str:
    head = f"{'operation':58s} {'size':22s} {'trex s':>9s} {'peer':34s} {'peer s':>9s} {'ratio':>7s}  check"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.operation:58s} {r.size:22s} {r.trex:9.3f} {r.peer:34s} "
                     f"{r.peer_time:9.3f} {r.ratio:7.2f}  {r.check}")
    return "\n".join(lines)


def main(quick: bool = False, only: list[str] | None = None, json_path: str | None = None) -> int:
    """Run the benchmarks, print the table, optionally write JSON. Returns 0."""
    names = [m for m in MODULES if not only or m in only]
    rows, notes = [], []
    start = time.perf_counter()
    for name in names:
        try:
            module = importlib.import_module(f"trex.bench.{name}")
        except ImportError as err:
            notes.append(f"{name}: not available ({err})")
            continue
        log.info("bench %s ...", name)
        t0 = time.perf_counter()
        collector = _NoteCollector(name, notes)
        logging.getLogger("trex.bench").addHandler(collector)
        try:
            result = module.run(quick=quick)
        finally:
            logging.getLogger("trex.bench").removeHandler(collector)
        rows += result
        log.info("bench %s: %d rows in %.1f s", name, len(result), time.perf_counter() - t0)
    print(f"trex bench ({'quick' if quick else 'full'}), {machine()['cpu']}, "
          f"{time.perf_counter() - start:.0f} s; ratio = peer time / trex time (>1: trex faster)")
    print(format_table(rows))
    for note in notes:
        print(f"note: {note}")
    if json_path:
        with open(json_path, "w") as fh:
            json.dump({"machine": machine(), "quick": quick, "rows": [r.as_dict() for r in rows],
                       "notes": notes}, fh, indent=2)
    return 0
