"""FITS I/O: round trips (plain, Rice .fz, BITPIX=16 with BZERO) and corrupt files."""

import fitsio
import numpy as np
import pytest

from trex.fits import FrameError, read_header, read_image, write_image


@pytest.fixture
def image():
    rng = np.random.default_rng(3)
    return rng.integers(0, 65535, size=(40, 50)).astype(np.uint16)


def test_round_trip_float(tmp_path):
    data = np.random.default_rng(1).normal(1000, 30, (32, 48)).astype(np.float32)
    path = write_image(tmp_path / "a.fits", data, {"IMAGETYP": "object", "EXPTIME": 30.0},
                       extensions=[("MASK", (data > 1050).astype(np.uint8), None)])
    out, header = read_image(path)
    np.testing.assert_array_equal(out, data)
    assert out.dtype == np.float32 and out.dtype.byteorder in "=|<"
    assert header["IMAGETYP"] == "object" and header["EXPTIME"] == 30.0
    mask, _ = read_image(path, hdu="MASK")
    np.testing.assert_array_equal(mask, data > 1050)


def test_round_trip_uint16_bzero(tmp_path, image):
    # written by fitsio as BITPIX=16 with BZERO=32768, as cameras do
    path = tmp_path / "raw.fits"
    with fitsio.FITS(str(path), "rw", clobber=True) as f:
        f.write(image)
    hdr = fitsio.read_header(str(path))
    assert hdr["BITPIX"] == 16 and hdr["BZERO"] == 32768
    out, _ = read_image(path)
    np.testing.assert_array_equal(out, image.astype(np.float32))


def test_round_trip_rice_compressed(tmp_path, image):
    path = write_image(tmp_path / "raw.fits.fz", image.astype(np.int32), {"EXPTIME": 1.0},
                       compress=True)
    out, header = read_image(path)
    np.testing.assert_array_equal(out, image.astype(np.float32))
    assert header["EXPTIME"] == 1.0
    assert read_header(path)["EXPTIME"] == 1.0


def test_float64_kept_and_native_byte_order(tmp_path):
    data = np.arange(12, dtype=">f8").reshape(3, 4)
    path = write_image(tmp_path / "d.fits", data)
    out, _ = read_image(path)
    assert out.dtype == np.float64 and out.dtype.isnative
    np.testing.assert_array_equal(out, data)


def test_write_is_atomic_and_overwrites(tmp_path):
    path = tmp_path / "x.fits"
    write_image(path, np.zeros((4, 4), np.float32))
    write_image(path, np.ones((4, 4), np.float32))
    out, _ = read_image(path)
    assert out.sum() == 16
    assert [p.name for p in tmp_path.iterdir()] == ["x.fits"]  # no temp files left


@pytest.mark.parametrize("content, reason", [
    (None, "file not found"),
    (b"", "empty file"),
    (b"this is not a FITS file at all" * 100, "not a FITS file"),
])
def test_unreadable_files_raise_with_reason(tmp_path, content, reason):
    path = tmp_path / "bad.fits"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(FrameError, match=reason) as err:
        read_image(path)
    assert err.value.path == str(path) and reason in err.value.reason


def test_truncated_file(tmp_path, image):
    path = tmp_path / "t.fits"
    write_image(path, image.astype(np.float32))
    path.write_bytes(path.read_bytes()[:4000])  # header + part of the data
    with pytest.raises(FrameError, match="truncated"):
        read_image(path)


def test_no_image_hdu(tmp_path):
    path = tmp_path / "table.fits"
    with fitsio.FITS(str(path), "rw", clobber=True) as f:
        f.write(np.zeros(3, dtype=[("a", "f8")]))
    with pytest.raises(FrameError, match="no 2-D image"):
        read_image(path)
