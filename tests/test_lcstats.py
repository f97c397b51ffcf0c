"""The ``lcstats`` rows of many light curves at once against a star-by-star reference."""

from __future__ import annotations

import numpy as np
import pytest

from trex import lcstats
from trex.lcformat import empty_rows
from trex.lcstats import ACCUMULATED, STAT_PREFIXES, lcstats_rows, stat_columns

NAPERTURES, GAP = 2, 0.25


def reference(rows: np.ndarray, column: str, gap: float) -> dict[str, float]:
    """One star's fields of one magnitude column, night by night with numpy's own
    functions: totals over all points, nights' medians and MADs weighted by their points,
    nights' clipped RMS pooled with weights n_k - 1."""
    values = rows[column].astype(np.float64)
    cuts = np.flatnonzero(np.diff(rows["rjd"]) > gap) + 1
    every = values[np.isfinite(values)]
    out = {"n": len(every), "nights": 0,
           "mean": every.mean() if len(every) else np.nan,
           "rms": every.std(ddof=1) if len(every) > 1 else np.nan}
    medians, mads, weights, pooled, dof = [], [], [], 0.0, 0
    for night in np.split(values, cuts) if len(values) else []:
        x = night[np.isfinite(night)]
        if not len(x):
            continue
        median = np.median(x)
        mad = np.median(np.abs(x - median))
        kept = x[np.abs(x - median) <= 3.0 * 1.4826 * max(mad, 1e-12)]
        out["nights"] += 1
        medians.append(median)
        mads.append(mad)
        weights.append(len(x))
        if len(kept) > 1:
            pooled += (len(x) - 1) * kept.std(ddof=1) ** 2
            dof += len(x) - 1
    out["median"] = np.average(medians, weights=weights) if weights else np.nan
    out["mad"] = np.average(mads, weights=weights) if weights else np.nan
    out["crms"] = np.sqrt(pooled / dof) if dof else np.nan
    return out


def light_curve(rng: np.random.Generator, nights: list[int]) -> np.ndarray:
    """Rows of nights (1 day apart, ``nights`` points each) with NaNs, an all-NaN
    column and outliers."""
    rjd = np.concatenate([k + np.sort(rng.uniform(0.0, 0.2, n)) for k, n in enumerate(nights)]
                         + [np.zeros(0)])
    rows = empty_rows(len(rjd), NAPERTURES)
    rows["rjd"] = rjd
    for col in stat_columns(NAPERTURES):
        values = 10.0 + rng.normal(0.0, 0.02, len(rjd)) + 0.1 * np.floor(rjd)
        values[rng.random(len(rjd)) < 0.15] = np.nan
        values[rng.random(len(rjd)) < 0.05] += 1.0
        rows[col] = values
    rows[stat_columns(NAPERTURES)[3]] = np.nan
    return rows


def stars(seed: int = 4) -> list[tuple[np.ndarray, dict]]:
    rng = np.random.default_rng(seed)
    shapes = [[40], [40, 37, 1], [], [1], [3, 60, 2, 1], [2], [25, 0, 25], [1, 1, 1, 1],
              [5, 80]] + [list(rng.integers(1, 50, rng.integers(1, 5))) for _ in range(30)]
    out = []
    for i, nights in enumerate(shapes):
        rows = light_curve(rng, [n for n in nights if n])
        if i == 4:  # as the detrend phase reads them
            rows = rows.astype(rows.dtype.newbyteorder(">"))
        out.append((rows, {"projid": "7", "objectid": f"star{i}", "mag": 8.0 + 0.1 * i,
                           "x": float(i), "y": 2.0 * i}))
    return out


def check(got: dict, chunk: list[tuple[np.ndarray, dict]]) -> None:
    n = NAPERTURES
    assert len(got["objectid"]) == n * len(chunk)
    assert got["aperture"].dtype == np.int16
    np.testing.assert_array_equal(got["aperture"], np.tile(np.arange(n), len(chunk)))
    for s, (rows, info) in enumerate(chunk):
        at = slice(s * n, (s + 1) * n)
        assert got["objectid"][at].tolist() == [info["objectid"]] * n
        assert got["projid"][at].tolist() == ["7"] * n
        for name in ("mag", "x", "y"):
            np.testing.assert_array_equal(got[name][at], info[name])
        for prefix in STAT_PREFIXES:
            for a in range(n):
                want = reference(rows, f"{prefix}_{a:03d}", GAP)
                for f in ACCUMULATED:
                    np.testing.assert_allclose(got[f"{prefix}_{f}"][s * n + a], want[f],
                                               rtol=1e-12, atol=1e-15, equal_nan=True,
                                               err_msg=f"star {s} {prefix}_{a:03d}_{f}")


def test_rows_of_many_stars_equal_the_per_star_reference():
    chunk = stars()
    got = lcstats_rows(chunk, NAPERTURES, GAP)
    assert list(got)[:6] == ["projid", "objectid", "aperture", "mag", "x", "y"]
    assert {k for k in got if k[3:4] == "_"} == {f"{p}_{f}" for p in STAT_PREFIXES
                                                  for f in ACCUMULATED}
    for prefix in STAT_PREFIXES:
        assert got[f"{prefix}_n"].dtype == got[f"{prefix}_nights"].dtype == np.int64
        assert got[f"{prefix}_crms"].dtype == np.float64
    check(got, chunk)
    star2 = slice(2 * NAPERTURES, 3 * NAPERTURES)  # no rows: nothing measured
    assert (got["aim_n"][star2] == 0).all() and np.isnan(got["aim_median"][star2]).all()
    assert (got["aim_nights"][NAPERTURES:2 * NAPERTURES] == 3).all()


def test_small_blocks_give_the_same_rows(monkeypatch):
    chunk = stars(seed=9)
    whole = lcstats_rows(chunk, NAPERTURES, GAP)
    monkeypatch.setattr(lcstats, "BLOCK_BYTES", 3000)  # a few nights a block, or one
    parts = lcstats_rows(chunk, NAPERTURES, GAP)
    check(parts, chunk)
    for name, values in whole.items():  # other padding: other summation order of the RMS
        if values.dtype.kind == "f":
            np.testing.assert_allclose(parts[name], values, rtol=1e-12, atol=1e-15,
                                       equal_nan=True, err_msg=name)
        else:
            np.testing.assert_array_equal(parts[name], values, err_msg=name)


def test_a_chunk_is_its_stars_one_by_one():
    chunk = stars(seed=2)
    one = [lcstats_rows([star], NAPERTURES, GAP) for star in chunk]
    got = lcstats_rows(chunk, NAPERTURES, GAP)
    for name, values in got.items():
        joined = np.concatenate([o[name] for o in one])
        assert values.dtype == joined.dtype
        if values.dtype.kind == "f":
            np.testing.assert_allclose(values, joined, rtol=1e-12, atol=1e-15, equal_nan=True)
        else:
            np.testing.assert_array_equal(values, joined)
    assert lcstats_rows([], NAPERTURES, GAP) == {}


@pytest.mark.parametrize("gap", [0.0, 0.1, 5.0])
def test_nights_follow_the_gap(gap):
    rows = empty_rows(6, 1)
    rows["rjd"] = [0.0, 0.05, 0.3, 1.0, 1.2, 1.21]
    rows["aim_000"] = [1.0, 1.0, 2.0, 3.0, 3.0, 3.0]
    got = lcstats_rows([(rows, {"projid": "7", "objectid": "a", "mag": 1.0, "x": 0.0,
                                "y": 0.0})], 1, gap)
    nights, median = {0.0: (6, 13 / 6), 0.1: (4, 13 / 6), 5.0: (1, 2.5)}[gap]
    assert got["aim_nights"][0] == nights and got["aim_n"][0] == 6
    assert got["aim_median"][0] == pytest.approx(median)
    assert got["aim_mean"][0] == pytest.approx(13 / 6)
