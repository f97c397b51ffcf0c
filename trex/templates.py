"""TFA templates: bright, well-covered, low-scatter, non-variable stars spread over
the field, chosen once per (projid, field) from a sample of its frames' products
(:class:`ChooseTemplates`) and kept in ``BASE/reference-frames/tfa-<projid>-<field>.npy``
like the other references (chosen again with ``--rebuild-references``).  A night's
detrending (:mod:`trex.detrend`) uses them.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trex.config import Config
from trex.fits import atomic_write
from trex.frame import Context
from trex.lcstats import robust_stats
from trex.phase import Phase, Pieces
from trex.products import load_product
from trex.project import Project, safe_name
from trex.tfa import peak_power, reject_variables, select_templates

log = logging.getLogger(__name__)

TEMPLATE_DTYPE = [("column", "U8"), ("star", "i8"), ("objectid", "U256"), ("ra", "f8"),
                  ("dec", "f8"), ("x", "f8"), ("y", "f8"), ("score", "f8")]


def input_columns(napertures: int) -> list[str]:
    """Magnitude columns that are detrended: ``arm_NNN`` then ``irm_NNN``."""
    return [f"{p}_{i:03d}" for p in ("arm", "irm") for i in range(napertures)]


@dataclass(frozen=True)
class Templates:
    """The TFA template candidates of a group, per input column (``TEMPLATE_DTYPE`` rows,
    best first)."""

    table: np.ndarray

    def of(self, col: str) -> np.ndarray:
        return self.table[self.table["column"] == col]

    def stars(self) -> np.ndarray:
        """Catalog indices of every template star (what the transposition keeps aside)."""
        return np.unique(self.table["star"])


def templates_path(project: Project, projid: str, field: str) -> Path:
    name = "-".join(safe_name(part) for part in (projid, field) if part)
    return project.reference_frames / f"tfa-{name}.npy"


def load_templates(project: Project, groups: list[tuple[str, str]]) -> dict:
    """{(projid, field): Templates} of the groups whose template file exists."""
    out = {}
    for group in groups:
        path = templates_path(project, *group)
        if path.is_file():
            out[group] = Templates(np.load(path, allow_pickle=False))
    return out


def choose_templates(values: dict[str, np.ndarray], rjd: np.ndarray, stars: np.ndarray,
                     config: Config) -> Templates:
    """Template candidates from magnitudes of many stars on sample frames.

    ``values`` maps an input column to magnitudes (nstars, nframes), NaN where
    missing, at times ``rjd`` (nframes,); ``stars`` is a structured array
    (nstars,) with ``star``, ``objectid``, ``ra``, ``dec``, ``x``, ``y``.  Per column:
    candidates by coverage, scatter against the scatter-magnitude trend and
    brightness, spread over the field (:func:`trex.tfa.select_templates`), then
    those whose periodogram peak stands out are dropped (variables); at most
    ``template_pool`` kept, scored by scatter (lower is better).
    """
    pool = config.detrend.template_pool
    found = []
    for col, mags in values.items():
        if not len(mags):
            continue
        st = robust_stats(mags)
        scatter = 1.4826 * st["mad"]
        cover = st["n"] / max(mags.shape[1], 1)
        pick = select_templates(st["median"], scatter, cover, stars["x"], stars["y"], 3 * pool)
        if len(pick):
            quiet = reject_variables(peak_power(rjd, mags[pick] - st["median"][pick, None]))
            pick = pick[quiet][:pool]
        rows = np.zeros(len(pick), dtype=TEMPLATE_DTYPE)
        rows["column"] = col
        for name in ("star", "objectid", "ra", "dec", "x", "y"):
            rows[name] = stars[name][pick]
        rows["score"] = scatter[pick]
        log.info("TFA %s: %d template candidates", col, len(rows))
        found.append(rows)
    return Templates(np.concatenate(found) if found else np.zeros(0, TEMPLATE_DTYPE))


def save_templates(path: Path, templates: Templates) -> None:
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, templates.table, allow_pickle=False)


class ChooseTemplates(Phase):
    """TFA templates of the groups being merged that have none (all of them when the
    references are rebuilt), from a sample of their frames' products.  Under MPI the
    ``arm`` and ``irm`` columns of a group are chosen on two ranks (``FAMILIES``) and
    joined on rank 0: the same templates as chosen together."""

    name = "TFA templates"
    batch = 1
    FAMILIES = ("arm", "irm")

    def __init__(self):
        self.found: dict[tuple[str, str], Templates] = {}
        self.parts = Pieces()  # rank 0: the families of each group so far

    def plan(self, ledger, context: Context) -> list[tuple]:
        groups = sorted({(r[3], r[4]) for r in ledger.read.frames_to_merge()})
        families = self.FAMILIES if context.ranks > 1 else ("",)  # "": every column
        items = []
        for group in groups:
            if group[1] not in context.catalogs or (group in context.templates
                                                    and not context.rebuild):
                continue
            frames = ledger.read.frames_done("photometry", *group)
            n = context.config.detrend.template_frames
            sample = [frames[i] for i in np.unique(np.linspace(0, len(frames) - 1, n).astype(int))]
            items += [(group, family, tuple((k, r) for k, r, _ in sample))
                      for family in families]
        return items

    def work(self, item: tuple, context: Context) -> tuple:
        group, family, sample = item
        catalog = context.catalogs[group[1]]
        columns = [c for c in input_columns(len(context.config.photometry.apertures))
                   if c.startswith(family)]
        values = {c: np.full((len(catalog), len(sample)), np.nan) for c in columns}
        xsum, ysum, count = (np.zeros(len(catalog)) for _ in range(3))
        rjd = np.full(len(sample), np.nan)
        for j, (_, redpath) in enumerate(sample):
            aphot = load_product(context.project.root / redpath, "aphot")
            iphot = (load_product(context.project.root / redpath, "iphot")
                     if any(c[0] == "i" for c in columns) else None)
            if aphot is None:
                continue
            rjd[j] = np.nanmedian(aphot["rjd"])
            star = aphot["star"]
            xsum[star] += aphot["xcc"]
            ysum[star] += aphot["ycc"]
            count[star] += 1
            for col in columns:
                table = aphot if col[0] == "a" else iphot
                if table is None:
                    continue
                good = table[f"{'aiq' if col[0] == 'a' else 'irq'}{col[3:]}"] == 0
                values[col][table["star"][good], j] = table[col][good]
        with warnings.catch_warnings():  # stars or frames without a value give NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            for mags in values.values():  # frame-to-frame zero points out
                mags -= np.nanmedian(mags - np.nanmedian(mags, axis=1, keepdims=True), axis=0)
        seen = np.flatnonzero(count > 0)
        stars = _star_table(catalog, seen, xsum[seen] / count[seen], ysum[seen] / count[seen])
        return group, family, choose_templates({c: v[seen] for c, v in values.items()}, rjd,
                                               stars, context.config)

    def record(self, ledger, result: tuple, context: Context) -> None:
        group, family, templates = result
        parts = self.parts.add(group, family, len(self.FAMILIES) if family else 1, templates)
        if parts is None:
            return
        table = np.concatenate([parts[f].table for f in ("",) + self.FAMILIES if f in parts])
        save_templates(templates_path(context.project, *group), Templates(table))
        ledger.record_phase(self.name, "/".join(group))
        self.found[group] = Templates(table)

    def update(self, ledger, context: Context) -> Context:
        return dataclasses.replace(context, templates={**context.templates, **self.found})

    def label(self, item: tuple) -> str:
        return "/".join(item[0]) + (f" {item[1]}" if item[1] else "")


def _star_table(catalog: np.ndarray, index: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    stars = np.zeros(len(index), dtype=[("star", "i8"), ("objectid", "U256"), ("ra", "f8"),
                                        ("dec", "f8"), ("x", "f8"), ("y", "f8")])
    stars["star"], stars["x"], stars["y"] = index, x, y
    stars["objectid"] = np.asarray(catalog["objectid"])[index]
    stars["ra"], stars["dec"] = catalog["ra"][index], catalog["dec"][index]
    return stars
