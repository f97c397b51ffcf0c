"""EPD and TFA against injected systematics and signals; the project-level pass."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_stages

from trex import lcformat
from trex.config import Config
from trex.db import connect
from trex.db.queries import Queries
from trex.epd import epd, local_sidereal_time, parameter_names, sky_geometry
from trex.flags import PHOT
from trex.lccards import header_cards
from trex.lcstats import robust_stats, wide_table
from trex.project import init_project
from trex.tfa import default_template_count, exclusion, peak_power, select_templates, tfa

NOISE = 0.004


def box_transit(t: np.ndarray, t0: float, duration: float, depth: float) -> np.ndarray:
    """Magnitude excess (positive = fainter) of a box transit."""
    return np.where(np.abs(t - t0) < duration / 2, depth, 0.0)


def epd_series(n: int = 800, seed: int = 1):
    """A light curve whose systematics are linear in smooth S, sky and airmass."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 0.4, n)
    params = {"s": 0.3 + 0.05 * np.sin(2 * np.pi * t / 0.3),
              "bg": 1000 + 300 * t / 0.4 + 50 * np.cos(2 * np.pi * t / 0.17),
              "airmass": 1.0 + 0.8 * (t - 0.2) ** 2 / 0.04}
    trend = 0.6 * params["s"] + 4e-5 * params["bg"] + 0.03 * params["airmass"]
    noise = rng.normal(0, NOISE, n)
    return t, params, 11.0 + trend + noise, noise


def test_epd_removes_parameter_trends_and_recovers_coefficients():
    t, params, mags, noise = epd_series()
    raw_rms = np.std(mags)
    out, coef, ok = epd(mags, params, smooth=21)
    assert ok
    assert raw_rms > 5 * NOISE
    assert np.std(out) < 1.10 * np.std(noise)
    assert coef["s"] == pytest.approx(0.6, rel=0.05)
    assert coef["airmass"] == pytest.approx(0.03, rel=0.1)
    assert np.median(out) == pytest.approx(np.median(mags), abs=0.01)


def test_epd_keeps_a_transit_and_ignores_missing_points():
    t, params, mags, _ = epd_series(seed=2)
    signal = box_transit(t, 0.27, 0.04, 0.02)  # 80 points, longer than the window
    mags = mags + signal
    mags[::37] = np.nan
    out, _, ok = epd(mags, params, smooth=21)
    assert ok
    assert np.isnan(out[::37]).all() and np.isfinite(np.delete(out, np.s_[::37])).all()
    intr = (signal > 0) & np.isfinite(out)
    depth = np.nanmedian(out[intr]) - np.nanmedian(out[~intr & np.isfinite(out)])
    assert depth >= 0.9 * 0.02


def test_epd_ignores_a_parameter_never_measured():
    _, params, mags, noise = epd_series(seed=3)
    params["k"] = np.full(len(mags), np.nan)  # e.g. no PSF shape fit
    out, coef, ok = epd(mags, params)
    assert ok and "k" not in coef and np.std(out) < 1.10 * np.std(noise)


def test_epd_too_few_points_is_not_fitted():
    _, params, mags, _ = epd_series(n=15)
    out, coef, ok = epd(mags, params)
    assert not ok and coef == {} and np.isnan(out).all()


def test_parameter_sets():
    assert "bg" not in parameter_names(["s", "bg"], "i")
    assert {"sinx", "cosx", "siny", "cosy"} <= set(parameter_names(["s", "bg"], "i"))
    assert parameter_names(["s", "bg"], "a") == ["s", "bg"]
    with pytest.raises(ValueError, match="unknown EPD parameter"):
        parameter_names(["s", "nope"], "a")


def test_sidereal_time_and_geometry():
    # GMST at J2000.0 (2000-01-01 12:00 UT1) is 280.46061837 deg (IAU 1982)
    lst = local_sidereal_time(np.array([2451545.0, 2451545.0]), 0.0)
    assert np.degrees(lst[0]) == pytest.approx(280.4606, abs=0.01)
    lst = np.radians(np.array([100.0, 130.0]))
    geo = sky_geometry(lst, ra=100.0, dec=-10.0, latitude=-29.0)
    assert geo["ha"][0] == pytest.approx(0.0, abs=1e-12)
    assert np.degrees(geo["zd"][0]) == pytest.approx(19.0, abs=1e-9)
    assert geo["airmass"][0] == pytest.approx(1 / np.cos(np.radians(19.0)))
    assert np.degrees(geo["ha"][1]) == pytest.approx(30.0)
    assert geo["airmass"][1] > geo["airmass"][0]


def field(nstars: int = 200, nframes: int = 500, seed: int = 3):
    """Stars sharing a common trend (plus an x gradient): mags, noise, x, y, truth."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 0.5, nframes)
    x, y = rng.uniform(0, 2000, nstars), rng.uniform(0, 2000, nstars)
    mag0 = rng.uniform(9, 13, nstars)
    sigma = 0.002 * 10 ** (0.2 * (mag0 - 9))  # fainter stars are noisier
    common = np.cumsum(rng.normal(0, 0.002, nframes))
    common = 0.03 * (common - common.mean()) / common.std()
    gradient = 0.01 * np.sin(2 * np.pi * t / 0.23)
    noise = rng.normal(0, 1, (nstars, nframes)) * sigma[:, None]
    mags = mag0[:, None] + common + (x[:, None] / 2000) * gradient + noise
    return t, mags, noise, sigma, mag0, x, y


def test_tfa_removes_a_common_trend_to_the_noise_floor():
    t, mags, noise, sigma, mag0, x, y = field()
    rms = robust_stats(mags)["rms"]
    n = default_template_count(mags.shape[1])
    pick = select_templates(mag0, rms, np.ones(len(mag0)), x, y, n)
    assert len(pick) == n
    ids = np.arange(len(mag0))
    excluded = exclusion(np.column_stack([x, y]), np.column_stack([x[pick], y[pick]]), 20.0,
                         ids, ids[pick])
    out, used = tfa(mags, mags[pick], excluded)
    assert not used[pick, np.arange(n)].any()  # a star is never its own template
    before = np.std(mags, axis=1) / sigma
    after = np.std(out, axis=1) / np.std(noise, axis=1)
    assert np.median(before) > 3
    assert np.median(after) < 1.10


def test_tfa_keeps_a_transit_and_handles_missing_points():
    t, mags, noise, sigma, mag0, x, y = field(seed=4)
    target = int(np.argmin(np.abs(mag0 - 10.5)))
    signal = box_transit(t, 0.31, 0.06, 0.02)
    mags[target] += signal
    mags[target, ::11] = np.nan
    mags[:, 5] = np.nan  # a frame missing everywhere
    rms = robust_stats(mags)["rms"]
    pick = select_templates(mag0, rms, np.ones(len(mag0)), x, y, 25)
    pick = pick[pick != target]
    excluded = exclusion(np.column_stack([x, y]), np.column_stack([x[pick], y[pick]]), 20.0)
    out, _ = tfa(mags, mags[pick], excluded)
    good = np.isfinite(out[target])
    assert np.array_equal(good, np.isfinite(mags[target]))
    intr = signal > 0
    depth = np.median(out[target][intr & good]) - np.median(out[target][~intr & good])
    assert depth >= 0.9 * 0.02


def test_peak_power_equals_astropy_lombscargle_per_star():
    """The periodogram of all candidates at once against astropy's ``LombScargle`` (its
    default: floating mean, standard normalisation) run star by star; missing points,
    a sinusoid and too short or constant light curves."""
    from astropy.timeseries import LombScargle

    rng = np.random.default_rng(8)
    times = np.sort(rng.uniform(0, 0.3, 40)) + 61000.5
    times[5] = np.nan  # a frame without a time
    lcs = rng.normal(0, 0.01, (30, 40))
    lcs[:10] += 0.03 * np.sin(2 * np.pi * times / 0.07)
    lcs[rng.uniform(size=lcs.shape) < 0.2] = np.nan
    lcs[20, 12:] = np.nan  # 11 points, 10 of them finite at finite times: too few
    lcs[21] = 0.5  # constant
    power = peak_power(times, lcs)
    span = np.nanmax(times) - np.nanmin(times)
    step = np.nanmedian(np.diff(np.sort(times)))
    freq = np.linspace(2 / span, 0.25 / step, int(np.clip(5 * span * (0.25 / step - 2 / span),
                                                          100, 2000)))
    for lc, got in zip(lcs, power):
        ok = np.isfinite(lc) & np.isfinite(times)
        if ok.sum() <= 10 or np.ptp(lc[ok]) == 0:
            assert np.isnan(got)
        else:
            # times from the first (the power does not depend on the origin; at 61000 d
            # the phases would lose 1e-9 rad)
            expected = LombScargle(times[ok] - np.nanmin(times), lc[ok]).power(freq).max()
            assert got == pytest.approx(expected, rel=1e-9)
    assert np.isnan(power[[20, 21]]).all() and (power[:10] > 2 * np.nanmedian(power[10:])).all()


def test_exclusion_radius_and_identity():
    txy = np.array([[0.0, 0.0], [100.0, 0.0]])
    ex = exclusion(np.array([[5.0, 0.0], [500.0, 0.0]]), txy, 20.0,
                   np.array(["a", "b"]), np.array(["c", "b"]))
    assert ex.tolist() == [[True, False], [False, True]]


# -- the project-level pass ---------------------------------------------------------------

def write_project(root, nstars: int = 60, nframes: int = 240, seed: int = 5,
                  transit_star: int = 7, eclipse: tuple[int, float] | None = None):
    """A project with ``nstars`` light curves carrying an S trend and a common trend;
    star ``transit_star`` has a 1.5 % transit at frame 150, star ``eclipse[0]`` an
    eclipse ``eclipse[1]`` mag deep over the second half of the night."""
    rng = np.random.default_rng(seed)
    config = Config()  # the default EPD parameter set
    project = init_project(root, config)
    naper = len(config.photometry.apertures)
    rjd = 61000.55 + np.arange(nframes) * 0.5 / nframes
    keys = 1000 + rng.permutation(nframes)
    s = 0.35 + 0.04 * np.sin(2 * np.pi * (rjd - rjd[0]) / 0.37)
    common = 0.02 * np.sin(2 * np.pi * (rjd - rjd[0]) / 0.21 + 1.0)
    folder = project.lc("7")
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i in range(nstars):
        rows = lcformat.empty_rows(nframes, naper)
        rows["rjd"], rows["bjd"], rows["framekey"] = rjd, rjd + 2400000.0, keys
        rows["frame"] = [f"f{k}.fits" for k in keys]
        rows["xcc"] = rng.uniform(10, 1990) + rng.normal(0, 0.05, nframes)
        rows["ycc"] = rng.uniform(10, 1990) + rng.normal(0, 0.05, nframes)
        rows["bgv"], rows["bge"] = 800.0, 2.0
        rows["fsv"], rows["fdv"], rows["fkv"] = s, 0.01, 0.005
        mag0 = 9.5 + 3.5 * i / nstars
        sigma = 0.002 * 10 ** (0.2 * (mag0 - 9.5))
        signal = box_transit(rjd, rjd[150], 0.05, 0.015) if i == transit_star else 0.0
        if eclipse is not None and i == eclipse[0]:
            signal = np.where(np.arange(nframes) >= nframes // 2, eclipse[1], 0.0)
        for a in range(naper):
            noise = rng.normal(0, sigma, nframes)
            base = mag0 + 0.3 * (s - 0.35) + common + signal
            rows[f"aim_{a:03d}"] = base + noise + 0.1
            rows[f"arm_{a:03d}"] = base + noise
            rows[f"irm_{a:03d}"] = base + rng.normal(0, sigma, nframes)
            rows[f"aiq_{a:03d}"] = rows[f"irq_{a:03d}"] = 0
        rows[40:43]["arm_000"] = np.nan  # a few missing points
        oid = f"TRX-{i:04d}"
        header = [{"name": "OBJECTID", "value": oid}, {"name": "RA", "value": 60.0},
                  {"name": "DEC", "value": -30.0}, {"name": "MAG", "value": mag0},
                  {"name": "NIGHT000", "value": "2026-11-28 rows=240"}]
        lcformat.write_lightcurve(folder / f"{oid}.fits", rows, header)
        truth[oid] = (sigma, signal)
    return project, config, truth


def lcinfo(project) -> dict:
    with connect(f"sqlite:///{project.root / 'trex.sqlite'}") as db:
        return dict(db.query("SELECT objectid, nobs FROM lcinfo WHERE projid = '7'"))


def lcstats(project, config) -> np.ndarray:
    with connect(f"sqlite:///{project.root / 'trex.sqlite'}") as db:
        return wide_table(Queries(db).lcstats("7"), len(config.photometry.apertures))


def test_detrend_project_fills_columns_keeps_headers_and_writes_stats(tmp_path):
    project, config, truth = write_project(tmp_path / "p")
    assert run_stages(project, ["detrend"])["detrend"] == (1, 0)
    assert set(lcinfo(project)) == set(truth)
    ratios = []
    for oid, (sigma, signal) in truth.items():
        rows, header = lcformat.read_rows(project.lc("7") / f"{oid}.fits")
        assert header["OBJECTID"] == oid and header["NIGHT000"].startswith("2026-11-28")
        for col in ("aep_000", "atf_000", "iep_001", "itf_002"):
            assert np.isfinite(rows[col]).sum() >= len(rows) - 3, col
        assert np.isnan(rows["atf_000"][40:43]).all()
        if np.ndim(signal) == 0:
            ratios.append(np.std(rows["atf_001"]) / sigma)
        else:
            intr = signal > 0
            depth = np.median(rows["atf_001"][intr]) - np.median(rows["atf_001"][~intr])
            assert depth >= 0.9 * 0.015
    assert np.median(ratios) < 1.10
    stats = lcstats(project, config)
    assert len(stats) == len(truth)
    assert np.all(stats["atf_000_n"] == 237) and np.all(stats["arm_001_rms"] > stats["atf_001_rms"])


def test_unfitted_rows_are_flagged_in_the_detrending_flag(tmp_path):
    project, config, truth = write_project(tmp_path / "p", nstars=40)
    path = project.lc("7") / "TRX-0003.fits"
    rows, header = lcformat.read_rows(path)
    rows["arm_000"][20:] = np.nan  # too few points left for EPD
    lcformat.write_lightcurve(path, rows, header_cards(header))
    run_stages(project, ["detrend"])
    rows, _ = lcformat.read_rows(path)
    assert np.isnan(rows["aep_000"]).all()
    assert np.all(rows["adq_000"][:20] == PHOT["NOT_FITTED"].bit)
    assert np.all(rows["adq_000"][20:] == PHOT["MISSING"].bit)
    assert not np.any(rows["aiq_000"] & PHOT["NOT_FITTED"].bit)  # the photometry flags stay
    assert np.isfinite(rows["aep_001"]).all() and np.all(rows["adq_001"] == 0)


def test_mpi_run_equals_serial_run(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    mpiexec = Path(sys.executable).parent / "mpiexec"  # from the mpich wheel (make install)
    serial, config, truth = write_project(tmp_path / "serial", nstars=30)
    run_stages(serial, ["detrend"])
    other, _, _ = write_project(tmp_path / "mpi", nstars=30)
    trex = Path(sys.executable).parent / "trex"
    out = subprocess.run([str(mpiexec), "-n", "2", str(trex), "detrend", str(other.root)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "rank 1" in out.stderr and len(lcinfo(other)) == len(truth)
    for oid in truth:
        a, _ = lcformat.read_rows(serial.lc("7") / f"{oid}.fits")
        b, _ = lcformat.read_rows(other.lc("7") / f"{oid}.fits")
        for name in a.dtype.names:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{oid} {name}")


def test_nanmedian_equals_numpy():
    import warnings

    from trex.lcstats import nanmedian

    rng = np.random.default_rng(3)
    for shape in [(7, 12), (3, 1), (4, 2001), (13,)]:
        values = rng.normal(size=shape)
        values[rng.random(shape) < 0.3] = np.nan
        if len(shape) == 2:
            values[0] = np.nan  # a light curve with no point
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            expected = np.nanmedian(values, axis=-1)
        np.testing.assert_array_equal(nanmedian(values), expected)
    assert nanmedian(np.zeros((2, 0))).shape == (2,)


@pytest.mark.parametrize("nframes, tiers", [(24, "reduced/minimal"), (40, "reduced/reduced"),
                                            (70, "full/full")])
def test_short_nights_are_detrended_with_fewer_parameters(tmp_path, nframes, tiers):
    """A night of 20-60 frames gets EPD with a smaller parameter set (recorded in the
    header) and TFA with templates found on that night alone."""
    project, config, truth = write_project(tmp_path / "p", nstars=40, nframes=nframes,
                                           transit_star=-1)
    run_stages(project, ["detrend"])
    ratios = []
    for oid, (sigma, _) in truth.items():
        rows, header = lcformat.read_rows(project.lc("7") / f"{oid}.fits")
        assert header["DETR000"].split()[1:3] == [f"frames={nframes}", f"epd={tiers}"], oid
        assert int(header["DETR000"].split("templates=")[1].split("/")[0]) >= 2
        good = np.isfinite(rows["arm_001"])
        assert np.isfinite(rows["aep_001"][good]).all() and np.isfinite(rows["iep_001"]).all()
        assert np.isfinite(rows["atf_001"][good]).all() and np.all(rows["adq_001"][good] == 0)
        ratios.append(np.std(rows["atf_001"]) / sigma)
    # the S trend (0.3 x 0.04 mag) and the common trend (0.02 mag) are taken out
    assert np.median(ratios) < 1.5, np.median(ratios)


def test_a_long_deep_eclipse_survives_detrending(tmp_path):
    """A 0.2 mag eclipse over the second half of a 40-frame night keeps its depth in
    aep/atf/iep/itf while the S and common trends of the constant stars are removed.
    Before the signal protection (trex.protect) EPD and TFA fitted half of it away:
    depth kept 0.52 (aep), 0.54 (atf), 0.43 (iep), 0.45 (itf), against 0.97 in arm."""
    depth = 0.2
    project, config, truth = write_project(tmp_path / "p", nstars=40, nframes=40,
                                           transit_star=-1, eclipse=(30, depth))
    run_stages(project, ["detrend"])
    ratios = []
    for oid, (sigma, signal) in truth.items():
        rows, _ = lcformat.read_rows(project.lc("7") / f"{oid}.fits")
        if oid == "TRX-0030":
            inside = np.asarray(signal) > 0
            for col in ("atf_001", "itf_001", "aep_001", "iep_001"):
                got = np.median(rows[col][inside]) - np.median(rows[col][~inside])
                assert got == pytest.approx(depth, rel=0.1), (col, got)
        else:
            ratios.append(np.std(rows["atf_001"]) / sigma)
    assert np.median(ratios) < 1.5, np.median(ratios)


# -- the batched kernels against independent numpy/scipy implementations ----------------------

def reference_epd(mags, params, smooth, clip=3.0, iters=3, exclude=None):
    """EPD of one star as trex did it in numpy before the kernel: per-star
    ``np.linalg.lstsq`` (SVD) on standardised columns, scipy's running median."""
    from scipy.ndimage import median_filter

    params = {k: v for k, v in params.items() if np.isfinite(v).any()}
    good = np.isfinite(mags)
    for v in params.values():
        good &= np.isfinite(v)
    need = max(10, 3 * (len(params) + 1), smooth)
    if good.sum() < need:
        return np.full_like(mags, np.nan), None
    values = np.stack(list(params.values()), axis=1) if params else np.zeros((len(mags), 0))
    mean, scale = values[good].mean(axis=0), values[good].std(axis=0)
    usable = scale > 1e-12 * np.maximum(np.abs(mean), 1.0)
    z = np.where(usable, (values - mean) / np.where(usable, scale, 1.0), 0.0)
    design = np.column_stack([np.ones(len(mags)), z])
    target = np.full_like(mags, np.nan)
    target[good] = (median_filter(mags[good], size=min(smooth, good.sum()), mode="nearest")
                    if smooth > 1 else mags[good])
    fit = good & ~exclude if exclude is not None and (good & ~exclude).sum() >= need else good
    for _ in range(iters + 1):
        coef = np.linalg.lstsq(design[fit], target[fit], rcond=None)[0]
        resid = mags - design @ coef
        centre = np.median(resid[good])
        sigma = 1.4826 * np.median(np.abs(resid[good] - centre))
        keep = fit & (np.abs(resid - centre) <= clip * max(sigma, 1e-9))
        if keep.sum() < need or np.array_equal(keep, fit):
            break
        fit = keep
    slopes = dict(zip(params, np.where(usable, coef[1:] / np.where(usable, scale, 1.0), 0.0),
                      strict=True))
    return np.where(good, resid + np.median(mags[good]), np.nan), slopes


def random_star(rng, n, p=6):
    """Magnitudes with outliers and gaps, parameters with a constant one, one never
    measured (sometimes) and scattered gaps."""
    t = np.linspace(0, 1, n)
    params = rng.normal(size=(n, p)) + np.sin(np.outer(t, np.arange(1, p + 1)))
    params[:, 2] = 5.0  # constant: no slope
    if rng.random() < 0.3:
        params[:, 3] = np.nan  # never measured: left out
    mags = 10 + params[:, :2] @ np.array([0.1, -0.05]) + rng.normal(0, 0.01, n)
    mags[rng.random(n) < 0.1] = np.nan
    mags[rng.random(n) < 0.05] += 0.5
    params[rng.random(n) < 0.03, 1] = np.nan
    return mags, params


@pytest.mark.parametrize("smooth", [1, 8, 13, 21])
def test_batched_epd_equals_per_star_lstsq(smooth):
    from trex.epd import epd_many

    rng = np.random.default_rng(smooth)
    stars = [random_star(rng, n) for n in rng.integers(5, 150, 200)]
    mags = np.concatenate([m for m, _ in stars])
    params = np.concatenate([p for _, p in stars])
    offsets = np.r_[0, np.cumsum([len(m) for m, _ in stars])]
    exclude = rng.random(len(mags)) < 0.05
    out, coef, fitted = epd_many(mags, params, offsets, smooth, exclude=exclude)
    assert 50 < fitted.sum() < len(stars)  # both kinds are exercised
    for s, (m, p) in enumerate(stars):
        want, slopes = reference_epd(m, {str(j): p[:, j] for j in range(p.shape[1])}, smooth,
                                     exclude=exclude[offsets[s]:offsets[s + 1]])
        got = out[offsets[s]:offsets[s + 1]]
        assert fitted[s] == (slopes is not None)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-10, equal_nan=True)
        if slopes is not None:
            for j in range(p.shape[1]):
                expect = slopes.get(str(j), np.nan)
                assert (np.isnan(expect) and np.isnan(coef[s, 1 + j])) or \
                    coef[s, 1 + j] == pytest.approx(expect, rel=1e-8, abs=1e-10)


def test_epd_of_one_star_is_the_batched_kernel():
    _, params, mags, _ = epd_series(n=300, seed=7)
    out, coef, ok = epd(mags, params, smooth=21)
    want, slopes = reference_epd(mags, params, 21)
    assert ok
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-10)
    for name, value in slopes.items():
        assert coef[name] == pytest.approx(value, rel=1e-8)


def test_masked_fits_equal_lstsq_per_series_and_dependent_columns():
    from trex._detrend import masked_fits

    rng = np.random.default_rng(11)
    nf = 60
    design = np.column_stack([rng.normal(size=(nf, 3)), np.ones(nf)])
    design = np.column_stack([design, design[:, 0] - 2 * design[:, 1]])  # a dependent column
    y = rng.normal(size=(50, nf))
    fit = (rng.random((50, nf)) > 0.2).astype(np.uint8)
    fit[0] = 0
    fit[0, :4] = 1  # too few frames
    model, fitted = np.empty((50, nf)), np.empty(50, np.uint8)
    masked_fits(design, y, fit, 6, model, fitted)
    assert not fitted[0] and np.isnan(model[0]).all() and fitted[1:].all()
    for s in range(1, 50):
        rows = fit[s].astype(bool)
        coef = np.linalg.lstsq(design[rows], y[s, rows], rcond=None)[0]
        np.testing.assert_allclose(model[s], design @ coef, rtol=0, atol=1e-12)


def test_sustained_outliers_kernel_equals_the_scipy_filters():
    import warnings

    from scipy.ndimage import uniform_filter1d

    from trex.tfa import sustained_outliers

    rng = np.random.default_rng(12)
    for nstars, nframes, window in ((300, 40, 21), (100, 400, 21), (50, 30, 8), (5, 6, 21)):
        resid = rng.normal(size=(nstars, nframes))
        resid[rng.random(resid.shape) < 0.1] = np.nan
        resid[:, nframes // 3:nframes // 2] += rng.normal(0, 2, (nstars, 1))
        resid[0] = np.nan
        ok = np.isfinite(resid)
        total = uniform_filter1d(np.where(ok, resid, 0.0), window, axis=1, mode="constant")
        count = uniform_filter1d(ok.astype(float), window, axis=1, mode="constant")
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.where(ok & (count > 0), total / count, np.nan)
            centre = np.nanmedian(mean, axis=1, keepdims=True)
            sigma = 1.4826 * np.nanmedian(np.abs(mean - centre), axis=1, keepdims=True)
            hit = np.abs(mean - centre) > 3.0 * np.maximum(sigma, 1e-6)
        want = ok & (uniform_filter1d(hit.astype(float), window, axis=1, mode="constant") > 0)
        got = sustained_outliers(resid, window, 3.0)
        assert np.array_equal(got, want), (nstars, nframes, window)
        assert want.any() or nframes < window


def test_tfa_without_refits_is_a_least_squares_fit_per_star():
    rng = np.random.default_rng(13)
    nf, ntemp = 80, 5
    templates = 12 + rng.normal(0, 0.01, (ntemp, nf))
    mags = 11 + rng.normal(size=(40, ntemp)) @ (templates - 12) + rng.normal(0, 0.002, (40, nf))
    mags[rng.random(mags.shape) < 0.1] = np.nan
    mags[:20] = np.where(np.isnan(mags[:20]), 11.0, mags[:20])  # half of them on every frame
    excluded = rng.random((40, ntemp)) < 0.2
    out, used = tfa(mags, templates, excluded, iters=0, modes=False)
    basis = templates - np.median(templates, axis=1, keepdims=True)
    for s in range(40):
        rows = np.isfinite(mags[s])
        design = np.column_stack([basis[~excluded[s]].T, np.ones(nf)])
        y = mags[s] - np.nanmedian(mags[s])
        coef = np.linalg.lstsq(design[rows], y[rows], rcond=None)[0]
        want = np.where(rows, mags[s] - design @ coef, np.nan)
        np.testing.assert_allclose(out[s], want, rtol=0, atol=1e-12, equal_nan=True)
        assert np.array_equal(used[s], ~excluded[s])


def test_per_star_medians_of_concatenated_rows_equal_numpy():
    import warnings

    from trex.detrend import _Stars

    rng = np.random.default_rng(14)
    lengths = np.array([0, 5, 1, 12, 7, 4])
    values = rng.normal(size=lengths.sum())
    values[rng.random(len(values)) < 0.3] = np.nan
    values[5:6] = np.nan  # the one-row star has none
    offsets = np.r_[0, np.cumsum(lengths)]
    stars = _Stars(offsets, np.repeat(np.arange(len(lengths)), lengths),
                   np.zeros(len(values), int), 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = [np.nanmedian(values[a:b]) if b > a else np.nan
                for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    np.testing.assert_array_equal(stars.medians(values), want)


def reference_own_signal(mags, window, clip, extend):
    """trex.protect.own_signal of one star written with numpy and scipy."""
    from scipy.ndimage import label, median_filter

    out = np.zeros(len(mags))
    good = np.isfinite(mags)
    v = mags[good]
    h = (min(window, len(v)) - 1) // 2
    if h < 1:
        return out
    d = np.diff(v)
    points = np.array([min(i + h + 1, len(v)) - max(i - h, 0) for i in range(len(v))])
    sigma = 1.2533 * 1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2 * points)
    smooth = np.array([np.median(v[max(i - h, 0):i + h + 1]) for i in range(len(v))])
    half = len(v) // 2 + 1
    ordered = np.sort(smooth)
    j = np.argmin(ordered[half - 1:] - ordered[:len(v) - half + 1])
    dev = smooth - 0.5 * (ordered[j] + ordered[j + half - 1])
    runs, _ = label(np.abs(dev) > extend * sigma)
    cores = np.unique(runs[np.abs(dev) > clip * sigma])
    edged = median_filter(v, size=2 * h + 1, mode="nearest") - (smooth - dev)
    out[good] = np.where(np.isin(runs, cores[cores > 0]), edged, 0.0)
    return out


@pytest.mark.parametrize("window", [3, 5, 13])
def test_own_signals_kernel_equals_a_numpy_reference(window):
    from trex.protect import own_signal

    rng = np.random.default_rng(window)
    stars = []
    for n in rng.integers(0, 80, 150):
        mags = 12 + rng.normal(0, 0.01, n)
        if n and rng.random() < 0.5:  # an eclipse, a ramp or a step somewhere
            start = rng.integers(0, n)
            mags[start:start + rng.integers(1, n + 1)] += rng.choice([0.05, -0.03, 0.2])
        mags[rng.random(n) < 0.1] = np.nan
        stars.append(mags)
    mags = np.concatenate(stars)
    offsets = np.r_[0, np.cumsum([len(m) for m in stars])]
    got = own_signal(mags, offsets, window, 5.0, 1.5)
    found = 0
    for s, m in enumerate(stars):
        want = reference_own_signal(m, window, 5.0, 1.5)
        np.testing.assert_array_equal(got[offsets[s]:offsets[s + 1]], want)
        found += want.any()
    assert 20 < found < len(stars)  # both kinds of stars are exercised


def test_own_signal_finds_a_long_eclipse_and_not_noise():
    from trex.protect import own_signal

    rng = np.random.default_rng(21)
    n, sigma, depth = 40, 0.01, 0.1
    noise = rng.normal(0, sigma, (300, n))
    eclipse = np.zeros(n)
    eclipse[:26] = depth  # most of the night: its level is the eclipse, the rest departs
    mags = 12 + noise + np.vstack([np.tile(eclipse, (100, 1)), np.zeros((200, n))])
    offsets = np.arange(301) * n
    own = own_signal(mags.ravel(), offsets, 13, 5.0, 1.5).reshape(300, n)
    assert (own[100:] != 0).any(axis=1).mean() < 0.02  # white noise: hardly ever
    step = own[:100, 30:].mean(axis=1) - own[:100, :20].mean(axis=1)  # well inside each part
    assert np.median(step) == pytest.approx(-depth, rel=0.1)
    assert (own[:100] != 0).any(axis=1).mean() > 0.95


def test_position_is_the_median_of_the_first_night_measured():
    from trex.detrend import position
    rows = lcformat.empty_rows(9, 1)
    rows["rjd"] = [0.1, 0.2, 0.3, 2.1, 2.2, 2.3, 4.1, 4.2, 4.3]  # three nights
    rows["xcc"][3:] = [10.0, 11.0, 30.0, 50.0, 50.0, 50.0]  # night 0 never measured
    rows["ycc"][3:] = [5.0, 7.0, 6.0, 1.0, 1.0, 1.0]
    rows["ycc"][4] = np.nan  # a row with one coordinate only does not count
    assert position(rows, gap=0.5) == (20.0, 5.5)
    rows["xcc"], rows["ycc"] = np.nan, np.nan
    assert all(np.isnan(position(rows, gap=0.5)))
