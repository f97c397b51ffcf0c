"""What flows through the per-frame stages, and what they share.

A per-frame stage is a function ``run(frame: Frame, context: Context) -> Frame``
in the module named after it (``trex.calibrate.run``, ``trex.extract.run``,
...).  It reads what earlier stages left on the frame, adds its own products,
and raises :class:`trex.fits.FrameError` when the frame is bad (the driver then
records the stage and the reason and goes on with the next frame).  Stages
never touch the database: the driver (rank 0) writes what they return.

:class:`Context` holds what every rank needs and no stage changes: the
project, the configuration, and the project-level products (masters,
catalogs, references) built between the per-frame passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits as afits

from trex.config import Config
from trex.header import FrameMeta
from trex.project import Project


@dataclass
class Frame:
    """One object frame on its way through the pipeline.

    Attributes
    ----------
    framekey : database key (``frameinfo.framekey``).
    rawpath : the raw file (absolute path).
    night : the RAW/<night> folder name.
    meta : parsed header (SPEC section 2).
    image : calibrated image, float32, shape (ny, nx), ADU; None until calibrated.
    mask : uint8, shape (ny, nx), bits of ``trex.flags.MASK``.
    header : header of the calibrated frame (original keys plus what trex added).
    redpath : the calibrated frame in RED/<projid>/ (absolute path).
    sources : structured array from ``trex.extract.extract_sources``.
    wcs : astropy WCS solved against the field catalog.
    products : per-stage outputs (e.g. "photometry": dict of per-star arrays).
    quality : per-frame numbers for ``calibratedframes`` (medsky, fwhm, wcs_median, ...).
    """

    framekey: int
    rawpath: Path
    night: str
    meta: FrameMeta
    image: np.ndarray | None = None
    mask: np.ndarray | None = None
    header: afits.Header | None = None
    redpath: Path | None = None
    sources: np.ndarray | None = None
    wcs: Any = None
    products: dict = field(default_factory=dict)
    quality: dict = field(default_factory=dict)

    def release_pixels(self) -> None:
        """Drop the image and mask (keep the small products) to bound memory."""
        self.image = None
        self.mask = None


@dataclass(frozen=True)
class Context:
    """Read-only inputs shared by every rank for one run.

    ``masters`` maps (kind, night, ccd, filter) to master-frame paths;
    ``catalogs`` maps a field name to its catalog table; ``magfit`` maps
    (projid, field) to the magnitude-fit master (ncatalog, napertures);
    ``photref`` maps (projid, field, ccd) to the photometric reference
    (:class:`trex.photref.Reference`); ``templates`` maps (projid, field) to the
    TFA templates and ``trends`` to the night trends of this run
    (:mod:`trex.detrend`); ``frames`` the frames being merged into the light
    curves (:class:`trex.lightcurves.FrameTable`); ``inputs`` holds what identifies each of them for the
    ledger (e.g. ``("catalog", field) -> "F1.csv:2048:..."``); ``rebuild`` asks
    the reference phases to make their references again; ``nights``, when not
    empty, limits the run to the raw files and frames of those nights
    (``trex run --nights``); ``ranks`` is the number of MPI ranks sharing the
    work (phases cut their work finer when it is above 1).
    """

    project: Project
    config: Config
    masters: dict = field(default_factory=dict)
    catalogs: dict = field(default_factory=dict)
    magfit: dict = field(default_factory=dict)
    photref: dict = field(default_factory=dict)
    templates: dict = field(default_factory=dict)
    trends: dict = field(default_factory=dict)
    frames: Any = None
    inputs: dict = field(default_factory=dict)
    rebuild: bool = False
    nights: tuple = ()
    ranks: int = 1

    def of_nights(self, night: str) -> bool:
        """Whether this run works on ``night`` (``--nights``, or every night)."""
        return not self.nights or night in self.nights
