"""FITS input and output with fitsio.

Reading returns native-byte-order float arrays (BZERO/BSCALE applied) and an
``astropy.io.fits.Header``; ``.fits.fz`` tile-compressed frames are read
transparently.  Every way a file can be unreadable raises :class:`FrameError`
with the file and a human reason.  Writes go to a temporary file in the same
folder and are moved into place with ``os.replace``, so a reader never sees a
half-written frame.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fitsio
import numpy as np
from astropy.io import fits as afits

from trex.errors import FrameError, writing

__all__ = ["FrameError", "read_header", "read_image", "write_image", "atomic_write", "atomic_path",
           "copy_file"]

#: header keywords that describe the stored array, not the data; never copied.
_STRUCTURAL = {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "BZERO", "BSCALE",
               "XTENSION", "PCOUNT", "GCOUNT", "ZIMAGE", "ZBITPIX", "ZNAXIS", "ZNAXIS1",
               "ZNAXIS2", "ZTILE1", "ZTILE2", "ZCMPTYPE", "ZNAME1", "ZVAL1", "ZNAME2",
               "ZVAL2", "ZSIMPLE", "ZEXTEND", "ZQUANTIZ", "ZDITHER0", "TFIELDS", "TTYPE1",
               "TFORM1", "CHECKSUM", "DATASUM", "ZHECKSUM", "ZDATASUM", "EXTNAME"}

#: the comment cfitsio adds to every primary header; not worth copying along.
_FITS_BOILERPLATE = ("FITS (Flexible Image Transport System)", "and Astrophysics', volume 376")


def _image_hdu(fits: fitsio.FITS, path: Path) -> int:
    for i, hdu in enumerate(fits):
        if hdu.get_exttype() == "IMAGE_HDU" and hdu.get_dims() and len(hdu.get_dims()) == 2:
            return i
    raise FrameError(path, "no 2-D image in the primary HDU or any image extension")


def _to_header(fh: fitsio.FITSHDR) -> afits.Header:
    header = afits.Header()
    for rec in fh.records():
        name = rec.get("name")
        if not name or name.upper() in _STRUCTURAL:
            continue
        if name.upper() == "COMMENT":
            text = str(rec.get("value", ""))
            if not text.startswith(_FITS_BOILERPLATE):
                header.add_comment(text)
            continue
        if name.upper() == "HISTORY":
            header.add_history(str(rec.get("value", "")))
            continue
        value = rec.get("value")
        if isinstance(value, str):
            value = value.strip()
        header[name] = (value, rec.get("comment", "") or "")
    return header


def read_header(path: Path | str) -> afits.Header:
    """Header of the frame's image HDU (no pixel data read)."""
    path = Path(path)
    with _open(path) as fits:
        return _to_header(fits[_image_hdu(fits, path)].read_header())


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
        try:
            data = ext.read()
            header = _to_header(ext.read_header())
        except OSError as err:
            raise FrameError(path, f"image data unreadable (truncated?): {err}") from None
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
        with open(self.path, "rb") as fh:
            if not fh.read(30).startswith(b"SIMPLE  ="):
                raise FrameError(self.path, "not a FITS file (no SIMPLE card)")
        try:
            self.fits = fitsio.FITS(str(self.path))
        except OSError as err:
            raise FrameError(self.path, f"corrupt or truncated FITS: {str(err).strip()[:200]}") from None
        return self.fits

    def __exit__(self, *exc) -> None:
        self.fits.close()


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
