"""binary_conv2d on cupy arrays: exact against the numpy reference and the CPU op.

Marked ``gpu``: skips where CuPy or a CUDA device is missing (CI has neither).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xnorcore import binary_conv2d, binary_conv2d_threshold_pack, pack_bits, pack_conv_weights, unpack_bits
from xnorcore._backends import gpu as _gpu
from xnorcore._backends import gpu_conv as _gpu_conv
from xnorcore.ops import _conv_geometry

from test_conv import case_arrays, conv_cases, conv_kwargs, conv_ref, pool_ref, threshold_ref

REASON = _gpu.unavailable_reason()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(REASON is not None, reason=f"GPU tests need CuPy and a CUDA device: {REASON}"),
]


def _device(x):
    import cupy

    return cupy.asarray(x)


@settings(max_examples=80, deadline=None)
@given(conv_cases())
def test_gpu_conv_is_exact(case):
    import cupy

    x, w = case_arrays(case)
    got = binary_conv2d(_device(x), _device(w), **conv_kwargs(case))
    assert isinstance(got, cupy.ndarray) and got.dtype == np.int32
    np.testing.assert_array_equal(cupy.asnumpy(got), conv_ref(x, w, **conv_kwargs(case)))


@settings(max_examples=60, deadline=None)
@given(conv_cases(), st.booleans(), st.integers(0, 2**32 - 1))
def test_gpu_fused_layer_is_threshold_then_pool(case, pool, seed):
    import cupy

    x, w = case_arrays(case)
    z = conv_ref(x, w, **conv_kwargs(case))
    o = w.shape[3]
    rng = np.random.default_rng(seed)
    direction = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=o)
    k = w.shape[0] * w.shape[1] * w.shape[2]
    threshold = rng.integers(-k - 1, k + 2, size=o).astype(np.int32)
    signs = threshold_ref(z, direction, threshold)
    if pool:
        signs = pool_ref(signs)
    got = binary_conv2d_threshold_pack(_device(x), _device(w), cupy.asarray(direction), cupy.asarray(threshold),
                                       pool=pool, **conv_kwargs(case))
    assert got.shape == signs.shape and got.axis == 3
    np.testing.assert_array_equal(cupy.asnumpy(unpack_bits(got)), signs)
    want_words = pack_bits(signs, axis=3).words  # padding bits clear too
    np.testing.assert_array_equal(cupy.asnumpy(got.words), want_words)


@st.composite
def implicit_cases(draw):
    """Convolutions of many pixels and channels (groups=1): several blocks of pixels
    and of output channels, windows of one to many stages, both stage widths."""
    c = draw(st.sampled_from([1, 40, 64, 100, 128, 192, 256, 320]))
    o = draw(st.sampled_from([1, 17, 64, 65, 127, 128, 130, 200, 257]))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride = draw(st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    dilation = draw(st.one_of(st.integers(1, 2), st.tuples(st.integers(1, 2), st.integers(1, 2))))
    padding = draw(st.one_of(st.sampled_from(["valid", "same"]), st.integers(0, 3)))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 18)), draw(st.integers(1, 18)), c)
    try:
        _conv_geometry(shape, (kh, kw, c, o), stride, padding, dilation)
    except ValueError:
        kh = kw = 1
    return dict(shape=shape, w_shape=(kh, kw, c, o), stride=stride, dilation=dilation, padding=padding, groups=1,
                pad_value=draw(st.sampled_from([0, 1, -1])), dtype=np.float32, layout="c",
                seed=draw(st.integers(0, 2**32 - 1)))


@settings(max_examples=80, deadline=None)
@given(implicit_cases(), st.booleans(), st.sampled_from([False, None, 1, 3]))
def test_implicit_gemm_conv_is_exact_on_large_layers(case, pool, halo):
    """The one-launch kernels (int32 sums and fused layer) on layers that span
    several thread blocks, against the numpy reference: the gather kernel (halo
    False) for every layer, and the halo kernel where the layer fits it, in as many
    persistent blocks as the device holds (None) or in 1 or 3, each taking many tiles."""
    saved = _gpu_conv._HALO, _gpu_conv._HALO_BLOCKS
    _gpu_conv._HALO, _gpu_conv._HALO_BLOCKS = halo is not False, halo or None
    try:
        _check_implicit_case(case, pool)
    finally:
        _gpu_conv._HALO, _gpu_conv._HALO_BLOCKS = saved


def _check_implicit_case(case, pool):
    import cupy

    x, w = case_arrays(case)
    kwargs = conv_kwargs(case)
    want = conv_ref(x, w, **kwargs)
    got = binary_conv2d(_device(x), _device(w), **kwargs)
    np.testing.assert_array_equal(cupy.asnumpy(got), want)
    o = w.shape[3]
    rng = np.random.default_rng(case["seed"])
    direction = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=o)
    k = w.shape[0] * w.shape[1] * w.shape[2]
    threshold = rng.integers(-k // 4 - 1, k // 4 + 2, size=o).astype(np.int32)
    signs = threshold_ref(want, direction, threshold)
    fused = binary_conv2d_threshold_pack(_device(x), _device(w), direction, threshold, pool=pool, **kwargs)
    np.testing.assert_array_equal(cupy.asnumpy(fused.words), pack_bits(pool_ref(signs) if pool else signs, axis=3).words)


def test_groups_of_one_run_the_implicit_kernel_where_it_exists():
    import cupy

    cc = int(cupy.cuda.Device().compute_capability)
    _gpu_conv._implicit_plans.clear()
    rng = np.random.default_rng(8)
    x, w = rng.standard_normal((2, 10, 10, 64)), rng.standard_normal((3, 3, 64, 8))
    binary_conv2d(_device(x), _device(w), padding="same")
    assert len(_gpu_conv._implicit_plans) == (1 if cc >= 80 else 0)
    if cc >= 80:  # a small layer: its input lines and weights fit the halo kernel
        (plan,) = _gpu_conv._implicit_plans.values()
        assert plan[1] == ()  # the halo kernel reads no table of taps
    binary_conv2d(_device(x), _device(rng.standard_normal((3, 3, 32, 8))), padding="same", groups=2)
    assert len(_gpu_conv._implicit_plans) == (1 if cc >= 80 else 0)  # grouped: the explicit path


def test_implicit_kernel_takes_tables_of_every_size():
    """The epilogue's table of border classes sizes the kernel's shared memory: the
    same kernel runs layers of 1, 2, 25 and 49 classes in any order, and a table past
    the limit (11 x 11, "same": 121 classes of 128 columns) takes the explicit path."""
    import cupy

    cc = int(cupy.cuda.Device().compute_capability)
    rng = np.random.default_rng(11)
    for shape, w_shape, padding in [((2, 8, 8, 64), (3, 3, 64, 65), "valid"), ((1, 9, 9, 64), (5, 5, 64, 65), "same"),
                                    ((1, 1, 1, 1), (1, 2, 1, 65), "same"), ((1, 7, 7, 8), (7, 7, 8, 65), "same"),
                                    ((1, 12, 12, 8), (11, 11, 8, 65), "same"), ((2, 8, 8, 64), (3, 3, 64, 65), "valid")]:
        _gpu_conv._implicit_plans.clear()
        x, w = rng.standard_normal(shape), rng.standard_normal(w_shape)
        want = conv_ref(x, w, padding=padding)
        np.testing.assert_array_equal(cupy.asnumpy(binary_conv2d(_device(x), _device(w), padding=padding)), want)
        direction = rng.choice(np.array([-1, 1], dtype=np.int8), size=w_shape[3])
        threshold = rng.integers(-9, 10, size=w_shape[3]).astype(np.int32)
        fused = binary_conv2d_threshold_pack(_device(x), _device(w), direction, threshold, padding=padding)
        np.testing.assert_array_equal(cupy.asnumpy(unpack_bits(fused)), threshold_ref(want, direction, threshold))
        assert len(_gpu_conv._implicit_plans) == (0 if w_shape[0] == 11 or cc < 80 else 2), (shape, w_shape)


@pytest.mark.parametrize("implicit", [True, False])
@pytest.mark.parametrize("kernel", ["wgmma", "mma", "popc"])
@pytest.mark.parametrize("pad_value", [0, 1, -1])
def test_every_gemm_kernel_takes_the_conv_rows(kernel, pad_value, implicit, monkeypatch):
    """The GEMM rows of a convolution carry whole words per tap (more than
    ceil(k / 64) per row): every kernel, plain and fused, stays exact, on the
    explicit path (GEMM rows) and the implicit one (which the popc kernel never takes)."""
    import cupy

    cc = int(cupy.cuda.Device().compute_capability)
    if (kernel == "wgmma" and cc != 90) or (kernel == "mma" and cc < 80):
        pytest.skip(f"the {kernel} kernel does not run on compute capability {cc}")
    monkeypatch.setenv(_gpu.KERNEL_ENV, kernel)
    monkeypatch.setattr(_gpu_conv, "_IMPLICIT", implicit)
    rng = np.random.default_rng(3)
    for shape, w_shape, kwargs in [
        ((2, 9, 11, 40), (3, 3, 40, 70), {"padding": "same"}),
        ((1, 20, 20, 128), (3, 3, 128, 130), {"padding": 1, "stride": 2}),
        ((3, 7, 7, 65), (1, 1, 65, 64), {}),
    ]:
        x, w = rng.standard_normal(shape), rng.standard_normal(w_shape)
        want = conv_ref(x, w, pad_value=pad_value, **kwargs)
        got = binary_conv2d(_device(x), _device(w), pad_value=pad_value, **kwargs)
        np.testing.assert_array_equal(cupy.asnumpy(got), want, err_msg=f"{kernel} {shape} {w_shape}")
        direction = rng.choice(np.array([-1, 1], dtype=np.int8), size=w_shape[3])
        threshold = rng.integers(-20, 21, size=w_shape[3]).astype(np.int32)
        fused = binary_conv2d_threshold_pack(_device(x), _device(w), direction, threshold, pad_value=pad_value, **kwargs)
        np.testing.assert_array_equal(cupy.asnumpy(unpack_bits(fused)), threshold_ref(want, direction, threshold))


@pytest.mark.parametrize("implicit", [True, False])
@pytest.mark.parametrize("pad_value", [0, 1, -1])
def test_fused_layer_at_the_int32_limits(pad_value, implicit, monkeypatch):
    """Thresholds at and near the ends of int32 and around the sums, with every direction
    (0 included): the fused words are those of direction * z - threshold >= 0 in int32 with
    wrap-around, as numpy and the CPU op compute it, padding bits clear, on both paths and
    at column counts that leave part of a word or block."""
    import cupy

    monkeypatch.setattr(_gpu_conv, "_IMPLICIT", implicit)
    rng = np.random.default_rng(8)
    top, bottom = np.iinfo(np.int32).max, np.iinfo(np.int32).min
    for shape, w_shape in [((2, 9, 9, 64), (3, 3, 64, 70)), ((1, 12, 10, 130), (3, 3, 130, 129))]:
        x, w = rng.standard_normal(shape), rng.standard_normal(w_shape)
        o, k = w_shape[3], w_shape[0] * w_shape[1] * w_shape[2]
        want = conv_ref(x, w, padding="same", pad_value=pad_value)
        edges = np.array([top, top - 1, bottom, bottom + 1, k, k + 1, -k, -k - 1, 0, 1, -1], dtype=np.int64)
        threshold = rng.choice(edges, size=o).astype(np.int32)
        for direction in (np.ones(o, np.int8), -np.ones(o, np.int8), np.zeros(o, np.int8),
                          rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=o)):
            fused = binary_conv2d_threshold_pack(_device(x), _device(w), direction, threshold, padding="same",
                                                 pad_value=pad_value)
            with np.errstate(over="ignore"):
                signs = np.where(direction.astype(np.int32) * want.astype(np.int32) - threshold >= 0, 1, -1)
            np.testing.assert_array_equal(cupy.asnumpy(fused.words), pack_bits(signs, axis=3).words,
                                          err_msg=f"{shape} {w_shape} directions {direction[:4]}")
            cpu = binary_conv2d_threshold_pack(x, w, direction, threshold, padding="same", pad_value=pad_value)
            np.testing.assert_array_equal(cupy.asnumpy(fused.words), cpu.words)


def test_gpu_matches_the_cpu_op_on_a_resnet_layer():
    import cupy

    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((2, 56, 56, 64)), rng.standard_normal((3, 3, 64, 64))
    cpu = binary_conv2d(x, w, padding="same")
    gpu = binary_conv2d(_device(x), _device(w), padding="same")
    np.testing.assert_array_equal(cupy.asnumpy(gpu), cpu)
    direction = rng.choice(np.array([-1, 1], dtype=np.int8), size=64)
    threshold = rng.integers(-30, 31, size=64).astype(np.int32)
    for pool in (False, True):
        cpu_bits = binary_conv2d_threshold_pack(x, w, direction, threshold, padding="same", pool=pool)
        gpu_bits = binary_conv2d_threshold_pack(_device(x), _device(w), direction, threshold, padding="same", pool=pool)
        np.testing.assert_array_equal(cupy.asnumpy(gpu_bits.words), cpu_bits.words)


def test_conv_weights_prepare_once_per_device_and_agree():
    import cupy

    rng = np.random.default_rng(6)
    x, w = rng.standard_normal((2, 8, 8, 100)), rng.standard_normal((3, 3, 100, 30))
    cw = pack_conv_weights(w)
    want = conv_ref(x, w, padding="same")
    for _ in range(2):
        got = binary_conv2d(_device(x), cw, padding="same")
        np.testing.assert_array_equal(cupy.asnumpy(got), want)
    assert sum(1 for key in cw._prepared if key[0] == "gpu") == 1
    # GPU weights pack into the same host words
    np.testing.assert_array_equal(pack_conv_weights(_device(w)).packed.words, cw.packed.words)
    # numpy operands with backend="gpu" run on the GPU
    got = binary_conv2d(x, w, padding="same", backend="gpu")
    assert isinstance(got, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(got), want)


def test_packed_gpu_input_and_mixed_devices():
    import cupy

    rng = np.random.default_rng(7)
    x, w = rng.standard_normal((1, 6, 6, 70)), rng.standard_normal((3, 3, 70, 5))
    px = pack_bits(_device(x), axis=3)
    got = binary_conv2d(px, _device(w), padding=1)
    np.testing.assert_array_equal(cupy.asnumpy(got), conv_ref(x, w, padding=1))
    with pytest.raises(TypeError, match=r"x is a numpy array and w a cupy array"):
        binary_conv2d(x, _device(w))


def test_real_conv2d_on_the_gpu_matches_the_cpu():
    import cupy

    from xnorcore._backends import cpu as _cpu
    from xnorcore.ops import _conv_geometry

    rng = np.random.default_rng(8)
    x = rng.random((3, 28, 28, 1), dtype=np.float32)
    w = rng.standard_normal((3, 3, 1, 32)).astype(np.float32)
    for kwargs in [dict(stride=1, padding="same", dilation=1), dict(stride=2, padding=1, dilation=2)]:
        geometry = _conv_geometry(x.shape, w.shape, **kwargs)
        want = _cpu.real_conv2d(x, w, geometry)
        got = _gpu_conv.real_conv2d(cupy.asarray(x), cupy.asarray(w), geometry)
        np.testing.assert_allclose(cupy.asnumpy(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n,h,w,c,o,k,stride,dilation,padding", [
    (2, 7, 9, 70, 9, 3, 1, 1, "same"),  # C past one word, O under one warp's columns
    (3, 8, 5, 64, 130, 3, 2, 1, ((0, 2), (1, 0))),  # O past one block's columns
    (1, 9, 9, 5, 3, 2, 1, 2, "valid"),
    (4, 14, 14, 32, 64, 3, 1, 1, "same"),  # the recommended CNN's second layer
])
def test_gpu_xnor_training_forward_equals_the_float_product(n, h, w, c, o, k, stride, dilation, padding):
    import cupy

    from xnorcore.nn._conv import Conv2D

    rng = np.random.RandomState(n * h + c)
    x = cupy.asarray(np.where(rng.rand(n, h, w, c) < 0.5, -1, 1).astype(np.float32))
    weight = rng.uniform(-1, 1, (k, k, c, o)).astype(np.float32)
    weight[rng.rand(*weight.shape) < 0.1] = 0  # sign(0) = +1 in both products
    layers = [Conv2D("c", cupy.asarray(weight), binary_weights=True, binary_input=True, stride=stride,
                     dilation=dilation, padding=padding, xnor=xnor) for xnor in (True, False)]
    out = [layer.forward(x, training=True) for layer in layers]
    assert isinstance(out[0], cupy.ndarray) and out[0].dtype == np.float32
    np.testing.assert_array_equal(cupy.asnumpy(out[0]), cupy.asnumpy(out[1]))
    dz = cupy.asarray(rng.randn(*out[0].shape).astype(np.float32))
    np.testing.assert_array_equal(cupy.asnumpy(layers[0].backward(dz)), cupy.asnumpy(layers[1].backward(dz)))
    np.testing.assert_array_equal(cupy.asnumpy(layers[0].weight_grad), cupy.asnumpy(layers[1].weight_grad))
    # Nothing of the XNOR step waits for the device: the same forward pass is captured as a graph.
    layers[0].forward(x, training=True)  # (the first call of a shape fills the caches)
    stream = cupy.cuda.Stream(non_blocking=True)
    pool = cupy.cuda.MemoryPool()  # (what the capture frees stays the graph's)
    with stream, cupy.cuda.using_allocator(pool.malloc):
        stream.begin_capture()
        try:
            captured = layers[0].forward(x, training=True)
        finally:
            graph = stream.end_capture()
        graph.launch()
    stream.synchronize()
    np.testing.assert_array_equal(cupy.asnumpy(captured), cupy.asnumpy(out[0]))


@pytest.mark.parametrize("pool", [False, True])
def test_gpu_empty_batch_and_no_channels(pool):
    """N = 0 gives empty device outputs; C = 0 the signs of zero sums, on the device."""
    import cupy

    w = np.ones((3, 3, 70, 4), dtype=np.float32)
    z = binary_conv2d(_device(np.ones((0, 6, 5, 70))), _device(w), padding="same")
    assert isinstance(z, cupy.ndarray) and z.shape == (0, 6, 5, 4)
    signs = binary_conv2d_threshold_pack(_device(np.ones((0, 6, 5, 70))), _device(w), np.ones(4, np.int8),
                                         np.zeros(4, np.int32), padding="same", pool=pool)
    assert isinstance(signs.words, cupy.ndarray) and signs.shape == ((0, 3, 2, 4) if pool else (0, 6, 5, 4))
    direction, threshold = np.array([1, -1, 0, 1]), np.array([0, 0, 0, 1])
    got = binary_conv2d_threshold_pack(_device(np.ones((2, 4, 5, 0))), _device(np.ones((3, 3, 0, 4))), direction,
                                       threshold, padding="same", pool=pool)
    want = threshold_ref(np.zeros((2, 4, 5, 4), dtype=np.int64), direction, threshold)
    np.testing.assert_array_equal(cupy.asnumpy(unpack_bits(got)), pool_ref(want) if pool else want)
