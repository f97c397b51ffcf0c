"""Field catalogs (SPEC section 3): reading, checking, proper motion, ``objectinfo`` rows.

A catalog is ``BASE/CAT/<field>.csv`` or a ``.fits`` table with columns
``objectid`` (string), ``ra``, ``dec`` (deg, ICRS) and ``mag``, and optionally
``color``, ``pmra``, ``pmdec`` (mas/yr; ``pmra`` includes the cos(dec) factor,
as in Gaia) and ``epoch`` (Julian year of the positions).  Gaia names are
accepted: ``source_id``, ``phot_g_mean_mag``, ``bp_rp``, ``ref_epoch``.
Column names are case-insensitive.

:func:`read_catalog` returns a numpy structured array (:func:`catalog_dtype`),
one row per usable star in file order.  Rules (each problem is logged as one
warning per kind that names the CSV lines, or FITS rows, concerned):

* an objectid is text, kept exactly (``000123`` stays ``000123``, a Gaia
  ``source_id`` keeps all its digits) but for surrounding blanks, which are
  not part of it; tabs, quotes, newlines inside a quoted CSV field, non-ASCII
  letters are all kept;
* a row without an objectid, or whose objectid is not UTF-8 text or holds a
  NUL character, is skipped (a generated id would name a different star
  once the catalog changes);
* a row whose ra or dec is missing, not a number, not finite or out of range
  (RA outside [0, 360], Dec outside [-90, 90]) is skipped; other missing or
  unreadable values become NaN (mag, color, epoch) or 0 (proper motions);
* a CSV line with more or fewer fields than the header is skipped;
* an objectid used by more than one (usable) row: every row is kept.  The
  first keeps the id; the n-th gets ``<id>#n`` (n = 2, 3, ...; the next free
  number if that id is taken in the catalog).  The field ``catid`` holds the
  id as in the catalog for every row (``CATID`` in the light-curve header).

The light-curve file name of an id is :func:`trex.project.lc_filename`.

:class:`Catalogs` is the phase that reads the catalog of every field with
object frames into the run's context (a missing or unreadable catalog is a
recorded failure of that field; its frames then fail astrometry with the
reason, and are tried again once the catalog is there).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import re
from pathlib import Path

import numpy as np
from astropy.table import Table

from trex.errors import PhaseError
from trex.frame import Context
from trex.phase import Phase
from trex.project import Project, lc_filename, safe_name
from trex.wcsfit import inverse_gnomonic

log = logging.getLogger(__name__)

#: numeric catalog columns (float64), after ``objectid`` and ``catid`` (unicode).
NUMERIC = ("ra", "dec", "mag", "color", "pmra", "pmdec", "epoch")

#: accepted alternative column names (lower case) -> trex name.
ALIASES = {"source_id": "objectid", "phot_g_mean_mag": "mag", "bp_rp": "color",
           "ref_epoch": "epoch", "decl": "dec"}

#: value of an optional column that is absent or missing.
DEFAULTS = {"mag": np.nan, "color": np.nan, "pmra": 0.0, "pmdec": 0.0, "epoch": np.nan}

#: catalog file suffixes looked for, in order.
SUFFIXES = (".csv", ".fits", ".fits.gz", ".fit")

#: rows named one by one in a warning (the rest are counted)
LISTED = 20


def catalog_dtype(idchars: int = 1, catidchars: int = 1) -> np.dtype:
    """Row dtype of a catalog: ``objectid``, ``catid`` (unicode) and :data:`NUMERIC`."""
    return np.dtype([("objectid", f"U{max(1, idchars)}"), ("catid", f"U{max(1, catidchars)}")]
                    + [(name, "f8") for name in NUMERIC])


def find_catalog(project: Project, field: str) -> Path:
    """``BASE/CAT/<field>.csv`` (or .fits) of ``project``; FileNotFoundError if none
    exists (also when ``field`` cannot name a file, e.g. ``..``)."""
    try:
        stem = safe_name(field)
    except ValueError:
        raise FileNotFoundError(f"no catalog for field {field!r}: not usable as a file name") from None
    for suffix in SUFFIXES:
        path = project.cat / f"{stem}{suffix}"
        if path.is_file():
            return path
    raise FileNotFoundError(f"no catalog for field {field!r}: none of "
                            f"{', '.join(stem + s for s in SUFFIXES)} in {project.cat}")


def _canonical(name: str) -> str:
    name = name.strip().lower()
    return ALIASES.get(name, name)


def _numbers(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """float64 values of ``texts`` (NaN where empty) and where a text is not a number."""
    try:
        return np.array(texts, dtype=np.float64), np.zeros(len(texts), bool)
    except ValueError:
        pass
    values = np.full(len(texts), np.nan)
    unreadable = np.zeros(len(texts), bool)
    for i, text in enumerate(texts):
        text = text.strip()
        if text:
            try:
                values[i] = float(text)
            except ValueError:
                unreadable[i] = True
    return values, unreadable


class _Raw:
    """A catalog as read, before the checks: ids, numeric columns, row names."""

    def __init__(self, path: Path, names: list[str]):
        self.path = path
        self.names = names  # the file's column names
        self.ids: list[str] = []
        self.columns: dict[str, np.ndarray] = {}
        self.unreadable: dict[str, np.ndarray] = {}
        self.where: list[str] = []  # "line 12" / "row 3" of each row
        self.skipped: list[str] = []  # CSV lines with a wrong number of fields

    def require(self, present: set[str]) -> None:
        missing = [n for n in ("objectid", "ra", "dec", "mag") if n not in present]
        if missing:
            raise ValueError(f"{self.path}: catalog lacks column(s) {', '.join(missing)} "
                             f"(has {', '.join(self.names)})")


def _read_csv(path: Path) -> _Raw:
    """A CSV catalog, by the csv module: quoted fields may hold commas, quotes,
    tabs and newlines; bytes that are not UTF-8 survive as surrogates (and
    such an id is rejected by the checks)."""
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty catalog file")
        raw = _Raw(path, [h.strip() for h in header])
        index: dict[str, int] = {}
        for i, name in enumerate(header):
            index.setdefault(_canonical(name), i)
        raw.require(set(index))
        records, start = [], reader.line_num + 1
        try:
            for record in reader:
                line, start = start, reader.line_num + 1
                if len(record) <= 1 and not "".join(record).strip():
                    continue  # a blank line
                if len(record) != len(header):
                    raw.skipped.append(f"line {line}")
                    continue
                records.append(record)
                raw.where.append(f"line {line}")
        except csv.Error as err:
            raise ValueError(f"{path}, line {reader.line_num}: not readable as CSV: {err}") \
                from err
    raw.ids = [r[index["objectid"]].strip() for r in records]
    for name in NUMERIC:
        if name in index:
            raw.columns[name], raw.unreadable[name] = _numbers([r[index[name]] for r in records])
    return raw


def _read_fits(path: Path) -> _Raw:
    table = Table.read(path)
    raw = _Raw(path, list(table.colnames))
    columns = {}
    for col in table.colnames:
        columns.setdefault(_canonical(col), table[col])
    raw.require(set(columns))
    ids = np.ma.asarray(columns["objectid"])
    if ids.dtype.kind == "S":
        ids = np.ma.array(np.char.decode(ids.filled(b""), "utf-8", "surrogateescape"),
                          mask=np.ma.getmaskarray(ids))
    raw.ids = [str(v).strip() for v in ids.astype(str).filled("")]
    for name in NUMERIC:
        if name in columns:
            data = np.ma.asarray(columns[name])
            if data.dtype.kind in "fiub":
                raw.columns[name] = np.ma.filled(data.astype(np.float64), np.nan)
                raw.unreadable[name] = np.zeros(len(data), bool)
            else:
                text = [str(v) for v in data.astype(str).filled("")]
                raw.columns[name], raw.unreadable[name] = _numbers(text)
    raw.where = [f"row {i + 1}" for i in range(len(table))]
    return raw


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:LISTED])
    return shown + (f" and {len(items) - LISTED} more" if len(items) > LISTED else "")


def _skip(raw: _Raw, keep: np.ndarray, bad: np.ndarray, reason: str) -> None:
    """Drop the rows ``bad`` still kept, with one warning naming them."""
    rows = np.flatnonzero(bad & keep)
    if len(rows):
        log.warning("%s: %d rows skipped (%s): %s", raw.path, len(rows), reason,
                    _listing([raw.where[i] for i in rows]))
        keep[rows] = False


#: what a database cannot store in an id: a NUL, or bytes that were not UTF-8
_BAD_TEXT = re.compile("[\0\udc80-\udcff]")


def _disambiguate(raw: _Raw, rows: np.ndarray) -> list[str]:
    """Object ids of the kept ``rows``: a repeated id gets ``<id>#n`` (n >= 2)."""
    taken = {raw.ids[i] for i in rows}
    first: dict[str, int] = {}
    count: dict[str, int] = {}
    out, renamed = [], []
    for i in rows:
        objectid = raw.ids[i]
        if objectid not in first:
            first[objectid] = i
            out.append(objectid)
            continue
        n = count.get(objectid, 1) + 1
        while f"{objectid}#{n}" in taken:
            n += 1
        count[objectid] = n
        new = f"{objectid}#{n}"
        taken.add(new)
        out.append(new)
        renamed.append(f"{raw.where[i]} {objectid!r} (first on {raw.where[first[objectid]]})"
                       f" -> {new!r}")
    if renamed:
        log.warning("%s: %d rows repeat an objectid, kept under new ids: %s", raw.path,
                    len(renamed), _listing(renamed))
    return out


def _check_names(raw: _Raw, ids: list[str]) -> None:
    """Warn about ids whose light-curve file names differ only in letter case."""
    seen: dict[str, str] = {}
    clashes = []
    for objectid in ids:  # only plain names can clash: the others hold a hash of the id
        first = seen.setdefault(objectid.lower(), objectid)
        if first != objectid and lc_filename(first).lower() == lc_filename(objectid).lower():
            clashes.append(f"{first!r} and {objectid!r}")
    if clashes:
        log.warning("%s: %d objectids have light-curve file names that differ only in letter "
                    "case (one file on a case-insensitive file system): %s", raw.path,
                    len(clashes), _listing(clashes))


def read_catalog(path: Path | str) -> np.ndarray:
    """Read and check a field catalog (rules in the module docstring); returns a
    :func:`catalog_dtype` array, one row per usable star, in file order."""
    path = Path(path)
    raw = _read_csv(path) if path.name.lower().endswith(".csv") else _read_fits(path)
    if raw.skipped:
        log.warning("%s: %d lines skipped (not as many fields as the header): %s", path,
                    len(raw.skipped), _listing(raw.skipped))
    n = len(raw.ids)
    ids = np.array(raw.ids, dtype=object)
    cols = {}
    for name in NUMERIC:
        values = raw.columns.get(name, np.full(n, DEFAULTS.get(name, np.nan)))
        bad = raw.unreadable.get(name, np.zeros(n, bool))
        if name in DEFAULTS and np.any(bad):
            log.warning("%s: %d values of %s are not numbers, taken as missing: %s", path,
                        int(bad.sum()), name, _listing([raw.where[i] for i in np.flatnonzero(bad)]))
        cols[name] = np.where(np.isfinite(values), values, DEFAULTS[name]) \
            if name in DEFAULTS else values
    ra, dec = cols["ra"], cols["dec"]
    keep = np.ones(n, bool)
    _skip(raw, keep, ids == "", "no objectid")
    _skip(raw, keep, np.array([_BAD_TEXT.search(i) is not None for i in raw.ids], bool),
          "objectid is not UTF-8 text or holds a NUL")
    with np.errstate(invalid="ignore"):
        _skip(raw, keep, ~np.isfinite(ra) | ~np.isfinite(dec), "ra/dec missing, not a number or not finite")
        _skip(raw, keep, (ra < 0) | (ra > 360) | (np.abs(dec) > 90), "ra/dec out of range")
    rows = np.flatnonzero(keep)
    objectids = _disambiguate(raw, rows)
    _check_names(raw, objectids)
    catids = [raw.ids[i] for i in rows]
    out = np.zeros(len(rows), dtype=catalog_dtype(max(map(len, objectids), default=1),
                                                  max(map(len, catids), default=1)))
    out["objectid"] = objectids
    out["catid"] = catids
    for name in NUMERIC:
        out[name] = cols[name][rows]
    out["ra"] %= 360.0
    log.debug("%s: %d catalog stars", path, len(out))
    return out


def propagate(catalog: np.ndarray, jyear: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions (ra, dec), deg, at Julian year ``jyear``.

    The proper motion over ``jyear - epoch`` is applied as an offset on the
    tangent plane at each star (exact enough for decades, valid at the poles
    and across RA 0/360).  Stars without an epoch or proper motion stay put.
    """
    dt = jyear - np.asarray(catalog["epoch"], float)
    dt = np.where(np.isfinite(dt), dt, 0.0)
    xi = np.asarray(catalog["pmra"], float) * dt / 3.6e6
    eta = np.asarray(catalog["pmdec"], float) * dt / 3.6e6
    ra, dec = np.asarray(catalog["ra"], float), np.asarray(catalog["dec"], float)
    return inverse_gnomonic(xi, eta, ra, dec)


def star_info(catalog, star: int) -> dict:
    """Ids, position and magnitude of catalog row ``star`` (for a light-curve header);
    ``catid`` is the objectid for a catalog without that field."""
    objectid = str(catalog["objectid"][star])
    has_catid = "catid" in (catalog.dtype.names if hasattr(catalog, "dtype") else catalog)
    return {"objectid": objectid,
            "catid": str(catalog["catid"][star]) if has_catid else objectid,
            "ra": catalog["ra"][star], "dec": catalog["dec"][star], "mag": catalog["mag"][star]}


def objectinfo_columns(catalog: np.ndarray, field: str) -> dict[str, np.ndarray]:
    """Columns of the ``objectinfo`` table (catalog positions at the catalog epoch)."""
    return {
        "objectid": catalog["objectid"].copy(),
        "field": np.full(len(catalog), field),
        "ra": catalog["ra"].copy(),
        "decl": catalog["dec"].copy(),
        "mag": catalog["mag"].copy(),
        "color": catalog["color"].copy(),
        "pmra": catalog["pmra"].copy(),
        "pmdec": catalog["pmdec"].copy(),
        "epoch": catalog["epoch"].copy(),
    }


def catalog_key(path: Path) -> str:
    """What identifies a catalog file's content for the ledger (name, size, mtime)."""
    stat = path.stat()
    return f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}"


class Catalogs(Phase):
    """The catalogs of every field with object frames, into the context and ``objectinfo``."""

    name = "catalog"
    batch = 1

    def __init__(self):
        self.found: dict[str, tuple[np.ndarray, str]] = {}

    def plan(self, ledger, context: Context) -> list[str]:
        return ledger.read.object_fields()

    def work(self, field: str, context: Context) -> tuple[str, np.ndarray, str]:
        try:
            path = find_catalog(context.project, field)
        except FileNotFoundError as err:
            raise PhaseError(field, f"{err}: its frames fail astrometry") from None
        try:
            table = read_catalog(path)
        except ValueError as err:
            raise PhaseError(field, str(err)) from None
        log.info("catalog %s: %d stars", path.name, len(table))
        return field, table, catalog_key(path)

    def record(self, ledger, result: tuple, context: Context) -> None:
        field, table, key = result
        ledger.record_objects(objectinfo_columns(table, field))
        ledger.record_phase(self.name, field)
        self.found[field] = (table, key)

    def update(self, ledger, context: Context) -> Context:
        inputs = {**context.inputs, **{("catalog", f): key for f, (_, key) in self.found.items()}}
        catalogs = {**context.catalogs, **{f: table for f, (table, _) in self.found.items()}}
        return dataclasses.replace(context, catalogs=catalogs, inputs=inputs)
