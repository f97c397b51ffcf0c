"""``trex status``: what is done, what is waiting, what failed and why.

From the ledger's queries (:class:`trex.db.queries.Queries`) and a listing
of ``RAW/``: per night, the frames by type, the bad ones, the raw files not
read yet, and per stage (in pipeline order, :data:`trex.stages.NAMES`) the
frames done, failed and waiting; the frame failures grouped by stage and
reason; the project phases that failed (a catalog, a reference, a master);
the light curves per project id.  Without a database (nothing run yet) only
the files on disk are listed.

"Waiting" counts the usable object frames that a stage has still to run on:
it, or a stage it needs or uses, is not done (or failed) under its current
settings, and no stage it needs failed (that holds the frame back until its
settings change or ``--retry-failed``).  Frames whose inputs changed (new
masters, a new reference) are found by ``trex run`` itself and not counted.
"""

from __future__ import annotations

from trex import __version__
from trex.config import Config
from trex.inventory import raw_files
from trex.project import Project
from trex.stages import BY_NAME, NAMES, STAGES, Stage
from trex.times import utcnow


def _by_frame(stage: Stage) -> bool:
    """Whether the ledger keeps the stage's state per frame (all but detrend)."""
    return stage.per_frame or bool(stage.needs)


def _needs(stage: Stage) -> tuple[str, ...]:
    """Every stage ``stage`` needs, directly or not, in pipeline order."""
    found = set(stage.needs)
    for earlier in reversed(STAGES):
        if earlier.name in found:
            found |= set(earlier.needs)
    return tuple(n for n in NAMES if n in found)


def project_status(project: Project, config: Config, read, database: str) -> dict:
    """A JSON-ready summary of the project (see the module doc).

    ``read`` is the ledger's queries, or None when there is no database yet;
    ``database`` the database URL to show (password redacted)."""
    nights: dict = {}
    for night, imagetyp, isok, n in (read.frame_counts() if read is not None else ()):
        entry = nights.setdefault(night, {"frames": 0, "bad": 0, "types": {}, "unread": 0})
        entry["frames"] += n
        entry["bad"] += 0 if isok else n
        kind = imagetyp or "unreadable"
        entry["types"][kind] = entry["types"].get(kind, 0) + n
    scanned = read.raw_nights() if read is not None else {}
    for night in project.nights():  # files not read yet: in folders changed since last read
        if scanned.get(night) == (project.raw / night).stat().st_mtime_ns:
            continue
        known = read.raw_files(night) if read is not None else {}
        for _, path in raw_files(project, night):
            if str(path.relative_to(project.root)) not in known:
                entry = nights.setdefault(night, {"frames": 0, "bad": 0, "types": {},
                                                  "unread": 0})
                entry["unread"] += 1
    nights = dict(sorted(nights.items()))
    stages: dict = {name: {} for name in NAMES}
    for night, stage, status, n in (read.stage_counts() if read is not None else ()):
        stages.setdefault(stage, {}).setdefault(night, {"done": 0, "failed": 0})[status] = n
    for stage in STAGES:
        if not _by_frame(stage) or read is None:
            continue
        needs = {n: config.section_sha(BY_NAME[n].settings) for n in _needs(stage)}
        chain = {n: config.section_sha(BY_NAME[n].settings)
                 for n in (*needs, *stage.uses, stage.name)}
        waiting = read.waiting_frames(needs, chain)
        for night, n in waiting.items():
            stages[stage.name].setdefault(night, {"done": 0, "failed": 0})["pending"] = n
    for stage in STAGES:  # every per-frame stage on every night with object frames
        for night, entry in nights.items():
            if _by_frame(stage) and entry["types"].get("object"):
                stages[stage.name].setdefault(night, {"done": 0, "failed": 0})
    for per_night in stages.values():
        for counts in per_night.values():
            counts.setdefault("pending", 0)
    failures = [{"stage": stage or "inventory", "reason": reason, "frames": int(n)}
                for stage, reason, n in (read.failure_counts() if read is not None else ())]
    phases = [{"phase": phase, "item": item, "reason": reason}
              for phase, item, reason in (read.phase_failures() if read is not None else ())]
    return {
        "root": str(project.root),
        "database": database,
        "configsha": config.sha,
        "trex": __version__,
        "date": utcnow(),
        "nights": nights,
        "stages": stages,
        "failures": failures,
        "phase_failures": phases,
        "lightcurves": read.lightcurve_counts() if read is not None else {},
    }


def _types(entry: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(entry["types"].items()))


def format_status(status: dict) -> str:
    """The summary as text for a terminal."""
    lines = [f"project  {status['root']}", f"database {status['database']}",
             f"config   {status['configsha']}  (trex {status['trex']})", ""]
    if not status["nights"]:
        lines.append("no frames: put raw frames in RAW/<night>/ (see README, Your own data)")
    for night, entry in status["nights"].items():
        text = f"night {night}: {entry['frames']} frames"
        text += f" ({_types(entry)}), {entry['bad']} bad" if entry["frames"] else ""
        if entry["unread"]:
            text += f"; {entry['unread']} raw files not read yet (trex run reads them)"
        lines.append(text)
        rows = [(stage, per_night[night]) for stage, per_night in status["stages"].items()
                if night in per_night]
        if rows:
            lines.append(f"    {'stage':12s} {'done':>7s} {'failed':>7s} {'waiting':>7s}")
            lines += [f"    {stage:12s} {c['done']:7d} {c['failed']:7d} {c['pending']:7d}"
                      for stage, c in rows]
    if status["failures"]:
        lines += ["", "frame failures (frames  stage: reason):"]
        lines += [f"  {f['frames']:6d}  {f['stage']}: {f['reason']}" for f in status["failures"]]
        lines += ["  (a failed frame is tried again when its raw file, catalog, masters or "
                  "settings change; to try every failed frame again now: trex run --retry-failed)"]
    if status["phase_failures"]:
        lines += ["", "phase failures (phase item: reason):"]
        lines += [f"  {f['phase']} {f['item']}: {f['reason']}" for f in status["phase_failures"]]
    if status["lightcurves"]:
        lines += ["", "light curves:"]
        lines += [f"  projid {p}: {n}" for p, n in status["lightcurves"].items()]
    return "\n".join(lines)


def summary_markdown(status: dict) -> list[str]:
    """The run summary that opens ``trex report``'s index (Markdown lines)."""
    lines = ["| | |", "|---|---|", f"| trex | {status['trex']} |",
             f"| configuration hash | `{status['configsha']}` |", f"| written | {status['date']} |",
             f"| database | `{status['database']}` |", f"| project | `{status['root']}` |", ""]
    frames = [(night, e) for night, e in status["nights"].items()]
    if frames:
        lines += ["| night | frames | bad | not read yet |", "|---|---|---|---|"]
        lines += [f"| {night} | {e['frames']} ({_types(e)}) | {e['bad']} | {e['unread']} |"
                  for night, e in frames] + [""]
    totals = {stage: [sum(c[k] for c in per.values()) for k in ("done", "failed", "pending")]
              for stage, per in status["stages"].items() if per}
    if totals:
        lines += ["Frames by stage and state (all nights):", "",
                  "| stage | done | failed | waiting |", "|---|---|---|---|"]
        lines += [f"| {stage} | {d} | {f} | {p} |" for stage, (d, f, p) in totals.items()] + [""]
    if status["failures"]:
        lines += ["Frame failures by stage:", "", "| stage | reason | frames |", "|---|---|---|"]
        lines += [f"| {f['stage']} | {_cell(f['reason'])} | {f['frames']} |"
                  for f in status["failures"]] + [""]
    if status["phase_failures"]:
        lines += ["Phase failures:", "", "| phase | item | reason |", "|---|---|---|"]
        lines += [f"| {f['phase']} | {_cell(f['item'])} | {_cell(f['reason'])} |"
                  for f in status["phase_failures"]] + [""]
    lcs = status["lightcurves"]
    lines.append("Light curves: " + (", ".join(f"{n} (project {p})" for p, n in lcs.items())
                                     if lcs else "none yet") + ".")
    return lines


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")
