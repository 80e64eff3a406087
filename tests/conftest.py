"""Shared test helpers: a plain numpy reference for the binary product."""

import numpy as np
import pytest


def sign_ref(x):
    """+1 where x >= 0 (including -0.0 and +inf), -1 elsewhere, as int64."""
    return np.where(np.asarray(x) >= 0, 1, -1).astype(np.int64)


def matmul_ref(a, b):
    """sign(a) @ sign(b) in int64: the reference every product must equal."""
    return sign_ref(a) @ sign_ref(b)


def random_matrix(rng, shape, dtype=np.float32, special=0.0):
    """Random values of ``dtype``; a fraction ``special`` of floats become
    0.0, -0.0, +inf or -inf (the edge cases of sign)."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind == "u":
        return rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype, endpoint=True)
    if dtype.kind == "i":
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
        # Small values too, so that 0 and -1 occur.
        small = rng.integers(-2, 2, size=shape, dtype=dtype, endpoint=True)
        return np.where(rng.random(shape) < 0.3, small, x)
    x = rng.standard_normal(shape).astype(dtype)
    if special:
        edge = np.array([0.0, -0.0, np.inf, -np.inf], dtype=dtype)
        mask = rng.random(shape) < special
        x[mask] = edge[rng.integers(0, 4, size=int(mask.sum()))]
    return x


@pytest.fixture
def rng():
    return np.random.default_rng(20261125)
