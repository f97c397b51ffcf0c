"""The ``trex`` command line (SPEC section 4).

Every subcommand finds the project (argument, ``$TREX_ROOT`` or the nearest
parent with ``trex.toml``), builds one frozen configuration from ``trex.toml``
and the command line, and hands both to the library.  Only this module prints.
"""

from __future__ import annotations

import os

# One numpy/BLAS thread per process (per MPI rank) unless the user sets these:
# must happen before numpy is first imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import logging
import sys
from pathlib import Path

from trex import __version__
from trex.config import ConfigError, tomllib
from trex.db import DatabaseError
from trex.errors import Stopped, WriteFault
from trex.log import setup_logging
from trex.project import ProjectError, find_project, init_project
from trex.stages import NAMES
from trex.stages import STAGES as STAGE_LIST

log = logging.getLogger("trex.cli")



class NotAvailable(RuntimeError):
    """A command whose stage is not built yet."""


def _parse_set(items: list[str]) -> dict:
    """``--set section.key=value`` (value in TOML syntax) -> nested dict."""
    out: dict = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value  # a bare string
        out.setdefault(section, {})[key] = parsed
    return out


def _overrides(args) -> dict:
    overrides = _parse_set(getattr(args, "set", None))
    if getattr(args, "db", None):
        overrides.setdefault("database", {})["url"] = args.db
    if getattr(args, "projid", None):
        overrides.setdefault("project", {})["projid"] = args.projid
    return overrides


def _open(args):
    """(project, config, database) for a command working on a project."""
    from trex.db import connect

    project = find_project(args.root)
    config = project.load_config(_overrides(args))
    db = connect(project.database_url(config))
    db.create_schema()
    return project, config, db


def cmd_init(args) -> int:
    project = init_project(args.root)
    print(f"initialized trex project in {project.root}")
    print(f"  configuration: {project.config_path}")
    return 0


def cmd_status(args) -> int:
    from trex.db import redact
    from trex.db.queries import Queries
    from trex.status import format_status, project_status

    project, config, db = _open(args)
    with db:
        status = project_status(project, config, Queries(db), redact(db.url))
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


def cmd_simulate(args) -> int:
    try:
        from trex.simulate import simulate_project
    except ImportError:
        raise NotAvailable("simulate") from None
    root = init_project(args.root).root
    summary = simulate_project(root, nights=args.nights, frames=args.frames, stars=args.stars,
                               size=args.size, seed=args.seed, compress=args.compress,
                               add_night=args.add_night)
    print(summary)
    return 0


def cmd_stages(args) -> int:
    from trex.pipeline import run_project

    if getattr(args, "jobs", 1) > 1:
        _relaunch_under_mpiexec(args.jobs)
    stages = NAMES if args.command == "run" else (args.command,)
    if getattr(args, "stages", None):
        stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
        unknown = [s for s in stages if s not in NAMES]
        if unknown:
            raise ConfigError(f"--stages: unknown stage(s) {', '.join(unknown)}; "
                              f"choose from {', '.join(NAMES)}")
    project = find_project(args.root)
    config = project.load_config(_overrides(args))
    return run_project(project, config, stages,
                       rebuild_references=getattr(args, "rebuild_references", False),
                       retry_failed=getattr(args, "retry_failed", False))


def _relaunch_under_mpiexec(nranks: int) -> None:
    """``trex run --jobs N``: replace this process by ``mpiexec -n N trex run ...``."""
    import shutil
    import sys

    from trex.parallel import launched_under_mpi

    if launched_under_mpi():
        return  # already one of the ranks
    here = Path(sys.executable).parent / "mpiexec"
    mpiexec = str(here) if here.exists() else shutil.which("mpiexec")
    if mpiexec is None:
        raise ConfigError("--jobs needs mpiexec (make install brings the mpich wheel)")
    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip or arg.startswith("--jobs="):
            skip = False
            continue
        if arg == "--jobs":
            skip = True
            continue
        argv.append(arg)
    os.execv(mpiexec, [mpiexec, "-n", str(nranks), sys.executable, "-m", "trex", *argv])


def cmd_report(args) -> int:
    try:
        from trex.report import make_report
    except ImportError:
        raise NotAvailable("report") from None
    from trex.db.queries import Queries

    project, config, db = _open(args)
    with db:
        index = make_report(project, config, Queries(db), out=args.out)
    print(f"report: {index}")
    return 0


def cmd_bench(args) -> int:
    try:
        from trex.bench import main as bench_main
    except ImportError:
        raise NotAvailable("bench") from None
    return bench_main(quick=args.quick, only=args.only, json_path=args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trex", description="Time-series photometry pipeline for wide-field survey cameras.")
    parser.add_argument("--version", action="version", version=f"trex {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def project_command(name, help, func):
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("root", nargs="?", help="project root (default: $TREX_ROOT or nearest "
                                               "parent holding trex.toml)")
        p.add_argument("--db", help="database URL: sqlite:///path or postgresql://user@host:port/db")
        p.add_argument("--projid", help="project id for frames without a PROJID header")
        p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                       help="override a trex.toml value (repeatable)")
        p.set_defaults(func=func)
        return p

    p = sub.add_parser("init", help="create a project folder and its trex.toml")
    p.add_argument("root")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("simulate", help="simulate HATPI-like nights with ground truth")
    p.add_argument("root")
    p.add_argument("--nights", type=int, default=1)
    p.add_argument("--frames", type=int, default=20, help="object frames per night")
    p.add_argument("--stars", type=int, default=2000)
    p.add_argument("--size", type=int, default=1024, help="frame size, px")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--compress", action="store_true", help="write .fits.fz frames")
    p.add_argument("--add-night", action="store_true", help="add a night to an existing simulation")
    p.set_defaults(func=cmd_simulate)

    p = project_command("run", "process the whole project (serial, or under mpiexec)", cmd_stages)
    p.add_argument("--stages", help=f"comma-separated subset of: {', '.join(NAMES)}")
    p.add_argument("--jobs", type=int, default=1,
                   help="run on N local MPI ranks (re-runs itself under mpiexec)")
    p.add_argument("--rebuild-references", action="store_true",
                   help="rebuild the astrometric and photometric references")
    p.add_argument("--retry-failed", action="store_true",
                   help="try the frames that failed again, even if nothing they depend on changed")
    for stage in STAGE_LIST:
        project_command(stage.name, f"{stage.help} (pending frames only)", cmd_stages)
    p = project_command("status", "what is done, what failed and why", cmd_status)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = project_command("report", "diagnostic plots (PNG) and a summary table", cmd_report)
    p.add_argument("--out", help="output folder (default ROOT/PROJ/report)")

    p = sub.add_parser("bench", help="kernel and end-to-end throughput, with ratios to peers")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", nargs="+", metavar="NAME")
    p.add_argument("--json", metavar="FILE")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        return args.func(args)
    except NotAvailable as err:
        print(f"trex {err}: not available yet in trex {__version__}", file=sys.stderr)
        return 3
    except (ConfigError, ProjectError, DatabaseError) as err:
        print(f"trex: error: {err}", file=sys.stderr)
        return 2
    except WriteFault as err:
        print(f"trex: error: {err} (nothing half-written is left: remove the cause and run "
              "the same command again)", file=sys.stderr)
        return 4
    except Stopped as err:
        print(f"trex: {err}; run the same command again to resume", file=sys.stderr)
        return 5

