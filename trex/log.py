"""Logging set-up: ISO timestamps and the MPI rank on every line.

One line per frame or per batch, suitable for ``tail -f`` of a SLURM log.
"""

from __future__ import annotations

import logging
import sys


class _RankFilter(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


def setup_logging(level: str | int = "INFO", rank: int = 0, stream=None) -> None:
    """Send trex's log lines to ``stream`` (stderr) as
    ``2026-11-29T22:30:00 rank 0 INFO trex.calibrate: message``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_RankFilter(rank))
    handler.setFormatter(logging.Formatter(
        "%(asctime)s rank %(rank)d %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S"))
    logger = logging.getLogger("trex")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def set_rank(rank: int) -> None:
    """Put ``rank`` on the log lines of the handlers :func:`setup_logging` installed."""
    for handler in logging.getLogger("trex").handlers:
        for f in handler.filters:
            if isinstance(f, _RankFilter):
                f.rank = rank
