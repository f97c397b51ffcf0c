"""Light-curve quality of a reduced simulated night, measured against the simulation's truth.

``python -m trex.bench.quality ROOT`` (ROOT: a ``trex simulate`` night after
``trex run``) prints three markdown tables:

* per magnitude bin (true magnitude), the median over constant stars of
  RMS / floor at each star's best aperture (:func:`trex.bench.floor.floor_ratios`)
  of the six light-curve columns ``arm aep atf irm iep itf``, each with the
  number of stars it had (``aep``..``itf`` are NaN on nights too short to detrend);
* per variable star whose transit or eclipse the night saw (at least 2 frames in
  it and 3 out of it), the measured depth over the true depth per column
  ``arm atf irm itf``: measured = 1 - 10^(-0.4 (median in - median out)) of the
  star's best aperture (lowest robust RMS out of transit), true = the median flux
  deficit of the truth's ``variability`` over the same in-transit frames.  Single
  light curves, photon and scintillation noise included (tests/test_signals.py
  removes them with a twin night);
* the centre-to-corner trend of ``aim`` (no aperture corrections) and ``arm`` per
  aperture: each constant star's median over frames of (magnitude - true
  magnitude), its median over stars removed, fitted as a + b rho² against rho²
  (distance from the frame centre over the half diagonal, squared: 0 at the
  centre, 1 in the corners; tests/test_apcorr.py's fit, here on the light curves
  and refitted without the stars > 5 robust sigma off, i.e. blends); b in mmag
  with its standard error, for the bright stars of tests/test_apcorr.py (8.5-11)
  and per magnitude bin.

Light-curve values are taken as written, flags not applied (``aiq`` holds
PARTIAL_SKY etc. on good points).
"""

from __future__ import annotations

import argparse
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import fitsio
import numpy as np

from trex.aperture import MAG_ERR_FACTOR
from trex.bench import floor
from trex.bench.endtoend import lightcurve_files
from trex.simulate.truth import load_truth

log = logging.getLogger(__name__)

COLUMNS = ("arm", "aep", "atf", "irm", "iep", "itf")
DEPTH_COLUMNS = ("arm", "atf", "irm", "itf")
TREND_COLUMNS = ("aim", "arm")
BINS = tuple(float(m) for m in range(7, 16))
BRIGHT = (8.5, 11.0)       # mag: tests/test_apcorr.py's bright constant stars
ECLIPSING = ("transit", "eb")


def lightcurve_magnitudes(root: Path, truth: dict, kinds: tuple[str, ...] = COLUMNS,
                          apertures: int | None = None) -> dict[str, np.ndarray]:
    """{kind: (truth frames, truth stars, apertures) magnitudes} of the light curves
    LC/<projid>/<objectid>.fits of ``root`` (NaN where not measured; apertures: as many
    as the truth's ``noise`` when None)."""
    naper = truth["noise"].shape[2] if apertures is None else apertures
    index = {str(o): i for i, o in enumerate(truth["objectid"])}
    shape = (len(truth["jd"]), len(truth["objectid"]), naper)
    out = {kind: np.full(shape, np.nan) for kind in kinds}
    names = [f"{kind}_{a:03d}" for kind in kinds for a in range(naper)]
    for rel in lightcurve_files(root):
        star = index.get(rel.name[:-len(".fits")])  # simulated ids are plain file names
        if star is None:
            continue
        table = fitsio.read(str(root / rel), ext="LIGHTCURVE", columns=["rjd", *names])
        frames = floor.frame_index(np.asarray(table["rjd"], float), truth)
        ok = frames >= 0
        for kind in kinds:
            for a in range(naper):
                out[kind][frames[ok], star, a] = table[f"{kind}_{a:03d}"][ok]
    return out


def rho2(truth: dict, size: int) -> np.ndarray:
    """(nstars,) squared distance of each star (median position over the frames) from the
    centre of a ``size``² frame, over the squared half diagonal (1 in the corners)."""
    x, y = np.median(truth["x"], axis=0), np.median(truth["y"], axis=0)
    return ((x - (size - 1) / 2) ** 2 + (y - (size - 1) / 2) ** 2) / (0.5 * size**2)


def centre_to_corner(values: np.ndarray, truth: dict, size: int, use: np.ndarray,
                     least: int = 20, clip: float = 5.0) -> tuple[float, float, int]:
    """(b, its standard error, stars), mag: the change from the centre to the corners of
    each star's median over frames of ``values`` (nframes, nstars) minus its true
    magnitude, less the median of that over the stars ``use`` (nstars,) that were
    measured, fitted as a + b rho²; stars more than ``clip`` robust sigma off the first
    fit (blends) are left out of the second.  NaN with fewer than ``least`` stars."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # stars never measured
        diff = np.nanmedian(values, axis=0) - truth["mag"]
    pick = use & np.isfinite(diff)
    if pick.sum() < least:
        return float("nan"), float("nan"), int(pick.sum())
    r2, diff = rho2(truth, size)[pick], diff[pick] - np.median(diff[pick])
    keep = np.ones(r2.size, bool)
    for _ in range(2):
        if keep.sum() < least:
            return float("nan"), float("nan"), int(keep.sum())
        coef, cov = np.polyfit(r2[keep], diff[keep], 1, cov=True)
        resid = diff - np.polyval(coef, r2)
        scale = floor.robust_rms(resid[keep])
        last, keep = keep, np.abs(resid) <= clip * scale
    return float(coef[0]), float(np.sqrt(cov[0, 0])), int(last.sum())


def depth_ratio(mags: np.ndarray, factor: np.ndarray, least_in: int = 2,
                least_out: int = 3) -> tuple[float, float]:
    """(measured / true depth, its standard error) of one star from its magnitudes
    (nframes, naper) and the truth's flux factor (nframes,), at the aperture with the
    lowest robust RMS out of transit; the error from that RMS (a median's error
    1.2533 sigma / sqrt(n), in and out).  NaN with fewer than ``least_in`` /
    ``least_out`` measured frames in / out of transit."""
    inside = factor < 1 - 1e-6
    ok = np.isfinite(mags)
    enough = ((ok & inside[:, None]).sum(axis=0) >= least_in) & \
        ((ok & ~inside[:, None]).sum(axis=0) >= least_out)
    if not enough.any():
        return float("nan"), float("nan")
    with np.errstate(all="ignore"):
        rms = np.where(enough, floor.robust_rms(mags[~inside], axis=0), np.inf)
    best = int(np.argmin(rms))
    values, true = mags[:, best], np.median(1 - factor[inside])
    nin, nout = np.isfinite(values[inside]).sum(), np.isfinite(values[~inside]).sum()
    step = np.nanmedian(values[inside]) - np.nanmedian(values[~inside])
    error = 1.2533 * rms[best] * np.sqrt(1 / nin + 1 / nout) / MAG_ERR_FACTOR / true
    return float((1 - 10 ** (-0.4 * step)) / true), float(error)


@dataclass
class Quality:
    """What :func:`measure` found (see the module docstring)."""

    frames: int
    bins: dict[str, list]          # column -> floor.per_bin rows
    depths: list[dict]             # :func:`depth_rows`
    trends: list[tuple]            # :func:`trend_rows`


def depth_rows(mags: dict[str, np.ndarray], truth: dict) -> list[dict]:
    """Per transiting or eclipsing variable with >= 2 frames in and 3 out of its dips and
    ``arm`` on at least half the frames: star, kind, forced, mag, depth (true), inside
    (frames) and ratios {column: :func:`depth_ratio`} for ``DEPTH_COLUMNS``."""
    out = []
    for v in truth["variables"]:
        star, factor = v["index"], truth["variability"][:, v["index"]]
        inside = factor < 1 - 1e-6
        if (v["kind"] not in ECLIPSING or inside.sum() < 2 or (~inside).sum() < 3
                or np.isfinite(mags["arm"][:, star]).any(axis=1).sum() < len(factor) / 2):
            continue
        out.append({"star": str(truth["objectid"][star]), "kind": v["kind"],
                    "forced": v.get("forced", ""), "mag": float(truth["mag"][star]),
                    "depth": float(np.median(1 - factor[inside])), "inside": int(inside.sum()),
                    "ratios": {c: depth_ratio(mags[c][:, star], factor) for c in DEPTH_COLUMNS}})
    return out


def trend_rows(mags: dict[str, np.ndarray], truth: dict,
               bins: tuple[float, ...]) -> list[tuple[str, dict]]:
    """[(magnitude range, {f"{column}_{aperture:03d}": :func:`centre_to_corner`})] of the
    constant stars for ``TREND_COLUMNS``: ``BRIGHT``, then each bin."""
    size, constant = int(truth["params"]["optics"]["size"]), floor.constant_stars(truth)
    ranges = [BRIGHT] + list(zip(bins[:-1], bins[1:]))
    return [(f"{lo:g}-{hi:g}", {f"{c}_{a:03d}": centre_to_corner(
        mags[c][:, :, a], truth, size, constant & (truth["mag"] >= lo) & (truth["mag"] < hi))
        for c in TREND_COLUMNS for a in range(mags[c].shape[2])}) for lo, hi in ranges]


def measure(root: Path, bins: tuple[float, ...] = BINS) -> Quality:
    """RMS / floor per bin, depth ratios and field trends of a reduced simulated night."""
    truth = load_truth(root)
    mags = lightcurve_magnitudes(Path(root), truth, tuple(dict.fromkeys(COLUMNS + TREND_COLUMNS)))
    table = {k: floor.per_bin(floor.floor_ratios(mags[k], truth), truth["mag"], bins)
             for k in COLUMNS}
    return Quality(len(truth["jd"]), table, depth_rows(mags, truth),
                   trend_rows(mags, truth, bins))


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown(q: Quality) -> str:
    """The three tables of a :class:`Quality` as markdown."""
    names = list(q.bins)
    lines = [f"RMS / floor, median over constant stars, best aperture ({q.frames} frames; "
             "cells: ratio (stars))", "", _row(["mag", *names]), _row(["---"] * (1 + len(names)))]
    for k, (lo, hi, _, _) in enumerate(q.bins[names[0]]):
        lines.append(_row([f"{lo:g}-{hi:g}"] + [f"{q.bins[n][k][2]:.2f} ({q.bins[n][k][3]})"
                                                for n in names]))
    lines += ["", "Depth recovered, measured / true ± standard error (from the scatter out of "
              "transit), best aperture out of transit", "",
              _row(["star", "kind", "mag", "true depth", "frames in", *DEPTH_COLUMNS]),
              _row(["---"] * (5 + len(DEPTH_COLUMNS)))]
    for d in q.depths:
        kind = d["kind"] + (f" ({d['forced']})" if d["forced"] else "")
        lines.append(_row([d["star"], kind, f"{d['mag']:.2f}", f"{d['depth']:.4f}",
                           str(d["inside"])] + [f"{d['ratios'][c][0]:.2f} ± {d['ratios'][c][1]:.2f}"
                                                for c in DEPTH_COLUMNS]))
    keys = list(q.trends[0][1])
    lines += ["", "Centre-to-corner trend b of (mag - true mag) = a + b rho², mmag, constant "
              "stars (cells: b ± standard error (stars))", "", _row(["mag", *keys]),
              _row(["---"] * (1 + len(keys)))]
    for label, values in q.trends:
        lines.append(_row([label] + [f"{1e3 * values[k][0]:+.0f} ± {1e3 * values[k][1]:.0f} "
                                     f"({values[k][2]})" for k in keys]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trex.bench.quality",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a simulated night after `trex run`")
    args = parser.parse_args(argv)
    print(markdown(measure(args.root)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
