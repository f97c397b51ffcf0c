"""The astrometric reference of each (projid, field, ccd): its best frame.

:func:`rank_frames` orders a group's good frames by sharpness, roundness, sky
and detections (the photometric reference takes its candidates from the same
order); :class:`References` is the phase that copies the first of them to
``BASE/reference-frames/`` and records it.
"""

from __future__ import annotations

import logging

import numpy as np

from trex.errors import PhaseError
from trex.fits import copy_file
from trex.frame import Context
from trex.phase import Phase
from trex.project import safe_name

log = logging.getLogger(__name__)


def rank_frames(quality: dict) -> np.ndarray:
    """Framekeys of the good frames, best first.

    ``quality`` maps framekey, meds (median S, 1/px^2), medd (median D),
    medsky (ADU), nsources and frameisok to equal-length arrays.  Good frames
    (frameisok true, all numbers finite) are ranked by S (high is sharp),
    |D| (low is round), sky (low) and detections (high); the lowest sum of
    ranks comes first.  Ties go to the sharper frame, then the rounder, darker,
    richer one, and only then to the lower framekey.
    """
    from scipy.stats import rankdata  # scipy.stats takes 0.4 s to import: here, not at start

    keys = np.asarray(quality["framekey"])
    meds, medd = np.asarray(quality["meds"], float), np.abs(np.asarray(quality["medd"], float))
    sky, nsrc = np.asarray(quality["medsky"], float), np.asarray(quality["nsources"], float)
    good = np.asarray(quality["frameisok"]).astype(bool)
    good &= np.isfinite(meds) & np.isfinite(medd) & np.isfinite(sky) & np.isfinite(nsrc)
    crits = [-meds[good], medd[good], sky[good], -nsrc[good]]
    total = sum(rankdata(c) for c in crits)
    return keys[good][np.lexsort((keys[good], *reversed(crits), total))]


def choose_reference(quality: dict) -> int:
    """Framekey of the best astrometric reference among the good frames
    (the first of :func:`rank_frames`)."""
    ranked = rank_frames(quality)
    if not len(ranked):
        raise ValueError("no good frame to choose an astrometric reference from")
    return ranked[0].item()


class References(Phase):
    """The astrometric reference per (projid, field, ccd): the best frame by
    :func:`rank_frames`, copied to ``BASE/reference-frames/``; kept for later nights
    unless the references are rebuilt."""

    name = "astrometric reference"
    batch = 1

    def plan(self, ledger, context: Context) -> list[tuple]:
        items = []
        for group in ledger.read.groups_done("astrometry", ccd=True):
            if ledger.read.astrometric_reference(*group) and not context.rebuild:
                continue
            items.append((group, ledger.read.quality_of_done_frames("astrometry", *group)))
        return items

    def work(self, item: tuple, context: Context) -> tuple:
        (projid, field, ccd), quality = item
        try:
            best = choose_reference(quality)
        except ValueError as err:
            raise PhaseError("/".join(item[0]), str(err)) from None
        source = context.project.root / quality["redpath"][list(quality["framekey"]).index(best)]
        target = context.project.reference_frames / (
            f"astromref-{safe_name(projid)}-{safe_name(field)}-{safe_name(ccd or 'ccd')}.fits")
        copy_file(source, target)
        log.info("astrometric reference for %s/%s/%s: frame %d", projid, field, ccd, best)
        return item[0], best, str(target.relative_to(context.project.root))

    def record(self, ledger, result: tuple, context: Context) -> None:
        group, framekey, path = result
        ledger.record_astrometric_reference(group, framekey, path)
        ledger.record_phase(self.name, "/".join(group))

    def label(self, item: tuple) -> str:
        return "/".join(item[0])
