"""Source extraction: trex against sep and fitsh ``fistar`` on the same frame.

* trex ``extract_sources(image, 5.0)``: background and RMS maps, matched-filter
  detection, deblending and the elliptical Gaussian (S, D, K) fit of every source;
* sep ``Background`` + ``back()`` + ``extract(image - sky, 5.0, err=globalrms,
  minarea=3, clean=False)`` (isophotal centroids and second moments, no profile
  fit), with the settings a user would pick for trex's work (``SEP_SETTINGS``):
  the same threshold (5 sigma of the global RMS) and minimum area (3 px),
  deblending on at sep's defaults (32 levels, contrast 0.005; trex deblends
  too), sep's default 3x3 matched filter (trex: a Gaussian of sigma 1 px), and
  no cleaning (trex has no cleaning pass; sep's ``clean`` costs ~60 % of its
  time at 4096^2 / 5x10^4 stars).  The pixel stack is sep's default (300 000),
  enough for 5x10^4 stars on 4096^2: a 20 M stack, which an earlier version
  set, costs ~4 s a call to allocate and clear;
* fitsh ``fistar`` when installed, the whole process with pipe-trex's
  parameters (elliptic model fit, uplink algorithm, flux threshold 1000):
  process start, FITS read, text output and its own background are in its time.

Check: the fraction of the peer's detections that trex finds within 1 px and
the median distance of those matches (centroid agreement), and the counts.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from trex.bench.common import Row, hatpi_frame, median_time
from trex.extract import extract_sources

log = logging.getLogger(__name__)

NAME = "extract"
THRESHOLD = 5.0
GAIN = 2.7
#: sep.extract settings for the same work as trex's extraction (see the module docstring)
SEP_SETTINGS = {"minarea": 3, "clean": False, "deblend_nthresh": 32, "deblend_cont": 0.005}


def match_check(trex_xy: np.ndarray, peer_xy: np.ndarray, radius: float = 1.0) -> str:
    """Counts, fraction of peer sources with a trex source within ``radius`` px, median offset."""
    trex_xy, peer_xy = np.asarray(trex_xy, float), np.asarray(peer_xy, float)
    if len(trex_xy) == 0 or len(peer_xy) == 0:
        return f"trex {len(trex_xy)} / peer {len(peer_xy)} sources: nothing to match"
    dist, _ = cKDTree(trex_xy).query(peer_xy)
    matched = dist < radius
    offset = float(np.median(dist[matched])) if matched.any() else float("nan")
    return (f"trex {len(trex_xy)} / peer {len(peer_xy)} sources, {matched.mean():.1%} of peer's "
            f"matched < {radius:g} px, median offset {offset:.4f} px")


def run_trex(image: np.ndarray) -> np.ndarray:
    """(n, 2) x, y of the sources."""
    src = extract_sources(image, THRESHOLD, gain=GAIN)
    return np.column_stack([src["x"], src["y"]])


def run_sep(image: np.ndarray) -> np.ndarray:
    import sep

    bkg = sep.Background(image)
    objects = sep.extract(image - bkg.back(), THRESHOLD, err=bkg.globalrms, **SEP_SETTINGS)
    return np.column_stack([objects["x"], objects["y"]])


def fistar_args(image: Path, out: Path, gain: float = GAIN) -> list[str]:
    """pipe-trex's fistar command line (aperturephot.FISTARCMD) for a FITS file."""
    return ["fistar", "-i", str(image), "-o", str(out),
            "--model", "elliptic", "--iterations", "symmetric=4,general=2",
            "--algorithm", "uplink", "--format", "id,x,y,bg,amp,s,d,k,flux,s/n",
            "-g", f"{gain:g}", "--mag-flux", "17,30", "--sort", "flux",
            "--flux-threshold", "1000", "--comment"]


def fistar_command(image: np.ndarray, folder: Path) -> list[str]:
    """Write the frame; pipe-trex's fistar command line on it."""
    from astropy.io import fits

    fits.writeto(folder / "frame.fits", image, overwrite=True)
    return fistar_args(folder / "frame.fits", folder / "out.fistar")


def read_fistar(path: Path) -> np.ndarray:
    """(n, 2) 0-based x, y of a fistar list (fitsh's first pixel centre is (0.5, 0.5))."""
    table = np.loadtxt(path, comments="#", usecols=(1, 2), ndmin=2)
    return table - 0.5


def _peers(image: np.ndarray, folder: Path) -> dict:
    peers = {"sep Background + extract": lambda: run_sep(image)}
    if shutil.which("fistar"):
        command = fistar_command(image, folder)

        def fistar():
            subprocess.run(command, check=True, capture_output=True)
            return read_fistar(folder / "out.fistar")

        peers["fitsh fistar (whole process)"] = fistar
    else:
        log.warning("extract: fitsh fistar not installed, its row is left out")
    return peers


def bench_size(size: int, nstars: int) -> list[Row]:
    image, _, _, _ = hatpi_frame(size, nstars, seed=1)
    t_trex, xy = median_time(lambda: run_trex(image))
    rows = []
    with tempfile.TemporaryDirectory(prefix="trex-bench-extract-") as tmp:
        for name, func in _peers(image, Path(tmp)).items():
            t_peer, peer_xy = median_time(func)
            note = ("; fistar time includes process start, FITS read and text output"
                    if name.startswith("fitsh") else "; sep: no S/D/K fit, no cleaning")
            rows.append(Row("extraction: background + detect + S/D/K fit", f"{size}^2, {nstars} stars",
                            t_trex, name, t_peer, match_check(xy, peer_xy) + note))
    return rows


def run(quick: bool = False) -> list[Row]:
    sizes = [(2048, 10_000)] if quick else [(2048, 10_000), (4096, 50_000)]
    return [row for size, nstars in sizes for row in bench_size(size, nstars)]
