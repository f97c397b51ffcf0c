"""Write and read time of one light-curve file (the hot path of transposition and detrending).

    .venv/bin/python bench/lcformat_io.py [--rows 2000] [--apertures 3] [--repeat 7] [--number 200]

Writes a light curve of ``--rows`` rows and ``--apertures`` apertures with a
typical header (star identity, 3 nights of provenance) with
``trex.lcformat.write_lightcurve`` and reads it back with
``trex.lcformat.read_rows`` (the fast reader) and ``read_lightcurve`` (astropy
Table with units and Time), in a temporary folder; prints the best of
``--repeat`` timeit runs of ``--number`` calls, per call, in ms.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import timeit
from pathlib import Path

import numpy as np

from trex import lcformat


def sample(nrows: int, napertures: int) -> tuple[np.ndarray, list[dict]]:
    """Rows and header cards of a plausible light curve."""
    rng = np.random.default_rng(1)
    rows = lcformat.empty_rows(nrows, napertures)
    rows["rjd"] = 61000.5 + np.sort(rng.uniform(0, 90, nrows))
    rows["bjd"] = rows["rjd"] + 2400000.0 + 0.003
    rows["framekey"] = np.arange(nrows)
    rows["frame"] = [f"2026-11-29_5-{i:07d}.fits".encode() for i in range(nrows)]
    for name in rows.dtype.names:
        if rows.dtype[name].kind == "f" and name not in ("rjd", "bjd"):
            rows[name] = rng.normal(10.0, 0.1, nrows)
    cards = [{"name": "OBJECTID", "value": "HAT-123-0001234"}, {"name": "RA", "value": 61.25},
             {"name": "DEC", "value": -29.5}, {"name": "MAG", "value": 11.2},
             {"name": "PROJID", "value": "12"}, {"name": "FIELD", "value": "G1234"}]
    cards += [{"name": f"NIGHT{i:03d}", "value": f"2026-11-{27 + i} rows={nrows // 3} "
               "trex=0.1.0 config=0123456789abcdef"} for i in range(3)]
    return rows, cards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--apertures", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=200)
    parser.add_argument("--dir", default=None, help="folder of the file (default: a temporary "
                        "folder in TMPDIR; /dev/shm takes the disk out of the figures)")
    args = parser.parse_args()
    rows, cards = sample(args.rows, args.apertures)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "lc.fits"
        calls = {"write_lightcurve": lambda: lcformat.write_lightcurve(path, rows, cards),
                 "read_rows": lambda: lcformat.read_rows(path),
                 "read_lightcurve": lambda: lcformat.read_lightcurve(path)}
        lcformat.write_lightcurve(path, rows, cards)
        out = {"rows": args.rows, "apertures": args.apertures, "bytes": path.stat().st_size}
        for name, call in calls.items():
            call()
            best = min(timeit.repeat(call, repeat=args.repeat, number=args.number))
            out[f"{name}_ms"] = round(1e3 * best / args.number, 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
