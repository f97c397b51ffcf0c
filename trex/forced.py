"""The photometry stage: every catalog star measured on one calibrated frame.

``run(frame, context)`` projects the field catalog (proper motion applied)
through the frame's WCS, keeps the stars inside the frame minus
``photometry.border``, measures them in the configured apertures with
:func:`trex.photometry.aperture_photometry`, and attaches the PSF shape at
each star (a smooth fit of the extracted sources' S, D, K over the frame),
the sky, and the star's BJD_TDB.  The result is the frame's ``aphot``
product (one row per star, light-curve column names); :func:`save` writes it
and returns the ``ap_photometry`` rows (one per star and aperture).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from trex.catalog import propagate
from trex.config import Config
from trex.extract import shape_map
from trex.fits import FrameError
from trex.flags import MASK, PHOT
from trex.frame import Context, Frame
from trex.photometry import aperture_photometry
from trex.products import save_product
from trex.times import bjd_tdb, site


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
                        ("flux", "f8"), ("fluxerr", "f8")):
        fields += [(f"{name}_{i:03d}", dtype) for i in range(napertures)]
    return np.dtype(fields)


def _stars_on_frame(frame: Frame, catalog, config: Config) -> tuple[np.ndarray, ...]:
    """Catalog index and pixel position of the stars inside the frame minus the border."""
    ny, nx = frame.image.shape
    jyear = 2000.0 + (frame.meta.jd - 2451545.0) / 365.25
    ra, dec = propagate(catalog, jyear)
    # a cone around the frame first: the SIP inverse is only meaningful near the frame
    ra0, dec0 = frame.wcs.all_pix2world([[(nx - 1) / 2, (ny - 1) / 2]], 0)[0]
    corner = frame.wcs.all_pix2world([[0, 0], [nx - 1, ny - 1], [0, ny - 1], [nx - 1, 0]], 0)
    radius = np.max(_separation(corner[:, 0], corner[:, 1], ra0, dec0)) * 1.05
    near = _separation(ra, dec, ra0, dec0) < radius
    near &= np.asarray(catalog["mag"], float) <= config.photometry.mag_limit
    index = np.flatnonzero(near)
    x, y = frame.wcs.all_world2pix(ra[index], dec[index], 0, quiet=True)
    border = config.photometry.border
    inside = (x >= border) & (x <= nx - 1 - border) & (y >= border) & (y <= ny - 1 - border)
    return index[inside], x[inside], y[inside], ra[index][inside], dec[index][inside]


def _separation(ra, dec, ra0, dec0) -> np.ndarray:
    """Angular distance, deg (haversine)."""
    ra, dec, ra0, dec0 = (np.radians(v) for v in (ra, dec, ra0, dec0))
    h = np.sin((dec - dec0) / 2) ** 2 + np.cos(dec) * np.cos(dec0) * np.sin((ra - ra0) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0, 1))))


def _saturated_near(mask: np.ndarray, x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    """True for stars with a saturated pixel within ``radius`` px."""
    sy, sx = np.nonzero(mask & MASK["SATURATED"].bit)
    if not len(sx):
        return np.zeros(len(x), dtype=bool)
    from scipy.spatial import cKDTree

    counts = cKDTree(np.column_stack([sx, sy])).query_ball_point(
        np.column_stack([x, y]), radius + 0.71, return_length=True)
    return counts > 0


def run(frame: Frame, context: Context) -> Frame:
    """Forced aperture photometry of the field catalog on one frame (see module doc)."""
    config, meta = context.config, frame.meta
    catalog = context.catalogs.get(meta.field)
    if catalog is None:
        raise FrameError(frame.rawpath, f"photometry: no catalog for field {meta.field!r}")
    if frame.wcs is None or frame.image is None:
        raise FrameError(frame.rawpath, "photometry: no WCS or image (astrometry not done)")
    star, x, y, ra, dec = _stars_on_frame(frame, catalog, config)
    if not len(star):
        raise FrameError(frame.rawpath, "photometry: no catalog star on the frame")
    radii, annuli = apertures(config)
    table = np.zeros(len(star), dtype=aphot_dtype(len(radii)))
    ph = config.photometry
    for annulus in sorted(set(annuli)):
        use = [i for i, a in enumerate(annuli) if a == annulus]
        res = aperture_photometry(
            frame.image, x, y, radii[use], annulus, gain=meta.gain, mask=frame.mask,
            sky_method=ph.sky_method, sky_sigma=ph.sky_sigma, sky_iters=ph.sky_iters,
            disjoint_radius=ph.disjoint_radius, min_sky_pixels=ph.min_sky_pixels,
            exptime=meta.exptime or 1.0, zeropoint=config.camera.zeropoint)
        for j, i in enumerate(use):
            table[f"aim_{i:03d}"], table[f"aie_{i:03d}"] = res["mag"][:, j], res["magerr"][:, j]
            table[f"flux_{i:03d}"], table[f"fluxerr_{i:03d}"] = res["flux"][:, j], res["fluxerr"][:, j]
            table[f"aiq_{i:03d}"] = res["flag"][:, j]
        table["bgv"], table["bge"] = res["bg"], res["bgerr"]
    saturated = _saturated_near(frame.mask, x, y, float(radii.max()))
    for i in range(len(radii)):
        table[f"aiq_{i:03d}"][saturated] |= PHOT["SATURATED"].bit
        table[f"arm_{i:03d}"] = np.nan
    table["star"], table["xcc"], table["ycc"] = star, x, y
    if frame.sources is not None and len(frame.sources) >= 10:
        table["fsv"], table["fdv"], table["fkv"] = shape_map(frame.sources)(x, y)
    else:
        table["fsv"] = table["fdv"] = table["fkv"] = np.nan
    table["rjd"] = meta.jd - 2400000.0
    table["bjd"] = bjd_tdb(meta.jd, ra, dec, site(meta.latitude, meta.longitude,
                                                   meta.altitude))[0]
    frame.products["aphot"] = table
    frame.products["photkey"] = photkey(config)
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
    table = frame.products["aphot"]
    save_product(frame.redpath, "aphot", table)
    objectids = np.asarray(context.catalogs[frame.meta.field]["objectid"])[table["star"]]
    return {"ap_photometry": ap_photometry_rows(frame.framekey, frame.products["photkey"],
                                                table, objectids)}
