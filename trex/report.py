"""``trex report``: diagnostic plots (PNG) and an index (Markdown) of a project.

Written to ``ROOT/PROJ/report/`` (or ``out``): first a run summary (trex
version, configuration hash, date, database; frames by night and by stage
and state; failures by stage and phase; light curves: :mod:`trex.status`),
then per project id the RMS vs
magnitude of every stage with the theoretical noise floor (from
the database's ``lcstats`` table), a preview of a calibrated frame with the
apertures drawn, the light curves of the most variable and a few random
stars; for all frames the sky, FWHM, ellipticity, number of sources, WCS
residuals and magnitude-fit zero point against time.  Whatever input is
missing is skipped with a note in the index.  The magnitude-fit zero point is
the median over a sample of light curves of ``aim_000 - arm_000`` per frame.
Apertures are named by their radius ("aperture 2.45 px"), columns by their
``_NNN`` index.

Cost: one database query, the stats table, and at most ``SAMPLE`` light-curve
files per project id.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from trex import lcformat, plots
from trex.config import Config
from trex.lcstats import aperture_radii, noise_model, wide_table
from trex.project import Project, safe_name
from trex.redetrend import lightcurve_files
from trex.status import project_status, summary_markdown
from trex.tfa import scatter_trend_ratio

log = logging.getLogger(__name__)

#: light-curve files read per project id (zero point, preview positions, examples)
SAMPLE = 300
#: per-frame quantities: (calibratedframes column, label with unit)
FRAME_SERIES = (("medsky", "sky, ADU"), ("fwhm", "FWHM, px"), ("ellipticity", "ellipticity"),
                ("nsources", "sources"), ("wcs_median", "WCS residual median, px"),
                ("wcs_p90", "WCS residual p90, px"))


class Report:
    """Sections of the index as they are produced."""

    def __init__(self, out: Path):
        self.out, self.lines = out, ["# trex report", ""]

    def figure(self, title: str, name: str | None, note: str = "") -> None:
        self.lines += [f"## {title}", ""]
        if name:
            self.lines += [f"![{title}]({name})", ""]
        if note:
            self.lines += [note, ""]

    def text(self, *lines: str) -> None:
        self.lines += [*lines, ""]

    def write(self) -> Path:
        path = self.out / "index.md"
        path.write_text("\n".join(self.lines))
        return path


def frame_table(read) -> dict[str, np.ndarray]:
    """calibratedframes joined with frameinfo, in time order (empty dict if none)."""
    if read is None:
        return {}
    cols = read.frame_quality_series()
    if not len(cols.get("framekey", [])):
        return {}
    fwhm_from_s = np.where(cols["meds"] > 0, 2.3548 / np.sqrt(np.abs(cols["meds"])), np.nan)
    cols["fwhm"] = np.where(np.isfinite(fwhm_from_s), fwhm_from_s, cols["fwhm"])
    return cols


def sample_lightcurves(project: Project, projid: str, n: int = SAMPLE, seed: int = 0) -> list:
    """Up to ``n`` light curves (objectid, rows) of a project id, chosen at random."""
    files = lightcurve_files(project, projid)
    if len(files) > n:
        pick = np.sort(np.random.default_rng(seed).choice(len(files), n, replace=False))
        files = [files[i] for i in pick]
    out = []
    for path in files:
        rows, header = lcformat.read_rows(path)
        out.append((str(header.get("OBJECTID", path.stem)), rows))
    return out


def zero_points(sample: list) -> tuple[np.ndarray, np.ndarray]:
    """Per frame key, the median of ``aim_000 - arm_000`` over the sample (mag)."""
    if not sample:
        return np.zeros(0, np.int64), np.zeros(0)
    keys = np.concatenate([rows["framekey"] for _, rows in sample])
    diff = np.concatenate([rows["aim_000"].astype(float) - rows["arm_000"] for _, rows in sample])
    ok = np.isfinite(diff)
    keys, diff = keys[ok], diff[ok]
    order = np.argsort(keys, kind="stable")
    keys, diff = keys[order], diff[order]
    unique, start = np.unique(keys, return_index=True)
    zp = np.array([np.median(part) for part in np.split(diff, start[1:])]) if len(keys) else []
    return unique, np.asarray(zp, dtype=float)


def noise_curves(config: Config, frames: dict, stats: np.ndarray, napertures: int) -> dict:
    """Aperture index -> (mag grid, expected RMS) from the median frame conditions."""
    def median(name: str, fallback: float) -> float:
        values = frames.get(name, np.array([]))
        values = values[np.isfinite(values.astype(float))] if len(values) else values
        return float(np.median(values)) if len(values) else fallback

    gain = config.camera.gain or median("gain", 1.0)
    rdnoise = config.camera.rdnoise if config.camera.rdnoise >= 0 else median("rdnoise", 0.0)
    exptime, sky = median("exptime", 1.0), median("medsky", 0.0)
    mags = stats["arm_000_median"] if "arm_000_median" in stats.dtype.names else stats["mag"]
    ok = mags[np.isfinite(mags)]
    if not len(ok):
        return {}
    grid = np.linspace(ok.min() - 0.2, ok.max() + 0.2, 200)
    out = {}
    for a, (radius, inner, width) in enumerate(aperture_radii(config.photometry.apertures)):
        if a < napertures:
            curve = noise_model(grid, zeropoint=config.camera.zeropoint, exptime=exptime,
                                gain=gain, rdnoise=rdnoise, sky=sky, radius=radius,
                                annulus=(inner, width))
            out[a] = (grid, curve["total"])
    return out


def aperture_label(config: Config, index: int) -> str:
    """``aperture 2.45 px``: an aperture named by its radius."""
    radii = aperture_radii(config.photometry.apertures)
    return f"aperture {radii[index][0]:g} px" if index < len(radii) else f"aperture {index}"


def bright_ratios(stats: np.ndarray, noise: dict, napertures: int, fraction: float = 0.1) -> list:
    """Rows (column, median clipped RMS / noise floor, stars) for the brightest stars."""
    rows = []
    for a in range(napertures):
        if a not in noise:
            continue
        for prefix in ("aim", "arm", "aep", "atf", "irm", "iep", "itf"):
            col = f"{prefix}_{a:03d}"
            mag, rms = stats[f"{col}_median"], stats[f"{col}_crms"]
            ok = np.isfinite(mag) & np.isfinite(rms)
            if ok.sum() < 3:
                continue
            bright = ok & (mag <= np.quantile(mag[ok], fraction if ok.sum() >= 30 else 0.3))
            floor = np.interp(mag[bright], *noise[a])
            rows.append((col, float(np.median(rms[bright] / floor)), int(bright.sum())))
    return rows


def _rms_section(rep: Report, config: Config, read, frames: dict, projid: str) -> None:
    title = f"RMS vs magnitude, project {projid}"
    napertures = len(config.photometry.apertures)
    stats = wide_table(read.lcstats(projid), napertures) if read is not None else None
    if stats is None or not len(stats):
        rep.figure(title, None, "_Skipped: no light-curve statistics in the database "
                                "(run `trex detrend`)._")
        return
    noise = noise_curves(config, frames, stats, napertures)
    name = f"rms_{safe_name(projid)}.png"
    labels = [aperture_label(config, a) for a in range(napertures)]
    plots.rms_vs_mag(rep.out / name, stats, labels, noise,
                     f"{title}: {len(stats)} stars (clipped RMS)")
    note = "" if noise else "_No magnitudes for the noise curve._"
    rep.figure(title, name, note)
    ratios = bright_ratios(stats, noise, napertures)
    if ratios:
        rep.text("Clipped RMS / expected noise, median over the brightest 10 % of stars:", "",
                 "| aperture | column | RMS / noise | stars |", "|---|---|---|---|",
                 *[f"| {aperture_label(config, int(c[-3:]))} | `{c}` | {r:.2f} | {n} |"
                   for c, r, n in ratios])


def _frames_section(rep: Report, config: Config, frames: dict,
                    zp: tuple[np.ndarray, np.ndarray]) -> None:
    title = "Per-frame diagnostics"
    if not frames:
        rep.figure(title, None, "_Skipped: no calibrated frames in the database._")
        return
    jd = frames["jd"]
    hours = (jd - np.nanmin(jd)) * 24.0
    zp_label = f"magfit ZP ({aperture_label(config, 0)}), mag"
    series, missing = [], []
    for column, label in FRAME_SERIES:
        values = frames[column].astype(float)
        (series if np.isfinite(values).any() else missing).append((label, values))
    if len(zp[0]):
        at = np.searchsorted(zp[0], frames["framekey"])
        at = np.clip(at, 0, len(zp[0]) - 1)
        values = np.where(zp[0][at] == frames["framekey"], zp[1][at], np.nan)
        (series if np.isfinite(values).any() else missing).append((zp_label, values))
    else:
        missing.append((zp_label, None))
    name = None
    if series:
        name = "frames.png"
        start = f"JD {np.nanmin(jd):.4f}"
        plots.per_frame(rep.out / name, hours, series, f"{title}: {len(jd)} frames",
                        f"hours since {start} (UTC)")
    note = ("_Not available: " + ", ".join(m[0] for m in missing) + "._") if missing else ""
    note += ("\n\nFWHM is 2.3548 / sqrt(S) of the median PSF S; the magfit zero point is the "
             f"median of `aim_000 - arm_000` ({aperture_label(config, 0)}) over a sample of "
             "light curves.")
    rep.figure(title, name, note)


def _preview_frame(project: Project, read, frames: dict, projid: str) -> tuple[int, Path] | None:
    """(framekey, path) of the astrometric reference of ``projid``, else of the first
    good calibrated frame whose file exists."""
    candidates = []
    if read is not None:
        candidates += read.reference_framekeys(projid)
    if frames:
        mine = (frames["projid"] == projid) & (frames["frameisok"].astype(float) > 0)
        candidates += [int(k) for k in frames["framekey"][mine]]
    lookup = dict(zip(frames.get("framekey", []), frames.get("redpath", []), strict=True))
    for key in candidates:
        redpath = lookup.get(key)
        if isinstance(redpath, str) and (project.root / redpath).is_file():
            return key, project.root / redpath
    return None


def _preview_section(rep: Report, project: Project, config: Config, read, frames: dict,
                     projid: str, sample: list) -> None:
    from trex.fits import read_image

    title = f"Frame preview, project {projid}"
    found = _preview_frame(project, read, frames, projid)
    if found is None:
        rep.figure(title, None, "_Skipped: no calibrated frame file found._")
        return
    key, path = found
    image, _ = read_image(path)
    xy = [rows[["xcc", "ycc"]][rows["framekey"] == key] for _, rows in sample]
    xy = np.concatenate(xy) if xy else np.zeros(0, dtype=[("xcc", "f8"), ("ycc", "f8")])
    radii = [r for r, _, _ in aperture_radii(config.photometry.apertures)]
    name = f"preview_{safe_name(projid)}.png"
    plots.frame_preview(rep.out / name, image, xy["xcc"], xy["ycc"], radii,
                        f"{path.name} (frame {key}); apertures of {len(xy)} sampled stars")
    rep.figure(title, name)


def _wcs_section(rep: Report, project: Project, read, projid: str) -> None:
    """Quiver plot of the astrometric residuals of the astrometric reference frame:
    its extracted sources against the catalog projected through its WCS."""
    from astropy.wcs import WCS
    from scipy.spatial import cKDTree

    from trex.catalog import find_catalog, propagate, read_catalog
    from trex.fits import read_image
    from trex.products import load_product

    title = f"Astrometric residuals, project {projid}"
    rows = read.astrometric_reference_frames(projid) if read is not None else []
    if not rows or not (project.root / rows[0][1]).is_file():
        rep.figure(title, None, "_Skipped: no astrometric reference frame._")
        return
    field, redpath, jd = rows[0]
    sources = load_product(project.root / redpath, "sources")
    try:
        catalog = read_catalog(find_catalog(project, field))
    except FileNotFoundError:
        catalog = None
    if sources is None or catalog is None:
        rep.figure(title, None, "_Skipped: the reference frame has no sources or catalog._")
        return
    image, header = read_image(project.root / redpath)
    ra, dec = propagate(catalog, 2000.0 + (jd - 2451545.0) / 365.25)
    cx, cy = WCS(header, fix=False).all_world2pix(ra, dec, 0, quiet=True)
    dist, near = cKDTree(np.column_stack([cx, cy])).query(
        np.column_stack([sources["x"], sources["y"]]), distance_upper_bound=1.0)
    hit = np.isfinite(dist) & (sources["flag"] == 0) & (sources["snr"] > 20)
    dx = sources["x"][hit] - cx[near[hit]]
    dy = sources["y"][hit] - cy[near[hit]]
    shape = image.shape
    name = f"wcs_{safe_name(projid)}.png"
    plots.wcs_quiver(rep.out / name, sources["x"][hit], sources["y"][hit], dx, dy, shape,
                     f"{Path(redpath).name}: {hit.sum()} stars (S/N > 20, unflagged)\n"
                     f"median |residual| {np.median(np.hypot(dx, dy)):.3f} px")
    rep.figure(title, name)


def _stamps_section(rep: Report, project: Project, read, projid: str) -> None:
    """Difference-image stamps of the last subtracted frame of ``projid``."""
    from trex.products import load_product

    title = f"Difference-image stamps, project {projid}"
    redpath = read.last_subtracted_frame(projid) if read is not None else None
    stamps = load_product(project.root / redpath, "diffstamps") if redpath else None
    if stamps is None or not len(stamps):
        rep.figure(title, None, "_Skipped: no subtracted frame with stamps._")
        return
    name = f"diffstamps_{safe_name(projid)}.png"
    plots.difference_stamps(rep.out / name, stamps, f"{Path(redpath).name}: bright stars")
    rep.figure(title, name)


def _lightcurve_section(rep: Report, config: Config, projid: str, sample: list,
                        nrandom: int = 3) -> None:
    title = f"Light curves, project {projid}"
    if not sample:
        rep.figure(title, None, "_Skipped: no light curves._")
        return
    best = "atf_000" if any(np.isfinite(r["atf_000"]).any() for _, r in sample) else "arm_000"
    med = np.array([np.nanmedian(r[best]) if np.isfinite(r[best]).any() else np.nan
                    for _, r in sample])
    rms = np.array([np.nanstd(r[best]) if np.isfinite(r[best]).sum() > 1 else np.nan
                    for _, r in sample])
    ratio = scatter_trend_ratio(med, rms)
    order = [int(np.nanargmax(ratio))] if np.isfinite(ratio).any() else []
    rest = [i for i in np.random.default_rng(1).permutation(len(sample)) if i not in order]
    picks = order + rest[:nrandom]
    t0 = min(float(np.nanmin(r["rjd"])) for _, r in sample)
    curves = []
    for n, i in enumerate(picks):
        oid, rows = sample[i]
        series = [(c[:3], rows[c].astype(float)) for c in ("arm_000", "aep_000", "atf_000")]
        note = (f"most variable ({best} RMS {ratio[i]:.1f}x the trend)" if n == 0 and order
                else "random")
        curves.append({"name": oid, "hours": (rows["rjd"] - t0) * 24.0, "series": series,
                       "note": note})
    name = f"lightcurves_{safe_name(projid)}.png"
    plots.light_curves(rep.out / name, curves,
                       f"{title}: {aperture_label(config, 0)} (_000), magfit / EPD / TFA")
    rep.figure(title, name)


def make_report(project: Project, config: Config, read, out: Path | str | None = None,
                database: str = "") -> Path:
    """Write the report's PNGs and ``index.md``; returns the index path.

    ``read`` is the ledger's queries (:class:`trex.db.queries.Queries`), or None
    without a database (the sections that need it are skipped with a note);
    ``database`` the URL shown in the summary (password redacted)."""
    out = Path(out) if out else project.root / "PROJ" / "report"
    out.mkdir(parents=True, exist_ok=True)
    rep = Report(out)
    rep.lines += ["## Run summary", "",
                  *summary_markdown(project_status(project, config, read,
                                                   database or "(none)")), ""]
    frames = frame_table(read)
    lcroot = project.root / "LC"
    projids = sorted(p.name for p in lcroot.iterdir() if p.is_dir()) if lcroot.is_dir() else []
    zp_keys, zp_vals = [], []
    for projid in projids:
        sample = sample_lightcurves(project, projid)
        _rms_section(rep, config, read, frames, projid)
        _preview_section(rep, project, config, read, frames, projid, sample)
        _wcs_section(rep, project, read, projid)
        _stamps_section(rep, project, read, projid)
        _lightcurve_section(rep, config, projid, sample)
        keys, vals = zero_points(sample)
        zp_keys.append(keys)
        zp_vals.append(vals)
    if not projids:
        rep.text("_No light curves under `LC/`._")
    zp = (np.concatenate(zp_keys), np.concatenate(zp_vals)) if zp_keys else (np.zeros(0), [])
    order = np.argsort(zp[0], kind="stable")
    _frames_section(rep, config, frames, (zp[0][order], np.asarray(zp[1])[order]))
    index = rep.write()
    log.info("report written to %s", index)
    return index
