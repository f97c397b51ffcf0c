"""The exceptions that cross trex's error boundary, in one place.

* :class:`FrameError` -- one input (a raw file, its header, its pixels, a
  frame's products) is unusable.  The driver records the stage and the reason
  and goes on with the next frame.
* :class:`PhaseError` -- one item of a project phase (a group's reference, a
  magnitude-fit master) cannot be made from the data at hand.  Recorded with
  its reason like a bad frame; the run goes on.
* :class:`WriteFault` -- a write failed for a cause outside trex (disk full,
  permission, read-only folder, file-size limit).  The run stops cleanly with
  one line naming the path and the cause; nothing half-written is left.

Any other exception is a bug in trex and aborts the whole job with its traceback.

A reason is recorded in the database and printed by ``trex status``, and it
may quote bytes of a broken input: :func:`one_line` makes every reason of a
FrameError and PhaseError one line of printable ASCII of at most
:data:`REASON_LENGTH` characters.
"""

from __future__ import annotations

import re
from pathlib import Path

#: longest reason recorded, characters (longer ones end with "...")
REASON_LENGTH = 300

_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
_SPACES = re.compile(r"\s+")


def one_line(text: str, limit: int = REASON_LENGTH) -> str:
    """``text`` as one line of printable ASCII: whitespace runs become one space,
    other unprintable characters ``?``, and it is cut to ``limit`` characters."""
    text = _UNPRINTABLE.sub("?", _SPACES.sub(" ", str(text))).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


class FrameError(Exception):
    """A frame that cannot be used, with the file and the reason (one printable line)."""

    def __init__(self, path: Path | str, reason: str):
        reason = one_line(reason)
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class PhaseError(Exception):
    """An item of a project phase that cannot be done from the data, with the reason."""

    def __init__(self, item: str, reason: str):
        reason = one_line(reason)
        super().__init__(f"{item}: {reason}")
        self.item = item
        self.reason = reason


class WriteFault(Exception):
    """A write that failed for a cause outside trex (disk full, permission, ...)."""

    def __init__(self, path: Path | str, cause: str):
        super().__init__(f"cannot write {path}: {cause}")
        self.path = str(path)
        self.cause = cause
