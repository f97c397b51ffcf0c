"""A star's own slow signal on a night, kept out of its EPD and TFA fits.

On a night of a few dozen frames an eclipse or any variation lasting longer than
the EPD smoothing window looks like a smooth trend: EPD (airmass, sky and PSF shape
all change smoothly over a night) and TFA (smooth template modes) fitted most of
it away (15 % eclipses injected over half of a simulated 40-frame night kept about
0.4 of their depth in ``atf``).  Kovacs, Bakos & Noyes (2005) keep a known signal
by fitting the templates to the light curve minus the signal and subtracting only
the template model (their signal reconstruction, with the signal from the folded
light curve).  Here the signal is estimated from the night itself
(:func:`night_signal`): the star's running median over the EPD smoothing window,
measured from its most common level, where it departs from that level by
significantly more than its point-to-point noise allows, after the night's common
trend is taken out (a TFA fit of the templates' own input magnitudes: a trend the
templates share is not a signal).  EPD and TFA are fitted to the magnitudes minus
that signal and their models subtracted from the magnitudes, so the signal stays
whole in ``aep``/``atf`` while the trends are still fitted on every frame.

Constant stars rarely pass the test (``[detrend] signal_clip`` sigma), and then
only their own red noise, which no template shares, is left in place.  A variation
shorter than the smoothing window is not concerned: EPD fits median-smoothed
magnitudes and TFA refits without sustained outliers.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from trex._detrend import own_signals
from trex.tfa import tfa


class NightRows(Protocol):
    """Many stars' rows of a night placed on its frame grid (``trex.detrend._Stars``)."""

    offsets: np.ndarray  # (nstars + 1,)

    def on_grid(self, values: np.ndarray) -> np.ndarray: ...

    def of_rows(self, grid: np.ndarray) -> np.ndarray: ...


def own_signal(mags: np.ndarray, offsets: np.ndarray, window: int, clip: float,
               extend: float) -> np.ndarray:
    """The slow signal (N,), mag, of many stars' rows of a night: star s owns rows
    ``offsets[s]:offsets[s + 1]`` (``offsets`` (nstars + 1,)) of ``mags`` (N,), in
    time order, NaN missing (Cython kernel ``trex._detrend.own_signals``).

    Per star: the running median over ``window`` frames (fewer at the ends) is
    measured from its level (the middle of the shortest interval holding half of
    those medians); on the runs of frames where it departs from the level by more
    than ``extend`` times its noise (from the point-to-point scatter) and somewhere by
    more than ``clip`` times, the signal is the running median as EPD smooths (edges
    repeated) minus the level; 0 elsewhere.  All zeros when ``clip`` is 0
    (protection off) or ``window`` < 3.
    """
    mags = np.ascontiguousarray(mags, dtype=np.float64)
    out = np.zeros(len(mags))
    if clip <= 0 or window < 3 or not len(mags):
        return out
    own_signals(mags, np.ascontiguousarray(offsets, dtype=np.int64), int(window), float(clip),
                float(extend), out)
    return out


def night_signal(stars: NightRows, mags: np.ndarray, raw: np.ndarray, excluded: np.ndarray,
                 window: int, clip: float, extend: float) -> np.ndarray:
    """The own slow signals (N,), mag, of a night's rows ``stars`` (magnitudes ``mags``
    (N,)): :func:`own_signal` of the magnitudes less a TFA fit (:func:`trex.tfa.tfa`,
    with its refits without sustained outliers) of the templates' input magnitudes
    ``raw`` (nt, nf) (``excluded`` (nstars, nt) as for TFA; no fit without templates)."""
    rest = mags
    if len(raw):
        rest = stars.of_rows(tfa(stars.on_grid(mags), raw, excluded)[0])
        rest = np.where(np.isfinite(rest), rest, mags)
    return own_signal(rest, stars.offsets, window, clip, extend)
