"""``trex run``: the whole project, phase by phase, on one rank or many.

Read top to bottom (:func:`phases`), this is the pipeline:

1. inventory of RAW/, calibration masters (bias, then dark, then flat; each
   stacked in bands of rows, one per rank, joined on rank 0), the field
   catalogs (beside the bias);
2. per frame: calibrate -> extract -> astrometry -> photometry;
3. astrometric reference per (projid, field, ccd); magnitude-fit master per
   (projid, field) (single-reference fits, then the master); photometric
   reference per (projid, field, ccd) (registration, matching, stack); phases
   that need nothing from each other are farmed together
   (:class:`trex.phase.Together`): the astrometric reference with the single
   fits, the magnitude-fit master with the registrations;
4. per frame: magfit, subtract;
5. light curves: TFA templates, scatter of the new frames' rows, the nights'
   trends, merge + detrend + write (``trex detrend`` alone: every light
   curve detrended again from its file).

Every phase is plan -> work -> record (:mod:`trex.phase`).  This module is
the one driver: rank 0 plans from the ledger, :func:`trex.parallel.farm`
hands the items to every rank (rank 0 included), rank 0 records each batch
in one transaction and hands what a phase adds to the context to every rank.
A bad item is recorded with its reason and the run goes on; a failed write
(disk full, permission) or a stop signal ends the run cleanly after the
items in hand are recorded; any other exception is a bug and aborts the job.
Every phase skips what is already done, so a re-run resumes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import time

from trex import astromref, inventory, magfit, parallel, photref
from trex.catalog import Catalogs
from trex.config import Config
from trex.cpu import kernels_build
from trex.db import Database, DatabaseError, connect
from trex.errors import Stopped, WriteFault
from trex.frame import Context
from trex.ledger import Ledger
from trex.lightcurves import Merge, Scatter, Trends
from trex.lock import ProjectLock, ProjectLocked, acquire
from trex.log import set_rank
from trex.masterframes import Masters, recorded_masters
from trex.phase import Failure, Fault, Phase, Together, attempt
from trex.project import Project
from trex.redetrend import DetrendFiles, FileTrends, Summaries
from trex.runner import FramePass
from trex.stages import per_frame
from trex.templates import ChooseTemplates, load_templates

log = logging.getLogger(__name__)
progress_log = logging.getLogger("trex.progress")

FIRST_PASS = ("calibrate", "extract", "astrometry", "photometry")
SECOND_PASS = ("magfit", "subtract")


def phases(stages: tuple[str, ...], retry_failed: bool = False) -> list[Phase]:
    """The phases that run ``stages``, in order (see the module doc)."""
    out: list[Phase] = [inventory.Inventory()]
    if "calibrate" in stages:  # the catalogs beside the bias (first: a worker's first two
        # items go together, rank 0 takes the next, so the two bands of a bias are split)
        out += [Together(Catalogs(), Masters("bias")), Masters("dark"), Masters("flat")]
    else:
        out.append(Catalogs())
    first_pass, second_pass = (per_frame(tuple(s for s in stages if s in names))
                               for names in (FIRST_PASS, SECOND_PASS))
    if first_pass:
        out.append(FramePass(first_pass, retry_failed, later=second_pass))
    out.append(KnownReferences())
    # references: each group's phases need nothing from each other, only from the one before
    first = ([astromref.References()] if "astrometry" in stages else []) + \
        ([magfit.SingleFits()] if "magfit" in stages else [])
    second = ([magfit.Masters()] if "magfit" in stages else []) + \
        ([photref.Registrations()] if "subtract" in stages else [])
    out += [_together(group) for group in (first, second) if group]
    if "subtract" in stages:
        out += [photref.Matches(), photref.Bands(), photref.Stacks()]
    if second_pass:
        out.append(FramePass(second_pass, retry_failed))
    if "lightcurves" in stages:
        detrend = "detrend" in stages
        out += ([ChooseTemplates()] if detrend else []) + [Scatter()] + \
            ([Trends()] if detrend else []) + [Merge(detrend)]
    elif "detrend" in stages:
        summaries = Summaries()
        out += [summaries, FileTrends(summaries), DetrendFiles(summaries)]
    return out


def _together(phases: list[Phase]) -> Phase:
    return phases[0] if len(phases) == 1 else Together(*phases)


class KnownReferences(Phase):
    """Not work, only context: the references kept from earlier runs (magnitude-fit
    masters, photometric references, TFA templates) of the groups known now."""

    name = "references"

    def plan(self, ledger, context: Context) -> list:
        return []

    def update(self, ledger, context: Context) -> Context:
        project = context.project
        groups = [g for g in ledger.read.groups_done("photometry") if g[1] in context.catalogs]
        found = magfit.load_masters(project, [g for g in groups if g not in context.magfit])
        context = magfit.with_masters(context, found)
        refs = {g: r for g, r in photref.load_references(ledger, project).items()
                if g not in context.photref}
        context = photref.with_references(context, refs)
        templates = load_templates(project, [g for g in groups if g not in context.templates])
        return dataclasses.replace(context, templates={**context.templates, **templates})


def run_project(project: Project, config: Config, stages: tuple[str, ...],
                rebuild_references: bool = False, retry_failed: bool = False,
                wait: bool = False, nights: tuple[str, ...] = ()) -> int:
    """Run ``stages`` over the project on every rank of the job; returns the exit status
    (0: done, every bad input recorded with its reason)."""
    run_stages(project, config, stages, rebuild_references, retry_failed, wait, nights)
    return 0


def run_stages(project: Project, config: Config, stages: tuple[str, ...],
               rebuild_references: bool = False, retry_failed: bool = False,
               wait: bool = False, nights: tuple[str, ...] = ()) -> dict:
    """Run ``stages`` over the project on every rank of the job, holding the project
    lock (``wait``: until it is free), on the frames of ``nights`` only when given;
    returns, on rank 0, {phase name: (items, failed)} of the phases that had work."""
    comm = parallel.world()
    set_rank(comm.rank)
    if comm.rank == 0:
        log.info("trex run on %d rank(s), %s kernels: %s", comm.size, kernels_build(),
                 ", ".join(stages))
    if comm.size > 1:
        log.info("rank %d of %d on %s, pid %d", comm.rank, comm.size, socket.gethostname(),
                 os.getpid())
    with parallel.abort_on_error(comm), _stop_signals() as stop:
        db, lock = _start(comm, project, config, wait)
        try:
            ledger = Ledger(db, config) if db is not None else None
            return _run(comm, ledger, project, config, stages, rebuild_references,
                        retry_failed, stop, tuple(nights))
        finally:
            if db is not None:
                db.close()  # ends the session: releases the database lock
                lock.release()


def _start(comm, project: Project, config: Config,
           wait: bool) -> tuple[Database | None, ProjectLock | None]:
    """Rank 0: the database and the project lock (the lock file, and on PostgreSQL the
    database's advisory lock), held for the run.  When the run cannot start, every
    rank raises the same error."""
    db = lock = error = None
    if comm.rank == 0:
        try:
            db = connect(project.database_url(config))
            lock = acquire(project.root, wait,
                           also=lambda started: db.try_project_lock(project.root, started))
            db.create_schema()
        except (ProjectLocked, DatabaseError, WriteFault) as err:
            if db is not None:
                db.close()
            if lock is not None:
                lock.release()
            error = err
    error = comm.bcast(error)
    if error is not None:
        parallel.raise_everywhere(error)
    return db, lock


def _run(comm, ledger: Ledger | None, project: Project, config: Config, stages: tuple[str, ...],
         rebuild: bool, retry_failed: bool, stop: dict, nights: tuple[str, ...]) -> dict:
    start = time.perf_counter()
    context = None
    if comm.rank == 0:
        context = Context(project, config, recorded_masters(project, ledger.read.masters()),
                          rebuild=rebuild, nights=nights, ranks=comm.size)
    context = comm.bcast(context)
    summary, lines = {}, []
    for phase in phases(stages, retry_failed):
        context, done, failed = run_phase(comm, ledger, context, phase, stop)
        if done:
            summary[phase.name] = (done, failed)
            lines.append(phase.summary(done, failed))
    if comm.rank == 0:  # on the progress logger: shown at --log-level WARNING too
        progress_log.info("trex run done in %s: %s", _hms(time.perf_counter() - start),
                          "; ".join(lines) or "nothing to do")
    return summary


def run_phase(comm, ledger: Ledger | None, context: Context, phase: Phase,
              stop: dict) -> tuple[Context, int, int]:
    """Plan on rank 0, farm the items, record on rank 0, hand the context on.
    Returns the new context, the items done and those that failed."""
    items = _on_rank0(comm, lambda: phase.plan(ledger, context), [])
    count = comm.bcast(len(items))
    progress = Progress(phase.name, count, context.config.run.progress_seconds)
    outcome: dict = {"failed": 0, "fault": None}
    clock = dict.fromkeys(("items", "work", "work_cpu", "record", "record_cpu"), 0)  # this rank

    def work(batch: list) -> list:
        clock["items"] += len(batch)
        return [attempt(phase, item, context) for item in batch]

    def consume(results: list) -> bool:
        try:
            with ledger.transaction():  # a failed write (the database's too) keeps none of it
                failed = outcome["failed"]
                for result in results:
                    if isinstance(result, Fault):
                        outcome["fault"] = outcome["fault"] or result
                    elif isinstance(result, Failure):
                        phase.fail(ledger, result.item, result.reason, context)
                        failed += 1
                    else:
                        phase.record(ledger, result, context)
                        failed += phase.failed(result)
                outcome["failed"] = failed
        except WriteFault as err:
            outcome["fault"] = outcome["fault"] or Fault(err.path, err.cause)
        progress.update(len(results), outcome["failed"])
        return outcome["fault"] is None and not stop["signal"]

    if count:
        if comm.rank == 0:
            log.info("%s: %d to do", phase.name, count)
        began = time.perf_counter()
        parallel.farm(comm, items, _timed(clock, "work", work), _timed(clock, "record", consume),
                      batch_size=phase.batch or context.config.run.batch_frames)
        closed = [f for f in comm.gather(attempt_close(phase, context)) or () if f]
        outcome["fault"] = outcome["fault"] or (closed[0] if closed else None)
        _log_timing(phase.name, time.perf_counter() - began, comm.gather(clock))
    fault = comm.bcast(outcome["fault"])
    if fault is not None:
        parallel.raise_everywhere(WriteFault(fault.path, fault.cause))
    if comm.allreduce_max(int(stop["signal"])):
        parallel.raise_everywhere(Stopped(f"stopped by a signal during {phase.name}"))

    def changes() -> dict:
        new = phase.update(ledger, context)
        return {f.name: getattr(new, f.name) for f in dataclasses.fields(Context)
                if getattr(new, f.name) is not getattr(context, f.name)}
    context = dataclasses.replace(context, **comm.bcast(_on_rank0(comm, changes, None)))
    if count and comm.rank == 0:
        progress.finish(outcome["failed"])
    return context, count, outcome["failed"]


def _timed(clock: dict, key: str, func):
    """``func`` adding its wall and CPU seconds to ``clock[key]`` and ``clock[key + "_cpu"]``."""
    def timed(arg):
        began, cpu = time.perf_counter(), time.process_time()
        try:
            return func(arg)
        finally:
            clock[key] += time.perf_counter() - began
            clock[key + "_cpu"] += time.process_time() - cpu
    return timed


def _log_timing(name: str, wall: float, clocks: list[dict] | None) -> None:
    """On rank 0: the phase's wall time, each rank's items and seconds of work (wall and
    CPU: on a shared machine the wall time includes waiting for a core), and rank 0's
    seconds of recording (what the rank-0 ingest model of the README is made of)."""
    if clocks is None:  # not rank 0
        return
    ranks = "; ".join(f"rank {r} {c['items']} in {c['work']:.2f} s (CPU {c['work_cpu']:.2f} s)"
                      for r, c in enumerate(clocks))
    log.info("%s: %.2f s wall; work: %s; rank 0 recording %.2f s (CPU %.2f s)", name, wall,
             ranks, clocks[0]["record"], clocks[0]["record_cpu"])


def attempt_close(phase: Phase, context: Context) -> Fault | None:
    """``phase.close`` on this rank; a failed write becomes a :class:`Fault`."""
    try:
        phase.close(context)
    except WriteFault as err:
        return Fault(err.path, err.cause)
    return None


def _on_rank0(comm, call, other):
    """``call()`` on rank 0 (``other`` on the other ranks); a failed write there ends
    the run on every rank (a :class:`WriteFault`, never a hung job)."""
    result, fault = other, None
    if comm.rank == 0:
        try:
            result = call()
        except WriteFault as err:
            fault = err
    fault = comm.bcast(fault)
    if fault is not None:
        parallel.raise_everywhere(fault)
    return result


class Progress:
    """Progress lines of a phase at most every ``seconds`` (done/total, percent,
    rate, elapsed, ETA), on the ``trex.progress`` logger (shown up to --log-level WARNING)."""

    def __init__(self, name: str, total: int, seconds: float):
        self.name, self.total, self.seconds = name, total, seconds
        self.done, self.start = 0, time.perf_counter()
        self.last = self.start

    def update(self, n: int, failed: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.seconds and self.done < self.total:
            self.last = now
            progress_log.info("%s", self._line(now, failed))

    def finish(self, failed: int) -> None:
        progress_log.info("%s", self._line(time.perf_counter(), failed))

    def _line(self, now: float, failed: int) -> str:
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        return (f"{self.name}: {self.done}/{self.total} ({100.0 * self.done / max(self.total, 1):.0f} %)"
                + (f", {failed} failed" if failed else "")
                + f", {rate:.2f}/s, elapsed {_hms(elapsed)}, ETA {_hms(eta)}")


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _stop_signals:
    """SIGTERM and SIGUSR1 ask the run to stop cleanly: the items in hand are finished
    and recorded, then the run ends (:class:`trex.errors.Stopped`)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __enter__(self) -> dict:
        self.flag = {"signal": False}
        self.old = {}

        def handler(signum, _frame):
            if not self.flag["signal"]:
                log.warning("%s received: finishing the frames in hand, then stopping",
                            signal.Signals(signum).name)
            self.flag["signal"] = True

        for sig in self.SIGNALS:
            self.old[sig] = signal.signal(sig, handler)
        return self.flag

    def __exit__(self, *exc) -> None:
        for sig, old in self.old.items():
            signal.signal(sig, old)

