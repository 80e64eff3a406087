"""The bfloat16 products of training's backward pass: the rounding, the AVX512-BF16 kernel, the layers and
the estimator's ``backward_dtype``."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits

from xnorcore import BNNClassifier, _train
from xnorcore._backends import _common, cpu as _cpu
from xnorcore.nn import Network
from xnorcore.nn._trainer import build_network
from xnorcore.nn._loss import cross_entropy

needs_bf16 = pytest.mark.skipif(not _train.bf16_supported(), reason="this CPU has no AVX512-BF16")


def bf16_ref(x):
    """Round float32 to the nearer of its two bfloat16 neighbours (ties to the even one), zeros and
    subnormals to signed zero, infinities and NaN kept (NaN as some NaN)."""
    x = np.asarray(x, dtype=np.float32)
    u = x.view(np.uint32).astype(np.int64)
    out = np.empty(x.shape, dtype=np.float32)
    for idx in np.ndindex(x.shape):
        bits = int(u[idx])
        sign = bits & 0x80000000
        magnitude = bits & 0x7FFFFFFF
        if magnitude >= 0x7F800000:
            out[idx] = x[idx]
            continue
        if magnitude < 0x00800000:
            out[idx] = np.uint32(sign).view(np.float32)
            continue
        lo = magnitude & 0x7FFF0000
        hi = lo + 0x10000
        value = float(np.uint32(magnitude).view(np.float32))
        d_lo = value - float(np.uint32(lo).view(np.float32))
        d_hi = float(np.uint32(hi).view(np.float32)) - value if hi < 0x7F800000 else np.inf
        if hi >= 0x7F800000:  # past the largest finite bfloat16: infinity when nearer, as IEEE rounds
            d_hi = float(np.float64(2.0) ** 128) - value
        pick = lo if d_lo < d_hi or (d_lo == d_hi and not lo & 0x10000) else hi
        out[idx] = np.uint32(sign | pick).view(np.float32)
    return out


def test_round_bf16_edges():
    x = np.array([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8), 1e-40, -1e-40, 0.0, -0.0,
                  np.inf, -np.inf, 3.3895314e38, -3.4028235e38, 65280.5], dtype=np.float32)
    want = np.array([1.0, 1.0, 1 + 4 * 2 ** -8, -1.0, 0.0, -0.0, 0.0, -0.0, np.inf, -np.inf,
                     3.3895314e38, -np.inf, 65280.0], dtype=np.float32)
    got = _common.round_bf16(x)
    np.testing.assert_array_equal(got, want)
    assert np.signbit(got[5]) and np.signbit(got[7]) and not np.signbit(got[4])
    nan = _common.round_bf16(np.array([np.nan, -np.nan], dtype=np.float32))
    assert np.isnan(nan).all()
    assert not (nan.view(np.uint32) & 0xFFFF).any()


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 200))
def test_round_bf16_is_nearest_even(seed, n):
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2 ** 32, size=n, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x = np.where(np.isnan(x), np.float32(1.5), x)
    got = _common.round_bf16(x)
    assert not (got.view(np.uint32) & 0xFFFF).any()
    np.testing.assert_array_equal(got.view(np.uint32), bf16_ref(x).view(np.uint32))


def _operand(rng, shape, layout):
    """A float32 matrix of ``shape`` in a memory layout: C order, a transposed copy, or a strided view."""
    if layout == "c":
        return lambda x: np.ascontiguousarray(x)
    if layout == "t":
        return lambda x: np.ascontiguousarray(x.T).T
    return lambda x: np.repeat(np.repeat(x, 2, axis=0), 3, axis=1)[::2, ::3]


SHAPES = st.tuples(st.integers(1, 70), st.integers(1, 110), st.integers(1, 90))


@needs_bf16
@settings(max_examples=80, deadline=None)
@given(SHAPES, st.sampled_from(["c", "t", "s"]), st.sampled_from(["c", "t", "s"]),
       st.integers(1, 3), st.integers(0, 2 ** 32 - 1))
def test_kernel_is_exact_on_integers(shape, layout_a, layout_b, n_threads, seed):
    # +-1 and 0 against small integers: every product and sum is exact in float32.
    m, n, k = shape
    rng = np.random.default_rng(seed)
    a = rng.integers(-1, 2, size=(m, k)).astype(np.float32)
    b = rng.integers(-200, 201, size=(k, n)).astype(np.float32)
    out = np.full((m, n), np.nan, dtype=np.float32)
    status = _train.bf16_matmul(_operand(rng, a.shape, layout_a)(a), _operand(rng, b.shape, layout_b)(b),
                                out, n_threads)
    assert status == 0
    np.testing.assert_array_equal(out.astype(np.int64), a.astype(np.int64) @ b.astype(np.int64))


@needs_bf16
@pytest.mark.parametrize("m, n, k", [(200, 50, 1100), (9, 400, 515), (390, 97, 17), (1, 1, 1), (8, 48, 512)])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_kernel_blocks_and_edges(m, n, k, n_threads):
    # Past one block of k (256 pairs), of A's rows (192) and of B's columns (384), odd k.
    rng = np.random.default_rng(m * n + k)
    a = rng.integers(-1, 2, size=(m, k)).astype(np.float32)
    b = rng.integers(-50, 51, size=(k, n)).astype(np.float32)
    want = a.astype(np.int64) @ b.astype(np.int64)
    for x, y in ((a, b), (np.asfortranarray(a), np.asfortranarray(b))):
        out = np.empty((m, n), dtype=np.float32)
        assert _train.bf16_matmul(x, y, out, n_threads) == 0
        np.testing.assert_array_equal(out.astype(np.int64), want)


def _bf16_product_bound(a, b):
    """(a @ b of the bfloat16-rounded operands in float64, the bound on float32 summation error)."""
    ra, rb = bf16_ref(a).astype(np.float64), bf16_ref(b).astype(np.float64)
    return ra @ rb, 2.0 ** -22 * a.shape[1] * (np.abs(ra) @ np.abs(rb)) + 1e-35


@settings(max_examples=25, deadline=None)
@given(SHAPES, st.booleans(), st.integers(0, 2 ** 32 - 1))
def test_backend_rounds_both_operands(shape, native, seed):
    # The backend's product, the kernel's or the array fallback's: the product of the rounded operands.
    if native and not _cpu.has_bf16:
        native = False
    m, n, k = shape
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = (rng.standard_normal((k, n)) * 10.0 ** rng.integers(-20, 20)).astype(np.float32)
    saved = _cpu.has_bf16
    _cpu.has_bf16 = native
    try:
        got = _cpu.bf16_matmul(a, b.T.copy().T)
        out = np.empty((m, n), dtype=np.float32)
        assert _cpu.bf16_matmul(a, b, out=out) is out
    finally:
        _cpu.has_bf16 = saved
    want, bound = _bf16_product_bound(a, b)
    for result in (got, out):
        assert result.shape == (m, n) and result.dtype == np.float32
        assert (np.abs(result - want) <= bound).all()


def test_backend_turns_wide_products_round():
    # A product with few columns comes back as the transpose of the one with few rows: same values.
    rng = np.random.default_rng(1)
    a = rng.integers(-1, 2, size=(300, 700)).astype(np.float32)
    b = rng.integers(-9, 10, size=(700, 5)).astype(np.float32)
    got = _cpu.bf16_matmul(a, b)
    np.testing.assert_array_equal(got, a @ b)


def _grads(dtype, conv):
    rng = np.random.default_rng(0)
    if conv:
        net = build_network(64, 3, (16,), (8, 8, 1), (6, "pool", (8, 3)), binary=True, xnor=True,
                            random_state=np.random.RandomState(0))
    else:
        net = build_network(20, 3, (32, 32), binary=True, xnor=True, dropout=0.2,
                            random_state=np.random.RandomState(0))
    net.set_backward_dtype(dtype)
    x = rng.standard_normal((24, 64 if conv else 20)).astype(np.float32)
    y = rng.integers(0, 3, size=24)
    logits = net.forward(x, training=True, rng=np.random.RandomState(1))
    net.backward(cross_entropy(logits, y, None, None, 0.0)[1])
    return [g.copy() for _, _, g, _ in net.params()]


@pytest.mark.parametrize("conv", [False, True])
def test_layers_bf16_gradients_close_to_float32(conv):
    full, rounded = _grads("float32", conv), _grads("bfloat16", conv)
    assert len(full) == len(rounded)
    changed = False
    for g, h in zip(full, rounded):
        assert g.shape == h.shape
        scale = np.abs(g).max() + 1e-12
        assert np.abs(g - h).max() <= 2e-2 * scale
        changed |= not np.array_equal(g, h)
    assert changed  # the products did go through bfloat16


def test_set_backward_dtype_validates():
    net = Network(4, 2, (8,), binary=True, random_state=np.random.RandomState(0))
    with pytest.raises(ValueError, match="backward_dtype must be 'float32' or 'bfloat16', got 'half'"):
        net.set_backward_dtype("half")


def test_estimator_backward_dtype():
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = X[:1200], X[1200:], y[:1200], y[1200:]
    kw = dict(hidden_layer_sizes=(64,), max_iter=10, random_state=0, device="cpu")
    full = BNNClassifier(backward_dtype="float32", **kw).fit(X_train, y_train)
    rounded = BNNClassifier(backward_dtype="bfloat16", **kw).fit(X_train, y_train)
    auto = BNNClassifier(**kw).fit(X_train, y_train)
    assert rounded.score(X_test, y_test) > 0.8 and full.score(X_test, y_test) > 0.8
    assert abs(rounded.score(X_test, y_test) - full.score(X_test, y_test)) < 0.03
    same = auto.loss_curve_ == (rounded.loss_curve_ if _cpu.prefers_bf16_backward else full.loss_curve_)
    assert same
    assert full.loss_curve_ != rounded.loss_curve_
    with pytest.raises(ValueError, match="backward_dtype"):
        BNNClassifier(backward_dtype="float16", **kw).fit(X_train, y_train)


def test_training_context_sets_the_step_threads():
    from threadpoolctl import threadpool_info

    from xnorcore._threads import kernel_threads, training_threads

    def blas_threads():
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    before = blas_threads()
    assert training_threads() == 1
    with _cpu.training_context(False):
        assert training_threads() == 1 and blas_threads() == before
    with _cpu.training_context(True):
        assert training_threads() == kernel_threads(None)
        assert all(n == 1 for n in blas_threads())
    assert training_threads() == 1 and blas_threads() == before


def test_real_networks_keep_float32_products():
    # binary=False has no +-1 operand: no layer takes bfloat16, so the fit keeps BLAS on every core.
    net = build_network(20, 3, (32,), binary=False, random_state=np.random.RandomState(0))
    net.set_backward_dtype("bfloat16")
    assert not any(getattr(layer, "bf16_backward", False) for layer in net.layers())
    net = build_network(20, 3, (32,), binary=True, random_state=np.random.RandomState(0))
    net.set_backward_dtype("bfloat16")
    flags = [layer.bf16_backward for layer in net.layers() if hasattr(layer, "bf16_backward")]
    assert flags[0] is False and all(flags[1:])  # the first layer reads real inputs with real weights
