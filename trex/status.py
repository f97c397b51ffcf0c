"""``trex status``: what is done, what failed and why, from the database."""

from __future__ import annotations

from trex.config import Config
from trex.db import Database, redact
from trex.project import Project


def project_status(project: Project, config: Config, db: Database) -> dict:
    """A JSON-ready summary of the project's frames, stages and light curves."""
    nights = {}
    for night, imagetyp, isok, n in db.query(
            "SELECT night, imagetyp, isok, count(*) FROM frameinfo "
            "GROUP BY night, imagetyp, isok ORDER BY night"):
        entry = nights.setdefault(night, {"frames": 0, "bad": 0, "types": {}})
        entry["frames"] += n
        entry["bad"] += 0 if isok else n
        kind = imagetyp or "unreadable"
        entry["types"][kind] = entry["types"].get(kind, 0) + n
    stages: dict = {}
    for night, stage, status, n in db.query(
            "SELECT f.night, s.stage, s.status, count(*) FROM framestatus s "
            "JOIN frameinfo f ON f.framekey = s.framekey GROUP BY f.night, s.stage, s.status"):
        stages.setdefault(stage, {}).setdefault(night, {})[status] = n
    failures = [
        {"stage": stage or "inventory", "reason": reason, "frames": n}
        for stage, reason, n in db.query(
            "SELECT s.stage, s.reason, count(*) FROM framestatus s WHERE s.status = 'failed' "
            "GROUP BY s.stage, s.reason "
            "UNION ALL SELECT NULL, reason, count(*) FROM frameinfo WHERE NOT isok "
            "GROUP BY reason ORDER BY 3 DESC")
    ]
    lcs = {projid: n for projid, n in db.query(
        "SELECT projid, count(*) FROM lcinfo GROUP BY projid")}
    return {
        "root": str(project.root),
        "database": redact(project.database_url(config)),
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
