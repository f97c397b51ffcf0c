"""How much of the real sky and camera the simulator puts into a night: one frozen option set.

``SIMPLE`` is the world built from the pipeline's own models (elliptical
Gaussian PSF, SIP-3 distortion, one extinction per frame, flats lit like the
sky, an overscan carrying exactly the bias rows, no star below the catalog
limit, pointing known to a few px); its output is the same, byte for byte, as
before this option set existed.  ``REALISTIC`` adds what the pipeline does not
model itself:

- PSF: Moffat (``psf_beta``), pixel-integrated, FWHM ``fwhm`` px at the axis,
  ``fwhm_corner`` broader and ``ellipticity`` elongated at the corners, scaled
  by the night's focus;
- distortion: a radial r⁴ term (order 5) and an order-4 term on top of the
  barrel (order 3) and tilt (order 2);
- extinction per star: airmass at the star's own position, a colour term
  ``extinction_color`` mag per airmass per mag of catalog colour, thin clouds
  as a smooth random screen (``cirrus`` mag mean, ``cloud_structure``
  relative rms, ``cloud_scale`` px, moving ``cloud_speed`` px/h);
- scintillation (Young 1967, as written by Dravins et al. 1998) for a lens of
  ``aperture`` cm;
- stars down to ``faint_depth`` mag below the catalog limit, not in the catalog;
- twilight flats with an illumination slope ``flat_gradient`` that the night
  sky does not have; an overscan with its own read noise
  (``overscan_rdnoise``) and row offsets that differ from the image's
  (``overscan_mismatch``); a fixed column pattern in the bias (``bias_columns``);
- satellite trails (``trail_rate`` per frame) and charge bleeding along
  columns above ``full_well``;
- pointing errors of ``pointing_error`` deg (range) between the header RA/DEC
  and the true pointing, a field rotation offset and per-frame rotation jitter;
- optionally transits forced onto bright stars and onto stars with a bright
  neighbour (``transits_bright``, ``transits_crowded``).

>>> from dataclasses import replace
>>> options = replace(REALISTIC, transits_bright=5, trail_rate=1.0)
>>> simulate_project(root, realism=options)          # or realism="realistic"
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from trex.config import ConfigError


@dataclass(frozen=True)
class Realism:
    """Options of the simulated world; defaults are the ``simple`` preset.  Units in comments."""

    name: str = "simple"
    # PSF and optics (fwhm, fwhm_corner, ellipticity, distortion go into Optics)
    psf_beta: float = 0.0             # Moffat beta; 0 = elliptical Gaussian
    psf_wing_cut: float = 1e-5        # flux fraction a Moffat star may lose beyond its stamp
    psf_floor: float = 0.1            # e-/px: Moffat wings fainter than this are not drawn
    fwhm: float = 2.0                 # px at the optical axis, best focus
    fwhm_corner: float = 0.3          # relative FWHM growth from the axis to the corners
    ellipticity: float = 0.25         # 1 - b/a at the corners (radial)
    radial5: float = 0.0              # order-5 radial distortion, px at 1024 px from the axis
    quartic: float = 0.0              # order-4 distortion, px at 1024 px from the axis
    # atmosphere
    field_airmass: bool = False       # airmass at each star instead of at the field centre
    extinction_color: float = 0.0     # mag per airmass per mag of catalog colour
    cirrus: float = 0.0               # mean thin-cloud extinction, mag
    cloud_structure: float = 0.0      # relative rms of the cloud screen
    cloud_scale: float = 400.0        # px: typical size of cloud structures
    cloud_speed: float = 600.0        # px/h: drift of the cloud screen
    aperture: float = 0.0             # cm: lens aperture for scintillation; 0 = none
    # sky content
    faint_depth: float = 0.0          # mag below the catalog limit that the image reaches
    transits_bright: int = 0          # transits forced onto bright unsaturated stars
    transits_crowded: int = 0         # transits forced onto stars with a bright neighbour
    crowded_radius: float = 6.0       # px: neighbour distance for transits_crowded
    # detector and calibration
    flat_gradient: float = 0.0        # twilight-flat illumination slope over the half frame
    overscan_rdnoise: float = 0.0     # e-: overscan read noise; 0 = the camera's
    overscan_mismatch: float = 0.0    # ADU rms: row offsets of the overscan not in the image
    bias_columns: float = 0.0         # ADU rms: fixed column pattern of the bias
    full_well: float = 0.0            # e-: charge bleeds along columns above this; 0 = none
    trail_rate: float = 0.0           # satellite trails per object frame (Poisson mean)
    # pointing
    pointing_error: tuple[float, float] = (0.0, 0.0)   # deg: range of |true - header|
    rotation_error: float = 0.0       # deg rms: rotation offset per night
    rotation_jitter: float = 0.0      # deg rms: extra rotation jitter per frame

    def to_json(self) -> dict:
        """The options as a JSON-ready dict (saved in ``simulation.json``)."""
        out = dataclasses.asdict(self)
        out["pointing_error"] = list(self.pointing_error)
        return out

    @property
    def is_simple(self) -> bool:
        """True when every option is the simple model's (whatever the name)."""
        return dataclasses.replace(self, name="simple") == Realism()


SIMPLE = Realism()

REALISTIC = Realism(
    name="realistic", psf_beta=3.0, fwhm=2.4, fwhm_corner=0.35, ellipticity=0.3,
    radial5=0.6, quartic=0.3, field_airmass=True, extinction_color=0.04, cirrus=0.03,
    cloud_structure=0.6, aperture=7.1, faint_depth=2.0, transits_bright=3,
    transits_crowded=3, flat_gradient=0.04, overscan_rdnoise=13.0, overscan_mismatch=0.8,
    bias_columns=1.5, full_well=180000.0, trail_rate=0.2, pointing_error=(0.1, 0.3),
    rotation_error=0.3, rotation_jitter=0.02)

PRESETS = {"simple": SIMPLE, "realistic": REALISTIC}


def resolve(realism: str | Realism | dict | None) -> Realism:
    """The option set named (``"simple"``, ``"realistic"``), given, or saved as a dict.

    None (a simulation saved before options existed) is ``SIMPLE``.  Raises
    ConfigError for an unknown preset name or unknown option keys.
    """
    if realism is None:
        return SIMPLE
    if isinstance(realism, Realism):
        return realism
    if isinstance(realism, str):
        if realism not in PRESETS:
            raise ConfigError(f"simulate: unknown realism {realism!r} "
                              f"(choose from {', '.join(PRESETS)})")
        return PRESETS[realism]
    known = {f.name for f in dataclasses.fields(Realism)}
    unknown = set(realism) - known
    if unknown:
        raise ConfigError(f"simulate: unknown realism options {sorted(unknown)}")
    values = dict(realism)
    if "pointing_error" in values:
        values["pointing_error"] = tuple(values["pointing_error"])
    return Realism(**values)
