"""FITS input and output with fitsio.

Reading returns native-byte-order float arrays (BZERO/BSCALE applied) and an
``astropy.io.fits.Header``; ``.fits.fz`` tile-compressed frames are read
transparently (Rice-compressed integers by :mod:`trex.rice`, the rest by
cfitsio).  Every way a file can be unreadable raises :class:`FrameError` with
the file and a human reason.  Writes go to a temporary file in the same
folder and are moved into place with ``os.replace``, so a reader never sees a
half-written frame.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fitsio
import numpy as np
from astropy.io import fits as afits

from trex.errors import FrameError, writing
from trex.fitscards import BLOCK, CardError, parse_cards
from trex.rice import RiceImage

__all__ = ["FrameError", "read_header", "read_image", "write_image", "atomic_write", "atomic_path",
           "copy_file"]

#: header keywords that describe the stored array, not the data; never copied.
_STRUCTURAL = {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "BZERO", "BSCALE",
               "XTENSION", "PCOUNT", "GCOUNT", "CHECKSUM", "DATASUM", "EXTNAME"}

#: keywords of a tile-compressed HDU that describe the compression (the image's
#: own structural keywords are stored under these names); never copied.
_COMPRESSION = re.compile(r"^(ZIMAGE|ZCMPTYPE|ZBITPIX|ZNAXIS\d*|ZTILE\d+|ZNAME\d+|ZVAL\d+|ZMASKCMP"
                          r"|ZSIMPLE|ZTENSION|ZEXTEND|ZBLOCKED|ZPCOUNT|ZGCOUNT|ZHECKSUM|ZDATASUM"
                          r"|ZQUANTIZ|ZDITHER0|ZBLANK|TTYPE\d+|TFORM\d+|TUNIT\d+|TDIM\d+|TFIELDS"
                          r"|THEAP)$")

#: a primary header longer than this many 2880-byte blocks is taken as corrupt
MAX_HEADER_BLOCKS = 100

#: the comment cfitsio adds to every primary header; not worth copying along.
_FITS_BOILERPLATE = ("FITS (Flexible Image Transport System)", "and Astrophysics', volume 376")


@contextmanager
def cfitsio_errors(path: Path | str, what: str):
    """Turn the errors cfitsio reports on a broken file into FrameError("<what>: <message>").

    fitsio raises OSError with cfitsio's messages, or UnicodeDecodeError when
    a message quotes bytes of the file that are not text."""
    try:
        yield
    except OSError as err:
        raise FrameError(path, f"{what}: {err}") from None
    except UnicodeDecodeError:
        raise FrameError(path, f"{what}: cfitsio rejected it (its message quotes non-text "
                               f"bytes of the file)") from None


def _image_hdu(fits: fitsio.FITS, path: Path) -> int:
    """Index of the first HDU holding a 2-D image (FrameError naming what was found instead)."""
    other = None
    with cfitsio_errors(path, "corrupt or truncated FITS"):
        hdus = list(fits)  # reads the structure of every HDU
    for i, hdu in enumerate(hdus):
        dims = hdu.get_dims() if hdu.get_exttype() == "IMAGE_HDU" else None
        if dims and len(dims) == 2:
            return i
        if dims and other is None:
            other = (i, dims)
    if other is not None:
        i, dims = other
        raise FrameError(path, f"{len(dims)}-D image ({'x'.join(str(d) for d in reversed(dims))}"
                               f" px) in HDU {i}: trex needs a 2-D frame")
    raise FrameError(path, "no 2-D image in the primary HDU or any image extension")


def _structural(name: str, compressed: bool) -> bool:
    name = name.upper()
    return name in _STRUCTURAL or bool(compressed and _COMPRESSION.match(name))


def _to_header(cards: list[tuple[str, object, str]], notes: list[str] = (),
               compressed: bool = False) -> afits.Header:
    """astropy Header of (keyword, value, comment) cards without the structural
    ones (and the compression ones of a tile-compressed HDU); ``notes`` become
    HISTORY cards."""
    header = afits.Header()
    for name, value, comment in cards:
        if not name or _structural(name, compressed):
            continue
        if name.upper() == "COMMENT":
            text = str(value if value is not None else "")
            if not text.strip().startswith(_FITS_BOILERPLATE):
                header.add_comment(text)
            continue
        if name.upper() == "HISTORY":
            header.add_history(str(value if value is not None else ""))
            continue
        if isinstance(value, str):
            value = value.strip()
        header[name] = (value, comment or "")
    for note in notes:
        header.add_history(note)
    return header


def _cards(hdu, path: Path) -> tuple[list[tuple[str, object, str]], list[str]]:
    """(cards, notes) of a fitsio HDU's header parsed from the file's bytes
    (:func:`trex.fitscards.parse_cards`)."""
    offsets = hdu.get_offsets()
    with open(path, "rb") as fh:
        fh.seek(offsets["header_start"])
        raw = fh.read(offsets["data_start"] - offsets["header_start"])
    try:
        return parse_cards(raw)
    except CardError as err:
        raise FrameError(path, f"corrupt FITS header: {err}") from None


def _compressed(hdu) -> bool:
    return getattr(hdu, "is_compressed", lambda: False)()


def rice_of(hdu, path: Path, cards: list | None = None) -> RiceImage | None:
    """The :class:`trex.rice.RiceImage` of a fitsio image HDU (its header ``cards``, read
    when not given), None when the kernel does not decode its layout."""
    if not _compressed(hdu):
        return None
    cards = _cards(hdu, path)[0] if cards is None else cards
    return RiceImage.of(path, hdu.get_offsets()["data_start"], cards)


def _read_header(hdu, path: Path) -> afits.Header:
    """Header of a fitsio HDU parsed from the file's bytes (:mod:`trex.fitscards`)."""
    return _to_header(*_cards(hdu, path), _compressed(hdu))


def read_header(path: Path | str) -> afits.Header:
    """Header of the frame's image HDU (no pixel data read)."""
    path = Path(path)
    with _open(path) as fits:
        return _read_header(fits[_image_hdu(fits, path)], path)


def read_image(path: Path | str, hdu: int | str | None = None,
               dtype: type = np.float32) -> tuple[np.ndarray, afits.Header]:
    """Read an image and its header.

    Parameters
    ----------
    path : FITS or ``.fits.fz`` file.
    hdu : HDU index or EXTNAME; default the first HDU holding a 2-D image.
    dtype : float32 (default) or float64; the result is native byte order and
        C-contiguous, with BZERO/BSCALE applied.

    Returns
    -------
    (image, header) : ndarray of shape (ny, nx), astropy Header
    """
    path = Path(path)
    with _open(path) as fits:
        index = _image_hdu(fits, path) if hdu is None else hdu
        try:
            ext = fits[index]
        except (OSError, ValueError, KeyError, IndexError):
            raise FrameError(path, f"no HDU {index!r}") from None
        cards, notes = _cards(ext, path)
        rice = rice_of(ext, path, cards)
        data = None if rice is None else rice.rows(0, rice.shape[0], dtype)
        if data is None:
            with cfitsio_errors(path, "image data unreadable (truncated or corrupt)"):
                data = ext.read()
        header = _to_header(cards, notes, _compressed(ext))
    if data is None or data.ndim != 2:
        raise FrameError(path, f"HDU {index!r} holds no 2-D image")
    out_dtype = np.float64 if data.dtype == np.float64 else np.dtype(dtype)
    return np.ascontiguousarray(data, dtype=np.dtype(out_dtype).newbyteorder("=")), header


class _open:
    """Context manager opening a FITS file for reading, mapping failures to FrameError."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> fitsio.FITS:
        if not self.path.is_file():
            raise FrameError(self.path, "file not found")
        if self.path.stat().st_size == 0:
            raise FrameError(self.path, "empty file")
        _check_primary_header(self.path)
        with cfitsio_errors(self.path, "corrupt or truncated FITS"):
            self.fits = fitsio.FITS(str(self.path))
        return self.fits

    def __exit__(self, *exc) -> None:
        self.fits.close()


def _check_primary_header(path: Path) -> None:
    """FrameError unless ``path`` starts with a SIMPLE card and its primary
    header ends (END card) within :data:`MAX_HEADER_BLOCKS` blocks."""
    with open(path, "rb") as fh:
        for n in range(MAX_HEADER_BLOCKS):
            block = fh.read(BLOCK)
            if n == 0 and not block.startswith(b"SIMPLE  ="):
                raise FrameError(path, "not a FITS file (no SIMPLE card)")
            if any(block[i:i + 8] == b"END     " for i in range(0, len(block) - 79, 80)):
                return
            if len(block) < BLOCK:
                raise FrameError(path, f"truncated or corrupt FITS header: no END card in "
                                       f"the {fh.tell()} bytes of the file")
    raise FrameError(path, f"corrupt FITS header: no END card in its first {MAX_HEADER_BLOCKS} "
                           f"blocks")


def _records(header: afits.Header | dict | None) -> list[dict]:
    if header is None:
        return []
    if isinstance(header, dict):
        return [{"name": k, "value": v} for k, v in header.items()]
    out = []
    for card in header.cards:
        key = card.keyword
        if not key or key.upper() in _STRUCTURAL:
            continue
        if key in ("COMMENT", "HISTORY"):
            out.append({"name": key, "value": str(card.value)})
        else:
            out.append({"name": key, "value": card.value, "comment": card.comment})
    return out


def write_image(path: Path | str, image: np.ndarray, header: afits.Header | dict | None = None,
                extensions: list[tuple[str, np.ndarray, afits.Header | dict | None]] = (),
                compress: bool = False) -> Path:
    """Write ``image`` (primary HDU, or the first extension when ``compress``) and
    extra named image HDUs atomically.

    ``extensions`` is a list of (EXTNAME, array, header).  With ``compress`` the
    images are Rice tile-compressed (lossless for integer data).  A write that
    fails for a cause of the machine raises :class:`trex.errors.WriteFault`.
    """
    kwargs = {"compress": "rice"} if compress else {}
    with atomic_write(path) as tmp, fitsio.FITS(str(tmp), "rw", clobber=True) as fits:
        if compress:
            fits.write(None)
        fits.write(np.ascontiguousarray(image), header=_records(header), **kwargs)
        for name, data, hdr in extensions:
            fits.write(np.ascontiguousarray(data), header=_records(hdr), extname=name, **kwargs)
    return Path(path)


@contextmanager
def atomic_write(path: Path | str) -> Iterator[Path]:
    """A temporary path next to ``path`` to write to; it replaces ``path`` when the block
    ends without an error and is removed otherwise, so a reader (or a killed job)
    never sees a half-written file.  Failures of the machine (disk full,
    permission, file-size limit) become :class:`trex.errors.WriteFault`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)


def atomic_path(path: Path | str) -> tuple[Path, Path]:
    """(temporary path, final path) for writers that are not FITS images.

    Write to the temporary path, then ``os.replace(tmp, final)``
    (:func:`atomic_write` does both and cleans up).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp"), path


def copy_file(source: Path | str, target: Path | str) -> Path:
    """Copy ``source`` to ``target`` atomically."""
    with atomic_write(target) as tmp:
        shutil.copyfile(source, tmp)
    return Path(target)
