"""The protocol of every unit of project work: plan, work, record.

A phase (the per-frame passes, a reference, the light curves ...) is

* ``plan(ledger, context) -> items``: on rank 0, what is to be done, from the
  ledger (small, picklable items);
* ``work(item, context) -> result``: on any rank, pure of MPI and of the
  database; it may read and write files of the project, and raises
  :class:`trex.errors.FrameError` or :class:`trex.errors.PhaseError` when
  the item cannot be done from its data;
* ``record(ledger, result, context)``: on rank 0, inside one transaction per
  batch; a failed item goes to ``fail(ledger, item, reason)`` instead;
* ``update(ledger, context) -> context``: on rank 0 after the last record,
  what the phase adds for the later ones (a reference, the masters), which
  the driver hands to every rank;
* ``close(context)``: on every rank after the last item, to flush what
  ``work`` kept between items (a staging buffer).

The driver (:mod:`trex.pipeline`) does the planning, farming and recording; a
phase never imports ``trex.parallel`` or ``trex.db``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from trex.errors import FrameError, PhaseError, WriteFault
from trex.frame import Context

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failure:
    """An item that could not be done from its data, with the reason."""

    item: Any
    reason: str


@dataclass(frozen=True)
class Fault:
    """A write that failed for a cause outside trex: the run stops cleanly."""

    path: str
    cause: str


class Phase:
    """Base of the project phases (see the module doc); subclasses set ``name`` and
    override ``plan``, ``work`` and what else they need."""

    name = "phase"
    #: items per batch handed to a rank (0: ``[run] batch_frames``)
    batch = 0

    def plan(self, ledger, context: Context) -> list:
        raise NotImplementedError(f"{type(self).__name__}.plan")

    def work(self, item, context: Context):
        raise NotImplementedError(f"{type(self).__name__}.work")

    def record(self, ledger, result, context: Context) -> None:
        """Write what ``work`` returned (nothing by default)."""

    def fail(self, ledger, item, reason: str, context: Context) -> None:
        """Record that ``item`` failed (as a phase item, by default)."""
        ledger.record_phase(self.name, self.label(item), reason)

    def failed(self, result) -> bool:
        """Whether a recorded result is a failure of its item (e.g. a frame that failed
        at one of its stages)."""
        return False

    def update(self, ledger, context: Context) -> Context:
        """The context for the later phases (unchanged by default)."""
        return context

    def close(self, context: Context) -> None:
        """Flush what ``work`` kept on this rank between items (nothing by default)."""

    def label(self, item) -> str:
        """A short name of ``item`` for the log and the ledger."""
        return str(item)

    def summary(self, done: int, failed: int) -> str:
        """What this run's part of the phase came to, for the run's summary line."""
        return f"{self.name} {done}" + (f" ({failed} failed)" if failed else "")


def attempt(phase: Phase, item, context: Context):
    """``phase.work(item)``; a bad item becomes a :class:`Failure`, a failed write a
    :class:`Fault`.  Any other exception is a bug and propagates."""
    try:
        return phase.work(item, context)
    except (FrameError, PhaseError) as err:
        log.warning("%s: %s: %s", phase.name, phase.label(item), err.reason)
        return Failure(item, err.reason)
    except WriteFault as err:
        return Fault(err.path, err.cause)


class Pieces:
    """Rank 0's side of an item worked in pieces on several ranks (a master's bands of
    rows, a group's template columns): each piece's result is kept until the item's
    last one is in."""

    def __init__(self):
        self.held: dict = {}

    def add(self, key, index, count: int, piece) -> dict | None:
        """Keep ``piece`` (number ``index`` of ``count`` of item ``key``); all the item's
        pieces ``{index: piece}`` once they are in, else None."""
        pieces = self.held.setdefault(key, {})
        pieces[index] = piece
        return self.held.pop(key) if len(pieces) == count else None


class Together(Phase):
    """Independent phases farmed as one: their items share the ranks, so that a phase
    of one item (a reference, a master) does not leave the other ranks waiting.

    No phase may need what another of the group records or adds to the context
    (every ``plan`` runs before any ``work``); items are ``(index of the phase,
    item)``, the first phase's first, and each is worked, recorded, failed and
    labelled by its own phase; ``update`` and ``close`` run each phase's in order.
    """

    batch = 1

    def __init__(self, *phases: Phase):
        self.phases = phases
        self.name = " + ".join(p.name for p in phases)
        self.counts = [[0, 0] for _ in phases]  # rank 0: items done, failed, per phase

    def plan(self, ledger, context: Context) -> list:
        items = []
        for i, phase in enumerate(self.phases):
            mine = phase.plan(ledger, context)
            self.counts[i][0] += len(mine)
            items += [(i, item) for item in mine]
        return items

    def work(self, item, context: Context):
        i, inner = item
        return i, self.phases[i].work(inner, context)

    def record(self, ledger, result, context: Context) -> None:
        i, inner = result
        self.phases[i].record(ledger, inner, context)
        self.counts[i][1] += bool(self.phases[i].failed(inner))

    def fail(self, ledger, item, reason: str, context: Context) -> None:
        i, inner = item
        self.phases[i].fail(ledger, inner, reason, context)
        self.counts[i][1] += 1

    def failed(self, result) -> bool:
        i, inner = result
        return self.phases[i].failed(inner)

    def update(self, ledger, context: Context) -> Context:
        for phase in self.phases:
            context = phase.update(ledger, context)
        return context

    def close(self, context: Context) -> None:
        for phase in self.phases:
            phase.close(context)

    def label(self, item) -> str:
        i, inner = item
        return self.phases[i].label(inner)

    def summary(self, done: int, failed: int) -> str:
        return "; ".join(phase.summary(n, bad) for phase, (n, bad) in zip(self.phases, self.counts)
                         if n)
