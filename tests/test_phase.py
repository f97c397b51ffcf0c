"""Phases farmed together: each item worked, recorded and failed by its own phase."""

from contextlib import nullcontext
from types import SimpleNamespace

from trex.config import Config
from trex.errors import PhaseError
from trex.frame import Context
from trex.parallel import SerialComm
from trex.phase import Phase, Pieces, Together
from trex.pipeline import run_phase


class Squares(Phase):
    def __init__(self, name, items, bad=()):
        self.name, self.items, self.bad = name, items, set(bad)
        self.recorded, self.failures, self.updated = [], [], False

    def plan(self, ledger, context):
        return list(self.items)

    def work(self, item, context):
        if item in self.bad:
            raise PhaseError(str(item), "bad item")
        return self.name, item * item

    def record(self, ledger, result, context):
        self.recorded.append(result)

    def fail(self, ledger, item, reason, context):
        self.failures.append((item, reason))

    def update(self, ledger, context):
        self.updated = True
        return context


def test_together_dispatches_every_item_to_its_phase(tmp_path):
    one, many = Squares("reference", [7]), Squares("fits", [1, 2, 3, 4], bad=[3])
    context = Context(project=None, config=Config(), masters={})
    together = Together(one, many)
    ledger = SimpleNamespace(transaction=nullcontext)
    _, done, failed = run_phase(SerialComm(), ledger, context, together, {"signal": False})
    assert (done, failed) == (5, 1)
    assert one.recorded == [("reference", 49)]
    assert sorted(many.recorded) == [("fits", 1), ("fits", 4), ("fits", 16)]
    assert many.failures == [(3, "bad item")] and not one.failures
    assert one.updated and many.updated
    assert together.summary(done, failed) == "reference 1; fits 4 (1 failed)"


def test_pieces_are_given_back_once_all_of_an_item_are_in():
    pieces = Pieces()
    assert pieces.add("flat", 1, 3, "b") is None
    assert pieces.add("bias", 0, 1, "whole") == {0: "whole"}  # an item of one piece
    assert pieces.add("flat", 0, 3, "a") is None
    assert pieces.add("flat", 2, 3, "c") == {0: "a", 1: "b", 2: "c"}
    assert pieces.held == {}  # nothing kept once given back
