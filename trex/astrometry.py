"""Astrometric solution of a frame against its field catalog (TAN-SIP WCS).

:func:`solve` needs only a rough pointing (centre and pixel scale, from a header
WCS or from the RA/DEC/PIXSCALE keywords): rotation, parity, a 1-degree
pointing error and a few per cent of scale error are found by triangle
asterism matching (:mod:`trex.asterism`) of the brightest sources against the
brightest catalog stars on the tangent plane.  The match is then refined by an
iterative, S/N-weighted, clipped linear least-squares fit of a TAN-SIP polynomial
(:mod:`trex.wcsfit`) with more and more stars paired by cKDTree, re-centring
the tangent point on the frame centre as it goes.

:func:`run` is the per-frame stage (``trex.frame`` protocol): it sets
``frame.wcs``, writes the WCS into ``frame.header`` and fills ``frame.quality``
(wcs_nmatch, wcs_median, wcs_p90, wcs_std).  The astrometric reference of each
group is chosen by :mod:`trex.astromref`.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass

import numpy as np
from astropy.io import fits as afits
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_scales
from scipy.spatial import cKDTree

from trex import asterism
from trex.catalog import propagate
from trex.errors import FrameError, one_line
from trex.frame import Context, Frame
from trex.header import FrameMeta
from trex.wcsfit import PlaneModel, design, gnomonic, lstsq, monomials, recentre, to_wcs

log = logging.getLogger(__name__)

#: header keywords of a celestial WCS, removed before the new solution is written.
_WCS_KEY = re.compile(r"^(WCSAXES|CTYPE\d|CRVAL\d|CRPIX\d|CDELT\d|CUNIT\d|CROTA\d|CD\d_\d|PC\d_\d"
                      r"|PV\d_\d+|PS\d_\d+|LONPOLE|LATPOLE|RADESYS|EQUINOX|MJDREF|WCSNAME"
                      r"|(A|B|AP|BP)_(ORDER|\d+_\d+)|A_DMAX|B_DMAX)$")

#: source flags (trex.flags.SOURCE) that keep a source out of the final fit:
#: MASKED, SATURATED, EDGE.
_BAD_SOURCE = 2 | 4 | 16

#: pairing radius of the first (similarity) match, px: covers the departure from
#: a similarity of a TAN projection 1 deg off centre and a few px of distortion.
_FIRST_RADIUS = 8.0

#: centroid error of the brightest sources, px (systematics: PSF, pixel phase).
_CENTROID_FLOOR = 0.005


#: pixel scales a header WCS may have, arcsec/px (outside: the WCS is broken)
PLAUSIBLE_SCALE = (0.01, 1800.0)


class AstrometryError(RuntimeError):
    """No acceptable solution; ``reason`` says why, ``quality`` holds what was measured."""

    def __init__(self, reason: str, quality: dict | None = None):
        super().__init__(reason)
        self.reason = reason
        self.quality = quality or {}


@dataclass
class _Problem:
    """Sources and catalog of one solve, and the current tangent plane."""

    x: np.ndarray        # source x, 0-based px, brightest first
    y: np.ndarray
    good: np.ndarray     # bool: usable in the fit
    inv_snr: np.ndarray  # 1 / (S/N) of each source (all 1 when S/N is unknown)
    ra: np.ndarray       # catalog stars near the field, brightest first, deg
    dec: np.ndarray
    centre: tuple[float, float]
    scale: float         # guessed deg/px
    ra0: float = 0.0
    dec0: float = 0.0
    plane: np.ndarray | None = None   # (m, 2) catalog standard coordinates at ra0, dec0, deg

    def move_to(self, ra0: float, dec0: float) -> None:
        self.ra0, self.dec0 = ra0, dec0
        self.plane = np.stack(gnomonic(self.ra, self.dec, ra0, dec0), axis=1)


def initial_wcs(meta: FrameMeta, shape: tuple[int, int],
                header: afits.Header | None = None) -> WCS | None:
    """First guess: the header's celestial WCS if it has a usable one, else a
    north-up, east-left TAN WCS at the RA/DEC/PIXSCALE of ``meta`` centred on
    the frame; None when neither is known.  ``shape`` is (ny, nx)."""
    if header is not None and str(header.get("CTYPE1", "")).startswith("RA"):
        wcs = _header_wcs(header, shape)
        if wcs is not None:
            return wcs
    if meta.ra is None or meta.dec is None or not meta.pixscale:
        return None
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [meta.ra, meta.dec]
    wcs.wcs.crpix = [(shape[1] + 1) / 2.0, (shape[0] + 1) / 2.0]
    scale = meta.pixscale / 3600.0
    wcs.wcs.cd = [[-scale, 0.0], [0.0, scale]]
    return wcs


def _header_wcs(header: afits.Header, shape: tuple[int, int]) -> WCS | None:
    """The header's celestial WCS, or None (with a warning) when it is broken: it
    does not parse (wcslib's errors are ValueErrors), gives no finite centre,
    its pixels are far from square (singular values of the CD matrix more than
    a factor 1.5 apart; a singular matrix) or have a side outside
    :data:`PLAUSIBLE_SCALE` (an all-zero CD matrix reads as 1 deg/px)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, naxis=2)
            if not wcs.has_celestial:
                return None
            ra0, dec0, _ = _pointing(shape, wcs, None, None, None)
            sides = np.linalg.svd(wcs.celestial.pixel_scale_matrix, compute_uv=False) * 3600
        except (ValueError, np.linalg.LinAlgError) as err:
            log.warning("header WCS unusable, RA/DEC/PIXSCALE used instead: %s",
                        one_line(str(err), 120))
            return None
    low, high = PLAUSIBLE_SCALE
    if not (np.isfinite(ra0) and np.isfinite(dec0) and np.all(np.isfinite(sides))
            and low <= sides.min() and sides.max() <= high and sides.max() < 1.5 * sides.min()):
        log.warning("header WCS unusable (centre %s %s, pixel sides %s arcsec), RA/DEC/PIXSCALE "
                    "used instead", ra0, dec0, np.round(sides, 4).tolist())
        return None
    return wcs


def _pointing(shape, guess_wcs, ra, dec, pixscale) -> tuple[float, float, float]:
    """(ra0, dec0, deg/px) at the frame centre from the guess WCS or the arguments."""
    if guess_wcs is not None:
        cy, cx = (shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0
        (r0,), (d0,) = guess_wcs.celestial.all_pix2world([cx], [cy], 0)
        scale = float(np.mean(proj_plane_pixel_scales(guess_wcs.celestial)))
        return float(r0), float(d0), scale
    if ra is None or dec is None or not pixscale:
        raise AstrometryError("no pointing: neither a header WCS nor RA/DEC/PIXSCALE")
    return float(ra), float(dec), float(pixscale) / 3600.0


def _problem(sources, cat_ra, cat_dec, cat_mag, shape, ra0, dec0, scale,
             search_radius) -> _Problem:
    """Finite sources (brightest first) and catalog stars in the search circle (brightest first)."""
    ok = np.isfinite(sources["x"]) & np.isfinite(sources["y"]) & np.isfinite(sources["flux"])
    src = sources[ok][np.argsort(-sources["flux"][ok], kind="stable")]
    names = src.dtype.names or ()
    flags = src["flag"] if "flag" in names else np.zeros(len(src), int)
    snr = np.asarray(src["snr"], float) if "snr" in names else np.zeros(len(src))
    valid = np.isfinite(snr) & (snr > 0)
    inv_snr = np.ones(len(src))
    if valid.any():     # sources without a usable S/N count as the faintest
        inv_snr[valid] = 1.0 / snr[valid]
        inv_snr[~valid] = inv_snr[valid].max()
    cy, cx = (shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0
    xi, eta = gnomonic(np.asarray(cat_ra, float), np.asarray(cat_dec, float), ra0, dec0)
    rmax = 0.5 * np.hypot(*shape) * scale + search_radius
    near = np.flatnonzero(np.hypot(xi, eta) < rmax)
    near = near[np.argsort(np.asarray(cat_mag)[near], kind="stable")]
    problem = _Problem(src["x"].astype(float), src["y"].astype(float),
                       (flags & _BAD_SOURCE) == 0, inv_snr, np.asarray(cat_ra, float)[near],
                       np.asarray(cat_dec, float)[near], (cx, cy), scale)
    problem.move_to(ra0, dec0)
    return problem


def _nearest_pairs(src_xy: np.ndarray, tree: cKDTree,
                   radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Source and catalog indices of nearest neighbours within ``radius``, one source per star
    (sources a wild guess projects to non-finite positions have none)."""
    finite = np.flatnonzero(np.isfinite(src_xy).all(axis=1))
    dist = np.full(len(src_xy), np.inf)
    idx = np.zeros(len(src_xy), dtype=np.intp)
    if len(finite):
        dist[finite], idx[finite] = tree.query(src_xy[finite], distance_upper_bound=radius)
    si = np.flatnonzero(np.isfinite(dist))
    ci, d = idx[si], dist[si]
    order = np.lexsort((d, ci))
    first = np.ones(len(order), bool)
    first[1:] = ci[order][1:] != ci[order][:-1]
    keep = order[first]
    return si[keep], ci[keep]


def _first_pairs(p: _Problem, guess_wcs, nbright: int, radius: float, scale_tolerance: float,
                 min_support: int) -> tuple[np.ndarray, np.ndarray]:
    """Initial source/catalog pairs from the guess WCS as it is, else by asterism matching."""
    nsrc = min(nbright, len(p.x))
    src_xy = np.stack([p.x - p.centre[0], p.y - p.centre[1]], 1)
    cat_xy = p.plane / p.scale
    frame_area = 4 * p.centre[0] * p.centre[1] + 1
    circle_area = np.pi * np.hypot(*cat_xy.T).max() ** 2
    ncat = int(np.clip(nsrc * circle_area / frame_area, nsrc, len(cat_xy)))
    if guess_wcs is not None:
        ra, dec = guess_wcs.celestial.all_pix2world(p.x[:nsrc], p.y[:nsrc], 0)
        guess_xy = np.stack(gnomonic(ra, dec, p.ra0, p.dec0), 1) / p.scale
        si, ci = _nearest_pairs(guess_xy, cKDTree(cat_xy[: 3 * ncat]), radius)
        if len(si) >= min_support:
            log.debug("header WCS matched %d of %d bright sources", len(si), nsrc)
            return si, ci
    support, a, b, flip = asterism.match_lists(src_xy[:nsrc], cat_xy[:ncat], cat_xy[: 3 * ncat],
                                               radius=radius, scale_tolerance=scale_tolerance)
    log.debug("asterism support %d of %d (scale %.4f, flip %s)", support, nsrc, abs(a), flip)
    if support < min_support:
        raise AstrometryError(f"no asterism match: best proposal put {support} of {nsrc} bright "
                              f"sources on catalog stars (need {min_support})")
    # pair 4x more sources with a 3x deeper catalog list than the one verified
    nmore = min(4 * nsrc, len(p.x))
    mapped = asterism.apply(a, b, flip, src_xy[:nmore])
    return _nearest_pairs(mapped, cKDTree(cat_xy[: 12 * ncat]), radius)


def _fit_clipped(p: _Problem, si: np.ndarray, ci: np.ndarray, order: int,
                 clip: float = 4.0) -> tuple[PlaneModel, np.ndarray, np.ndarray]:
    """Weighted fit of the pairs (si, ci), rejecting outliers until stable.

    Each source's centroid error is modelled as hypot(c / snr, floor) with c
    measured from the residuals (all equal when S/N is unknown); the fit is
    weighted by its inverse and pairs whose residual exceeds ``clip`` times
    the robust scale of the normalised residuals are dropped.  The order
    drops when there are fewer than 4 pairs per coefficient.  Returns
    (model, si, ci) with the pairs the model was fitted to.
    """
    while order > 1 and len(si) < 4 * len(monomials(order)):
        order -= 1
    if len(si) < 6:
        raise AstrometryError(f"only {len(si)} stars paired: too few to fit a WCS")
    a = design(p.x[si] - p.centre[0], p.y[si] - p.centre[1], order)
    target, inv_snr = p.plane[ci], p.inv_snr[si]
    used, weight = np.ones(len(si), bool), np.ones(len(si))
    for step in range(6):
        w = weight[used, None]
        try:
            model = PlaneModel(lstsq(a[used] * w, target[used] * w), order, p.centre, p.ra0, p.dec0)
            res = np.hypot(*_to_px(model, target - a @ model.coeffs).T)
        except np.linalg.LinAlgError:
            raise AstrometryError("degenerate star pairs: singular WCS fit") from None
        # median of a 2-D Gaussian's radii is 1.1774 sigma
        scale = np.median(res[used] / inv_snr[used]) / 1.1774
        sigma = np.hypot(scale * inv_snr, _CENTROID_FLOOR)
        z = res / sigma
        keep = z <= clip * np.median(z[used]) / 1.1774
        if (step and np.array_equal(keep, used)) or keep.sum() < 2 * a.shape[1]:
            break
        used, weight = keep, 1.0 / sigma
    return model, si[used], ci[used]


def _to_px(model: PlaneModel, diff: np.ndarray) -> np.ndarray:
    """Standard-coordinate differences (n, 2), deg, as pixel vectors through CD^-1."""
    return diff @ np.linalg.inv(model.cd()).T


def _refine(p: _Problem, si: np.ndarray, ci: np.ndarray, sip_order: int,
            match_radius: float) -> tuple[PlaneModel, np.ndarray, np.ndarray]:
    """Iterate: re-centre the tangent point, pair all sources by cKDTree, fit with clipping.

    The order rises from 1 (affine) to ``sip_order``, the number of sources
    from the brightest 1000 to all, and the pairing radius shrinks to
    ``match_radius`` px as the solution improves.
    """
    model, si, ci = _fit_clipped(p, si, ci, 1)
    good = np.flatnonzero(p.good)
    schedule = [(1, 8.0, 1000), (sip_order, 4.0, 3000), (sip_order, 2.0 * match_radius, None),
                (sip_order, match_radius, None)]
    for order, radius, nsources in schedule:
        p.move_to(*recentre(model))
        model, si, ci = _fit_clipped(p, si, ci, model.order)
        visible = _in_frame(p, model)
        tree = cKDTree(p.plane[visible] / p.scale)
        usable = good[:nsources]
        xy = model.plane(p.x[usable], p.y[usable]) / p.scale
        sj, cj = _nearest_pairs(xy, tree, max(radius, match_radius))
        model, si, ci = _fit_clipped(p, usable[sj], visible[cj], order)
    p.move_to(*recentre(model))
    return _fit_clipped(p, si, ci, model.order)


def _in_frame(p: _Problem, model: PlaneModel, margin: float = 50.0) -> np.ndarray:
    """Indices of catalog stars that the model's linear part puts within ``margin`` px
    of the frame (the margin covers the non-linear terms)."""
    uv = _to_px(model, p.plane - model.coeffs[0])
    inside = (np.abs(uv[:, 0]) < p.centre[0] + margin) & (np.abs(uv[:, 1]) < p.centre[1] + margin)
    return np.flatnonzero(inside)


def solve(sources: np.ndarray, catalog_ra: np.ndarray, catalog_dec: np.ndarray,
          catalog_mag: np.ndarray, shape: tuple[int, int], guess_wcs: WCS | None = None,
          ra: float | None = None, dec: float | None = None, pixscale: float | None = None, *,
          sip_order: int = 3, nbright: int = 60, match_radius: float = 1.5,
          search_radius: float = 1.5, scale_tolerance: float = 0.1, min_matches: int = 20,
          max_median: float = 0.2, max_p90: float = 0.5) -> tuple[WCS, dict]:
    """Solve a frame's TAN-SIP WCS from its sources and the field catalog.

    Parameters
    ----------
    sources : structured array with fields x, y (0-based px), flux (any unit,
        larger is brighter) and optionally snr (weights the fit) and flag
        (``trex.flags.SOURCE`` bits; MASKED, SATURATED, EDGE sources are not fitted).
    catalog_ra, catalog_dec : (m,) deg, ICRS at the frame epoch; catalog_mag : (m,).
    shape : (ny, nx) of the frame.
    guess_wcs : first guess (any rotation); else ``ra``, ``dec`` (deg) and
        ``pixscale`` (arcsec/px) of the frame centre, rotation unknown.
    sip_order : SIP order of the final fit (1: plain TAN).
    nbright : sources (and a similar density of catalog stars) used for asterisms.
    match_radius : final pairing radius, px.
    search_radius : how far the true centre may be from the guessed one, deg.
    scale_tolerance : allowed fractional error of the guessed pixel scale.
    min_matches, max_median, max_p90 : acceptance limits (count, px, px).

    Returns
    -------
    (wcs, quality) : astropy WCS, and dict of wcs_nmatch (matched stars kept in
        the fit), wcs_median, wcs_p90 (of the residual distances, px) and
        wcs_std (scatter of the x and y residuals, px).

    Raises
    ------
    AstrometryError : no match, or a solution beyond the limits (its
        ``quality`` attribute then holds the numbers).
    """
    ra0, dec0, scale = _pointing(shape, guess_wcs, ra, dec, pixscale)
    p = _problem(sources, catalog_ra, catalog_dec, catalog_mag, shape, ra0, dec0, scale,
                 search_radius)
    guess = (f"(guess: scale {scale * 3600:.2f} arcsec/px +-{scale_tolerance:.0%}, pointing "
             f"RA {ra0:.3f} DEC {dec0:.3f} +-{search_radius:g} deg)")
    if len(p.ra) < 3:
        rmax = 0.5 * np.hypot(*shape) * scale + search_radius
        found = f"only {len(p.ra)} catalog stars" if len(p.ra) else "no catalog star"
        raise AstrometryError(f"{found} within {rmax:.2f} deg of the pointing RA {ra0:.3f} "
                              f"DEC {dec0:.3f}")
    if len(p.x) < 3:
        raise AstrometryError(f"too few sources to match: {len(p.x)}")
    try:
        si, ci = _first_pairs(p, guess_wcs, nbright, _FIRST_RADIUS, scale_tolerance,
                              min_support=max(8, nbright // 6))
        model, si, ci = _refine(p, si, ci, sip_order, match_radius)
    except AstrometryError as err:
        raise AstrometryError(f"{err.reason} {guess}", err.quality) from None
    res = _to_px(model, p.plane[ci] - model.plane(p.x[si], p.y[si]))
    dist = np.hypot(*res.T)
    quality = {"wcs_nmatch": int(len(si)),
               "wcs_median": float(np.median(dist)) if len(si) else float("nan"),
               "wcs_p90": float(np.percentile(dist, 90)) if len(si) else float("nan"),
               "wcs_std": float(np.std(res)) if len(si) else float("nan")}
    if len(si) < min_matches:
        raise AstrometryError(f"only {len(si)} matched stars (need {min_matches}) {guess}", quality)
    if not quality["wcs_median"] <= max_median or not quality["wcs_p90"] <= max_p90:
        raise AstrometryError(f"residuals too large: median {quality['wcs_median']:.3f} px, "
                              f"90th percentile {quality['wcs_p90']:.3f} px "
                              f"(limits {max_median}, {max_p90})", quality)
    return to_wcs(model, shape), quality


def write_wcs(header: afits.Header, wcs: WCS) -> None:
    """Replace any celestial WCS keywords of ``header`` by those of ``wcs`` (in place)."""
    for key in [k for k in header.keys() if _WCS_KEY.match(k)]:
        del header[key]
    new = wcs.to_header(relax=True)
    for key in ("MJDREF", "DATEREF", "MJD-OBS", "DATE-OBS"):
        new.remove(key, ignore_missing=True)
    header.update(new)


def run(frame: Frame, context: Context) -> Frame:
    """Stage entry point: solve ``frame`` against its field catalog (``context.catalogs``)."""
    cfg = context.config.astrometry
    path = frame.redpath or frame.rawpath
    catalog = context.catalogs.get(frame.meta.field)
    if catalog is None:
        raise FrameError(path, f"astrometry: no catalog for field {frame.meta.field!r}")
    pixels = frame.image if frame.image is not None else frame.mask
    if frame.sources is None or pixels is None:
        raise FrameError(path, "astrometry: frame has no sources or image (run extract first)")
    shape = pixels.shape
    jyear = 2000.0 + (frame.meta.jd - 2451545.0) / 365.25
    ra, dec = propagate(catalog, jyear)
    mag = np.asarray(catalog["mag"], float)
    bright = mag <= cfg.mag_limit
    guess = initial_wcs(frame.meta, shape, frame.header)
    try:
        wcs, quality = solve(frame.sources, ra[bright], dec[bright], mag[bright], shape, guess,
                             sip_order=cfg.sip_order, nbright=cfg.nbright,
                             match_radius=cfg.match_radius, search_radius=cfg.search_radius,
                             scale_tolerance=cfg.scale_tolerance, min_matches=cfg.min_matches,
                             max_median=cfg.max_median_residual, max_p90=cfg.max_p90_residual)
    except AstrometryError as err:
        frame.quality.update(err.quality)
        raise FrameError(path, f"astrometry: {err.reason}") from None
    frame.wcs = wcs
    frame.header = frame.header if frame.header is not None else afits.Header()
    write_wcs(frame.header, wcs)
    frame.quality.update(quality)
    log.info("%s: WCS from %d stars, median %.3f px, p90 %.3f px", path.name,
             quality["wcs_nmatch"], quality["wcs_median"], quality["wcs_p90"])
    return frame


def inputs(meta: FrameMeta, night: str, context: Context) -> str:
    """The field catalog a frame is matched and measured against (for the ledger)."""
    return context.inputs.get(("catalog", meta.field), "none")
