"""Configuration: defaults, the trex.toml template, errors that name the key."""

from dataclasses import fields

import pytest

from trex.config import Config, ConfigError, build_config, load_config, render_toml


def test_template_parses_to_the_defaults(tmp_path):
    path = tmp_path / "trex.toml"
    path.write_text(render_toml())
    assert load_config(path) == Config()
    assert "# apertures as 'radius:annulus_inner:annulus_width'" in path.read_text()


def test_values_override_and_hash_changes(tmp_path):
    path = tmp_path / "trex.toml"
    path.write_text('[photometry]\napertures = ["3.0:8.0:5.0"]\n[camera]\ngain = 2\n')
    config = load_config(path)
    assert config.photometry.apertures == ("3.0:8.0:5.0",)
    assert config.camera.gain == 2.0 and isinstance(config.camera.gain, float)
    assert config.sha != Config().sha
    assert load_config(path).sha == config.sha


def test_frozen():
    with pytest.raises(AttributeError):
        Config().camera.gain = 3.0


@pytest.mark.parametrize("text, message", [
    ("[nosuch]\na = 1\n", r"unknown section \[nosuch\]"),
    ("[camera]\ngian = 2.0\n", r"unknown key 'gian' in \[camera\]"),
    ("[camera]\ngain = 'high'\n", r"\[camera\] gain: expected a number"),
    ("[extract]\nmesh = 64.5\n", r"\[extract\] mesh: expected an integer"),
    ("[extract]\nfit_shape = 1\n", r"\[extract\] fit_shape: expected true or false"),
    ("[photometry]\napertures = [1.0]\n", r"\[photometry\] apertures: expected a list"),
    ("[camera\n", "not valid TOML"),
])
def test_errors_name_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "trex.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_command_line_overrides_are_checked(tmp_path):
    path = tmp_path / "trex.toml"
    path.write_text("")
    assert load_config(path, {"run": {"batch_frames": 2}}).run.batch_frames == 2
    with pytest.raises(ConfigError, match="command line: unknown key"):
        load_config(path, {"run": {"batch_frame": 2}})


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/trex.toml")


def test_build_config_merges_over_base():
    base = build_config({"camera": {"gain": 3.0}})
    config = build_config({"camera": {"rdnoise": 5.0}}, base=base)
    assert (config.camera.gain, config.camera.rdnoise) == (3.0, 5.0)


@pytest.mark.parametrize("text, message", [
    ('[calibrate]\noverscan = "rows"\n', r'\[calibrate\] overscan = "rows": allowed: row, median, none'),
    ('[detrend]\nepd_parameters = ["s", "fwhm"]\n',
     r"\[detrend\] epd_parameters = \[\"s\", \"fwhm\"\]: unknown 'fwhm'; allowed: names among s, d, k"),
    ('[detrend]\nepd_minimal = ["s", "s"]\n', r"epd_minimal .*a name given twice"),
    ('[photometry]\nsky_method = "mod"\n', r"sky_method = \"mod\": allowed: mode, median, mean"),
    ('[subtract]\nresample = "cubic"\n', r"resample = \"cubic\": allowed: flux, bilinear, bicubic"),
    ('[subtract]\nkernel = "i/4;q/2"\n', r"\[subtract\] kernel = \"i/4;q/2\": .*'q/2'"),
    ('[photometry]\napertures = ["2.0:1.0:6.0"]\n', r"'2.0:1.0:6.0' is not allowed: .*0 < radius"),
    ('[photometry]\napertures = []\n', r"apertures = \[\]: allowed: one aperture or more"),
    ("[calibrate]\ndead_fraction = 1.5\n",
     r"dead_fraction = 1.5: allowed: a number strictly between 0 and 1$"),
    ("[calibrate]\nmin_frames = 0\n", r"min_frames = 0: allowed: an integer >= 1"),
    ("[extract]\nthreshold = -5.0\n", r"threshold = -5.0: allowed: a number > 0"),
    ("[astrometry]\nsearch_radius = 200.0\n", r"search_radius = 200.0: allowed: .* between 0 and 180"),
    ("[site]\nlatitude = 95.0\n", r"latitude = 95.0: allowed: a number between -90 and 90"),
    ("[camera]\ngain = nan\n", r"\[camera\] gain: expected a finite number"),
    ("[run]\nbatch_frames = 0\n", r"batch_frames = 0: allowed: an integer >= 1"),
    ('[header]\nexptime = ""\n', r'exptime = "": allowed: a FITS keyword name'),
    ('[database]\nurl = "mysql://x"\n', r"url = \"mysql://x\": allowed: empty .* sqlite:///path"),
    ("[magfit]\nbright_mag = 12.5\n", r"bright_mag = 12.5 must be below faint_mag = 12"),
    ("[detrend]\nsignal_clip = 1.0\n", r"signal_extend = 1.5 must not exceed signal_clip = 1"),
])
def test_values_outside_their_choices_and_ranges_are_errors(tmp_path, text, message):
    path = tmp_path / "trex.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: [")


def test_every_default_passes_its_check_and_bounds_are_inclusive_as_stated():
    from trex.config import _check_allowed

    config = Config()
    for section in fields(config):
        values = getattr(config, section.name)
        for f in fields(values):
            _check_allowed(values, f.name, getattr(values, f.name), f"[{section.name}] {f.name}")
    edge = build_config({"calibrate": {"max_bad_fraction": 1.0, "clip_iters": 0},
                         "site": {"latitude": -90.0}, "camera": {"gain": 0.0},
                         "photometry": {"apertures": ["3.0:3.0:1.0"]}})
    assert edge.calibrate.max_bad_fraction == 1.0 and edge.site.latitude == -90.0


def test_the_choices_are_those_the_stages_accept():
    """The allowed values in trex/config.py are the ones the modules implement."""
    from trex.aperture import SKY_METHODS
    from trex.config import _choice
    from trex.epd import PARAMETERS
    from trex.register import METHODS

    def allowed(section, key):
        check = next(f for f in fields(getattr(Config(), section)) if f.name == key).metadata["check"]
        return check("\x00").removeprefix("allowed: ").split(", ")

    assert set(allowed("photometry", "sky_method")) == set(SKY_METHODS)
    assert allowed("subtract", "resample") == list(METHODS)
    assert allowed("calibrate", "overscan") == ["row", "median", "none"]
    assert _choice("a")("a") is None
    every = build_config({"detrend": {"epd_parameters": list(PARAMETERS)}})
    assert every.detrend.epd_parameters == tuple(PARAMETERS)


def test_command_line_values_are_checked_too(tmp_path):
    path = tmp_path / "trex.toml"
    path.write_text("")
    with pytest.raises(ConfigError, match=r"command line: \[calibrate\] overscan = \"rows\""):
        load_config(path, {"calibrate": {"overscan": "rows"}})
