"""Shared test helpers: a plain numpy reference for the binary product, finite differences for
gradients, and a machine without CuPy."""

import sys

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


def numeric_grad(f, x, eps=1e-3):
    """Central differences of the scalar f() with respect to x (float64), changed in place and put back."""
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        fp = f()
        x[i] = old - eps
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def assert_batch_norm_gradients(bn, z, up):
    """The input, gamma and beta gradients of a training step of ``bn`` against central differences of
    ``sum(bn.forward(z) * up)`` (the running statistics left as they were)."""

    def f():
        saved = bn.running_mean.copy(), bn.running_var.copy()
        out = float((bn.forward(z, training=True) * up).sum())
        bn.running_mean, bn.running_var = saved
        return out

    bn.forward(z, training=True)
    dz = bn.backward(up)
    np.testing.assert_allclose(dz, numeric_grad(f, z, eps=1e-5), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(bn.gamma_grad, numeric_grad(f, bn.gamma, eps=1e-5), rtol=1e-4)
    np.testing.assert_allclose(bn.beta_grad, numeric_grad(f, bn.beta, eps=1e-5), rtol=1e-4)


@pytest.fixture
def rng():
    return np.random.default_rng(20261125)


@pytest.fixture
def no_cupy(monkeypatch):
    """A machine without CuPy: "import cupy" raises ImportError, and a CuPy imported before is forgotten."""
    from xnorcore._backends import gpu

    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setattr(gpu, "_cupy_module", None)
