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


def test_long_strings_continue_and_read_back_the_same_everywhere(tmp_path):
    import fitsio

    from trex.fitstable import read_file

    long = "it's " + "x" * 70 + " '" + "y" * 80 + "&end"
    cards = [{"name": "LONGSTR", "value": long, "comment": "a long value"},
             {"name": "LONGCOM", "value": "v", "comment": "word " * 30},
             {"name": "BOTH", "value": "z" * 100, "comment": "c " * 40},
             {"name": "COMMENT", "value": "commentary text " * 6},
             {"name": "AMP", "value": "ends with &"}]
    path = tmp_path / "long.fits"
    write_lightcurve(path, empty_rows(2, 1), cards)
    with fits.open(path) as hdul:
        hdul.verify("exception")
        theirs = hdul["LIGHTCURVE"].header
    peer = fitsio.read_header(str(path), ext=1)
    _, mine, primary = read_file(path, "LIGHTCURVE")
    for c in cards[:3] + cards[4:]:
        assert mine[c["name"]] == theirs[c["name"]] == peer[c["name"]] == c["value"], c["name"]
    for c in cards[:3]:
        assert theirs.comments[c["name"]] == " ".join(c["comment"].split())
        got = next(r["comment"] for r in mine.records() if r["name"] == c["name"])
        assert got == " ".join(c["comment"].split())
    assert "commentary text" in str(theirs["COMMENT"]) and primary["ORIGIN"] == "trex"


@pytest.mark.parametrize("key, value", [("TOOLONGKEY", 1), ("NAN", float("nan")),
                                        ("INF", float("inf"))])
def test_cards_that_cannot_be_written_raise(key, value):
    with pytest.raises(ValueError):
        card(key, value)


def test_numbers_keep_every_digit(tmp_path):
    from trex.fitstable import read_file

    values = [2461000.3030999997, 0.1 + 0.2, -1.2345678901234567e-300, 1e20, 7]
    cards = [{"name": f"V{i}", "value": v, "comment": "a comment of some length here"}
             for i, v in enumerate(values)]
    write_lightcurve(tmp_path / "n.fits", empty_rows(1, 1), cards)
    _, mine, _ = read_file(tmp_path / "n.fits", "LIGHTCURVE")
    with fits.open(tmp_path / "n.fits") as hdul:
        theirs = hdul[1].header
        assert [theirs[f"V{i}"] for i in range(len(values))] == values
    assert [mine[f"V{i}"] for i in range(len(values))] == values


def test_the_fast_reader_reads_the_current_layout_without_fitsio(tmp_path, monkeypatch):
    from trex import fitstable
    from trex.lcformat import column_names, read_lightcurve

    rows = empty_rows(4, 3)
    rows["rjd"], rows["bjd"] = [1.0, 2.0, 3.0, 4.0], [2.0, 3.0, 4.0, 5.0]
    write_lightcurve(tmp_path / "lc.fits", rows, [{"name": "OBJECTID", "value": "A"}])

    def no_fitsio(*args):
        raise AssertionError("fitsio used")

    monkeypatch.setattr(fitstable, "_read_fitsio", no_fitsio)
    back, header = read_rows(tmp_path / "lc.fits")
    assert list(back.dtype.names) == column_names(3) and header["OBJECTID"] == "A"
    assert read_lightcurve(tmp_path / "lc.fits").meta["OBJECT"] == "A"
