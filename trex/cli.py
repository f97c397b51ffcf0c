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
from trex.allocator import keep_freed_memory
from trex.config import ConfigError, tomllib
from trex.db import DatabaseError
from trex.errors import Stopped, WriteFault
from trex.lock import ProjectLocked
from trex.log import setup_logging
from trex.parallel import MPIMismatch
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


def cmd_init(args) -> int:
    project = init_project(args.root)
    print(f"initialized trex project in {project.root}")
    print(f"  configuration: {project.config_path}")
    return 0


def _open_read_only(args, missing_ok: bool = False):
    """(project, config, database or None) for a command that only reads: a SQLite
    database that does not exist is an error, not a new empty file (with
    ``missing_ok``: None when it is the project's default database, not run yet)."""
    from trex.db import connect

    project = find_project(args.root)
    config = project.load_config(_overrides(args))
    url = project.database_url(config)
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ":memory:"
    if path != ":memory:" and not Path(path).is_file():
        if missing_ok and not config.database.url:
            return project, config, None
        raise DatabaseError(f"no database at {path}: run trex run first or check --db")
    db = connect(url)
    db.create_schema()  # a database of an older trex gains the tables it lacks
    return project, config, db


def cmd_status(args) -> int:
    from trex.db import redact
    from trex.db.queries import Queries
    from trex.status import format_status, project_status

    project, config, db = _open_read_only(args, missing_ok=True)
    if db is None:
        url = project.database_url(config)
        status = project_status(project, config, None, f"{url} (not created yet: trex run)")
    else:
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
                               add_night=args.add_night,
                               realism="realistic" if args.realistic else "simple")
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
                       retry_failed=getattr(args, "retry_failed", False),
                       wait=args.wait, nights=_nights(args.nights, project))


def _nights(text: str | None, project) -> tuple[str, ...]:
    """``--nights A,B``: the night folder names, each of which must exist under RAW/."""
    nights = tuple(n.strip() for n in (text or "").split(",") if n.strip())
    missing = [n for n in nights if not (project.raw / n).is_dir()]
    if missing:
        raise ConfigError(f"--nights: no folder {', '.join(str(project.raw / n) for n in missing)}")
    return nights


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
    from trex.db import redact
    from trex.db.queries import Queries

    project, config, db = _open_read_only(args)
    with db:
        index = make_report(project, config, Queries(db), out=args.out,
                            database=redact(db.url))
    print(f"report: {index}")
    return 0


def cmd_bench(args) -> int:
    try:
        from trex.bench import main as bench_main
    except ImportError:
        raise NotAvailable("bench") from None
    return bench_main(quick=args.quick, only=args.only, json_path=args.json)


#: what the exit status of ``trex`` means (shown by ``trex --help`` and ``trex run --help``)
EXIT_STATUSES = """exit status:
  0  done: every frame processed or recorded bad with its reason (see trex status)
  1  a bug in trex: a traceback is printed and the job aborted
  2  cannot start: configuration, project, database, another run holds the
     project lock, MPI mismatch
  3  the command's stage is not available in this version of trex
  4  a write failed (disk full, permission): nothing half-written is left;
     fix the cause and run the same command again
  5  stopped by a signal (SIGTERM, SIGUSR1): run the same command again to resume"""


class _Help(argparse.HelpFormatter):
    """One-line descriptions wrapped, texts of several lines (the exit statuses) as
    written; every option's default in its help (flags: off; an option whose help
    states its default keeps its text)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or "default" in text or action.default is argparse.SUPPRESS:
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return f"{text} (default: off)"
        if action.default is None:
            return text
        return f"{text} (default: %(default)s)"


def log_level(parser: argparse.ArgumentParser, default: str) -> None:
    """``--log-level``, any case, before or after the command (after it, the default is
    SUPPRESS so that it does not undo one given before)."""
    parser.add_argument("--log-level", default=default, type=str.upper,
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="threshold of the log lines on stderr; progress lines and the "
                             "end-of-run summary show up to WARNING, not at ERROR (default: "
                             "INFO)")


class _Commands:
    """The subcommands of a parser: plain, on a project, or writing to one."""

    def __init__(self, parser: argparse.ArgumentParser):
        self.sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(self, name, help, func, description=None, epilog=None):
        p = self.sub.add_parser(name, help=help, description=description or help + ".",
                                epilog=epilog, formatter_class=_Help)
        p.set_defaults(func=func)
        return p

    def project_command(self, name, help, func, description=None, epilog=None):
        p = self.command(name, help, func, description, epilog)
        p.add_argument("root", nargs="?", help="project root (default: $TREX_ROOT, else the "
                                               "nearest parent folder holding trex.toml)")
        p.add_argument("--db", help="database URL, sqlite:///path or "
                                    "postgresql://user@host:port/db (default: [database] url "
                                    "of trex.toml, else sqlite:///ROOT/trex.sqlite)")
        p.add_argument("--projid", help="project id of frames without a PROJID header "
                                        "(default: [project] projid of trex.toml)")
        p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                       help="override a trex.toml value for this command, VALUE in TOML "
                            "syntax (repeatable; default: none)")
        log_level(p, argparse.SUPPRESS)
        return p

    def writing_command(self, name, help, func, description=None, epilog=None):
        p = self.project_command(name, help, func, description, epilog)
        p.add_argument("--wait", action="store_true",
                       help="when another run holds the project, wait for it to end "
                            "(else exit at once with status 2)")
        p.add_argument("--nights", metavar="NIGHT[,NIGHT...]",
                       help="only the raw files and frames of these nights (folders under "
                            "RAW/) (default: every night)")
        return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trex", formatter_class=_Help, epilog=EXIT_STATUSES,
        description="Time-series photometry pipeline for wide-field survey cameras: raw FITS "
                    "frames in RAW/<night>/, calibrated frames, photometry and per-star light "
                    "curves out. 'trex COMMAND --help' describes each command.")
    parser.add_argument("--version", action="version", version=f"trex {__version__}")
    log_level(parser, "INFO")
    commands = _Commands(parser)
    for add in (_init_and_simulate, _run_and_stages, _status_and_report, _bench):
        add(commands)
    return parser


def _init_and_simulate(c: _Commands) -> None:
    p = c.command("init", "create a project folder and its trex.toml", cmd_init,
                  "Create ROOT with the project layout (BASE/CAL, BASE/CAT, BASE/reference-frames, "
                  "RAW, RED, LC, PROJ, REDTEMP) and a trex.toml holding every setting with its "
                  "default and a comment. An existing trex.toml is kept.")
    p.add_argument("root", help="project folder (created if missing)")

    p = c.command("simulate", "simulate HATPI-like nights with ground truth", cmd_simulate,
                  "Write simulated raw nights (bias, dark, flat and object frames) into "
                  "ROOT/RAW/<night>/, the field catalog into ROOT/BASE/CAT/ and the truth into "
                  "ROOT/PROJ/truth/; ROOT is initialised if needed. Then 'trex run ROOT'.")
    p.add_argument("root", help="project folder")
    p.add_argument("--nights", type=int, default=1, help="nights to simulate")
    p.add_argument("--frames", type=int, default=20, help="object frames per night")
    p.add_argument("--stars", type=int, default=2000, help="catalog stars in the field")
    p.add_argument("--size", type=int, default=1024, help="frame width and height, px")
    p.add_argument("--seed", type=int, default=1, help="random seed (same seed: same frames)")
    p.add_argument("--compress", action="store_true", help="write Rice-compressed .fits.fz frames")
    p.add_argument("--realistic", action="store_true",
                   help="the realistic world (Moffat PSF, order-5 distortion, colour "
                        "extinction, clouds, scintillation, faint stars, trails, bleeding, "
                        "pointing errors) instead of the simple one built from trex's own models")
    p.add_argument("--add-night", action="store_true",
                   help="add NIGHTS nights to an existing simulation (same field, stars and "
                        "world; the other options are ignored)")


def _run_and_stages(c: _Commands) -> None:
    p = c.writing_command("run", "process the whole project (serial, or under mpiexec)",
                          cmd_stages, "Run every stage over the project: new raw files are read, "
                          "frames not done are processed, new rows are merged into the light "
                          "curves. Finished work is skipped, so running again resumes.",
                          EXIT_STATUSES)
    p.add_argument("--stages", help=f"comma-separated subset of: {', '.join(NAMES)} "
                                    "(default: all)")
    p.add_argument("--jobs", type=int, default=1,
                   help="run on N local MPI ranks (re-runs itself under mpiexec)")
    p.add_argument("--rebuild-references", action="store_true",
                   help="choose the astrometric reference again and rebuild the magnitude-fit "
                        "master and the photometric reference, then redo what depends on them")
    p.add_argument("--retry-failed", action="store_true",
                   help="try the frames that failed again, even if nothing they depend on changed")
    for stage in STAGE_LIST:
        if not (stage.per_frame or stage.needs):  # detrend: per star, not per frame
            c.writing_command(stage.name, f"{stage.help} (every light curve)", cmd_stages,
                              "Detrend every light curve again from its file (EPD, then TFA) "
                              "and recompute the per-star statistics.", EXIT_STATUSES)
            continue
        c.writing_command(stage.name, f"{stage.help} (pending frames only)", cmd_stages,
                          f"Only the {stage.name} stage, on the frames where it is pending: "
                          f"{stage.help}. Frames whose earlier stages are not done are left for "
                          "a later run.", EXIT_STATUSES)


def _status_and_report(c: _Commands) -> None:
    p = c.project_command("status", "what is done, waiting and failed, and why", cmd_status,
                          "Per night: frames by type, bad frames, raw files not read yet, and per "
                          "stage (in pipeline order) the frames done, failed and waiting; frame "
                          "failures grouped by stage and reason; failed project phases; light "
                          "curves per project id. Reads the database, never creates one.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = c.project_command("report", "diagnostic plots (PNG) and a summary (Markdown)", cmd_report,
                          "Write ROOT/PROJ/report/index.md (a run summary, then RMS vs magnitude "
                          "with the noise floor, a frame preview with the apertures, astrometric "
                          "residuals, difference-image stamps, light curves, per-frame "
                          "diagnostics) and its PNGs. Needs the database of a run.")
    p.add_argument("--out", help="output folder (default: ROOT/PROJ/report)")


def _bench(c: _Commands) -> None:
    from trex.bench import MODULES as BENCHMARKS

    p = c.command("bench", "kernel and end-to-end throughput, with ratios to peers", cmd_bench,
                  "Time trex beside its peers (sep, photutils, scipy, numpy, psycopg2, and "
                  "fitsh when installed) on identical synthetic inputs, single-threaded, and "
                  "print a table (ratio = peer time / trex time, > 1: trex faster) with a "
                  "check that both gave the same answer.")
    p.add_argument("--quick", action="store_true",
                   help="small sizes only: a few minutes (the full set takes ~10 min or more)")
    p.add_argument("--only", nargs="+", metavar="NAME", choices=BENCHMARKS,
                   help=f"run only these benchmarks, of: {', '.join(BENCHMARKS)} (default: all)")
    p.add_argument("--json", metavar="FILE",
                   help="also write the results as JSON to FILE (default: none)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    keep_freed_memory()
    try:
        status = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return status
    except BrokenPipeError:  # trex status | head: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except NotAvailable as err:
        print(f"trex {err}: not available yet in trex {__version__}", file=sys.stderr)
        return 3
    except (ConfigError, ProjectError, DatabaseError, ProjectLocked, MPIMismatch) as err:
        print(f"trex: error: {err}", file=sys.stderr)
        return 2
    except WriteFault as err:
        print(f"trex: error: {err} (nothing half-written is left: remove the cause and run "
              "the same command again)", file=sys.stderr)
        return 4
    except Stopped as err:
        print(f"trex: {err}; run the same command again to resume", file=sys.stderr)
        return 5

