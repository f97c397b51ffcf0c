"""The stages of trex, declared once.

A stage has a name (the subcommand, the ``framestatus.stage`` value, the
``--stages`` item), the configuration sections its results depend on, the
stages that must be done on a frame before it, and, for per-frame stages,
its ``run(frame, context) -> frame`` and ``save(frame, context) -> {table:
columns}``.  The command line, the pipeline, ``trex status`` and the ledger
all read this table; what redoing a stage redoes follows from ``needs`` and
``uses`` (:func:`downstream`).

The invalidation rules (:mod:`trex.ledger` applies them when it plans):

=========== ================================= ======================================
stage       settings (``trex.toml`` sections)  inputs (besides the frame itself)
=========== ================================= ======================================
calibrate   project, header, camera, calibrate the masters it uses (new masters: redo)
extract     extract
astrometry  astrometry                         the field catalog (failed frames only)
photometry  photometry, site                   the field catalog (failed frames only)
magfit      magfit                             the magnitude-fit master (new: redo)
subtract    subtract                           the photometric reference (new: redo)
lightcurves lightcurves
detrend     detrend                            (per star, not per frame)
=========== ================================= ======================================

A done stage whose settings changed, or whose inputs changed where the table
says "redo", is done again, and so is every stage downstream of it; a failed
stage is tried again when its settings or any input changed (a catalog that
was missing, a master that arrived), or always with ``--retry-failed``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from trex import astrometry, calibrate, extract, magfit, photometry, subtract
from trex.frame import Context, Frame
from trex.header import FrameMeta

#: what a stage's result depends on besides the frame and the settings (a short text)
Inputs = Callable[[FrameMeta, str, Context], str]


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline (see the module doc)."""

    name: str
    help: str
    settings: tuple[str, ...]
    needs: tuple[str, ...] = ()
    uses: tuple[str, ...] = ()         # results taken when present; redoing them redoes this
    run: Callable[[Frame, Context], Frame] | None = None  # None: a project-wide stage
    save: Callable[[Frame, Context], dict] | None = None
    #: tables whose rows of a frame this stage writes again in full: an earlier stage of
    #: the same run leaves them to it (written once), and ``failed_rows`` gives them when
    #: the stage fails on the frame
    rewrites: tuple[str, ...] = ()
    failed_rows: Callable[[Frame, Context], dict] | None = None
    inputs: Inputs | None = None
    redo_on_new_inputs: bool = False  # done frames are redone when their inputs change
    pixels: bool = False               # needs the calibrated image
    changes_frame: bool = False        # changes the calibrated image or header (written after)

    @property
    def per_frame(self) -> bool:
        return self.run is not None


STAGES = (
    Stage("calibrate", "raw frame -> calibrated frame in RED/ (overscan, bias, dark, flat, mask)",
          ("project", "header", "camera", "calibrate"), run=calibrate.run,
          inputs=calibrate.inputs, redo_on_new_inputs=True, pixels=True, changes_frame=True),
    Stage("extract", "sources: background, detection, elliptical Gaussian S/D/K",
          ("extract",), ("calibrate",), run=extract.run, save=extract.save, pixels=True),
    Stage("astrometry", "TAN-SIP WCS against the field catalog",
          ("astrometry",), ("extract",), run=astrometry.run, inputs=astrometry.inputs,
          pixels=True, changes_frame=True),
    Stage("photometry", "forced aperture photometry of the catalog stars",
          ("photometry", "site"), ("astrometry",), run=photometry.run, save=photometry.save,
          inputs=astrometry.inputs, pixels=True),
    Stage("magfit", "magnitude fit of each frame to the master reference (arm_NNN)",
          ("magfit",), ("photometry",), run=magfit.run, save=magfit.save, inputs=magfit.inputs,
          redo_on_new_inputs=True, rewrites=("ap_photometry",), failed_rows=photometry.rows),
    Stage("subtract", "image subtraction against the photometric reference, difference photometry",
          ("subtract",), ("photometry",), run=subtract.run, save=subtract.save,
          inputs=subtract.inputs, redo_on_new_inputs=True, pixels=True),
    Stage("lightcurves", "per-star light curves in LC/<projid>/ (new frames merged in)",
          ("lightcurves",), ("photometry",), uses=("magfit", "subtract")),
    Stage("detrend", "EPD and TFA of the light curves (per night), statistics",
          ("detrend",)),
)

BY_NAME = {stage.name: stage for stage in STAGES}
NAMES = tuple(BY_NAME)


def stage(name: str) -> Stage:
    """The stage called ``name`` (ValueError naming the choices otherwise)."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; choose from {', '.join(NAMES)}") from None


def downstream(name: str) -> tuple[str, ...]:
    """The stages that redoing ``name`` on a frame redoes too (it excluded), in order."""
    found = {name}
    for later in STAGES:  # in pipeline order: a stage's needs come before it
        if found & set(later.needs + later.uses):
            found.add(later.name)
    return tuple(s.name for s in STAGES if s.name in found and s.name != name)


def rewritten(stages: tuple[Stage, ...]) -> frozenset[str]:
    """The tables whose rows ``stages`` write again in full (see ``Stage.rewrites``)."""
    return frozenset(table for s in stages for table in s.rewrites)


def per_frame(names: tuple[str, ...]) -> tuple[Stage, ...]:
    """The per-frame stages among ``names``, in pipeline order."""
    return tuple(s for s in STAGES if s.name in names and s.per_frame)
