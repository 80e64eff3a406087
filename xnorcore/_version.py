"""The version of xnorcore, in one place: setuptools reads it for the package
metadata (``[tool.setuptools.dynamic]`` in pyproject.toml) and
``xnorcore.__version__`` re-exports it."""

__version__ = "0.1.0"
