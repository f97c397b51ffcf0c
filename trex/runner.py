"""Running a chain of per-frame stages over many frames, on one rank or many.

``process_frame`` runs on any rank: it loads what earlier runs left on disk,
runs the stages still to do, saves the frame's products and returns a small
:class:`FrameResult`.  A bad frame (``FrameError``) stops its chain and is
reported with the stage and the reason; any other exception is a bug and
aborts the job.  ``run_frames`` farms the frames out (``trex.parallel``)
and has rank 0 record each batch in one transaction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.wcs import WCS

from trex import parallel, records
from trex.config import Config
from trex.db import Database
from trex.fits import FrameError, read_header, read_image
from trex.frame import Context, Frame
from trex.header import parse_header
from trex.products import load_product
from trex.records import Task

log = logging.getLogger(__name__)

#: a stage: ``run(frame, context) -> frame`` and ``save(frame, context) -> {table: columns}``
#: (writes the stage's products; may be None)
Stage = tuple[Callable[[Frame, Context], Frame], Callable[[Frame, Context], dict] | None]


@dataclass
class FrameResult:
    """What a rank sends back to rank 0 for one frame (small, picklable)."""

    framekey: int
    projid: str
    redpath: str | None
    done: list[str] = field(default_factory=list)
    failed: tuple[str, str] | None = None
    quality: dict = field(default_factory=dict)
    rows: dict = field(default_factory=dict)  # table -> {column: array} for the database
    seconds: float = 0.0


def load_frame(task: Task, context: Context) -> Frame:
    """The Frame of a pending task, with what finished stages left on disk."""
    root = context.project.root
    path = root / task.rawpath
    meta = parse_header(read_header(path), context.config, path)
    frame = Frame(framekey=task.framekey, rawpath=path, night=task.night, meta=meta)
    if task.stages[0] != "calibrate":
        if not task.redpath:
            raise FrameError(path, "not calibrated yet: run the calibrate stage first")
        frame.redpath = root / task.redpath
        frame.image, frame.header = read_image(frame.redpath)
        mask, _ = read_image(frame.redpath, hdu="MASK")
        frame.mask = mask.astype(np.uint8)
        frame.sources = load_product(frame.redpath, "sources")
        if frame.header.get("CTYPE1"):
            frame.wcs = WCS(frame.header, fix=False)
    return frame


def process_frame(task: Task, context: Context, chain: dict[str, Stage],
                  finish: Callable[[Frame, FrameResult], None] | None = None) -> FrameResult:
    """Run the stages still to do on one frame; never raises for a bad frame.

    ``finish(frame, result)`` runs after the chain, also when a stage failed
    (e.g. to write what the finished stages changed).
    """
    start = time.perf_counter()
    rawpath, stages = task.rawpath, task.stages
    result = FrameResult(framekey=task.framekey, projid="", redpath=task.redpath)
    try:
        frame = load_frame(task, context)
    except (FrameError, OSError) as err:
        result.failed = (stages[0], getattr(err, "reason", str(err)))
        log.warning("frame %s: %s failed: %s", rawpath, stages[0], result.failed[1])
        return result
    result.projid = frame.meta.projid
    for name in stages:
        run, save = chain[name]
        try:
            frame = run(frame, context)
            if save is not None:
                result.rows.update(save(frame, context))
        except FrameError as err:
            result.failed = (name, err.reason)
            log.warning("frame %s: %s failed: %s", rawpath, name, err.reason)
            break
        result.done.append(name)
    if finish is not None:
        finish(frame, result)
    if frame.redpath is not None:
        result.redpath = str(Path(frame.redpath).relative_to(context.project.root))
    result.quality = dict(frame.quality)
    result.seconds = time.perf_counter() - start
    log.info("frame %s: %s in %.2f s", rawpath,
             "+".join(result.done) + (f", {result.failed[0]} failed" if result.failed else ""),
             result.seconds)
    return result


class _Progress:
    def __init__(self, total: int):
        self.total, self.done, self.failed, self.start = total, 0, 0, time.perf_counter()

    def update(self, results: list[FrameResult]) -> None:
        self.done += len(results)
        self.failed += sum(r.failed is not None for r in results)
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        log.info("progress: %d/%d frames (%d failed), %.2f frames/s, ETA %.0f s",
                 self.done, self.total, self.failed, rate, eta)


def run_frames(comm, db: Database | None, context: Context, tasks: list[Task],
               chain: dict[str, Stage], config: Config,
               finish: Callable[[Frame, FrameResult], None] | None = None) -> int:
    """Process ``tasks`` over all ranks; rank 0 records them. Returns failures (rank 0)."""
    progress = _Progress(len(tasks))

    def work(batch):
        return [process_frame(task, context, chain, finish) for task in batch]

    def consume(results):
        with db.transaction():
            for result in results:
                records.record_frame(db, result, config)
        progress.update(results)

    parallel.farm(comm, tasks, work, consume, batch_size=config.run.batch_frames)
    return progress.failed
