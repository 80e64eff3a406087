"""GPU backend: packing and XNOR GEMM on cupy arrays, exact against integer references.

Tests marked ``gpu`` skip where CuPy or a CUDA device is missing (CI has neither).
The tests at the top check the error messages of a machine without CuPy and run
everywhere.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xnorcore import PackedBits, binary_matmul, pack_bits, unpack_bits
from xnorcore._backends import cpu as _cpu
from xnorcore._backends import gpu as _gpu


REASON = _gpu.unavailable_reason()
needs_gpu = pytest.mark.skipif(REASON is not None, reason=f"GPU tests need CuPy and a CUDA device: {REASON}")


# --- without CuPy (every machine) -------------------------------------------------


def test_require_names_the_gpu_extra_without_cupy(no_cupy):
    with pytest.raises(RuntimeError, match=r"needs CuPy.*pip install 'xnorcore\[gpu\]'"):
        _gpu.require()


def test_backend_gpu_without_cupy_is_a_clear_error(no_cupy):
    with pytest.raises(RuntimeError, match=r"needs CuPy.*xnorcore\[gpu\]"):
        binary_matmul(np.ones((2, 3)), np.ones((3, 4)), backend="gpu")


def test_config_never_raises_without_cupy(no_cupy):
    info = _gpu.config()
    assert info["cupy"] is None and info["kernel"] is None
    assert "needs CuPy" in info["unavailable"]


# --- on the GPU ---------------------------------------------------------------------

SHAPES = [  # (M, K, N): not multiples of 64, single rows and columns, odd word counts
    (1, 1, 1),
    (1, 63, 1),
    (2, 64, 3),
    (63, 65, 64),
    (64, 127, 65),
    (65, 128, 127),
    (127, 129, 128),
    (128, 1000, 129),
    (129, 511, 257),
    (3, 1000, 1000),
    (1000, 64, 3),
    (257, 513, 255),
    (200, 2049, 300),
]


def _kernel_runs_here(name):
    """None if GEMM kernel ``name`` runs on the current device, else why not."""
    import cupy

    cc = int(cupy.cuda.Device().compute_capability)
    if name == "mma" and cc < 80:
        return f"the mma kernel needs compute capability >= 8.0, this device has {cc}"
    if name.startswith("wgmma") and cc != 90:
        return f"the wgmma kernel needs compute capability 9.0, this device has {cc}"
    return None


@pytest.fixture(params=["wgmma", "mma", "popc"])
def kernel(request, monkeypatch):
    """Run the test once per GEMM kernel that the device has (wgmma in its default schedule)."""
    reason = _kernel_runs_here(request.param)
    if reason:
        pytest.skip(reason)
    name, _, schedule = request.param.partition("-")
    monkeypatch.setenv(_gpu.KERNEL_ENV, name)
    if schedule:
        monkeypatch.setattr(_gpu, "_WGMMA_VARIANT", schedule)
    return name


def _signs(x):
    return np.where(np.asarray(x) >= 0, 1, -1).astype(np.int64)


def _reference(a, b):
    """Exact sign(a) @ sign(b) with numpy integers."""
    return (_signs(a) @ _signs(b)).astype(np.int32)


def _poison_pool(shape):
    """Leave a freed block full of a sentinel where the next result will likely land,
    so that an output element the kernel never writes cannot pass as right."""
    import cupy

    cupy.full(shape, -(2**31), dtype=np.int32)


@pytest.mark.gpu
@needs_gpu
class TestGPU:
    @pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
    def test_matmul_exact(self, shape, kernel):
        import cupy

        m, k, n = shape
        rng = np.random.default_rng(hash(shape) % 2**32)
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        _poison_pool((m, n))
        got = binary_matmul(cupy.asarray(a), cupy.asarray(b))
        assert isinstance(got, cupy.ndarray) and got.dtype == np.int32 and got.shape == (m, n)
        want = _reference(a, b)
        np.testing.assert_array_equal(cupy.asnumpy(got), want)
        np.testing.assert_array_equal(cupy.asnumpy(got), binary_matmul(a, b, backend="cpu"))

    @pytest.mark.parametrize("shape", SHAPES[::3], ids=lambda s: "x".join(map(str, s)))
    def test_matmul_packed_operands(self, shape, kernel):
        import cupy

        m, k, n = shape
        rng = np.random.default_rng(k)
        a = cupy.asarray(rng.integers(-3, 3, size=(m, k), dtype=np.int32))
        b = cupy.asarray(rng.standard_normal((k, n)))
        pa, pb = pack_bits(a, axis=1), pack_bits(b, axis=0)
        assert isinstance(pa.words, cupy.ndarray)
        want = binary_matmul(a, b)
        np.testing.assert_array_equal(cupy.asnumpy(binary_matmul(pa, pb)), cupy.asnumpy(want))
        np.testing.assert_array_equal(cupy.asnumpy(binary_matmul(pa, b)), cupy.asnumpy(want))
        np.testing.assert_array_equal(cupy.asnumpy(want), _reference(cupy.asnumpy(a), cupy.asnumpy(b)))

    def test_matmul_large_against_cupy_integers(self, kernel):
        """Several large tiles in every direction, odd K words, ragged edges."""
        import cupy

        m, k, n = 1100, 4161, 2309
        rs = cupy.random.RandomState(7)
        a = rs.standard_normal((m, k), dtype=np.float32)
        b = rs.standard_normal((k, n), dtype=np.float32)
        _poison_pool((m, n))
        got = binary_matmul(a, b)
        sa = cupy.where(a >= 0, 1, -1).astype(np.float64)
        sb = cupy.where(b >= 0, 1, -1).astype(np.float64)
        want = (sa @ sb).astype(np.int32)  # sums of +-1 below 2**53 are exact in float64
        assert bool((got == want).all())
        rows = np.arange(0, m, 97)
        np.testing.assert_array_equal(cupy.asnumpy(got[rows]), _reference(cupy.asnumpy(a[rows]), cupy.asnumpy(b)))

    def test_kernels_agree_on_integer_reference(self, monkeypatch):
        """A cupy integer matmul against both kernels, at a size for each mma tile shape."""
        import cupy

        rng = np.random.default_rng(3)
        for m, k, n in [(2000, 777, 2100), (33, 300, 17)]:
            a = rng.integers(-5, 5, size=(m, k), dtype=np.int8)
            b = rng.integers(-5, 5, size=(k, n), dtype=np.int8)
            ia = cupy.asarray(_signs(a).astype(np.int32))
            ib = cupy.asarray(_signs(b).astype(np.int32))
            want = cupy.asnumpy(ia @ ib)
            for name in ("popc", "mma", "wgmma"):
                if _kernel_runs_here(name):
                    continue
                monkeypatch.setenv(_gpu.KERNEL_ENV, name)
                got = binary_matmul(cupy.asarray(a), cupy.asarray(b))
                np.testing.assert_array_equal(cupy.asnumpy(got), want, err_msg=f"kernel={name} shape={(m, k, n)}")

    @pytest.mark.parametrize("variant", ["medium", "small"])
    def test_every_mma_tile_shape(self, variant, monkeypatch):
        """Each tile shape of the mma kernel, whatever size would pick it, with ragged edges."""
        import cupy

        if int(cupy.cuda.Device().compute_capability) < 80:
            pytest.skip("the mma kernel needs compute capability >= 8.0")
        monkeypatch.setenv(_gpu.KERNEL_ENV, "mma")
        monkeypatch.setattr(_gpu, "_FORCE_MMA_VARIANT", variant)
        rng = np.random.default_rng(11)
        for m, k, n in [(1, 1, 1), (129, 1025, 257), (300, 2100, 530), (17, 64, 1000)]:
            a = rng.standard_normal((m, k))
            b = rng.standard_normal((k, n))
            _poison_pool((m, n))
            got = binary_matmul(cupy.asarray(a), cupy.asarray(b))
            np.testing.assert_array_equal(cupy.asnumpy(got), _reference(a, b), err_msg=f"{variant} {(m, k, n)}")

    @pytest.mark.parametrize("schedule", ["coop", "ping", "ping-direct"])
    def test_wgmma_tiles_and_k_tails(self, schedule, monkeypatch):
        """Each wgmma schedule at every K tail of its 1024-bit stages and across tile edges,
        with more tiles than multiprocessors so that each block runs several, and odd numbers
        of tile rows and columns.  Ping stores through TMA where n % 4 == 0 (most shapes
        here), directly elsewhere; "ping-direct" stores directly everywhere."""
        import cupy

        reason = _kernel_runs_here("wgmma")
        if reason:
            pytest.skip(reason)
        monkeypatch.setenv(_gpu.KERNEL_ENV, "wgmma")
        schedule, _, direct = schedule.partition("-")
        monkeypatch.setattr(_gpu, "_WGMMA_VARIANT", schedule)
        monkeypatch.setattr(_gpu, "_WGMMA_TMA_STORE", not direct)
        rs = cupy.random.RandomState(13)
        shapes = [(1, 1, 1), (128, 1024, 256), (129, 1025, 257), (64, 960, 1), (1, 3073, 300),
                  (255, 4097, 511), (3000, 2111, 2900), (2900, 2111, 3000), (5000, 130, 4100), (300, 1025, 130)]
        for m, k, n in shapes:
            a = rs.standard_normal((m, k), dtype=np.float32)
            b = rs.standard_normal((k, n), dtype=np.float32)
            want = cupy.where(a >= 0, 1.0, -1.0) @ cupy.where(b >= 0, 1.0, -1.0)  # float64: exact
            _poison_pool((m, n))
            got = binary_matmul(a, b)
            assert bool((got == want.astype(np.int32)).all()), f"{schedule} {(m, k, n)}"

    @pytest.mark.parametrize("kernel", ["wgmma-coop", "wgmma-ping", "mma", "popc"], indirect=True)
    def test_fused_layer_is_product_then_threshold_pack(self, kernel, monkeypatch):
        """The binary layer on the GPU (the fused wgmma kernel, or product then
        threshold-pack on the other kernels) gives the words of a numpy reference,
        padding bits included, for every direction (+1, -1, 0) and thresholds
        around and beyond the range of the sums."""
        import cupy

        monkeypatch.setattr(_gpu, "_WGMMA_PACK_VARIANT", _gpu._WGMMA_VARIANT)  # the fixture's schedule
        rng = np.random.default_rng(17)
        shapes = SHAPES + [(300, 1025, 530), (5000, 130, 4100), (1500, 2111, 1300)]
        for m, k, n in shapes:
            a, b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
            z = (_signs(a).astype(np.float64) @ _signs(b)).astype(np.int64)  # exact: |z| <= k
            direction = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=n, p=[0.45, 0.1, 0.45])
            threshold = rng.integers(-k - 2, k + 3, size=n).astype(np.int32)
            near = rng.random(n) < 0.5  # most thresholds where the sums are
            threshold[near] = (direction[near] * z[rng.integers(0, m), near]).astype(np.int32)
            want = pack_bits(np.where(direction * z - threshold >= 0, 1, -1), axis=1).words
            pa, pb = pack_bits(cupy.asarray(a), axis=1), pack_bits(cupy.asarray(b), axis=0)
            cupy.full(want.shape, 2**64 - 1, dtype=np.uint64)  # a freed block of set bits where the words may land
            got = _gpu.xnor_gemm_threshold_pack(pa.words, pb.words, k, cupy.asarray(direction), cupy.asarray(threshold))
            np.testing.assert_array_equal(cupy.asnumpy(got), want, err_msg=f"{kernel} {(m, k, n)}")

    @pytest.mark.parametrize("kernel", ["wgmma-coop", "wgmma-ping", "mma", "popc"], indirect=True)
    def test_fused_layer_wraps_in_int32_as_the_cpu(self, kernel, monkeypatch):
        """Thresholds at and near the ends of int32: direction * z - threshold >= 0 wraps
        around in int32 on every kernel as in numpy and the CPU layer, whose words it equals."""
        import cupy

        monkeypatch.setattr(_gpu, "_WGMMA_PACK_VARIANT", _gpu._WGMMA_VARIANT)
        rng = np.random.default_rng(19)
        top, bottom = np.iinfo(np.int32).max, np.iinfo(np.int32).min
        for m, k, n in [(70, 300, 130), (129, 1025, 65)]:
            a, b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
            z = (_signs(a).astype(np.float64) @ _signs(b)).astype(np.int32)
            edges = np.array([top, top - 1, bottom, bottom + 1, k, -k, 0, 1, -1], dtype=np.int64)
            threshold = rng.choice(edges, size=n).astype(np.int32)
            pa, pb = pack_bits(a, axis=1), pack_bits(b, axis=0)
            for direction in (np.ones(n, np.int8), -np.ones(n, np.int8), np.zeros(n, np.int8),
                              rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=n)):
                with np.errstate(over="ignore"):
                    want = pack_bits(np.where(direction.astype(np.int32) * z - threshold >= 0, 1, -1), axis=1).words
                cpu = _cpu.xnor_gemm_threshold_pack(pa.words, pb.words, k, direction, threshold)
                np.testing.assert_array_equal(cpu, want)
                got = _gpu.xnor_gemm_threshold_pack(cupy.asarray(pa.words), cupy.asarray(pb.words), k,
                                                    cupy.asarray(direction), cupy.asarray(threshold))
                np.testing.assert_array_equal(cupy.asnumpy(got), want, err_msg=f"{kernel} {(m, k, n)} {direction[:3]}")

    def test_fused_layer_kernel_is_chosen_on_hopper(self, monkeypatch):
        """Binary layers of every size on compute capability 9.0 run as one fused kernel;
        with another kernel forced they run as product then threshold-pack."""
        monkeypatch.delenv(_gpu.KERNEL_ENV, raising=False)
        if _kernel_runs_here("wgmma"):
            pytest.skip(_kernel_runs_here("wgmma"))
        assert _gpu._plan(8192, 8192, 8192 // 64, 8192, pack=True).variant == "wgmma"
        assert _gpu._plan(64, 64, 2, 100, pack=True).variant == "wgmma"
        monkeypatch.setenv(_gpu.KERNEL_ENV, "mma")
        assert _gpu._plan(8192, 8192, 8192 // 64, 8192, pack=True) is None

    def test_wgmma_is_the_default_on_hopper(self, monkeypatch):
        """Large products take wgmma on compute capability 9.0, small ones the mma kernel."""
        import cupy

        monkeypatch.delenv(_gpu.KERNEL_ENV, raising=False)
        if _kernel_runs_here("wgmma"):
            pytest.skip(_kernel_runs_here("wgmma"))
        width = 8192 // 64
        assert _gpu._plan(8192, 8192, width, 8192).variant == "wgmma"
        assert _gpu._plan(64, 64, 2, 100).variant == "small"
        assert _gpu.config()["kernel"] == "wgmma"
        a = cupy.asarray(np.random.default_rng(2).standard_normal((1200, 1500)))
        b = cupy.asarray(np.random.default_rng(3).standard_normal((1500, 1300)))
        got = binary_matmul(a, b)
        np.testing.assert_array_equal(cupy.asnumpy(got), _reference(cupy.asnumpy(a), cupy.asnumpy(b)))

    def test_unaligned_words_are_copied(self):
        """Packed rows starting 8 bytes past an aligned address (TMA and cp.async need 16)."""
        import cupy

        rng = np.random.default_rng(8)
        a, b = rng.standard_normal((300, 640)), rng.standard_normal((640, 200))
        pa, pb = pack_bits(a, axis=1), pack_bits(b, axis=0)
        flat = cupy.zeros(pa.words.size + 1, dtype=np.uint64)
        flat[1:] = cupy.asarray(pa.words.ravel())
        shifted = PackedBits(flat[1:].reshape(pa.words.shape), pa.shape, 1)
        assert shifted.words.data.ptr % 16 == 8
        got = binary_matmul(shifted, _gpu.to_device(pb))
        np.testing.assert_array_equal(cupy.asnumpy(got), _reference(a, b))

    @pytest.mark.parametrize(
        "dtype", [np.int8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64, np.uint8, bool]
    )
    @pytest.mark.parametrize("shape", [(1, 1), (3, 63), (5, 64), (2, 65), (7, 1000), (130, 129)])
    def test_pack_matches_cpu(self, dtype, shape):
        import cupy

        rng = np.random.default_rng(shape[1])
        x = (rng.standard_normal(shape) * 4).astype(dtype)
        for axis in (0, 1):
            got = pack_bits(cupy.asarray(x), axis=axis)
            want = pack_bits(x, axis=axis)
            assert got.shape == want.shape and got.axis == want.axis
            np.testing.assert_array_equal(cupy.asnumpy(got.words), want.words)
            np.testing.assert_array_equal(cupy.asnumpy(unpack_bits(got)), unpack_bits(want))

    @pytest.mark.parametrize("axis", [0, 1, 2])
    def test_pack_3d_matches_cpu(self, axis):
        import cupy

        x = np.random.default_rng(axis).standard_normal((3, 70, 129))
        got, want = pack_bits(cupy.asarray(x), axis=axis), pack_bits(x, axis=axis)
        np.testing.assert_array_equal(cupy.asnumpy(got.words), want.words)

    def test_pack_bit_layout(self):
        import cupy

        x = cupy.asarray([[-0.0, -1.0, np.inf, -np.inf] + [-1.0] * 60 + [0.0]])
        words = pack_bits(x).words
        assert words.dtype == np.uint64 and words.shape == (1, 2)
        assert int(words[0, 0]) == 0b0101  # -0.0 and +inf are +1 (set), padding bits 0
        assert int(words[0, 1]) == 1

    def test_nan_is_an_error(self):
        import cupy

        a = cupy.ones((3, 70), dtype=np.float32)
        a[2, 69] = np.nan
        with pytest.raises(ValueError, match="a must not contain NaN"):
            binary_matmul(a, cupy.ones((70, 2), dtype=np.float32))
        with pytest.raises(ValueError, match="x must not contain NaN"):
            pack_bits(a)

    def test_mixed_numpy_and_cupy_is_a_type_error(self):
        import cupy

        with pytest.raises(TypeError, match="a is a numpy array and b is a cupy array"):
            binary_matmul(np.ones((2, 3)), cupy.ones((3, 2)))
        with pytest.raises(TypeError, match="a is a cupy array and b is a numpy array"):
            binary_matmul(pack_bits(cupy.ones((2, 3)), axis=1), np.ones((3, 2)))

    def test_backend_cpu_rejects_cupy(self):
        import cupy

        with pytest.raises(TypeError, match="backend='cpu' needs numpy arrays"):
            binary_matmul(cupy.ones((2, 3)), cupy.ones((3, 2)), backend="cpu")

    def test_backend_gpu_moves_numpy_operands(self):
        import cupy

        rng = np.random.default_rng(5)
        a, b = rng.standard_normal((9, 130)), rng.standard_normal((130, 11))
        got = binary_matmul(a, b, backend="gpu")
        assert isinstance(got, cupy.ndarray)
        np.testing.assert_array_equal(cupy.asnumpy(got), _reference(a, b))
        got = binary_matmul(pack_bits(a, axis=1), pack_bits(b, axis=0), backend="gpu")
        assert isinstance(got, cupy.ndarray)
        np.testing.assert_array_equal(cupy.asnumpy(got), _reference(a, b))

    def test_bad_shapes_on_gpu(self):
        import cupy

        with pytest.raises(ValueError, match=r"matching inner dimensions, got a.shape=\(2, 3\) and b.shape=\(4, 2\)"):
            binary_matmul(cupy.ones((2, 3)), cupy.ones((4, 2)))
        with pytest.raises(ValueError, match="a must be 2-D"):
            binary_matmul(cupy.ones(3), cupy.ones((3, 2)))
        with pytest.raises(ValueError, match="b must be packed along axis=0"):
            binary_matmul(cupy.ones((2, 3)), pack_bits(cupy.ones((3, 2)), axis=1))

    def test_empty_operands(self):
        import cupy

        got = binary_matmul(cupy.ones((0, 5)), cupy.ones((5, 3)))
        assert isinstance(got, cupy.ndarray) and got.shape == (0, 3)

    def test_out_of_memory_names_the_sizes(self):
        import cupy

        m = n = 2**21  # the (m, n) int32 result needs 16 TiB
        a = PackedBits(cupy.zeros((m, 1), dtype=np.uint64), (m, 64), 1)
        b = PackedBits(cupy.zeros((n, 1), dtype=np.uint64), (64, n), 0)
        with pytest.raises(MemoryError, match=r"out of GPU memory: 17592186044416 bytes .*\(2097152, 2097152\)"):
            binary_matmul(a, b)

    def test_bad_kernel_env(self, monkeypatch):
        import cupy

        monkeypatch.setenv(_gpu.KERNEL_ENV, "fast")
        with pytest.raises(ValueError, match=r"XNORCORE_GPU_KERNEL must be one of \('wgmma', 'mma', 'popc'\)"):
            binary_matmul(cupy.ones((2, 3)), cupy.ones((3, 2)))

    def test_config_reports_the_device(self, monkeypatch):
        import cupy

        monkeypatch.delenv(_gpu.KERNEL_ENV, raising=False)
        info = _gpu.config()
        assert "unavailable" not in info, info
        assert info["cupy"] == cupy.__version__ and info["device"]
        cc = int(cupy.cuda.Device().compute_capability)
        assert info["compute_capability"] == f"{cc // 10}.{cc % 10}"
        assert info["kernel"] == ("wgmma" if cc == 90 else "mma" if cc >= 80 else "popc")
        monkeypatch.setenv(_gpu.KERNEL_ENV, "bogus")
        assert "XNORCORE_GPU_KERNEL" in _gpu.config()["unavailable"]  # reported, not raised

    def test_module_is_compiled_once_per_device(self):
        import cupy

        binary_matmul(cupy.ones((2, 3)), cupy.ones((3, 2)))
        key = "pack"  # one RawModule per source file; CuPy compiles it once per device
        module = _gpu._modules[key]
        binary_matmul(cupy.ones((2, 3)), cupy.ones((3, 2)))
        assert _gpu._modules[key] is module


# --- the real first layer of packed predict ---------------------------------------


def _float32_values(rng, shape):
    """float32 values over the whole range: signed zeros, subnormals, large and small magnitudes."""
    bits = rng.integers(0, 2**32, size=shape, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32)
    values[~np.isfinite(values)] = np.float32(3.0e38)
    values.flat[: min(values.size, 4)] = [0.0, -0.0, np.finfo(np.float32).max, -np.finfo(np.float32).tiny / 8][
        : min(values.size, 4)]
    return values


@pytest.mark.gpu
@needs_gpu
@settings(max_examples=40, deadline=None)
@given(st.integers(0, 70), st.integers(1, 300), st.integers(0, 2**32 - 1))
def test_split_bf16x3_parts_sum_exactly_to_the_standardized_rows(rows, k, seed):
    import cupy

    rng = np.random.default_rng(seed)
    x = _float32_values(rng, (rows, k)) if seed % 2 else rng.standard_normal((rows, k)).astype(np.float32)
    mean = np.zeros(k, np.float32) if seed % 2 else rng.standard_normal(k).astype(np.float32)
    scale = np.float32(1.0 if seed % 2 else rng.uniform(0.1, 100.0))
    blocks = 3 if seed % 3 else 6
    parts = _gpu._split_bf16x3(cupy.asarray(x), cupy.asarray(mean), cupy.asarray(scale), blocks).get()
    kp = -(-k // 8) * 8
    assert parts.shape == (rows, blocks, kp)
    if blocks == 6:  # b1 b2 b3 b1 b2 b1
        np.testing.assert_array_equal(parts[:, 3:], parts[:, [0, 1, 0]])
    as_float = (parts[:, :3].astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    assert np.isfinite(as_float).all()
    np.testing.assert_array_equal(as_float[:, :, k:], 0.0)
    v = ((x - mean) / scale).astype(np.float64)  # rounded in float32 on the host, as predict rounds host rows
    total = as_float[:, :, :k].sum(axis=1)
    # Exact where every part is a normal number (|v| >= 2^-103: its last bit, and so
    # every part, at least 2^-126); CuPy compiles with flush to zero, so smaller
    # values are within the smallest normal number.
    normal = np.abs(v) >= 2.0**-103
    np.testing.assert_array_equal(total[normal], v[normal])
    assert (np.abs(total - v)[~normal] <= 2.0**-126).all()


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("rows, k, n, weights", [(1, 1, 1, "binary"), (37, 70, 10, "binary"), (300, 784, 130, "binary"),
                                                 (5, 9, 1, "real"), (64, 200, 33, "real"), (0, 12, 4, "binary"),
                                                 (3, 16, 0, "binary")])
def test_gpu_input_layer_sums_are_float32_sums(rows, k, n, weights):
    import cupy

    rng = np.random.default_rng(rows + k + n)
    x = (rng.random((rows, k)) * 255).astype(np.float32)
    mean = (rng.random(k) * 100).astype(np.float32)
    scale = np.float32(77.5)
    w = rng.standard_normal((k, n)).astype(np.float32)
    if weights == "binary":
        w = np.where(w < 0, -1, 1).astype(np.float32)
    prepared = _gpu.prepare_input_layer(cupy.asarray(w), mean, scale)
    kp = -(-k // 8) * 8
    assert prepared[-1].shape == ((6 if weights == "real" else 3) * kp, n)  # three parts suffice for +-1
    z = _gpu.input_layer(cupy.asarray(x), prepared)
    assert isinstance(z, cupy.ndarray) and z.dtype == np.float32 and z.shape == (rows, n)
    v = ((x - mean) / scale).astype(np.float64)
    exact = v @ w.astype(np.float64)
    # float32 products and float32 additions: within the bound of k additions of
    # the terms' magnitudes, at the truncating accumulation's unit 2^-23 (and the
    # products of parts left out, below 2^-23 of a term).
    bound = 3 * (k + 8) * 2.0**-23 * (np.abs(v) @ np.abs(w).astype(np.float64)) + 1e-30
    assert (np.abs(z.get() - exact) <= bound).all()
    # The same rows from the host as a numpy array give the same sums.
    np.testing.assert_array_equal(_gpu.input_layer(x, prepared).get(), z.get())


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("rows, n", [(1, 1), (3, 64), (17, 65), (130, 1000), (0, 8), (5, 0)])
def test_gpu_float_threshold_pack_equals_the_array_operations(rows, n):
    import cupy

    from xnorcore._backends import _common

    rng = np.random.default_rng(rows * 31 + n)
    z = np.round(rng.standard_normal((rows, n)) * 4).astype(np.float32) / 2  # ties with the thresholds
    if z.size:
        z.flat[0] = -0.0
    direction = rng.integers(-1, 2, n).astype(np.int8)
    threshold = (np.round(rng.standard_normal(n) * 4) / 2).astype(np.float32)
    got = _gpu.threshold_pack(cupy.asarray(z), cupy.asarray(direction), cupy.asarray(threshold))
    want = _common.threshold_pack(z.copy(), direction, threshold)
    assert got.shape == want.shape == (rows, -(-n // 64))
    np.testing.assert_array_equal(got.get(), want)
    if z.size:
        z[-1, -1] = np.nan
        with pytest.raises(ValueError, match="must not contain NaN"):
            _gpu.threshold_pack(cupy.asarray(z), cupy.asarray(direction), cupy.asarray(threshold))
        with pytest.raises(ValueError, match="must not contain NaN"):
            with _gpu.deferred_nan_checks():
                words = _gpu.threshold_pack(cupy.asarray(z), cupy.asarray(direction), cupy.asarray(threshold))
                assert words.shape == want.shape  # returned: the check waits for the block's end


# --- the output layer and predict on device rows -------------------------------------


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("rows, k, n", [(1, 1, 1), (5, 70, 10), (130, 1024, 10), (3, 64, 16), (0, 5, 3),
                                        (9, 129, 2), (4097, 300, 7), (200, 4100, 13), (70, 190, 37)])
def test_gpu_signed_sums_equal_the_cpu_kernel_bit_for_bit(rows, k, n):
    import cupy

    rng = np.random.default_rng(rows * 7 + k)
    s = np.where(rng.random((rows, k)) < 0.5, 1.0, -1.0)
    w = rng.standard_normal((k, n))
    words = pack_bits(s, axis=1).words
    w64 = w.astype(np.float32).astype(np.float64)
    # Each column's sum is its own: the CPU kernel's (at most 16 columns a call) column by column.
    want = np.hstack([_cpu.signed_sums(words, k, w64[:, c:c + 16]) for c in range(0, n, 16)])
    got = _gpu.signed_sums(cupy.asarray(words), k, cupy.asarray(w.astype(np.float32)))
    assert isinstance(got, cupy.ndarray) and got.dtype == np.float64 and got.shape == (rows, n)
    np.testing.assert_array_equal(got.get(), want)
    if n <= _gpu.SIGNED_SUMS_MAX_UNITS:  # the output layer of a classifier
        np.testing.assert_array_equal(_gpu.real_layer(cupy.asarray(words), k, cupy.asarray(w.astype(np.float32))).get(),
                                      want)


@pytest.mark.gpu
@needs_gpu
def test_gpu_model_predicts_cupy_rows_as_host_rows():
    import cupy
    from sklearn.datasets import load_digits

    from xnorcore import BNNClassifier

    X, y = load_digits(return_X_y=True)
    clf = BNNClassifier((64, 64), max_iter=2, random_state=0, device="gpu").fit(X, y)
    host = clf.predict_proba(X)
    for rows in (cupy.asarray(X), cupy.asarray(X, dtype=cupy.float32), cupy.asarray(X.astype(np.int16))):
        np.testing.assert_array_equal(clf.predict_proba(rows), host)
    np.testing.assert_array_equal(clf.predict(cupy.asarray(X)), clf.predict(X))
    np.testing.assert_array_equal(clf.predict_proba(cupy.asarray(X.reshape(-1, 8, 8, 1))), host)
    bad = cupy.asarray(X)
    bad[3, 5] = cupy.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        clf.predict(bad)
    with pytest.raises(ValueError, match="X has 63 features, but BNNClassifier is expecting 64"):
        clf.predict(cupy.asarray(X[:, 1:]))
    with pytest.raises(ValueError, match="must be 2-D"):
        clf.predict(cupy.asarray(X.ravel()))
    with pytest.raises(ValueError, match="0 sample"):
        clf.predict(cupy.asarray(X[:0]))


# --- training's kernels ------------------------------------------------------------


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("shape", [(1, 1), (63, 5), (64, 64), (65, 130), (1000, 1024), (2049, 3)])
def test_gpu_training_kernels_equal_the_checked_and_array_operations(shape):
    import cupy

    from xnorcore.nn import binarize, ste_mask

    rng = np.random.default_rng(shape[0])
    x = rng.standard_normal(shape).astype(np.float32)
    x.flat[:2] = [-0.0, 0.0][: x.size]
    xd = cupy.asarray(x)
    signs, words = _gpu.sign_pack_cols(xd)
    assert signs.dtype == np.float32 and signs.shape == shape
    np.testing.assert_array_equal(signs.get(), binarize(x))
    np.testing.assert_array_equal(words.get(), pack_bits(x, axis=0).words)
    np.testing.assert_array_equal(_gpu.pack_signs(xd).get(), pack_bits(x, axis=1).words)
    signs, words = _gpu.sign_pack_rows(xd)
    np.testing.assert_array_equal(signs.get(), binarize(x))
    np.testing.assert_array_equal(words.get(), pack_bits(x, axis=1).words)
    x.flat[-3:] = [np.nan, 1.0, -1.0][-x.size:]
    xd = cupy.asarray(x)
    for dtype in (np.float32, np.int8):
        got = _gpu.signs(xd, dtype)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got.get(), binarize(x).astype(dtype))
    dy = rng.standard_normal(shape).astype(np.float32)
    dy.flat[:1] = np.inf
    got = _gpu.ste_grad(cupy.asarray(dy), xd).get()
    np.testing.assert_array_equal(got.view(np.int32), (dy * ste_mask(x)).view(np.int32))


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("shape", [(1,), (7, 3), (1000, 37), (3, 3, 5, 64)])
def test_gpu_adam_kernel_is_the_array_operations_bit_for_bit(clip, shape):
    import cupy

    from test_nn import adam_operands
    from xnorcore.nn._optim import adam_arrays

    rng = np.random.default_rng(shape[0])
    for step in (1e-3, 0.37):
        want = [cupy.asarray(a) for a in adam_operands(rng, shape)]
        got = [a.copy() for a in want]
        adam_arrays(*want, 0.9, 0.999, 1e-8, step, clip)
        _gpu.adam_update(*got, 0.9, 0.999, 1e-8, step, clip)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a.view(np.int32).get(), b.view(np.int32).get())


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("hidden", [(65,), (64, 127), (1024, 1024)])
def test_gpu_xnor_and_float_products_train_identically(hidden, dropout):
    import cupy

    from xnorcore.nn import Adam, Network

    rng = np.random.RandomState(0)
    X = cupy.asarray(rng.randn(300, 37).astype(np.float32))
    y = cupy.asarray(rng.randint(0, 3, 300))
    nets = [Network(37, 3, hidden, binary=True, dropout=dropout, binarize_last=True, xnor=xnor,
                    random_state=np.random.RandomState(7), xp=cupy) for xnor in (False, True)]
    assert nets[1].blocks[-1].dense.uses_xnor and not nets[0].blocks[-1].dense.uses_xnor
    curves = []
    for net in nets:
        opt, drop = Adam(), cupy.random.RandomState(3)
        curves.append([float(net.train_step(X[i:i + 100], y[i:i + 100], opt, 1e-2, rng=drop))
                       for i in (0, 100, 200, 0, 100)])
    assert curves[0] == curves[1]
    for a, b in zip(nets[0].params(), nets[1].params()):
        np.testing.assert_array_equal(a[1].get(), b[1].get())
    np.testing.assert_array_equal(nets[0].forward(X).get(), nets[1].forward(X).get())


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("shape", [(2, 1), (7, 3), (300, 37), (512, 1024), (4, 5, 5, 8), (64, 14, 14, 33)])
def test_gpu_fused_batch_norm_follows_the_array_path(shape):
    import cupy

    from xnorcore.nn import BatchNorm
    from xnorcore.nn._conv import ChannelBatchNorm

    rng = np.random.default_rng(sum(shape))
    layer = ChannelBatchNorm if len(shape) == 4 else BatchNorm
    c = shape[-1]
    host, device = layer("bn", c, np), layer("bn", c, cupy)
    device.gamma = cupy.asarray(rng.uniform(0.5, 2, c).astype(np.float32))
    host.gamma = device.gamma.get()
    for step in range(3):
        z = (rng.standard_normal(shape) * 3 + 1.5).astype(np.float32)
        up = rng.standard_normal(shape).astype(np.float32)
        want, got = host.forward(z, training=True), device.forward(cupy.asarray(z), training=True)
        assert got.dtype == np.float32 and got.shape == shape
        np.testing.assert_allclose(got.get(), want, rtol=1e-5, atol=1e-5)
        for name in ("running_mean", "running_var"):  # (the array path sums in float32)
            np.testing.assert_allclose(getattr(device, name).get(), getattr(host, name), rtol=1e-5, atol=1e-6)
        want, got = host.backward(up), device.backward(cupy.asarray(up))
        np.testing.assert_allclose(got.get(), want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(device.gamma_grad.get(), host.gamma_grad, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(device.beta_grad.get(), host.beta_grad, rtol=1e-4, atol=1e-4)
    # Integer sums in (the XNOR product's) give what their float32 values give.
    z = rng.integers(-1024, 1025, (max(2, shape[0]), c)).astype(np.int32)
    stats = [(cupy.zeros(c, np.float32), cupy.ones(c, np.float32)) for _ in range(2)]
    a = _gpu.batch_norm_train(cupy.asarray(z), device.gamma, device.beta, *stats[0], 0.9, 1e-4)
    b = _gpu.batch_norm_train(cupy.asarray(z, dtype=np.float32), device.gamma, device.beta, *stats[1], 0.9, 1e-4)
    for x, y in zip(a + stats[0], b + stats[1]):
        np.testing.assert_array_equal(x.get(), y.get())


# --- training steps replayed as CUDA graphs ----------------------------------------


def _train_epochs(make_net, X, y, *, epochs=2, batch_size=64, lr=1e-2, reg=0.0, shift=None):
    """Losses and the network after ``epochs`` of :func:`run_epoch` (shuffled, dropout drawn on the
    device); ``shift``, an ``(image_shape, max_shift)``, moves the images as the estimator does."""
    import cupy

    from xnorcore.nn import Adam
    from xnorcore.nn._augment import RandomShift
    from xnorcore.nn._trainer import run_epoch

    net, opt = make_net(), Adam()
    perm_rng, drop_rng = np.random.RandomState(1), cupy.random.RandomState(2)
    augment = None
    if shift is not None:
        mean = cupy.asarray(np.random.RandomState(4).rand(X.shape[1]).astype(np.float32))
        augment = RandomShift(shift[0], shift[1], mean, 1.7)
    losses = [run_epoch(net, opt, X, y, batch_size=batch_size, lr=lr / (e + 1), reg=reg, perm_rng=perm_rng,
                        drop_rng=drop_rng, shuffle=True, augment=augment)[0] for e in range(epochs)]
    return losses, net, opt


def _assert_same_training(a, b):
    (losses_a, net_a, opt_a), (losses_b, net_b, opt_b) = a, b
    assert losses_a == losses_b
    assert opt_a.t == opt_b.t
    for (name, p, g, _), (_, q, h, _) in zip(net_a.params(), net_b.params()):
        np.testing.assert_array_equal(p.get(), q.get(), err_msg=name)
        np.testing.assert_array_equal(g.get(), h.get(), err_msg=name)
        np.testing.assert_array_equal(opt_a.m[name].get(), opt_b.m[name].get(), err_msg=name)
    for la, lb in zip(net_a.layers(), net_b.layers()):
        for attr in ("running_mean", "running_var"):
            if hasattr(la, attr):
                np.testing.assert_array_equal(getattr(la, attr).get(), getattr(lb, attr).get())


NETS = {  # name -> (network kwargs, conv layers)
    "binary-xnor": (dict(binary=True, xnor=True), None),
    "binary-matmul": (dict(binary=True, xnor=False), None),
    "binary-xnor-dropout": (dict(binary=True, xnor=True, dropout=0.3, input_dropout=0.2, binarize_last=True), None),
    "float": (dict(binary=False, dropout=0.2), None),
    "cnn-float": (dict(binary=True, xnor=False, dropout=0.2), (8, "pool", 16)),
    "cnn-float-first-layer-narrow": (dict(binary=True, xnor=False), (33, "pool", 16)),  # (its weight grad: 9 x 33)
    "cnn-xnor": (dict(binary=True, xnor=True), (8, "pool", 16)),
}


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("reg", [0.0, 1e-4])
@pytest.mark.parametrize("name", list(NETS))
def test_gpu_graphed_steps_train_as_uncaptured_ones(monkeypatch, name, reg):
    import cupy

    from xnorcore.nn import ConvNetwork, Network
    from xnorcore.nn import _graph

    kwargs, conv = NETS[name]
    rng = np.random.RandomState(0)
    X = cupy.asarray(rng.randn(300, 64).astype(np.float32))  # 4 full batches of 64 and one of 44
    y = cupy.asarray(rng.randint(0, 3, 300))

    def make_net():
        if conv is None:
            return Network(64, 3, (96, 65), random_state=np.random.RandomState(7), xp=cupy, **kwargs)
        kw = {k: v for k, v in kwargs.items() if k != "input_dropout"}
        return ConvNetwork((8, 8, 1), conv, 3, (32,), random_state=np.random.RandomState(7), xp=cupy, **kw)

    shift = None if conv is None else ((8, 8, 1), 1)
    monkeypatch.setenv(_graph.ENV, "0")
    uncaptured = _train_epochs(make_net, X, y, reg=reg, shift=shift)
    assert uncaptured[1] not in _graph._steps
    monkeypatch.delenv(_graph.ENV)
    graphed = _train_epochs(make_net, X, y, reg=reg, shift=shift)
    _assert_same_training(graphed, uncaptured)
    steps = _graph._steps[graphed[1]]
    assert steps.graph is not None and not steps.failed


@pytest.mark.gpu
@needs_gpu
def test_gpu_graphed_steps_are_captured_again_when_the_network_changes(monkeypatch):
    import copy

    import cupy

    from xnorcore.nn import Adam, Network
    from xnorcore.nn import _graph
    from xnorcore.nn._trainer import run_epoch

    rng = np.random.RandomState(0)
    X = cupy.asarray(rng.randn(256, 20).astype(np.float32))
    y = cupy.asarray(rng.randint(0, 4, 256))

    def epoch(net, opt, seed):
        return run_epoch(net, opt, X, y, batch_size=32, lr=1e-2, reg=0.0, perm_rng=np.random.RandomState(seed),
                         drop_rng=cupy.random.RandomState(seed), shuffle=True)[0]

    net, opt = Network(20, 4, (40,), xnor=True, random_state=np.random.RandomState(3), xp=cupy), Adam()
    epoch(net, opt, 0)
    steps = _graph.graphed_steps(net, opt, 0.0)
    assert steps.graph is not None
    assert _graph.graphed_steps(net, opt, 0.0) is steps
    assert _graph.graphed_steps(net, opt, 1e-3) is not steps  # another reg
    # A copy trains on its own arrays (its own graph); a changed dropout rate is captured again.
    twin, twin_opt = copy.deepcopy(net).to(cupy), copy.deepcopy(opt).to(cupy)
    for n, o in ((net, opt), (twin, twin_opt)):
        n.blocks[1].dense.dropout = 0.25
        epoch(n, o, 5)
    assert _graph._steps[net] is not steps and _graph._steps[net].graph is not None
    assert _graph._steps[twin].graph is not None
    monkeypatch.setenv(_graph.ENV, "0")
    again, again_opt = copy.deepcopy(twin).to(cupy), copy.deepcopy(twin_opt).to(cupy)
    monkeypatch.delenv(_graph.ENV)
    loss = epoch(twin, twin_opt, 6)
    monkeypatch.setenv(_graph.ENV, "0")
    assert loss == epoch(again, again_opt, 6)
    for a, b in zip(twin.params(), again.params()):
        np.testing.assert_array_equal(a[1].get(), b[1].get())


@pytest.mark.gpu
@needs_gpu
def test_gpu_fit_with_graphs_equals_fit_without(monkeypatch):
    from sklearn.datasets import load_digits

    from xnorcore import BNNClassifier
    from xnorcore.nn import _graph

    X, y = load_digits(return_X_y=True)
    params = dict(hidden_layer_sizes=(128, 128), max_iter=3, batch_size=100, device="gpu", xnor=True,
                  early_stopping=True, random_state=0)
    cnn = dict(params, conv_layers=(8, "pool"), image_shape=(8, 8, 1), random_shift=1, xnor="auto")
    graphed, graphed_cnn = BNNClassifier(**params).fit(X, y), BNNClassifier(**cnn).fit(X, y)
    monkeypatch.setenv(_graph.ENV, "0")
    uncaptured, uncaptured_cnn = BNNClassifier(**params).fit(X, y), BNNClassifier(**cnn).fit(X, y)
    assert graphed.loss_curve_ == uncaptured.loss_curve_
    np.testing.assert_array_equal(graphed.predict_proba(X), uncaptured.predict_proba(X))
    assert graphed_cnn.loss_curve_ == uncaptured_cnn.loss_curve_
    np.testing.assert_array_equal(graphed_cnn.predict_proba(X), uncaptured_cnn.predict_proba(X))
    # partial_fit continues the fitted network (graphs back on for the first)
    monkeypatch.delenv(_graph.ENV)
    graphed.partial_fit(X, y)
    monkeypatch.setenv(_graph.ENV, "0")
    uncaptured.partial_fit(X, y)
    np.testing.assert_array_equal(graphed.predict_proba(X), uncaptured.predict_proba(X))


@pytest.mark.gpu
@needs_gpu
def test_gpu_auto_xnor_takes_the_backends_choice_in_dense_and_conv_layers():
    from sklearn.datasets import load_digits

    from xnorcore import BNNClassifier

    X, y = load_digits(return_X_y=True)
    clf = BNNClassifier((32,), image_shape=(8, 8, 1), conv_layers=(8, "pool"), max_iter=1, device="gpu",
                        random_state=0).fit(X, y)
    assert clf.xnor_ is _gpu.prefers_xnor_training is True
    assert all(b.dense.xnor for b in clf.network_.blocks)
    assert _gpu.prefers_xnor_conv_training is True
    assert [b.conv.uses_xnor for b in clf.network_.features.blocks] == [False]  # (the first layer is real)
    clf = BNNClassifier((32,), image_shape=(8, 8, 1), conv_layers=(8, 8, "pool"), max_iter=1, device="gpu",
                        random_state=0).fit(X, y)
    assert [b.conv.uses_xnor for b in clf.network_.features.blocks] == [False, True]
    same = BNNClassifier((32,), image_shape=(8, 8, 1), conv_layers=(8, 8, "pool"), max_iter=1, device="gpu",
                         random_state=0, xnor=False).fit(X, y)
    np.testing.assert_array_equal(clf.predict_proba(X), same.predict_proba(X))


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (1, 7, 1), (5, 1, 3), (64, 65, 63), (300, 37, 3), (0, 4, 2), (3, 0, 2)])
def test_gpu_training_matmul_takes_c_and_transposed_operands(m, k, n):
    import cupy

    rng = np.random.default_rng(m * 100 + k * 10 + n)
    a = np.where(rng.random((m, k)) < 0.5, -1, 1).astype(np.float32)  # +-1: every product is exact
    b = rng.integers(-3, 4, (k, n)).astype(np.float32)
    want = a @ b
    strided = cupy.zeros((m, 2 * k), dtype=np.float32)
    strided[:, ::2] = cupy.asarray(a)
    for da in (cupy.asarray(a), cupy.asarray(np.ascontiguousarray(a.T)).T, strided[:, ::2]):
        for db in (cupy.asarray(b), cupy.asarray(np.ascontiguousarray(b.T)).T):
            got = _gpu.matmul(da, db)
            assert got.flags.c_contiguous and got.dtype == np.float32
            np.testing.assert_array_equal(got.get(), want)
    x = rng.standard_normal((m, k)).astype(np.float32)
    got = _gpu.matmul(cupy.asarray(x), cupy.asarray(b))
    np.testing.assert_allclose(got.get(), x @ b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="matching inner size"):
        _gpu._cublas.matmul(cupy.asarray(a), cupy.asarray(b.T.copy()) if k != n else cupy.zeros((k + 1, n), np.float32))
