"""Calibration throughput and master-building memory.

    .venv/bin/python bench/calibrate_speed.py [--sizes 2048 4096] [--nmaster 50] [--tmp DIR]

1. Per-frame calibration at each size: ``calibrate_image`` on a raw frame and
   masters already in memory (excluding I/O), and ``run`` + ``write_calibrated``
   (read the raw uint16 frame, calibrate, write float32 + MASK; masters cached
   as for consecutive frames of one night).  Median of 3 repeats.
2. Master bias and master flat from ``--nmaster`` raw frames of the largest size,
   each built in a fresh subprocess: wall time, tracemalloc peak and peak RSS.
   The frames are written to a temporary folder and deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fitsio
import numpy as np

from trex.config import Config
from trex.fits import read_header
from trex.header import parse_header

NOVER = 32


def write_raw(path: Path, size: int, rng, kind: str = "object", exptime: float = 30.0) -> None:
    """A size x size frame plus a 32-column overscan strip, uint16."""
    data = rng.normal(1800.0, 25.0, (size, size + NOVER)).astype(np.float32)
    data[:, size:] = rng.normal(1000.0, 5.0, (size, NOVER))
    header = [
        {"name": "IMAGETYP", "value": kind}, {"name": "EXPTIME", "value": exptime},
        {"name": "DATE-OBS", "value": "2026-11-29T03:00:00"}, {"name": "PROJID", "value": "B"},
        {"name": "CCD", "value": "1"}, {"name": "FILTER", "value": "r"},
        {"name": "SATURATE", "value": 60000.0},
        {"name": "BIASSEC", "value": f"[{size + 1}:{size + NOVER},1:{size}]"},
        {"name": "TRIMSEC", "value": f"[1:{size},1:{size}]"},
    ]
    fitsio.write(str(path), np.clip(data, 0, 65535).astype(np.uint16), header=header,
                 clobber=True)


def _median_time(func, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def per_frame(size: int, tmp: Path) -> dict:
    from trex.calibrate import calibrate_image, run, write_calibrated
    from trex.fits import read_image
    from trex.frame import Context, Frame
    from trex.masters import Master, write_master
    from trex.project import Project

    rng = np.random.default_rng(1)
    raw_path = tmp / f"obj-{size}.fits"
    write_raw(raw_path, size, rng)
    cal = tmp / "BASE" / "CAL"
    masters = {}
    for kind, value in (("bias", 5.0), ("dark", 0.01), ("flat", 1.0)):
        image = rng.normal(value, 0.01 * value, (size, size)).astype(np.float32)
        badpix = np.zeros((size, size), np.uint8) if kind != "bias" else None
        path = cal / f"{kind}-{size}.fits"
        from astropy.io import fits as afits
        write_master(path, Master(kind, image, np.zeros((size, size), np.int16),
                                  afits.Header({"MASTER": kind}), badpix))
        masters[(kind, "n1", "1", "r" if kind == "flat" else "")] = path
    config = Config()
    context = Context(Project(tmp), config, masters)
    meta = parse_header(read_header(raw_path), config, raw_path)

    def frame():
        return Frame(1, raw_path, "n1", meta)

    raw, _ = read_image(raw_path)
    paths = {"bias": masters[("bias", "n1", "1", "")], "dark": masters[("dark", "n1", "1", "")],
             "flat": masters[("flat", "n1", "1", "r")]}
    calibrate_image(raw, frame(), paths, config)            # warm the master cache
    compute = _median_time(lambda: calibrate_image(raw, frame(), paths, config))
    read = _median_time(lambda: read_image(raw_path))
    full = _median_time(lambda: write_calibrated(run(frame(), context)))
    return {"size": size, "calibrate_s": round(compute, 4), "read_raw_s": round(read, 4),
            "read_calibrate_write_s": round(full, 4)}


def peak_rss_mb() -> float:
    """Peak resident memory of this process image (VmHWM; ru_maxrss would include
    the parent's peak, which Linux carries across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def master_child(kind: str, folder: str) -> None:
    """Build one master from every raw frame in ``folder``; print JSON figures."""
    import tracemalloc

    from trex.masters import build_master

    config = Config()
    paths = sorted(Path(folder).glob("m-*.fits"))
    inputs = [(p, parse_header(read_header(p), config, p)) for p in paths]
    tracemalloc.start()
    t0 = time.perf_counter()
    if kind == "bias":
        master = build_master("bias", inputs, config.calibrate)
    else:
        master = build_master("flat", inputs, config.calibrate)
    wall = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    rss = peak_rss_mb()
    print(json.dumps({"kind": kind, "frames": len(paths), "shape": list(master.image.shape),
                      "seconds": round(wall, 2), "tracemalloc_peak_mb": round(peak / 2**20, 1),
                      "peak_rss_mb": round(rss, 1)}))


def masters_memory(size: int, nframes: int, tmp: Path) -> list[dict]:
    folder = tmp / "masters"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(nframes):
        write_raw(folder / f"m-{i:03d}.fits", size, rng, "flat", 5.0)
    out = []
    for kind in ("bias", "flat"):
        text = subprocess.run([sys.executable, __file__, "--child", kind, str(folder)],
                              check=True, capture_output=True, text=True).stdout
        out.append(json.loads(text.strip().splitlines()[-1]))
    shutil.rmtree(folder)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--nmaster", type=int, default=50)
    parser.add_argument("--tmp", default=None, help="scratch folder (default: system temp)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        master_child(*args.child)
        return
    tmp = Path(tempfile.mkdtemp(prefix="trex-calbench-", dir=args.tmp))
    try:
        for size in args.sizes:
            print(json.dumps(per_frame(size, tmp)), flush=True)
        if args.nmaster:
            for row in masters_memory(max(args.sizes), args.nmaster, tmp):
                print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
