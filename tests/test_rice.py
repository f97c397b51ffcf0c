"""Rice-compressed images decoded by trex's kernel (``trex.rice``): the arrays fitsio
compressed come back exactly, for every integer width, tile shape and kind of coding
block; other layouts go to cfitsio; a damaged file is a FrameError, never a crash."""

import fitsio
import numpy as np
import pytest

from trex import rice
from trex.fits import FrameError, read_image


def _compressed(path, data, **kwargs):
    with fitsio.FITS(str(path), "rw", clobber=True) as f:
        f.write(data, compress="rice", **kwargs)
    return path


def _decoded(path):
    """The kernel's :class:`RiceImage` of the file (asserting its layout is the kernel's)."""
    with fitsio.FITS(str(path)) as f:
        start = f[1].get_offsets()["data_start"]
        header = f[1].read_header()
    cards = [(r["name"], r["value"], r.get("comment", "")) for r in header.records()]
    image = rice.RiceImage.of(path, start, cards)
    assert image is not None, "the layout should be the kernel's"
    return image


def _blocks(rng, shape, low, high):
    """Rows mixing the kinds of Rice blocks: constant runs (zero-difference blocks), full
    range noise (raw blocks), smooth sky with rare huge outliers (long unary codes)."""
    sky = (low + high) // 2 + rng.normal(0, 5, shape)
    sky[:, : shape[1] // 4] = (low + high) // 2                              # constant
    sky[::3, shape[1] // 2:] = rng.integers(low, high, (len(sky[::3]), shape[1] - shape[1] // 2))
    outliers = rng.random(shape) < 0.002
    sky[outliers] = np.where(rng.random(outliers.sum()) < 0.5, low, high - 1)  # big jumps
    return np.clip(np.rint(sky), low, high - 1)


@pytest.mark.parametrize("dtype, low, high", [
    (np.int16, -32768, 32768), (np.uint16, 0, 65536), (np.int32, -2**31, 2**31),
    (np.uint8, 0, 256),
])
@pytest.mark.parametrize("tiles", [None, (7, 33), (64, 64)])
def test_compressed_images_come_back_exactly(tmp_path, dtype, low, high, tiles):
    rng = np.random.default_rng(7)
    data = _blocks(rng, (70, 101), low, high).astype(dtype)
    path = _compressed(tmp_path / "x.fits.fz", data,
                       **({} if tiles is None else {"tile_dims": list(tiles)}))
    image = _decoded(path)
    np.testing.assert_array_equal(image.rows(0, 70, np.float64), data.astype(np.float64))
    for y0, y1 in ((0, 1), (5, 40), (33, 34), (64, 70), (60, 99)):  # bands across tile rows
        np.testing.assert_array_equal(image.rows(y0, y1), data[y0:y1].astype(np.float32))
    out, _ = read_image(path)
    np.testing.assert_array_equal(out, data.astype(np.float32))  # what cfitsio gives
    np.testing.assert_array_equal(out, fitsio.read(str(path)).astype(np.float32))


def test_a_frame_of_sky_and_stars(tmp_path):
    """A camera frame's kind: uint16 counts (BZERO 32768), one tile per row."""
    rng = np.random.default_rng(2)
    frame = rng.poisson(1200.0, (256, 300)).astype(np.float64)
    frame[100:104, 50:54] += 60000.0
    data = np.minimum(frame, 65535).astype(np.uint16)
    path = _compressed(tmp_path / "f.fits.fz", data)
    np.testing.assert_array_equal(read_image(path)[0], data.astype(np.float32))


def test_other_layouts_go_to_cfitsio(tmp_path):
    """Quantised floats (and GZIP) are not the kernel's: None, and read_image reads them."""
    data = np.random.default_rng(1).normal(100, 5, (40, 30)).astype(np.float32)
    path = _compressed(tmp_path / "q.fits.fz", data)
    with fitsio.FITS(str(path)) as f:
        header = f[1].read_header()
        start = f[1].get_offsets()["data_start"]
    cards = [(r["name"], r["value"], "") for r in header.records()]
    assert rice.RiceImage.of(path, start, cards) is None
    np.testing.assert_array_equal(read_image(path)[0], fitsio.read(str(path)))
    gz = tmp_path / "g.fits.fz"
    with fitsio.FITS(str(gz), "rw", clobber=True) as f:
        f.write(np.arange(600, dtype=np.int16).reshape(20, 30), compress="gzip")
    np.testing.assert_array_equal(read_image(gz)[0], np.arange(600).reshape(20, 30))


def test_truncated_heap_is_a_frame_error(tmp_path):
    rng = np.random.default_rng(4)
    path = _compressed(tmp_path / "t.fits.fz", rng.integers(0, 65535, (60, 80), dtype=np.uint16))
    raw = path.read_bytes()
    with fitsio.FITS(str(path)) as f:
        end = f[1].get_offsets()["data_end"]
    path.write_bytes(raw[:end - 1500])
    with pytest.raises(FrameError, match="truncated or corrupt"):
        read_image(path)


def test_damaged_bytes_never_read_beyond_the_tile(tmp_path):
    """Bytes of the heap overwritten (zeros: endless unary runs; ones: huge codes) give
    a FrameError or some image, never a crash or a hang."""
    rng = np.random.default_rng(5)
    data = rng.poisson(500.0, (50, 64)).astype(np.uint16)
    path = _compressed(tmp_path / "d.fits.fz", data)
    raw = bytearray(path.read_bytes())
    with fitsio.FITS(str(path)) as f:
        offsets = f[1].get_offsets()
    heap = offsets["data_start"] + 50 * 8
    for fill in (0x00, 0xFF):
        damaged = raw.copy()
        damaged[heap + 40:heap + 400] = bytes([fill]) * 360
        path.write_bytes(bytes(damaged))
        try:
            out, _ = read_image(path)
        except FrameError as err:
            assert "truncated or corrupt" in err.reason
        else:
            assert out.shape == data.shape


@pytest.mark.parametrize("key, value", [("BZERO", float("inf")), ("BZERO", 0.5),
                                        ("ZTILE1", "80"), ("THEAP", -8), ("BSCALE", 2.0),
                                        ("ZCMPTYPE", "HCOMPRESS_1")])
def test_odd_headers_are_left_to_cfitsio(tmp_path, key, value):
    """A header the kernel does not decode exactly (odd values included) gives None."""
    path = _compressed(tmp_path / "h.fits.fz", np.arange(4000, dtype=np.int16).reshape(50, 80))
    with fitsio.FITS(str(path)) as f:
        start = f[1].get_offsets()["data_start"]
        header = f[1].read_header()
    cards = [(r["name"], r["value"], "") for r in header.records()]
    assert rice.RiceImage.of(path, start, cards) is not None
    odd = [c for c in cards if c[0] != key] + [(key, value, "")]
    assert rice.RiceImage.of(path, start, odd) is None
