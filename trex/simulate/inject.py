"""Transits forced onto chosen stars: bright ones, and ones with a bright close neighbour.

Light curves at the noise floor are tested on the stars where the pipeline is
weakest: bright stars (scintillation and flat-field limited) and stars
blended with a neighbour.  Each forced transit is an ordinary ``transit``
variable (see :func:`trex.simulate.stars.variability`) with the extra keys
``forced`` ("bright" or "crowded"), and for crowded ones ``neighbour`` (catalog
row of the neighbour) and ``separation`` (px on the nominal pointing).  A
transit of each falls within ±1.5 h of ``t_ref`` (the first night's mid-time).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.spatial import cKDTree

log = logging.getLogger(__name__)

BRIGHT = (8.5, 10.5)      # mag: bright but unsaturated on a 30 s frame
CROWDED = (9.0, 13.0)     # mag range of blended targets


def _transit(rng: np.random.Generator, index: int, t_ref: float, forced: str) -> dict:
    period = float(rng.uniform(1.0, 6.0))
    return {"index": int(index), "kind": "transit", "period": period,
            "t0": t_ref + float(rng.uniform(-1.5, 1.5)) / 24.0,
            "depth": float(rng.uniform(0.005, 0.02)),
            "duration": float(rng.uniform(1.5, 3.0)) / 24.0, "forced": forced}


def forced_transits(rng: np.random.Generator, mag: np.ndarray, x: np.ndarray, y: np.ndarray,
                    size: int, margin: float, t_ref: float, bright: int, crowded: int,
                    radius: float, taken: set[int]) -> list[dict]:
    """Transits on ``bright`` bright stars and ``crowded`` stars with a bright neighbour.

    ``mag`` (nstars,) true magnitudes; ``x``, ``y`` (nstars,) px positions on
    the nominal pointing; stars within ``margin`` px of the frame edge and rows
    in ``taken`` (already variable) are not chosen.  A crowded target (mag
    in ``CROWDED``) has a neighbour within ``radius`` px that is at most
    0.5 mag fainter than it and not saturated (mag >= 8).  Fewer transits are
    returned (with a warning) when too few stars qualify.
    """
    inside = (x > margin) & (x < size - 1 - margin) & (y > margin) & (y < size - 1 - margin)
    free = inside & ~np.isin(np.arange(mag.size), sorted(taken))
    out = []
    pool = np.flatnonzero(free & (mag >= BRIGHT[0]) & (mag <= BRIGHT[1]))
    for index in rng.permutation(pool)[:bright]:
        out.append(_transit(rng, index, t_ref, "bright"))
    if len(out) < bright:
        log.warning("simulate: only %d bright stars for %d forced transits", len(out), bright)
    chosen = {v["index"] for v in out}
    pairs = cKDTree(np.column_stack([x, y])).query_pairs(radius, output_type="ndarray")
    both = np.concatenate([pairs, pairs[:, ::-1]]).reshape(-1, 2)
    i, j = both[:, 0], both[:, 1]
    ok = (free[i] & ~np.isin(i, sorted(chosen)) & (mag[i] >= CROWDED[0]) & (mag[i] <= CROWDED[1])
          & (mag[j] >= 8.0) & (mag[j] <= mag[i] + 0.5))
    both = both[ok][rng.permutation(int(ok.sum()))]
    _, first = np.unique(both[:, 0], return_index=True)     # one neighbour per target
    picks = both[np.sort(first)][:crowded]
    for target, neighbour in picks:
        entry = _transit(rng, target, t_ref, "crowded")
        entry.update(neighbour=int(neighbour),
                     separation=float(np.hypot(x[target] - x[neighbour], y[target] - y[neighbour])))
        out.append(entry)
    done = len(picks)
    if done < crowded:
        log.warning("simulate: only %d crowded stars for %d forced transits", done, crowded)
    return out
