"""Forced aperture photometry of catalog positions (the fiphot successor): the stage.

The measurement itself, its conventions (0-based pixel centres, exact overlap
areas, the sky annulus and its clipping, the flux error formula, magnitudes)
and flags are those of :func:`trex.aperture.aperture_photometry`, the pure
array function, importable from here as the library API has it.

``run(frame, context)`` projects the field catalog (proper motion applied)
through the frame's WCS, keeps the stars inside the frame minus
``photometry.border`` (3 px: every star whose apertures lie on the frame),
measures them in the configured apertures with
:func:`aperture_photometry`, and attaches the PSF shape at
each star (a smooth fit of the extracted sources' S, D, K over the frame;
NaN, with a warning, when too few sources are well measured for the fit),
the sky, and the star's BJD_TDB.  The result is the frame's ``aphot``
product (one row per star, light-curve column names); :func:`save` writes it
and returns the ``ap_photometry`` rows (one per star and aperture).
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
from scipy.spatial import cKDTree

from trex import apcorr
from trex.aperture import (  # aperture_photometry here too: the library API (SPEC 6)
    SkyMap,
    add_magnitudes,
    aperture_photometry,
)
from trex.catalog import propagate
from trex.config import Config
from trex.errors import FrameError
from trex.extract import ShapeMapError, shape_map
from trex.flags import MASK, PHOT, pixels_with
from trex.frame import Context, Frame
from trex.products import save_product
from trex.times import bjd_tdb, site

log = logging.getLogger(__name__)


def apertures(config: Config) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Radii (px) and (r_in, r_out) annuli of the ``photometry.apertures`` specs."""
    radii, annuli = [], []
    for spec in config.photometry.apertures:
        try:
            r, r_in, width = (float(v) for v in spec.split(":"))
        except ValueError:
            raise ValueError(f"[photometry] apertures: bad spec {spec!r}, "
                             "expected 'radius:annulus_inner:annulus_width'") from None
        radii.append(r)
        annuli.append((r_in, r_in + width))
    return np.array(radii), annuli


def photkey(config: Config) -> str:
    """Key of the photometry settings (``photometryinfo.photkey``)."""
    settings = {"photometry": config.photometry.__dict__, "zeropoint": config.camera.zeropoint}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def aphot_dtype(napertures: int) -> np.dtype:
    fields = [("star", "i8"), ("rjd", "f8"), ("bjd", "f8"), ("xcc", "f8"), ("ycc", "f8"),
              ("bgv", "f4"), ("bge", "f4"), ("fsv", "f4"), ("fdv", "f4"), ("fkv", "f4")]
    for name, dtype in (("aim", "f4"), ("aie", "f4"), ("aiq", "i2"), ("arm", "f4"),
                        ("flux", "f8"), ("fluxerr", "f8"), ("apc", "f4")):
        fields += [(f"{name}_{i:03d}", dtype) for i in range(napertures)]
    return np.dtype(fields)


def catalog_positions(catalog: np.ndarray, wcs, shape: tuple[int, int], jd: float,
                      config: Config) -> tuple[np.ndarray, ...]:
    """The catalog stars inside a frame of ``shape`` (ny, nx) minus ``photometry.border``.

    Proper motions are applied to the epoch of ``jd`` (UTC); the positions go
    through ``wcs`` (astropy WCS with SIP).  Returns (catalog index, x, y, ra,
    dec) of those stars: px, 0-based, and deg.
    """
    ny, nx = shape
    jyear = 2000.0 + (jd - 2451545.0) / 365.25
    ra, dec = propagate(catalog, jyear)
    # a cone around the frame first: the SIP inverse is only meaningful near the frame
    ra0, dec0 = wcs.all_pix2world([[(nx - 1) / 2, (ny - 1) / 2]], 0)[0]
    corner = wcs.all_pix2world([[0, 0], [nx - 1, ny - 1], [0, ny - 1], [nx - 1, 0]], 0)
    radius = np.max(_separation(corner[:, 0], corner[:, 1], ra0, dec0)) * 1.05
    near = _separation(ra, dec, ra0, dec0) < radius
    near &= np.asarray(catalog["mag"], float) <= config.photometry.mag_limit
    index = np.flatnonzero(near)
    x, y = wcs.all_world2pix(ra[index], dec[index], 0, quiet=True)
    border = config.photometry.border
    inside = (x >= border) & (x <= nx - 1 - border) & (y >= border) & (y <= ny - 1 - border)
    return index[inside], x[inside], y[inside], ra[index][inside], dec[index][inside]


def measure(image: np.ndarray, x: np.ndarray, y: np.ndarray, config: Config, *, gain: float,
            mask: np.ndarray | None = None, saturation: float | None = None,
            only: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every configured aperture (``photometry.apertures``) at (x, y), with the
    configured sky estimator and neighbour exclusion: the one annulus-photometry
    routine of the frames, the photometric reference and the difference images.
    Stars whose annulus is too small take the sky of the image's background map
    (``extract.mesh``, ``extract.mesh_filter``; flag SKY_MAP).

    ``only``: as :func:`aperture_photometry`.

    Returns dict of arrays of shape (nstars, napertures): ``flux``, ``fluxerr``,
    ``area`` (ADU, px^2), ``flag`` (int32, ``trex.flags.PHOT``) and the sky of each
    aperture's annulus: ``bg``, ``bgerr`` (ADU per pixel), ``nsky`` (pixels kept).
    """
    radii, annuli = apertures(config)
    ph = config.photometry
    n, napertures = len(x), len(radii)
    out = {name: np.empty((n, napertures)) for name in ("flux", "fluxerr", "area", "bg", "bgerr")}
    out["flag"] = np.empty((n, napertures), dtype=np.int32)
    out["nsky"] = np.empty((n, napertures), dtype=np.int32)
    sky_map = SkyMap(image, mask, config.extract.mesh, config.extract.mesh_filter)
    for annulus in sorted(set(annuli)):
        use = [i for i, a in enumerate(annuli) if a == annulus]
        res = aperture_photometry(
            image, x, y, radii[use], annulus, gain=gain, mask=mask, sky_method=ph.sky_method,
            sky_sigma=ph.sky_sigma, sky_iters=ph.sky_iters, disjoint_radius=ph.disjoint_radius,
            min_sky_pixels=ph.min_sky_pixels, saturation=saturation, sky_map=sky_map, only=only)
        for name in ("flux", "fluxerr", "area", "flag"):
            out[name][:, use] = res[name]
        for name in ("bg", "bgerr", "nsky"):
            out[name][:, use] = res[name][:, None]
    return out


def _separation(ra, dec, ra0, dec0) -> np.ndarray:
    """Angular distance, deg (haversine)."""
    ra, dec, ra0, dec0 = (np.radians(v) for v in (ra, dec, ra0, dec0))
    h = np.sin((dec - dec0) / 2) ** 2 + np.cos(dec) * np.cos(dec0) * np.sin((ra - ra0) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0, 1))))


def saturated_near(mask: np.ndarray, x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    """True for stars with a saturated pixel within ``radius`` + 0.71 px (touching the
    aperture); only the stars within that reach of a row holding one are looked at."""
    sy, sx = pixels_with(mask, MASK["SATURATED"].bit)
    near = np.zeros(len(x), dtype=bool)
    if not len(sx):
        return near
    reach = radius + 0.71
    rows = np.zeros(mask.shape[0] + 1, dtype=np.int64)  # saturated rows up to each row
    np.cumsum(np.bincount(sy, minlength=mask.shape[0]) > 0, out=rows[1:])
    finite = np.isfinite(x) & np.isfinite(y)
    at = np.where(finite, y, 0.0)
    lo = np.clip(np.floor(at - reach), 0, mask.shape[0]).astype(np.int64)
    hi = np.clip(np.ceil(at + reach) + 1, 0, mask.shape[0]).astype(np.int64)
    maybe = np.flatnonzero(finite & (rows[hi] > rows[lo]))
    if len(maybe):
        near[maybe] = cKDTree(np.column_stack([sx, sy])).query_ball_point(
            np.column_stack([x[maybe], y[maybe]]), reach, return_length=True) > 0
    return near


def _psf_shapes(frame: Frame, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """S, D, K of the PSF at the stars; NaN when the sources cannot map them."""
    if frame.sources is not None and len(frame.sources) >= 10:
        try:
            return shape_map(frame.sources)(x, y)
        except ShapeMapError as err:
            log.warning("%s: PSF shape unknown (fsv, fdv, fkv NaN): %s", frame.rawpath.name, err)
    nan = np.full(len(x), np.nan)
    return nan, nan, nan


def run(frame: Frame, context: Context) -> Frame:
    """Forced aperture photometry of the field catalog on one frame (see module doc)."""
    config, meta = context.config, frame.meta
    catalog = context.catalogs.get(meta.field)
    if catalog is None:
        raise FrameError(frame.rawpath, f"photometry: no catalog for field {meta.field!r}")
    if frame.wcs is None or frame.image is None:
        raise FrameError(frame.rawpath, "photometry: no WCS or image (astrometry not done)")
    star, x, y, ra, dec = catalog_positions(catalog, frame.wcs, frame.image.shape, meta.jd, config)
    if not len(star):
        raise FrameError(frame.rawpath, "photometry: no catalog star on the frame")
    res = add_magnitudes(measure(frame.image, x, y, config, gain=meta.gain, mask=frame.mask),
                         config.camera.zeropoint, meta.exptime or 1.0)
    napertures = res["flux"].shape[1]
    table = np.zeros(len(star), dtype=aphot_dtype(napertures))
    res["flag"][saturated_near(frame.mask, x, y, float(apertures(config)[0].max()))] |= \
        PHOT["SATURATED"].bit
    for i in range(napertures):
        for column, name in (("aim", "mag"), ("aie", "magerr"), ("flux", "flux"),
                             ("fluxerr", "fluxerr"), ("aiq", "flag")):
            table[f"{column}_{i:03d}"] = res[name][:, i]
        table[f"arm_{i:03d}"] = np.nan
    table["bgv"], table["bge"] = res["bg"][:, -1], res["bgerr"][:, -1]
    table["star"], table["xcc"], table["ycc"] = star, x, y
    table["fsv"], table["fdv"], table["fkv"] = _psf_shapes(frame, x, y)
    apc = apcorr.table_corrections(aperture_photometry, frame.image, frame.mask, table, config,
                                   meta.gain, frame.rawpath.name)
    for i in range(napertures):   # aperture corrections, mag: arm is made from aim + apc
        table[f"apc_{i:03d}"] = apc[:, i]
    table["rjd"] = meta.jd - 2400000.0
    table["bjd"] = bjd_tdb(meta.jd, ra, dec, site(meta.latitude, meta.longitude,
                                                   meta.altitude))[0]
    frame.products["aphot"] = table
    frame.quality["nphot"] = len(table)
    return frame


def ap_photometry_rows(framekey: int, key: str, table: np.ndarray, objectids: np.ndarray) -> dict:
    """``ap_photometry`` columns (one row per star and aperture) of an aphot table."""
    napertures = sum(1 for n in table.dtype.names if n.startswith("aim_"))
    n = len(table)
    rows = {"framekey": np.full(n * napertures, framekey, dtype=np.int64),
            "photkey": np.full(n * napertures, key),
            "objectid": np.tile(objectids, napertures),
            "aperture": np.repeat(np.arange(napertures, dtype=np.int16), n)}
    for name in ("xcc", "ycc", "bgv", "bge", "fsv", "fdv", "fkv"):
        rows[name] = np.tile(table[name], napertures)
    for column, prefix in (("flux", "flux"), ("fluxerr", "fluxerr"), ("mag", "aim"),
                           ("magerr", "aie"), ("flag", "aiq"), ("arm", "arm")):
        rows[column] = np.concatenate([table[f"{prefix}_{i:03d}"] for i in range(napertures)])
    rows["flag"] = rows["flag"].astype(np.int32)
    return rows


def save(frame: Frame, context: Context) -> dict:
    """Write the frame's aphot product; returns its ``ap_photometry`` rows."""
    save_product(frame.redpath, "aphot", frame.products["aphot"])
    return rows(frame, context)


def rows(frame: Frame, context: Context) -> dict:
    """The ``ap_photometry`` rows of the frame's aphot product as it stands (none
    without one)."""
    table = frame.products.get("aphot")
    if table is None:
        return {}
    objectids = np.asarray(context.catalogs[frame.meta.field]["objectid"])[table["star"]]
    return {"ap_photometry": ap_photometry_rows(frame.framekey, photkey(context.config),
                                                table, objectids)}
