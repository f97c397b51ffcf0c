"""The atmosphere in front of each star: extinction with airmass and colour, clouds, scintillation.

All functions are vectorised over stars; none loops in Python per star.

Extinction of a star (mag) on the realistic model::

    A = (k + k_c * colour) * X_star + clouds(x, y, t)

with ``k`` mag per airmass, ``k_c`` mag per airmass per mag of catalog colour,
``X_star`` the airmass at the star's own altitude (a wide field spans a range
of airmass) and ``clouds`` a thin-cloud screen (mag, >= 0) that drifts across
the field between frames.  Scintillation follows Young (1967) in the form of
Dravins et al. (1998, PASP 110, 610, eq. 10)::

    sigma = 0.09 D^(-2/3) X^1.75 exp(-h / 8000 m) (2 t)^(-1/2)

(relative flux rms; D aperture in cm, t exposure in s, h site altitude in m).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCALE_HEIGHT = 8000.0    # m, of the scintillation-producing turbulence (Young 1967)
CLOUD_MODES = 24         # Fourier modes of the cloud screen


def extinction(airmass: np.ndarray, colour: np.ndarray, k: float, k_colour: float) -> np.ndarray:
    """Atmospheric extinction, mag, shape (n,): ``(k + k_colour * colour) * airmass``."""
    return (k + k_colour * np.asarray(colour, float)) * np.asarray(airmass, float)


def young_scintillation(aperture_cm: float, airmass, exptime: float,
                        altitude_m: float) -> np.ndarray:
    """Relative flux rms from scintillation (Young 1967 / Dravins et al. 1998), shape of airmass."""
    return (0.09 * aperture_cm ** (-2.0 / 3.0) * np.asarray(airmass, float) ** 1.75
            * np.exp(-altitude_m / SCALE_HEIGHT) / np.sqrt(2.0 * exptime))


@dataclass(frozen=True)
class CloudScreen:
    """A smooth random screen of unit rms, a sum of plane waves drifting with the wind.

    ``waves`` (CLOUD_MODES, 3): wave vector kx, ky (rad/px) and phase (rad);
    ``wind`` (2,): drift of the screen, px/h.
    """

    waves: np.ndarray
    wind: np.ndarray

    def at(self, x: np.ndarray, y: np.ndarray, hours: float) -> np.ndarray:
        """Screen value (unit rms, zero mean) at pixel positions (x, y) after ``hours``."""
        xs = np.asarray(x, float) - self.wind[0] * hours
        ys = np.asarray(y, float) - self.wind[1] * hours
        out = np.zeros(np.broadcast(xs, ys).shape)
        for kx, ky, phase in self.waves:
            out += np.cos(kx * xs + ky * ys + phase)
        return out * np.sqrt(2.0 / len(self.waves))


def make_screen(rng: np.random.Generator, scale: float, speed: float) -> CloudScreen:
    """A cloud screen with structures of ``scale``/2 to 2 ``scale`` px moving ``speed`` px/h."""
    wavelength = scale * np.exp(rng.uniform(np.log(0.5), np.log(2.0), CLOUD_MODES))
    angle = rng.uniform(0.0, 2 * np.pi, CLOUD_MODES)
    k = 2 * np.pi / wavelength
    waves = np.column_stack([k * np.cos(angle), k * np.sin(angle),
                             rng.uniform(0.0, 2 * np.pi, CLOUD_MODES)])
    heading = rng.uniform(0.0, 2 * np.pi)
    return CloudScreen(waves=waves, wind=speed * np.array([np.cos(heading), np.sin(heading)]))


def cloud_extinction(screen: CloudScreen, x: np.ndarray, y: np.ndarray, hours: float,
                     mean_mag: float, structure: float) -> np.ndarray:
    """Cloud extinction, mag >= 0, at (x, y): ``mean_mag * max(0, 1 + structure * screen)``."""
    return mean_mag * np.maximum(0.0, 1.0 + structure * screen.at(x, y, hours))
