"""Frame metadata parsed from a FITS header (SPEC section 2).

:func:`parse_header` turns a header into a small typed :class:`FrameMeta`
record; the keyword names come from the ``[header]`` section of the
configuration, camera values from ``[camera]`` override the header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

import numpy as np
from astropy.coordinates import Angle
from astropy.io import fits as afits
from astropy.time import Time

from trex.config import Config
from trex.fits import FrameError

#: IMAGETYP values (lower case) and the frame type trex gives them.
IMAGE_TYPES = {
    "bias": "bias", "zero": "bias",
    "dark": "dark",
    "flat": "flat", "skyflat": "flat", "domeflat": "flat", "flat field": "flat",
    "object": "object", "light": "object", "science": "object", "light frame": "object",
}

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
        return float(value) % 360.0
    text = str(value).strip()
    try:
        return float(text) % 360.0
    except ValueError:
        return float(Angle(text, unit="hourangle").deg) % 360.0


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
    if not -90.0 <= dec <= 90.0:
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


def _observation_start(header, config: Config, path) -> Time:
    keys = config.header
    date = _get(header, keys.dateobs)
    if date is None:
        raise FrameError(path, f"missing header keyword {keys.dateobs}")
    date = str(date)
    timeobs = _get(header, keys.timeobs)
    if "T" not in date and timeobs is not None:
        date = f"{date}T{timeobs}"
    try:
        return Time(date, format="isot" if "T" in date else "iso", scale="utc")
    except ValueError:
        raise FrameError(path, f"bad {keys.dateobs}: {date!r}") from None


def parse_header(header: afits.Header, config: Config, path="<header>") -> FrameMeta:
    """Parse the keywords of SPEC section 2 from ``header``.

    Raises :class:`trex.fits.FrameError` naming the keyword when a required one
    (IMAGETYP, EXPTIME, DATE-OBS) is missing or unreadable.
    """
    keys, camera, site = config.header, config.camera, config.site
    kind = _get(header, keys.imagetyp)
    if kind is None:
        raise FrameError(path, f"missing header keyword {keys.imagetyp}")
    imagetyp = IMAGE_TYPES.get(str(kind).strip().lower())
    if imagetyp is None:
        raise FrameError(path, f"unknown {keys.imagetyp} {kind!r}")
    exptime = _number(header, keys.exptime, path, required=True)
    if exptime < 0:
        raise FrameError(path, f"negative {keys.exptime}: {exptime}")
    start = _observation_start(header, config, path)
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
        pixscale=camera.pixscale or _number(header, keys.pixscale, path),
        gain=camera.gain or _number(header, keys.gain, path, default=1.0),
        rdnoise=camera.rdnoise if camera.rdnoise >= 0 else _number(header, keys.rdnoise, path, 0.0),
        saturate=camera.saturate or _number(header, keys.saturate, path, default=65535.0),
        latitude=_number(header, keys.sitelat, path, default=site.latitude),
        longitude=_number(header, keys.sitelong, path, default=site.longitude),
        altitude=_number(header, keys.sitealt, path, default=site.altitude),
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
