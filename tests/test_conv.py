"""binary_conv2d and its fused output: exact against a plain numpy reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import xnorcore
from xnorcore import (
    ConvWeights,
    PackedBits,
    _bitpack,
    binary_conv2d,
    binary_conv2d_threshold_pack,
    pack_bits,
    pack_conv_weights,
    unpack_bits,
)
from xnorcore._backends import cpu as _cpu
from xnorcore.ops import _conv_geometry

from conftest import random_matrix, sign_ref

VARIANTS = _bitpack.available_variants()


@pytest.fixture(params=VARIANTS)
def variant(request):
    """Run the test with each popcount variant this CPU supports."""
    previous = _cpu.set_variant(request.param)
    yield request.param
    _cpu.set_variant(previous)


def pads_of(x_shape, w_shape, stride, padding, dilation):
    g = _conv_geometry(x_shape, w_shape, stride, padding, dilation)
    return (g[10], g[11]), (g[12], g[13])


def conv_ref(x, w, stride=1, padding="valid", dilation=1, groups=1, pad_value=0):
    """Sliding windows over sign(x) padded with pad_value, times sign(w): int64 sums.

    The products of +-1 and 0 are summed in float64 (through BLAS), exact for any
    sum below 2**53 in magnitude, far above the int32 results checked here."""
    sh, sw = (stride, stride) if np.isscalar(stride) else stride
    dh, dw = (dilation, dilation) if np.isscalar(dilation) else dilation
    (pt, pb), (pl, pr) = pads_of(x.shape, w.shape, (sh, sw), padding, (dh, dw))
    sx = np.pad(sign_ref(x), ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=pad_value)
    sk = sign_ref(w).astype(np.float64)
    n, h, wd, c = sx.shape
    kh, kw, cg, o = w.shape
    og = o // groups
    oh = (h - (kh - 1) * dh - 1) // sh + 1
    ow = (wd - (kw - 1) * dw - 1) // sw + 1
    out = np.zeros((n, oh, ow, o), dtype=np.int64)
    for y in range(oh):
        for x_ in range(ow):
            window = sx[:, y * sh : y * sh + (kh - 1) * dh + 1 : dh, x_ * sw : x_ * sw + (kw - 1) * dw + 1 : dw, :]
            for g in range(groups):
                patch = window[..., g * cg : (g + 1) * cg].reshape(n, -1).astype(np.float64)
                out[:, y, x_, g * og : (g + 1) * og] = patch @ sk[..., g * og : (g + 1) * og].reshape(-1, og)
    return out


def pool_ref(signs):
    """2x2 max-pool with stride 2 (floor) of +-1 values (N, H, W, C)."""
    n, h, w, c = signs.shape
    s = signs[:, : h // 2 * 2, : w // 2 * 2]
    return s.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def threshold_ref(z, direction, threshold):
    return np.where(direction.astype(np.int64) * z - threshold >= 0, 1, -1)


def layout(x, kind):
    """The same values in another memory layout."""
    if kind == "fortran":
        return np.asfortranarray(x)
    if kind == "nchw_view":  # a channels-first array seen as NHWC
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    if kind == "strided":
        big = np.repeat(x, 2, axis=2)
        return big[:, :, ::2]
    return x


PADDINGS = st.one_of(
    st.sampled_from(["valid", "same"]),
    st.integers(0, 2),
    st.tuples(st.tuples(st.integers(0, 2), st.integers(0, 2)), st.tuples(st.integers(0, 2), st.integers(0, 2))),
)


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 1, 2, 3, "depthwise"]))
    cg = draw(st.sampled_from([1, 3, 63, 64, 65, 100, 128, 130]))
    if groups == "depthwise":
        groups, cg = draw(st.integers(1, 20)), 1
    og = draw(st.integers(1, 30))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = draw(st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    dilation = draw(st.one_of(st.integers(1, 2), st.tuples(st.integers(1, 2), st.integers(1, 2))))
    padding = draw(PADDINGS)
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 9)), draw(st.integers(1, 9)), cg * groups)
    w_shape = (kh, kw, cg, og * groups)
    try:
        _conv_geometry(shape, w_shape, stride, padding, dilation)
    except ValueError:
        kh = kw = 1
        w_shape = (1, 1, cg, og * groups)
    return dict(
        shape=shape,
        w_shape=w_shape,
        stride=stride,
        dilation=dilation,
        padding=padding,
        groups=groups,
        pad_value=draw(st.sampled_from([0, 1, -1])),
        dtype=draw(st.sampled_from([np.float32, np.float64, np.float16, np.int8, np.int32, np.bool_])),
        layout=draw(st.sampled_from(["c", "fortran", "nchw_view", "strided"])),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def case_arrays(case):
    rng = np.random.default_rng(case["seed"])
    x = layout(random_matrix(rng, case["shape"], case["dtype"], special=0.1), case["layout"])
    w = random_matrix(rng, case["w_shape"], np.float32, special=0.1)
    return x, w


def conv_kwargs(case):
    return {k: case[k] for k in ("stride", "padding", "dilation", "groups", "pad_value")}


@settings(max_examples=150, deadline=None)
@given(conv_cases())
def test_conv_is_exact(case):
    x, w = case_arrays(case)
    got = binary_conv2d(x, w, **conv_kwargs(case))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, conv_ref(x, w, **conv_kwargs(case)))


@settings(max_examples=60, deadline=None)
@given(conv_cases(), st.booleans())
def test_fused_threshold_pack_and_pool_match_int32_sums(case, pool):
    x, w = case_arrays(case)
    o = w.shape[3]
    rng = np.random.default_rng(case["seed"] + 1)
    direction = rng.integers(-1, 2, o).astype(np.int8)
    threshold = rng.integers(-6, 7, o).astype(np.int32)
    z = binary_conv2d(x, w, **conv_kwargs(case))
    expected = threshold_ref(z, direction, threshold)
    if pool:
        expected = pool_ref(expected)
    packed = binary_conv2d_threshold_pack(x, w, direction, threshold, pool=pool, **conv_kwargs(case))
    assert isinstance(packed, PackedBits) and packed.axis == 3
    assert packed.shape == expected.shape
    np.testing.assert_array_equal(unpack_bits(packed), expected)
    # padding bits of the packed output are zero, as in every packed array
    if o % 64:
        assert not (packed.words[..., -1] >> np.uint64(o % 64)).any()


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("c, o", [(64, 64), (32, 64), (130, 50), (256, 70)])
def test_fused_thresholds_at_every_bound_and_extreme(variant, rng, padding, c, o):
    # Thresholds on and next to every reachable sum, beyond them, and at the
    # ends of int32 (where direction * z - threshold wraps, as numpy's int32
    # arithmetic does), every direction: the tiles that compare popcounts with
    # bounds and those that go through int32 sums agree with the reference.
    x = random_matrix(rng, (2, 9, 10, c), np.float32)
    w = random_matrix(rng, (3, 3, c, o), np.float32)
    z = binary_conv2d(x, w, padding=padding)
    k = 9 * c
    for extreme in (False, True):
        direction = rng.integers(-1, 2, o).astype(np.int8)
        if extreme:
            threshold = rng.choice([-2**31, -2**31 + 1, 2**31 - 1, -k - 1, k + 1, 0], o).astype(np.int32)
        else:
            threshold = rng.integers(-k - 3, k + 4, o).astype(np.int32)
            threshold[: o // 2] = z[0, 4, 5, : o // 2] + rng.integers(-1, 2, o // 2)
        with np.errstate(over="ignore"):
            bits = np.where(direction.astype(np.int32) * z - threshold >= 0, 1, -1)
        for pool in (False, True):
            expected = pool_ref(bits) if pool else bits
            packed = binary_conv2d_threshold_pack(x, w, direction, threshold, padding=padding, pool=pool)
            np.testing.assert_array_equal(unpack_bits(packed), expected)


CASES = [
    # (N, H, W, C), (KH, KW, C // groups, O), stride, padding, dilation, groups
    ((2, 9, 11, 130), (3, 3, 130, 50), 1, "same", 1, 1),
    ((1, 12, 10, 64), (3, 3, 64, 64), 2, "same", 1, 1),
    ((1, 13, 9, 70), (2, 3, 70, 33), (2, 1), ((2, 0), (1, 3)), (2, 3), 1),
    ((3, 7, 8, 128), (5, 5, 64, 48), 1, 2, 1, 2),
    ((1, 10, 10, 24), (3, 3, 1, 48), 1, "same", 1, 24),  # depthwise, 2 outputs per channel
    ((1, 6, 6, 200), (1, 1, 200, 300), 1, "valid", 1, 1),
]


@pytest.mark.parametrize("pad_value", [0, 1, -1])
@pytest.mark.parametrize("case", CASES)
def test_conv_exact_every_variant(variant, rng, case, pad_value):
    shape, w_shape, stride, padding, dilation, groups = case
    x = random_matrix(rng, shape, np.float32, special=0.05)
    w = random_matrix(rng, w_shape, np.float32, special=0.05)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, pad_value=pad_value)
    ref = conv_ref(x, w, **kwargs)
    np.testing.assert_array_equal(binary_conv2d(x, w, **kwargs), ref)
    o = w_shape[3]
    direction = rng.integers(-1, 2, o).astype(np.int8)
    threshold = rng.integers(-10, 11, o).astype(np.int32)
    for pool in (False, True):
        expected = threshold_ref(ref, direction, threshold)
        expected = pool_ref(expected) if pool else expected
        packed = binary_conv2d_threshold_pack(x, w, direction, threshold, pool=pool, **kwargs)
        np.testing.assert_array_equal(unpack_bits(packed), expected)


def test_conv_agrees_across_variants(rng):
    x = random_matrix(rng, (2, 15, 14, 96), np.float32)
    w = random_matrix(rng, (3, 3, 96, 40), np.float32)
    previous = _cpu.get_variant()
    results = []
    try:
        for name in VARIANTS:
            _cpu.set_variant(name)
            results.append(binary_conv2d(x, w, padding="same", stride=2))
    finally:
        _cpu.set_variant(previous)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_one_and_several_threads_give_identical_results(variant, rng):
    # Large enough that the kernels split the work between threads.
    x = random_matrix(rng, (2, 20, 20, 128), np.float32)
    w = random_matrix(rng, (3, 3, 128, 72), np.float32)
    direction = rng.integers(-1, 2, 72).astype(np.int8)
    threshold = rng.integers(-20, 20, 72).astype(np.int32)
    one = binary_conv2d(x, w, padding="same", n_threads=1)
    np.testing.assert_array_equal(binary_conv2d(x, w, padding="same", n_threads=3), one)
    np.testing.assert_array_equal(one, conv_ref(x, w, padding="same"))
    for pool in (False, True):
        fused1 = binary_conv2d_threshold_pack(x, w, direction, threshold, padding="same", pool=pool, n_threads=1)
        fused3 = binary_conv2d_threshold_pack(x, w, direction, threshold, padding="same", pool=pool, n_threads=3)
        np.testing.assert_array_equal(fused1.words, fused3.words)


@pytest.mark.parametrize(
    "shape, w_shape, groups",
    [((2, 6, 7, 100), (3, 3, 100, 20), 1), ((1, 5, 5, 128), (3, 3, 64, 8), 2), ((1, 5, 6, 30), (3, 2, 10, 9), 3)],
)
def test_packed_operands_give_the_same_result(rng, shape, w_shape, groups):
    x = random_matrix(rng, shape, np.float64)
    w = random_matrix(rng, w_shape, np.float32)
    kwargs = dict(padding="same", groups=groups)
    expected = binary_conv2d(x, w, **kwargs)
    xp, wp = pack_bits(x, axis=-1), pack_bits(w, axis=2)
    for a, b in [(xp, w), (x, wp), (xp, wp)]:
        np.testing.assert_array_equal(binary_conv2d(a, b, **kwargs), expected)
    np.testing.assert_array_equal(expected, conv_ref(x, w, **kwargs))


@settings(max_examples=60, deadline=None)
@given(conv_cases())
def test_prepared_weights_give_identical_results(case):
    # One ConvWeights through every configuration of the case: each call must
    # use what was prepared for its own (variant, groups, padding), never another's.
    x, w = case_arrays(case)
    o = w.shape[3]
    rng = np.random.default_rng(case["seed"] + 2)
    direction = rng.integers(-1, 2, o).astype(np.int8)
    threshold = rng.integers(-6, 7, o).astype(np.int32)
    cw = pack_conv_weights(w)
    assert isinstance(cw, ConvWeights) and cw.shape == w.shape
    kwargs = conv_kwargs(case)
    for pad_value in (kwargs["pad_value"], 0, 1, -1, kwargs["pad_value"]):
        for padding in (kwargs["padding"], "valid", "same"):
            k = dict(kwargs, pad_value=pad_value, padding=padding)
            try:
                expected = binary_conv2d(x, w, **k)
            except ValueError:  # the kernel does not fit this padding
                continue
            for _ in range(2):  # the second call reads what the first prepared
                np.testing.assert_array_equal(binary_conv2d(x, cw, **k), expected)
                np.testing.assert_array_equal(
                    binary_conv2d_threshold_pack(x, cw, direction, threshold, **k).words,
                    binary_conv2d_threshold_pack(x, w, direction, threshold, **k).words,
                )
    np.testing.assert_array_equal(binary_conv2d(x, cw, **kwargs), conv_ref(x, w, **kwargs))


def test_prepared_weights_across_variants_and_groups(rng):
    x = random_matrix(rng, (1, 7, 6, 128), np.float32)
    w = random_matrix(rng, (3, 3, 64, 40), np.float32)
    w1 = random_matrix(rng, (3, 3, 128, 40), np.float32)
    cw, cw1 = pack_conv_weights(pack_bits(w, axis=2)), pack_conv_weights(w1)
    previous = _cpu.get_variant()
    try:
        for _ in range(2):
            for name in VARIANTS:
                _cpu.set_variant(name)
                np.testing.assert_array_equal(
                    binary_conv2d(x, cw, padding="same", groups=2), conv_ref(x, w, padding="same", groups=2)
                )
                np.testing.assert_array_equal(binary_conv2d(x, cw1, padding="same"), conv_ref(x, w1, padding="same"))
    finally:
        _cpu.set_variant(previous)


def test_prepared_weights_cannot_go_stale(rng):
    # The words are a private copy: writing the caller's words or arrays
    # afterwards changes nothing, and the ConvWeights itself cannot be written.
    x = random_matrix(rng, (1, 6, 6, 70), np.float32)
    w = random_matrix(rng, (3, 3, 70, 9), np.float32)
    words = pack_bits(w, axis=2).words.copy()
    cw = pack_conv_weights(PackedBits(words, w.shape, 2))
    expected = conv_ref(x, w, padding="same")
    np.testing.assert_array_equal(binary_conv2d(x, cw, padding="same"), expected)
    words[...] = ~words & np.uint64(2**6 - 1)
    np.testing.assert_array_equal(binary_conv2d(x, cw, padding="same"), expected)
    with pytest.raises(ValueError, match="read-only"):
        cw.packed.words[0, 0, 0, 0] = 0
    with pytest.raises(AttributeError, match="immutable"):
        cw.packed = pack_bits(-w, axis=2)
    assert pack_conv_weights(cw) is cw


def test_prepared_weights_pickle_to_words_only(rng):
    import pickle

    x = random_matrix(rng, (1, 5, 5, 3), np.float32)
    w = random_matrix(rng, (3, 3, 3, 4), np.float32)
    cw = pack_conv_weights(w)
    expected = binary_conv2d(x, cw, padding="same")
    loaded = pickle.loads(pickle.dumps(cw))
    assert isinstance(loaded, ConvWeights) and loaded.shape == cw.shape and not loaded._prepared
    np.testing.assert_array_equal(binary_conv2d(x, loaded, padding="same"), expected)


@pytest.mark.parametrize(
    "w, error, match",
    [
        (np.ones((3, 3, 2)), ValueError, "w must be 4-D HWIO"),
        (np.full((1, 1, 2, 2), np.nan), ValueError, "NaN"),
        (pack_bits(np.ones((3, 3, 2, 2)), axis=3), ValueError, "packed along axis=2"),
        (np.ones((1, 1, 2, 2), dtype=complex), TypeError, "complex"),
    ],
)
def test_pack_conv_weights_bad_input_is_a_clear_error(w, error, match):
    with pytest.raises(error, match=match):
        pack_conv_weights(w)


def test_conv_weights_needs_packed_hwio_weights():
    with pytest.raises(TypeError, match="4-D PackedBits packed along axis=2"):
        ConvWeights(np.ones((3, 3, 2, 2)))
    with pytest.raises(ValueError, match="channels"):
        binary_conv2d(np.ones((1, 4, 4, 3)), pack_conv_weights(np.ones((3, 3, 2, 2))))


def test_fused_output_feeds_the_next_layer(rng):
    x = random_matrix(rng, (2, 8, 8, 70), np.float32)
    w1 = random_matrix(rng, (3, 3, 70, 65), np.float32)
    w2 = random_matrix(rng, (3, 3, 65, 30), np.float32)
    direction = np.ones(65, dtype=np.int8)
    threshold = np.zeros(65, dtype=np.int32)
    h = binary_conv2d_threshold_pack(x, w1, direction, threshold, padding="same", pool=True)
    signs = pool_ref(threshold_ref(conv_ref(x, w1, padding="same"), direction, threshold))
    np.testing.assert_array_equal(binary_conv2d(h, w2, padding="same"), conv_ref(signs, w2, padding="same"))


def test_zero_padding_equals_the_float_convolution_of_signs(rng):
    # What training computes: a float conv of sign(x) and sign(w) with zero padding.
    x = random_matrix(rng, (1, 7, 6, 5), np.float32)
    w = random_matrix(rng, (3, 3, 5, 4), np.float32)
    real = _cpu.real_conv2d(xnorcore.sign(x), xnorcore.sign(w), _conv_geometry(x.shape, w.shape, 2, "same", 1))
    np.testing.assert_array_equal(binary_conv2d(x, w, stride=2, padding="same"), real.astype(np.int32))


@pytest.mark.parametrize("stride, padding, dilation", [(1, "valid", 1), (2, "same", 1), (1, ((1, 0), (2, 1)), 2)])
def test_real_conv2d_matches_a_float64_reference(rng, stride, padding, dilation):
    x = rng.standard_normal((2, 9, 8, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 16)).astype(np.float32)
    geometry = _conv_geometry(x.shape, w.shape, stride, padding, dilation)
    got = _cpu.real_conv2d(x, w, geometry)
    (pt, pb), (pl, pr) = (geometry[10], geometry[11]), (geometry[12], geometry[13])
    xp = np.pad(x.astype(np.float64), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    sh = sw = stride
    dh = dw = dilation
    ref = np.zeros(got.shape)
    for i in range(3):
        for j in range(3):
            window = xp[:, i * dh : i * dh + (got.shape[1] - 1) * sh + 1 : sh, j * dw : j * dw + (got.shape[2] - 1) * sw + 1 : sw]
            ref += window @ w[i, j].astype(np.float64)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)


def real_pool_ref(x, w, bias, pads):
    """Stride-1 zero-padded convolution, 2x2 max-pool (stride 2, floor), plus bias, in float64."""
    (pt, pb), (pl, pr) = pads
    xp = np.pad(x.astype(np.float64), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    kh, kw, _, o = w.shape
    oh, ow = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    z = np.zeros((x.shape[0], oh, ow, o))
    for i in range(kh):
        for j in range(kw):
            z += xp[:, i : i + oh, j : j + ow] @ w[i, j].astype(np.float64)
    ph, pw = oh // 2, ow // 2
    z = z[:, : 2 * ph, : 2 * pw].reshape(x.shape[0], ph, 2, pw, 2, o).max(axis=(2, 4))
    return z if bias is None else z + bias


@st.composite
def real_pool_cases(draw):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    pads = tuple((draw(st.integers(0, k - 1)), draw(st.integers(0, k - 1))) for k in (kh, kw))
    # At least one pooled output: the padded input holds kernel + 1 rows and columns.
    h = draw(st.integers(max(1, kh + 1 - sum(pads[0])), 12))
    w = draw(st.integers(max(1, kw + 1 - sum(pads[1])), 12))
    n, c, o = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 70))
    seed = draw(st.integers(0, 2**32 - 1))
    return n, h, w, c, kh, kw, o, pads, draw(st.booleans()), seed


@settings(max_examples=80, deadline=None)
@given(real_pool_cases())
def test_real_conv2d_pool_is_exact(case):
    # Small integers keep every float32 sum exact, so the kernel must equal the
    # reference bit for bit; half-integer thresholds and every direction test
    # the fused output on both sides of each threshold.
    n, h, w, c, kh, kw, o, pads, with_bias, seed = case
    rng = np.random.default_rng(seed)
    x = rng.integers(-4, 5, (n, h, w, c)).astype(np.float32)
    weight = rng.integers(-4, 5, (kh, kw, c, o)).astype(np.float32)
    bias = rng.integers(-3, 4, o).astype(np.float32) if with_bias else None
    direction = rng.integers(-1, 2, o).astype(np.int8)
    threshold = (rng.integers(-40, 41, o) / 2).astype(np.float32)
    expected = real_pool_ref(x, weight, bias, pads)
    bits = np.where(direction * expected - threshold >= 0, 1, -1)
    previous = _cpu.get_variant()
    try:
        for name in VARIANTS:
            _cpu.set_variant(name)
            got = _cpu.real_conv2d_pool(x, weight, bias, pads)
            assert got.dtype == np.float32 and got.shape == expected.shape
            np.testing.assert_array_equal(got, expected)
            words = _cpu.real_conv2d_pool(x, weight, bias, pads, direction, threshold)
            packed = PackedBits(words, expected.shape, 3)
            np.testing.assert_array_equal(unpack_bits(packed, dtype=np.int8), bits)
    finally:
        _cpu.set_variant(previous)


def test_real_conv2d_pool_refuses_to_threshold_nan_sums(variant):
    # Two pixels at +-3e38 times weights of 10 overflow in every window of the 2x2 image: the
    # sums are inf (variants that fuse multiply and add) or NaN (inf - inf).  A unit of direction
    # 0 then thresholds 0 * inf = NaN or NaN itself, which the fused output must not pack as -1
    # silently (as threshold_pack refuses it); units of direction +-1 compare +-inf or NaN.
    x = np.array([3e38, -3e38, 0, 1], dtype=np.float32).reshape(1, 2, 2, 1)
    weight = np.full((3, 3, 1, 3), 10, dtype=np.float32)
    pads = ((1, 1), (1, 1))
    assert not np.isfinite(_cpu.real_conv2d_pool(x, weight, None, pads)).any()
    direction, threshold = np.array([1, -1, 0], dtype=np.int8), np.zeros(3, dtype=np.float32)
    with pytest.raises(ValueError, match="must not contain NaN .*float32 sums overflowed"):
        _cpu.real_conv2d_pool(x, weight, None, pads, direction, threshold)
    words = _cpu.real_conv2d_pool(x / 1e8, weight, None, pads, direction, threshold)  # large, finite sums
    assert words.shape == (1, 1, 1, 1)


def test_real_conv2d_pool_threads_batches_and_threshold_pack_agree(variant, rng):
    # Real-valued floats: the sums round, but in one order per output, so one
    # or two threads and any batch give the same floats, and the fused output
    # is threshold_pack of those floats.
    x = rng.standard_normal((37, 28, 28, 1)).astype(np.float32)
    weight = rng.standard_normal((3, 3, 1, 32)).astype(np.float32)
    bias = rng.standard_normal(32).astype(np.float32)
    pads = ((1, 1), (1, 1))
    direction = rng.integers(-1, 2, 32).astype(np.int8)
    threshold = rng.standard_normal(32).astype(np.float32)
    one = _cpu.real_conv2d_pool(x, weight, bias, pads, n_threads=1)
    np.testing.assert_array_equal(_cpu.real_conv2d_pool(x, weight, bias, pads, n_threads=2), one)
    np.testing.assert_array_equal(_cpu.real_conv2d_pool(x[5:6], weight, bias, pads, n_threads=1), one[5:6])
    np.testing.assert_allclose(one, real_pool_ref(x, weight, bias, pads), rtol=1e-5, atol=1e-5)
    words1 = _cpu.real_conv2d_pool(x, weight, bias, pads, direction, threshold, n_threads=1)
    words2 = _cpu.real_conv2d_pool(x, weight, bias, pads, direction, threshold, n_threads=2)
    np.testing.assert_array_equal(words1, words2)
    expected = _cpu.threshold_pack(one.reshape(-1, 32), direction, threshold, n_threads=1)
    np.testing.assert_array_equal(words1.reshape(-1, 1), expected)


def test_same_padding_puts_the_odd_row_at_the_end():
    # TensorFlow: H=4, 2x2 kernel, stride 1 pads 0 above and 1 below.
    assert _conv_geometry((1, 4, 5, 1), (2, 3, 1, 1), 1, "same", 1)[10:] == (0, 1, 1, 1)
    # output ceil(H / stride) for every stride
    for s in (1, 2, 3):
        g = _conv_geometry((1, 7, 8, 1), (3, 3, 1, 1), s, "same", 1)
        assert g[2:4] == (-(-7 // s), -(-8 // s))


def test_docstring_example_of_same_padding():
    out = binary_conv2d(np.ones((1, 3, 3, 1)), np.ones((2, 2, 1, 1)), padding="same")
    np.testing.assert_array_equal(out[0, :, :, 0], [[4, 4, 2], [4, 4, 2], [2, 2, 1]])


# ------------------------------------------------------------------- bad input

X = np.ones((1, 5, 5, 8), dtype=np.float32)
W = np.ones((3, 3, 8, 4), dtype=np.float32)


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((np.ones((5, 5, 8)), W), {}, ValueError, r"x must be 4-D NHWC \(N, H, W, C\), got x.ndim=3"),
        ((X, np.ones((3, 3, 8))), {}, ValueError, r"w must be 4-D HWIO \(KH, KW, C // groups, O\), got w.ndim=3"),
        ((X.astype(complex), W), {}, TypeError, r"x must have a boolean, integer or real floating dtype, got dtype=complex128"),
        ((X, W.astype(object)), {}, TypeError, r"w must have a boolean, integer or real floating dtype"),
        ((np.where(X > 0, np.nan, X), W), {}, ValueError, "x must not contain NaN"),
        ((X, np.where(W > 0, np.nan, W)), {}, ValueError, "w must not contain NaN"),
        ((X, np.ones((3, 3, 7, 4))), {}, ValueError, r"w must have C // groups = 8 input channels \(axis 2\), got x.shape=\(1, 5, 5, 8\), w.shape=\(3, 3, 7, 4\)"),
        ((X, np.ones((3, 3, 4, 4))), {"groups": 3}, ValueError, r"groups=3 must divide the input channels and the output channels"),
        ((X, np.ones((3, 3, 4, 3))), {"groups": 2}, ValueError, r"groups=2 must divide .* \(O=3\)"),
        ((X, np.ones((6, 3, 8, 4))), {}, ValueError, r"the kernel is larger than the padded input: w.shape=\(6, 3, 8, 4\) .* x.shape=\(1, 5, 5, 8\)"),
        ((X, W), {"dilation": 3}, ValueError, r"the kernel is larger than the padded input: .* spans 7 x 7"),
        ((X, W), {"backend": "tpu"}, ValueError, r"backend must be one of \('auto', 'cpu', 'gpu'\), got backend='tpu'"),
        ((X, W), {"stride": 0}, ValueError, r"stride must be a positive integer below 2\*\*31 or a pair of them, got stride=0"),
        ((X, W), {"stride": (1, 2, 3)}, ValueError, r"stride must be a positive integer below 2\*\*31 or a pair"),
        ((X, W), {"stride": 10**30}, ValueError, r"stride must be a positive integer below 2\*\*31 .* got stride=10{30}"),
        ((X, W), {"dilation": 1.5}, ValueError, r"dilation must be a positive integer .* got dilation=1.5"),
        ((X, W), {"dilation": (1, 2**31)}, ValueError, r"dilation must be a positive integer below 2\*\*31"),
        ((X, W), {"padding": "full"}, ValueError, r"padding must be 'valid', 'same', an int or \(\(top, bottom\), \(left, right\)\), got padding='full'"),
        ((X, W), {"padding": -1}, ValueError, r"padding must be .* got padding=-1"),
        ((X, W), {"padding": ((1, 2), 3)}, ValueError, r"padding must be .* got padding=\(\(1, 2\), 3\)"),
        ((X, W), {"padding": 2**31}, ValueError, r"padding must be .* each below 2\*\*31, got padding=2147483648"),
        ((X, W), {"padding": 2**31 - 1}, ValueError, r"the output would have 4294967297 x 4294967297 pixels an image"),
        ((X, W), {"pad_value": 2}, ValueError, r"pad_value must be 0, 1 or -1, got pad_value=2"),
        ((X, W), {"groups": 0}, ValueError, r"groups must be a positive integer, got groups=0"),
        ((X, W), {"n_threads": 0}, ValueError, r"n_threads must be None or a positive integer, got n_threads=0"),
        ((pack_bits(X, axis=1), W), {}, ValueError, r"x must be a 4-D PackedBits packed along axis=3 \(pack_bits\(x, axis=-1\)\)"),
        ((X, pack_bits(W, axis=3)), {}, ValueError, r"w must be a 4-D PackedBits packed along axis=2 \(pack_bits\(w, axis=2\)\)"),
    ],
)
def test_bad_input_is_a_clear_error(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        binary_conv2d(*args, **kwargs)
    with pytest.raises(error, match=match):
        binary_conv2d_threshold_pack(*args, np.ones(args[1].shape[-1]), np.zeros(args[1].shape[-1]), **kwargs)


@pytest.mark.parametrize(
    "direction, threshold, match",
    [
        (np.ones(3), np.zeros(4), r"direction must hold O = 4 values in \{-1, 0, 1\}, got shape \(3,\)"),
        (np.full(4, 2), np.zeros(4), r"direction must hold O = 4 values in \{-1, 0, 1\}"),
        (np.full(4, 0.5), np.zeros(4), r"direction must hold O = 4 values"),
        (np.ones(4), np.zeros(5), r"threshold must hold O = 4 integer values within int32, got shape \(5,\)"),
        (np.ones(4), np.full(4, 0.5), r"threshold must hold O = 4 integer values within int32"),
        (np.ones(4), np.full(4, np.nan), r"threshold must hold O = 4 integer values"),
        (np.ones(4), np.full(4, 2**40), r"threshold must hold O = 4 integer values within int32"),
        # int8 and int32, as the layers keep them
        (np.array([1, 0, 2, -1], dtype=np.int8), np.zeros(4, np.int32), r"direction must hold O = 4 values in"),
        (np.array([1, -128, 0, -1], dtype=np.int8), np.zeros(4, np.int32), r"direction must hold O = 4 values in"),
        (np.ones(5, np.int8), np.zeros(4, np.int32), r"direction must hold O = 4 values in \{-1, 0, 1\}, got shape \(5,\)"),
        (np.ones(4, np.int8), np.zeros(5, np.int32), r"threshold must hold O = 4 integer values within int32, got shape \(5,\)"),
    ],
)
def test_bad_thresholds_are_a_clear_error(direction, threshold, match):
    with pytest.raises(ValueError, match=match):
        binary_conv2d_threshold_pack(X, W, direction, threshold)


def test_backend_gpu_without_cupy_names_the_gpu_extra(no_cupy):
    with pytest.raises(RuntimeError, match=r"needs CuPy.*pip install 'xnorcore\[gpu\]'"):
        binary_conv2d(X, W, backend="gpu")
    with pytest.raises(RuntimeError, match=r"needs CuPy.*pip install 'xnorcore\[gpu\]'"):
        binary_conv2d_threshold_pack(X, W, np.ones(4), np.zeros(4), backend="gpu")


class FakeCupyArray:
    """What ops recognizes as a cupy array (by its module), without CuPy."""

    __module__ = "cupy._core.core"
    ndim = 4
    shape = X.shape
    dtype = X.dtype


def test_cupy_input_without_a_usable_gpu_names_the_gpu_extra(monkeypatch, no_cupy):
    monkeypatch.setattr(xnorcore.ops, "_check_array", lambda x, name: x)
    with pytest.raises(RuntimeError, match=r"needs CuPy.*pip install 'xnorcore\[gpu\]'"):
        binary_conv2d(FakeCupyArray(), W)


def test_backend_cpu_refuses_cupy_operands(monkeypatch):
    monkeypatch.setattr(xnorcore.ops, "_check_array", lambda x, name: x)
    with pytest.raises(TypeError, match=r"backend='cpu' needs numpy operands, got cupy arrays"):
        binary_conv2d(FakeCupyArray(), W, backend="cpu")


@pytest.mark.parametrize("n", [1, 5, 16, 17, 63, 64, 65, 130])
def test_threshold_pack_kernel_wraps_as_numpy_every_variant(variant, rng, n):
    # The table's int32 threshold-pack kernel (conv and GEMM fused outputs):
    # direction * z - threshold >= 0 with numpy's int32 wrap-around.
    z = rng.integers(-(2**31), 2**31, (9, n), dtype=np.int64).astype(np.int32)
    z[:, : n // 2] = rng.integers(-5, 6, (9, n // 2))
    z[0, 0] = np.iinfo(np.int32).min
    direction = rng.integers(-1, 2, n).astype(np.int8)
    threshold = rng.integers(-(2**31), 2**31, n, dtype=np.int64).astype(np.int32)
    threshold[: n // 2] = rng.integers(-3, 4, n // 2)
    with np.errstate(over="ignore"):
        expected = np.where(direction.astype(np.int32) * z - threshold >= 0, 1, -1)
    words = _cpu.threshold_pack(z, direction, threshold)
    np.testing.assert_array_equal(unpack_bits(PackedBits(words, (9, n), 1)), expected)


@pytest.mark.parametrize("o", [1, 17, 64, 65, 130])
@pytest.mark.parametrize("pool", [False, True])
def test_fused_conv_thresholds_wrap_as_the_row_kernel_every_variant(variant, rng, o, pool):
    # The fused conv packs blocks of pixels at once: extreme thresholds give
    # the bits of the one-row kernel, numpy's int32 wrap-around, on its sums.
    x = random_matrix(rng, (2, 7, 6, 70), np.float32)
    w = random_matrix(rng, (3, 3, 70, o), np.float32)
    direction = rng.integers(-1, 2, o).astype(np.int8)
    threshold = rng.integers(-(2**31), 2**31, o, dtype=np.int64).astype(np.int32)
    threshold[: o // 2] = rng.integers(-8, 9, o // 2)
    threshold[-1] = np.iinfo(np.int32).min
    z = binary_conv2d(x, w, padding="same")
    with np.errstate(over="ignore"):
        expected = np.where(direction.astype(np.int32) * z - threshold >= 0, 1, -1)
    expected = pool_ref(expected) if pool else expected
    packed = binary_conv2d_threshold_pack(x, w, direction, threshold, padding="same", pool=pool)
    np.testing.assert_array_equal(unpack_bits(packed), expected)


def test_checked_geometry_is_reused_only_for_the_same_arguments():
    # A geometry kept from a valid call never lets a bad argument through.
    x, w = np.ones((1, 5, 5, 3)), np.ones((3, 3, 3, 2))
    binary_conv2d(x, w, stride=1, dilation=1, padding=1)
    for kwargs, match in [
        (dict(stride=True), "stride must be a positive integer"),
        (dict(dilation=True), "dilation must be a positive integer"),
        (dict(padding=True), "padding must be"),
        (dict(dilation=4), "the kernel is larger than the padded input"),
    ]:
        for _ in range(2):
            with pytest.raises(ValueError, match=match):
                binary_conv2d(x, w, **{**dict(stride=1, dilation=1, padding=1), **kwargs})
    np.testing.assert_array_equal(binary_conv2d(x, w, padding=1), conv_ref(x, w, padding=1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int8, np.int16, np.int32, np.int64])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_real_input_packed_in_the_conv_is_exact_and_checked_for_nan(variant, dtype, n_threads):
    # Whole words per pixel (C a multiple of 64): x's image rows are packed as long rows
    # (pack_rows), groups included, and a NaN in any of them must be found.
    rng = np.random.default_rng(len(VARIANTS) * 7 + n_threads)
    x = (rng.standard_normal((3, 6, 5, 128)) * 4).astype(dtype)
    x[0, 0, 0, :3] = 0  # sign(0) = +1
    w = rng.standard_normal((3, 3, 128, 70)).astype(np.float32)
    direction = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=70)
    threshold = rng.integers(-40, 40, size=70).astype(np.int32)
    for groups, kwargs in [(1, dict(padding="same")), (1, dict(stride=2, padding=1, pad_value=-1)),
                           (2, dict(padding="valid"))]:
        wg = w[:, :, : 128 // groups]
        z = conv_ref(x, wg, groups=groups, **kwargs)
        got = binary_conv2d(x, wg, groups=groups, n_threads=n_threads, **kwargs)
        np.testing.assert_array_equal(got, z)
        for pool in (False, True):
            want = threshold_ref(z, direction, threshold)
            packed = binary_conv2d_threshold_pack(x, wg, direction, threshold, pool=pool, groups=groups,
                                                  n_threads=n_threads, **kwargs)
            np.testing.assert_array_equal(unpack_bits(packed), pool_ref(want) if pool else want)
    # (and with no output channels the rows are still checked)
    for at in [(0, 0, 0, 0), (1, 3, 2, 64), (2, 5, 4, 127)]:
        if np.dtype(dtype).kind != "f":
            break
        bad = x.copy()
        bad[at] = np.nan
        for weights in (w, w[..., :0]):
            with pytest.raises(ValueError, match="x must not contain NaN"):
                binary_conv2d(bad, weights, padding="same", n_threads=n_threads)
            with pytest.raises(ValueError, match="x must not contain NaN"):
                binary_conv2d_threshold_pack(bad, weights, direction[: weights.shape[3]],
                                             threshold[: weights.shape[3]], n_threads=n_threads)


@pytest.mark.parametrize("padding", ["valid", "same", 1])
def test_an_empty_batch_gives_empty_outputs(padding):
    """N = 0 images: outputs of shape (0, OH, OW, O), as numpy's operations give empty results."""
    x, w = np.ones((0, 6, 5, 70), dtype=np.float32), np.ones((3, 3, 70, 4), dtype=np.float32)
    want = conv_ref(np.ones((1, 6, 5, 70)), w, padding=padding).shape[1:]
    for operand in (x, pack_bits(x, axis=3)):
        z = binary_conv2d(operand, w, padding=padding)
        assert z.shape == (0,) + want and z.dtype == np.int32
        for pool in (False, True):
            signs = binary_conv2d_threshold_pack(operand, w, np.ones(4, np.int8), np.zeros(4, np.int32),
                                                 padding=padding, pool=pool)
            spatial = (want[0] // 2, want[1] // 2) if pool else want[:2]
            assert signs.shape == (0,) + spatial + (4,) and signs.words.shape == (0,) + spatial + (1,)


@pytest.mark.parametrize("pool", [False, True])
def test_no_input_channels_give_the_signs_of_zero_sums(pool):
    """C = 0: every sum is 0, so each output's sign is that of -threshold (direction 0 included)."""
    direction, threshold = np.array([1, -1, 0, 1, -1]), np.array([0, 0, 0, 1, -1])
    got = binary_conv2d_threshold_pack(np.ones((2, 4, 5, 0)), np.ones((3, 3, 0, 5)), direction, threshold,
                                       padding="same", pool=pool)
    z = np.zeros((2, 4, 5, 5), dtype=np.int64)
    want = threshold_ref(z, direction, threshold)
    np.testing.assert_array_equal(unpack_bits(got), pool_ref(want) if pool else want)
