"""The classic fitsh chain as pipe-trex ran it, on a trex project's raw frames, timed per phase.

Phases (one core, every tool a whole process: start, FITS read/write and text
I/O are in its time; the numpy parts are :mod:`trex.bench.fitshdata`):

=============  ===========================================================
calibrate      numpy: masters (median), overscan, trim, bias/dark/flat, FITS write
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
               reference as trex does (:func:`trex.subtract.select_stamps`, 8 x 8
               cells, 21 x 21 px)
diffphot       ``fiphot -P reference -K kernel`` on the difference images
lightcurves    numpy per-frame rows (join of magfit and difference photometry),
               ``grcollect`` into one text file per star
=============  ===========================================================

With ``grid`` the subtraction is also timed with pipe-trex's stamps (a 30 x 30
grid of 41 x 41 px), phase ``subtract_grid``; its difference images are not used.
"""

from __future__ import annotations

import logging
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
    STAMP_HALFSIZE,
    grid_centres,
    write_stamps,
)
from trex.subtract import select_stamps

log = logging.getLogger(__name__)

TOOLS = ("fistar", "grmatch", "grtrans", "fiphot", "fitrans", "ficonv", "ficombine", "grcollect")
PHASES = ("calibrate", "extract", "astrometry", "photometry", "magfit", "register", "photref",
          "subtract", "diffphot", "lightcurves")
APERTURES = "1.95:7.0:6.0,2.45:7.0:6.0,2.95:7.0:6.0"
SKY_FIT = "mode,sigma=3,iterations=2"
ZEROPOINT, BORDER, ORDER, NREF = 17.0, 13.0, 3, 20
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
    """Per-phase wall times (s), the light-curve folder and counts of the fitsh chain."""

    seconds: dict[str, float]
    lcdir: Path
    frames: int
    catalog: tuple
    info: dict = field(default_factory=dict)


class PhaseTimer:
    """Wall time summed per phase: ``with timer("extract"): ...``."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start


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
                input_flag: str = "-i") -> list[str]:
    """pipe-trex's fiphot options (sky fit, disjoint radius, 3 apertures); ``input_flag``
    ``--input-subtracted`` for a difference image."""
    return ["fiphot", input_flag, str(image), "-g", f"{gain:g}", "--mag-flux", f"{ZEROPOINT:g},{exptime:g}",
            "-a", APERTURES, "--sky-fit", SKY_FIT, "--disjoint-radius", "2", "--serial", serial,
            "-F", "IXY,BbMm", "--nan-string", "NaN", "-o", str(out)]


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
    """trex's stamp choice on a reference image, written for ficonv; returns the count."""
    centres = select_stamps(fitsio.read(str(image)), halfsize=STAMP_HALFSIZE,
                            saturation=0.95 * saturate)
    write_stamps(out, centres, STAMP_HALFSIZE)
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
    kinds = classify(nights[0])
    catalog = fd.read_catalog(next((root / "BASE" / "CAT").glob("*.csv")))
    with timer("calibrate"):
        masters = fd.master_frames(kinds)
        frames = [fd.calibrate(p, masters, work / f"{p.name.split('.')[0]}.fits")
                  for p in kinds["object"]]
    with timer("extract"):
        for frame in frames:
            tool(fistar_args(frame.path, work / f"{frame.stem}.fistar", frame.gain))
    with timer("astrometry"):
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
    for frame in frames:
        with timer("subtract"):
            ficonv(stack, frame.products["reg"], work / "stamps.txt",
                   subtracted=work / f"{frame.stem}.diff.fits",
                   kernel=work / f"{frame.stem}.kernel")
        with timer("diffphot"):
            tool(fiphot_args(work / f"{frame.stem}.diff.fits", work / f"{frame.stem}.iphot",
                             frame.gain, frame.exptime, frame.stem, "--input-subtracted")
                 + ["--input-raw-photometry", str(rawphot),
                    "--input-kernel", str(work / f"{frame.stem}.kernel")])
        if grid:
            with timer("subtract_grid"):
                _grid_subtraction(stack, frame, work)
    lcdir = work / "LC"
    lcdir.mkdir(exist_ok=True)
    rows = [work / f"{f.stem}.lcrows" for f in frames]
    with timer("lightcurves"):
        for frame, out in zip(frames, rows):
            iphot = fd.read_phot(work / f"{frame.stem}.iphot")
            fd.lightcurve_rows(frame, len(catalog[0]), iphot, out)
    info["rows_seconds"] = timer.seconds["lightcurves"]
    with timer("lightcurves"):
        tool(["grcollect", *map(str, rows), "--col-base", "1", "--prefix", f"{lcdir}/",
              "--extension", "lc", "--max-memory", "512m"])
    info["grid_stamps"] = GRID ** 2 if grid else 0
    return ChainResult(dict(timer.seconds), lcdir, len(frames), catalog, info)



def _grid_subtraction(stack: Path, frame: fd.Frame, work: Path) -> None:
    """ficonv on pipe-trex's stamp grid (timed; the difference image is discarded)."""
    stamps = work / "gridstamps.txt"
    if not stamps.exists():
        write_stamps(stamps, grid_centres(frame.shape, GRID), GRID_HALFSIZE)
    out = work / "grid.diff.fits"
    ficonv(stack, frame.products["reg"], stamps, subtracted=out,
           kernel=work / "grid.kernel")
    out.unlink()
