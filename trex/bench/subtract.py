"""Registration resampling and image subtraction: trex against scipy and fitsh ``ficonv``.

Resampling (4096^2, 2048^2 with ``--quick``): a HATPI-like frame
(:func:`trex.bench.common.hatpi_frame`) put on a reference grid rotated by
0.3 deg, scaled by 1.004, shifted by (2.3, -1.7) px with a small cubic
distortion, the map being one :class:`trex.register.Transform`.  trex
``resample`` (bilinear, bicubic, flux-conserving) against scipy
``map_coordinates`` (order 1, 3) at the same points; scipy's coordinate arrays
are computed beforehand, outside its timing; fitsh ``fitrans -k --reverse``
(pipe-trex's flux-conserving resampling; not with ``--quick``), the whole
process, with the same map fitted by ``grtrans`` from 32 x 32 points.  Check:
median and robust scatter of trex / (scipy x pixel-area ratio) (trex
conserves flux, scipy samples), or trex / fitrans, on a subgrid of interior
pixels.

Subtraction (2048^2 pair from :mod:`trex.simulate.scene`): the reference is
the noiseless frame plus the noise of a 10-frame stack, the image the same
stars 1.25x wider with shot and read noise.  trex ``subtract`` (stamp selection
+ kernel fit + convolution + subtraction, ``b/4;i/4;d=4/4``, stamps of
``STAMP_HALFSIZE`` = 10, i.e. 21 x 21 px, one per cell of an 8 x 8 grid) against
one scipy ``fftconvolve`` of the frame (the floor of any convolution-based
method), and fitsh ``ficonv`` (whole process; not with ``--quick``) fitting
the same kernel on stamps given with ``--input-stamps``:

* the stamps trex fitted (kept and rejected: every centre trex examined), same
  centres and half-size, so both fit the same pixels (~28 k of 4.2 M);
* pipe-trex's stamps: a 30 x 30 grid of 41 x 41 stamps (``GRID``; 1.5 M px).

Without ``--input-stamps`` ficonv fits its kernel on every pixel of the frame
(~150x the pixels trex fits), which an earlier version of this bench timed.

The fitsh peers take 10-40 s a run at these sizes: they run ``SLOW_REPEATS``
times (1: the full bench must stay under 15 minutes), which the check says.
Their time is the whole process (start, FITS read and write), which the check
also says.  Check:
std of D / expected noise in the interior (1.0 is ideal), the expected
variance being the image's plus the reference's through the kernel at the
frame centre.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from scipy.ndimage import map_coordinates
from scipy.signal import fftconvolve

from trex.bench.common import Row, hatpi_frame, median_time
from trex.register import Transform, fit_transform, resample
from trex.simulate import make_scene, render_frame
from trex.subtract import subtract

log = logging.getLogger(__name__)

NAME = "subtract"
KERNEL = "b/4;i/4;d=4/4"
GAIN, RDNOISE, NSTACK, BORDER = 2.7, 10.0, 10, 16
#: trex's stamp half-size (px), also given to ficonv
STAMP_HALFSIZE = 10
#: pipe-trex's ficonv stamps: a GRID x GRID grid of (2 GRID_HALFSIZE + 1)^2 px stamps
GRID, GRID_HALFSIZE = 30, 20
#: what the whole-process fitsh rows include beyond the kernel itself
PROCESS_NOTE = "fitsh time includes process start, FITS read and write"
#: repeats of the whole-process fitsh peers (ficonv, fitrans), 10-40 s a run
SLOW_REPEATS = 1


def test_transform(n: int) -> Transform:
    """Rotation, scale, shift and a cubic term, fitted on a grid of points."""
    c, th, s = n / 2, np.deg2rad(0.3), 1.004
    gx, gy = (g.ravel() for g in np.meshgrid(np.linspace(0, n - 1, 24), np.linspace(0, n - 1, 24)))
    u = c + s * (np.cos(th) * (gx - c) - np.sin(th) * (gy - c)) + 2.3 + 1e-9 * (gx - c) ** 3
    v = c + s * (np.sin(th) * (gx - c) + np.cos(th) * (gy - c)) - 1.7 + 1e-9 * (gy - c) ** 3
    return fit_transform(gx, gy, u, v, order=3)


def area_ratio(transform: Transform, x: np.ndarray, y: np.ndarray, h: float = 0.5) -> np.ndarray:
    """|det d(u, v) / d(x, y)| at (x, y): frame pixels per reference pixel."""
    ux0, vx0 = transform(x - h, y)
    ux1, vx1 = transform(x + h, y)
    uy0, vy0 = transform(x, y - h)
    uy1, vy1 = transform(x, y + h)
    return np.abs((ux1 - ux0) * (vy1 - vy0) - (uy1 - uy0) * (vx1 - vx0)) / (2 * h) ** 2


def agreement_check(trex_img: np.ndarray, peer_img: np.ndarray, area: np.ndarray | float,
                    label: str = "(scipy x area ratio)", step: int = 4, border: int = BORDER) -> str:
    """'trex/<label> <median> +- <robust scatter>' of trex / (peer x area) on every
    ``step``-th interior pixel; ``area`` is the pixel-area ratio on that subgrid
    (trex conserves flux, scipy samples) or 1 for a flux-conserving peer."""
    a = np.asarray(trex_img, float)[::step, ::step]
    b = np.asarray(peer_img, float)[::step, ::step] * area
    inner = slice(border // step, -(border // step))
    a, b = a[inner, inner], b[inner, inner]
    good = np.isfinite(a) & np.isfinite(b) & (b > 0)
    ratio = a[good] / b[good]
    med = float(np.median(ratio))
    scatter = 1.4826 * float(np.median(np.abs(ratio / med - 1)))
    return f"trex/{label} {med:.4f} +- {scatter:.1e}"


def scipy_resample(frame: np.ndarray, transform: Transform) -> dict[int, tuple[float, np.ndarray]]:
    """{order: (median time, output)} of map_coordinates at the transform's points (the
    coordinate arrays are computed before the timing)."""
    yy, xx = np.mgrid[0:frame.shape[0], 0:frame.shape[1]].astype(np.float64)
    u, v = transform(xx, yy)
    coords = np.array([v, u])
    del xx, yy, u, v
    return {order: median_time(lambda k=order: map_coordinates(
        frame, coords, order=k, output=np.float32, cval=np.nan)) for order in (1, 3)}


def bench_resample(size: int, quick: bool) -> list[Row]:
    frame, _, _, _ = hatpi_frame(size, 10_000 if size <= 2048 else 50_000, seed=1)
    transform = test_transform(size)
    scipy = scipy_resample(frame, transform)
    sub = np.arange(0, size, 4, dtype=np.float64)
    area = area_ratio(transform, sub[None, :], sub[:, None])
    rows = []
    for method, order in (("bilinear", 1), ("bicubic", 3), ("flux", 3)):
        t, out = median_time(lambda m=method: resample(frame, transform, (size, size), m))
        label = "flux-conserving" if method == "flux" else method
        rows.append(Row(f"resample onto reference grid, trex {label}", f"{size}^2", t,
                        f"scipy map_coordinates order {order}", scipy[order][0],
                        agreement_check(out, scipy[order][1], area)))
    if not quick:
        rows += _fitrans_rows(frame, transform, rows[-1].trex, out)
    return rows


def fitrans_runner(frame: np.ndarray, transform: Transform, folder: Path):
    """The map as a fitsh transformation (``grtrans`` fit of 32 x 32 point pairs, fitsh
    pixel centres at +0.5) and a callable running ``fitrans -k --reverse`` (pipe-trex's)."""
    from astropy.io import fits

    n = frame.shape[0]
    gx, gy = (g.ravel() for g in np.meshgrid(np.linspace(0, n - 1, 32), np.linspace(0, n - 1, 32)))
    u, v = transform(gx, gy)
    np.savetxt(folder / "points.txt", np.column_stack([gx, gy, u, v]) + 0.5)
    subprocess.run(["grtrans", "--col-xy", "1,2", "--col-fit", "3,4", "--order",
                    str(transform.order), "--output-transformation", str(folder / "map.trans"),
                    str(folder / "points.txt")], check=True, capture_output=True)
    fits.writeto(folder / "frame.fits", frame, overwrite=True)
    command = ["fitrans", "-i", str(folder / "frame.fits"), "-k", "-T", str(folder / "map.trans"),
               "--reverse", "-o", str(folder / "out.fits")]

    def run_fitrans() -> np.ndarray:
        subprocess.run(command, check=True, capture_output=True)
        return fits.getdata(folder / "out.fits")

    return run_fitrans


def _fitrans_rows(frame: np.ndarray, transform: Transform, t_trex: float,
                  out: np.ndarray) -> list[Row]:
    if not (shutil.which("fitrans") and shutil.which("grtrans")):
        log.warning("subtract: fitsh fitrans/grtrans not installed, its row is left out")
        return []
    with tempfile.TemporaryDirectory(prefix="trex-bench-fitrans-") as tmp:
        t_peer, peer = median_time(fitrans_runner(frame, transform, Path(tmp)), SLOW_REPEATS)
    size = frame.shape[0]
    return [Row("resample onto reference grid, trex flux-conserving", f"{size}^2", t_trex,
                "fitsh fitrans -k (process)", t_peer,
                f"{agreement_check(out, peer, 1.0, 'fitrans')}; {PROCESS_NOTE}; "
                f"peer {SLOW_REPEATS} run(s)")]


def subtraction_pair(size: int, nstars: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, reference, image model) float32: a 1.25x wider PSF on the image."""
    scene = make_scene(size=size, nstars=nstars, seed=seed, fwhm=2.4, ellipticity=0.0,
                       gain=GAIN, rdnoise=RDNOISE)
    clean, _ = render_frame(scene, noise=False)
    model, _ = render_frame(scene, noise=False, focus=1.25)
    image, _ = render_frame(scene, noise=True, seed=seed + 1, focus=1.25)
    rng = np.random.default_rng(seed + 2)
    sigma = np.sqrt(clean / GAIN + (RDNOISE / GAIN) ** 2) / np.sqrt(NSTACK)
    reference = (clean + rng.normal(0.0, 1.0, clean.shape) * sigma).astype(np.float32)
    return image, reference, model


def noise_check(diff: np.ndarray, model: np.ndarray, reference: np.ndarray,
                kernel: np.ndarray, border: int = BORDER) -> str:
    """'noise ratio <std(D / sigma)>' with sigma^2 = image variance + sum(K^2) reference variance."""
    var_ref = np.maximum(reference, 0) / GAIN / NSTACK + (RDNOISE / GAIN) ** 2 / NSTACK
    var = np.maximum(model, 0) / GAIN + (RDNOISE / GAIN) ** 2 + np.sum(kernel ** 2) * var_ref
    z = (np.asarray(diff, float) / np.sqrt(var))[border:-border, border:-border]
    z = z[np.isfinite(z)]
    return f"noise ratio {np.std(z):.3f} (mean D/sigma {np.mean(z):+.3f})"


def write_stamps(path: Path, centres: np.ndarray, halfsize: int) -> None:
    """A ficonv ``--input-stamps`` file: ``x y halfsize`` per line, fitsh pixel
    coordinates (ficonv takes the pixel ``int(x)``, ``int(y)`` as the centre of a
    (2 halfsize + 1)^2 stamp, so 0-based integer centres are written + 0.5)."""
    centres = np.asarray(centres, dtype=float).reshape(-1, 2)
    np.savetxt(path, np.column_stack([centres + 0.5, np.full(len(centres), halfsize)]),
               fmt=["%.1f", "%.1f", "%d"])


def grid_centres(shape: tuple[int, int], ngrid: int = GRID) -> np.ndarray:
    """(ngrid^2, 2) integer x, y centres of an ngrid x ngrid grid of cells (pipe-trex's
    stamp grid)."""
    ny, nx = shape
    gx = np.floor((np.arange(ngrid) + 0.5) * nx / ngrid)
    gy = np.floor((np.arange(ngrid) + 0.5) * ny / ngrid)
    return np.column_stack([g.ravel() for g in np.meshgrid(gx, gy)]).astype(np.int64)


def ficonv_runner(image: np.ndarray, reference: np.ndarray, folder: Path,
                  stamps: Path | None = None):
    """Whole-process ficonv (fit + subtract) of the reference onto the image, on the
    stamps of the ``stamps`` file (every pixel when None); returns a callable giving D."""
    from astropy.io import fits

    fits.writeto(folder / "ref.fits", reference, overwrite=True)
    fits.writeto(folder / "img.fits", image, overwrite=True)
    command = ["ficonv", "-r", str(folder / "ref.fits"), "-i", str(folder / "img.fits"),
               "-k", KERNEL, "--output-kernel-list", str(folder / "kernel.txt"),
               "--output-subtracted", str(folder / "diff.fits")]
    if stamps is not None:
        command += ["--input-stamps", str(stamps)]

    def run_ficonv() -> np.ndarray:
        subprocess.run(command, check=True, capture_output=True)
        return fits.getdata(folder / "diff.fits").astype(np.float64)

    return run_ficonv


def stamp_pixels(centres: np.ndarray, halfsize: int) -> int:
    """Pixels covered by the stamps (overlaps counted once)."""
    centres = np.asarray(centres, dtype=np.int64).reshape(-1, 2)
    if len(centres) == 0:
        return 0
    side = 2 * halfsize + 1
    cover = np.zeros((int(centres[:, 1].max()) + side, int(centres[:, 0].max()) + side), bool)
    for x, y in centres:
        cover[y:y + side, x:x + side] = True
    return int(cover.sum())


def _ficonv_rows(image: np.ndarray, reference: np.ndarray, model: np.ndarray,
                 kernel: np.ndarray, solution, t_trex: float, op: str, label: str) -> list[Row]:
    """ficonv on trex's stamps and on pipe-trex's grid (see the module docstring)."""
    examined = np.vstack([solution.stamps, solution.rejected]).reshape(-1, 2)
    grid = grid_centres(image.shape)
    variants = (("fitsh ficonv on trex's stamps", examined, STAMP_HALFSIZE,
                 f"same {len(examined)} centres as trex ({len(solution.stamps)} kept), "
                 f"{2 * STAMP_HALFSIZE + 1}^2 px"),
                ("fitsh ficonv on pipe-trex grid", grid, GRID_HALFSIZE,
                 f"pipe-trex's {GRID}x{GRID} grid of {2 * GRID_HALFSIZE + 1}^2 px"))
    trex_pixels = stamp_pixels(examined, STAMP_HALFSIZE)
    rows = []
    with tempfile.TemporaryDirectory(prefix="trex-bench-sub-") as tmp:
        for name, centres, half, what in variants:
            stamps = Path(tmp) / f"stamps-{half}.txt"
            write_stamps(stamps, centres, half)
            t_fi, d_fi = median_time(ficonv_runner(image, reference, Path(tmp), stamps),
                                     SLOW_REPEATS)
            rows.append(Row(op, label, t_trex, name, t_fi,
                            f"ficonv {noise_check(d_fi, model, reference, kernel)}; stamps: {what}"
                            f", {stamp_pixels(centres, half) / 1e3:.0f} k px fitted (trex "
                            f"{trex_pixels / 1e3:.0f} k); {PROCESS_NOTE}; peer {SLOW_REPEATS} "
                            "run(s)"))
    return rows


def bench_subtract(size: int, nstars: int, quick: bool) -> list[Row]:
    image, reference, model = subtraction_pair(size, nstars)
    t_trex, (diff, solution) = median_time(lambda: subtract(image, reference, KERNEL, gain=GAIN,
                                                            halfsize=STAMP_HALFSIZE))
    kernel = solution.kernel(size / 2, size / 2)
    check = f"{noise_check(diff, model, reference, kernel)}; {len(solution.stamps)} stamps"
    psf = np.outer(*[np.exp(-0.5 * (np.arange(-4, 5) / 1.0) ** 2)] * 2).astype(np.float32)
    t_fft, _ = median_time(lambda: fftconvolve(reference, psf / psf.sum(), mode="same"))
    op, label = f"image subtraction {KERNEL}", f"{size}^2 pair"
    rows = [Row(op, label, t_trex, "scipy fftconvolve (one, 9x9)", t_fft, check)]
    if not shutil.which("ficonv"):
        log.warning("subtract: fitsh ficonv not installed, its rows are left out")
    elif quick:
        log.warning("subtract: fitsh ficonv and fitrans (~5-40 s a run) are left out with --quick")
    else:
        rows += _ficonv_rows(image, reference, model, kernel, solution, t_trex, op, label)
    return rows


def run(quick: bool = False) -> list[Row]:
    rows = bench_resample(2048 if quick else 4096, quick)
    return rows + bench_subtract(2048, 10_000, quick)
