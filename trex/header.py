"""Frame metadata parsed from a FITS header (SPEC section 2).

:func:`parse_header` turns a header into a small typed :class:`FrameMeta`
record; the keyword names come from the ``[header]`` section of the
configuration, camera values from ``[camera]`` override the header.

A header that breaks one of these rules makes the frame unusable
(:class:`trex.errors.FrameError` naming the keyword and its value; the
inventory records the frame bad with that reason):

* IMAGETYP, EXPTIME and DATE-OBS are present; IMAGETYP is one of
  :data:`IMAGE_TYPES` (any case);
* EXPTIME is a finite number >= 0, and > 0 for an object frame (a bias or a
  0 s dark is fine);
* DATE-OBS (with TIME-OBS when it holds only the date) is ISO 8601 and lies
  between :data:`EARLIEST_DATE` (1980-01-01: no CCD frame is older) and now
  + :data:`FUTURE_DAYS` (1 day, for a clock or time-zone slip): a date
  outside is a broken clock, and such a frame would sort into the wrong
  night of every light curve;
* RA and DEC are degrees or sexagesimal, finite, |DEC| <= 90; PIXSCALE,
  GAIN and SATURATE (when given) are > 0, RDNOISE >= 0, SITELAT within
  +-90 deg and SITELONG within +-360 deg; BIASSEC and TRIMSEC are IRAF
  sections;
* no keyword of ``[header]`` had a byte outside printable ASCII (the reader
  replaced it by ``?``, :mod:`trex.fitscards`): a field name or a date with a
  stray byte is not what the observer meant.  Such bytes in a COMMENT, a
  HISTORY or a keyword trex does not read are harmless.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import astuple, dataclass, fields

import numpy as np
from astropy.coordinates import Angle
from astropy.io import fits as afits
from astropy.time import Time, TimeDelta
from erfa import ErfaWarning

from trex.config import Config
from trex.errors import FrameError
from trex.fitscards import replaced_keywords

#: IMAGETYP values (lower case) and the frame type trex gives them.
IMAGE_TYPES = {
    "bias": "bias", "zero": "bias",
    "dark": "dark",
    "flat": "flat", "skyflat": "flat", "domeflat": "flat", "flat field": "flat",
    "object": "object", "light": "object", "science": "object", "light frame": "object",
}

#: DATE-OBS before this is taken as a broken clock (UTC)
EARLIEST_DATE = "1980-01-01T00:00:00"

#: DATE-OBS more than this many days after now is taken as a broken clock
FUTURE_DAYS = 1.0

_EARLIEST = Time(EARLIEST_DATE, scale="utc")

_SECTION = re.compile(r"^\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]$")


def parse_section(text: str) -> tuple[slice, slice]:
    """IRAF section ``[x1:x2,y1:y2]`` (1-based, inclusive) as numpy (rows, cols) slices."""
    match = _SECTION.match(str(text).strip())
    if not match:
        raise ValueError(f"not an IRAF section [x1:x2,y1:y2]: {text!r}")
    x1, x2, y1, y2 = (int(v) for v in match.groups())
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    if x1 < 1 or y1 < 1:
        raise ValueError(f"IRAF sections are 1-based: {text!r}")
    return slice(y1 - 1, y2), slice(x1 - 1, x2)


def format_section(section: tuple[slice, slice] | None) -> str | None:
    """Inverse of :func:`parse_section`: numpy slices as ``[x1:x2,y1:y2]`` (1-based, inclusive)."""
    if section is None:
        return None
    rows, cols = section
    return f"[{cols.start + 1}:{cols.stop},{rows.start + 1}:{rows.stop}]"


def parse_ra(value) -> float:
    """Right ascension in degrees from degrees (number) or sexagesimal hours (text)."""
    if isinstance(value, (int, float)):
        ra = float(value)
    else:
        text = str(value).strip()
        try:
            ra = float(text)
        except ValueError:
            ra = float(Angle(text, unit="hourangle").deg)
    if not np.isfinite(ra):
        raise ValueError(f"right ascension not finite: {value!r}")
    return ra % 360.0


def parse_dec(value) -> float:
    """Declination in degrees from degrees (number) or sexagesimal degrees (text)."""
    if isinstance(value, (int, float)):
        dec = float(value)
    else:
        text = str(value).strip()
        try:
            dec = float(text)
        except ValueError:
            dec = float(Angle(text, unit="deg").deg)
    if not -90.0 <= dec <= 90.0:  # also false for NaN
        raise ValueError(f"declination out of range: {value!r}")
    return dec


@dataclass(frozen=True)
class FrameMeta:
    """What trex needs to know about one raw frame.

    Times are UTC Julian dates of mid-exposure; angles in degrees; sections are
    numpy slices (0-based) or None.
    """

    imagetyp: str
    exptime: float
    dateobs: str
    jd: float
    field: str
    projid: str
    ccd: str
    filter: str
    ra: float | None
    dec: float | None
    pixscale: float | None
    gain: float
    rdnoise: float
    saturate: float
    latitude: float
    longitude: float
    altitude: float
    biassec: tuple[slice, slice] | None
    trimsec: tuple[slice, slice] | None


def _get(header: afits.Header, key: str):
    value = header.get(key)
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


def _number(header, key, path, default=None, required=False) -> float | None:
    value = _get(header, key)
    if value is None:
        if required:
            raise FrameError(path, f"missing header keyword {key}")
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FrameError(path, f"header keyword {key} is not a number: {value!r}") from None
    if not np.isfinite(number):
        raise FrameError(path, f"header keyword {key} is not finite: {value!r}")
    return number


def _shown(value, limit: int = 40) -> str:
    """repr of a header value for a reason, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _observation_start(header, config: Config, path, now: Time | None) -> Time:
    keys = config.header
    date = _get(header, keys.dateobs)
    if date is None:
        raise FrameError(path, f"missing header keyword {keys.dateobs}")
    date = str(date)
    timeobs = _get(header, keys.timeobs)
    if "T" not in date and timeobs is not None:
        date = f"{date}T{timeobs}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ErfaWarning)  # "dubious year": judged below
        try:
            start = Time(date, format="isot" if "T" in date else "iso", scale="utc")
        except ValueError:
            raise FrameError(path, f"bad {keys.dateobs}: {_shown(date)}") from None
        latest = (now or Time.now()) + TimeDelta(FUTURE_DAYS, format="jd")
        if start > latest:
            raise FrameError(path, f"{keys.dateobs} {start.isot} is in the future (after now + "
                                   f"{FUTURE_DAYS:g} day): the camera clock is wrong")
        if start < _EARLIEST:
            raise FrameError(path, f"{keys.dateobs} {start.isot} is before {EARLIEST_DATE[:10]}: "
                                   f"the camera clock is wrong")
    return start


def _check_bytes(header: afits.Header, config: Config, path) -> None:
    """FrameError when a keyword trex reads had bytes replaced (module doc)."""
    replaced = replaced_keywords(header)
    for key in astuple(config.header):
        if key in replaced:
            raise FrameError(path, f"{replaced[key]} in header keyword {key}: "
                                   f"{_shown(header.get(key))}")


def _positive(header, key, path, default=None, strict: bool = True) -> float | None:
    """An optional number that must be > 0 (``strict``) or >= 0."""
    value = _number(header, key, path, default)
    if value is not None and (value <= 0 if strict else value < 0):
        raise FrameError(path, f"{key} {value:g} must be {'positive' if strict else '>= 0'}")
    return value


def _site(header, keys, site, path) -> tuple[float, float, float]:
    latitude = _number(header, keys.sitelat, path, default=site.latitude)
    longitude = _number(header, keys.sitelong, path, default=site.longitude)
    if not -90.0 <= latitude <= 90.0:
        raise FrameError(path, f"{keys.sitelat} {latitude:g} is not a latitude")
    if not -360.0 <= longitude <= 360.0:
        raise FrameError(path, f"{keys.sitelong} {longitude:g} is not a longitude")
    return latitude, longitude, _number(header, keys.sitealt, path, default=site.altitude)


def parse_header(header: afits.Header, config: Config, path="<header>", *,
                 now: Time | None = None) -> FrameMeta:
    """Parse the keywords of SPEC section 2 from ``header``.

    Raises :class:`trex.errors.FrameError` naming the keyword and its value
    when the header breaks a rule of the module doc (``now``, default the
    clock, bounds DATE-OBS).
    """
    keys, camera, site = config.header, config.camera, config.site
    _check_bytes(header, config, path)
    kind = _get(header, keys.imagetyp)
    if kind is None:
        raise FrameError(path, f"missing header keyword {keys.imagetyp}")
    imagetyp = IMAGE_TYPES.get(str(kind).strip().lower())
    if imagetyp is None:
        raise FrameError(path, f"unknown {keys.imagetyp} {_shown(kind)}")
    exptime = _number(header, keys.exptime, path, required=True)
    if exptime < 0:
        raise FrameError(path, f"negative {keys.exptime}: {exptime}")
    if exptime == 0 and imagetyp == "object":
        raise FrameError(path, f"{keys.exptime} {exptime} s: an object frame needs a positive "
                               f"exposure time")
    start = _observation_start(header, config, path, now)
    jd = float(start.jd) + exptime / 2.0 / 86400.0

    ra = dec = None
    if _get(header, keys.ra) is not None and _get(header, keys.dec) is not None:
        try:
            ra, dec = parse_ra(_get(header, keys.ra)), parse_dec(_get(header, keys.dec))
        except ValueError as err:
            raise FrameError(path, f"bad {keys.ra}/{keys.dec}: {err}") from None

    sections = {}
    for name, key in (("biassec", keys.biassec), ("trimsec", keys.trimsec)):
        text = _get(header, key)
        try:
            sections[name] = parse_section(text) if text is not None else None
        except ValueError as err:
            raise FrameError(path, f"bad {key}: {err}") from None

    field = _get(header, keys.object) or _get(header, keys.field) or config.project.field
    projid = _get(header, keys.projid) or config.project.projid
    latitude, longitude, altitude = _site(header, keys, site, path)
    return FrameMeta(
        imagetyp=imagetyp,
        exptime=exptime,
        dateobs=start.isot,
        jd=jd,
        field=str(field or ""),
        projid=str(projid or ""),
        ccd=str(_get(header, keys.ccd) or ""),
        filter=str(_get(header, keys.filter) or ""),
        ra=ra,
        dec=dec,
        pixscale=camera.pixscale or _positive(header, keys.pixscale, path),
        gain=camera.gain or _positive(header, keys.gain, path, default=1.0),
        rdnoise=camera.rdnoise if camera.rdnoise >= 0 else _positive(header, keys.rdnoise, path,
                                                                     0.0, strict=False),
        saturate=camera.saturate or _positive(header, keys.saturate, path, default=65535.0),
        latitude=latitude,
        longitude=longitude,
        altitude=altitude,
        biassec=sections["biassec"],
        trimsec=sections["trimsec"],
    )


#: ``frameinfo`` columns of a FrameMeta field where the names differ
_COLUMN = {"dec": "decl", "latitude": "sitelat", "longitude": "sitelong", "altitude": "sitealt"}
HEADER_SECTIONS = ("project", "header", "camera", "site")


def meta_row(meta: FrameMeta) -> dict:
    """The ``frameinfo`` columns of a parsed header (so that it is parsed once per frame)."""
    row = {_COLUMN.get(f.name, f.name): getattr(meta, f.name) for f in fields(FrameMeta)}
    row["biassec"], row["trimsec"] = format_section(meta.biassec), format_section(meta.trimsec)
    return row


def meta_from_row(row: dict) -> FrameMeta:
    """The FrameMeta of a ``frameinfo`` row written from :func:`meta_row`."""
    values = {f.name: row[_COLUMN.get(f.name, f.name)] for f in fields(FrameMeta)}
    for name in ("biassec", "trimsec"):
        values[name] = parse_section(values[name]) if values[name] else None
    for name in ("ra", "dec", "pixscale"):
        if values[name] is not None and values[name] != values[name]:  # NULL read back as NaN
            values[name] = None
    for name in ("field", "projid", "ccd", "filter", "dateobs", "imagetyp"):
        values[name] = values[name] or ""
    return FrameMeta(**values)
