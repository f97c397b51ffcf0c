"""A pass of per-frame stages over the pending frames, as one phase.

``process_frame`` runs on any rank: it loads what earlier runs left on disk,
runs the stages still to do, writes the calibrated frame if a stage changed
it, saves the frame's products and returns a small :class:`FrameResult`.  A
bad frame (``FrameError``) stops its chain and is reported with the stage
and the reason; any other exception is a bug and aborts the job.
:class:`FramePass` is the phase the driver farms out: it plans from the
ledger's pending frames and records each result.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.wcs import WCS

from trex.calibrate import warn_fallbacks, write_calibrated
from trex.errors import FrameError
from trex.fits import read_image
from trex.frame import Context, Frame
from trex.header import FrameMeta
from trex.ledger import Task
from trex.phase import Phase
from trex.products import load_product
from trex.stages import Stage, rewritten

log = logging.getLogger(__name__)


@dataclass
class FrameResult:
    """What a rank sends back to rank 0 for one frame (small, picklable)."""

    framekey: int
    projid: str
    night: str
    meta: FrameMeta
    redpath: str | None
    done: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (stage, reason)
    quality: dict = field(default_factory=dict)
    rows: dict = field(default_factory=dict)  # table -> {column: array} for the database
    seconds: float = 0.0


def load_frame(task: Task, chain: tuple[Stage, ...], context: Context) -> Frame:
    """The Frame of a pending task, with what finished stages left on disk."""
    root = context.project.root
    path = root / task.rawpath
    frame = Frame(framekey=task.framekey, rawpath=path, night=task.night, meta=task.meta)
    if task.stages[0] == "calibrate":
        return frame
    if not task.redpath:
        raise FrameError(path, "not calibrated yet: run the calibrate stage first")
    frame.redpath = root / task.redpath
    if any(s.pixels for s in chain if s.name in task.stages):
        frame.image, frame.header = read_image(frame.redpath)
        frame.mask, _ = read_image(frame.redpath, hdu="MASK", dtype=np.uint8)  # as stored
        if frame.header.get("CTYPE1"):
            frame.wcs = WCS(frame.header, fix=False)
        frame.sources = load_product(frame.redpath, "sources")
    if any("photometry" in s.needs for s in chain if s.name in task.stages):
        aphot = load_product(frame.redpath, "aphot")
        if aphot is not None:
            frame.products["aphot"] = aphot
    return frame


def process_frame(task: Task, chain: tuple[Stage, ...], context: Context,
                  deferred: frozenset[str] = frozenset()) -> FrameResult:
    """Run the stages still to do on one frame; never raises for a bad frame.

    The rows of the tables in ``deferred`` are not returned: a later stage of the
    run writes them again in full (``Stage.rewrites``), or gives them if it fails.
    """
    start = time.perf_counter()
    result = FrameResult(task.framekey, task.meta.projid, task.night, task.meta, task.redpath)
    stages = [s for s in chain if s.name in task.stages]
    try:
        frame = load_frame(task, chain, context)
    except FrameError as err:
        result.failed.append((stages[0].name, err.reason))
        log.warning("frame %s: %s failed: %s", task.rawpath, stages[0].name, err.reason)
        return result
    blocked: set[str] = set()
    for stage in stages:
        if blocked & set(stage.needs):
            blocked.add(stage.name)  # what it needs failed on this frame
            continue
        try:
            frame = stage.run(frame, context)
            if stage.save is not None:
                rows = stage.save(frame, context)
                result.rows.update({k: v for k, v in rows.items() if k not in deferred})
        except FrameError as err:
            result.failed.append((stage.name, err.reason))
            if stage.failed_rows is not None:
                result.rows.update(stage.failed_rows(frame, context))
            blocked.add(stage.name)
            log.warning("frame %s: %s failed: %s", task.rawpath, stage.name, err.reason)
            continue
        result.done.append(stage.name)
    if frame.image is not None and any(s.changes_frame for s in stages if s.name in result.done):
        write_calibrated(frame)  # once, after every stage that changes it
    if frame.redpath is not None:
        result.redpath = str(Path(frame.redpath).relative_to(context.project.root))
    result.quality = dict(frame.quality)
    result.seconds = time.perf_counter() - start
    log.debug("frame %s: %s in %.2f s", task.rawpath,
              "+".join(result.done) + "".join(f", {name} failed" for name, _ in result.failed),
              result.seconds)
    return result


class FramePass(Phase):
    """Per-frame stages over every frame with work left in them (one phase);
    ``later``: the per-frame stages a later pass of the same run will run (the
    tables they rewrite are written by them only)."""

    def __init__(self, chain: tuple[Stage, ...], retry_failed: bool = False,
                 later: tuple[Stage, ...] = ()):
        self.chain, self.retry_failed = chain, retry_failed
        self.deferred = rewritten(later)
        self.name = "+".join(s.name for s in chain)
        self.failures: Counter = Counter()  # rank 0: stage -> frames that failed at it

    def plan(self, ledger, context: Context) -> list[Task]:
        tasks = ledger.pending(self.chain, context, self.retry_failed)
        if any("calibrate" in task.stages for task in tasks):
            warn_fallbacks([t for t in tasks if "calibrate" in t.stages], context)
        return tasks

    def work(self, task: Task, context: Context) -> FrameResult:
        return process_frame(task, self.chain, context, self.deferred)

    def record(self, ledger, result: FrameResult, context: Context) -> None:
        ledger.record_frame(result, context)
        self.failures.update(stage for stage, _ in result.failed)

    def failed(self, result: FrameResult) -> bool:
        return bool(result.failed)

    def label(self, task: Task) -> str:
        return task.rawpath

    def summary(self, done: int, failed: int) -> str:
        stages = ", ".join(f"{stage} {n}" for stage, n in self.failures.items())
        return f"{self.name} {done} frames" + (f" ({failed} failed: {stages})" if failed else "")
