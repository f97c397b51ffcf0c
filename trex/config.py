"""Project configuration: one frozen, typed object built from ``trex.toml``.

Every tunable of every stage has a default here, with its help text next to
it; ``trex init`` writes these defaults, with the help as comments, into
``ROOT/trex.toml``.  Unknown sections or keys, wrong types and values outside
what a setting allows (its ``check``: a choice, a range, a name list, a
syntax) are errors that name the file, the key and what is allowed, raised
when the file is loaded, before any work.  Nothing here reads the environment.

>>> cfg = load_config(Path("ROOT/trex.toml"))
>>> cfg.photometry.apertures
('1.95:7.0:6.0', '2.45:7.0:6.0', '2.95:7.0:6.0')
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration file or value that trex cannot use."""


def _opt(default: Any, help: str, check: Callable[[Any], str | None] | None = None) -> Any:
    """A setting: its default, its help (the comment in trex.toml) and the check of its
    value (returns None, or what is allowed)."""
    if isinstance(default, list):
        default = tuple(default)
    return field(default=default, metadata={"help": help, "check": check})


def _range(low: float | None = None, high: float | None = None, strict: bool = False,
           integer: bool = False) -> Callable[[Any], str | None]:
    """Values in [low, high] (``strict``: in (low, high)); either end may be open."""
    kind = "an integer" if integer else "a number"
    if low is not None and high is not None:
        text = f"{kind} {'strictly ' if strict else ''}between {low:g} and {high:g}"
    elif low is not None:
        text = f"{kind} {'>' if strict else '>='} {low:g}"
    else:
        text = f"{kind} {'<' if strict else '<='} {high:g}"

    def check(value: float) -> str | None:
        above = low is None or (value > low if strict else value >= low)
        below = high is None or (value < high if strict else value <= high)
        return None if above and below else f"allowed: {text}"
    return check


def _choice(*allowed: str) -> Callable[[str], str | None]:
    return lambda value: None if value in allowed else f"allowed: {', '.join(allowed)}"


POSITIVE = _range(0, strict=True)
NONNEGATIVE = _range(0)
COUNT = _range(1, integer=True)
FRACTION = _range(0, 1, strict=True)


def _url(value: str) -> str | None:
    if value == "" or value.startswith(("sqlite:///", "postgresql://", "postgres://")):
        return None
    return "allowed: empty (ROOT/trex.sqlite), sqlite:///path or postgresql://user@host:port/db"


def _keyword(value: str) -> str | None:
    if value and len(value) <= 70 and all(" " <= c <= "~" for c in value) and "=" not in value:
        return None
    return "allowed: a FITS keyword name (printable ASCII without '=', 1-70 characters)"


def _apertures(specs: tuple[str, ...]) -> str | None:
    """Each spec ``radius:annulus_inner:annulus_width``, 0 < radius <= inner, width > 0."""
    for spec in specs:
        try:
            radius, inner, width = (float(v) for v in spec.split(":"))
        except ValueError:
            radius = inner = width = float("nan")
        if not (0 < radius <= inner and width > 0 and math.isfinite(inner + width)):
            return (f"{spec!r} is not allowed: each aperture is 'radius:annulus_inner:"
                    "annulus_width' in px with 0 < radius <= annulus_inner and annulus_width > 0")
    return None if specs else "allowed: one aperture or more"


def _kernel(value: str) -> str | None:
    from trex.kernelspec import parse_kernel

    try:
        parse_kernel(value)
    except ValueError as err:
        return f"{err} (fitsh ficonv syntax, e.g. 'b/4;i/4;d=4/4')"
    return None


def _epd_names(names: tuple[str, ...]) -> str | None:
    from trex.epd import PARAMETERS

    unknown = [n for n in names if n not in PARAMETERS]
    if not unknown and len(set(names)) == len(names):
        return None
    problem = f"unknown {', '.join(map(repr, unknown))}" if unknown else "a name given twice"
    return f"{problem}; allowed: names among {', '.join(PARAMETERS)}, each once"


@dataclass(frozen=True)
class ProjectSection:
    projid: str = _opt("", "project id used when a frame has no PROJID header (empty: required in header)")
    field: str = _opt("", "field name used when a frame has no OBJECT/FIELD header")


@dataclass(frozen=True)
class DatabaseSection:
    url: str = _opt("", "sqlite:///path or postgresql://user@host:port/db (empty: ROOT/trex.sqlite)",
                    _url)


@dataclass(frozen=True)
class HeaderSection:
    imagetyp: str = _opt("IMAGETYP", "frame type: bias/zero, dark, flat/skyflat, object/light/science",
                         _keyword)
    exptime: str = _opt("EXPTIME", "exposure time, s", _keyword)
    dateobs: str = _opt("DATE-OBS", "UTC start of exposure, ISO 8601", _keyword)
    timeobs: str = _opt("TIME-OBS", "UTC start time, when DATE-OBS holds only the date", _keyword)
    object: str = _opt("OBJECT", "field name (first choice)", _keyword)
    field: str = _opt("FIELD", "field name (second choice)", _keyword)
    projid: str = _opt("PROJID", "project id", _keyword)
    ccd: str = _opt("CCD", "camera/CCD id", _keyword)
    filter: str = _opt("FILTER", "filter name", _keyword)
    ra: str = _opt("RA", "pointing right ascension, deg or sexagesimal hours", _keyword)
    dec: str = _opt("DEC", "pointing declination, deg or sexagesimal", _keyword)
    pixscale: str = _opt("PIXSCALE", "approximate pixel scale, arcsec/px", _keyword)
    gain: str = _opt("GAIN", "e-/ADU", _keyword)
    rdnoise: str = _opt("RDNOISE", "read noise, e-", _keyword)
    saturate: str = _opt("SATURATE", "saturation level, ADU", _keyword)
    sitelat: str = _opt("SITELAT", "observatory latitude, deg", _keyword)
    sitelong: str = _opt("SITELONG", "observatory east longitude, deg", _keyword)
    sitealt: str = _opt("SITEALT", "observatory altitude, m", _keyword)
    biassec: str = _opt("BIASSEC", "IRAF overscan region [x1:x2,y1:y2], 1-based inclusive",
                        _keyword)
    trimsec: str = _opt("TRIMSEC", "IRAF trim region [x1:x2,y1:y2], 1-based inclusive", _keyword)


@dataclass(frozen=True)
class CameraSection:
    gain: float = _opt(0.0, "e-/ADU; 0 means read it from the header", NONNEGATIVE)
    rdnoise: float = _opt(-1.0, "read noise, e-; negative means read it from the header")
    saturate: float = _opt(0.0, "saturation, ADU; 0 means read it from the header (else 65535)",
                           NONNEGATIVE)
    pixscale: float = _opt(0.0, "arcsec/px; 0 means read it from the header", NONNEGATIVE)
    zeropoint: float = _opt(17.0, "magnitude zero point: mag = zeropoint - 2.5 log10(flux_ADU / exptime_s)")


@dataclass(frozen=True)
class SiteSection:
    latitude: float = _opt(-29.0146, "deg, used when frames have no SITELAT (default: Las Campanas)",
                           _range(-90, 90))
    longitude: float = _opt(-70.6926, "deg east, used when frames have no SITELONG",
                            _range(-360, 360))
    altitude: float = _opt(2380.0, "m, used when frames have no SITEALT")


@dataclass(frozen=True)
class CalibrateSection:
    clip_sigma: float = _opt(3.0, "sigma clipping threshold when combining masters", POSITIVE)
    clip_iters: int = _opt(3, "sigma clipping iterations when combining masters",
                           _range(0, integer=True))
    block_rows: int = _opt(256, "rows per block when stacking (bounds memory)", COUNT)
    hot_sigma: float = _opt(8.0, "a dark pixel this many sigma above the median is hot", POSITIVE)
    dead_fraction: float = _opt(0.5, "a flat pixel below this fraction of its neighbourhood is dead",
                                FRACTION)
    min_frames: int = _opt(3, "minimum number of frames for a master", COUNT)
    overscan: str = _opt("row", "overscan level: row (median of the BIASSEC columns in each row), "
                               "median (one median of the BIASSEC region) or none",
        _choice("row", "median", "none"))
    stack_mb: float = _opt(512.0, "memory budget of one row block of a master stack, MB "
                                  "(rows per block = min(block_rows, what fits))", POSITIVE)
    dead_box: int = _opt(32, "box size of the local flat median used to find dead pixels, px",
                         _range(3, integer=True))
    min_flat: float = _opt(0.05, "flat values below this are not divided (pixel flagged NOFLAT)",
                           FRACTION)
    max_bad_fraction: float = _opt(0.5, "a calibrated frame with more masked pixels than this fails",
                                   _range(0, 1))


@dataclass(frozen=True)
class ExtractSection:
    threshold: float = _opt(5.0, "detection threshold, in units of the background RMS", POSITIVE)
    mesh: int = _opt(64, "background mesh size, px", _range(8, integer=True))
    mesh_filter: int = _opt(3, "median filter size over the background mesh, meshes", COUNT)
    minarea: int = _opt(3, "minimum number of connected pixels above threshold", COUNT)
    fit_shape: bool = _opt(True, "fit the elliptical Gaussian S, D, K to each source")
    fit_radius: int = _opt(3, "half-size of the shape-fit window, px (about 1.2 FWHM or more)",
                           COUNT)
    filter_sigma: float = _opt(1.0, "sigma of the Gaussian matched filter before detection, px (0: none)",
                               NONNEGATIVE)
    min_sources: int = _opt(10, "a frame with fewer detected sources fails",
                            _range(0, integer=True))


@dataclass(frozen=True)
class AstrometrySection:
    sip_order: int = _opt(3, "order of the SIP distortion polynomial", _range(0, 9, integer=True))
    nbright: int = _opt(60, "number of bright sources/stars used for asterism matching",
                        _range(4, integer=True))
    match_radius: float = _opt(1.5, "match radius after the first solution, px", POSITIVE)
    max_median_residual: float = _opt(0.2, "frame fails when the median residual exceeds this, px",
                                      POSITIVE)
    max_p90_residual: float = _opt(0.5, "frame fails when the 90th percentile residual exceeds this, px",
                                   POSITIVE)
    min_matches: int = _opt(20, "frame fails with fewer matched stars", _range(3, integer=True))
    mag_limit: float = _opt(99.0, "faintest catalog magnitude used")
    search_radius: float = _opt(1.5, "largest error of the guessed pointing searched, deg",
                                _range(0, 180, strict=True))
    scale_tolerance: float = _opt(0.1, "largest fractional error of the guessed pixel scale",
                                  FRACTION)


@dataclass(frozen=True)
class PhotometrySection:
    apertures: tuple = _opt(
        ["1.95:7.0:6.0", "2.45:7.0:6.0", "2.95:7.0:6.0"],
        "apertures as 'radius:annulus_inner:annulus_width', px (fiphot style)",
        _apertures,
    )
    sky_method: str = _opt("mode", "sky estimator: mode (3 median - 2 mean), median or mean",
                           _choice("mode", "median", "mean"))
    sky_sigma: float = _opt(3.0, "sigma clipping threshold for the sky annulus", POSITIVE)
    sky_iters: int = _opt(10, "at most this many sigma clipping iterations for the sky annulus "
                              "(clipping stops when it changes nothing)", _range(0, integer=True))
    disjoint_radius: float = _opt(
        2.0, "annulus pixels within this distance of another star's aperture are left out, px",
        NONNEGATIVE)
    min_sky_pixels: int = _opt(40, "an annulus with fewer usable pixels takes its sky from the "
                                   "local background map (flag SKY_MAP)", COUNT)
    border: float = _opt(3.0, "stars closer than this to the frame edge are not measured, px "
                              "(below the largest aperture radius, OFF_FRAME flags follow)",
                         NONNEGATIVE)
    mag_limit: float = _opt(99.0, "faintest catalog magnitude measured")
    apcorr_radius: float = _opt(
        8.0, "aperture corrections (the light outside each aperture, applied to arm): the curve "
             "of growth of bright isolated stars is measured out to this radius, px (sky from "
             "2.5 to 3.75 times the radius; the light beyond from a fitted Moffat); 0: off")
    apcorr_min_snr: float = _opt(30.0, "aperture corrections: stars measured in apcorr_radius "
                                       "with a lower signal-to-noise ratio are not used")


@dataclass(frozen=True)
class MagfitSection:
    order: int = _opt(2, "order of the 2-D polynomial in x, y of the magnitude fit",
                      _range(0, 6, integer=True))
    clip_sigma: float = _opt(3.0, "clipping threshold of the magnitude fit: stars beyond it are "
                                  "weighted down smoothly, to zero at twice it", POSITIVE)
    clip_iters: int = _opt(3, "reweighting iterations of the magnitude fit", _range(0, integer=True))
    min_error: float = _opt(5e-3, "magnitude errors below this are raised to it for the weights, mag "
                                  "(a systematic floor, so that a few bright stars cannot dominate)",
        NONNEGATIVE)
    bright_mag: float = _opt(8.0, "brightest catalog magnitude used in the fit")
    faint_mag: float = _opt(12.0, "faintest catalog magnitude used in the fit")
    local_scale: float = _opt(30.0, "px: each star's correction adds the mean fit residual of the "
                                    "fitted stars around it (Gaussian sigma; itself and stars within "
                                    "15 px excluded), shrunk by the residual structure's "
                                    "share of its variance (none on a clear sky), for structure "
                                    "finer than the polynomial such as thin clouds; 0: off",
                              NONNEGATIVE)


@dataclass(frozen=True)
class SubtractSection:
    kernel: str = _opt("b/4;i/4;d=4/4", "kernel basis, fitsh ficonv syntax", _kernel)
    nref: int = _opt(20, "number of frames stacked into the photometric reference", COUNT)
    resample: str = _opt("flux", "resampling onto the reference grid: flux (conserving), bilinear, bicubic",
                         _choice("flux", "bilinear", "bicubic"))
    stamp_grid: int = _opt(8, "stamps are chosen on a grid of this many cells per side", COUNT)
    stamps_per_cell: int = _opt(1, "stamps on this many of the brightest suitable stars per grid "
                                   "cell (up to stamp_grid^2 x stamps_per_cell stamps)", COUNT)
    stamp_halfsize: int = _opt(10, "stamp half size, px", COUNT)
    stamp_threshold: float = _opt(10.0, "stamp stars peak this many sky sigmas above the sky",
                                  POSITIVE)
    stamp_reject: float = _opt(3.0, "drop stamps with chi2 this many robust sigmas over the median",
                               POSITIVE)
    diff_sky_method: str = _opt("mean", "sky estimator of the annuli on the difference image: "
                                        "mean, median or mode (D has no sky, only noise and "
                                        "residuals: the clipped mean is the least noisy)",
                                _choice("mean", "median", "mode"))
    transform_order: int = _opt(3, "polynomial order of the frame-to-reference pixel map",
                                _range(1, 6, integer=True))
    stack_block_rows: int = _opt(128, "rows per block when stacking the photometric reference "
                                      "(bounds memory to nref x rows x nx floats)", COUNT)
    replace_crowded: bool = _opt(False, "replace crowded stars' reference flux by the flux "
                                        "predicted from their catalog magnitude (CDIPS)")
    local_scale: float = _opt(30.0, "px: each star's difference flux is corrected by the mean "
                                    "residual -2.5 log10(F / F_ref) of the well-measured stars "
                                    "around it (Gaussian sigma; itself and stars within 15 px "
                                    "excluded), shrunk by the residual structure's share of its "
                                    "variance (none on a clear sky): the local transparency that "
                                    "the kernel's flux-scale polynomial misses (thin clouds); 0: off",
                              NONNEGATIVE)


@dataclass(frozen=True)
class LightcurvesSection:
    subdirs: bool = _opt(False, "spread light curves over LC/<projid>/<nn>/ subfolders")
    partition_rows: int = _opt(500_000, "measurements per scratch partition of the transposition "
                                        "(bounds the memory of grouping them by star: ~200 B each)",
        COUNT)


@dataclass(frozen=True)
class DetrendSection:
    epd_parameters: tuple = _opt(
        ["s", "d", "k", "s2", "d2", "k2", "sd", "sk", "dk", "sinx", "cosx", "siny", "cosy", "bg", "airmass"],
        "EPD external parameters (a night of n frames uses the first of epd_parameters, "
        "epd_reduced, epd_minimal with 3 (parameters + 1) <= n)",
        _epd_names,
    )
    epd_reduced: tuple = _opt(["s", "d", "k", "bg", "airmass"],
                              "EPD parameters of nights too short for epd_parameters", _epd_names)
    epd_minimal: tuple = _opt(["s", "airmass"], "EPD parameters of nights too short for epd_reduced",
                              _epd_names)
    epd_smooth: int = _opt(21, "median filter width applied before the EPD fit, points "
                               "(at most a third of a night's frames)", COUNT)
    signal_clip: float = _opt(5.0, "a star's running median over the EPD smoothing window (less the "
                                   "trend the TFA templates share) departing from its level by more "
                                   "than this many sigma of its point-to-point noise is its own "
                                   "signal: EPD and TFA are fitted without it, it is kept (0: off)",
                              NONNEGATIVE)
    signal_extend: float = _opt(1.5, "the own signal reaches out to where that departure falls "
                                     "below this many sigma (at most signal_clip)", NONNEGATIVE)
    tfa_templates: int = _opt(0, "number of TFA templates (0: chosen from the number of frames)",
                              _range(0, integer=True))
    tfa_exclusion_radius: float = _opt(20.0, "templates closer than this to the target are excluded, px",
                                       NONNEGATIVE)
    template_frames: int = _opt(40, "frames sampled (spread over the archive) to choose the TFA templates",
                                COUNT)
    template_pool: int = _opt(100, "TFA template candidates kept per column; a night uses the "
                                   "tfa_templates (or one per 20 frames) of them spread over the field",
        COUNT)
    night_gap: float = _opt(0.25, "frames further apart than this are on different nights "
                                  "(detrending is per night), d", POSITIVE)
    chunk_rows: int = _opt(500_000, "light-curve rows detrended together (bounds the memory of "
                                    "detrending: ~250 B each)", COUNT)


@dataclass(frozen=True)
class RunSection:
    batch_frames: int = _opt(4, "frames handed to a rank at a time", COUNT)
    progress_seconds: float = _opt(30.0, "seconds between progress lines of a phase", NONNEGATIVE)


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
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
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
            _check_allowed(current, key, checked[key], f"{source}: [{name}] {key}")
        sections[name] = dataclasses.replace(current, **checked)
        _check_together(name, sections[name], source)
    return dataclasses.replace(base, **sections)


def _check_allowed(section: Any, key: str, value: Any, where: str) -> None:
    """The setting's own check (see :func:`_opt`)."""
    check = next(f for f in fields(section) if f.name == key).metadata["check"]
    problem = check(value) if check is not None else None
    if problem is not None:
        raise ConfigError(f"{where} = {_toml_value(value)}: {problem}")


def _check_together(name: str, section: Any, source: str) -> None:
    """Rules between two settings of one section."""
    if name == "detrend" and section.signal_extend > section.signal_clip > 0:
        raise ConfigError(f"{source}: [detrend] signal_extend = {section.signal_extend:g} must not "
                          f"exceed signal_clip = {section.signal_clip:g}")
    if name == "magfit" and not section.bright_mag < section.faint_mag:
        raise ConfigError(f"{source}: [magfit] bright_mag = {section.bright_mag:g} must be below "
                          f"faint_mag = {section.faint_mag:g}")


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
