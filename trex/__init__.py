"""trex: time-series photometry for wide-field survey cameras.

Raw FITS frames in, calibrated frames, per-frame photometry and per-star light
curves out.  See README.md for the command line and ``trex.photometry``,
``trex.extract``, ``trex.subtract`` and ``trex.lightcurves`` for the library API.
"""

from trex import cpu

__version__ = "0.1.0"

cpu.install()  # the kernels' AVX2 build where the CPU has it
