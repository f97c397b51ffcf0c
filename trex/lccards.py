"""The header cards of a light-curve file (see :mod:`trex.lcformat` for the table).

The table header names the star (:func:`star_cards`), says where its rows came
from (:func:`night_cards`: one ``NIGHTnnn`` card per night) and holds cards
derived from the rows (:func:`derived_cards`: the time frame of the FITS time
standard, the extent, ``NROWS``); the primary header repeats who the star is
(:func:`primary_cards`).

The header keeps the star's ids exactly: ``OBJECTID`` (the pipeline's id) and
``CATID`` (the id in the field catalog).  An id longer than one card goes on
CONTINUE cards; an id with characters a FITS header cannot hold (anything but
printable ASCII: tabs, newlines, accents, ...; or a ``%``) is written
percent-encoded (:func:`id_text`: UTF-8 bytes as ``%XX``, ``%`` as ``%25``) in
both cards, and the card ``IDENC`` says so; :func:`decode_ids` undoes it.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

import numpy as np

from trex import __version__
from trex.fitstable import Header

if TYPE_CHECKING:
    from trex.config import Config


#: cards of the table header that trex.lcformat.write_lightcurve derives from the rows, never copied
_DERIVED = {"TIMESYS", "JDREF", "MJDREF", "MJDREFI", "MJDREFF", "JDREFI", "JDREFF", "BJDREFI",
            "BJDREFF", "TIMEUNIT", "TREFPOS", "TIMEREF", "TIMEPIXR", "TSTART", "TSTOP", "DATE",
            "NROWS", "RJDSTART", "RJDSTOP"}
#: cards that describe the FITS layout (with the column keywords, ``_COLUMN_KEY``)
_STRUCTURAL = {"SIMPLE", "EXTEND", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "PCOUNT",
               "GCOUNT", "TFIELDS", "EXTNAME", "CONTINUE"}
_COLUMN_KEY = re.compile(r"T(TYPE|FORM|UNIT|NULL|SCAL|ZERO|DISP|DIM|CTYP|CUNI|CRPX|CRVL|CDLT|"
                         r"RPOS)\d+$")
#: primary-header keyword <- table-header keyword it repeats
_PRIMARY = (("OBJECT", "OBJECTID"), ("TELESCOP", "TELESCOP"), ("INSTRUME", "INSTRUME"),
            ("OBJECTID", "OBJECTID"), ("RA_OBJ", "RA"), ("DEC_OBJ", "DEC"),
            ("RADESYS", "RADESYS"), ("EQUINOX", "EQUINOX"), ("PROJID", "PROJID"),
            ("FIELD", "FIELD"), ("TREXVER", "TREXVER"))

def is_layout_card(name: str) -> bool:
    """Whether a card describes the FITS layout (structure, columns) rather than the star."""
    return name in _STRUCTURAL or bool(_COLUMN_KEY.match(name))


def star_cards(info: dict, config: Config) -> list[dict]:
    """Table-header cards of a star: identity, catalog position and magnitude, apertures,
    zero point, provenance and observatory.  ``info`` has ``objectid``, ``ra``, ``dec``
    (deg, ICRS), ``mag``, ``projid``, ``field`` and, when known, ``telescope``,
    ``instrument`` and ``site`` ((latitude deg, east longitude deg, altitude m) of the
    frames; else ``config.site``)."""
    site = info.get("site") or (config.site.latitude, config.site.longitude,
                                config.site.altitude)
    cards = [{"name": "OBJECTID", "value": str(info["objectid"]), "comment": "trex object id"},
             {"name": "CATID", "value": str(info.get("catid", info["objectid"])),
              "comment": "id in the field catalog"},
             {"name": "TELESCOP", "value": str(info.get("telescope") or "UNKNOWN"),
              "comment": "telescope"}]
    if info.get("instrument"):
        cards.append({"name": "INSTRUME", "value": str(info["instrument"]),
                      "comment": "camera"})
    cards += [
        {"name": "RA", "value": float(info["ra"]), "comment": "[deg] catalog right ascension"},
        {"name": "DEC", "value": float(info["dec"]), "comment": "[deg] catalog declination"},
        {"name": "RADESYS", "value": "ICRS", "comment": "frame of RA, DEC"},
        {"name": "EQUINOX", "value": 2000.0, "comment": "[yr] equinox of RA, DEC"},
        {"name": "MAG", "value": float(info["mag"]), "comment": "[mag] catalog magnitude"},
        {"name": "PROJID", "value": str(info["projid"]), "comment": "project id"},
        {"name": "FIELD", "value": str(info["field"]), "comment": "field name"},
        {"name": "ZP", "value": float(config.camera.zeropoint), "comment": "[mag] zero point"},
        {"name": "OBSGEO-B", "value": float(site[0]), "comment": "[deg] observatory latitude"},
        {"name": "OBSGEO-L", "value": float(site[1]), "comment": "[deg] observatory E longitude"},
        {"name": "OBSGEO-H", "value": float(site[2]), "comment": "[m] observatory altitude"},
        {"name": "TREXVER", "value": __version__, "comment": "trex version"},
        {"name": "CONFSHA", "value": config.sha, "comment": "configuration hash"},
    ]
    for i, spec in enumerate(config.photometry.apertures):
        cards.append({"name": f"APER_{i:03d}", "value": float(spec.split(":")[0]),
                      "comment": "[pix] aperture radius"})
    return cards


def night_cards(old_header, night_rows: np.ndarray, night_added: np.ndarray,
                night_names: tuple[str, ...], config: Config) -> list[dict]:
    """NIGHTnnn cards, value ``<night> rows=<n> trex=<version> config=<hash>``: per
    contributing night its row count, trex version and configuration hash (of the
    last run that added rows of that night).

    ``night_rows`` and ``night_added`` count, per night of ``night_names``, the new
    rows and those of them whose frame was not in the file before (``old_header``,
    None for a new file).
    """
    nights: dict[str, tuple[int, str]] = {}
    if old_header is not None:
        for rec in old_header.records():
            if rec["name"].startswith("NIGHT") and rec["name"][5:].isdigit():
                night, count, text = str(rec["value"]).split(" ", 2)
                nights[night] = (int(count.split("=")[1]), text)
    for night, touched, extra in zip(night_names, night_rows.tolist(), night_added.tolist()):
        if touched:
            before = nights.get(night, (0, ""))[0]
            nights[night] = (before + extra, f"trex={__version__} config={config.sha}")
    return [{"name": f"NIGHT{i:03d}", "value": f"{night} rows={n} {text}",
             "comment": "provenance"} for i, (night, (n, text)) in enumerate(sorted(nights.items()))]


def _finite_range(values: np.ndarray) -> tuple[float, float] | None:
    """Least and greatest finite value, None if there is none."""
    low, high = float(values.min(initial=np.inf)), float(values.max(initial=-np.inf))
    if np.isfinite(low) and np.isfinite(high):
        return low, high
    finite = values[np.isfinite(values)]  # a NaN among them, or no value
    return (float(finite.min()), float(finite.max())) if len(finite) else None


def _extent(rows: np.ndarray, name: str, previous: Header | None,
            keys: tuple[str, str]) -> tuple[float, float] | None:
    """Least and greatest finite ``name`` of ``rows`` and of the rows before them (their
    range in the ``keys`` cards of ``previous``)."""
    found = _finite_range(rows[name]) if name in rows.dtype.names else None
    if previous is not None and keys[0] in previous:
        old = (float(previous[keys[0]]), float(previous[keys[1]]))
        found = old if found is None else (min(old[0], found[0]), max(old[1], found[1]))
    return found


def derived_cards(rows: np.ndarray, previous: Header | None = None) -> list[dict]:
    """Table cards that follow from the rows (and from the table they are appended to,
    whose header is ``previous``): the time frame, extent and file date."""
    cards = [
        {"name": "TIMESYS", "value": "TDB", "comment": "time scale of bjd, TSTART, TSTOP"},
        {"name": "JDREF", "value": 0.0, "comment": "[d] times are JD (rjd: + TCRVL)"},
        {"name": "TIMEUNIT", "value": "d", "comment": "unit of times"},
        {"name": "TREFPOS", "value": "BARYCENTER", "comment": "where bjd, TSTART, TSTOP hold"},
        {"name": "TIMEREF", "value": "SOLARSYSTEM", "comment": "(OGIP) barycentric times"},
        {"name": "TIMEPIXR", "value": 0.5, "comment": "times mark mid-exposure"},
        {"name": "BJDREFI", "value": 0, "comment": "[d] bjd is the full BJD_TDB"},
        {"name": "BJDREFF", "value": 0.0, "comment": "[d] bjd is the full BJD_TDB"},
    ]
    bjd = _extent(rows, "bjd", previous, ("TSTART", "TSTOP"))
    if bjd:
        cards += [{"name": "TSTART", "value": bjd[0], "comment": "[d] first bjd (mid-exposure)"},
                  {"name": "TSTOP", "value": bjd[1], "comment": "[d] last bjd (mid-exposure)"}]
    now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    cards += [{"name": "DATE", "value": now, "comment": "file written (UTC)"},
              {"name": "NROWS", "value": len(rows) + (previous.get("NROWS", 0) if previous else 0),
               "comment": "frames in this light curve"}]
    rjd = _extent(rows, "rjd", previous, ("RJDSTART", "RJDSTOP"))
    if rjd:
        cards += [{"name": "RJDSTART", "value": rjd[0], "comment": "[d] first rjd (UTC)"},
                  {"name": "RJDSTOP", "value": rjd[1], "comment": "[d] last rjd (UTC)"}]
    return cards


def primary_cards(cards: list[dict], date: str) -> list[dict]:
    """The primary header: who wrote the file and which star it is (repeated from the
    table cards).  No CREATOR: lightkurve would then take the file for a mission's."""
    values = {c["name"]: c for c in cards}
    out = [{"name": "ORIGIN", "value": "trex", "comment": "software that wrote this file"},
           {"name": "DATE", "value": date, "comment": "file written (UTC)"}]
    for key, source in _PRIMARY:
        if source in values:
            out.append({**values[source], "name": key})
    return out


#: header cards holding an object id
ID_CARDS = ("OBJECTID", "CATID")
#: header card present when the id cards are percent-encoded
IDENC = "IDENC"
#: characters an id keeps in its FITS text form: printable ASCII but ``%``
_KEPT = "".join(chr(c) for c in range(32, 127) if chr(c) != "%")


def id_text(objectid: str) -> str:
    """FITS (printable ASCII) text of an object id: characters other than
    printable ASCII, and ``%``, become ``%XX`` per UTF-8 byte; any other id is
    its own text.  :func:`id_from_text` undoes it."""
    return quote(objectid, safe=_KEPT)


def id_from_text(text: str) -> str:
    """The object id whose :func:`id_text` is ``text``."""
    return unquote(text, errors="strict")


def encode_ids(cards: list[dict]) -> list[dict]:
    """Header cards as written: if an id card's value is not its own
    :func:`id_text`, every id card holds its text and ``IDENC`` is added."""
    cards = [c for c in cards if c["name"] != IDENC]
    if all(id_text(str(c["value"])) == c["value"] for c in cards if c["name"] in ID_CARDS):
        return cards
    out = [dict(c, value=id_text(str(c["value"]))) if c["name"] in ID_CARDS else c
           for c in cards]
    return out + [{"name": IDENC, "value": "percent-encoded UTF-8",
                   "comment": "OBJECTID, CATID: %XX is a byte"}]


def decode_ids(header: Header) -> Header:
    """``header`` with the id cards decoded (as :func:`encode_ids` wrote them)."""
    if IDENC not in header:
        return header
    return Header([(r["name"], id_from_text(r["value"]) if r["name"] in ID_CARDS
                    else r["value"], r["comment"]) for r in header.records()
                   if r["name"] != IDENC])


def table_cards(rows: np.ndarray, header: list[dict], previous: Header | None) -> list[dict]:
    """The table header to write with ``rows``: the cards derived from them (and from the
    table they are appended to, headed ``previous``) and the other cards of ``header``,
    ids encoded."""
    derived = derived_cards(rows, previous)
    return encode_ids(derived + [c for c in header if c["name"] not in _DERIVED
                                 and not is_layout_card(c["name"])])


def header_cards(header: Header) -> list[dict]:
    """The cards of a light curve's table header, to write them again (the structural,
    column and derived cards are made anew by :func:`trex.lcformat.write_lightcurve`)."""
    return [{"name": r["name"], "value": r["value"], "comment": r.get("comment", "")}
            for r in header.records() if r.get("name")]
