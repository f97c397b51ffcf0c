"""Build the Cython kernels in ``cext/`` as ``trex._<name>`` extension modules.

Every ``cext/<name>.pyx`` becomes ``trex._<name>``.  Set ``TREX_ONLY=name[,name]``
to build a subset (handy while developing one kernel).
"""
import os
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent
only = {n for n in os.environ.get("TREX_ONLY", "").split(",") if n}
sources = sorted((HERE / "cext").glob("*.pyx"))
extensions = [
    Extension(
        f"trex._{pyx.stem}",
        [str(pyx.relative_to(HERE))],
        include_dirs=[numpy.get_include(), "cext"],
        # the shared contract (kernels.pxd) and the included .pxi files: a change rebuilds
        depends=[str(p.relative_to(HERE)) for p in sorted((HERE / "cext").glob("*.px[di]"))],
        extra_compile_args=["-O3", "-ffp-contract=off"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    for pyx in sources
    if not only or pyx.stem in only
]

setup(
    ext_modules=cythonize(
        extensions,
        include_path=["cext"],
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
        },
    ),
)
