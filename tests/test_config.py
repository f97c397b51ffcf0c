"""Configuration: defaults, the trex.toml template, errors that name the key."""

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
