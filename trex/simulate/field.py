"""What stays fixed over all nights of a simulation: camera, optics, patterns, stars, options.

Everything is rebuilt deterministically from the saved parameters
(``simulation.json``), each part from its own random stream
``(seed, stream, ...)`` so that no two purposes share one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trex.simulate.detector import Camera, Patterns, make_patterns
from trex.simulate.optics import Optics
from trex.simulate.realism import Realism, resolve
from trex.simulate.stars import make_catalog, make_faint

#: numbers of the random streams (plan.py uses 3 and 8, __init__ 7 and 9)
CATALOG, CAMERA, OBJECT, CALIB, FLARES = 1, 2, 4, 5, 6
FAINT, BIAS_COLUMNS, FRAME_EXTRAS, FLAT_LIGHT = 10, 11, 12, 13


@dataclass
class Field:
    """The fixed parts of a simulation.

    ``catalog``: the stars in the catalog CSV (true values; see
    :func:`trex.simulate.stars.make_catalog`); ``faint``: stars below the
    catalog limit that are only in the images (same keys, empty on the simple
    model); ``realism``: the option set of the simulated world.
    """

    params: dict
    camera: Camera
    optics: Optics
    patterns: Patterns
    catalog: dict
    realism: Realism
    faint: dict


def field_radius(optics: Optics) -> float:
    """Radius (deg) of the sky disc from which stars are drawn: the frame's half diagonal + 6 %."""
    return np.sqrt(0.5) * optics.size * optics.pixscale / 3600.0 * 1.06


def make_field(params: dict) -> Field:
    """Rebuild the fixed parts of a simulation from its parameters (deterministic)."""
    seed = params["seed"]
    realism = resolve(params.get("realism"))
    camera = Camera(**params["camera"])
    optics = Optics(**params["optics"])
    radius = field_radius(optics)
    catalog = make_catalog(np.random.default_rng([seed, CATALOG]), params["stars"],
                           params["ra"], params["dec"], radius, tuple(params["mag_range"]))
    patterns = make_patterns(camera, optics.size, np.random.default_rng([seed, CAMERA]))
    if realism.bias_columns > 0:
        rng = np.random.default_rng([seed, BIAS_COLUMNS])
        patterns.columns = rng.normal(0.0, realism.bias_columns, optics.size).astype(np.float32)
    if realism.faint_depth > 0:
        faint = make_faint(np.random.default_rng([seed, FAINT]), params["stars"], params["ra"],
                           params["dec"], radius, tuple(params["mag_range"]),
                           realism.faint_depth)
    else:
        faint = make_catalog(np.random.default_rng([seed, FAINT]), 0, params["ra"],
                             params["dec"], radius)
    return Field(params=params, camera=camera, optics=optics, patterns=patterns,
                 catalog=catalog, realism=realism, faint=faint)
