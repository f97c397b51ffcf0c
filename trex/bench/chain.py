"""The whole chain: ``trex run`` beside the classic fitsh chain as pipe-trex ran it, same frames.

One simulated night (:func:`trex.simulate.simulate_project`, Rice-compressed
``.fits.fz`` frames as HATPI's; ``FULL``: 2048^2, 40 object frames, 2x10^4
catalog stars; ``--quick``: 512^2, 6 frames; the simulation is not timed) is
reduced twice, one core each (``OMP_NUM_THREADS=1``), one run each:

* trex: ``trex run ROOT --stages S`` once per stage, in order, each in its own
  process (the per-phase times; the process start and the reloading of the
  calibrated frame are in every stage's time), then one ``trex run`` of all six
  stages on a fresh copy of the night (the whole-chain time).  ``detrend``
  (EPD/TFA) is not run: the fitsh chain has no counterpart;
* fitsh: :func:`trex.bench.fitshchain.run_chain` (calibration in numpy,
  fistar, grmatch + grtrans, fiphot, numpy magnitude fit, grtrans + fitrans -k,
  ficonv-matched ficombine median reference, ficonv on trex's stamps, fiphot
  on the difference images, grcollect); every tool a whole process (start,
  FITS and text I/O in its time), phases timed around the calls.

Rows: per phase, s/frame of trex's stage and of the fitsh phases doing the
same work (ratio = fitsh / trex); the subtraction once more with ficonv on
pipe-trex's 30x30 grid of 41x41 stamps; the whole chain (trex: the single
run).  Checks: the fitsh sub-phases, the light curves each chain wrote (stars
with at least half the frames measured, stars in both) and the median robust
RMS (1.4826 MAD) of catalog-magnitude 8.5-10.5 stars (1-3 mag below
saturation) in the 2.45 px aperture after the magnitude fit (arm) and from
the difference images (irm), to show both chains worked.  Then the quality
rows: per magnitude bin, the median over constant stars of the RMS over the
simulator's noise floor at each star's best aperture (:mod:`trex.bench.floor`)
of trex's irm against fitsh's on pipe-trex's grid (ratio = fitsh / trex: above
1 means trex's light curves are closer to the floor), with arm of both and
fitsh's irm on trex's stamps in the check.
"""

from __future__ import annotations

import inspect
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import fitsio
import numpy as np

from trex.bench import fitshchain, floor
from trex.bench import fitshdata as fd
from trex.bench.common import Row
from trex.bench.endtoend import lightcurve_files, single_thread_env
from trex.bench.quality import lightcurve_magnitudes
from trex.project import init_project
from trex.simulate import simulate_project
from trex.simulate.truth import load_truth

log = logging.getLogger(__name__)

NAME = "chain"
FULL = {"frames": 40, "size": 2048, "stars": 20_000}
QUICK = {"frames": 6, "size": 512, "stars": 1500}
SEED = 11
STAGES = ("calibrate", "extract", "astrometry", "photometry", "subtract", "lightcurves")
#: the trex stages each group runs (the magnitude fit is a stage of its own)
RUNS = {"photometry": ("photometry", "magfit")}
#: (row label, trex stage, fitsh phases doing the same work, peer, what the peer does)
GROUPS = (("calibration", "calibrate", ("calibrate",), "numpy (not fiarith)",
           "median masters, overscan, trim, bias/dark/flat, FITS write"),
          ("extraction + S/D/K fit", "extract", ("extract",), "fitsh fistar",
           "pipe-trex's options (elliptic fit)"),
          ("astrometry", "astrometry", ("astrometry",), "fitsh grmatch + grtrans",
           "numpy catalog projection and border cut, order-3 fit"),
          ("photometry + magnitude fit", "photometry", ("photometry", "magfit"),
           "fitsh fiphot + numpy magfit", "3 apertures, 7-13 px annulus"),
          ("subtraction + difference photometry", "subtract",
           ("register", "photref", "subtract", "diffphot"), "fitsh fitrans, ficonv, fiphot",
           "fitrans -k, ficonv-matched ficombine median reference, ficonv on trex's stamps"),
          ("light curves (transposition)", "lightcurves", ("lightcurves",),
           "numpy rows + fitsh grcollect",
           "one text file per star, 10 columns (trex: FITS, the 50 columns of SPEC 5, BJD)"))
PROCESS_NOTE = "fitsh tools timed as whole processes (start, FITS and text I/O)"
BRIGHT = (8.5, 10.5)


@dataclass
class LightCurves:
    """What a chain's light curves show: stars measured, bright-star scatter."""

    stars: set[str]       # objectids with >= half the frames measured (arm, 2.45 px)
    files: int
    rms_arm: float        # median robust RMS of the bright stars, mag
    rms_irm: float
    bright: int           # bright stars with an arm RMS

    def text(self) -> str:
        return (f"{len(self.stars)} stars ({self.files} files), median RMS of {self.bright} "
                f"mag {BRIGHT[0]}-{BRIGHT[1]} stars arm {self.rms_arm:.4f} irm {self.rms_irm:.4f}")


def bright_rms(series: dict[str, np.ndarray], stars: set[str],
               catmag: dict[str, float]) -> tuple[float, int]:
    """(median robust RMS, stars) over the ``stars`` of catalog magnitude in ``BRIGHT``."""
    rms = [fd.robust_rms(values) for star, values in series.items()
           if star in stars and BRIGHT[0] <= catmag.get(star, 99.0) <= BRIGHT[1]]
    rms = [r for r in rms if np.isfinite(r)]
    return (float(np.median(rms)), len(rms)) if rms else (float("nan"), 0)


def summarise(curves: dict[str, tuple[np.ndarray, np.ndarray]], files: int, nframes: int,
              catmag: dict[str, float]) -> LightCurves:
    """:class:`LightCurves` of {objectid: (arm, irm)} (aperture 2.45 px)."""
    stars = {s for s, (arm, _) in curves.items() if np.isfinite(arm).sum() >= nframes / 2}
    arm, nbright = bright_rms({s: c[0] for s, c in curves.items()}, stars, catmag)
    irm, _ = bright_rms({s: c[1] for s, c in curves.items()}, stars, catmag)
    return LightCurves(stars, files, arm, irm, nbright)


def trex_lightcurves(root: Path, nframes: int, catmag: dict[str, float]) -> LightCurves:
    """Summary of trex's LC/<projid>/<objectid>.fits (SPEC section 5)."""
    curves = {}
    files = lightcurve_files(root)
    for rel in files:
        table = fitsio.read(str(root / rel), ext="LIGHTCURVE", columns=["arm_001", "irm_001"])
        curves[rel.name[:-len(".fits")]] = (table["arm_001"].astype(float),
                                            table["irm_001"].astype(float))
    return summarise(curves, len(files), nframes, catmag)


def fitsh_lightcurves(lcdir: Path, ids: np.ndarray, nframes: int,
                      catmag: dict[str, float]) -> LightCurves:
    """Summary of grcollect's ``<index>.lc`` files (columns of
    :func:`trex.bench.fitshdata.lightcurve_rows`)."""
    curves = {}
    files = sorted(lcdir.glob("*.lc"))
    for path in files:
        table = np.loadtxt(path, ndmin=2)
        curves[str(ids[int(path.stem)])] = (table[:, 5], table[:, 8])
    return summarise(curves, len(files), nframes, catmag)


APERTURES = 3


def trex_magnitudes(root: Path, truth: dict) -> dict[str, np.ndarray]:
    """{"arm", "irm"}: (truth frames, truth stars, apertures) magnitudes of trex's light
    curves (NaN where not measured)."""
    return lightcurve_magnitudes(root, truth, ("arm", "irm"), APERTURES)


def fitsh_magnitudes(result: fitshchain.ChainResult, truth: dict) -> dict[str, np.ndarray]:
    """As :func:`trex_magnitudes` for grcollect's files (``arm``, ``irm``) and the
    difference photometry on pipe-trex's grid (``grid``, when it was run)."""
    index = {str(o): i for i, o in enumerate(truth["objectid"])}
    ids = result.catalog[0]
    stars = np.array([index.get(str(i), -1) for i in ids])
    shape = (len(truth["jd"]), len(truth["objectid"]), APERTURES)
    out = {kind: np.full(shape, np.nan) for kind in ("arm", "irm")}
    for path in sorted(result.lcdir.glob("*.lc")):
        table = np.loadtxt(path, ndmin=2)
        star, frames = stars[int(path.stem)], floor.frame_index(table[:, 1], truth)
        ok = frames >= 0
        if star >= 0:
            out["arm"][frames[ok], star] = table[ok, 4:4 + APERTURES]
            out["irm"][frames[ok], star] = table[ok, 4 + APERTURES:4 + 2 * APERTURES]
    names = [str(f).split(".")[0] for f in truth["frame"]]
    grid = np.full(shape, np.nan)
    for stem in result.stems:
        path = result.work / f"{stem}.giphot"
        if not path.exists() or stem.split(".")[0] not in names:
            continue
        phot_ids, _, _, mags = fd.read_phot(path, APERTURES)
        rows = stars[phot_ids]
        grid[names.index(stem.split(".")[0]), rows[rows >= 0]] = mags[rows >= 0]
    if np.isfinite(grid).any():
        out["grid"] = grid
    return out


def quality(root: Path, result: fitshchain.ChainResult) -> dict[str, list]:
    """Per-bin RMS / floor (:func:`trex.bench.floor.per_bin`) of trex's arm and irm
    ("trex arm", "trex irm") and fitsh's ("fitsh arm", "fitsh irm", "fitsh grid irm")."""
    truth = load_truth(root)
    found = {f"trex {k}": v for k, v in trex_magnitudes(root, truth).items()}
    found.update({f"fitsh {'grid irm' if k == 'grid' else k}": v
                  for k, v in fitsh_magnitudes(result, truth).items()})
    return {name: floor.per_bin(floor.floor_ratios(mags, truth), truth["mag"])
            for name, mags in found.items()}


def quality_rows(label: str, bins: dict[str, list]) -> list[Row]:
    """One row per magnitude bin: trex's irm RMS/floor against fitsh's on pipe-trex's grid
    (or on trex's stamps without the grid run)."""
    peer = "fitsh grid irm" if "fitsh grid irm" in bins else "fitsh irm"
    rows = []
    for k, (lo, hi, value, count) in enumerate(bins["trex irm"]):
        others = "; ".join(f"{name} {bins[name][k][2]:.3f}" for name in bins
                           if name not in ("trex irm", peer))
        rows.append(Row(f"chain quality: irm RMS/floor, mag {lo:g}-{hi:g}", label, value,
                        f"fitsh ficonv ({'pipe-trex grid' if 'grid' in peer else 'trex stamps'})",
                        bins[peer][k][2], f"{others}; {count} constant stars; median over "
                        "stars of robust RMS / expected noise, best aperture"))
    return rows


def trex_run(root: Path, stages: tuple[str, ...], cpu: dict | None = None) -> float:
    """Wall time of ``trex run ROOT --stages ...`` in a subprocess, one thread (its CPU
    time, user + system, into ``cpu["trex"]`` when given)."""
    command = [sys.executable, "-m", "trex", "--log-level", "WARNING", "run", str(root),
               "--stages", ",".join(stages)]
    start, began = time.perf_counter(), fitshchain.cpu_seconds()
    done = subprocess.run(command, capture_output=True, text=True, env=single_thread_env())
    elapsed = time.perf_counter() - start
    if cpu is not None:
        cpu["trex"] = fitshchain.cpu_seconds() - began
    if done.returncode != 0:
        raise RuntimeError(f"trex run {root} --stages {','.join(stages)} failed "
                           f"({done.returncode}): {done.stderr[-2000:]}")
    return elapsed


def simulate(root: Path, params: dict, realism: str | None) -> None:
    """The night (``realism`` passed through when the simulator takes it)."""
    init_project(root)
    extra = {}
    if realism is not None:
        if "realism" in inspect.signature(simulate_project).parameters:
            extra["realism"] = realism
        else:
            log.warning("chain: this simulator has no realism option; default frames used")
    simulate_project(root, frames=params["frames"], size=params["size"], stars=params["stars"],
                     seed=SEED, compress=True, **extra)


def chain_rows(m: Measurement) -> list[Row]:
    """The bench rows of a :class:`Measurement` (see the module docstring)."""
    label, nframes, trex_times, whole, fitsh, lcs = (m.label, m.fitsh.frames, m.trex_stages,
                                                     m.trex_whole, m.fitsh, m.lightcurves)
    per = {k: v / nframes for k, v in fitsh.seconds.items()}
    info = fitsh.info
    extra = {"astrometry": f"grmatch median residual {info['residual']:.3f} px, "
                           f"{info['matched']:.0f} stars matched",
             "subtract": f"{info['stamps']} stamps, reference of {info['nref']} frames",
             "lightcurves": f"numpy rows {info['rows_seconds'] / nframes:.3f} s/frame"}
    rows = []
    for name, stage, phases, peer, what in GROUPS:
        parts = ", ".join(f"{p} {per[p]:.3f}" for p in phases)
        check = f"{what}; " + (f"fitsh s/frame: {parts}; " if len(phases) > 1 else "") + \
            (f"{extra[stage]}; " if stage in extra else "") + PROCESS_NOTE
        rows.append(Row(f"chain (s/frame): {name}", label, trex_times[stage] / nframes,
                        peer, sum(per[p] for p in phases), check))
    main = sum(fitsh.seconds[p] for p in fitshchain.PHASES)
    if "subtract_grid" in fitsh.seconds:
        grid = per["register"] + per["photref"] + per["subtract_grid"] + per["diffphot_grid"]
        with_grid = (main + fitsh.seconds["subtract_grid"] + fitsh.seconds["diffphot_grid"]
                     - fitsh.seconds["subtract"] - fitsh.seconds["diffphot"]) / whole
        rows.append(Row("chain (s/frame): same, ficonv on pipe-trex grid", label,
                        trex_times["subtract"] / nframes, "fitsh fitrans, ficonv, fiphot", grid,
                        f"ficonv on a 30x30 grid of 41^2 px stamps {per['subtract_grid']:.3f} "
                        f"s/frame (on trex's stamps {per['subtract']:.3f}); irm median RMS of "
                        f"the bright stars {m.grid_rms_irm:.4f} (trex's stamps "
                        f"{lcs[1].rms_irm:.4f}); whole chain with it {with_grid:.1f}x trex; "
                        f"{PROCESS_NOTE}"))
    main_cpu = sum(fitsh.cpu[p] for p in fitshchain.PHASES)
    rows.append(Row("chain (CPU s/frame): whole chain, one trex run", label,
                    m.trex_whole_cpu / nframes, "fitsh chain as pipe-trex ran it",
                    main_cpu / nframes, "user + system CPU time of every process of each chain "
                    "(trex: the one run; fitsh: the tools and the numpy steps): the ratio a "
                    "loaded machine leaves intact"))
    rows.append(Row("chain (s/frame): whole chain, one trex run", label, whole / nframes,
                    "fitsh chain as pipe-trex ran it", main / nframes,
                    f"trex stage by stage {sum(trex_times.values()) / nframes:.3f} s/frame, each "
                    f"stage run {m.trex_idle:.1f} s of start and setup; trex: {lcs[0].text()}; "
                    f"fitsh: {lcs[1].text()}; in both: {len(lcs[0].stars & lcs[1].stars)} stars; "
                    f"{PROCESS_NOTE}"))
    return rows


@dataclass
class Measurement:
    """Both chains on one night: trex's times (s) per stage and of the whole run, the
    fitsh chain's result, and the light curves of (trex, fitsh)."""

    label: str
    trex_stages: dict[str, float]
    trex_whole: float
    trex_whole_cpu: float  # user + system CPU s of the whole run
    trex_idle: float      # a stage run with nothing to do: start and setup
    fitsh: fitshchain.ChainResult
    lightcurves: tuple[LightCurves, LightCurves]
    grid_rms_irm: float   # as LightCurves.rms_irm, fitsh with pipe-trex's stamps (NaN: not run)
    bins: dict = field(default_factory=dict)  # :func:`quality`


def measure(folder: Path, params: dict, realism: str | None = None,
            grid: bool = True) -> Measurement:
    """Simulate the night in ``folder`` and run both chains on it (see the module
    docstring).  Raises RuntimeError, OSError or CalledProcessError when one fails."""
    label = f"{params['size']}^2 x{params['frames']}, {params['stars']} st"
    root, whole_root, work = folder / "night", folder / "whole", folder / "fitsh"
    began = time.perf_counter()
    simulate(root, params, realism)
    shutil.copytree(root, whole_root)
    work.mkdir()
    log.info("chain: simulated %s in %.0f s", label, time.perf_counter() - began)
    trex_times = {stage: trex_run(root, RUNS.get(stage, (stage,))) for stage in STAGES}
    log.info("chain: trex stages %s", {k: round(v, 1) for k, v in trex_times.items()})
    idle = trex_run(root, ("extract",))
    cpu: dict[str, float] = {}
    whole = trex_run(whole_root, tuple(s for stage in STAGES for s in RUNS.get(stage, (stage,))),
                     cpu)
    log.info("chain: trex whole run %.1f s, a run with nothing to do %.1f s", whole, idle)
    fitsh = fitshchain.run_chain(root, work, grid=grid)
    log.info("chain: fitsh phases %s", {k: round(v, 1) for k, v in fitsh.seconds.items()})
    ids, _, _, mags = fitsh.catalog
    catmag = dict(zip(ids.tolist(), mags.tolist()))
    lcs = (trex_lightcurves(root, fitsh.frames, catmag),
           fitsh_lightcurves(fitsh.lcdir, ids, fitsh.frames, catmag))
    grid_irm = {str(ids[star]): values
                for star, values in fitshchain.grid_magnitudes(fitsh).items()}
    grid_rms, _ = bright_rms(grid_irm, lcs[1].stars, catmag)
    bins = quality(root, fitsh)
    log.info("chain: RMS / floor per magnitude bin\n%s", floor.table_text(bins))
    return Measurement(label, trex_times, whole, cpu["trex"], idle, fitsh, lcs, grid_rms, bins)


def run(quick: bool = False, frames: int | None = None, size: int | None = None,
        stars: int | None = None, realism: str | None = None, grid: bool = True) -> list[Row]:
    """The chain rows (none, with a note, when a fitsh tool is missing or a chain fails)."""
    missing = fitshchain.missing_tools()
    if missing:
        log.warning("chain: fitsh tools %s not installed, the chain bench is left out",
                    ", ".join(missing))
        return []
    params = dict(QUICK if quick else FULL)
    params.update({k: v for k, v in (("frames", frames), ("size", size), ("stars", stars)) if v})
    with tempfile.TemporaryDirectory(prefix="trex-bench-chain-") as tmp:
        try:
            m = measure(Path(tmp), params, realism, grid)
            return chain_rows(m) + quality_rows(m.label, m.bins)
        except (RuntimeError, OSError, subprocess.CalledProcessError) as err:
            log.error("chain: left out: %s", getattr(err, "stderr", None) or err)
            return []
