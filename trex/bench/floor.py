"""Light-curve scatter over the expected noise floor, per magnitude bin, from a simulation's truth.

The floor of a star in a frame is the simulator's expected 1-sigma error of
its aperture flux (photon, sky, dark, read noise, scintillation:
:func:`trex.simulate.truth.expected_noise`, stored as ``noise`` in the
night's truth) in magnitudes, ``1.0857 noise / flux_adu``.  For each
constant star (not variable, never saturated) and aperture, the ratio is the
robust RMS (1.4826 MAD) of its magnitudes over the frames where it was
measured divided by the root-mean-square floor of those frames; the star's
ratio is the one of its best aperture (the lowest RMS, as a user would pick
it).  A bin's figure is the median ratio of its stars (true magnitude).

>>> table = floor_ratios(mags, truth)            # mags: (nframes, nstars, naper)
>>> per_bin(table, truth["mag"], BINS)            # [(7.0, 8.0, 0.93, 41), ...]
"""

from __future__ import annotations

import warnings

import numpy as np

from trex.aperture import MAG_ERR_FACTOR

#: magnitude bins of the per-bin table (true magnitude, lower edges and the last upper edge)
BINS = tuple(float(m) for m in range(7, 15))


def robust_rms(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """1.4826 median absolute deviation along ``axis``, ignoring NaN (NaN if none)."""
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # all-NaN slices give NaN
        med = np.nanmedian(values, axis=axis, keepdims=True)
        return 1.4826 * np.nanmedian(np.abs(values - med), axis=axis)


def floor_ratios(mags: np.ndarray, truth: dict, min_fraction: float = 0.5) -> np.ndarray:
    """RMS / floor of each star at its best aperture, shape (nstars,) (NaN: not a constant
    star, or measured in fewer than ``min_fraction`` of the frames).

    Parameters
    ----------
    mags : float, (nframes, nstars, naper): magnitudes per truth frame and truth star
        (NaN where not measured); apertures those of ``truth["noise"]``.
    truth : :func:`trex.simulate.truth.load_truth` of the night.
    """
    mags = np.asarray(mags, dtype=np.float64)
    nframes, nstars, naper = mags.shape
    floor = MAG_ERR_FACTOR * truth["noise"][:, :, :naper] / truth["flux_adu"][:, :, None]
    measured = np.isfinite(mags)
    with np.errstate(invalid="ignore", divide="ignore"):
        floor_rms = np.sqrt(np.nansum(np.where(measured, floor**2, 0.0), axis=0)
                            / measured.sum(axis=0))
        rms = robust_rms(mags, axis=0)
        ratio = rms / floor_rms
    enough = measured.sum(axis=0) >= max(3, min_fraction * nframes)
    rms = np.where(enough & np.isfinite(ratio), rms, np.inf)
    best = np.argmin(rms, axis=1)
    out = ratio[np.arange(nstars), best]
    return np.where(constant_stars(truth) & np.isfinite(rms[np.arange(nstars), best]), out,
                    np.nan)


def constant_stars(truth: dict) -> np.ndarray:
    """(nstars,) bool: the truth's stars that are not variable and never saturated."""
    constant = ~truth["saturated"].any(axis=0)
    constant[[int(v["index"]) for v in truth["variables"]]] = False
    return constant


def per_bin(ratios: np.ndarray, mag: np.ndarray,
            bins: tuple[float, ...] = BINS) -> list[tuple[float, float, float, int]]:
    """(low, high, median ratio, stars) per magnitude bin (NaN when a bin has no star)."""
    out = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        pick = (mag >= lo) & (mag < hi) & np.isfinite(ratios)
        out.append((lo, hi, float(np.median(ratios[pick])) if pick.any() else float("nan"),
                    int(pick.sum())))
    return out


def frame_index(rjd: np.ndarray, truth: dict, tolerance: float = 1e-4) -> np.ndarray:
    """Truth frame of each reduced JD (JD - 2400000, UTC mid-exposure); -1 if none within
    ``tolerance`` days."""
    times = truth["jd"] - 2400000.0
    order = np.argsort(times)
    at = np.clip(np.searchsorted(times[order], rjd), 1, len(times) - 1)
    left, right = order[at - 1], order[at]
    near = np.where(np.abs(times[left] - rjd) <= np.abs(times[right] - rjd), left, right)
    return np.where(np.abs(times[near] - rjd) <= tolerance, near, -1)


def table_text(columns: dict[str, list[tuple[float, float, float, int]]]) -> str:
    """A text table: one row per bin, one column per named :func:`per_bin` result."""
    names = list(columns)
    lines = ["mag      " + " ".join(f"{n:>12s}" for n in names) + "   stars"]
    for k, (lo, hi, _, count) in enumerate(columns[names[0]]):
        values = " ".join(f"{columns[n][k][2]:12.3f}" for n in names)
        lines.append(f"{lo:4.1f}-{hi:<4.1f} {values}   {count}")
    return "\n".join(lines)
