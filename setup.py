"""Build the Cython kernels in ``cext/`` as ``trex._<name>`` extension modules.

Every ``cext/<name>.pyx`` becomes ``trex._<name>``.  On x86-64 each is built a
second time with AVX2 enabled, as ``trex/_avx2/_<name>``, which ``trex.cpu``
loads in its place on a CPU that has AVX2: the same C, the same operations in
the same order (no FMA contraction, no reassociation), so the same results
bit for bit, twice as many floats per instruction.  ``cext/cpu.pyx``, which
asks the CPU, is built once.  Set ``TREX_ONLY=name[,name]`` to build a subset
(handy while developing one kernel).
"""
import os
import platform
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent
only = {n for n in os.environ.get("TREX_ONLY", "").split(",") if n}
sources = [p for p in sorted((HERE / "cext").glob("*.pyx")) if not only or p.stem in only]
# the shared contract (kernels.pxd) and the included .pxi files: a change rebuilds
depends = [str(p.relative_to(HERE)) for p in sorted((HERE / "cext").glob("*.px[di]"))]
# -ffp-contract=off: no fused multiply-add, so every build rounds alike
flags = ["-O3", "-ffp-contract=off"]
directives = {"boundscheck": False, "wraparound": False, "cdivision": True,
              "initializedcheck": False, "embedsignature": True}


def extension(name: str, pyx: Path, extra: list[str]) -> Extension:
    return Extension(name, [str(pyx.relative_to(HERE))], include_dirs=[numpy.get_include(), "cext"],
                     depends=depends, extra_compile_args=flags + extra,
                     define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])


def build(extensions: list[Extension], build_dir: str | None) -> list[Extension]:
    return cythonize(extensions, include_path=["cext"], language_level=3,
                     compiler_directives=directives, build_dir=build_dir)


modules = build([extension(f"trex._{p.stem}", p, []) for p in sources], None)
if platform.machine().lower() in ("x86_64", "amd64"):
    # the same module names in another folder (PyInit_<name> matches); its own C files
    modules += build([extension(f"trex._avx2._{p.stem}", p, ["-mavx2"])
                      for p in sources if p.stem != "cpu"], "build/cext-avx2")
    (HERE / "trex" / "_avx2").mkdir(exist_ok=True)  # not a package: build_ext --inplace needs it

setup(ext_modules=modules, options={"build_ext": {"parallel": os.cpu_count() or 1}})
