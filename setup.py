"""Build script: the package, its CUDA sources as package data, and the Cython
CPU kernels (xnorcore._bitpack, xnorcore._conv, xnorcore._train), compiled with OpenMP.

The C kernels in xnorcore/csrc/ include kernels/xnor_layout.h, the bit layout
that the CUDA sources share, so both folders are on the include path.

No -march flag: the SIMD variants carry their own target attributes and are
chosen at run time, so a wheel built here runs on any x86-64.
-fno-math-errno lets the compiler vectorize sqrtf (no kernel reads errno).
"""

import glob
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

if sys.platform == "win32":
    compile_args, link_args = ["/O2", "/openmp"], []
elif sys.platform == "darwin":
    # Apple clang needs libomp from Homebrew; -Xpreprocessor passes -fopenmp to cpp only.
    compile_args, link_args = ["-O3", "-fno-math-errno", "-Xpreprocessor", "-fopenmp"], ["-lomp"]
else:
    compile_args, link_args = ["-O3", "-fno-math-errno", "-fopenmp"], ["-fopenmp"]

CSRC = sorted(glob.glob("xnorcore/csrc/*.h")) + ["kernels/xnor_layout.h"]

extensions = [
    Extension(
        name,
        [f"{name.replace('.', '/')}.pyx"],
        include_dirs=[np.get_include(), "xnorcore/csrc", "kernels"],
        depends=CSRC,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
    for name in ("xnorcore._bitpack", "xnorcore._conv", "xnorcore._train")
]

setup(
    packages=find_packages(include=["xnorcore", "xnorcore.*"]) + ["xnorcore.kernels"],
    package_dir={"xnorcore": "xnorcore", "xnorcore.kernels": "kernels"},
    package_data={"xnorcore.kernels": ["*.cu", "*.h"]},
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    ),
)
