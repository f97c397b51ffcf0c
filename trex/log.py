"""Logging set-up: ISO timestamps and the MPI rank on every line.

One line per frame or per batch, suitable for ``tail -f`` of a SLURM log::

    2026-11-29T22:30:00 rank 0 INFO trex.calibrate: message

Levels: ``--log-level`` (DEBUG, INFO, WARNING, ERROR) sets the threshold of
every ``trex.*`` logger but :data:`PROGRESS`, the progress lines of each
phase and the end-of-run summary, which keep their own level: they are shown
at DEBUG, INFO and WARNING (a batch job run at WARNING still says how far it
got) and hidden at ERROR.  ``[run] progress_seconds`` sets their interval.

Third-party warnings never reach stderr as bare text: Python warnings
(astropy, matplotlib, numpy, ...) become one ``trex.warnings`` line each,
the first time a warning is seen from a given place (repeats are counted,
not shown); astropy's logger and any other library's log lines of WARNING
and above (e.g. matplotlib's) are written in the same format.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

#: the logger of progress lines and of the end-of-run summary (shown up to WARNING)
PROGRESS = "trex.progress"
#: the logger that third-party warnings are written to
WARNINGS = "trex.warnings"

_seen: dict[tuple, int] = {}


class _RankFilter(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


def setup_logging(level: str | int = "INFO", rank: int = 0, stream=None) -> None:
    """Send trex's log lines to ``stream`` (stderr) as
    ``2026-11-29T22:30:00 rank 0 INFO trex.calibrate: message``, with
    :data:`PROGRESS` shown at any ``level`` up to WARNING, and capture
    Python warnings and astropy's log into the same lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_RankFilter(rank))
    handler.setFormatter(logging.Formatter(
        "%(asctime)s rank %(rank)d %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S"))
    logger = logging.getLogger("trex")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper() if isinstance(level, str) else level)
    logger.propagate = False
    threshold = logger.level
    logging.getLogger(PROGRESS).setLevel(logging.INFO if threshold <= logging.WARNING
                                         else threshold)
    _capture_warnings(handler, max(threshold, logging.WARNING))


def _capture_warnings(handler: logging.Handler, level: int) -> None:
    """Python warnings -> :data:`WARNINGS` lines; astropy's logger and the root
    logger (other libraries) -> ``handler`` at ``level``."""
    from astropy import log as astropy_log  # astropy is loaded by trex anyway

    astropy_log.handlers[:] = [handler]
    astropy_log.setLevel(level)
    astropy_log.propagate = False
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "trex", False)]
    other = logging.StreamHandler(handler.stream)
    other.trex = True
    other.setLevel(level)
    for f in handler.filters:
        other.addFilter(f)
    other.setFormatter(handler.formatter)
    root.addHandler(other)
    _seen.clear()
    warnings.showwarning = _show_warning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning``: the first warning from a place becomes a log line."""
    key = (category, str(message), filename, lineno)
    _seen[key] = _seen.get(key, 0) + 1
    if _seen[key] > 1:
        return
    parts = Path(filename).parts
    cut = max((i + 1 for i, p in enumerate(parts) if p in ("site-packages", "dist-packages")),
              default=max(len(parts) - 3, 0))
    where = "/".join(parts[cut:])  # e.g. astropy/io/fits/card.py
    logging.getLogger(WARNINGS).warning("%s: %s (%s:%d; shown once)", category.__name__,
                                        message, where, lineno)


def set_rank(rank: int) -> None:
    """Put ``rank`` on the log lines of the handlers :func:`setup_logging` installed."""
    for handler in logging.getLogger("trex").handlers:
        for f in handler.filters:
            if isinstance(f, _RankFilter):
                f.rank = rank
