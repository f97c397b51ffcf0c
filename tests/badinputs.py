"""A corpus of bad raw frames, made by test code from one good simulated frame.

:func:`write_corpus` writes one file per :class:`Kind` into a night folder
and returns the kinds with what trex is expected to make of each:

* ``bad`` -- recorded at inventory with ``frameinfo.isok`` false and a reason;
* ``failed:<stage>`` -- recorded in ``framestatus`` as failed at that
  per-frame stage, with a reason;
* ``processed`` -- usable despite a flaw (every first-pass stage done).

``reason`` is a regular expression the recorded reason must match (it names
the keyword or the value at fault).  Every file gets its own DATE-OBS (the
good frame's plus a few minutes per kind), so that none is taken for a
duplicate of another except the ``duplicate`` kind, a byte copy of the good
frame.  Frames expected to be processed under another field name get a
catalog of their own (the good field's stars under new object ids), written
into ``cat``.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits as afits
from astropy.time import Time, TimeDelta

from trex.fits import write_image
from trex.project import safe_name

#: OBJECT values of the name kinds
QUOTES = "Kepler's \"field\""
PATH = "../../etc"
SQL = "x'; DROP TABLE frameinfo; --"
NOCAT = "NOCAT-FIELD"


@dataclass(frozen=True)
class Kind:
    """One kind of bad input: its file (relative to the night folder) and the expected outcome."""

    name: str
    filename: str
    expected: str  # "bad", "failed:<stage>" or "processed"
    reason: str    # regex the recorded reason matches ("" when processed)

    @property
    def stage(self) -> str | None:
        return self.expected.split(":", 1)[1] if self.expected.startswith("failed:") else None


@dataclass
class _Source:
    """The good frame a kind is made from, and where its variant goes."""

    path: Path
    header: afits.Header   # without the structural cards
    data: np.ndarray       # uint16, (ny, nx)
    target: Path
    dateobs: str           # unique DATE-OBS of this kind
    cat: Path | None
    field: str


_KINDS: list[tuple[str, str, str, str, Callable[[_Source], None]]] = []


def _kind(name: str, expected: str, reason: str = "", suffix: str = ".fits"):
    def register(write: Callable[[_Source], None]):
        _KINDS.append((name, expected, reason, suffix, write))
        return write
    return register


def _write(src: _Source, data: np.ndarray | None = None, **cards) -> None:
    """The good frame with other pixels and cards (None deletes a card), new DATE-OBS."""
    header = src.header.copy()
    header["DATE-OBS"] = src.dateobs
    for key, value in cards.items():
        key = key.replace("_", "-")
        if value is None:
            header.remove(key, ignore_missing=True)
        else:
            header[key] = value
    write_image(src.target, src.data if data is None else data, header)


def _patch_card(path: Path, keyword: str, offset: int, byte: int) -> None:
    """Set one byte of the card of ``keyword`` (offset within the 80-character card)."""
    raw = bytearray(path.read_bytes())
    start = _card_offset(raw, keyword)
    raw[start + offset] = byte
    path.write_bytes(bytes(raw))


def _card_offset(raw: bytes | bytearray, keyword: str) -> int:
    name = keyword.encode().ljust(8)
    for start in range(0, 2880 * 8, 80):
        if raw[start:start + 8] == name:
            return start
    raise KeyError(keyword)


def _catalog_for(src: _Source, field: str, prefix: str) -> None:
    """The good field's catalog as the catalog of ``field``, object ids prefixed."""
    if src.cat is None:
        return
    lines = (src.cat / f"{safe_name(src.field)}.csv").read_text().splitlines()
    out = [lines[0]] + [prefix + line for line in lines[1:] if line]
    (src.cat / f"{safe_name(field)}.csv").write_text("\n".join(out) + "\n")


# -- the file itself ---------------------------------------------------------------------------

@_kind("empty", "bad", r"^empty file$")
def _empty(src: _Source) -> None:
    src.target.write_bytes(b"")


@_kind("truncated", "bad", r"truncated")
def _truncated(src: _Source) -> None:
    _write(src)
    src.target.write_bytes(src.target.read_bytes()[:2880 * 2 + 1000])


@_kind("not-fits", "bad", r"not a FITS file")
def _not_fits(src: _Source) -> None:
    src.target.write_bytes(b"P5\n512 512\n65535\n" + bytes(range(256)) * 200)


@_kind("garbage-header", "bad", r"^corrupt FITS header: no END card")
def _garbage_header(src: _Source) -> None:
    _write(src)
    raw = bytearray(src.target.read_bytes())
    rng = np.random.default_rng(11)
    raw[80:2880] = rng.integers(0, 256, 2800, dtype=np.uint8).tobytes()
    src.target.write_bytes(bytes(raw))


@_kind("nonascii-comment", "processed")
def _nonascii_comment(src: _Source) -> None:
    _write(src, COMMENT="observer: Jos? Garcia")
    raw = src.target.read_bytes()
    start = raw.find(b"observer: Jos?")
    patched = bytearray(raw)
    patched[start + len("observer: Jos")] = 0xE9  # latin-1 e-acute
    src.target.write_bytes(bytes(patched))


@_kind("nonascii-keyword", "bad", r"non-ASCII byte 0xe9 in header keyword OBJECT")
def _nonascii_keyword(src: _Source) -> None:
    _write(src)
    _patch_card(src.target, "OBJECT", 13, 0xE9)


@_kind("control-keyword", "bad", r"byte 0x07 in header keyword IMAGETYP")
def _control_keyword(src: _Source) -> None:
    _write(src)
    _patch_card(src.target, "IMAGETYP", 12, 0x07)


# -- the image HDU -----------------------------------------------------------------------------

@_kind("no-image", "bad", r"no 2-D image")
def _no_image(src: _Source) -> None:
    header = src.header.copy()
    header["DATE-OBS"] = src.dateobs
    table = afits.BinTableHDU.from_columns([afits.Column("x", "E", array=np.arange(10.0))])
    afits.HDUList([afits.PrimaryHDU(header=header), table]).writeto(src.target)


@_kind("cube", "bad", r"3-D image")
def _cube(src: _Source) -> None:
    _write(src, data=np.stack([src.data] * 3))


@_kind("tiny", "bad", r"8x8 px.*smaller")
def _tiny(src: _Source) -> None:
    _write(src, data=src.data[:8, :8].copy(), BIASSEC=None, TRIMSEC=None)


@_kind("corrupt-fz", "failed:calibrate", r"image data unreadable", suffix=".fits.fz")
def _corrupt_fz(src: _Source) -> None:
    header = src.header.copy()
    header["DATE-OBS"] = src.dateobs
    write_image(src.target, src.data, header, compress=True)
    raw = bytearray(src.target.read_bytes())
    rng = np.random.default_rng(12)
    middle = len(raw) // 2
    raw[middle:middle + 20000] = rng.integers(0, 256, 20000, dtype=np.uint8).tobytes()
    src.target.write_bytes(bytes(raw))


# -- the pixels --------------------------------------------------------------------------------

@_kind("all-nan", "failed:calibrate", r"no finite pixel")
def _all_nan(src: _Source) -> None:
    _write(src, data=np.full(src.data.shape, np.nan, np.float32))


@_kind("all-zero", "failed:calibrate", r"every pixel is 0 ADU")
def _all_zero(src: _Source) -> None:
    _write(src, data=np.zeros_like(src.data))


@_kind("constant", "failed:calibrate", r"every pixel is 1234 ADU")
def _constant(src: _Source) -> None:
    _write(src, data=np.full_like(src.data, 1234))


@_kind("saturated", "failed:calibrate", r"every pixel is at or above SATURATE")
def _saturated(src: _Source) -> None:
    _write(src, data=np.full_like(src.data, 65535))


@_kind("blank-sky", "failed:extract", r"0 sources detected")
def _blank_sky(src: _Source) -> None:
    rng = np.random.default_rng(13)
    level = float(np.median(src.data))
    _write(src, data=rng.normal(level, 15.0, src.data.shape).round().astype(np.uint16))


@_kind("nan-stripes", "processed")
def _nan_stripes(src: _Source) -> None:
    data = src.data.astype(np.float32)
    data[:, 100:116] = np.nan   # a dead column block
    data[300:306, :] = np.nan   # a bad readout band
    _write(src, data=data)


# -- the header keywords -----------------------------------------------------------------------

@_kind("no-dateobs", "bad", r"^missing header keyword DATE-OBS$")
def _no_dateobs(src: _Source) -> None:
    _write(src, DATE_OBS=None)


@_kind("bad-dateobs", "bad", r"^bad DATE-OBS: '2026-13-45T99:00:00'$")
def _bad_dateobs(src: _Source) -> None:
    _write(src, DATE_OBS="2026-13-45T99:00:00")


@_kind("future-dateobs", "bad", r"DATE-OBS 2099-01-01T00:00:00.000 is in the future")
def _future_dateobs(src: _Source) -> None:
    _write(src, DATE_OBS="2099-01-01T00:00:00")


@_kind("ancient-dateobs", "bad", r"DATE-OBS 1970-01-01T00:00:00.000 is before 1980")
def _ancient_dateobs(src: _Source) -> None:
    _write(src, DATE_OBS="1970-01-01T00:00:00")


@_kind("no-exptime", "bad", r"^missing header keyword EXPTIME$")
def _no_exptime(src: _Source) -> None:
    _write(src, EXPTIME=None)


@_kind("zero-exptime", "bad", r"^EXPTIME 0.0 s: an object frame needs a positive exposure time$")
def _zero_exptime(src: _Source) -> None:
    _write(src, EXPTIME=0.0)


@_kind("negative-exptime", "bad", r"^negative EXPTIME: -30.0$")
def _negative_exptime(src: _Source) -> None:
    _write(src, EXPTIME=-30.0)


@_kind("text-exptime", "bad", r"^header keyword EXPTIME is not a number: 'thirty'$")
def _text_exptime(src: _Source) -> None:
    _write(src, EXPTIME="thirty")


@_kind("zero-gain", "bad", r"^GAIN 0 must be positive$")
def _zero_gain(src: _Source) -> None:
    _write(src, GAIN=0.0)


@_kind("unknown-imagetyp", "bad", r"^unknown IMAGETYP 'focus'$")
def _unknown_imagetyp(src: _Source) -> None:
    _write(src, IMAGETYP="focus")


@_kind("object-quotes", "processed")
def _object_quotes(src: _Source) -> None:
    _catalog_for(src, QUOTES, "Q-")
    _write(src, OBJECT=QUOTES)


@_kind("object-path", "processed")
def _object_path(src: _Source) -> None:
    _catalog_for(src, PATH, "P-")
    _write(src, OBJECT=PATH)


@_kind("object-sql", "failed:astrometry", re.escape(f"no catalog for field {SQL!r}"))
def _object_sql(src: _Source) -> None:
    _write(src, OBJECT=SQL)


@_kind("object-dotdot", "bad", r"field name '\.\.' cannot name a catalog file")
def _object_dotdot(src: _Source) -> None:
    _write(src, OBJECT="..")


@_kind("no-object", "bad", r"no OBJECT or FIELD")
def _no_object(src: _Source) -> None:
    _write(src, OBJECT=None)


@_kind("projid-dotdot", "bad", r"PROJID '\.\.' cannot name a folder")
def _projid_dotdot(src: _Source) -> None:
    _write(src, PROJID="..")


@_kind("no-catalog", "failed:astrometry", re.escape(f"no catalog for field {NOCAT!r}"))
def _no_catalog(src: _Source) -> None:
    _write(src, OBJECT=NOCAT)


@_kind("pointing-off", "failed:astrometry", r"no catalog star within .* of the pointing")
def _pointing_off(src: _Source) -> None:
    _write(src, DEC=float(src.header["DEC"]) + 20.0)


@_kind("wrong-pixscale", "failed:astrometry", r"\(guess: scale 40\.00 arcsec/px")
def _wrong_pixscale(src: _Source) -> None:
    _write(src, PIXSCALE=2.0 * float(src.header["PIXSCALE"]))


@_kind("broken-wcs", "processed")
def _broken_wcs(src: _Source) -> None:
    """A header WCS with a singular CD matrix: RA/DEC/PIXSCALE serve instead."""
    _write(src, CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=float(src.header["RA"]),
           CRVAL2=float(src.header["DEC"]), CRPIX1=256.0, CRPIX2=256.0, CD1_1=0.0, CD1_2=0.0,
           CD2_1=0.0, CD2_2=0.0)


@_kind("duplicate", "bad", r"^duplicate of RAW/.+ \(identical file\)$")
def _duplicate(src: _Source) -> None:
    shutil.copyfile(src.path, src.target)


def corpus_kinds() -> list[Kind]:
    """Every kind with its file name and expected outcome, in writing order (nothing written)."""
    return [Kind(name, f"bad-{name}{suffix}", expected, reason)
            for name, expected, reason, suffix, _ in _KINDS]


def write_corpus(night: Path | str, good: Path | str, cat: Path | str | None = None,
                 only: list[str] | None = None) -> list[Kind]:
    """Write the corpus (or the kinds named in ``only``) into ``night``.

    ``good`` is a good raw object frame (16-bit, with RA/DEC/PIXSCALE and
    OBJECT); ``cat`` the project's ``BASE/CAT`` folder, holding the catalog of
    the good frame's field (kinds processed under another field name get a
    catalog of their own there).  Files are named ``bad-<kind>.fits``.
    """
    night, good = Path(night), Path(good)
    with afits.open(good) as hdus:
        data = np.array(hdus[0].data, dtype=np.uint16)
        header = hdus[0].header.copy()
    for key in ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "BZERO", "BSCALE"):
        header.remove(key, ignore_missing=True)
    header.remove("COMMENT", ignore_missing=True, remove_all=True)
    start = Time(header["DATE-OBS"], scale="utc")
    written = []
    for i, (kind, (*_, write)) in enumerate(zip(corpus_kinds(), _KINDS, strict=True)):
        if only is not None and kind.name not in only:
            continue
        dateobs = (start + TimeDelta(120.0 * (i + 1), format="sec")).isot
        write(_Source(good, header, data, night / kind.filename, dateobs,
                      None if cat is None else Path(cat), str(header["OBJECT"])))
        written.append(kind)
    return written


#: the per-frame stages of the first pass (a processed frame has them all done)
FIRST_PASS = ("calibrate", "extract", "astrometry", "photometry")


def recorded_outcome(db, rawpath: str) -> tuple[str, str | None]:
    """What the database says of one raw file: ("bad", reason), ("failed:<stage>",
    reason) of a first-pass stage, ("processed", None) (first pass done; a later stage
    may still fail, e.g. magfit of a field with one frame), ("pending", None) or
    ("missing", None)."""
    rows = db.query("SELECT framekey, isok, reason FROM frameinfo WHERE rawpath = ?", (rawpath,))
    if not rows:
        return "missing", None
    framekey, isok, reason = rows[0]
    if not isok:
        return "bad", reason
    states = {stage: (status, why) for stage, status, why in db.query(
        "SELECT stage, status, reason FROM framestatus WHERE framekey = ?", (framekey,))}
    failed = [(stage, why) for stage, (status, why) in states.items()
              if status == "failed" and stage in FIRST_PASS]
    if failed:
        return f"failed:{failed[0][0]}", failed[0][1]
    if all(states.get(stage, ("",))[0] == "done" for stage in FIRST_PASS):
        return "processed", None
    return "pending", None
