"""Header parsing (SPEC section 2)."""

import pytest
from astropy.io import fits
from astropy.time import Time

from trex.config import Config
from trex.fits import FrameError
from trex.header import parse_dec, parse_header, parse_ra, parse_section


def header(**cards):
    base = {"IMAGETYP": "object", "EXPTIME": 30.0, "DATE-OBS": "2026-11-29T03:00:00.000",
            "OBJECT": "G1", "PROJID": "12", "RA": "04:00:00.0", "DEC": "-30:30:00",
            "GAIN": 2.7, "RDNOISE": 9.0, "SATURATE": 60000.0, "BIASSEC": "[2049:2080,1:2048]",
            "TRIMSEC": "[1:2048,1:2048]"}
    base.update(cards)
    h = fits.Header()
    for k, v in base.items():
        if v is not None:
            h[k] = v
    return h


def test_full_header():
    meta = parse_header(header(), Config())
    assert meta.imagetyp == "object" and meta.exptime == 30.0
    assert meta.ra == pytest.approx(60.0) and meta.dec == pytest.approx(-30.5)
    assert meta.jd == pytest.approx(Time("2026-11-29T03:00:15", scale="utc").jd, abs=1e-9)
    assert meta.field == "G1" and meta.projid == "12"
    assert meta.gain == 2.7 and meta.rdnoise == 9.0 and meta.saturate == 60000.0
    assert meta.biassec == (slice(0, 2048), slice(2048, 2080))
    assert meta.trimsec == (slice(0, 2048), slice(0, 2048))


@pytest.mark.parametrize("value, kind", [("BIAS", "bias"), ("zero", "bias"), ("Dark", "dark"),
                                         ("SkyFlat", "flat"), ("light", "object"),
                                         ("Science", "object")])
def test_imagetyp_aliases(value, kind):
    assert parse_header(header(IMAGETYP=value), Config()).imagetyp == kind


def test_separate_time_obs_and_degrees():
    meta = parse_header(header(**{"DATE-OBS": "2026-11-29", "TIME-OBS": "03:00:00",
                                  "RA": 60.0, "DEC": -30.5}), Config())
    assert meta.jd == pytest.approx(Time("2026-11-29T03:00:15").jd, abs=1e-9)
    assert (meta.ra, meta.dec) == (60.0, -30.5)


def test_sexagesimal_angles():
    assert parse_ra("12:30:00") == pytest.approx(187.5)
    assert parse_ra("12 30 00") == pytest.approx(187.5)
    assert parse_ra("187.5") == pytest.approx(187.5)
    assert parse_dec("-00:30:00") == pytest.approx(-0.5)
    assert parse_dec("+45 15 00") == pytest.approx(45.25)
    with pytest.raises(ValueError):
        parse_dec("95.0")


@pytest.mark.parametrize("missing", ["IMAGETYP", "EXPTIME", "DATE-OBS"])
def test_missing_required_keyword_names_it(missing):
    with pytest.raises(FrameError, match=f"missing header keyword {missing}"):
        parse_header(header(**{missing: None}), Config(), path="x.fits")


def test_bad_values_name_the_keyword():
    with pytest.raises(FrameError, match="unknown IMAGETYP"):
        parse_header(header(IMAGETYP="focus"), Config())
    with pytest.raises(FrameError, match="EXPTIME is not a number"):
        parse_header(header(EXPTIME="long"), Config())
    with pytest.raises(FrameError, match="bad DATE-OBS"):
        parse_header(header(**{"DATE-OBS": "yesterday"}), Config())
    with pytest.raises(FrameError, match="bad BIASSEC"):
        parse_header(header(BIASSEC="[1:10]"), Config())


def test_optional_keys_fall_back_to_config():
    config = Config().replace("camera", gain=1.5).replace("project", projid="7", field="F")
    meta = parse_header(header(GAIN=None, PROJID=None, OBJECT=None, RA=None, DEC=None), config)
    assert meta.gain == 1.5 and meta.projid == "7" and meta.field == "F"
    assert meta.ra is None and meta.dec is None
    assert meta.latitude == config.site.latitude


def test_keyword_mapping_from_config():
    config = Config().replace("header", exptime="EXPOSURE")
    h = header(EXPTIME=None, EXPOSURE=12.5)
    assert parse_header(h, config).exptime == 12.5


def test_iraf_section():
    assert parse_section("[1:10,5:8]") == (slice(4, 8), slice(0, 10))
    assert parse_section("[10:1, 8:5]") == (slice(4, 8), slice(0, 10))
    with pytest.raises(ValueError, match="1-based"):
        parse_section("[0:10,1:8]")
