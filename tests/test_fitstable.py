"""The fast light-curve table writer produces standard FITS that astropy and fitsio
read back exactly."""

import numpy as np
import pytest
from astropy.io import fits

from trex.fitstable import card
from trex.lcformat import empty_rows, read_rows, write_lightcurve


def test_astropy_and_fitsio_read_back_every_value(tmp_path):
    rows = empty_rows(7, 3)
    rows["rjd"] = np.arange(7) + 61000.123456789012
    rows["frame"] = b"2026-11-29_5-0000001.fits"
    rows["aiq_001"] = [1, 2, 3, 4, -5, 6, 7]
    rows["framekey"] = 2**40 + np.arange(7)
    rows["xcc"] = np.linspace(-1e-300, 4095.5, 7)
    cards = [{"name": "OBJECTID", "value": "O'Brien star"},
             {"name": "RA", "value": 12.5, "comment": "deg"}, {"name": "NROWS", "value": 7},
             {"name": "FLAG", "value": True}, {"name": "TINY", "value": -1.234567890123457e-300}]
    path = tmp_path / "lc.fits"
    write_lightcurve(path, rows, cards)
    assert path.stat().st_size % 2880 == 0
    with fits.open(path) as hdul:
        hdul.verify("exception")  # standard-conforming
        table, header = hdul["LIGHTCURVE"].data, hdul["LIGHTCURVE"].header
        for name in rows.dtype.names:
            got = np.asarray(table[name])
            if got.dtype.kind == "U":
                got = np.char.encode(got)
            np.testing.assert_array_equal(got, rows[name], err_msg=name)
        assert (header["OBJECTID"], header["RA"], header["NROWS"], header["FLAG"],
                header["TINY"]) == ("O'Brien star", 12.5, 7, True, -1.234567890123457e-300)
        assert header.comments["RA"] == "deg"
    again, fhdr = read_rows(path)
    assert again.dtype.names == rows.dtype.names and fhdr["OBJECTID"] == "O'Brien star"


@pytest.mark.parametrize("value, text", [(True, "T"), (3, "3"), (2.5, "2.5"), (1e20, "1E+20"),
                                         ("x", "'x       '")])
def test_cards_are_80_characters_in_fixed_format(value, text):
    line = card("KEY", value, "a comment")
    assert len(line) == 80 and line.startswith("KEY     = ")
    field = line[10:30] if not isinstance(value, str) else line[10:20]
    assert field.strip() == text


def test_unicode_text_columns_are_written_as_ascii(tmp_path):
    rows = np.zeros(2, dtype=[("frame", "U12"), ("x", "f8")])
    rows["frame"] = ["a.fits", "frame-2.fits"]
    write_lightcurve(tmp_path / "u.fits", rows, [])
    back, _ = read_rows(tmp_path / "u.fits")
    assert [str(v.decode() if isinstance(v, bytes) else v) for v in back["frame"]] == \
        ["a.fits", "frame-2.fits"]


def test_reader_equals_fitsio_on_our_files_and_falls_back_on_others(tmp_path):
    import fitsio

    from trex.fitstable import read_table

    rows = empty_rows(5, 2)
    rows["rjd"] = 61000.5 + np.arange(5)
    rows["aiq_001"] = [0, 1, 64, -3, 7]
    rows["frame"] = b"f.fits"
    cards = [{"name": "OBJECTID", "value": "it's / here", "comment": "id"},
             {"name": "MAG", "value": 11.25}, {"name": "NROWS", "value": 5},
             {"name": "NIGHT000", "value": "2026-11-29 rows=5 trex=0.1 config=ab12"}]
    path = tmp_path / "ours.fits"
    write_lightcurve(path, rows, cards)
    mine, header = read_table(path, "LIGHTCURVE")
    with fitsio.FITS(str(path)) as fits:
        peer, peer_header = fits["LIGHTCURVE"].read(), fits["LIGHTCURVE"].read_header()
    for name in rows.dtype.names:
        got = np.char.decode(mine[name]) if mine[name].dtype.kind == "S" else mine[name]
        np.testing.assert_array_equal(got, peer[name], err_msg=name)
    assert mine.dtype["rjd"].isnative
    for rec in peer_header.records():
        assert header.get(rec["name"]) == rec["value"], rec["name"]
    assert header["OBJECTID"] == "it's / here" and header.get("MISSING", 7) == 7

    other = tmp_path / "other.fits"  # a vector column and an image first: fitsio reads it
    with fitsio.FITS(str(other), "rw", clobber=True) as fits:
        fits.write(np.zeros((4, 4), dtype=np.float32))
        fits.write(np.zeros(3, dtype=[("v", "f4", (2,)), ("x", "f8")]), extname="LIGHTCURVE",
                   header={"OBJECTID": "B"})
    back, header = read_table(other, "LIGHTCURVE")
    assert back["v"].shape == (3, 2) and header["OBJECTID"] == "B"


@pytest.mark.parametrize("value", ["x" * 68, "x" * 69, "x" * 66 + "'" + "y" * 80,
                                   "'" * 100, "a&" * 50 + "&", "q" * 300 + " / not a comment"])
def test_long_strings_go_on_continue_cards_that_every_reader_joins(tmp_path, value):
    import fitsio

    from trex.fitstable import read_table, write_table

    path = tmp_path / "long.fits"
    write_table(path, np.zeros(1, dtype=[("x", "f8")]), "LIGHTCURVE",
                [{"name": "LONGID", "value": value, "comment": "an id"},
                 {"name": "AFTER", "value": "short"}])
    _, header = read_table(path, "LIGHTCURVE")
    assert header["LONGID"] == value and header["AFTER"] == "short"
    assert "CONTINUE" not in header
    with fits.open(path) as hdul:
        hdul.verify("exception")
        assert hdul["LIGHTCURVE"].header["LONGID"] == value
    assert fitsio.read_header(str(path), 1)["LONGID"] == value
