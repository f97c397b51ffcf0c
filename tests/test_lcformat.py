"""Light-curve files as astronomers' tools read them: units, descriptions, time scales,
identity and provenance keywords, lightkurve, and files of the previous layout."""

import datetime
import warnings

import astropy.units as u
import lightkurve
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time

from trex import lccards, lcformat, lightcurves
from trex.config import Config
from trex.fitstable import card, write_table
from trex.flags import PHOT

NAPER = 2
INFO = {"objectid": "HAT-123-0001234", "ra": 61.25, "dec": -29.5, "mag": 11.2,
        "projid": "12", "field": "G1234", "telescope": "HATPI", "instrument": "camera 5"}


def sample_rows(n: int = 6) -> np.ndarray:
    rows = lcformat.empty_rows(n, NAPER)
    rows["rjd"] = 61000.25 + 0.01 * np.arange(n)
    rows["bjd"] = rows["rjd"] + 2400000.0 + 0.0031
    rows["framekey"] = 100 + np.arange(n)
    rows["frame"] = [f"2026-11-29_5-{i:07d}.fits".encode() for i in range(n)]
    rows["xcc"], rows["ycc"] = 100.5, 200.25
    rows["aim_000"] = 11.0 + 0.01 * np.arange(n)
    rows["aie_000"] = 0.005
    rows["aiq_000"] = 0
    rows["aiq_000"][1] = PHOT["SATURATED"].bit
    rows["atf_000"] = rows["aim_000"] - 0.5
    rows["adq_000"] = 0
    rows["adq_000"][2] = PHOT["NOT_FITTED"].bit
    rows["ifl_001"] = 1000.0 + np.arange(n)
    rows["ife_001"] = 10.0
    rows["irq_001"] = 0
    return rows


def write_sample(path, rows=None) -> np.ndarray:
    rows = sample_rows() if rows is None else rows
    config = Config()
    night = lccards.night_cards(None, np.array([len(rows)]), np.array([len(rows)]),
                                 ("2026-11-29",), config)
    lcformat.write_lightcurve(path, rows, lccards.star_cards(INFO, config) + night)
    return rows


def test_astropy_reads_units_descriptions_and_both_time_scales(tmp_path):
    path = tmp_path / "lc.fits"
    rows = write_sample(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no UnitsWarning, no time-keyword warning
        plain = Table.read(path, hdu="LIGHTCURVE")
        native = Table.read(path, hdu="LIGHTCURVE", astropy_native=True)
    units = {name: str(plain[name].unit) if plain[name].unit else None for name in plain.colnames}
    assert units["rjd"] == units["bjd"] == "d" and units["xcc"] == "pix"
    assert units["bgv"] == "adu" and units["fsv"] == "1 / pix2" and units["aim_000"] == "mag"
    assert units["ifl_001"] == "adu" and units["aiq_000"] is None and units["frame"] is None
    expected = lcformat.column_units(NAPER)
    assert {name for name, unit in units.items() if unit} == set(expected)
    assert all(plain[name].unit == u.Unit(unit, format="fits") for name, unit in expected.items())
    assert isinstance(native["bjd"], Time) and native["bjd"].scale == "tdb"
    assert np.array_equal(native["bjd"].jd1 + native["bjd"].jd2, rows["bjd"])
    assert isinstance(native["rjd"], Time) and native["rjd"].scale == "utc"
    assert native["rjd"].location.lat.deg == pytest.approx(Config().site.latitude)
    assert native["bjd"].location is None  # barycentric

    table = lcformat.read_lightcurve(path)
    assert table["time"].scale == "tdb" and table["time"].format == "jd"
    np.testing.assert_array_equal(table["time"].jd, rows["bjd"])
    assert table.colnames[1:] == lcformat.column_names(NAPER)
    assert table["rjd"].unit == "d" and table["ycc"].unit == "pix" and table["aiq_000"].unit is None
    assert table["atf_000"].description == "magnitude after TFA, aperture 0"
    assert list(table["frame"]) == [f.decode() for f in rows["frame"]]


def test_header_keywords_present_and_valid(tmp_path):
    path = tmp_path / "lc.fits"
    rows = write_sample(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fits.open(path) as hdul:
            hdul.verify("exception")
            primary, header = hdul[0].header, hdul["LIGHTCURVE"].header
    assert (primary["ORIGIN"], primary["OBJECT"], primary["OBJECTID"], primary["TELESCOP"],
            primary["INSTRUME"]) == ("trex", INFO["objectid"], INFO["objectid"], "HATPI",
                                     "camera 5")
    assert (primary["RA_OBJ"], primary["DEC_OBJ"], primary["RADESYS"], primary["EQUINOX"]) == \
        (61.25, -29.5, "ICRS", 2000.0)
    assert (primary["PROJID"], primary["FIELD"]) == ("12", "G1234") and "CREATOR" not in primary
    written = datetime.datetime.fromisoformat(primary["DATE"]).replace(tzinfo=datetime.timezone.utc)
    assert abs(datetime.datetime.now(datetime.timezone.utc) - written).total_seconds() < 600
    assert header["DATE"] == primary["DATE"]
    assert (header["TIMESYS"], header["JDREF"], header["TIMEUNIT"], header["TREFPOS"],
            header["TIMEREF"], header["TIMEPIXR"]) == ("TDB", 0.0, "d", "BARYCENTER",
                                                       "SOLARSYSTEM", 0.5)
    assert (header["TSTART"], header["TSTOP"]) == (rows["bjd"].min(), rows["bjd"].max())
    assert (header["RJDSTART"], header["RJDSTOP"], header["NROWS"]) == \
        (rows["rjd"].min(), rows["rjd"].max(), len(rows))
    assert (header["TCTYP1"], header["TCUNI1"], header["TRPOS1"], header["TCRVL1"]) == \
        ("UTC", "d", "TOPOCENTER", 2400000.0)
    assert (header["TCTYP2"], header["TCUNI2"], header["TRPOS2"]) == ("TDB", "d", "BARYCENTER")
    assert header["OBSGEO-B"] == Config().site.latitude and header["APER_001"] == 2.45
    descriptions = lcformat.describe_columns(NAPER)
    for i, name in enumerate(lcformat.column_names(NAPER), start=1):
        assert header[f"TTYPE{i}"] == name and header.comments[f"TTYPE{i}"] == descriptions[name]


def test_descriptions_fit_their_cards_at_the_widest_table():
    napertures = 58  # TFIELDS 999 is the FITS limit: 11 + 17 * 58 = 997 columns
    names = lcformat.column_names(napertures)
    assert len(names) <= 999
    descriptions = lcformat.describe_columns(napertures)
    for i, name in enumerate(names, start=1):
        line = card(f"TTYPE{i}", name, descriptions[name])
        assert len(line) == 80 and line.rstrip().endswith(descriptions[name]), line


def test_night_cards_round_trip_with_long_versions(tmp_path, monkeypatch):
    import fitsio

    monkeypatch.setattr(lccards, "__version__", "0.1.0.dev1234+g0123456789abcdef.d20261130")
    config = Config()
    path = tmp_path / "lc.fits"
    rows = sample_rows()
    first = lccards.night_cards(None, np.array([4, 0]), np.array([4, 0]),
                                 ("2026-11-28", "2026-11-29"), config)
    lcformat.write_lightcurve(path, rows, lccards.star_cards(INFO, config) + first)
    _, header = lcformat.read_rows(path)
    again = lccards.night_cards(header, np.array([3, 2]), np.array([1, 2]),
                                 ("2026-11-28", "2026-11-29"), config)
    lcformat.write_lightcurve(path, rows, lccards.star_cards(INFO, config) + again)
    expected = [f"2026-11-28 rows=5 trex={lccards.__version__} config={config.sha}",
                f"2026-11-29 rows=2 trex={lccards.__version__} config={config.sha}"]
    assert [c["value"] for c in again] == expected
    _, mine = lcformat.read_rows(path)
    peer = fitsio.read_header(str(path), ext=1)
    with fits.open(path) as hdul:
        hdul.verify("exception")
        theirs = hdul[1].header
        for i, value in enumerate(expected):
            key = f"NIGHT{i:03d}"
            assert mine[key] == peer[key] == theirs[key] == value
            assert theirs.comments[key] == "provenance"
    assert lcformat.read_lightcurve(path).meta["NIGHT001"] == expected[1]


def test_long_frame_names_round_trip_exactly(tmp_path):
    names = ["a" * 39 + ".fits", "b" * 95 + ".fits", "short.fits"]
    frames = lcformat.frame_names(names)
    assert frames.dtype.itemsize == 100
    rows = lcformat.empty_rows(3, NAPER, frames.dtype.itemsize)
    rows["frame"], rows["rjd"], rows["bjd"] = frames, [1.0, 2.0, 3.0], [2.5, 3.5, 4.5]
    lcformat.write_lightcurve(tmp_path / "lc.fits", rows, [])
    assert list(lcformat.read_lightcurve(tmp_path / "lc.fits")["frame"]) == names
    back, _ = lcformat.read_rows(tmp_path / "lc.fits")
    older = lcformat.empty_rows(1, NAPER)
    older["frame"] = b"old.fits"
    joined = lcformat.concatenate([older, back])
    assert joined.dtype["frame"].itemsize == 100
    assert [f.decode() for f in joined["frame"]] == ["old.fits"] + names
    with pytest.raises(UnicodeEncodeError):
        lcformat.frame_names(["näme.fits"])


def old_layout(rows: np.ndarray) -> np.ndarray:
    """Rows as the previous writer laid them out: no adq/idq, frame S40."""
    fields = [(n, "S40" if n == "frame" else rows.dtype[n]) for n in rows.dtype.names
              if n[:3] not in ("adq", "idq")]
    return np.array(rows[[n for n, _ in fields]], dtype=fields)


@pytest.mark.parametrize("writer", ["trex", "fitsio"])
def test_file_of_the_previous_layout_still_reads(tmp_path, writer):
    """As the previous trex writer wrote it (the fast reader), or with an image first
    as another tool might (read through fitsio)."""
    import fitsio

    rows = sample_rows()
    rows["aep_000"] = rows["atf_000"]
    rows["aiq_000"][3] |= PHOT["NOT_FITTED"].bit  # where detrending used to flag
    rows["aep_000"][3] = rows["atf_000"][3] = np.nan
    old = old_layout(rows)
    path = tmp_path / "old.fits"
    if writer == "trex":
        write_table(path, old, "LIGHTCURVE", [{"name": "OBJECTID", "value": "HAT-1"},
                                              {"name": "TIMESYS", "value": "TDB"}])
    else:
        with fitsio.FITS(str(path), "rw", clobber=True) as fits_file:
            fits_file.write(np.zeros((2, 2), dtype=np.float32))
            fits_file.write(old, extname="LIGHTCURVE", header={"OBJECTID": "HAT-1"})
    table = lcformat.read_lightcurve(path)
    assert table.colnames[1:] == lcformat.column_names(NAPER)
    np.testing.assert_array_equal(table["time"].jd, rows["bjd"])
    assert table["aim_000"].unit == "mag" and table.meta["OBJECTID"] == "HAT-1"
    assert list(table["aiq_000"]) == [0, PHOT["SATURATED"].bit, 0, 0, 0, 0]
    not_fitted = PHOT["NOT_FITTED"].bit
    assert list(table["adq_000"]) == [0, 0, 0, not_fitted, 0, 0]
    assert np.all(table["adq_001"] == not_fitted) and np.all(table["idq_000"] == not_fitted)
    again, _ = lcformat.read_rows(path)
    assert again.dtype == lcformat.lc_dtype(NAPER)
    lc = lcformat.to_lightkurve(path, "aim_000")
    assert len(lc) == len(rows) and lc.meta["OBJECTID"] == "HAT-1"


def test_empty_rows_are_missing_and_not_detrended(tmp_path):
    rows = lcformat.empty_rows(2, NAPER)
    lcformat.write_lightcurve(tmp_path / "empty.fits", rows, [])  # no time: no TSTART
    with fits.open(tmp_path / "empty.fits") as hdul:
        hdul.verify("exception")
        assert "TSTART" not in hdul[1].header and hdul[1].header["NROWS"] == 2
    assert np.all(rows["aiq_001"] == PHOT["MISSING"].bit) and np.all(rows["irq_000"] == 64)
    assert np.all(rows["adq_000"] == PHOT["NOT_FITTED"].bit)
    assert np.all(rows["idq_001"] == PHOT["NOT_FITTED"].bit)
    assert rows.dtype["adq_000"] == np.int16 and np.all(np.isnan(rows["atf_001"]))
    assert lcformat.flag_columns("atf_002") == ("aiq_002", "adq_002")
    assert lcformat.flag_columns("itf_001") == ("irq_001", "idq_001")
    assert lcformat.flag_columns("arm_000") == ("aiq_000",)
    assert lcformat.flag_columns("ifl_000") == ("irq_000",)
    names = lcformat.column_names(1)
    assert names.index("adq_000") == names.index("atf_000") + 1
    assert names.index("idq_000") == names.index("itf_000") + 1


def test_to_lightkurve_gives_bjd_tdb_relative_flux_and_quality(tmp_path):
    path = tmp_path / "lc.fits"
    rows = sample_rows()
    rows["bjd"][4] = np.nan  # measured on the difference image only: no bjd, left out
    write_sample(path, rows)
    assert lightcurves.to_lightkurve is lcformat.to_lightkurve
    lc = lightcurves.to_lightkurve(path, column="atf_000")
    keep = np.isfinite(rows["bjd"])
    assert isinstance(lc, lightkurve.LightCurve) and len(lc) == keep.sum()
    assert lc.time.scale == "tdb"
    np.testing.assert_array_equal(lc.time.jd, rows["bjd"][keep])
    mags = rows["atf_000"][keep].astype(float)
    np.testing.assert_allclose(lc.flux.value, 10 ** (-0.4 * (mags - np.median(mags))))
    np.testing.assert_allclose(lc.flux_err.value, 0.4 * np.log(10) * lc.flux.value * 0.005,
                               rtol=1e-6)
    assert list(lc.quality) == list((rows["aiq_000"] | rows["adq_000"])[keep])
    assert lc.meta["LABEL"] == INFO["objectid"] and lc.meta["FLUX_ORIGIN"] == "atf_000"
    np.testing.assert_array_equal(lc["rjd"].to_value("d"), rows["rjd"][keep])
    assert lc.flatten(window_length=3) is not None  # lightkurve's own methods run on it

    flux = lcformat.to_lightkurve(path, column="ifl_001")
    assert str(flux.flux.unit) == "adu"
    np.testing.assert_array_equal(flux.flux.value, rows["ifl_001"][keep])
    assert np.all(flux.quality == 0)
    with pytest.raises(ValueError, match="not a photometry column"):
        lcformat.to_lightkurve(path, column="xcc")


def test_lightkurve_generic_reader(tmp_path):
    """Plain ``lightkurve.read`` needs columns named ``time`` and ``flux``, which no
    header keyword can provide; with the columns named, it reads bjd in TDB."""
    path = tmp_path / "lc.fits"
    rows = write_sample(path)
    with pytest.raises(lightkurve.utils.LightkurveError):
        lightkurve.read(str(path))
    lc = lightkurve.read(str(path), time_column="bjd", flux_column="atf_000",
                         flux_err_column="aie_000", quality_column="adq_000")
    assert lc.time.scale == "tdb"
    np.testing.assert_array_equal(lc.time.jd, rows["bjd"])
    assert lc.meta["LABEL"] == INFO["objectid"] and lc.meta["MISSION"] == "HATPI"
