"""Per-frame products: the fast npy reader returns what np.load returns."""

import numpy as np
import pytest

from trex.products import load_product, product_path, read_product, save_product


def test_reader_equals_np_load(tmp_path):
    redpath = tmp_path / "RED" / "7" / "1-000123_5.fits"
    rows = np.zeros(7, dtype=[("star", "i8"), ("aim_000", "f4"), ("aiq_000", "i2")])
    rows["star"], rows["aim_000"] = np.arange(7) * 3, np.linspace(9, 14, 7)
    path = save_product(redpath, "aphot", rows)
    assert path == product_path(redpath, "aphot") == tmp_path / "RED/7/1-000123_5-aphot.npy"
    got = load_product(redpath, "aphot")
    assert got.dtype == np.load(path).dtype and np.array_equal(got, np.load(path))
    got["star"][0] = 5  # writable, like np.load's
    cube = np.arange(24.0).reshape(2, 3, 4)  # not 1-D: np.load reads it
    save_product(redpath, "stamps", cube)
    assert np.array_equal(load_product(redpath, "stamps"), cube)
    with open(tmp_path / "v2.npy", "wb") as fh:  # format version 2 header
        np.lib.format.write_array(fh, rows, version=(2, 0))
    assert np.array_equal(read_product(tmp_path / "v2.npy"), rows)
    assert load_product(redpath, "iphot") is None


@pytest.mark.parametrize("content", [b"", b"abc", b"SIMPLE  =                    T"])
def test_not_a_product_is_a_clear_error(tmp_path, content):
    (tmp_path / "bad.npy").write_bytes(content)
    with pytest.raises(ValueError, match="not an npy product"):
        read_product(tmp_path / "bad.npy")
