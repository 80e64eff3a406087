"""The GPU backend's kernel choice and launch plans, on a stand-in for CuPy.

These run everywhere, GPU or not: a stand-in module plays CuPy and the
driver, recording the compile options, the kernels asked for and every
``cuLaunchKernel``, so that the host side of each GEMM kernel (which kernel,
which tiles, which argument block) is checked without a device.  That the
kernels compute the right numbers is tests/test_gpu.py's job.
"""

import ctypes
import re
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xnorcore._backends import gpu as _gpu

#: The opt-in dynamic shared memory limit of a block on compute capability 9.0.
SM90_MAX_DYNAMIC_SMEM = 227 * 1024


class _FakeFunction:
    def __init__(self, module, name):
        self.module, self.name = module, name
        self.ptr = id(self)
        self.max_dynamic_shared_size_bytes = 0

    @property
    def kernel(self):
        return self


class _FakeRawModule:
    def __init__(self, code, options):
        self.code, self.options = code, options

    def get_function(self, name):
        # A kernel's name opens its definition or is the first argument of the macro that defines it.
        assert re.search(rf"\b{name}\s*[(,]", self.code), f"{name} is not in the source"
        return _FakeFunction(self, name)


class _FakeArray:
    """What the launches read of a cupy array: its device address."""

    def __init__(self, ptr):
        self.data = types.SimpleNamespace(ptr=ptr)


@pytest.fixture
def fake_cupy(monkeypatch):
    """A CuPy stand-in with one device; ``fake_cupy.cc`` and ``.sms`` set the device."""
    launches = []
    fake = types.SimpleNamespace(cc=90, sms=132, launches=launches, modules=[])

    def raw_module(code, options):
        module = _FakeRawModule(code, options)
        fake.modules.append(module)
        return module

    def device(dev=0):
        return types.SimpleNamespace(
            id=dev, compute_capability=str(fake.cc), attributes={"MultiProcessorCount": fake.sms}
        )

    fake.RawModule = raw_module
    fake.__version__ = "0.0"
    fake.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(
            getDevice=lambda: 0, getDeviceCount=lambda: 1, getDeviceProperties=lambda dev: {"name": b"stand-in"}
        ),
        Device=device,
        driver=types.SimpleNamespace(launchKernel=lambda *args: launches.append(args)),
        get_current_stream=lambda: types.SimpleNamespace(ptr=4242),
    )
    monkeypatch.setattr(_gpu, "_cupy_module", fake)
    for cache in ("_modules", "_functions", "_launches", "_plans", "_devices", "_tensor_maps"):
        monkeypatch.setattr(_gpu, cache, {})
    monkeypatch.delenv(_gpu.KERNEL_ENV, raising=False)
    return fake


@pytest.fixture
def fake_encode(monkeypatch):
    """A cuTensorMapEncodeTiled stand-in: records its arguments, fills the map with a marker."""
    calls = []

    def encode(out, dtype, rank, ptr, dims, strides, box, unit, interleave, swizzle, l2, fill):
        calls.append(dict(
            dtype=dtype, rank=rank, ptr=ptr, dims=tuple(dims), strides=tuple(strides), box=tuple(box),
            unit=tuple(unit), interleave=interleave, swizzle=swizzle, l2=l2, fill=fill,
        ))
        for i in range(16):
            out[i] = ptr + i
        return 0

    monkeypatch.setattr(_gpu, "_tensor_map_encode", encode)
    return calls


@pytest.mark.parametrize(
    ("forced", "cc", "kernel"),
    [
        ("", 90, "wgmma"), ("", 89, "mma"), ("", 86, "mma"), ("", 80, "mma"), ("", 100, "mma"), ("", 120, "mma"),
        ("", 75, "popc"), ("", 60, "popc"),
        ("wgmma", 90, "wgmma"), (" WGMMA ", 90, "wgmma"), ("mma", 90, "mma"), ("popc", 90, "popc"),
        ("mma", 80, "mma"), ("popc", 80, "popc"), ("popc", 75, "popc"),
    ],
)
def test_kernel_choice(forced, cc, kernel):
    assert _gpu._choose_kernel(forced, cc) == kernel


@pytest.mark.parametrize(
    ("forced", "cc", "message"),
    [
        ("wgmma", 80, "XNORCORE_GPU_KERNEL=wgmma needs compute capability 9.0, this device has 8.0"),
        ("wgmma", 100, "XNORCORE_GPU_KERNEL=wgmma needs compute capability 9.0, this device has 10.0"),
        ("mma", 75, r"XNORCORE_GPU_KERNEL=mma needs compute capability >= 8.0, this device has 7.5"),
    ],
)
def test_forced_kernel_the_device_lacks(forced, cc, message):
    with pytest.raises(RuntimeError, match=message):
        _gpu._choose_kernel(forced, cc)


def test_forced_kernel_unknown():
    with pytest.raises(ValueError, match=r"XNORCORE_GPU_KERNEL must be one of \('wgmma', 'mma', 'popc'\) or unset, "
                                         r"got XNORCORE_GPU_KERNEL='fast'"):
        _gpu._choose_kernel("fast", 90)


def test_compile_options():
    """One place for the NVRTC options: the common ones first, sm_90a for wgmma alone
    (elsewhere CuPy compiles for the device's own architecture)."""
    for source in ("pack", "xnor_gemm_mma", "xnor_gemm_popc", "xnor_gemm_wgmma"):
        options = _gpu._compile_options(source)
        assert options[0] == "-std=c++17"
        assert any(o.startswith("-arch") for o in options) == (source == "xnor_gemm_wgmma")
    assert "-arch=sm_90a" in _gpu._compile_options("xnor_gemm_wgmma")


@pytest.mark.parametrize(("variant", "store"), [("coop", False), ("ping", False), ("ping", True)])
def test_wgmma_shared_memory_fits_sm90(variant, store):
    bm, bn, smem = _gpu._wgmma_shape(variant, store)
    assert (bm, bn) == {"coop": (128, 256), "ping": (128, 128)}[variant]
    stages = _gpu._constant("xnor_gemm_wgmma", f"{variant.upper()}_{'TMA_' if store else ''}STAGES")
    # the ring, aligned, and for TMA stores each warpgroup's staging: an m64 block of int32 sums
    assert smem >= 1024 + stages * (bm + bn) * 128 + (2 * 64 * bn * 4 if store else 0)
    assert smem <= SM90_MAX_DYNAMIC_SMEM


def test_hopper_plans(fake_cupy):
    """On 9.0: wgmma from 2**36 multiply-accumulates (ping by default), the mma kernel below."""
    width = 8192 // 64
    plan = _gpu._plan(8192, 8192, width, 8192)
    assert plan.variant == "wgmma"
    # ping, storing through TMA: the result's rows are whole 16-byte units
    assert plan.function.name == f"xnor_gemm_wgmma_{_gpu._WGMMA_VARIANT}_tma" == "xnor_gemm_wgmma_ping_tma"
    assert plan.function.module.options == _gpu._compile_options("xnor_gemm_wgmma")
    assert plan.function.max_dynamic_shared_size_bytes == plan.smem == _gpu._wgmma_shape("ping", True)[2]
    direct = _gpu._plan(8192, 8190, width, 8192)  # rows of 8190 int32: not whole 16-byte units
    assert (direct.function.name, direct.smem) == ("xnor_gemm_wgmma_ping", _gpu._wgmma_shape("ping")[2])
    assert plan.grid == 132  # persistent: one block per multiprocessor
    assert _gpu._plan(8192, 8192, width, 8192) is plan  # cached
    assert _gpu._plan(4096, 4096, 64, 4096).variant == "wgmma"  # 4096**3 == 2**36
    assert _gpu._plan(4096, 4095, 64, 4096).variant == "medium"
    assert _gpu._plan(64, 64, 2, 100).variant == "small"
    assert _gpu.config()["kernel"] == "wgmma"


def test_hopper_plan_grid_is_the_tile_count_below_one_wave(fake_cupy, monkeypatch):
    monkeypatch.setattr(_gpu, "_WGMMA_VARIANT", "coop")
    monkeypatch.setenv(_gpu.KERNEL_ENV, "wgmma")
    plan = _gpu._plan(300, 600, 2, 100)  # 3 x 3 tiles of 128 x 256
    assert (plan.variant, plan.function.name, plan.grid, plan.bm, plan.bn) == (
        "wgmma", "xnor_gemm_wgmma_coop", 9, 128, 256)


def test_forced_wgmma_takes_small_products(fake_cupy, monkeypatch):
    monkeypatch.setenv(_gpu.KERNEL_ENV, "wgmma")
    assert _gpu._plan(1, 1, 2, 1).variant == "wgmma"


def test_wgmma_leaves_shapes_past_int32_to_mma(fake_cupy, monkeypatch):
    """Rows past what the kernel's int32 tile coordinates reach go to the mma kernel, even forced."""
    monkeypatch.setenv(_gpu.KERNEL_ENV, "wgmma")
    assert _gpu._plan(2**31 - 64, 1, 2, 100).variant in ("small", "medium")
    assert _gpu._plan(2**31 - 64 - 256, 1, 2, 100).variant == "wgmma"


def test_the_schedule_is_part_of_the_plan(fake_cupy, monkeypatch):
    monkeypatch.setattr(_gpu, "_WGMMA_VARIANT", "ping")
    ping = _gpu._plan(8192, 8192, 128, 8192)
    monkeypatch.setattr(_gpu, "_WGMMA_VARIANT", "coop")
    coop = _gpu._plan(8192, 8192, 128, 8192)
    assert (ping.function.name, coop.function.name) == ("xnor_gemm_wgmma_ping_tma", "xnor_gemm_wgmma_coop")
    monkeypatch.setattr(_gpu, "_WGMMA_TMA_STORE", False)
    monkeypatch.setattr(_gpu, "_WGMMA_VARIANT", "ping")
    assert _gpu._plan(8192, 8192, 128, 8192).function.name == "xnor_gemm_wgmma_ping"
    assert (coop.bm, coop.bn) == (128, 256)


@pytest.mark.parametrize(("cc", "variant"), [(80, "medium"), (89, "medium"), (100, "medium"), (75, None)])
def test_plans_off_hopper(fake_cupy, cc, variant):
    fake_cupy.cc = cc
    plan = _gpu._plan(8192, 8192, 128, 8192)
    assert plan.variant == variant
    # Off Hopper nothing is compiled for sm_90a: every module has the common options only.
    common = _gpu._compile_options("xnor_gemm_mma")
    assert fake_cupy.modules and all(m.options == common for m in fake_cupy.modules)


def _params(launch_args):
    """The kernel argument addresses of a recorded cuLaunchKernel."""
    params = launch_args[9]
    return ctypes.cast(params, ctypes.POINTER(ctypes.c_void_p))


@pytest.mark.parametrize(("variant", "store"), [("coop", False), ("ping", False), ("ping", True)])
def test_wgmma_launch_arguments(fake_cupy, fake_encode, monkeypatch, variant, store):
    """The argument block matches the kernel's signature: two 128-byte tensor maps by value
    (three with TMA stores, the result's last), then counts, out, m, n, n_words and k, each
    8 bytes; the maps describe each operand, and the result as int32."""
    monkeypatch.setenv(_gpu.KERNEL_ENV, "wgmma")
    monkeypatch.setattr(_gpu, "_WGMMA_VARIANT", variant)
    monkeypatch.setattr(_gpu, "_WGMMA_TMA_STORE", store)
    m, n, k = 1000, 3000, 2000
    width = 32  # n_words(2000) rounded up to even
    plan = _gpu._plan(m, n, width, k)
    assert plan.function.name == f"xnor_gemm_wgmma_{variant}" + ("_tma" if store else "")
    bm, bn, smem = _gpu._wgmma_shape(variant, store)
    grid = min(-(-m // bm) * -(-n // bn), fake_cupy.sms)
    a, b, counts, out = _FakeArray(1 << 20), _FakeArray(1 << 24), _FakeArray(1 << 28), _FakeArray(1 << 30)
    plan(a, b, counts, out)
    (args,) = fake_cupy.launches
    assert args[0] == plan.function.ptr
    assert args[1:9] == (grid, 1, 1, _gpu._constant("xnor_gemm_wgmma", "WG_THREADS"), 1, 1, smem, 4242)
    assert args[10] == 0
    params = _params(args)
    maps = (a, b, out) if store else (a, b)
    for i, operand in enumerate(maps):
        words = (ctypes.c_uint64 * 16).from_address(params[i])
        assert list(words) == [operand.data.ptr + j for j in range(16)]
    scalars = [ctypes.c_uint64.from_address(params[len(maps) + i]).value for i in range(6)]
    assert scalars == [counts.data.ptr, out.data.ptr, m, n, width, k]
    stage_words = _gpu._constant("xnor_gemm_wgmma", "WG_STAGE_WORDS")
    assert [call["ptr"] for call in fake_encode] == [operand.data.ptr for operand in maps]
    for call, rows, box_rows in zip(fake_encode, (m, n), (bm, bn)):
        assert call["rank"] == 2 and call["dims"] == (width, rows) and call["strides"] == (8 * width,)
        assert call["box"] == (stage_words, box_rows) and call["unit"] == (1, 1)
        assert (call["dtype"], call["swizzle"], call["l2"], call["fill"]) == (4, 3, 3, 0)  # uint64, 128B, 256B, zeros
    if store:  # the (m, n) int32 result in boxes of 64 rows of 32 sums (128 bytes, the swizzle span)
        call = fake_encode[2]
        assert call["rank"] == 2 and call["dims"] == (n, m) and call["strides"] == (4 * n,)
        assert call["box"] == (32, 64) and call["unit"] == (1, 1)
        assert (call["dtype"], call["swizzle"], call["l2"], call["fill"]) == (3, 3, 3, 0)  # int32


def test_tensor_maps_are_kept_per_address(fake_cupy, fake_encode):
    plan = _gpu._plan(8192, 8192, 128, 8192)
    a, b, counts, out = _FakeArray(1 << 20), _FakeArray(1 << 24), _FakeArray(1 << 28), _FakeArray(1 << 30)
    plan(a, b, counts, out)
    plan(a, b, counts, out)
    assert len(fake_encode) == 3  # a, b and (TMA stores) the result
    plan(_FakeArray(1 << 32), b, counts, out)
    assert len(fake_encode) == 4
    assert ctypes.c_uint64.from_address(_params(fake_cupy.launches[-1])[0]).value == 1 << 32
    plan(a, b, counts, _FakeArray(1 << 34))  # a new result: a new map for it alone
    assert len(fake_encode) == 5
    assert ctypes.c_uint64.from_address(_params(fake_cupy.launches[-1])[2]).value == 1 << 34


def test_tensor_map_failure_names_the_shape(fake_cupy, monkeypatch):
    monkeypatch.setattr(_gpu, "_tensor_map_encode", lambda *args: 1)
    with pytest.raises(RuntimeError, match=r"cuTensorMapEncodeTiled failed with CUresult 1 for 300 x 16 words"):
        _gpu._tensor_map(1 << 20, 300, 16, 128)


def test_hopper_fused_layer_plans(fake_cupy):
    """The fused layer runs on wgmma at every size: coop's 256-column tiles for layers
    wider than 128 outputs, ping's 128-column ones for narrower layers."""
    wide = _gpu._plan(8192, 8192, 128, 8192, pack=True)
    assert (wide.variant, wide.function.name, wide.bn) == ("wgmma", "xnor_gemm_wgmma_coop_pack", 256)
    narrow = _gpu._plan(65536, 128, 16, 1024, pack=True)
    assert (narrow.function.name, narrow.bn) == ("xnor_gemm_wgmma_ping_pack", 128)
    assert _gpu._plan(64, 64, 2, 100, pack=True).function.name == "xnor_gemm_wgmma_ping_pack"
    assert _gpu._plan(8192, 8192, 128, 8192, pack=True) is wide  # cached apart from the int32 plan
    assert _gpu._plan(8192, 8192, 128, 8192).function.name == "xnor_gemm_wgmma_ping_tma"


def test_fused_layer_falls_back_off_hopper(fake_cupy, monkeypatch):
    monkeypatch.setenv(_gpu.KERNEL_ENV, "mma")
    assert _gpu._plan(8192, 8192, 128, 8192, pack=True) is None


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 7), st.integers(1, 3), st.integers(1, 3),
       st.integers(0, 4))
def test_border_classes_of_the_implicit_conv(n_out, size, k, stride, dilation, pad):
    """Each output position's class is the set of its kernel taps outside the image;
    class 0 is the empty set, and the classes are distinct."""
    from xnorcore._backends.gpu_conv import _taps_outside

    sets, index = _taps_outside(n_out, size, k, stride, dilation, pad)
    assert not sets[0].any() and len({tuple(row) for row in sets}) == len(sets)
    assert index.shape == (n_out,) and index.min() >= 0 and index.max() < len(sets)
    for o in range(n_out):
        outside = [not 0 <= o * stride - pad + i * dilation < size for i in range(k)]
        assert sets[index[o]].tolist() == outside


@pytest.mark.parametrize("halo", [False, True])
@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize("o", [64, 65])
def test_implicit_conv_shared_memory_fits_one_block(halo, pack, o, fake_cupy, monkeypatch):
    """The implicit-GEMM conv asks for no more shared memory than a block may have (nor
    than the limit set on its kernel), names a kernel that kernels/conv_mma.cu defines,
    and takes the halo kernel for int32 sums exactly where its lines and weights fit."""
    from xnorcore._backends import gpu_conv as _gpu_conv

    monkeypatch.setattr(_gpu_conv, "_implicit_plans", {})
    monkeypatch.setattr(_gpu_conv, "_classes", {})
    monkeypatch.setattr(_gpu_conv, "_HALO", halo)
    monkeypatch.setattr(_gpu, "to_device", lambda a: a)

    source = _gpu._source("conv_mma")
    took_halo = set()
    for window_words, ow in [(1, 8), (9, 8), (63, 8), (64, 8), (200, 8), (9, 1), (9, 100), (9, 20000)]:
        geometry = (8, ow, 8, ow, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0)
        row_words = window_words + window_words % 2
        launch = _gpu_conv._implicit_plan((2, 8, ow, 1, window_words), o, row_words,
                                          geometry, 64 * window_words, 0, pack)[0]
        assert launch.smem <= SM90_MAX_DYNAMIC_SMEM
        name = launch.function.name
        if name.startswith("conv_halo"):
            took_halo.add((window_words, ow))
            assert f"XNORCORE_CONV_HALO({name}," in source
            lines, wp, rwp, scratch = launch.values[-4:]
            bm, bn = _gpu_conv._mma_constant("BM"), _gpu_conv._block_columns(o)
            assert rwp % 8 == 4 and rwp >= row_words and wp == ow
            halo_words = -(-lines * wp * window_words // 2) * 2
            assert (bn * rwp + 2 * halo_words) * 8 <= _gpu_conv._HALO_MAX_BYTES
            assert launch.smem >= (scratch + bn * rwp + 2 * halo_words) * 8 + (rwp + 4 * bm) * 4
            assert not pack and scratch * 8 >= bm * 4 + bn // 64 * 4 * 16 * 72 * 4  # row terms, staging
            assert lines >= min(bm // ow + 1, 2 * 8)  # every output row of a tile
            tiles = -(-2 * 8 * ow // bm)
            assert 1 <= launch.grid[0] <= tiles and launch.grid[1] == -(-o // bn)
        else:
            assert f"XNORCORE_CONV_MMA({name}," in source
        assert launch.smem <= _gpu._functions[(0, name)].max_dynamic_shared_size_bytes
    if halo and not pack:  # small windows of narrow images fit; 200 words of 128 columns, or 20,000 pixels a line, do not
        assert {(1, 8), (9, 8), (9, 1), (9, 100)} <= took_halo
        assert not took_halo & {(200, 8), (9, 20000)}
    else:
        assert not took_halo


@pytest.mark.parametrize(("forced", "cc", "implicit"), [("", 90, True), ("", 80, True), ("popc", 90, False),
                                                         ("", 75, False)])
def test_config_names_the_conv_kernel(forced, cc, implicit, fake_cupy, monkeypatch):
    fake_cupy.cc = cc
    if forced:
        monkeypatch.setenv(_gpu.KERNEL_ENV, forced)
    info = _gpu.config()
    assert "unavailable" not in info, info
    assert ("implicit GEMM" in info["conv_kernel"]) == implicit
    if not implicit:
        assert info["conv_kernel"] == "GEMM rows on the popc kernel"
