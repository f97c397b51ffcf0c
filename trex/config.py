"""Project configuration: one frozen, typed object built from ``trex.toml``.

Every tunable of every stage has a default here, with its help text next to
it; ``trex init`` writes these defaults, with the help as comments, into
``ROOT/trex.toml``.  Unknown sections or keys and wrong types are errors that
name the file and the key.  Nothing here reads the environment.

>>> cfg = load_config(Path("ROOT/trex.toml"))
>>> cfg.photometry.apertures
('1.95:7.0:6.0', '2.45:7.0:6.0', '2.95:7.0:6.0')
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration file or value that trex cannot use."""


def _opt(default: Any, help: str) -> Any:
    if isinstance(default, list):
        default = tuple(default)
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ProjectSection:
    projid: str = _opt("", "project id used when a frame has no PROJID header (empty: required in header)")
    field: str = _opt("", "field name used when a frame has no OBJECT/FIELD header")


@dataclass(frozen=True)
class DatabaseSection:
    url: str = _opt("", "sqlite:///path or postgresql://user@host:port/db (empty: ROOT/trex.sqlite)")


@dataclass(frozen=True)
class HeaderSection:
    imagetyp: str = _opt("IMAGETYP", "frame type: bias/zero, dark, flat/skyflat, object/light/science")
    exptime: str = _opt("EXPTIME", "exposure time, s")
    dateobs: str = _opt("DATE-OBS", "UTC start of exposure, ISO 8601")
    timeobs: str = _opt("TIME-OBS", "UTC start time, when DATE-OBS holds only the date")
    object: str = _opt("OBJECT", "field name (first choice)")
    field: str = _opt("FIELD", "field name (second choice)")
    projid: str = _opt("PROJID", "project id")
    ccd: str = _opt("CCD", "camera/CCD id")
    filter: str = _opt("FILTER", "filter name")
    ra: str = _opt("RA", "pointing right ascension, deg or sexagesimal hours")
    dec: str = _opt("DEC", "pointing declination, deg or sexagesimal")
    pixscale: str = _opt("PIXSCALE", "approximate pixel scale, arcsec/px")
    gain: str = _opt("GAIN", "e-/ADU")
    rdnoise: str = _opt("RDNOISE", "read noise, e-")
    saturate: str = _opt("SATURATE", "saturation level, ADU")
    sitelat: str = _opt("SITELAT", "observatory latitude, deg")
    sitelong: str = _opt("SITELONG", "observatory east longitude, deg")
    sitealt: str = _opt("SITEALT", "observatory altitude, m")
    biassec: str = _opt("BIASSEC", "IRAF overscan region [x1:x2,y1:y2], 1-based inclusive")
    trimsec: str = _opt("TRIMSEC", "IRAF trim region [x1:x2,y1:y2], 1-based inclusive")


@dataclass(frozen=True)
class CameraSection:
    gain: float = _opt(0.0, "e-/ADU; 0 means read it from the header")
    rdnoise: float = _opt(-1.0, "read noise, e-; negative means read it from the header")
    saturate: float = _opt(0.0, "saturation, ADU; 0 means read it from the header (else 65535)")
    pixscale: float = _opt(0.0, "arcsec/px; 0 means read it from the header")
    zeropoint: float = _opt(17.0, "magnitude zero point: mag = zeropoint - 2.5 log10(flux_ADU / exptime_s)")


@dataclass(frozen=True)
class SiteSection:
    latitude: float = _opt(-29.0146, "deg, used when frames have no SITELAT (default: Las Campanas)")
    longitude: float = _opt(-70.6926, "deg east, used when frames have no SITELONG")
    altitude: float = _opt(2380.0, "m, used when frames have no SITEALT")


@dataclass(frozen=True)
class CalibrateSection:
    clip_sigma: float = _opt(3.0, "sigma clipping threshold when combining masters")
    clip_iters: int = _opt(3, "sigma clipping iterations when combining masters")
    block_rows: int = _opt(256, "rows per block when stacking (bounds memory)")
    hot_sigma: float = _opt(8.0, "a dark pixel this many sigma above the median is hot")
    dead_fraction: float = _opt(0.5, "a flat pixel below this fraction of its neighbourhood is dead")
    min_frames: int = _opt(3, "minimum number of frames for a master")
    overscan: str = _opt("row", "overscan level: row (median of the BIASSEC columns in each row), "
                               "median (one median of the BIASSEC region) or none")
    stack_mb: float = _opt(512.0, "memory budget of one row block of a master stack, MB "
                                  "(rows per block = min(block_rows, what fits))")
    dead_box: int = _opt(32, "box size of the local flat median used to find dead pixels, px")
    min_flat: float = _opt(0.05, "flat values below this are not divided (pixel flagged NOFLAT)")
    max_bad_fraction: float = _opt(0.5, "a calibrated frame with more masked pixels than this fails")


@dataclass(frozen=True)
class ExtractSection:
    threshold: float = _opt(5.0, "detection threshold, in units of the background RMS")
    mesh: int = _opt(64, "background mesh size, px")
    mesh_filter: int = _opt(3, "median filter size over the background mesh, meshes")
    minarea: int = _opt(3, "minimum number of connected pixels above threshold")
    fit_shape: bool = _opt(True, "fit the elliptical Gaussian S, D, K to each source")
    fit_radius: int = _opt(3, "half-size of the shape-fit window, px (about 1.2 FWHM or more)")
    filter_sigma: float = _opt(1.0, "sigma of the Gaussian matched filter before detection, px (0: none)")
    min_sources: int = _opt(10, "a frame with fewer detected sources fails")


@dataclass(frozen=True)
class AstrometrySection:
    sip_order: int = _opt(3, "order of the SIP distortion polynomial")
    nbright: int = _opt(60, "number of bright sources/stars used for asterism matching")
    match_radius: float = _opt(1.5, "match radius after the first solution, px")
    max_median_residual: float = _opt(0.2, "frame fails when the median residual exceeds this, px")
    max_p90_residual: float = _opt(0.5, "frame fails when the 90th percentile residual exceeds this, px")
    min_matches: int = _opt(20, "frame fails with fewer matched stars")
    mag_limit: float = _opt(99.0, "faintest catalog magnitude used")
    search_radius: float = _opt(1.5, "largest error of the guessed pointing searched, deg")
    scale_tolerance: float = _opt(0.1, "largest fractional error of the guessed pixel scale")


@dataclass(frozen=True)
class PhotometrySection:
    apertures: tuple = _opt(
        ["1.95:7.0:6.0", "2.45:7.0:6.0", "2.95:7.0:6.0"],
        "apertures as 'radius:annulus_inner:annulus_width', px (fiphot style)",
    )
    sky_method: str = _opt("mode", "sky estimator: mode (3 median - 2 mean), median or mean")
    sky_sigma: float = _opt(3.0, "sigma clipping threshold for the sky annulus")
    sky_iters: int = _opt(2, "sigma clipping iterations for the sky annulus")
    disjoint_radius: float = _opt(
        2.0, "annulus pixels within this distance of another star's aperture are left out, px")
    min_sky_pixels: int = _opt(10, "fewer sky pixels than this flag the measurement")
    border: float = _opt(13.0, "stars closer than this to the frame edge are not measured, px "
                               "(at least the outer annulus radius, or OFF_FRAME flags follow)")
    mag_limit: float = _opt(99.0, "faintest catalog magnitude measured")


@dataclass(frozen=True)
class MagfitSection:
    order: int = _opt(2, "order of the 2-D polynomial in x, y of the magnitude fit")
    clip_sigma: float = _opt(3.0, "clipping threshold of the magnitude fit")
    clip_iters: int = _opt(3, "clipping iterations of the magnitude fit")
    min_error: float = _opt(5e-3, "magnitude errors below this are raised to it for the weights, mag "
                                  "(a systematic floor, so that a few bright stars cannot dominate)")
    bright_mag: float = _opt(8.0, "brightest catalog magnitude used in the fit")
    faint_mag: float = _opt(12.0, "faintest catalog magnitude used in the fit")


@dataclass(frozen=True)
class SubtractSection:
    kernel: str = _opt("b/4;i/4;d=4/4", "kernel basis, fitsh ficonv syntax")
    nref: int = _opt(20, "number of frames stacked into the photometric reference")
    resample: str = _opt("flux", "resampling onto the reference grid: flux (conserving), bilinear, bicubic")
    stamp_grid: int = _opt(16, "stamps are chosen on a grid of this many cells per side")
    stamps_per_cell: int = _opt(4, "stamps on this many of the brightest suitable stars per grid "
                                   "cell (up to stamp_grid^2 x stamps_per_cell stamps)")
    stamp_halfsize: int = _opt(10, "stamp half size, px")
    stamp_threshold: float = _opt(10.0, "stamp stars peak this many sky sigmas above the sky")
    stamp_reject: float = _opt(3.0, "drop stamps with chi2 this many robust sigmas over the median")
    transform_order: int = _opt(3, "polynomial order of the frame-to-reference pixel map")
    stack_block_rows: int = _opt(128, "rows per block when stacking the photometric reference "
                                      "(bounds memory to nref x rows x nx floats)")
    replace_crowded: bool = _opt(False, "replace crowded stars' reference flux by the flux "
                                        "predicted from their catalog magnitude (CDIPS)")


@dataclass(frozen=True)
class LightcurvesSection:
    subdirs: bool = _opt(False, "spread light curves over LC/<projid>/<nn>/ subfolders")
    partition_rows: int = _opt(500_000, "measurements per scratch partition of the transposition "
                                        "(bounds the memory of grouping them by star: ~200 B each)")


@dataclass(frozen=True)
class DetrendSection:
    epd_parameters: tuple = _opt(
        ["s", "d", "k", "s2", "d2", "k2", "sd", "sk", "dk", "sinx", "cosx", "siny", "cosy", "bg", "airmass"],
        "EPD external parameters (a night of n frames uses the first of epd_parameters, "
        "epd_reduced, epd_minimal with 3 (parameters + 1) <= n)",
    )
    epd_reduced: tuple = _opt(["s", "d", "k", "bg", "airmass"],
                              "EPD parameters of nights too short for epd_parameters")
    epd_minimal: tuple = _opt(["s", "airmass"], "EPD parameters of nights too short for epd_reduced")
    epd_smooth: int = _opt(21, "median filter width applied before the EPD fit, points "
                               "(at most a third of a night's frames)")
    tfa_templates: int = _opt(0, "number of TFA templates (0: chosen from the number of frames)")
    tfa_exclusion_radius: float = _opt(20.0, "templates closer than this to the target are excluded, px")
    template_frames: int = _opt(40, "frames sampled (spread over the archive) to choose the TFA templates")
    template_pool: int = _opt(100, "TFA template candidates kept per column; a night uses the "
                                   "tfa_templates (or one per 20 frames) of them spread over the field")
    night_gap: float = _opt(0.25, "frames further apart than this are on different nights "
                                  "(detrending is per night), d")
    chunk_rows: int = _opt(500_000, "light-curve rows detrended together (bounds the memory of "
                                    "detrending: ~250 B each)")


@dataclass(frozen=True)
class RunSection:
    batch_frames: int = _opt(4, "frames handed to a rank at a time")
    progress_seconds: float = _opt(30.0, "seconds between progress lines of a phase")


@dataclass(frozen=True)
class Config:
    project: ProjectSection = ProjectSection()
    database: DatabaseSection = DatabaseSection()
    header: HeaderSection = HeaderSection()
    camera: CameraSection = CameraSection()
    site: SiteSection = SiteSection()
    calibrate: CalibrateSection = CalibrateSection()
    extract: ExtractSection = ExtractSection()
    astrometry: AstrometrySection = AstrometrySection()
    photometry: PhotometrySection = PhotometrySection()
    magfit: MagfitSection = MagfitSection()
    subtract: SubtractSection = SubtractSection()
    lightcurves: LightcurvesSection = LightcurvesSection()
    detrend: DetrendSection = DetrendSection()
    run: RunSection = RunSection()

    @functools.cached_property
    def sha(self) -> str:
        """SHA-256 (hex, 16 chars) of the effective configuration, for provenance."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def section_sha(self, sections: tuple[str, ...]) -> str:
        """SHA-256 (hex, 16 chars) of some sections of the configuration: what a stage's
        results depend on (``trex.stages``)."""
        text = json.dumps({name: dataclasses.asdict(getattr(self, name)) for name in sections},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def replace(self, section: str, **values: Any) -> Config:
        """A copy with some values of one section changed (validated)."""
        return build_config({section: values}, base=self, source="<override>")


def _check_value(value: Any, kind: Any, where: str) -> Any:
    if kind is tuple or get_origin(kind) is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        return tuple(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {kind}")  # pragma: no cover


def build_config(data: dict, base: Config | None = None, source: str = "<dict>") -> Config:
    """Validate a nested mapping (as read from TOML) and merge it over ``base``."""
    base = base or Config()
    sections = {}
    for name, values in data.items():
        if name not in {f.name for f in fields(Config)}:
            raise ConfigError(f"{source}: unknown section [{name}]")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{name}] must be a table")
        current = getattr(base, name)
        hints = get_type_hints(type(current))
        known = {f.name for f in fields(current)}
        checked = {}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"{source}: unknown key '{key}' in [{name}]")
            checked[key] = _check_value(value, hints[key], f"{source}: [{name}] {key}")
        sections[name] = dataclasses.replace(current, **checked)
    return dataclasses.replace(base, **sections)


def load_config(path: Path | str, overrides: dict | None = None) -> Config:
    """Read ``trex.toml`` at ``path`` and apply ``overrides`` ({section: {key: value}})."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    config = build_config(data, source=str(path))
    if overrides:
        config = build_config(overrides, base=config, source="command line")
    return config


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    return repr(value)


def render_toml(config: Config | None = None) -> str:
    """The configuration as commented TOML (what ``trex init`` writes)."""
    config = config or Config()
    lines = [
        "# trex project configuration.",
        "# Every key is optional: a missing key takes the default shown here.",
        "",
    ]
    for section in fields(Config):
        lines.append(f"[{section.name}]")
        values = getattr(config, section.name)
        for f in fields(values):
            lines.append(f"# {f.metadata['help']}")
            lines.append(f"{f.name} = {_toml_value(getattr(values, f.name))}")
        lines.append("")
    return "\n".join(lines)
