"""Frame times: barycentric Julian dates (BJD_TDB) without network access.

astropy is configured here never to download IERS tables or leap seconds
(cluster nodes are offline): leap seconds come from the installed
``astropy-iers-data``.  The observatory's position takes UT1 as UTC (< 1 s:
< 0.5 km, < 2 microseconds of light time), so no IERS table is read at all
(:func:`observer_position`).  The solar-system ephemeris is ERFA's, astropy's
built-in one (no download).

The barycentric correction is computed once per frame as the observatory's
barycentric position, then projected on each star's direction with numpy, so
the BJDs of 10^4 stars on a frame cost one dot product.
"""

from __future__ import annotations

from datetime import datetime, timezone

import erfa
import numpy as np
from astropy import units as u
from astropy.coordinates import EarthLocation
from astropy.time import Time
from astropy.utils import iers

LIGHT_SECOND_KM = 299792.458
AU_KM = erfa.DAU / 1000.0


def offline_astropy() -> None:
    """Configure astropy so that no time computation touches the network."""
    iers.conf.auto_download = False
    iers.conf.auto_max_age = None
    iers.conf.iers_degraded_accuracy = "ignore"


offline_astropy()


def site(latitude: float, longitude: float, altitude: float) -> EarthLocation:
    """Observatory from geodetic latitude, east longitude (deg) and altitude (m)."""
    return EarthLocation.from_geodetic(lon=longitude * u.deg, lat=latitude * u.deg,
                                       height=altitude * u.m)


def observer_position(jd_utc, location: EarthLocation) -> tuple[np.ndarray, np.ndarray]:
    """TDB Julian date and barycentric position of the observatory.

    Parameters
    ----------
    jd_utc : float or array, shape (n,)
        UTC Julian dates.
    location : EarthLocation

    Returns
    -------
    (jd_tdb, position) : arrays of shape (n,) and (n, 3); position in light
        seconds, ICRS axes.

    The Earth's barycentric position is ERFA's ``epv00`` (astropy's built-in
    ephemeris); the observatory's geocentric position is rotated from ITRS by
    the IAU 2006/2000A matrix ``c2t06a`` with UT1 taken as UTC and no polar
    motion: < 0.5 km of position, < 2 microseconds of light time, and no IERS
    table is read (astropy's ``get_gcrs_posvel`` reads one per process, ~1 s).
    TDB - TT is ``dtdb`` at the observatory, as astropy computes it.
    """
    utc = Time(np.atleast_1d(np.asarray(jd_utc, dtype=np.float64)), format="jd", scale="utc")
    tt = utc.tt  # leap seconds only
    itrs = np.array([location.x.to_value(u.km), location.y.to_value(u.km),
                     location.z.to_value(u.km)])
    ut = np.mod(utc.jd1 - 0.5 + utc.jd2, 1.0)  # UTC fraction of the day, for dtdb
    tdb2 = tt.jd2 + erfa.dtdb(tt.jd1, tt.jd2, ut, location.lon.to_value(u.rad),
                              float(np.hypot(itrs[0], itrs[1])), float(itrs[2])) / 86400.0
    _, barycentric = erfa.epv00(tt.jd1, tdb2)  # au, au/day
    earth = barycentric["p"] * AU_KM
    to_terrestrial = erfa.c2t06a(tt.jd1, tt.jd2, utc.jd1, utc.jd2, 0.0, 0.0)
    geocentric = np.einsum("nji,j->ni", to_terrestrial, itrs)  # its transpose: ITRS -> GCRS
    return tt.jd1 + tdb2, np.ascontiguousarray((earth + geocentric) / LIGHT_SECOND_KM)


def unit_vectors(ra_deg, dec_deg) -> np.ndarray:
    """ICRS unit vectors, shape (n, 3), of positions in degrees."""
    ra = np.radians(np.atleast_1d(np.asarray(ra_deg, dtype=np.float64)))
    dec = np.radians(np.atleast_1d(np.asarray(dec_deg, dtype=np.float64)))
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=1)


def bjd_tdb(jd_utc, ra_deg, dec_deg, location: EarthLocation) -> np.ndarray:
    """BJD_TDB of frames (UTC JDs) for stars at (ra, dec).

    Returns an array of shape (nframes, nstars).  The light-travel time is
    the observatory's barycentric position projected on the star direction
    (Roemer delay), as astropy's ``Time.light_travel_time`` computes it.
    """
    jd_tdb, pos = observer_position(jd_utc, location)
    delay = pos @ unit_vectors(ra_deg, dec_deg).T
    return jd_tdb[:, None] + delay / 86400.0


def utcnow() -> str:
    """The time now, UTC, ISO 8601 to the second (time stamps of records)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
