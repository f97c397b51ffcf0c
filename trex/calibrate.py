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
``MASK``.  :func:`calibrate_project` is the serial project-level driver.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
from astropy.io import fits as afits

from trex import __version__, records
from trex._stats import calibrate_pixels, clipped_stats
from trex.config import Config
from trex.db import Database
from trex.fits import FrameError, read_image, write_image
from trex.flags import MASK
from trex.frame import Context, Frame
from trex.inventory import pending_object_frames, scan, usable_frames
from trex.masterframes import build_masters, nearest_master
from trex.masters import correct_frame, read_master
from trex.project import Project, safe_name

log = logging.getLogger(__name__)

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


def masters_for(frame: Frame, context: Context) -> dict[str, Path | None]:
    """{'bias': path or None, 'dark': ..., 'flat': ...} for this frame."""
    meta = frame.meta
    out = {}
    for kind in KINDS:
        found = nearest_master(context.masters, kind, frame.night, meta.ccd,
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
                            meta.saturate, cal.min_flat, out, mask)
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
    header["BUNIT"] = ("ADU", "calibrated: (raw - overscan - bias - dark*t) / flat")
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
    masters = masters_for(frame, context)
    frame.products["calibrate"] = {k: _relative(p) for k, p in masters.items()}
    for kind, path in masters.items():
        if path is None:
            log.debug("%s: no master %s, step skipped", frame.rawpath.name, kind)
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


def calibratedframes_row(frame: Frame, reason: str | None = None) -> dict:
    """The ``calibratedframes`` row of a calibrated (or, with ``reason``, failed) frame."""
    used = frame.products.get("calibrate", {})
    ok = reason is None
    return {
        "framekey": frame.framekey,
        "projid": frame.meta.projid or None,
        "redpath": _relative(frame.redpath) if ok else None,
        "frameisok": ok,
        "reason": reason,
        "masterbias": used.get("bias"),
        "masterdark": used.get("dark"),
        "masterflat": used.get("flat"),
        "medsky": frame.quality.get("medsky") if ok else None,
        "skyrms": frame.quality.get("skyrms") if ok else None,
        "configsha": frame.header.get("TRXCONF") if ok and frame.header is not None else None,
    }


def record_calibration(db: Database, row: dict, configsha: str) -> None:
    """Replace the frame's ``calibratedframes`` row and its ``framestatus``."""
    status = "done" if row["frameisok"] else "failed"
    with db.transaction():
        db.execute("DELETE FROM calibratedframes WHERE framekey = ?", (row["framekey"],))
        db.execute(f"INSERT INTO calibratedframes ({', '.join(row)}) "
                   f"VALUES ({', '.join('?' * len(row))})", list(row.values()))
        records.set_status(db, row["framekey"], "calibrate", status, row["reason"], configsha)


def stale_frames(context: Context, db: Database) -> list[Frame]:
    """Object frames whose recorded calibration used other masters than now."""
    recorded = {r[0]: r[1:] for r in db.query(
        "SELECT framekey, masterbias, masterdark, masterflat FROM calibratedframes")}
    out = []
    for raw in usable_frames(context.project, context.config, db, "object"):
        if raw.framekey not in recorded:
            continue
        frame = Frame(raw.framekey, raw.rawpath, raw.night, raw.meta)
        now = tuple(_relative(p) for p in masters_for(frame, context).values())
        if now != tuple(recorded[raw.framekey]):
            out.append(frame)
    return out


def calibrate_project(project: Project, config: Config, db: Database) -> dict:
    """Inventory, masters, then every pending (or stale) object frame, serially."""
    scanned = scan(project, config, db)
    context = Context(project, config, build_masters(project, config, db))
    frames = [Frame(r.framekey, r.rawpath, r.night, r.meta)
              for r in pending_object_frames(project, config, db)]
    stale = stale_frames(context, db)
    if stale:
        log.info("calibrate: %d calibrated frames have new masters, redone", len(stale))
    counts = {"scanned": len(scanned), "calibrated": 0, "failed": 0}
    warned = set()
    for frame in frames + stale:
        group = (frame.night, frame.meta.ccd, frame.meta.filter)
        if group not in warned:
            warned.add(group)
            _warn_fallbacks(frame, context)
        try:
            write_calibrated(run(frame, context))
            row = calibratedframes_row(frame)
        except FrameError as err:
            log.warning("calibrate: %s: %s", frame.rawpath.name, err.reason)
            row = calibratedframes_row(frame, err.reason)
        record_calibration(db, row, config.sha)
        counts["calibrated" if row["frameisok"] else "failed"] += 1
        frame.release_pixels()
    log.info("calibrate: %(calibrated)d frames calibrated, %(failed)d failed", counts)
    return counts


def _warn_fallbacks(frame: Frame, context: Context) -> None:
    meta = frame.meta
    for kind in KINDS:
        filt = meta.filter if kind == "flat" else ""
        found = nearest_master(context.masters, kind, frame.night, meta.ccd, filt)
        where = f"night {frame.night} ccd {meta.ccd!r}" + (f" filter {filt!r}" if filt else "")
        if found is None:
            log.warning("calibrate: no master %s for %s in any night: step skipped", kind, where)
        elif found[0][1] != frame.night:
            log.warning("calibrate: %s uses the master %s of night %s", where, kind, found[0][1])
