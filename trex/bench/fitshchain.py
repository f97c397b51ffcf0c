"""The classic fitsh chain as pipe-trex ran it, on a trex project's raw frames, timed per phase.

Phases (one core, every tool a whole process: start, FITS read/write and text
I/O are in its time; the numpy parts are :mod:`trex.bench.fitshdata`):

=============  ===========================================================
calibrate      numpy: masters (median), overscan, trim, bias/dark/flat, FITS write;
               ``fiign -s`` marks the saturated pixels in the fitsh mask (pipe-trex's
               ``ficalib --saturation`` did; without it ficonv fits saturated cores)
extract        ``fistar`` with pipe-trex's options (elliptic S/D/K fit)
astrometry     numpy projection of the catalog at the header pointing, ``grmatch``
               (triangle matching to fistar's list, order-3 fit), ``grtrans``
               (the catalog through the fit), numpy border cut; reference
               ranking from the fistar lists (numpy)
photometry     ``fiphot``, 3 apertures 1.95/2.45/2.95 px, annulus 7-13 px,
               pipe-trex's sky fit
magfit         numpy single-reference magnitude fit
register       ``grtrans`` fit of catalog positions (frame vs reference, joined by
               id in numpy) and ``fitrans -k --reverse`` (flux-conserving)
photref        the ``NREF`` best frames (registered) matched to the broadest-PSF
               one with ``ficonv -o`` (as trex and pipe-trex do), ``ficombine``
               median, ``fiphot --output-raw-photometry`` of the stack
subtract       ``ficonv -k 'b/4;i/4;d=4/4' --input-stamps``: stamps chosen on the
               reference as trex does (:func:`trex.stamps.select_stamps` with the
               default ``[subtract]`` stamp grid, stars per cell and size)
diffphot       ``fiphot --input-subtracted`` with the reference's raw photometry and
               the frame's kernel
lightcurves    numpy per-frame rows (join of magfit and difference photometry),
               ``grcollect`` into one text file per star
=============  ===========================================================

With ``grid`` the subtraction and the difference photometry are also run with
pipe-trex's stamps (a 30 x 30 grid of 41 x 41 px), phases ``subtract_grid`` and
``diffphot_grid`` (:func:`grid_magnitudes` reads that photometry back).

Where this differs from pipe-trex, it spares the fitsh side work: calibration
in numpy rather than ``ficalib``; astrometry by grmatch against the projected
catalog rather than astrometry.net; the registration map fitted to the
catalog positions of both frames rather than a second grmatch (fistar list to
fistar list, order 4); no ``--magfit`` in the difference photometry (see
:func:`fiphot_args`); ficonv on trex's stamps rather than the grid.
"""

from __future__ import annotations

import logging
import resource
import shutil
import subprocess
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import fitsio
import numpy as np

from trex.bench import fitshdata as fd
from trex.bench.extract import fistar_args
from trex.bench.subtract import (
    GRID,
    GRID_HALFSIZE,
    KERNEL,
    grid_centres,
    write_stamps,
)
from trex.config import SubtractSection
from trex.stamps import select_stamps

log = logging.getLogger(__name__)

TOOLS = ("fiign", "fistar", "grmatch", "grtrans", "fiphot", "fitrans", "ficonv", "ficombine",
         "grcollect")
PHASES = ("calibrate", "extract", "astrometry", "photometry", "magfit", "register", "photref",
          "subtract", "diffphot", "lightcurves")
APERTURES = "1.95:7.0:6.0,2.45:7.0:6.0,2.95:7.0:6.0"
SKY_FIT = "mode,sigma=3,iterations=2"
ZEROPOINT, BORDER, ORDER, NREF = 17.0, 3.0, 3, 20  # BORDER: trex's [photometry] border
#: grmatch triangulation (pipe-trex style: automatic level, no mirroring)
TRIANGULATION = "auto,conformable,maxnumber=300,unitarity=0.01"


def missing_tools() -> list[str]:
    """The fitsh tools of the chain not on PATH."""
    return [t for t in TOOLS if shutil.which(t) is None]


def tool(args: list[str]) -> None:
    """Run one fitsh tool; raises CalledProcessError (with its stderr) on failure."""
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, args, done.stdout, done.stderr)


@dataclass
class ChainResult:
    """Per-phase wall and CPU times (s), the light-curve folder and counts of the fitsh
    chain."""

    seconds: dict[str, float]
    cpu: dict[str, float]
    lcdir: Path
    frames: int
    catalog: tuple
    work: Path
    stems: list[str]
    info: dict = field(default_factory=dict)


class PhaseTimer:
    """Wall and CPU time summed per phase: ``with timer("extract"): ...``."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str):
        start, cpu = time.perf_counter(), cpu_seconds()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start
            self.cpu[phase] += cpu_seconds() - cpu


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children, s (the
    tools run one at a time, so a phase's share is its difference)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def classify(raw: Path) -> dict[str, list[Path]]:
    """Raw frames of a night by IMAGETYP (bias, dark, flat, object)."""
    kinds: dict[str, list[Path]] = defaultdict(list)
    aliases = {"zero": "bias", "skyflat": "flat", "light": "object", "science": "object"}
    for path in sorted(p for p in raw.iterdir() if p.name.endswith((".fits", ".fits.fz"))):
        with fitsio.FITS(str(path)) as fits:
            kind = str(next(h for h in fits if h.has_data()).read_header()["IMAGETYP"]).lower()
        kinds[aliases.get(kind, kind)].append(path)
    return kinds


def astrometry(frame: fd.Frame, catalog: tuple, work: Path) -> None:
    """grmatch the projected catalog to fistar's list, grtrans the catalog through the fit,
    keep the stars inside the border: ``frame.products["cat"]`` = (ids, x, y)."""
    ids, x, y = fd.project_catalog(catalog[1], catalog[2], frame)
    proj, fit, onframe = (work / f"{frame.stem}.{ext}" for ext in ("proj", "trans", "xy"))
    np.savetxt(proj, np.column_stack([ids, x, y, catalog[3][ids]]), fmt="%d %.3f %.3f %.3f")
    tool(["grmatch", "--match-points", "-r", str(proj), "--col-ref", "2,3",
          "--col-ref-ordering", "-4", "-i", str(work / f"{frame.stem}.fistar"), "--col-inp", "2,3",
          "--col-inp-ordering", "9", "--triangulation", TRIANGULATION, "--order", str(ORDER),
          "--max-distance", "1", "--comment", "--output-transformation", str(fit)])
    tool(["grtrans", str(proj), "--col-xy", "2,3", "--input-transformation", str(fit),
          "--output", str(onframe)])
    table = np.loadtxt(onframe, ndmin=2)
    keep = fd.inside(table[:, 1], table[:, 2], frame.shape, BORDER)
    frame.products["cat"] = (table[keep, 0].astype(np.int64), table[keep, 1], table[keep, 2])
    np.savetxt(work / f"{frame.stem}.cat", table[keep, :3], fmt="%d %.3f %.3f")


def grmatch_stats(transformation: Path) -> tuple[float, int]:
    """(fit residual px, matched stars) from a commented grmatch transformation file."""
    residual, matched = float("nan"), 0
    for line in transformation.read_text().splitlines():
        if line.startswith("# Residual:"):
            residual = float(line.split()[2])
        elif line.startswith("# Points:"):
            matched = int(line.split()[2])
    return residual, matched


def fiphot_args(image: Path, out: Path, gain: float, exptime: float, serial: str,
                subtracted: bool = False) -> list[str]:
    """pipe-trex's fiphot options: sky fit, disjoint radius, 3 apertures; saturated
    stars measured (``--aperture-mask-ignore saturated``) on frames and the reference.
    On a difference image (``subtracted``) pipe-trex also passed ``--magfit
    orders=4:2``: left out, as the kernel's flux term already follows the
    transparency and a 4th-order fit over a small frame's stars added scatter (512^2:
    bright-star RMS 1.1-1.8 mmag per frame without it, 3-11 mmag with it)."""
    args = ["fiphot", "--input-subtracted" if subtracted else "-i", str(image),
            "-g", f"{gain:g}", "--mag-flux", f"{ZEROPOINT:g},{exptime:g}", "-a", APERTURES,
            "--sky-fit", SKY_FIT, "--disjoint-radius", "2", "--serial", serial,
            "-F", "IXY,BbMm", "--nan-string", "NaN", "-o", str(out)]
    return args if subtracted else args + ["--aperture-mask-ignore", "saturated"]


def register(frame: fd.Frame, ref: fd.Frame, work: Path) -> Path:
    """Resample the frame onto the reference frame's grid (``fitrans -k``); returns the file."""
    ids, x, y = frame.products["cat"]
    rids, rx, ry = ref.products["cat"]
    _, here, there = np.intersect1d(ids, rids, return_indices=True)
    pick = np.linspace(0, here.size - 1, min(here.size, 2000)).astype(int)
    pairs, fit, out = (work / f"{frame.stem}.{ext}" for ext in ("pairs", "regtrans", "reg.fits"))
    np.savetxt(pairs, np.column_stack([rx[there], ry[there], x[here], y[here]])[pick], fmt="%.4f")
    tool(["grtrans", str(pairs), "--col-xy", "1,2", "--col-fit", "3,4", "--order", str(ORDER),
          "--output-transformation", str(fit)])
    tool(["fitrans", "-i", str(frame.path), "-k", "-T", str(fit), "--reverse", "-o", str(out)])
    return out


def stamps_for(image: Path, saturate: float, out: Path) -> int:
    """trex's stamp choice (its default ``[subtract]`` settings) on a reference image,
    written for ficonv; returns the count."""
    sub = SubtractSection()
    centres = select_stamps(fitsio.read(str(image)), ngrid=sub.stamp_grid,
                            halfsize=sub.stamp_halfsize, saturation=saturate,
                            per_cell=sub.stamps_per_cell)
    write_stamps(out, centres, sub.stamp_halfsize)
    return len(centres)


def ficonv(reference: Path, image: Path, stamps: Path, **outputs: Path) -> None:
    """ficonv fitting ``reference conv K + B`` to ``image`` on the stamps;
    outputs: ``convolved``, ``subtracted``, ``kernel`` (files)."""
    args = ["ficonv", "-r", str(reference), "-i", str(image), "-k", KERNEL,
            "--input-stamps", str(stamps)]
    flags = {"convolved": "-o", "subtracted": "--output-subtracted",
             "kernel": "--output-kernel-list"}
    for name, path in outputs.items():
        args += [flags[name], str(path)]
    tool(args)


def photref(frames: list[fd.Frame], order: np.ndarray, ref: fd.Frame, work: Path,
            info: dict) -> tuple[Path, Path]:
    """The photometric reference (see the module docstring): (stack, raw photometry)."""
    chosen = [frames[i] for i in order[:NREF]]
    target = min(chosen, key=lambda f: f.products["median_s"])
    matched = []
    for frame in chosen:
        if frame is target:
            matched.append(frame.products["reg"])
            continue
        stamps = work / f"{frame.stem}.refstamps"
        stamps_for(frame.products["reg"], frame.saturate, stamps)
        out = work / f"{frame.stem}.matched.fits"
        ficonv(frame.products["reg"], target.products["reg"], stamps, convolved=out)
        matched.append(out)
    stack, raw = work / "photref.fits", work / "photref.rawphot"
    tool(["ficombine", *map(str, matched), "--mode", "median", "-o", str(stack)])
    neff = 2 * len(chosen) / np.pi
    tool(fiphot_args(stack, work / "photref.phot", target.gain * neff, target.exptime, "photref")
         + ["-L", str(work / f"{ref.stem}.cat"), "--col-id", "1", "--col-xy", "2,3",
            "--output-raw-photometry", str(raw)])
    info.update(nref=len(chosen), target=target.stem)
    return stack, raw


def run_chain(root: Path, work: Path, grid: bool = True) -> ChainResult:
    """The fitsh chain on the single night in ``root/RAW`` (scratch files in ``work``)."""
    timer, info = PhaseTimer(), {}
    nights = sorted(p for p in (root / "RAW").iterdir() if p.is_dir())
    with timer("calibrate"):
        kinds = classify(nights[0])
        masters = fd.master_frames(kinds)
        frames = []
        for raw in kinds["object"]:
            frame = fd.calibrate(raw, masters, work / "calibrated.fits")
            frame.path = work / f"{frame.stem}.fits"
            tool(["fiign", "-i", str(work / "calibrated.fits"), "-s", f"{frame.saturate:.1f}",
                  "-o", str(frame.path)])
            frames.append(frame)
    with timer("extract"):
        for frame in frames:
            tool(fistar_args(frame.path, work / f"{frame.stem}.fistar", frame.gain))
    with timer("astrometry"):
        catalog = fd.read_catalog(next((root / "BASE" / "CAT").glob("*.csv")))
        for frame in frames:
            astrometry(frame, catalog, work)
        fistars = [work / f"{f.stem}.fistar" for f in frames]
        order = fd.rank_frames(fistars)
        for frame, path in zip(frames, fistars):
            frame.products["median_s"] = fd.median_s(path)
        ref = frames[order[0]]
    stats = np.array([grmatch_stats(work / f"{f.stem}.trans") for f in frames])
    info.update(residual=float(np.median(stats[:, 0])), matched=float(np.median(stats[:, 1])))
    with timer("photometry"):
        for frame in frames:
            tool(fiphot_args(frame.path, work / f"{frame.stem}.phot", frame.gain, frame.exptime,
                             frame.stem)
                 + ["-L", str(work / f"{frame.stem}.cat"), "--col-id", "1", "--col-xy", "2,3"])
    with timer("magfit"):
        phots = {f.stem: fd.read_phot(work / f"{f.stem}.phot") for f in frames}
        for frame in frames:
            arm = fd.magfit(phots[frame.stem], phots[ref.stem], catalog[3], frame.shape)
            frame.products["arm"] = (phots[frame.stem][0], arm)
    with timer("register"):
        for frame in frames:
            frame.products["reg"] = register(frame, ref, work)
    with timer("photref"):
        stack, rawphot = photref(frames, order, ref, work, info)
        info["stamps"] = stamps_for(stack, ref.saturate, work / "stamps.txt")
    _subtract_all(frames, stack, rawphot, work, timer, grid)
    lcdir = _collect(frames, len(catalog[0]), work, timer, info)
    info["grid_stamps"] = GRID ** 2 if grid else 0
    return ChainResult(dict(timer.seconds), dict(timer.cpu), lcdir, len(frames), catalog, work,
                       [f.stem for f in frames], info)


def _subtract_all(frames: list[fd.Frame], stack: Path, rawphot: Path, work: Path,
                  timer: PhaseTimer, grid: bool) -> None:
    """ficonv and fiphot on each registered frame (and ficonv on pipe-trex's grid)."""
    for frame in frames:
        with timer("subtract"):
            ficonv(stack, frame.products["reg"], work / "stamps.txt",
                   subtracted=work / f"{frame.stem}.diff.fits",
                   kernel=work / f"{frame.stem}.kernel")
        with timer("diffphot"):
            tool(fiphot_args(work / f"{frame.stem}.diff.fits", work / f"{frame.stem}.iphot",
                             frame.gain, frame.exptime, frame.stem, subtracted=True)
                 + ["--input-raw-photometry", str(rawphot),
                    "--input-kernel", str(work / f"{frame.stem}.kernel")])
        if grid:
            _grid_subtraction(stack, rawphot, frame, work, timer)


def _collect(frames: list[fd.Frame], ncat: int, work: Path, timer: PhaseTimer,
             info: dict) -> Path:
    """Per-frame light-curve rows (numpy), then grcollect; returns the LC folder."""
    lcdir = work / "LC"
    lcdir.mkdir(exist_ok=True)
    rows = [work / f"{f.stem}.lcrows" for f in frames]
    with timer("lightcurves"):
        for frame, out in zip(frames, rows):
            fd.lightcurve_rows(frame, ncat, fd.read_phot(work / f"{frame.stem}.iphot"), out)
    info["rows_seconds"] = timer.seconds["lightcurves"]
    with timer("lightcurves"):
        tool(["grcollect", *map(str, rows), "--col-base", "1", "--prefix", f"{lcdir}/",
              "--extension", "lc", "--max-memory", "512m"])
    return lcdir


def _grid_subtraction(stack: Path, rawphot: Path, frame: fd.Frame, work: Path,
                      timer: PhaseTimer) -> None:
    """ficonv on pipe-trex's stamp grid and fiphot on its difference image (phases
    ``subtract_grid``, ``diffphot_grid``; the photometry goes to ``<stem>.giphot``)."""
    stamps = work / "gridstamps.txt"
    if not stamps.exists():
        write_stamps(stamps, grid_centres(frame.shape, GRID), GRID_HALFSIZE)
    diff, kernel = work / "grid.diff.fits", work / "grid.kernel"
    with timer("subtract_grid"):
        ficonv(stack, frame.products["reg"], stamps, subtracted=diff, kernel=kernel)
    with timer("diffphot_grid"):
        tool(fiphot_args(diff, work / f"{frame.stem}.giphot", frame.gain, frame.exptime,
                         frame.stem, subtracted=True)
             + ["--input-raw-photometry", str(rawphot), "--input-kernel", str(kernel)])
    diff.unlink()


def grid_magnitudes(result: ChainResult, aperture: int = 1) -> dict[int, np.ndarray]:
    """{star index: magnitudes over the frames} of the pipe-trex-grid difference
    photometry (``<stem>.giphot``), aperture ``aperture``; empty without ``grid``."""
    series: dict[int, list[float]] = defaultdict(list)
    for stem in result.stems:
        path = result.work / f"{stem}.giphot"
        if not path.exists():
            return {}
        ids, _, _, mags = fd.read_phot(path)
        for star, mag in zip(ids.tolist(), mags[:, aperture].tolist()):
            series[star].append(mag)
    return {star: np.array(mags) for star, mags in series.items()}
