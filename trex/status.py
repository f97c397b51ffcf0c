"""``trex status``: what is done, what failed and why, from the ledger's queries."""

from __future__ import annotations

from trex.config import Config
from trex.project import Project


def project_status(project: Project, config: Config, read, database: str) -> dict:
    """A JSON-ready summary of the project's frames, stages and light curves.

    ``read`` is the ledger's queries (:class:`trex.db.queries.Queries`),
    ``database`` the database URL to show (password redacted)."""
    nights = {}
    for night, imagetyp, isok, n in read.frame_counts():
        entry = nights.setdefault(night, {"frames": 0, "bad": 0, "types": {}})
        entry["frames"] += n
        entry["bad"] += 0 if isok else n
        kind = imagetyp or "unreadable"
        entry["types"][kind] = entry["types"].get(kind, 0) + n
    stages: dict = {}
    for night, stage, status, n in read.stage_counts():
        stages.setdefault(stage, {}).setdefault(night, {})[status] = n
    failures = [
        {"stage": stage or "inventory", "reason": reason, "frames": n}
        for stage, reason, n in read.failure_counts()
    ]
    failures += [{"stage": phase, "reason": f"{item}: {reason}", "frames": 0}
                 for phase, item, reason in read.phase_failures()]
    lcs = read.lightcurve_counts()
    return {
        "root": str(project.root),
        "database": database,
        "configsha": config.sha,
        "nights": nights,
        "stages": stages,
        "failures": failures,
        "lightcurves": lcs,
    }


def format_status(status: dict) -> str:
    """The summary as text for a terminal."""
    lines = [f"project  {status['root']}", f"database {status['database']}",
             f"config   {status['configsha']}", ""]
    if not status["nights"]:
        lines.append("no frames recorded yet (run 'trex run' or 'trex calibrate')")
    for night, entry in status["nights"].items():
        types = ", ".join(f"{k} {v}" for k, v in sorted(entry["types"].items()))
        lines.append(f"night {night}: {entry['frames']} frames ({types}), {entry['bad']} bad")
        for stage, per_night in status["stages"].items():
            counts = per_night.get(night)
            if counts:
                lines.append(f"    {stage:12s} done {counts.get('done', 0):6d}"
                             f"   failed {counts.get('failed', 0):6d}")
    if status["failures"]:
        lines += ["", "failures:"]
        lines += [f"  {f['frames']:6d}  {f['stage']}: {f['reason']}" for f in status["failures"]]
    if status["lightcurves"]:
        lines += ["", "light curves:"]
        lines += [f"  projid {p}: {n}" for p, n in status["lightcurves"].items()]
    return "\n".join(lines)
