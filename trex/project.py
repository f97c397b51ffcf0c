"""The project folder (pipe-trex layout) and how commands find it.

Every path of a project derives from its root; nothing is global.  An object
id is turned into a light-curve file name only through :func:`lc_filename`,
a night, field or project id only through :func:`safe_name`, so no name can
point outside the project.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from trex.config import Config, load_config, render_toml

CONFIG_NAME = "trex.toml"
DB_NAME = "trex.sqlite"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")
#: an object id that is its own light-curve file name (also limited to PLAIN_BYTES)
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
#: longest object id, in bytes, used as a file name as it is
PLAIN_BYTES = 200
#: longest readable part of the name of an id that is not plain
STEM_CHARS = 60
#: hex digits of the SHA-256 of the id in the name of an id that is not plain (64 bits)
HASH_DIGITS = 16
#: names (case-insensitive, before the first dot) a light curve must not take: the
#: Windows device names and the statistics table kept beside the light curves
RESERVED = frozenset(["con", "prn", "aux", "nul", "lcstats",
                      *(f"{dev}{i}" for dev in ("com", "lpt") for i in range(10))])


class ProjectError(RuntimeError):
    """The project folder is missing or not a trex project."""


def safe_name(name: str) -> str:
    """A file-name-safe form of ``name`` (an object id, night or field).

    Characters other than letters, digits and ``. _ + -`` become ``_``; a name
    that would be empty, ``.`` or ``..`` is rejected, so the result can never
    leave the folder it is joined to.
    """
    text = _UNSAFE.sub("_", str(name))
    if text.strip(".") == "":
        raise ValueError(f"unusable name for a file: {name!r}")
    return text


def lc_filename(objectid: str) -> str:
    """File name of the light curve of ``objectid`` (the id is kept exactly in the file).

    A *plain* id maps to ``<id>.fits``: ASCII letters, digits and ``. _ + -``
    only, starting with a letter or digit, at most :data:`PLAIN_BYTES` bytes,
    and not a :data:`RESERVED` name (``lcstats``, ``con``, ``nul``, ``com1``, ...
    in any letter case, alone or before a dot).  Any other id maps to
    ``<stem>~<hash>.fits``: ``<hash>`` is the first 16 hex digits of the SHA-256
    of the id's UTF-8 bytes, ``<stem>`` the id made readable (accents dropped,
    each run of other characters made one ``_``, leading ``. _ -`` removed, cut
    to 60 characters; ``id`` if nothing is left; ``_`` put in front if it would
    start with a reserved name).  ``~`` never occurs in a plain name, so a plain
    name never equals a hashed one; two ids with one name would need a 64-bit
    SHA-256 collision.  The name never starts with a dot, holds no path
    separator and is at most 83 bytes when hashed.
    """
    if not objectid:
        raise ValueError("an empty object id has no file name")
    raw = objectid.encode("utf-8", "surrogatepass")
    if (_PLAIN.fullmatch(objectid) and len(raw) <= PLAIN_BYTES
            and objectid.split(".")[0].lower() not in RESERVED):
        return f"{objectid}.fits"
    ascii_text = unicodedata.normalize("NFKD", objectid).encode("ascii", "ignore").decode()
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "_", ascii_text).lstrip("._-")[:STEM_CHARS] or "id"
    if stem.split(".")[0].lower() in RESERVED:
        stem = f"_{stem}"
    return f"{stem}~{hashlib.sha256(raw).hexdigest()[:HASH_DIGITS]}.fits"


@dataclass(frozen=True)
class Project:
    """Paths of a trex project rooted at ``root``."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def base(self) -> Path:
        return self.root / "BASE"

    @property
    def cal(self) -> Path:
        return self.base / "CAL"

    @property
    def cat(self) -> Path:
        return self.base / "CAT"

    @property
    def reference_frames(self) -> Path:
        return self.base / "reference-frames"

    @property
    def raw(self) -> Path:
        return self.root / "RAW"

    @property
    def redtemp(self) -> Path:
        return self.root / "REDTEMP"

    def lc(self, projid: str) -> Path:
        return self.root / "LC" / safe_name(projid)

    def red(self, projid: str) -> Path:
        return self.root / "RED" / safe_name(projid)

    def proj(self, user: str | None = None) -> Path:
        return self.root / "PROJ" / safe_name(user or os.environ.get("USER", "trex"))

    def database_url(self, config: Config) -> str:
        return config.database.url or f"sqlite:///{self.root / DB_NAME}"

    def load_config(self, overrides: dict | None = None) -> Config:
        return load_config(self.config_path, overrides)

    def nights(self) -> list[str]:
        """Night folders under RAW/, sorted."""
        if not self.raw.is_dir():
            return []
        return sorted(p.name for p in self.raw.iterdir() if p.is_dir())


def init_project(root: Path | str, config: Config | None = None) -> Project:
    """Create the folder layout and a commented ``trex.toml`` (kept if present)."""
    project = Project(Path(root).resolve())
    for path in (project.cal, project.cat, project.reference_frames, project.raw,
                 project.redtemp, project.root / "LC", project.root / "RED",
                 project.root / "PROJ"):
        path.mkdir(parents=True, exist_ok=True)
    if not project.config_path.exists():
        project.config_path.write_text(render_toml(config))
    return project


def find_project(root: Path | str | None = None, environ: dict | None = None,
                 cwd: Path | None = None) -> Project:
    """Locate the project: ``root``, else ``$TREX_ROOT``, else the nearest parent
    of the working folder holding ``trex.toml``."""
    environ = os.environ if environ is None else environ
    if root is None and environ.get("TREX_ROOT"):
        root = environ["TREX_ROOT"]
    if root is not None:
        path = Path(root).resolve()
        if not (path / CONFIG_NAME).is_file():
            raise ProjectError(f"{path} is not a trex project (no {CONFIG_NAME}; run 'trex init {root}')")
        return Project(path)
    here = (cwd or Path.cwd()).resolve()
    for path in (here, *here.parents):
        if (path / CONFIG_NAME).is_file():
            return Project(path)
    raise ProjectError(f"no {CONFIG_NAME} in {here} or its parents: give ROOT or set TREX_ROOT")
