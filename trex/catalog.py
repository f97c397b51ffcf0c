"""Field catalogs (SPEC section 3): reading, proper motion, ``objectinfo`` rows.

A catalog is ``BASE/CAT/<field>.csv`` or a ``.fits`` table with columns
``objectid`` (string), ``ra``, ``dec`` (deg, ICRS) and ``mag``, and optionally
``color``, ``pmra``, ``pmdec`` (mas/yr; ``pmra`` includes the cos(dec) factor,
as in Gaia) and ``epoch`` (Julian year of the positions).  Gaia names are
accepted: ``source_id``, ``phot_g_mean_mag``, ``bp_rp``, ``ref_epoch``.
Column names are case-insensitive.

:func:`read_catalog` returns a numpy structured array with the fields of
:data:`CATALOG_DTYPE` (objectid as a unicode string).  Missing optional values
become NaN (color, epoch, mag) or 0 (proper motions); rows whose coordinates
are missing, non-finite or out of range (RA outside [0, 360], Dec outside
[-90, 90]), rows without an objectid and repeated objectids are dropped with
one logged warning per reason.

:class:`Catalogs` is the phase that reads the catalog of every field with
object frames into the run's context (a missing or unreadable catalog is a
recorded failure of that field; its frames then fail astrometry with the
reason, and are tried again once the catalog is there).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
from astropy.table import Table

from trex.errors import PhaseError
from trex.frame import Context
from trex.phase import Phase
from trex.project import Project, safe_name
from trex.wcsfit import inverse_gnomonic

log = logging.getLogger(__name__)

#: numeric catalog columns (float64); objectid comes first, as a unicode string.
NUMERIC = ("ra", "dec", "mag", "color", "pmra", "pmdec", "epoch")

#: accepted alternative column names (lower case) -> trex name.
ALIASES = {"source_id": "objectid", "phot_g_mean_mag": "mag", "bp_rp": "color",
           "ref_epoch": "epoch", "decl": "dec"}

#: value of an optional column that is absent or masked.
DEFAULTS = {"mag": np.nan, "color": np.nan, "pmra": 0.0, "pmdec": 0.0, "epoch": np.nan}

#: catalog file suffixes looked for, in order.
SUFFIXES = (".csv", ".fits", ".fits.gz", ".fit")


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


def _read_table(path: Path) -> Table:
    if path.name.lower().endswith(".csv"):
        with open(path) as fh:
            names = [n.strip() for n in fh.readline().split(",")]
        ids = {n: str for n in names if ALIASES.get(n.lower(), n.lower()) == "objectid"}
        return Table.read(path, format="ascii.csv", converters=ids)
    return Table.read(path)


def _column(table: Table, name: str) -> np.ndarray | None:
    """Column ``name`` (or an alias of it); None if absent.

    Numbers come back as float64 with masked values NaN, the objectid as
    stripped unicode strings with masked values empty."""
    for col in table.colnames:
        if ALIASES.get(col.lower(), col.lower()) == name:
            data = table[col]
            if name == "objectid":
                values = np.ma.filled(np.ma.asarray(data).astype(str), "")
                return np.char.strip(np.asarray(values, dtype=str))
            return np.ma.filled(np.ma.asarray(data, dtype=float), np.nan)
    return None


def _reject(keep: np.ndarray, bad: np.ndarray, reason: str, path: Path) -> None:
    nbad = int(np.count_nonzero(bad & keep))
    if nbad:
        log.warning("%s: %d rows rejected: %s", path, nbad, reason)
        keep &= ~bad


def read_catalog(path: Path | str) -> np.ndarray:
    """Read a field catalog; returns a structured array (objectid, ra, dec, mag,
    color, pmra, pmdec, epoch), one row per usable star, in file order."""
    path = Path(path)
    table = _read_table(path)
    ids = _column(table, "objectid")
    cols = {name: _column(table, name) for name in NUMERIC}
    missing = [name for name, col in (("objectid", ids), ("ra", cols["ra"]), ("dec", cols["dec"]),
                                      ("mag", cols["mag"])) if col is None]
    if missing:
        raise ValueError(f"{path}: catalog lacks column(s) {', '.join(missing)} "
                         f"(has {', '.join(table.colnames)})")
    n = len(table)
    for name, default in DEFAULTS.items():
        values = cols[name] if cols[name] is not None else np.full(n, default)
        cols[name] = np.where(np.isfinite(values), values, default)
    ra, dec = cols["ra"], cols["dec"]
    keep = np.ones(n, bool)
    with np.errstate(invalid="ignore"):
        _reject(keep, ~np.isfinite(ra) | ~np.isfinite(dec), "missing or non-finite ra/dec", path)
        _reject(keep, (ra < 0) | (ra > 360) | (np.abs(dec) > 90), "ra/dec out of range", path)
    _reject(keep, ids == "", "no objectid", path)
    kept = np.flatnonzero(keep)
    _, first = np.unique(ids[kept], return_index=True)
    repeated = keep.copy()
    repeated[kept[first]] = False
    _reject(keep, repeated, "repeated objectid (first usable row kept)", path)
    out = np.zeros(int(keep.sum()), dtype=[("objectid", ids.dtype)] + [(c, "f8") for c in NUMERIC])
    out["objectid"] = ids[keep]
    for name in NUMERIC:
        out[name] = cols[name][keep]
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
