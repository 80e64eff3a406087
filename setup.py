"""Build script: the package, its CUDA sources as package data, and (from the
foundation work) the Cython extensions."""

from setuptools import setup

setup(
    packages=["xnorcore", "xnorcore.kernels"],
    package_dir={"xnorcore": "xnorcore", "xnorcore.kernels": "kernels"},
    package_data={"xnorcore.kernels": ["*.cu"]},
)
