"""The figures of ``trex report``: matplotlib (Agg backend), one PNG per call.

Every function takes plain arrays, draws one figure and writes it to
``path``; none reads files or the database (that is :mod:`trex.report`).
Axes carry units; limits come from robust percentiles so one bad frame or
star does not squash a plot.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import PatchCollection  # noqa: E402
from matplotlib.patches import Circle  # noqa: E402

log = logging.getLogger(__name__)

#: stage name -> (column prefix, colour) for the RMS plots
STAGES = {"aperture photometry": [("raw", "aim", "0.6"), ("magfit", "arm", "tab:blue"),
                       ("EPD", "aep", "tab:orange"), ("TFA", "atf", "tab:green")],
          "image subtraction": [("subtraction", "irm", "tab:blue"), ("EPD", "iep", "tab:orange"),
                          ("TFA", "itf", "tab:green")]}


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _limits(values: np.ndarray, lo: float = 1.0, hi: float = 99.0, pad: float = 0.1):
    v = values[np.isfinite(values)]
    if not len(v):
        return None
    a, b = np.percentile(v, [lo, hi])
    floor = 1e-3 * max(abs(0.5 * (a + b)), 1.0)  # a flat series gets a readable axis
    if b - a < floor:
        a, b = 0.5 * (a + b) - floor / 2, 0.5 * (a + b) + floor / 2
    span = b - a
    return a - pad * span, b + pad * span


def rms_vs_mag(path: Path, stats: np.ndarray, apertures: list[str], noise: dict,
               title: str) -> Path:
    """RMS (clipped) vs median magnitude per stage; rows: apertures (named by
    ``apertures``, e.g. "aperture 2.45 px"), columns: aperture photometry /
    image subtraction; ``noise`` maps an aperture index to (mag grid,
    expected RMS) drawn as a black curve."""
    napertures = len(apertures)
    fig, axes = plt.subplots(napertures, 2, figsize=(11, 3.2 * napertures + 0.6),
                             sharex=True, sharey=True, squeeze=False)
    for a in range(napertures):
        for j, (kind, stages) in enumerate(STAGES.items()):
            ax = axes[a, j]
            for label, prefix, colour in stages:
                col = f"{prefix}_{a:03d}"
                if f"{col}_crms" not in stats.dtype.names:
                    continue
                mag, rms = stats[f"{col}_median"], stats[f"{col}_crms"]
                ok = np.isfinite(mag) & np.isfinite(rms) & (rms > 0)
                if ok.any():
                    ax.scatter(mag[ok], rms[ok], s=4, color=colour, alpha=0.6,
                               label=f"{label} ({ok.sum()})", rasterized=True)
            if a in noise:
                ax.plot(*noise[a], color="k", lw=1.2, label="photon+sky+read noise")
            ax.set_yscale("log")
            ax.set_title(f"{kind}, {apertures[a]} (_{a:03d})", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper left", markerscale=3)
            if j == 0:
                ax.set_ylabel("clipped RMS, mag")
            if a == napertures - 1:
                ax.set_xlabel("median magnitude, mag")
    lim = _limits(np.concatenate([stats[n] for n in stats.dtype.names if n.endswith("_median")
                                  and n[:3] in ("arm", "aim", "irm")]))
    if lim:
        axes[0, 0].set_xlim(*lim)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def per_frame(path: Path, hours: np.ndarray, series: list[tuple[str, np.ndarray]],
              title: str, xlabel: str) -> Path:
    """One panel per (label with unit, values (nframes,)) against time in hours."""
    n = len(series)
    fig, axes = plt.subplots(n, 1, figsize=(10, 1.9 * n + 0.8), sharex=True, squeeze=False)
    for ax, (label, values) in zip(axes[:, 0], series, strict=True):
        ax.plot(hours, values, ".", ms=3, color="tab:blue")
        lim = _limits(np.asarray(values, dtype=float), 0.5, 99.5)
        if lim:
            ax.set_ylim(*lim)
        ax.set_ylabel(label, fontsize=8)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel(xlabel)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def frame_preview(path: Path, image: np.ndarray, x: np.ndarray, y: np.ndarray,
                  radii: list[float], title: str, crop: int = 160) -> Path:
    """The frame (percentile stretch) and a central crop with the apertures drawn
    (circles of each radius, px, at the 0-based star positions)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 6))
    vmin, vmax = np.nanpercentile(image, [1, 99.5])
    ny, nx = image.shape
    half = min(crop, nx, ny) // 2
    cx, cy = _crop_centre(x, y, nx, ny, half)
    box = (cx - half, cx + half, cy - half, cy + half)
    for ax, zoom in zip(axes, (False, True), strict=True):
        ax.imshow(image, origin="lower", cmap="gray", vmin=vmin, vmax=vmax,
                  interpolation="nearest")
        ax.set_xlabel("x, px (0-based)")
        ax.set_ylabel("y, px (0-based)")
        if zoom:
            ax.set_xlim(box[0] - 0.5, box[1] - 0.5)
            ax.set_ylim(box[2] - 0.5, box[3] - 0.5)
            inside = (x > box[0] - 5) & (x < box[1] + 5) & (y > box[2] - 5) & (y < box[3] + 5)
            patches = [Circle((xi, yi), r) for xi, yi in zip(x[inside], y[inside], strict=True)
                       for r in radii]
            ax.add_collection(PatchCollection(patches, facecolor="none", edgecolor="tab:red",
                                              lw=0.7))
            ax.set_title(f"crop of {2 * half} px, apertures r = "
                         + ", ".join(f"{r:g}" for r in radii) + " px", fontsize=9)
        else:
            ax.plot(x, y, "o", mfc="none", mec="tab:red", ms=3, mew=0.4)
            ax.add_patch(plt.Rectangle((box[0], box[2]), 2 * half, 2 * half, fill=False,
                                       ec="yellow", lw=1))
            ax.set_xlim(-0.5, nx - 0.5)
            ax.set_ylim(-0.5, ny - 0.5)
            inframe = (x >= 0) & (x < nx) & (y >= 0) & (y < ny)
            ax.set_title(f"{inframe.sum()} stars measured on this frame", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def _crop_centre(x: np.ndarray, y: np.ndarray, nx: int, ny: int, half: int) -> tuple[int, int]:
    """Centre (px) of the crop holding the most stars (of up to 2000), inside the frame."""
    inside = np.flatnonzero((x >= half) & (x < nx - half) & (y >= half) & (y < ny - half))[:2000]
    if not len(inside):
        return nx // 2, ny // 2
    dx = np.abs(x[inside][:, None] - x[inside][None, :])
    dy = np.abs(y[inside][:, None] - y[inside][None, :])
    best = inside[np.argmax(((dx < half) & (dy < half)).sum(axis=1))]
    return int(round(x[best])), int(round(y[best]))


def light_curves(path: Path, curves: list[dict], title: str) -> Path:
    """A panel per star: time (h) against magnitude of several stages.

    Each dict: ``name``, ``hours`` (n,), ``series`` list of (label, mags (n,)),
    ``note``."""
    fig, axes = plt.subplots(len(curves), 1, figsize=(10, 2.2 * len(curves) + 0.8),
                             squeeze=False)
    colours = ("0.55", "tab:orange", "tab:green", "tab:purple")
    for ax, curve in zip(axes[:, 0], curves, strict=True):
        offset = 0.0
        spread = [np.nanpercentile(m, 99) - np.nanpercentile(m, 1) for _, m in curve["series"]
                  if np.isfinite(m).any()]
        step = 1.2 * max(spread) if spread else 0.1
        for (label, mags), colour in zip(curve["series"], colours, strict=False):
            if np.isfinite(mags).any():
                ax.plot(curve["hours"], mags - np.nanmedian(mags) + offset, ".", ms=2.5,
                        color=colour, label=f"{label} (+{offset:.3f})")
                offset += step
        ax.invert_yaxis()
        ax.set_ylabel("mag − median", fontsize=8)
        ax.set_title(f"{curve['name']}  {curve.get('note', '')}", fontsize=9)
        ax.legend(fontsize=7, loc="lower right", markerscale=3)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("hours since the first frame")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def wcs_quiver(path: Path, x: np.ndarray, y: np.ndarray, dx: np.ndarray, dy: np.ndarray,
               shape: tuple[int, int], title: str) -> Path:
    """Astrometric residuals (source minus catalog through the WCS, px) as arrows,
    drawn 1/25 of the frame long at the 90th percentile of their lengths."""
    fig, ax = plt.subplots(figsize=(7.5, 7))
    length = np.hypot(dx, dy)
    scale = max(float(np.percentile(length, 90)), 1e-3) if len(length) else 1.0
    q = ax.quiver(x, y, dx, dy, np.clip(length, 0, 2 * scale), angles="xy", scale_units="xy",
                  scale=scale / (0.04 * max(shape)), cmap="viridis", width=0.003)
    fig.colorbar(q, ax=ax, label="residual, px (clipped at 2x the 90th percentile)")
    ax.quiverkey(q, 0.75, -0.12, scale, f"{scale:.3f} px", labelpos="E")
    ax.set(xlim=(0, shape[1]), ylim=(0, shape[0]), xlabel="x, px", ylabel="y, px",
           aspect="equal")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def difference_stamps(path: Path, stamps: np.ndarray, title: str) -> Path:
    """Registered frame (top) and difference image (bottom) around a few bright stars."""
    n = len(stamps)
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 5), squeeze=False)
    for k, stamp in enumerate(stamps):
        img, diff = stamp["image"], stamp["diff"]
        lo, hi = np.nanpercentile(img, [5, 99.5])
        axes[0, k].imshow(img, origin="lower", cmap="gray", vmin=lo, vmax=hi)
        axes[0, k].set_title(f"star {stamp['star']}\n({stamp['x']:.0f}, {stamp['y']:.0f}) px",
                             fontsize=8)
        limit = max(float(np.nanpercentile(np.abs(img - np.nanmedian(img)), 99)) * 0.05, 1.0)
        shown = axes[1, k].imshow(diff, origin="lower", cmap="RdBu_r", vmin=-limit, vmax=limit)
        fig.colorbar(shown, ax=axes[1, k], fraction=0.046, pad=0.04,
                     label="D, ADU" if k == n - 1 else None)
        for ax in axes[:, k]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("frame (registered)")
    axes[1, 0].set_ylabel("difference D")
    fig.suptitle(title + " (D scale: +-5 % of the star's peak)", fontsize=10)
    return _save(fig, path)
