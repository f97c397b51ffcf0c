"""A backfill that meets every kind of bad input goes on to the end (corpus: tests/badinputs.py).

A small simulated night is run once; the corpus is dropped into its night
folder and the project run again.  Every corpus file must end up recorded as
its kind expects, and the light curves of the good frames must not change.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from badinputs import FIRST_PASS, PATH, QUOTES, SQL, recorded_outcome, write_corpus

from trex.cli import main
from trex.db import connect
from trex.lcformat import read_lightcurve
from trex.simulate import simulate_project


def lightcurves(root: Path) -> dict:
    return {p.name: read_lightcurve(p) for p in sorted((root / "LC").rglob("*.fits"))
}


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def backfill(tmp_path_factory):
    base = tmp_path_factory.mktemp("backfill")
    root = base / "proj" / "p"
    main(["init", str(root)])
    simulate_project(root, frames=6, size=512, stars=600, seed=4)
    assert main(["run", str(root)]) == 0
    before = lightcurves(root)
    with connect(f"sqlite:///{root / 'trex.sqlite'}") as db:
        (good,), = db.query("SELECT rawpath FROM frameinfo WHERE imagetyp = 'object' "
                            "ORDER BY jd DESC LIMIT 1")
        goodkeys = {int(r[0]) for r in db.query("SELECT framekey FROM frameinfo")}
    kinds = write_corpus((root / good).parent, root / good, root / "BASE" / "CAT")
    assert main(["run", str(root)]) == 0
    return SimpleNamespace(base=base, root=root, good=good, goodkeys=goodkeys, kinds=kinds,
                           before=before, after=lightcurves(root),
                           url=f"sqlite:///{root / 'trex.sqlite'}")


def _rawpath(backfill, kind) -> str:
    return str(Path(backfill.good).parent / kind.filename)


def test_every_corpus_file_is_recorded_as_its_kind_expects(backfill):
    wrong = []
    with connect(backfill.url) as db:
        for kind in backfill.kinds:
            outcome, reason = recorded_outcome(db, _rawpath(backfill, kind))
            if outcome != kind.expected or (reason or "") and not re.search(kind.reason, reason):
                wrong.append((kind.name, kind.expected, outcome, reason))
    assert wrong == []
    assert len(backfill.kinds) >= 25


#: processed kinds whose frame is alone in its field (its own catalog)
ONE_FRAME_FIELDS = ("object-quotes", "object-path")


def test_processed_kinds_went_all_the_way(backfill):
    processed = [k for k in backfill.kinds if k.expected == "processed"]
    with connect(backfill.url) as db:
        for kind in processed:
            (key,), = db.query("SELECT framekey FROM frameinfo WHERE rawpath = ?",
                               (_rawpath(backfill, kind),))
            stages = {stage: (status, reason) for stage, status, reason in db.query(
                "SELECT stage, status, reason FROM framestatus WHERE framekey = ?", (key,))}
            if kind.name in ONE_FRAME_FIELDS:  # a magnitude-fit master needs 3 frames
                status, reason = stages.pop("magfit")
                assert status == "failed" and "no master reference" in reason, kind.name
                stages["magfit"] = ("done", None)
            assert stages == dict.fromkeys((*FIRST_PASS, "magfit", "subtract", "lightcurves"),
                                           ("done", None)), kind.name
            rows = sum(int(np.sum(t["framekey"] == key)) for t in backfill.after.values())
            assert rows > 100, kind.name


def test_good_light_curves_are_unchanged(backfill):
    assert len(backfill.before) > 200
    for name, old in backfill.before.items():
        new = backfill.after[name]
        kept = new[np.isin(new["framekey"], old["framekey"])]
        assert len(kept) == len(old) and kept.colnames == old.colnames
        for column in old.colnames:
            a, b = np.asarray(old[column]), np.asarray(kept[column])
            same = np.array_equal(a, b, equal_nan=True) if a.dtype.kind == "f" else np.array_equal(a, b)
            assert same, f"{name}: column {column} changed"


def test_new_rows_come_only_from_processed_corpus_frames(backfill):
    with connect(backfill.url) as db:
        processed = {int(db.query("SELECT framekey FROM frameinfo WHERE rawpath = ?",
                                  (_rawpath(backfill, k),))[0][0])
                     for k in backfill.kinds if k.expected == "processed"}
    new = set()
    for table in backfill.after.values():
        new |= {int(k) for k in table["framekey"]} - backfill.goodkeys
    assert new == processed


def test_field_names_stay_data(backfill):
    """Quotes, path separators and SQL in OBJECT reach the database verbatim and
    never a path outside the project."""
    root = backfill.root
    assert [p.name for p in backfill.base.rglob("*") if root not in (p, *p.parents)] == ["proj"]
    assert {p.name for p in root.iterdir()} == {"trex.toml", "trex.sqlite", "trex.lock", "BASE",
                                                "LC", "PROJ", "RAW", "RED", "REDTEMP"}
    assert {p.name for p in (root / "BASE").iterdir()} == {"CAL", "CAT", "reference-frames"}
    with connect(backfill.url) as db:
        fields = {r[0] for r in db.query("SELECT DISTINCT field FROM frameinfo")}
        assert {QUOTES, PATH, SQL} <= fields
        assert db.query("SELECT count(*) FROM frameinfo")[0][0] > 50
    by_field = {}
    for table in backfill.after.values():
        by_field.setdefault(table.meta["FIELD"], []).append(table.meta["OBJECTID"])
    assert all(o.startswith("Q-") for o in by_field[QUOTES])
    assert all(o.startswith("P-") for o in by_field[PATH])
    assert len(by_field[QUOTES]) > 100 and len(by_field[PATH]) > 100


def test_status_prints_every_reason_on_one_line(backfill, capsys):
    assert main(["status", str(backfill.root)]) == 0
    out = capsys.readouterr().out
    assert all(line.isascii() and line.isprintable() for line in out.splitlines())
    assert "duplicate of" in out and "no catalog for field" in out


def test_a_third_run_changes_nothing(backfill):
    with connect(backfill.url) as db:
        before = [db.query(f"SELECT count(*) FROM {t}")[0][0] for t in ("frameinfo", "framestatus")]
    stamps = {p: p.stat().st_mtime_ns for p in (backfill.root / "LC").rglob("*.fits")}
    assert main(["run", str(backfill.root)]) == 0
    with connect(backfill.url) as db:
        after = [db.query(f"SELECT count(*) FROM {t}")[0][0] for t in ("frameinfo", "framestatus")]
    assert after == before
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
