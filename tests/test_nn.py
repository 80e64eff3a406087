"""Layers, optimizer and network of xnorcore.nn (numpy backend)."""

import pickle

import numpy as np
import pytest

from xnorcore import binary_matmul, unpack_bits
from xnorcore.nn import (
    Adam,
    BatchNorm,
    Dense,
    Network,
    Sign,
    binarize,
    log_softmax,
    softmax,
    softmax_cross_entropy,
    ste_mask,
)
from xnorcore.nn import PackedModel

from conftest import assert_batch_norm_gradients, numeric_grad


def test_binarize_zero_is_plus_one():
    x = np.array([-2.0, -1e-30, -0.0, 0.0, 1e-30, 3.0], dtype=np.float32)
    out = binarize(x)
    np.testing.assert_array_equal(out, [-1, -1, 1, 1, 1, 1])
    assert out.dtype == np.float32


def test_sign_straight_through_estimator_cancels_beyond_one():
    x = np.array([[-1.5, -1.0, -0.3, 0.0, 0.7, 1.0, 1.01]], dtype=np.float32)
    sign = Sign("s")
    y = sign.forward(x, training=True)
    np.testing.assert_array_equal(y, [[-1, -1, -1, 1, 1, 1, 1]])
    dy = np.arange(1, 8, dtype=np.float32)[None, :]
    np.testing.assert_array_equal(sign.backward(dy), [[0, 2, 3, 4, 5, 6, 0]])
    np.testing.assert_array_equal(ste_mask(x), [[0, 1, 1, 1, 1, 1, 0]])


def test_softmax_cross_entropy_value_and_gradient():
    rng = np.random.RandomState(0)
    logits = rng.randn(5, 4)
    y = np.array([0, 3, 1, 1, 2])
    loss, grad = softmax_cross_entropy(logits, y)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert float(loss) == pytest.approx(-np.log(p[np.arange(5), y]).mean())
    num = numeric_grad(lambda: float(softmax_cross_entropy(logits, y)[0]), logits, eps=1e-6)
    np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(softmax(logits), p)
    # Stable for huge logits.
    big = np.array([[1000.0, 0.0], [0.0, -1000.0]])
    assert np.isfinite(log_softmax(big)).all()


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.05, 0.1, 0.5, 0.9])
def test_label_smoothing_is_cross_entropy_against_smoothed_targets(label_smoothing, weighted):
    rng = np.random.RandomState(3)
    n, k = 7, 5
    logits = rng.randn(n, k)
    y = rng.randint(0, k, n)
    w = rng.uniform(0, 2, n) if weighted else None
    wsum = None if w is None else float(w.sum())

    def loss_of(z):
        return softmax_cross_entropy(z, y, w, wsum, label_smoothing=label_smoothing)

    loss, grad = loss_of(logits)
    target = np.full((n, k), label_smoothing / k)
    target[np.arange(n), y] += 1 - label_smoothing
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    per_sample = -(target * logp).sum(1)
    weights = np.ones(n) if w is None else w
    assert float(loss) == pytest.approx((weights * per_sample).sum() / weights.sum(), rel=1e-12)
    # (rtol: the scale 1 / n or w / sum(w) is rounded to float32, as without smoothing)
    np.testing.assert_allclose(grad, (np.exp(logp) - target) * (weights / weights.sum())[:, None], rtol=1e-6,
                               atol=1e-15)
    num = numeric_grad(lambda: float(loss_of(logits)[0]), logits, eps=1e-6)
    np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-8)
    # No smoothing is the plain loss, bit for bit.
    plain = softmax_cross_entropy(logits, y, w, wsum)
    same = softmax_cross_entropy(logits, y, w, wsum, label_smoothing=0.0)
    assert float(plain[0]) == float(same[0]) and np.array_equal(plain[1], same[1])


def test_dense_real_gradients_match_finite_differences():
    rng = np.random.RandomState(1)
    x = rng.randn(6, 5)
    w = rng.randn(5, 3)
    d = Dense("d", w, binary_weights=False, binary_input=False, bias=True, dropout=0.0, xnor=False)
    d.bias = rng.randn(3)
    up = rng.randn(6, 3)

    def f():
        return float((d.forward(x, training=False) * up).sum())

    d.forward(x, training=True)
    dx = d.backward(up)
    np.testing.assert_allclose(d.weight_grad, numeric_grad(f, d.weight), rtol=1e-6)
    np.testing.assert_allclose(d.bias_grad, numeric_grad(f, d.bias), rtol=1e-6)
    np.testing.assert_allclose(dx, numeric_grad(f, x), rtol=1e-6)


def test_dense_binary_weights_use_sign_and_straight_through_gradient():
    rng = np.random.RandomState(2)
    x = rng.randn(4, 7).astype(np.float32)
    w = rng.uniform(-1, 1, (7, 3)).astype(np.float32)
    d = Dense("d", w, binary_weights=True, binary_input=False, bias=False, dropout=0.0, xnor=False)
    z = d.forward(x, training=True)
    np.testing.assert_array_equal(z, x @ np.where(w >= 0, 1, -1).astype(np.float32))
    up = rng.randn(4, 3).astype(np.float32)
    dx = d.backward(up)
    # Straight-through: the gradient reaches the latent weights as if sign were the identity.
    np.testing.assert_allclose(d.weight_grad, x.T @ up, rtol=1e-6)
    np.testing.assert_allclose(dx, up @ np.where(w >= 0, 1, -1).T, rtol=1e-6)


def test_batch_norm_gradients_match_finite_differences():
    rng = np.random.RandomState(3)
    z = rng.randn(8, 4)
    bn = BatchNorm("bn", 4, np)
    bn.gamma = rng.randn(4)
    bn.beta = rng.randn(4)
    up = rng.randn(8, 4)
    assert_batch_norm_gradients(bn, z, up)


def test_batch_norm_running_statistics():
    rng = np.random.RandomState(4)
    bn = BatchNorm("bn", 3, np, momentum=0.0)
    z = (rng.randn(50, 3) * 2 + 5).astype(np.float32)
    out = bn.forward(z, training=True)
    np.testing.assert_allclose(out.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(0), 1, atol=1e-3)
    np.testing.assert_allclose(bn.running_mean, z.mean(0), rtol=1e-6)
    np.testing.assert_allclose(bn.running_var, z.var(0, ddof=1), rtol=1e-5)


def test_adam_matches_reference_and_clips_binary_weights():
    rng = np.random.RandomState(5)
    p = rng.uniform(-1, 1, 10).astype(np.float32)
    q = p.copy()
    ref = p.astype(np.float64)
    m = np.zeros(10)
    v = np.zeros(10)
    opt = Adam()
    for t in range(1, 4):
        g = rng.randn(10).astype(np.float32)
        opt.step([("w", p, g, False), ("b", q, g * 100, True)], lr=0.01)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g.astype(np.float64) ** 2
        ref -= 0.01 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    np.testing.assert_allclose(p, ref, rtol=1e-4, atol=1e-6)
    assert opt.t == 3
    assert np.abs(q).max() <= 1.0


@pytest.mark.parametrize("clip", [False, True])
def test_adam_cpu_kernel_equals_the_array_path(clip):
    # C-contiguous float32 parameters take the one-pass kernel, Fortran-ordered
    # ones the array expressions; NaN stays NaN in both.
    rng = np.random.RandomState(6)
    fast = rng.uniform(-1, 1, (33, 17)).astype(np.float32)
    slow = np.asfortranarray(fast)
    fast_opt, slow_opt = Adam(), Adam()
    for _ in range(5):
        g = (rng.randn(33, 17) * 3).astype(np.float32)
        g[0, 0] = np.nan
        fast_opt.step([("w", fast, g, clip)], lr=0.05)
        slow_opt.step([("w", slow, np.asfortranarray(g), clip)], lr=0.05)
    assert np.isnan(fast[0, 0]) and np.isnan(slow[0, 0])
    np.testing.assert_allclose(fast, slow, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(fast_opt.m["w"], slow_opt.m["w"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(fast_opt.v["w"], slow_opt.v["w"], rtol=1e-6, atol=1e-7)
    if clip:
        assert np.nanmax(np.abs(fast)) <= 1.0
    else:
        assert np.nanmax(np.abs(fast)) > 1.0


def adam_operands(rng, shape):
    """(p, g, m, v) of an Adam step: gradients over many magnitudes, NaN and infinities among them."""
    p = rng.uniform(-1.5, 1.5, shape).astype(np.float32)
    g = (rng.standard_normal(shape) * 10.0 ** rng.integers(-30, 30, shape)).astype(np.float32)
    g.flat[:3] = [np.nan, np.inf, 0.0][: g.size]
    m = (rng.standard_normal(shape) * 1e-2).astype(np.float32)
    v = np.abs(rng.standard_normal(shape) * 1e-3).astype(np.float32)
    return p, g, m, v


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("shape", [(1,), (7, 3), (1000, 37)])
def test_adam_cpu_kernel_is_the_array_operations_bit_for_bit(clip, shape):
    from xnorcore._backends import cpu
    from xnorcore.nn._optim import adam_arrays

    rng = np.random.default_rng(shape[0])
    for step in (1e-3, 0.37):
        want = adam_operands(rng, shape)
        got = [a.copy() for a in want]
        adam_arrays(*want, 0.9, 0.999, 1e-8, step, clip)
        cpu.adam_update(*got, 0.9, 0.999, 1e-8, step, clip)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a.view(np.int32), b.view(np.int32))


def _train(net, X, y, steps=20, seed=0, lr=1e-2):
    opt = Adam()
    rng = np.random.RandomState(seed)
    losses = []
    for _ in range(steps):
        idx = rng.randint(0, len(X), 32)
        losses.append(float(net.train_step(X[idx], y[idx], opt, lr, rng=rng)))
    return losses


def _data(n=200, d=37, k=3, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.randn(n, d).astype(np.float32)
    w = rng.randn(d, k)
    return X, (X @ w).argmax(1)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("hidden", [(65,), (64, 127), (1, 63)])
def test_xnor_and_float_products_train_identically(hidden, dropout):
    X, y = _data()
    nets = [
        Network(37, 3, hidden, binary=True, dropout=dropout, binarize_last=True, xnor=xnor,
                random_state=np.random.RandomState(7))
        for xnor in (False, True)
    ]
    assert nets[1].blocks[-1].dense.uses_xnor and not nets[0].blocks[-1].dense.uses_xnor
    curves = [_train(net, X, y) for net in nets]
    assert curves[0] == curves[1]
    for a, b in zip(nets[0].params(), nets[1].params()):
        np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(nets[0].forward(X), nets[1].forward(X))


def test_network_learns():
    X, y = _data(n=400)
    net = Network(37, 3, (128,), binary=True, random_state=np.random.RandomState(0))
    losses = _train(net, X, y, steps=150)
    assert np.mean(losses[-20:]) < 0.6 * np.mean(losses[:5])
    assert (net.forward(X).argmax(1) == y).mean() > 0.8


@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("binarize_first,binarize_last", [(False, False), (True, True)])
def test_packed_path_equals_float_path(batch_norm, binarize_first, binarize_last):
    X, y = _data(n=300, d=70)
    net = Network(70, 3, (129, 64, 63), binary=True, batch_norm=batch_norm,
                  binarize_first=binarize_first, binarize_last=binarize_last,
                  random_state=np.random.RandomState(1))
    _train(net, X, y, steps=30)
    float_logits = net.forward(X)
    float_acts = [np.asarray(b.activation) for b in net.blocks]
    packed_acts = []
    packed_logits = PackedModel.from_network(net).forward(X, activations=packed_acts)
    np.testing.assert_array_equal(packed_logits, float_logits)
    # Every hidden binary layer emits packed bits that unpack to the float path's signs.
    from xnorcore import PackedBits, unpack_bits

    for packed_act, act in zip(packed_acts[:-1], float_acts[:-1]):
        assert isinstance(packed_act, PackedBits)
        np.testing.assert_array_equal(unpack_bits(packed_act, dtype=np.float32), act)


def test_thresholds_handle_negative_and_zero_batch_norm_scale():
    X, y = _data(n=300, d=20)
    net = Network(20, 3, (96, 96), binary=True, random_state=np.random.RandomState(2))
    _train(net, X, y, steps=10)
    bn = net.blocks[1].bn
    rng = np.random.RandomState(3)
    bn.gamma[:] = rng.randn(96).astype(np.float32)
    bn.gamma[:30] = -np.abs(bn.gamma[:30])
    bn.gamma[30:35] = 0.0
    bn.beta[:] = rng.randn(96).astype(np.float32) * 3
    bn.beta[30:32] = -1.0
    bn.beta[32:35] = 0.5
    bn.running_mean[:] = rng.randn(96).astype(np.float32) * 5
    first = net.blocks[0].bn  # real-valued products: float thresholds, same rules
    first.gamma[:10] = -np.abs(first.gamma[:10]) - 0.5
    first.gamma[10:12] = 0.0
    first.beta[10] = -0.5
    first.beta[11] = 0.5
    model = PackedModel.from_network(net)
    block, layer = net.blocks[1], model.layers[1]
    assert (layer.direction[:30] == -1).all() and (layer.direction[30:35] == 0).all()
    assert layer.threshold.dtype == np.int32 and model.layers[0].threshold.dtype == np.float32
    float_logits = net.forward(X)
    float_act = np.asarray(block.activation)
    packed_acts = []
    np.testing.assert_array_equal(model.forward(X, activations=packed_acts), float_logits)
    from xnorcore import unpack_bits

    np.testing.assert_array_equal(unpack_bits(packed_acts[1], dtype=np.float32), float_act)
    # Zero scale: the unit is the sign of beta whatever the input.
    np.testing.assert_array_equal(float_act[:, 30:32], -1)
    np.testing.assert_array_equal(float_act[:, 32:35], 1)
    first_act = unpack_bits(packed_acts[0], dtype=np.float32)
    np.testing.assert_array_equal(first_act[:, 10], -1)
    np.testing.assert_array_equal(first_act[:, 11], 1)
    assert (model.layers[0].direction[:10] == -1).all()


def test_real_valued_network_has_no_packed_path():
    X, y = _data()
    net = Network(37, 3, (16,), binary=False, random_state=np.random.RandomState(0))
    _train(net, X, y, steps=5)
    with pytest.raises(ValueError, match="only for binary networks"):
        PackedModel.from_network(net)
    assert not any(p[3] for p in net.params())


def test_histograms_names_and_shapes():
    X, y = _data()
    net = Network(37, 3, (65, 64), binary=True, random_state=np.random.RandomState(0))
    _train(net, X, y, steps=2)
    h = net.histograms()
    for name in ("dense1", "dense2", "dense3"):
        assert h[f"{name}/weight"].shape == net.blocks[int(name[-1]) - 1].dense.weight.shape
        assert h[f"{name}/weight_grad"].shape == h[f"{name}/weight"].shape
        assert h[f"{name}/activation"].shape[0] == 32
    np.testing.assert_array_equal(h["dense2/weight_binary"], np.where(h["dense2/weight"] >= 0, 1, -1))
    assert "dense1/weight_binary" not in h  # the first layer stays real-valued
    assert set(np.unique(h["dense1/activation"])) <= {-1.0, 1.0}
    assert all(isinstance(v, np.ndarray) for v in h.values())


def test_drop_training_state_keeps_predictions_and_pickles_small():
    X, y = _data(n=100, d=200)
    net = Network(200, 3, (512, 512), binary=True, random_state=np.random.RandomState(0))
    _train(net, X, y, steps=3)
    from xnorcore._summary import memory_rows

    before = PackedModel.from_network(net).forward(X)
    before_float = net.forward(X)
    big = len(pickle.dumps(net))
    net.drop_training_state()
    small = len(pickle.dumps(net))
    packed = sum(row["packed_bytes"] for row in memory_rows(net))
    assert packed < small < packed + 20_000 < big
    np.testing.assert_array_equal(PackedModel.from_network(net).forward(X), before)
    np.testing.assert_array_equal(net.forward(X), before_float)
    with pytest.raises(RuntimeError, match="training state was dropped"):
        net.train_step(X, y, Adam(), 1e-3)


def test_input_dropout_is_the_first_layers_dropout_of_features_only():
    net = Network(9, 3, (4, 4), dropout=0.1, input_dropout=0.3)
    assert [b.dense.dropout for b in net.blocks] == [0.3, 0.1, 0.1]
    # After conv layers the first dense layer takes the hidden dropout.
    net = Network(9, 3, (4, 4), dropout=0.1, input_dropout=0.3, conv_input=True)
    assert [b.dense.dropout for b in net.blocks] == [0.1, 0.1, 0.1]


def test_dense_with_dropout_xnor_product_matches_masked_float_product():
    rng = np.random.RandomState(9)
    x = np.where(rng.rand(33, 130) < 0.5, -1.0, 1.0).astype(np.float32)
    w = rng.uniform(-1, 1, (130, 65)).astype(np.float32)
    outs = []
    for xnor in (False, True):
        d = Dense("d", w.copy(), binary_weights=True, binary_input=True, bias=False,
                  dropout=0.5, xnor=xnor)
        outs.append(d.forward(x, training=True, rng=np.random.RandomState(0)))
    np.testing.assert_array_equal(outs[0], outs[1])
    mask = np.random.RandomState(0).random_sample(x.shape) >= 0.5
    expected = ((x * mask) @ np.where(w >= 0, 1, -1)).astype(np.float32) * np.float32(2)
    np.testing.assert_array_equal(outs[0], expected)
    # The integer identity behind it: s.w + t.w = 2 (masked x).w
    xm = x * mask
    c = (binary_matmul(xm, w) - binary_matmul(-xm, w)) // 2
    np.testing.assert_array_equal(c, (xm @ np.where(w >= 0, 1, -1)).astype(np.int32))


@pytest.mark.parametrize("dtype", [np.int32, np.float32])
@pytest.mark.parametrize("n", [1, 63, 64, 65, 130, 1024])
def test_fused_threshold_pack_matches_unfused_arithmetic(dtype, n):
    from xnorcore import PackedBits
    from xnorcore._backends import cpu

    def _threshold_pack(z, direction, threshold):
        return PackedBits(cpu.threshold_pack(z, direction, threshold), z.shape, 1)

    rng = np.random.default_rng(n)
    rows = 70  # more than one 64-row block
    if dtype is np.int32:
        z = rng.integers(-40, 40, (rows, n)).astype(dtype)
        threshold = rng.integers(-3, 4, n).astype(dtype)
    else:
        z = rng.standard_normal((rows, n)).astype(dtype)
        z[0, :] = -0.0  # -0.0 - 0.0 is -0.0, which sign maps to +1
        threshold = rng.standard_normal(n).astype(dtype)
        threshold[: n // 2] = 0
    direction = rng.integers(-1, 2, n).astype(np.int8)
    expected = z * direction - threshold >= 0
    packed = _threshold_pack(z.copy(), direction, threshold)
    assert packed.shape == (rows, n) and packed.axis == 1
    np.testing.assert_array_equal(unpack_bits(packed) == 1, expected)
    # Padding bits stay clear.
    if n % 64:
        assert not (packed.words[:, -1] >> np.uint64(n % 64)).any()


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("where", [0, 69])  # the first and the last 64-row block
def test_float_threshold_of_overflowed_sums_is_an_error(where, n_threads):
    # inf - inf is NaN, whose sign is no answer: the CPU raises as the GPU does.
    from xnorcore._backends import cpu

    z = np.ones((70, 130), dtype=np.float32)
    threshold = np.zeros(130, dtype=np.float32)
    direction = np.ones(130, dtype=np.int8)
    z[where, 129] = np.inf
    threshold[129] = np.inf
    with pytest.raises(ValueError, match="must not contain NaN .*float32 sums overflowed"):
        cpu.threshold_pack(z, direction, threshold, n_threads)
    z[where, 129] = np.float32(3e38)  # a finite sum past an infinite threshold is a sign
    words = cpu.threshold_pack(z, direction, threshold, n_threads)
    assert (words[where, 2] >> np.uint64(1)) & np.uint64(1) == 0  # bit 129: 3e38 - inf < 0


@pytest.mark.parametrize("batch_norm, binarize_last, hidden", [(True, False, (65, 64)), (False, True, (63,)), (True, True, ())])
def test_packed_model_round_trips_through_plain_arrays(batch_norm, binarize_last, hidden):
    """to_arrays gives JSON metadata and numpy arrays only; from_arrays rebuilds the same logits."""
    import json

    X, y = _data(n=120, d=30)
    net = Network(30, 3, hidden, binary=True, batch_norm=batch_norm, binarize_last=binarize_last,
                  random_state=np.random.RandomState(4))
    _train(net, X, y, steps=5)
    mean, scale = X.mean(axis=0).astype(np.float32), np.float32(1.7)
    model = PackedModel.from_network(net, mean, scale)
    metadata, arrays = model.to_arrays()
    assert json.loads(json.dumps(metadata)) == metadata
    assert all(isinstance(a, np.ndarray) for a in arrays.values())
    loaded = PackedModel.from_arrays(metadata, arrays)
    np.testing.assert_array_equal(loaded.decision_function(X), model.decision_function(X))
    with pytest.raises(ValueError, match="must describe an xnorcore.PackedModel"):
        PackedModel.from_arrays({"format": "other"}, arrays)


def test_train_releases_the_networks_step_graph(monkeypatch):
    # (On the GPU a fit's steps replay a CUDA graph kept per network; the fitted network keeps none.)
    from xnorcore.nn import _graph, _trainer
    from xnorcore.nn._trainer import TrainingHistory, train

    rng = np.random.RandomState(0)
    X, y = rng.randn(64, 5).astype(np.float32), rng.randint(0, 2, 64)
    net, opt = Network(5, 2, (8,), random_state=np.random.RandomState(1)), Adam()
    _graph._steps[net] = _graph.GraphedSteps(net, opt, 0.0)  # as a GPU epoch leaves it
    history = TrainingHistory()
    out = train(net, opt, X, y, history, epochs=2, batch_size=32, learning_rate_init=1e-2, lr_schedule="cosine",
                reg=0.0, shuffle=True, rng=np.random.RandomState(2))
    assert out is net and history.n_iter == 2
    assert net not in _graph._steps
    assert not _graph.enabled(X)  # numpy arrays never replay graphs
    # a fit that fails keeps none either
    _graph._steps[net] = _graph.GraphedSteps(net, opt, 0.0)
    monkeypatch.setattr(_trainer, "run_epoch", lambda *args, **kwargs: (np.nan, 0.0))
    with pytest.raises(FloatingPointError, match="training loss became nan"):
        train(net, opt, X, y, TrainingHistory(), epochs=2, batch_size=32, learning_rate_init=1e-2,
              lr_schedule="cosine", reg=0.0, shuffle=True, rng=np.random.RandomState(2))
    assert net not in _graph._steps


_LOGITS = np.zeros((4, 3), dtype=np.float32)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((_LOGITS[0], np.zeros(3, int)), {}, r"logits must be a 2-D float array \(n_samples, n_classes\), got \(3,\)"),
        ((_LOGITS.astype(int), np.zeros(4, int)), {}, r"logits must be a 2-D float array"),
        ((_LOGITS, np.zeros(2, int)), {}, r"y must be an integer array of shape \(4,\), one class index per row"),
        ((_LOGITS, np.zeros(4)), {}, r"y must be an integer array of shape \(4,\).* of float64"),
        ((_LOGITS, np.array([0, 1, 2, 3])), {}, r"y must hold class indices in \[0, 3\), got values from 0 to 3"),
        ((_LOGITS, np.array([0, -1, 2, 1])), {}, r"y must hold class indices in \[0, 3\), got values from -1 to 2"),
        ((_LOGITS, np.zeros(4, int), np.ones(3, np.float32), 3.0), {}, r"sample_weight must have shape \(4,\), got \(3,\)"),
        ((_LOGITS, np.zeros(4, int), np.ones(4, np.float32)), {}, r"weight_sum must be the positive sum of sample_weight"),
        ((_LOGITS, np.zeros(4, int)), {"label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\), got label_smoothing=1.0"),
        ((_LOGITS, np.zeros(4, int)), {"label_smoothing": -0.1}, r"label_smoothing must be in \[0, 1\)"),
    ],
)
def test_softmax_cross_entropy_bad_input_is_a_clear_error(args, kwargs, match):
    """Out-of-range labels would index other rows' classes (or wrap around): a silent wrong loss."""
    with pytest.raises(ValueError, match=match):
        softmax_cross_entropy(*args, **kwargs)


@pytest.mark.parametrize("shape", [(0, 3), (4, 0)])
def test_softmax_cross_entropy_needs_a_row_and_a_class(shape):
    """The mean over no rows has no value (no division by zero inside)."""
    with pytest.raises(ValueError, match=r"logits must have at least one row and one class, got shape"):
        softmax_cross_entropy(np.zeros(shape, dtype=np.float32), np.zeros(shape[0], dtype=int))
