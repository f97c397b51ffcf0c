"""The calibrate stage: raw object frame -> calibrated frame in ``RED/<projid>/``.

``run(frame, context)`` computes ``(raw - overscan - bias - dark * exptime) / flat``
on the trimmed frame (float32, ADU) in one pass of the Cython kernel
``trex._stats.calibrate_pixels``, with a uint8 mask of ``trex.flags.MASK`` bits:
SATURATED where raw >= SATURATE, BADPIX from the BADPIX maps of the master
dark and flat, NOFLAT where the flat is below ``calibrate.min_flat`` (the pixel
is left undivided), NONFINITE where the result is not finite.  A frame with
more than ``calibrate.max_bad_fraction`` masked pixels fails, and so does one
whose image area (after trimming) holds no information (:func:`pixel_problem`:
no finite pixel, every pixel saturated, or every pixel the same value -- a
readout that failed); NaN rows or columns in a frame are only masked.

Masters come from ``context.masters``, ``{(kind, night, ccd, filter): Path}``
with kind in bias/dark/flat and filter ``""`` for bias and dark
(:func:`masters_for` takes the frame's night, else the nearest night's).  A
missing master skips its step with a note in the header (``MBIAS = 'none'``).

The calibrated frame is ``RED/<projid>/<stem>.fits`` where ``stem`` is the raw
file name without ``.fits``/``.fz``, prefixed with ``<night>_`` unless it
already contains the night name (raw names restart every night on many
cameras).  :func:`write_calibrated` writes it atomically, the mask as HDU
``MASK``.  :func:`inputs` names the masters a frame uses, so that the ledger
redoes a frame when they change.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
from astropy.io import fits as afits

from trex import __version__
from trex._stats import calibrate_pixels, clipped_stats
from trex.config import Config
from trex.errors import FrameError
from trex.fits import read_image, write_image
from trex.flags import MASK
from trex.frame import Context, Frame
from trex.header import FrameMeta
from trex.masterframes import nearest_master
from trex.masters import correct_frame, read_master
from trex.project import safe_name

log = logging.getLogger(__name__)

#: the MASK bits the calibration kernel sets: SATURATED, NOFLAT, NONFINITE
KERNEL_BITS = np.array([MASK[n].bit for n in ("SATURATED", "NOFLAT", "NONFINITE")], np.uint8)

KINDS = ("bias", "dark", "flat")


def red_name(rawpath: Path | str, night: str) -> str:
    """File name of the calibrated frame of ``rawpath`` (see the module doc)."""
    stem = Path(rawpath).name
    for suffix in (".fz", ".fits", ".fit"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    if night not in stem:
        stem = f"{night}_{stem}"
    return safe_name(stem) + ".fits"


def masters_for(meta: FrameMeta, night: str, context: Context) -> dict[str, Path | None]:
    """{'bias': path or None, 'dark': ..., 'flat': ...} for a frame of ``night``."""
    out = {}
    for kind in KINDS:
        found = nearest_master(context.masters, kind, night, meta.ccd,
                               meta.filter if kind == "flat" else "")
        out[kind] = found[1] if found else None
    return out


@functools.lru_cache(maxsize=3)
def _cached_master(path: str, mtime_ns: int) -> tuple[np.ndarray, np.ndarray | None]:
    image, badpix = read_master(path)
    image.flags.writeable = False
    if badpix is not None:
        badpix.flags.writeable = False
    return image, badpix


def load_master(path: Path | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(image, BADPIX) of a master, cached for consecutive frames of one group."""
    if path is None:
        return None, None
    try:
        return _cached_master(str(path), Path(path).stat().st_mtime_ns)
    except FileNotFoundError:
        raise FrameError(path, "master frame vanished") from None


def pixel_problem(view: np.ndarray, saturate: float) -> str | None:
    """Why the trimmed raw pixels ``view`` hold no image (None when they may)."""
    with np.errstate(invalid="ignore"):
        low, high = float(np.min(view)), float(np.max(view))
        if not (np.isfinite(low) and np.isfinite(high)):  # some NaN or inf: look closer
            finite = view[np.isfinite(view)]
            if not finite.size:
                return f"no finite pixel: all {view.size} pixels are NaN or infinite"
            low, high = float(finite.min()), float(finite.max())
    if low >= saturate:
        return f"every pixel is at or above SATURATE ({saturate:g} ADU)"
    if low == high:
        return f"every pixel is {low:g} ADU: no image was read out"
    return None


def calibrate_image(raw: np.ndarray, frame: Frame, masters: dict[str, Path | None],
                    config: Config) -> tuple[np.ndarray, np.ndarray, float]:
    """(calibrated float32, mask uint8, median overscan level) of a whole raw frame.

    Raises FrameError when the pixels hold no image (:func:`pixel_problem`),
    differ in shape from a master, or are masked beyond ``max_bad_fraction``.
    """
    cal, meta = config.calibrate, frame.meta
    raw = raw.astype(np.float32, copy=False)  # BITPIX -64 frames come as float64
    view, levels = correct_frame(raw, meta, cal.overscan, frame.rawpath)
    problem = pixel_problem(view, meta.saturate)
    if problem is not None:
        raise FrameError(frame.rawpath, problem)
    bias, _ = load_master(masters["bias"])
    dark, bpm_dark = load_master(masters["dark"])
    flat, bpm_flat = load_master(masters["flat"])
    for kind, image in (("bias", bias), ("dark", dark), ("flat", flat)):
        if image is not None and image.shape != view.shape:
            raise FrameError(frame.rawpath, f"trimmed shape {view.shape} differs from the master "
                                            f"{kind} {image.shape}")
    badpix = None
    if bpm_dark is not None or bpm_flat is not None:
        badpix = bpm_dark if bpm_flat is None else (
            bpm_flat if bpm_dark is None else bpm_dark | bpm_flat)
    out = np.empty(view.shape, np.float32)
    mask = np.empty(view.shape, np.uint8)
    nbad = calibrate_pixels(view, levels, bias, dark, meta.exptime, flat, badpix,
                            meta.saturate, cal.min_flat, KERNEL_BITS, out, mask)
    if nbad > cal.max_bad_fraction * out.size:
        raise FrameError(frame.rawpath, f"{nbad / out.size:.1%} of the pixels are masked "
                                        f"(limit {cal.max_bad_fraction:.0%})")
    finite = levels[np.isfinite(levels)]  # rows with a NaN overscan are masked NONFINITE
    return out, mask, float(np.median(finite)) if finite.size else float("nan")


def _header(raw_header: afits.Header, frame: Frame, masters: dict, overscan: float,
            config: Config) -> afits.Header:
    header = raw_header.copy()
    trim = frame.meta.trimsec
    y0, x0 = (trim[0].start, trim[1].start) if trim else (0, 0)
    for axis, offset in (("1", x0), ("2", y0)):
        if f"CRPIX{axis}" in header and offset:
            header[f"CRPIX{axis}"] = header[f"CRPIX{axis}"] - offset
        header[f"LTV{axis}"] = (-offset, "trim offset: calibrated = raw pixel + LTV")
    header["BUNIT"] = ("ADU", "(raw - overscan - bias - dark*t) / flat")  # fits 80 chars
    header["RAWFILE"] = (frame.rawpath.name, "raw frame")
    header["NIGHT"] = (frame.night, "RAW/<night> folder")
    header["OVSCMODE"] = (config.calibrate.overscan, "overscan subtraction mode")
    if np.isfinite(overscan):
        header["OVERSCAN"] = (round(overscan, 3), "median overscan level subtracted, ADU")
    for kind, key in zip(KINDS, ("MBIAS", "MDARK", "MFLAT"), strict=True):
        header[key] = (masters[kind].name if masters[kind] else "none", f"master {kind} applied")
    header["DARKSCAL"] = (frame.meta.exptime, "master dark (ADU/s) scaled by this, s")
    header["TRXVERS"] = (__version__, "trex version")
    header["TRXCONF"] = (config.sha, "trex configuration hash")
    return header


def run(frame: Frame, context: Context) -> Frame:
    """Calibrate one object frame (see the module doc); raises FrameError when bad."""
    config = context.config
    if not frame.meta.projid:
        raise FrameError(frame.rawpath, "no project id (PROJID header or project.projid)")
    masters = masters_for(frame.meta, frame.night, context)
    frame.quality.update({f"master{k}": _relative(p) for k, p in masters.items()})
    raw, raw_header = read_image(frame.rawpath)
    image, mask, overscan = calibrate_image(raw, frame, masters, config)
    del raw
    good = image[::16, ::16][mask[::16, ::16] == 0]
    _, medsky, skyrms, _ = clipped_stats(good, 3.0, 5)
    frame.quality.update(medsky=medsky, skyrms=skyrms)
    frame.image, frame.mask = image, mask
    frame.header = _header(raw_header, frame, masters, overscan, config)
    if np.isfinite(medsky):
        frame.header["MEDSKY"] = (round(float(medsky), 3), "clipped median of the good pixels, ADU")
    frame.redpath = context.project.red(frame.meta.projid) / red_name(frame.rawpath, frame.night)
    return frame


def _mask_header() -> afits.Header:
    header = afits.Header()
    for flag in MASK.values():
        header[f"MASKB{flag.bit}"] = (flag.name, flag.description[:46])
    return header


def write_calibrated(frame: Frame) -> Path:
    """Write the calibrated image and its MASK HDU atomically to ``frame.redpath``."""
    return write_image(frame.redpath, frame.image, frame.header,
                       [("MASK", frame.mask, _mask_header())])


def _relative(path: Path | None) -> str | None:
    """``RED/<projid>/<name>`` or ``BASE/CAL/<name>``: the last three parts."""
    return None if path is None else str(Path(*Path(path).parts[-3:]))


def inputs(meta: FrameMeta, night: str, context: Context) -> str:
    """The masters a frame is calibrated with now (new masters redo the frame)."""
    used = masters_for(meta, night, context)
    return ";".join(f"{kind}={_relative(used[kind]) or 'none'}" for kind in KINDS)


def warn_fallbacks(tasks: list, context: Context) -> None:
    """One warning per (night, ccd, filter) of frames to calibrate that has no master of
    a kind, or borrows another night's."""
    seen = set()
    for task in tasks:
        meta = task.meta
        if (task.night, meta.ccd, meta.filter) in seen:
            continue
        seen.add((task.night, meta.ccd, meta.filter))
        for kind in KINDS:
            filt = meta.filter if kind == "flat" else ""
            found = nearest_master(context.masters, kind, task.night, meta.ccd, filt)
            where = f"night {task.night} ccd {meta.ccd!r}" + (f" filter {filt!r}" if filt else "")
            if found is None:
                log.warning("calibrate: no master %s for %s in any night: step skipped", kind,
                            where)
            elif found[0][1] != task.night:
                log.warning("calibrate: %s uses the master %s of night %s", where, kind,
                            found[0][1])
