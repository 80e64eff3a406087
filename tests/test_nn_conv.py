"""Convolution, channel batch norm, max-pool and flatten layers of xnorcore.nn."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xnorcore._backends import gpu as _gpu_backend
from xnorcore.nn._conv import (
    ChannelBatchNorm,
    Conv2D,
    Flatten,
    MaxPool2D,
    conv_padding,
    im2col,
    input_gradient,
)

from conftest import assert_batch_norm_gradients, numeric_grad, sign_ref


def conv_ref(x, w, stride=1, pads=((0, 0), (0, 0)), dilation=1):
    """Plain cross-correlation of NHWC ``x`` by HWIO ``w``, one output pixel at a time."""
    n, h, wd, c = x.shape
    kh, kw, _, o = w.shape
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    oh = (xp.shape[1] - dilation * (kh - 1) - 1) // stride + 1
    ow = (xp.shape[2] - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((n, oh, ow, o), dtype=np.result_type(x, w))
    for r in range(oh):
        for q in range(ow):
            r0, q0 = r * stride, q * stride
            patch = xp[:, r0:r0 + dilation * (kh - 1) + 1:dilation, q0:q0 + dilation * (kw - 1) + 1:dilation, :]
            out[:, r, q, :] = np.tensordot(patch, w, axes=([1, 2, 3], [0, 1, 2]))
    return out


def pool_ref(x, size=2):
    n, h, w, c = x.shape
    oh, ow = h // size, w // size
    out = np.empty((n, oh, ow, c), dtype=x.dtype)
    for r in range(oh):
        for q in range(ow):
            out[:, r, q] = x[:, r * size:(r + 1) * size, q * size:(q + 1) * size].max(axis=(1, 2))
    return out


def _real_conv(w, **kw):
    return Conv2D("c", w, binary_weights=False, binary_input=False, **kw)


@pytest.mark.parametrize("padding,stride,dilation,kernel", [
    ("same", 1, 1, (3, 3)),
    ("valid", 1, 1, (3, 3)),
    ("same", 2, 1, (3, 3)),
    ("same", 1, 2, (3, 3)),
    ("same", 1, 1, (1, 1)),
    ("valid", 1, 1, (1, 1)),
    ("same", 3, 1, (5, 2)),
    (((2, 0), (1, 3)), 2, 1, (2, 4)),
    (1, 1, 1, (4, 4)),
])
def test_conv_forward_matches_reference(padding, stride, dilation, kernel):
    rng = np.random.RandomState(0)
    x = rng.randn(3, 9, 8, 5).astype(np.float32)
    w = rng.randn(*kernel, 5, 7).astype(np.float32)
    conv = _real_conv(w, padding=padding, stride=stride, dilation=dilation, bias=True)
    conv.bias = rng.randn(7).astype(np.float32)
    pads = conv_padding(padding, (9, 8), kernel, stride, dilation)
    out = conv.forward(x, training=False)
    ref = conv_ref(x.astype(np.float64), w.astype(np.float64), stride, pads, dilation) + conv.bias
    assert out.shape == ref.shape == (3, *conv.output_shape((9, 8, 5)))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("size,stride", [(7, 1), (8, 2), (9, 2), (5, 3), (1, 1), (2, 4)])
@pytest.mark.parametrize("kernel", [1, 2, 3, 4])
def test_same_padding_output_size_and_split(size, stride, kernel):
    (top, bottom), (left, right) = conv_padding("same", (size, size), (kernel, kernel), stride, 1)
    assert (top, bottom) == (left, right)
    assert bottom - top in (0, 1)  # the odd one at the end, as TensorFlow does
    out = (size + top + bottom - kernel) // stride + 1
    assert out == -(-size // stride)


@pytest.mark.parametrize("padding", ["full", -1, ((1, 2), (3,)), ((1, -2), (0, 0)), True])
def test_bad_padding_is_named(padding):
    with pytest.raises(ValueError, match="padding must"):
        conv_padding(padding, (5, 5), (3, 3), 1, 1)


def test_conv_rejects_wrong_channel_count():
    conv = _real_conv(np.zeros((3, 3, 4, 2), np.float32))
    with pytest.raises(ValueError, match="expects NHWC input with 4 channels"):
        conv.forward(np.zeros((1, 5, 5, 3), np.float32), training=False)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(1, 70),
    o=st.integers(1, 9), kh=st.integers(1, 4), kw=st.integers(1, 4), stride=st.integers(1, 3),
    dilation=st.integers(1, 2), padding=st.sampled_from(["same", "valid", 1]),
    seed=st.integers(0, 2**31 - 1),
)
def test_binary_conv_forward_is_exactly_the_integer_convolution(n, h, w, c, o, kh, kw, stride, dilation,
                                                                padding, seed):
    rng = np.random.RandomState(seed)
    pads = conv_padding(padding, (h, w), (kh, kw), stride, dilation)
    span_h, span_w = dilation * (kh - 1) + 1, dilation * (kw - 1) + 1
    if h + sum(pads[0]) < span_h or w + sum(pads[1]) < span_w:
        return  # the kernel does not fit: no output
    x = rng.randn(n, h, w, c).astype(np.float32)
    x[rng.rand(*x.shape) < 0.1] = 0.0  # sign(0) = +1
    latent = rng.uniform(-1, 1, (kh, kw, c, o)).astype(np.float32)
    conv = Conv2D("c", latent, binary_weights=True, binary_input=True, stride=stride,
                  padding=padding, dilation=dilation)
    s = np.where(x >= 0, 1, -1).astype(np.float32)
    out = conv.forward(s, training=False)
    ref = conv_ref(sign_ref(x), sign_ref(latent), stride, pads, dilation)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.astype(np.int64), ref)


@pytest.mark.parametrize("padding,stride,dilation,kernel,bias", [
    ("same", 1, 1, (3, 3), True),
    ("valid", 2, 1, (3, 2), False),
    ("same", 2, 2, (2, 3), True),
    ("same", 1, 1, (1, 1), False),
])
def test_conv_gradients_match_finite_differences(padding, stride, dilation, kernel, bias):
    rng = np.random.RandomState(1)
    x = rng.randn(2, 6, 5, 3)
    w = rng.randn(*kernel, 3, 4)
    conv = _real_conv(w, padding=padding, stride=stride, dilation=dilation, bias=bias)
    if bias:
        conv.bias = rng.randn(4)
    up = rng.randn(2, *conv.output_shape((6, 5, 3)))

    def f():
        return float((conv.forward(x, training=False) * up).sum())

    conv.forward(x, training=True)
    dx = conv.backward(up)
    np.testing.assert_allclose(dx, numeric_grad(f, x, eps=1e-6), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(conv.weight_grad, numeric_grad(f, conv.weight, eps=1e-6), rtol=1e-6, atol=1e-8)
    if bias:
        np.testing.assert_allclose(conv.bias_grad, numeric_grad(f, conv.bias, eps=1e-6), rtol=1e-6, atol=1e-8)


def test_binary_conv_uses_sign_of_weights_and_straight_through_gradient():
    rng = np.random.RandomState(2)
    x = np.where(rng.randn(2, 5, 5, 3) >= 0, 1.0, -1.0)
    latent = rng.uniform(-1, 1, (3, 3, 3, 4))
    conv = Conv2D("c", latent, binary_weights=True, binary_input=True)
    up = rng.randn(2, 5, 5, 4)
    conv.forward(x, training=True)
    dx = conv.backward(up)
    sw = np.where(latent >= 0, 1.0, -1.0)
    ref = _real_conv(sw)
    ref.forward(x, training=True)
    ref_dx = ref.backward(up)
    np.testing.assert_array_equal(conv.forward(x, training=False), ref.forward(x, training=False))
    # The gradient reaches the latent weights as if they were sign(W) (straight through).
    np.testing.assert_allclose(conv.weight_grad, ref.weight_grad)
    np.testing.assert_allclose(dx, ref_dx)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), h=st.integers(1, 8), w=st.integers(1, 8), c=st.integers(1, 70),
       o=st.integers(1, 9), k=st.integers(1, 3), stride=st.integers(1, 2), dilation=st.integers(1, 2),
       padding=st.sampled_from(["same", "valid", 1, ((0, 2), (1, 0))]), seed=st.integers(0, 2**16))
def test_conv_xnor_forward_equals_the_float_product(n, h, w, c, o, k, stride, dilation, padding, seed):
    rng = np.random.RandomState(seed)
    if padding == "valid" and (h < dilation * (k - 1) + 1 or w < dilation * (k - 1) + 1):
        return
    if padding == 1 and (h + 2 < dilation * (k - 1) + 1 or w + 2 < dilation * (k - 1) + 1):
        return
    if padding == ((0, 2), (1, 0)) and (h + 2 < dilation * (k - 1) + 1 or w + 1 < dilation * (k - 1) + 1):
        return
    x = np.where(rng.rand(n, h, w, c) < 0.5, -1, 1).astype(np.float32)
    weight = rng.uniform(-1, 1, (k, k, c, o)).astype(np.float32)
    layers = [Conv2D("c", weight, binary_weights=True, binary_input=True, stride=stride, dilation=dilation,
                     padding=padding, xnor=xnor) for xnor in (True, False)]
    np.testing.assert_array_equal(layers[0].forward(x, training=False), layers[1].forward(x, training=False))
    out = [layer.forward(x, training=True) for layer in layers]
    np.testing.assert_array_equal(out[0], out[1])
    assert out[0].dtype == np.float32
    dz = rng.randn(*out[0].shape).astype(np.float32)
    np.testing.assert_array_equal(layers[0].backward(dz), layers[1].backward(dz))
    np.testing.assert_array_equal(layers[0].weight_grad, layers[1].weight_grad)


def test_first_layer_computes_no_input_gradient():
    conv = Conv2D("c", np.ones((3, 3, 1, 2)), binary_weights=False, binary_input=False,
                  need_input_grad=False)
    conv.forward(np.ones((1, 4, 4, 1)), training=True)
    assert conv.backward(np.ones((1, 4, 4, 2))) is None
    assert conv.weight_grad.shape == (3, 3, 1, 2)


@pytest.mark.parametrize("stride,dilation,pads", [(1, 1, ((1, 1), (1, 1))), (2, 1, ((0, 1), (2, 0))),
                                                  (1, 2, ((2, 2), (0, 0)))])
def test_input_gradient_is_the_adjoint_of_the_convolution(stride, dilation, pads):
    rng = np.random.RandomState(3)
    x = rng.randn(2, 7, 6, 3)
    cols, oh, ow = im2col(x, (3, 2), stride, dilation, pads)
    w = rng.randn(cols.shape[1], 4)
    dz = rng.randn(cols.shape[0], 4)
    back = input_gradient(dz, w, x.shape, (3, 2), stride, dilation, pads, oh, ow)
    assert back.shape == x.shape
    assert np.isclose(((cols @ w) * dz).sum(), (x * back).sum())


def input_gradient_ref(dz, w, x_shape, kernel_hw, stride, dilation, pads, oh, ow):
    """Each output pixel's patch gradient ``dz @ w.T`` added back onto its taps, one pixel at a time."""
    n, h, wd, c = x_shape
    kh, kw = kernel_hw
    (pt, pb), (pl, pr) = pads
    patches = (dz @ w.T).reshape(n, oh, ow, kh, kw, c)
    dxpad = np.zeros((n, h + pt + pb, wd + pl + pr, c))
    for b in range(n):
        for y in range(oh):
            for x in range(ow):
                for i in range(kh):
                    for j in range(kw):
                        dxpad[b, y * stride + i * dilation, x * stride + j * dilation] += patches[b, y, x, i, j]
    return dxpad[:, pt:pt + h, pl:pl + wd]


@settings(max_examples=40, deadline=None)
@given(kh=st.integers(1, 3), kw=st.integers(1, 3), stride=st.integers(1, 2), dilation=st.integers(1, 2),
       pads=st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)),
       seed=st.integers(0, 2**16))
def test_input_gradient_a_tap_at_a_time_equals_the_pixel_loop(kh, kw, stride, dilation, pads, seed):
    rng = np.random.RandomState(seed)
    x = rng.randn(2, 6, 5, 3)
    pads = ((pads[0], pads[1]), (pads[2], pads[3]))
    cols, oh, ow = im2col(x, (kh, kw), stride, dilation, pads)
    w = rng.randn(cols.shape[1], 4)
    dz = rng.randn(cols.shape[0], 4)
    got = input_gradient(dz, w, x.shape, (kh, kw), stride, dilation, pads, oh, ow)
    want = input_gradient_ref(dz, w, x.shape, (kh, kw), stride, dilation, pads, oh, ow)
    assert got.shape == x.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def im2col_ref(x, kernel_hw, stride, dilation, pads):
    """The patch matrix, one output pixel and tap at a time."""
    n, h, wd, c = x.shape
    kh, kw = kernel_hw
    xpad = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    oh = (xpad.shape[1] - dilation * (kh - 1) - 1) // stride + 1
    ow = (xpad.shape[2] - dilation * (kw - 1) - 1) // stride + 1
    cols = np.empty((n, oh, ow, kh, kw, c), dtype=x.dtype)
    for y in range(oh):
        for q in range(ow):
            for i in range(kh):
                for j in range(kw):
                    cols[:, y, q, i, j] = xpad[:, y * stride + i * dilation, q * stride + j * dilation]
    return cols.reshape(n * oh * ow, -1), oh, ow


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), h=st.integers(1, 9), wd=st.integers(1, 9), c=st.sampled_from([1, 2, 5, 16, 33]),
       kh=st.integers(1, 4), kw=st.integers(1, 4), stride=st.integers(1, 3), dilation=st.integers(1, 3),
       pads=st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)),
       contiguous=st.booleans(), seed=st.integers(0, 2**16))
def test_float32_patch_kernels_equal_the_pixel_loops(n, h, wd, c, kh, kw, stride, dilation, pads, contiguous, seed):
    # float32 numpy arrays take the CPU kernels of im2col and its adjoint; small
    # integers keep every sum exact, so the results must be equal.
    pads = ((pads[0], pads[1]), (pads[2], pads[3]))
    if min(h + sum(pads[0]) - dilation * (kh - 1), wd + sum(pads[1]) - dilation * (kw - 1)) < 1:
        return
    rng = np.random.RandomState(seed)
    x = rng.randint(-4, 5, (n, h, wd, c)).astype(np.float32)
    if not contiguous:
        x = np.asfortranarray(x)
    want, oh, ow = im2col_ref(x, (kh, kw), stride, dilation, pads)
    cols, got_oh, got_ow = im2col(x, (kh, kw), stride, dilation, pads)
    assert (got_oh, got_ow) == (oh, ow) and cols.dtype == np.float32
    np.testing.assert_array_equal(cols, want)
    w = rng.randint(-3, 4, (cols.shape[1], 3)).astype(np.float32)
    dz = rng.randint(-3, 4, (cols.shape[0], 3)).astype(np.float32)
    got = input_gradient(dz, w, x.shape, (kh, kw), stride, dilation, pads, oh, ow)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, input_gradient_ref(dz, w, x.shape, (kh, kw), stride, dilation, pads, oh, ow))


def test_conv_layer_reuses_its_patch_buffers_between_steps_only():
    # The patch matrices of a training step are reused by the next step of the
    # same shape, replaced when the batch size changes, kept out of copies and
    # pickles of the layer, and freed by release_workspaces (the end of a fit).
    import copy
    import pickle

    from xnorcore.nn._conv import _WORKSPACES, release_workspaces

    rng = np.random.RandomState(5)
    w = rng.randn(3, 3, 4, 6).astype(np.float32)
    conv, fresh = _real_conv(w.copy()), _real_conv(w.copy())
    buffers = []
    for batch in (5, 5, 2, 5):
        x = rng.randn(batch, 7, 6, 4).astype(np.float32)
        dz = rng.randn(batch, 7, 6, 6).astype(np.float32)
        z = conv.forward(x, training=True)
        buffers.append(_WORKSPACES[conv]["cols"])
        np.testing.assert_array_equal(z, fresh.forward(x, training=True))
        np.testing.assert_array_equal(conv.backward(dz), fresh.backward(dz))
        np.testing.assert_array_equal(conv.weight_grad, fresh.weight_grad)
        _WORKSPACES.pop(fresh)
    assert buffers[1] is buffers[0] and buffers[2] is not buffers[1]
    assert buffers[3].shape == (5 * 7 * 6, 36) and set(_WORKSPACES[conv]) == {"cols", "dcols"}
    conv.forward(rng.randn(3, 7, 6, 4).astype(np.float32), training=False)
    assert _WORKSPACES[conv]["cols"] is buffers[3]  # inference leaves it alone
    for twin in (copy.deepcopy(conv), pickle.loads(pickle.dumps(conv))):
        assert twin not in _WORKSPACES
    release_workspaces()
    assert conv not in _WORKSPACES


def test_fit_frees_the_patch_buffers():
    from xnorcore import BNNClassifier
    from xnorcore.nn._conv import _WORKSPACES

    rng = np.random.RandomState(0)
    other = _real_conv(rng.randn(3, 3, 1, 2).astype(np.float32))
    other.forward(rng.randn(2, 5, 5, 1).astype(np.float32), training=True)
    assert other in _WORKSPACES
    X, y = rng.rand(40, 36).astype(np.float32), np.arange(40) % 3
    BNNClassifier((8,), image_shape=(6, 6, 1), conv_layers=(4, "pool"), max_iter=2, random_state=0,
                  device="cpu").fit(X, y)
    assert len(_WORKSPACES) == 0


@pytest.mark.parametrize("shape", [(2, 4, 6, 3), (1, 5, 7, 2), (3, 3, 3, 1)])
@pytest.mark.parametrize("size", [2, 3])
def test_max_pool_forward_and_gradient(shape, size):
    rng = np.random.RandomState(4)
    x = rng.randn(*shape)  # no ties: finite differences see the gradient of max
    pool = MaxPool2D("p", size)
    out = pool.forward(x, training=True)
    np.testing.assert_array_equal(out, pool_ref(x, size))
    assert out.shape[1:] == pool.output_shape(shape[1:])
    up = rng.randn(*out.shape)
    dx = pool.backward(up)

    def f():
        return float((pool.forward(x, training=False) * up).sum())

    np.testing.assert_allclose(dx, numeric_grad(f, x, eps=1e-6), rtol=1e-6, atol=1e-8)


def test_max_pool_gradient_of_ties_goes_to_the_first_largest_input():
    # +-1 inputs, as after sign: every window has ties.
    x = np.array([[1, 1, -1, -1], [1, -1, -1, 1]], np.float32).reshape(1, 2, 4, 1)
    pool = MaxPool2D("p")
    out = pool.forward(x, training=True)
    np.testing.assert_array_equal(out.ravel(), [1, 1])
    dx = pool.backward(np.array([5.0, 7.0], np.float32).reshape(1, 1, 2, 1))
    np.testing.assert_array_equal(dx.reshape(2, 4), [[5, 0, 0, 0], [0, 0, 0, 7]])


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(1, 5),
       size=st.integers(1, 3), seed=st.integers(0, 2**16), nan=st.booleans())
def test_max_pool_cpu_kernel_equals_the_array_path(n, h, w, c, size, seed, nan):
    # float32 C-contiguous input takes the one-pass kernel, a strided view of
    # the same values the array expressions: both are exact, ties (integer
    # values) and NaN included.
    if h < size or w < size:
        return
    rng = np.random.RandomState(seed)
    x = rng.randint(-2, 3, (n, h, w, c)).astype(np.float32)
    if nan:
        x[rng.randint(n), rng.randint(h), rng.randint(w), rng.randint(c)] = np.nan
    strided = np.zeros((n, h, w, 2 * c), np.float32)[..., ::2]
    strided[...] = x
    fast, slow = MaxPool2D("p", size), MaxPool2D("p", size)
    out, ref = fast.forward(x, training=True), slow.forward(strided, training=True)
    np.testing.assert_array_equal(out, ref)
    dy = rng.randn(*out.shape).astype(np.float32)
    dx = fast.backward(dy)
    if nan:
        # (A NaN window's gradient is moot: the loss is NaN and training stops.)
        assert np.isfinite(dx).all()
    else:
        np.testing.assert_array_equal(dx, slow.backward(dy))


def test_max_pool_of_windows_larger_than_the_kernel_takes_is_still_exact():
    # 17 x 17 windows have taps beyond a uint8: the array path serves them.
    rng = np.random.RandomState(8)
    x = rng.randn(1, 34, 17, 2).astype(np.float32)
    pool = MaxPool2D("p", 17)
    out = pool.forward(x, training=True)
    np.testing.assert_array_equal(out, pool_ref(x, 17))
    dx = pool.backward(np.ones(out.shape, np.float32))
    assert dx.sum() == out.size and dx.max() == 1


def test_max_pool_of_an_input_smaller_than_the_window_is_an_error():
    with pytest.raises(ValueError, match="leaves nothing"):
        MaxPool2D("p", 2).forward(np.zeros((1, 1, 4, 2)), training=False)


def test_channel_batch_norm_gradients_match_finite_differences():
    rng = np.random.RandomState(5)
    z = rng.randn(2, 3, 4, 3)
    bn = ChannelBatchNorm("bn", 3, np)
    bn.gamma = rng.randn(3)
    bn.beta = rng.randn(3)
    up = rng.randn(*z.shape)
    assert_batch_norm_gradients(bn, z, up)


def test_channel_batch_norm_normalizes_each_channel_over_samples_and_positions():
    rng = np.random.RandomState(6)
    scale = np.array([1.0, 10.0, 0.5], np.float32)
    z = (rng.randn(8, 5, 5, 3) * scale + [3, -2, 7]).astype(np.float32)
    bn = ChannelBatchNorm("bn", 3, np, momentum=0.0)
    out = bn.forward(z, training=True)
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=(0, 1, 2)), 1, atol=1e-3)
    np.testing.assert_allclose(bn.running_var, z.reshape(-1, 3).var(0, ddof=1), rtol=1e-4)
    expected = (z - bn.running_mean) / np.sqrt(bn.running_var + bn.eps)
    np.testing.assert_allclose(bn.forward(z, training=False), expected, rtol=1e-5, atol=1e-5)


def test_flatten_is_channels_fastest_and_inverts_in_backward():
    x = np.arange(2 * 3 * 2 * 4, dtype=np.float32).reshape(2, 3, 2, 4)
    flat = Flatten("f")
    out = flat.forward(x, training=True)
    np.testing.assert_array_equal(out[1, :5], x[1, 0, 0, :].tolist() + [x[1, 0, 1, 0]])
    np.testing.assert_array_equal(flat.backward(out), x)


def _randomize_batch_norm(layers, rng):
    """Random statistics for the batch norms in ``layers``."""
    for layer in layers:
        if hasattr(layer, "running_var"):
            c = layer.gamma.shape[0]
            # Negative and zero scales too: a pooled channel with a negative scale is an AND of bits.
            layer.gamma = rng.choice([-1.5, -0.5, 0.0, 0.7, 2.0], c).astype(np.float32)
            layer.beta = rng.randn(c).astype(np.float32)
            layer.running_mean = (rng.randn(c) * 3).astype(np.float32)
            layer.running_var = rng.uniform(0.5, 4, c).astype(np.float32)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("conv_layers", [
    (4, 8, "pool", 8, "pool"),
    (4, "pool", (8, 1), (16, (2, 3)), "pool", "pool"),
    ((3, 5), 70, "pool", 65),
])
def test_packed_conv_features_equal_the_float_path(seed, conv_layers):
    from xnorcore import unpack_bits
    from xnorcore.nn import ConvFeatures

    rng = np.random.RandomState(seed)
    features = ConvFeatures((9, 10, 3), conv_layers, random_state=rng)
    _randomize_batch_norm(features.layers(), rng)
    x = rng.randn(5, 9, 10, 3).astype(np.float32)
    expected = features.forward(x, training=False)
    packed = features.forward_packed(x)
    assert packed.shape == expected.shape
    np.testing.assert_array_equal(unpack_bits(packed, dtype=np.float32), expected)


@pytest.mark.parametrize("hw,kernel,padding", [((28, 28), (3, 3), "same"), ((9, 7), (3, 3), "same"),
                                               ((9, 10), (2, 3), "same"), ((8, 9), (3, 1), "valid"),
                                               ((6, 6), (5, 5), 2)])
@pytest.mark.parametrize("channels", [1, 3])
def test_real_block_sums_equal_convolution_then_pool(hw, kernel, padding, channels):
    from xnorcore.nn._convnet import ConvBlock, _REAL_BLOCK_IMAGES, real_block_sums

    rng = np.random.RandomState(7)
    n = _REAL_BLOCK_IMAGES + 3  # more than one block of images
    x = rng.randn(n, *hw, channels).astype(np.float32)
    conv = _real_conv(rng.randn(*kernel, channels, 5).astype(np.float32), padding=padding, bias=True)
    conv.bias = rng.randn(5).astype(np.float32)
    block = ConvBlock(conv, None, None, MaxPool2D("p"))
    expected = MaxPool2D("p").forward(conv.forward(x, training=False), training=False)
    got = real_block_sums(block, x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def _conv_network_with_random_statistics(conv_layers, hidden, seed):
    from xnorcore.nn import ConvNetwork

    rng = np.random.RandomState(seed)
    net = ConvNetwork((9, 10, 3), conv_layers, 4, hidden, random_state=rng)
    _randomize_batch_norm(net.layers(), rng)
    return net, rng


@pytest.mark.parametrize("conv_layers, hidden", [
    ((4, 8, "pool", 8, "pool"), (17,)),
    ((4, "pool", (8, 1), (16, (2, 3)), "pool", "pool"), ()),
    (((3, 5), 70, "pool", 65), (65, 3)),
])
def test_packed_conv_model_round_trips_through_plain_arrays(conv_layers, hidden):
    """to_arrays gives JSON metadata and numpy arrays only; from_arrays rebuilds the same logits."""
    import json

    from xnorcore.nn import PackedConvModel

    net, rng = _conv_network_with_random_statistics(conv_layers, hidden, seed=len(hidden))
    mean, scale = rng.randn(9 * 10 * 3).astype(np.float32), np.float32(1.7)
    model = PackedConvModel.from_network(net, mean, scale)
    metadata, arrays = model.to_arrays()
    assert json.loads(json.dumps(metadata)) == metadata
    assert all(type(a) is np.ndarray for a in arrays.values())
    blocks = net.features.blocks
    assert [item.get("pool") for item in metadata["conv"] if item["kind"] == "conv"] == [
        None if b.pool is None else 2 for b in blocks]
    assert arrays["features/conv1/weight"].dtype == np.float32  # the real first layer
    for block in blocks[1:]:
        kh, kw, c, o = block.conv.shape
        assert arrays[f"features/{block.name}/weight_bits"].shape == (kh, kw, o, -(-c // 64))
        assert arrays[f"features/{block.name}/threshold"].dtype == np.int32
    loaded = PackedConvModel.from_arrays(metadata, arrays)
    x = (rng.randn(7, 9 * 10 * 3) * 2).astype(np.float32)
    np.testing.assert_array_equal(loaded.decision_function(x), model.decision_function(x))
    np.testing.assert_array_equal(loaded.decision_function(x), net.forward((x - mean) / scale))
    assert loaded.to_arrays()[0] == metadata


def test_packed_conv_model_from_arrays_refuses_what_does_not_fit():
    import copy

    from xnorcore.nn import PackedConvModel

    net, _ = _conv_network_with_random_statistics((4, "pool", 8), (5,), seed=0)
    metadata, arrays = PackedConvModel.from_network(net).to_arrays()
    with pytest.raises(ValueError, match=r"metadata must describe an xnorcore\.PackedConvModel of version 1, got "
                                         r"\{'format': 'xnorcore\.PackedModel', 'version': 1\}"):
        PackedConvModel.from_arrays(metadata["head"], arrays)
    forged = copy.deepcopy(metadata)
    forged["conv"][1]["stride"] = 2
    with pytest.raises(ValueError, match=r"metadata conv items are not those of conv layers \[\('conv', 4, \(3, 3\)\), "
                                         r"\('pool',\), \('conv', 8, \(3, 3\)\)\] on images of shape \(9, 10, 3\): "
                                         r"conv\[1\]\.stride is 2, they make 1$"):
        PackedConvModel.from_arrays(forged, arrays)
    with pytest.raises(ValueError, match=r"metadata conv must be a list of conv items"):
        PackedConvModel.from_arrays({**metadata, "conv": "4, pool"}, arrays)
    forged = copy.deepcopy(metadata)
    del forged["conv"][0]["out_channels"]
    with pytest.raises(ValueError, match=r"metadata does not describe conv layers \(KeyError: 'out_channels'\)"):
        PackedConvModel.from_arrays(forged, arrays)
    listed = {**arrays, "input_mean": arrays["input_mean"].tolist()}
    with pytest.raises(ValueError, match=r"arrays\['input_mean'\] must have dtype float32 and shape \(270,\), "
                                         r"got a list"):
        PackedConvModel.from_arrays(metadata, listed)
    bad = {**arrays, "features/conv2/weight_bits": arrays["features/conv2/weight_bits"].astype(np.int64)}
    with pytest.raises(ValueError, match=r"arrays\['features/conv2/weight_bits'\] must have dtype uint64 and shape "
                                         r"\(3, 3, 8, 1\), got dtype int64 and shape \(3, 3, 8, 1\)"):
        PackedConvModel.from_arrays(metadata, bad)
    missing = {k: v for k, v in arrays.items() if k != "features/conv1/threshold"}
    with pytest.raises(ValueError, match=r"arrays\['features/conv1/threshold'\] must have dtype float32 and shape "
                                         r"\(4,\), got nothing"):
        PackedConvModel.from_arrays(metadata, missing)
    words = arrays["features/conv2/weight_bits"].copy()
    words[0, 0, 0, 0] |= np.uint64(1) << np.uint64(63)  # 4 input channels: bits 4..63 are padding
    with pytest.raises(ValueError, match=r"words has padding bits set"):
        PackedConvModel.from_arrays(metadata, {**arrays, "features/conv2/weight_bits": words})


_GPU_REASON = _gpu_backend.unavailable_reason()
ON_EACH_DEVICE = pytest.mark.parametrize("device", [
    "cpu",
    pytest.param("gpu", marks=[pytest.mark.gpu, pytest.mark.skipif(
        _GPU_REASON is not None, reason=f"GPU tests need CuPy and a CUDA device: {_GPU_REASON}")]),
])


@ON_EACH_DEVICE
@pytest.mark.parametrize("conv", [(8, "pool", 16), (8, 70, "pool"), (8, "pool", "pool", 16)])
def test_xnor_and_float_conv_products_train_identically(conv, device):
    from xnorcore._array import to_numpy
    from xnorcore._backends import for_device
    from xnorcore.nn import Adam, ConvNetwork

    xp = for_device(device)[0]
    rng = np.random.RandomState(0)
    X = xp.asarray(rng.randn(300, 100).astype(np.float32))
    y = xp.asarray(rng.randint(0, 3, 300))
    nets = [ConvNetwork((10, 10, 1), conv, 3, (32,), binary=True, xnor=xnor, random_state=np.random.RandomState(7),
                        xp=xp) for xnor in (False, True)]
    assert nets[1].features.blocks[1].conv.uses_xnor and not nets[0].features.blocks[1].conv.uses_xnor
    curves = []
    for net in nets:
        opt = Adam()
        curves.append([float(net.train_step(X[i:i + 100], y[i:i + 100], opt, 1e-2)) for i in (0, 100, 200, 0)])
    assert curves[0] == curves[1]
    for a, b in zip(nets[0].params(), nets[1].params()):
        np.testing.assert_array_equal(to_numpy(a[1]), to_numpy(b[1]), err_msg=a[0])


@ON_EACH_DEVICE
def test_int32_sums_pass_the_pool_and_batch_norm_as_their_floats(device):
    # Conv2D's int_sums: an XNOR training step's sums go on as int32 where a max-pool or a
    # batch norm comes next; both must compute what they compute on the same sums as floats.
    from xnorcore._array import to_numpy
    from xnorcore._backends import for_device

    xp = for_device(device)[0]
    rng = np.random.RandomState(3)
    x = xp.asarray(np.where(rng.rand(3, 6, 7, 70) < 0.5, -1, 1).astype(np.float32))
    weight = xp.asarray(rng.uniform(-1, 1, (3, 3, 70, 5)).astype(np.float32))
    conv = Conv2D("c", weight, binary_weights=True, binary_input=True, xnor=True)
    z = conv.forward(x, training=True, int_sums=True)
    assert z.dtype == np.int32
    np.testing.assert_array_equal(to_numpy(z), to_numpy(conv.forward(x, training=True)))
    biased = Conv2D("b", weight, binary_weights=True, binary_input=True, xnor=True, bias=True)
    biased.bias[...] = 0.5
    assert biased.forward(x, training=True, int_sums=True).dtype == np.float32  # (the bias is real)
    dy = xp.asarray(rng.randn(3, 3, 3, 5).astype(np.float32))
    pools = [MaxPool2D("p"), MaxPool2D("q")]
    outs = [pools[0].forward(z, training=True), pools[1].forward(z.astype(np.float32), training=True)]
    np.testing.assert_array_equal(to_numpy(outs[0]), to_numpy(outs[1]))
    grads = [p.backward(dy) for p in pools]
    assert grads[0].dtype == np.float32
    np.testing.assert_array_equal(to_numpy(grads[0]), to_numpy(grads[1]))
    bns = [ChannelBatchNorm("n", 5, xp), ChannelBatchNorm("m", 5, xp)]
    outs = [bns[0].forward(z, training=True), bns[1].forward(z.astype(np.float32), training=True)]
    np.testing.assert_array_equal(to_numpy(outs[0]), to_numpy(outs[1]))
    np.testing.assert_array_equal(to_numpy(bns[0].running_var), to_numpy(bns[1].running_var))
