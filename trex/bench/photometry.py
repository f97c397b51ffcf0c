"""Forced aperture photometry: trex against sep, photutils and fitsh ``fiphot``.

One synthetic HATPI-like frame per size (:func:`trex.bench.common.hatpi_frame`),
the true star positions, 3 apertures (1.95/2.45/2.95 px) and a 7-13 px sky
annulus for every tool:

* trex ``aperture_photometry`` with its default sky (clipped mode, as fiphot);
* sep ``sum_circle(..., bkgann=(7, 13), subpix=0)`` once per radius (exact
  overlap, mean sky);
* photutils ``aperture_photometry(method="exact")`` of the 3 circles and the
  annulus (mean sky);
* fitsh ``fiphot`` when installed (pipe-trex's tool and sky parameters), the
  whole process: FITS read, photometry, text output.

Check: median and robust scatter of trex flux / peer flux at r = 2.45 px for
bright isolated stars, trex being run once more (untimed) with the peer's sky
estimator (unclipped mean for sep and photutils; fiphot's clipped mode is
trex's default), and trex's star-apertures per second.
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
from trex.photometry import aperture_photometry

log = logging.getLogger(__name__)

NAME = "photometry"
RADII = (1.95, 2.45, 2.95)
ANNULUS = (7.0, 13.0)
GAIN = 2.7


def bright_isolated(x: np.ndarray, y: np.ndarray, flux: np.ndarray, fraction: float = 0.05,
                    isolation: float = 6.0) -> np.ndarray:
    """Indices of the brightest ``fraction`` of stars with no other star within ``isolation`` px."""
    near, _ = cKDTree(np.column_stack([x, y])).query(np.column_stack([x, y]), k=2)
    bright = flux >= np.quantile(flux, 1.0 - fraction)
    return np.flatnonzero(bright & (near[:, 1] > isolation))


def flux_check(trex_flux: np.ndarray, peer_flux: np.ndarray, stars: np.ndarray) -> str:
    """'flux ratio <median> +- <robust sigma> (N bright)' of trex / peer over ``stars``."""
    ratio = np.asarray(trex_flux, float)[stars] / np.asarray(peer_flux, float)[stars]
    ratio = ratio[np.isfinite(ratio)]
    if ratio.size == 0:
        return "flux ratio: no bright star measured by both"
    med = float(np.median(ratio))
    scatter = 1.4826 * float(np.median(np.abs(ratio - med)))
    return f"flux ratio {med:.4f} +- {scatter:.4f} ({ratio.size} bright)"


def run_trex(image: np.ndarray, x: np.ndarray, y: np.ndarray, sky: str = "mode") -> np.ndarray:
    """(nstars, 3) fluxes; ``sky="mean"`` is the unclipped mean sky of sep and photutils."""
    if sky == "mean":
        return aperture_photometry(image, x, y, RADII, ANNULUS, gain=GAIN, sky_method="mean",
                                   sky_iters=0)["flux"]
    return aperture_photometry(image, x, y, RADII, ANNULUS, gain=GAIN)["flux"]


def run_sep(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    import sep

    return np.column_stack([sep.sum_circle(image, x, y, r, bkgann=ANNULUS, subpix=0)[0]
                            for r in RADII])


def run_photutils(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from photutils.aperture import CircularAnnulus, CircularAperture
    from photutils.aperture import aperture_photometry as photutils_phot

    positions = np.column_stack([x, y])
    apertures = [CircularAperture(positions, r) for r in RADII]
    annulus = CircularAnnulus(positions, *ANNULUS)
    table = photutils_phot(image, apertures + [annulus], method="exact")
    sky = np.asarray(table[f"aperture_sum_{len(RADII)}"]) / annulus.area
    return np.column_stack([np.asarray(table[f"aperture_sum_{i}"]) - sky * ap.area
                            for i, ap in enumerate(apertures)])


def fiphot_command(image: np.ndarray, x: np.ndarray, y: np.ndarray, folder: Path) -> list[str]:
    """Write the frame and star list; the fiphot command line (pipe-trex's sky fit)."""
    from astropy.io import fits

    fits.writeto(folder / "frame.fits", image, overwrite=True)
    # fitsh puts the centre of the first pixel at (0.5, 0.5)
    np.savetxt(folder / "stars.txt", np.column_stack([np.arange(x.size), x + 0.5, y + 0.5]),
               fmt=["%d", "%.4f", "%.4f"])
    apertures = ",".join(f"{r}:{ANNULUS[0]}:{ANNULUS[1] - ANNULUS[0]}" for r in RADII)
    return ["fiphot", "-i", str(folder / "frame.fits"), "-L", str(folder / "stars.txt"),
            "--col-id", "1", "--col-xy", "2,3", "-g", str(GAIN), "--mag-flux", "10,10000",
            "-a", apertures, "--sky-fit", "mode,iterations=2,sigma=3", "-F", "IXY,FfBb",
            "-o", str(folder / "out.phot")]


def read_fiphot(path: Path, nstars: int) -> np.ndarray:
    """(nstars, 3) fluxes from fiphot's ``IXY,FfBb`` output (NaN where it gave none)."""
    flux = np.full((nstars, len(RADII)), np.nan)
    for line in path.read_text().splitlines():
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        values = [float(v) if v not in ("-", "nan") else np.nan for v in parts[3::4]]
        flux[int(parts[0]), :len(values)] = values[:len(RADII)]
    return flux


def _peers(image, x, y, folder: Path) -> dict:
    """{name: (callable returning (nstars, 3) fluxes, trex sky method of the same estimator)}."""
    peers = {"sep sum_circle bkgann": (lambda: run_sep(image, x, y), "mean"),
             "photutils exact + annulus": (lambda: run_photutils(image, x, y), "mean")}
    if shutil.which("fiphot"):
        command = fiphot_command(image, x, y, folder)

        def fiphot():
            subprocess.run(command, check=True, capture_output=True)
            return read_fiphot(folder / "out.phot", x.size)

        peers["fitsh fiphot (process)"] = (fiphot, "mode")
    else:
        log.warning("photometry: fitsh fiphot not installed, its row is left out")
    return peers


def bench_size(size: int, nstars: int) -> list[Row]:
    image, x, y, flux = hatpi_frame(size, nstars, seed=1)
    stars = bright_isolated(x, y, flux)
    t_trex, f_trex = median_time(lambda: run_trex(image, x, y))
    same = {"mode": f_trex, "mean": run_trex(image, x, y, "mean")}
    rate = f"trex {nstars * len(RADII) / t_trex / 1e3:.0f} k star-ap/s"
    rows = []
    with tempfile.TemporaryDirectory(prefix="trex-bench-phot-") as tmp:
        for name, (func, sky) in _peers(image, x, y, Path(tmp)).items():
            t_peer, f_peer = median_time(func)
            check = flux_check(same[sky][:, 1], f_peer[:, 1], stars)
            if name.startswith("fitsh"):
                check += "; fiphot time includes process start, FITS read and text output"
            rows.append(Row("aperture photometry 3 ap + 7-13 annulus (trex: mode sky)",
                            f"{size}^2, {nstars} stars", t_trex, name, t_peer,
                            f"{check} ({sky} sky); {rate}"))
    return rows


def run(quick: bool = False) -> list[Row]:
    sizes = [(2048, 10_000)] if quick else [(2048, 10_000), (4096, 50_000)]
    return [row for size, nstars in sizes for row in bench_size(size, nstars)]
