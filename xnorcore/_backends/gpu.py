"""GPU backend (CuPy): the operations of the :mod:`xnorcore._backends` contract on cupy arrays.

Packing and the XNOR GEMM run the CUDA kernels in ``kernels/``; the other
operations (thresholds, the real first and last layers) run as cupy array
operations until they get kernels of their own.  The CUDA sources ship as
package data of ``xnorcore.kernels``; :func:`_module` reads one and makes one
``cupy.RawModule`` of it, which compiles it with NVRTC once per device (and
caches the binary on disk).

Three GEMM kernels exist:

``wgmma``
    Hopper's warpgroup tensor cores (``wgmma ... m64nNk256 ... .and.popc``),
    compute capability 9.0 alone (its code is built for ``sm_90a``, which no
    other architecture runs): a persistent kernel fed by TMA copies through a
    shared-memory ring, row popcounts from the same small kernel as ``mma``'s
    large tiles; int32 sums stored by TMA where the result's rows are whole
    16-byte units (``_WGMMA_TMA_STORE``).  Products below ``_WGMMA_MIN_MACS``
    go to ``mma``, which is as fast or faster there (host time and launches
    dominate).
``mma``
    Bit tensor cores (``mma.sync ... m16n8k256 ... .and.popc``), compute
    capability 8.0 and newer.  It needs the row popcounts of both operands:
    for large products (128 x 128 tiles) a small kernel computes them first,
    for small products (64 x 128 tiles) the GEMM kernel counts them itself and
    saves a launch.
``popc``
    CUDA cores with ``__popc``, for older GPUs.

The environment variable ``XNORCORE_GPU_KERNEL`` (``wgmma``, ``mma`` or
``popc``) forces one for every shape, for testing and benchmarking; it is read
at each call.
"""

import contextlib
import ctypes
import importlib.resources
import math
import os
import re
import threading

import numpy as np

from ..ops import PackedBits, n_words
from . import _common, _cublas

NAME = "gpu"

#: Training's backward passes are float products either way.  With each step
#: replayed as a CUDA graph (xnorcore.nn._graph) the step is bound by the device,
#: and the XNOR forward of dense layers trains 1.07-1.21x faster than the float one
#: at batches 512 to 8,192 (benchmarks/train_bench.py step, benchmarks/RESULTS.md).
#: The conv layers' XNOR forward, captured too, trains the recommended CNN as fast
#: as their float products at batches 256 and 512 and 2-4% faster from 1,024
#: (benchmarks/conv_train_bench.py, 5 epochs a fit).
prefers_xnor_training = True
prefers_xnor_conv_training = True

#: Environment variable that forces a GEMM kernel.
KERNEL_ENV = "XNORCORE_GPU_KERNEL"
_KERNELS = ("wgmma", "mma", "popc")
#: Oldest compute capability (major * 10 + minor) with b1 mma.sync m16n8k256.
_MMA_MIN_CC = 80
#: The one compute capability that runs sm_90a code (wgmma).
_WGMMA_CC = 90
#: NVRTC options of one kernel file beyond those of every file (see _compile_options):
#: wgmma exists only in the arch-specific sm_90a target.
_ARCH_OPTIONS = {"xnor_gemm_wgmma": ("-arch=sm_90a",)}

#: Benchmarks set this to "medium" or "small" to time one tile shape of the mma kernel.
_FORCE_MMA_VARIANT = None

_KERNEL_DETAIL = {
    "wgmma": "Hopper warpgroup tensor cores, wgmma m64nNk256 b1 AND + popcount, TMA-fed (mma for small products)",
    "mma": "bit tensor cores, mma.sync m16n8k256 b1 AND + popcount",
    "popc": "CUDA cores, __popc on 32-bit words",
}

_INSTALL_HINT = "install it with pip install 'xnorcore[gpu]'"

_modules = {}  # file stem -> cupy.RawModule (which compiles and keeps it per device)
_functions = {}  # (device id, kernel name) -> cupy.cuda.Function, launch attributes set
_launches = {}  # (device id, kernel, tile shape) -> launch parameters, see _gemm_launch
_plans = {}  # (device id, kernel override, mma tile override, wgmma schedule, m, n, width, k) -> launch
_MAX_PLANS = 4096
_devices = {}  # device id -> (compute capability as major * 10 + minor, multiprocessors)
_constants = {}  # file stem -> {NAME: int} of its "static constexpr int NAME = value;"

_INT32 = np.dtype(np.int32)

_PACK_DTYPES = {  # dtype -> kernel name suffix in kernels/pack.cu
    np.dtype(np.int8): "int8",
    np.dtype(np.int16): "int16",
    np.dtype(np.int32): "int32",
    np.dtype(np.int64): "int64",
    np.dtype(np.float32): "float32",
    np.dtype(np.float64): "float64",
}


_cupy_module = None


def _cupy(what="backend='gpu'"):
    """Import CuPy, or raise the RuntimeError that says how to get it."""
    global _cupy_module
    if _cupy_module is None:
        try:
            import cupy
        except ImportError:
            raise RuntimeError(f"{what} needs CuPy, which is not installed; {_INSTALL_HINT}") from None
        _cupy_module = cupy
    return _cupy_module


def require(what="backend='gpu'"):
    """Raise a clear RuntimeError if the GPU backend cannot run here; return cupy otherwise.

    This is xnorcore's one test for a usable GPU.  ``what`` names the request
    in the message ("backend='gpu'", "device='gpu'", "--device gpu").
    """
    cupy = _cupy(what)
    if _devices:
        return cupy  # a device was found and used before: the checks below are per process
    try:
        n_devices = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA driver errors come in several types
        raise RuntimeError(f"{what} but no CUDA device could be used ({exc})") from None
    if n_devices < 1:
        raise RuntimeError(f"{what} but no CUDA device was found (CuPy is installed, the machine has no GPU)")
    return cupy


def unavailable_reason():
    """Why the GPU backend cannot run here (a sentence), or None where it can."""
    try:
        require()
    except RuntimeError as exc:
        return str(exc)
    return None


def _source(stem):
    return importlib.resources.files("xnorcore.kernels").joinpath(f"{stem}.cu").read_text(encoding="utf-8")


def _constant(stem, name):
    """A tile size or block size declared in ``kernels/<stem>.cu``, so it is stated once."""
    if stem not in _constants:
        pattern = r"static\s+constexpr\s+int\s+(\w+)\s*=\s*(\d+)\s*;"
        _constants[stem] = {k: int(v) for k, v in re.findall(pattern, _source(stem))}
    return _constants[stem][name]


def _compile_options(stem):
    """The NVRTC options of ``kernels/<stem>.cu``: those of every file, then the file's own."""
    # -I: the kernels include kernels/xnor_layout.h, the bit layout stated once.
    include = f"-I{importlib.resources.files('xnorcore.kernels')}"
    return ("-std=c++17", include) + _ARCH_OPTIONS.get(stem, ())


def _module(stem):
    """The ``cupy.RawModule`` of ``kernels/<stem>.cu``; CuPy compiles it once per device."""
    module = _modules.get(stem)
    if module is None:
        module = _modules[stem] = _cupy().RawModule(code=_source(stem), options=_compile_options(stem))
    return module


def _device():
    """(compute capability, multiprocessor count) of the current device, cached."""
    cupy = _cupy()
    dev = cupy.cuda.runtime.getDevice()
    info = _devices.get(dev)
    if info is None:
        device = cupy.cuda.Device(dev)
        info = _devices[dev] = (int(device.compute_capability), device.attributes["MultiProcessorCount"])
    return info


def _function(stem, name, dynamic_smem=0):
    """Kernel ``name`` of ``kernels/<stem>.cu`` on the current device."""
    cupy = _cupy()
    key = (cupy.cuda.runtime.getDevice(), name)
    function = _functions.get(key)
    if function is None:
        raw = _module(stem).get_function(name)
        if dynamic_smem > 48 * 1024:  # the default limit; larger needs an opt-in
            raw.max_dynamic_shared_size_bytes = dynamic_smem
        # The cupy.cuda.Function under the RawKernel launches the same way,
        # without the RawKernel's per-call device lookup.
        function = _functions[key] = getattr(raw, "kernel", raw)
    return function


def _kernel_choice():
    """Which GEMM kernel runs on the current device: 'wgmma', 'mma' or 'popc'."""
    return _choose_kernel(os.environ.get(KERNEL_ENV, ""), _device()[0])


def _choose_kernel(forced, cc):
    """The GEMM kernel for compute capability ``cc`` (major * 10 + minor) and the
    value ``forced`` of ``XNORCORE_GPU_KERNEL`` ("" where unset)."""
    forced = forced.strip().lower()
    if forced:
        if forced not in _KERNELS:
            raise ValueError(f"{KERNEL_ENV} must be one of {_KERNELS} or unset, got {KERNEL_ENV}={forced!r}")
        if forced == "mma" and cc < _MMA_MIN_CC:
            raise RuntimeError(
                f"{KERNEL_ENV}=mma needs compute capability >= 8.0, this device has {cc // 10}.{cc % 10}"
            )
        if forced == "wgmma" and cc != _WGMMA_CC:
            raise RuntimeError(
                f"{KERNEL_ENV}=wgmma needs compute capability 9.0, this device has {cc // 10}.{cc % 10}"
            )
        return forced
    if cc == _WGMMA_CC:
        return "wgmma"
    return "mma" if cc >= _MMA_MIN_CC else "popc"


def to_device(x):
    """Copy a numpy array or a PackedBits with numpy words to the current GPU."""
    cupy = _cupy()
    if isinstance(x, PackedBits):
        if isinstance(x.words, cupy.ndarray):
            return x
        return PackedBits._trusted(_alloc(lambda: cupy.asarray(x.words), x.words.nbytes, "copy packed words"), x.shape, x.axis)
    if isinstance(x, cupy.ndarray):
        return x
    return _alloc(lambda: cupy.asarray(x), x.nbytes, f"copy an array of shape {x.shape}")


def _alloc(make, nbytes, what):
    """Run an allocation; out of device memory becomes a MemoryError with the sizes."""
    cupy = _cupy()
    try:
        return make()
    except cupy.cuda.memory.OutOfMemoryError as exc:
        raise _out_of_memory(nbytes, what, exc) from None


def _out_of_memory(nbytes, what, exc):
    return MemoryError(f"out of GPU memory: {nbytes} bytes ({nbytes / 2**30:.2f} GiB) requested to {what}; {exc}")


def _grid_1d(items, per_block, cap=65535):
    return (max(1, min(cap, math.ceil(items / per_block))),)


def _pack(kind, x, rows, length, grid, flag=None):
    """Run pack_<kind>_<dtype> on ``x``; return (words (rows, n_words), NaN flag).

    The flag is a one-element device array, not read here (see :mod:`xnorcore._backends`):
    ``flag`` where given, else a new one.
    """
    cupy = _cupy()
    width = n_words(length)
    words = _alloc(
        lambda: cupy.empty((rows, width), dtype=np.uint64), rows * width * 8, f"pack {rows} rows of {length} elements"
    )
    if words.size == 0:
        return words, False
    if flag is None:
        flag = cupy.zeros(1, dtype=np.int32)
    kernel = _function("pack", f"pack_{kind}_{_PACK_DTYPES[x.dtype]}")
    sizes = (np.int64(rows), np.int64(length)) if kind == "rows" else (np.int64(length), np.int64(rows))
    kernel(grid(width), (_constant("pack", "PACK_THREADS"),), (x,) + sizes + (np.int64(width), words, flag))
    return words, flag


def pack_rows(x, n_threads=None):
    """Pack the rows of a C-contiguous 2-D cupy array; see :mod:`xnorcore._backends`."""
    rows, length = x.shape
    return _pack("rows", x, rows, length, lambda width: _pack_rows_grid(rows, width))


_unread_flags = {}  # device id -> the NaN flag of the packers whose input is known finite


def _unread_flag():
    """A NaN flag that packing may set and nothing reads, one per device (no memset per call)."""
    cupy = _cupy()
    dev = cupy.cuda.runtime.getDevice()
    flag = _unread_flags.get(dev)
    if flag is None:
        flag = _unread_flags[dev] = cupy.zeros(1, dtype=np.int32)
    return flag


def pack_signs(x, n_threads=None):
    """The words of :func:`pack_rows` of rows known to hold no NaN; see :mod:`xnorcore._backends`."""
    rows, length = x.shape
    return _pack("rows", x, rows, length, lambda width: _pack_rows_grid(rows, width), _unread_flag())[0]


def _sign_pack(kind, x, rows, length, grid):
    """Run sign_pack_<kind>_float32 on float32 ``x``: (its signs as float32 in x's shape, words (rows, n_words))."""
    cupy = _cupy()
    x = cupy.ascontiguousarray(x, dtype=np.float32)
    width = n_words(length)
    signs = _alloc(lambda: cupy.empty(x.shape, dtype=np.float32), x.nbytes, "hold signs")
    words = _alloc(lambda: cupy.empty((rows, width), dtype=np.uint64), rows * width * 8, f"pack {rows} rows of signs")
    if words.size:
        sizes = (np.int64(rows), np.int64(length)) if kind == "rows" else (np.int64(length), np.int64(rows))
        args = (x,) + sizes + (np.int64(width), words, _unread_flag(), signs)
        _function("pack", f"sign_pack_{kind}_float32")(grid(width), (_constant("pack", "PACK_THREADS"),), args)
    return signs, words


def sign_pack_rows(x, n_threads=None):
    """``sign(x)`` of float32 rows as float32 and its words, in one kernel; see :mod:`xnorcore._backends`."""
    rows, length = x.shape
    return _sign_pack("rows", x, rows, length, lambda width: _pack_rows_grid(rows, width))


def sign_pack_cols(w, n_threads=None):
    """``sign(w)`` as float32 and its words along the first axis, in one kernel; see :mod:`xnorcore._backends`."""
    length, cols = w.shape
    threads = _constant("pack", "PACK_THREADS")
    return _sign_pack("cols", w, cols, length, lambda width: (math.ceil(cols / threads), min(width, 65535)))


_elementwise = {}  # name -> cupy.ElementwiseKernel of the one-pass array operations below


def _elementwise_kernel(name, in_params, out_params, body):
    kernel = _elementwise.get(name)
    if kernel is None:
        kernel = _elementwise[name] = _cupy().ElementwiseKernel(in_params, out_params, body, f"xnorcore_{name}")
    return kernel


def signs(x, dtype):
    """+1 where ``x >= 0``, -1 elsewhere (NaN too), as ``dtype``, one kernel; see :mod:`xnorcore._backends`."""
    out = _alloc(lambda: _cupy().empty(x.shape, dtype=dtype), x.size * np.dtype(dtype).itemsize, "hold signs")
    _elementwise_kernel("signs", "T x", "Y y", "y = x >= 0 ? (Y)1 : (Y)-1")(x, out)
    return out


def ste_grad(dy, x):
    """``dy`` where ``|x| <= 1``, ``dy * 0`` elsewhere, one kernel; see :mod:`xnorcore._backends`."""
    return _elementwise_kernel("ste_grad", "T dy, T x", "T dx", "dx = dy * (abs(x) <= (T)1 ? (T)1 : (T)0)")(dy, x)


#: Blocks of a column_sums launch to aim for (a few per multiprocessor).
_COLUMN_SUMS_BLOCKS = 512


def _column_sums(a, b):
    """Partial float64 sums of ``a`` and ``a * b`` per column (kernels/batch_norm.cu): (partial, splits)."""
    cupy = _cupy()
    rows, cols = a.shape
    col_blocks = -(-cols // _constant("batch_norm", "BN_COLS"))
    splits = max(1, min(-(-rows // 64), _COLUMN_SUMS_BLOCKS // col_blocks))
    per_split = -(-rows // splits)
    splits = -(-rows // per_split)
    partial = cupy.empty((splits, 2, cols), dtype=np.float64)
    name = "column_sums_int32" if a.dtype == _INT32 else "column_sums_float32"
    _function("batch_norm", name)(
        (col_blocks, splits), (_constant("batch_norm", "BN_COLS"), _constant("batch_norm", "BN_ROWS")),
        (a, b, np.int64(rows), np.int64(cols), np.int64(per_split), partial),
    )
    return partial, splits


def batch_norm_train(z, gamma, beta, running_mean, running_var, momentum, eps):
    """Batch norm of a training step over the rows of ``z``, fused; see :mod:`xnorcore._backends`."""
    cupy = _cupy()
    if z.dtype != _INT32:
        z = cupy.ascontiguousarray(z, dtype=np.float32)
    rows, cols = z.shape
    partial, splits = _column_sums(z, z)
    stats = cupy.empty((3, cols), dtype=np.float32)  # mean, var, 1 / sqrt(var + eps)
    f32 = np.float32
    _function("batch_norm", "batch_norm_stats")(
        _grid_1d(cols, 256), (256,),
        (partial, np.int32(splits), np.int64(rows), np.int64(cols), f32(eps), f32(momentum),
         f32(rows / max(rows - 1, 1)), stats[0], stats[1], stats[2], running_mean, running_var),
    )
    xhat = _alloc(lambda: cupy.empty((rows, cols), dtype=np.float32), 4 * z.size, "hold batch norm's xhat")
    out = cupy.empty_like(xhat)
    _elementwise_kernel(
        "batch_norm_apply",
        "T z, float32 mean, float32 inv_std, float32 gamma, float32 beta", "float32 xhat, float32 out",
        "xhat = __fmul_rn(__fsub_rn((float)z, mean), inv_std); out = __fadd_rn(__fmul_rn(xhat, gamma), beta)",
    )(z, stats[0], stats[2], gamma, beta, xhat, out)
    return out, xhat, stats[2]


def batch_norm_backward(dy, xhat, inv_std, gamma):
    """Gradients of :func:`batch_norm_train`, fused; see :mod:`xnorcore._backends`."""
    cupy = _cupy()
    dy = cupy.ascontiguousarray(dy, dtype=np.float32)
    rows, cols = dy.shape
    partial, splits = _column_sums(dy, xhat)
    grads = cupy.empty((2, cols), dtype=np.float32)  # beta_grad, gamma_grad
    _function("batch_norm", "batch_norm_grads")(
        _grid_1d(cols, 256), (256,), (partial, np.int32(splits), np.int64(cols), grads)
    )
    # gamma * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat)), rounded as ChannelBatchNorm's array path.
    dx = _elementwise_kernel(
        "batch_norm_grad",
        "float32 dy, float32 xhat, float32 gamma, float32 inv_std, float32 beta_grad, float32 gamma_grad, float32 m",
        "float32 dx",
        "dx = __fmul_rn(__fsub_rn(dy, __fadd_rn(__fmul_rn(xhat, __fdiv_rn(gamma_grad, m)), __fdiv_rn(beta_grad, m))),"
        " __fmul_rn(gamma, inv_std))",
    )(dy, xhat, gamma, inv_std, grads[0], grads[1], np.float32(rows))
    return dx, grads[1], grads[0]


_adam_kernels = {}  # False / True (step read from a device array) -> cupy.ElementwiseKernel

#: One Adam step in place: the float32 operations of Adam.step's array path, each
#: rounded on its own (no contraction into fused multiply-adds), so both agree bit
#: for bit.  ``STEP`` is the step size: an argument, or the element of a device array.
_ADAM_BODY = """
const float mi = __fadd_rn(__fmul_rn(m, b1), __fmul_rn(g, c1));
const float vi = __fadd_rn(__fmul_rn(v, b2), __fmul_rn(__fmul_rn(g, g), c2));
m = mi;
v = vi;
float pi = __fsub_rn(p, __fmul_rn(__fdiv_rn(mi, __fadd_rn(__fsqrt_rn(vi), eps)), STEP));
if (clip) pi = pi > 1.0f ? 1.0f : (pi < -1.0f ? -1.0f : pi);  // NaN stays NaN, as in clip
p = pi;
"""


def adam_update(p, g, m, v, b1, b2, eps, step, clip, n_threads=None):
    """One Adam step in place, one kernel; see :mod:`xnorcore._backends`.

    ``step`` may be a one-element float32 cupy array: the kernel reads it when
    it runs, so a captured CUDA graph of the step takes a new step size at each
    replay (:mod:`xnorcore.nn._graph`).
    """
    cupy = _cupy()
    on_device = isinstance(step, cupy.ndarray)
    kernel = _adam_kernels.get(on_device)
    if kernel is None:
        step_param = "raw float32 step" if on_device else "float32 step"
        kernel = _adam_kernels[on_device] = cupy.ElementwiseKernel(
            f"float32 g, float32 b1, float32 c1, float32 b2, float32 c2, float32 eps, {step_param}, bool clip",
            "float32 p, float32 m, float32 v",
            _ADAM_BODY.replace("STEP", "step[0]" if on_device else "step"),
            "xnorcore_adam_update_dev" if on_device else "xnorcore_adam_update",
        )
    f32 = np.float32
    if on_device and (step.dtype != f32 or step.size != 1):
        raise ValueError(f"step must be a float or a one-element float32 array, got {step.dtype} {step.shape}")
    kernel(g, f32(b1), f32(1 - b1), f32(b2), f32(1 - b2), f32(eps), step if on_device else f32(step), bool(clip),
           p, m, v)


#: No bfloat16 products on the GPU (``BNNClassifier(backward_dtype="bfloat16")`` is refused there).
bf16_matmul = None
prefers_bf16_backward = False


def training_context(bf16_backward):
    """Nothing to set for a fit on the GPU; see :mod:`xnorcore._backends`."""
    return contextlib.nullcontext()


def matmul(a, b):
    """``a @ b`` of training's 2-D products: float32 on cuBLAS directly (:mod:`._cublas`: CuPy's
    products cannot be captured into a CUDA graph), anything else through cupy; see :mod:`xnorcore._backends`."""
    if a.dtype == np.float32 and b.dtype == np.float32 and a.ndim == b.ndim == 2:
        return _cublas.matmul(a, b)
    return a @ b


def _pack_rows_grid(rows, width):
    """The grid of pack_rows (or threshold_pack_float32) that gives each warp one task."""
    per_warp = _constant("pack", "PACK_WORDS_PER_WARP")
    return _grid_1d(-(-(rows * width) // per_warp), _constant("pack", "PACK_THREADS") // 32)


def pack_cols(x, n_threads=None):
    """Pack a C-contiguous (L, R) cupy array along its first axis; see :mod:`xnorcore._backends`."""
    length, cols = x.shape
    threads = _constant("pack", "PACK_THREADS")
    return _pack("cols", x, cols, length, lambda width: (math.ceil(cols / threads), min(width, 65535)))


def _row_popcounts(a_words, b_words):
    """Row popcounts of both operands in one int32 array: those of a, then those of b."""
    cupy = _cupy()
    (m, width), n = a_words.shape, b_words.shape[0]
    counts = cupy.empty(m + n, dtype=np.int32)
    threads = _constant("pack", "POPCOUNT_THREADS")
    _function("pack", "row_popcounts")(
        _grid_1d(m + n, threads // 32), (threads,), (a_words, np.int64(m), b_words, np.int64(n), np.int64(width), counts)
    )
    return counts


def _even_width(words):
    """C-contiguous words with an even number of words per row, from a 16-byte aligned address:
    16-byte aligned rows, which both cp.async and TMA need."""
    cupy = _cupy()
    if words.shape[1] % 2 == 0:
        if not words.flags.c_contiguous:
            return cupy.ascontiguousarray(words)
        return words if words.data.ptr % 16 == 0 else words.copy()
    padded = cupy.zeros((words.shape[0], words.shape[1] + 1), dtype=np.uint64)
    padded[:, :-1] = words
    return padded


def _mma_variant(m, n):
    """Tile shape of the mma kernel for an (m, n) product."""
    if _FORCE_MMA_VARIANT:
        return _FORCE_MMA_VARIANT
    blocks = -(-m // _constant("xnor_gemm_mma", "MEDIUM_BM")) * -(-n // _constant("xnor_gemm_mma", "MEDIUM_BN"))
    # Medium tiles once they fill every multiprocessor twice; below that the
    # small ones spread the work over more multiprocessors and, fusing the row
    # popcounts, save a launch where host time dominates.
    return "medium" if blocks >= 2 * _device()[1] else "small"


def _gemm_launch(kernel, variant=None):
    """(function, BM, BN, threads, dynamic shared memory) of a GEMM kernel, cached per device."""
    cupy = _cupy()
    key = (cupy.cuda.runtime.getDevice(), kernel, variant)
    launch = _launches.get(key)
    if launch is None:
        if kernel == "mma":
            def const(name):
                return _constant("xnor_gemm_mma", f"{variant.upper()}_{name}")

            bm, bn = const("BM"), const("BN")
            smem = const("STAGES") * (bm + bn) * 64
            threads = const("WARPS_M") * const("WARPS_N") * 32
            function = _function("xnor_gemm_mma", f"xnor_gemm_mma_{variant}", smem)
        else:
            bm, bn = _constant("xnor_gemm_popc", "BM"), _constant("xnor_gemm_popc", "BN")
            smem, threads = 0, _constant("xnor_gemm_popc", "THREADS")
            function = _function("xnor_gemm_popc", "xnor_gemm_popc")
        launch = _launches[key] = (function, bm, bn, threads, smem)
    return launch


class _GemmLaunch:
    """A GEMM launch for one device, kernel and (m, n, k): grid, block and arguments.

    The launch goes through ``cuLaunchKernel`` (``cupy.cuda.driver.launchKernel``)
    with an argument block kept from call to call: each call writes only the
    array addresses into it (None passes a null pointer, for an argument the
    kernel does not read).  That takes less host time than a
    ``cupy.cuda.Function`` call, which converts every argument each time, and
    for small products host time is most of a call (benchmarks/RESULTS.md,
    "N=1024: host time").  Every kernel argument is 8 bytes
    (pointers and non-negative ``long long``), so the block is one uint64 array.
    """

    __slots__ = ("function", "grid", "block", "smem", "variant", "values", "params", "params_address")

    def __init__(self, function, grid, block, smem, variant, scalars, n_arrays=None):
        self.function, self.grid, self.block, self.smem, self.variant = function, grid, block, smem, variant
        if n_arrays is None:
            n_arrays = 3 if variant is None else 4  # a, b, [counts,] out
        self.values = (ctypes.c_uint64 * (n_arrays + len(scalars)))(*([0] * n_arrays), *scalars)
        base = ctypes.addressof(self.values)
        self.params = (ctypes.c_void_p * len(self.values))(*(base + 8 * i for i in range(len(self.values))))
        self.params_address = ctypes.addressof(self.params)

    def __call__(self, *arrays):
        values = self.values
        grid, block = self.grid, self.block
        with _launch_lock:  # one argument block per launch shape: one launch at a time
            for i, array in enumerate(arrays):
                values[i] = 0 if array is None else array.data.ptr
            _cupy().cuda.driver.launchKernel(
                self.function.ptr, grid[0], grid[1], 1, block[0], 1, 1, self.smem,
                _current_stream_ptr(), self.params_address, 0,
            )


_launch_lock = threading.Lock()


def _current_stream_ptr():
    return _cupy().cuda.get_current_stream().ptr


# --- wgmma kernel: TMA tensor maps and launch ---------------------------------------

#: wgmma variants, by the file's constant prefix: "coop" (128 x 256 tiles, both
#: consumer warpgroups on one tile) and "ping" (128 x 128 tiles, alternating),
#: the one used: one warpgroup's stores overlap the other's products.
_WGMMA_VARIANT = "ping"
#: The fused layer's schedule; None chooses by the width of the layer.  With no
#: int32 store to hide, coop's 256-column tiles (fewer operand bytes per
#: product) are the faster, where the layer has more than 128 outputs; narrower
#: layers take ping's 128-column tiles, which waste fewer of the products
#: (benchmarks/RESULTS.md).
_WGMMA_PACK_VARIANT = None
#: Products below this many multiply-accumulates go to the mma kernel when the
#: kernel is chosen automatically: below it the mma kernel measured as fast or
#: faster (benchmarks/RESULTS.md).
_WGMMA_MIN_MACS = 2**36

_CU_TENSOR_MAP = {"int32": 3, "uint64": 4, "swizzle_128b": 3, "l2_256b": 3}
#: Whether ping stores its int32 sums through TMA (``xnor_gemm_wgmma_ping_tma``) where
#: the rows of the result are whole 16-byte units (n % 4 == 0): the warpgroup goes on
#: to its next tile while the copy engine writes the last one (benchmarks/RESULTS.md).
_WGMMA_TMA_STORE = True
_tensor_map_encode = None
_tensor_maps = {}  # (device address, rows, elements per row, box rows, dtype) -> 128 bytes
_MAX_TENSOR_MAPS = 256


def _encode_function():
    """cuTensorMapEncodeTiled from the driver library (CuPy does not wrap it)."""
    global _tensor_map_encode
    if _tensor_map_encode is None:
        fn = ctypes.CDLL("libcuda.so.1").cuTensorMapEncodeTiled
        fn.restype = ctypes.c_int
        fn.argtypes = [
            ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint64),
            ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint32),
            ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
        ]
        _tensor_map_encode = fn
    return _tensor_map_encode


def _tensor_map(ptr, rows, width, box_rows, dtype="uint64"):
    """The TMA tensor map of ``rows`` x ``width`` elements at ``ptr``: uint64 words in
    (16, box_rows) boxes, or int32 sums in (32, box_rows) boxes; 128-byte swizzle (a box
    row is 128 bytes), zeros outside.  Kept per address and shape (encoding is host time)."""
    key = (ptr, rows, width, box_rows, dtype)
    data = _tensor_maps.get(key)
    if data is None:
        size = 8 if dtype == "uint64" else 4
        out = (ctypes.c_uint64 * 16)()
        dims = (ctypes.c_uint64 * 2)(width, rows)
        strides = (ctypes.c_uint64 * 1)(size * width)
        box = (ctypes.c_uint32 * 2)(_constant("xnor_gemm_wgmma", "WG_ROW_BYTES") // size, box_rows)
        unit = (ctypes.c_uint32 * 2)(1, 1)
        status = _encode_function()(
            out, _CU_TENSOR_MAP[dtype], 2, ptr, dims, strides, box, unit,
            0, _CU_TENSOR_MAP["swizzle_128b"], _CU_TENSOR_MAP["l2_256b"], 0,
        )
        if status != 0:
            what = "words" if dtype == "uint64" else f"{dtype} sums"
            raise RuntimeError(f"cuTensorMapEncodeTiled failed with CUresult {status} for {rows} x {width} {what}")
        if len(_tensor_maps) >= _MAX_TENSOR_MAPS:
            _tensor_maps.clear()
        data = _tensor_maps[key] = bytes(out)
    return data


class _WgmmaLaunch:
    """A launch of the wgmma kernel for one device and (m, n, k): like :class:`_GemmLaunch`,
    with the two 128-byte tensor maps of the operands as the first arguments.  With
    ``pack`` it is the fused layer's kernel, whose output is words and which reads
    the column bounds after the kernel's usual arguments."""

    __slots__ = ("function", "grid", "smem", "bm", "bn", "m", "n", "width", "store", "store_rows", "maps", "values",
                 "params", "params_address")
    variant = "wgmma"

    def __init__(self, function, grid, smem, bm, bn, m, n, width, k, pack=False, store=False):
        self.function, self.grid, self.smem = function, grid, smem
        self.bm, self.bn, self.m, self.n, self.width, self.store = bm, bn, m, n, width, store
        self.store_rows = _constant("xnor_gemm_wgmma", "WG_STORE_BOX_ROWS") if store else 0  # rows of a store box
        # the operands' tensor maps, and with ``store`` the result's (TMA stores)
        self.maps = tuple((ctypes.c_uint64 * 16)() for _ in range(3 if store else 2))
        # counts, out, m, n, words, k (and for pack: bounds, words per output row)
        values = [0, 0, m, n, width, k] + ([0, n_words(n)] if pack else [])
        self.values = (ctypes.c_uint64 * len(values))(*values)
        base = ctypes.addressof(self.values)
        pointers = [ctypes.addressof(tensor_map) for tensor_map in self.maps]
        pointers += [base + 8 * i for i in range(len(values))]
        self.params = (ctypes.c_void_p * len(pointers))(*pointers)
        self.params_address = ctypes.addressof(self.params)

    def __call__(self, a_words, b_words, counts, out, bounds=None):
        map_a = _tensor_map(a_words.data.ptr, self.m, self.width, self.bm)
        map_b = _tensor_map(b_words.data.ptr, self.n, self.width, self.bn)
        if self.store:
            map_c = _tensor_map(out.data.ptr, self.m, self.n, self.store_rows, "int32")
        with _launch_lock:
            ctypes.memmove(self.maps[0], map_a, 128)
            ctypes.memmove(self.maps[1], map_b, 128)
            if self.store:
                ctypes.memmove(self.maps[2], map_c, 128)
            self.values[0] = counts.data.ptr
            self.values[1] = out.data.ptr
            if bounds is not None:
                self.values[6] = bounds.data.ptr
            _cupy().cuda.driver.launchKernel(
                self.function.ptr, self.grid, 1, 1, _constant("xnor_gemm_wgmma", "WG_THREADS"), 1, 1,
                self.smem, _current_stream_ptr(), self.params_address, 0,
            )


def _wgmma_shape(variant, store=False):
    """(BM, BN, dynamic shared memory in bytes) of wgmma schedule ``variant``: the stages, their
    barriers and the slack that aligns the ring to the 1024 bytes of the 128-byte swizzle;
    with ``store`` (ping's TMA stores), its stages and each warpgroup's staging and column terms."""
    def const(name):
        return _constant("xnor_gemm_wgmma", f"{variant.upper()}_{name}")

    bm, bn = const("BM"), const("BN")
    row_bytes = _constant("xnor_gemm_wgmma", "WG_ROW_BYTES")
    stages = const("TMA_STAGES") if store else const("STAGES")
    staging = 2 * (_constant("xnor_gemm_wgmma", "WG_STAGING_BYTES") + 4 * bn) if store else 0
    # Per stage: the A and B rows and a full and an empty mbarrier; then the two order barriers.
    return bm, bn, 1024 + stages * ((bm + bn) * row_bytes + 16) + 16 + staging


def _wgmma_plan(m, n, width, k, pack=False, variant=None):
    """A :class:`_WgmmaLaunch`, or None where the kernel cannot take the shape."""
    if variant is None and pack:
        variant = _WGMMA_PACK_VARIANT or ("coop" if n > _constant("xnor_gemm_wgmma", "PING_BN") else "ping")
    variant = variant or _WGMMA_VARIANT
    store = _WGMMA_TMA_STORE and variant == "ping" and not pack and n % 4 == 0
    bm, bn, smem = _wgmma_shape(variant, store)
    if max(m, n) + max(bm, bn) >= 2**31 or k >= 2**31:  # TMA coordinates and the kernel's tile indices are int32
        return None
    name = f"xnor_gemm_wgmma_{variant}" + ("_pack" if pack else "_tma" if store else "")
    function = _function("xnor_gemm_wgmma", name, smem)
    tiles = -(-m // bm) * -(-n // bn)
    return _WgmmaLaunch(function, min(tiles, _device()[1]), smem, bm, bn, m, n, width, k, pack, store)


def _plan(m, n, width, k, pack=False):
    """The launch (:class:`_GemmLaunch`, :class:`_WgmmaLaunch`) of an (m, n) product over ``width`` words of ``k`` bits.

    Cached per device, kernel choice and shape, so that a call of a shape seen
    before spends its host time on the launch alone.  With ``pack``, the fused
    layer's wgmma launch, or None where the wgmma kernel does not run (the layer
    then runs as a product and a separate threshold-pack, more host time and
    memory traffic than the fused kernel at any size, so small layers take it too).
    """
    cupy = _cupy()
    forced = os.environ.get(KERNEL_ENV)
    key = (cupy.cuda.runtime.getDevice(), forced, _FORCE_MMA_VARIANT, _WGMMA_VARIANT, _WGMMA_PACK_VARIANT,
           _WGMMA_TMA_STORE, m, n, width, k, pack)
    if key in _plans:
        return _plans[key]
    kernel = _kernel_choice()
    plan = None
    if kernel == "wgmma":
        small = not forced and not pack and m * n * k < _WGMMA_MIN_MACS
        plan = None if small else _wgmma_plan(m, n, width, k, pack)
        if plan is None:
            kernel = "mma"
    if kernel != "wgmma" and not pack:
        variant = _mma_variant(m, n) if kernel == "mma" else None
        function, bm, bn, threads, smem = _gemm_launch(kernel, variant)
        plan = _GemmLaunch(function, (-(-m // bm), -(-n // bn)), (threads,), smem, variant, (m, n, width, k))
    if len(_plans) >= _MAX_PLANS:
        _plans.clear()
    _plans[key] = plan
    return plan


def _operands(a_words, b_words, k, padded=False):
    """The words of both operands as the kernels read them: ceil(k / 64) words per row
    (a mismatch would read past the arrays, so it is checked although ops never passes
    one), rows of an even number of words back to back from 16-byte aligned addresses.
    ``padded``: rows may hold more words, as long as both have as many (the conv's
    rows, whose every tap fills whole words; padding bits are clear in both)."""
    width = n_words(k)
    a_width, b_width = a_words.shape[1], b_words.shape[1]
    if (a_width != b_width or a_width < width) if padded else (a_width != width or b_width != width):
        raise ValueError(
            f"a_words and b_words must both have ceil(k / 64) = {width} words per row, "
            f"got a_words.shape={tuple(a_words.shape)}, b_words.shape={tuple(b_words.shape)}, k={k}"
        )
    # (Comparing strides costs less host time than building ``flags``.)
    width = a_width
    dense = (8 * width, 8)
    if width % 2 or a_words.strides != dense or a_words.data.ptr % 16:
        a_words = _alloc(lambda: _even_width(a_words), a_words.nbytes, "align the words of a")
    if width % 2 or b_words.strides != dense or b_words.data.ptr % 16:
        b_words = _alloc(lambda: _even_width(b_words), b_words.nbytes, "align the words of b")
    return a_words, b_words


def xnor_gemm(a_words, b_words, k, n_threads=None, padded=False, counts=None):
    """``k - 2 popcount(a XOR b)`` for every row pair; see :mod:`xnorcore._backends`
    (``padded``: see :func:`_operands`; ``counts``: the row popcounts of both operands,
    as :func:`_row_popcounts` gives them, where the caller has them already)."""
    a_words, b_words = _operands(a_words, b_words, k, padded)
    m, n = a_words.shape[0], b_words.shape[0]
    cupy = _cupy()
    try:  # _alloc's work, without building its message on every call of this hot path
        out = cupy.ndarray((m, n), dtype=_INT32)
    except cupy.cuda.memory.OutOfMemoryError as exc:
        raise _out_of_memory(4 * m * n, f"hold the ({m}, {n}) int32 product", exc) from None
    launch = _plan(m, n, a_words.shape[1], k)
    if launch.variant in ("medium", "wgmma"):
        launch(a_words, b_words, _row_popcounts(a_words, b_words) if counts is None else counts, out)
    elif launch.variant == "small":  # counts the row popcounts itself; the argument is not read
        launch(a_words, b_words, out, out)
    else:
        launch(a_words, b_words, out)
    return out


def config():
    """Describe the GPU backend; never raises.

    Returns
    -------
    info : dict
        ``cupy`` (version or None), ``device``, ``compute_capability``,
        ``kernel`` ("wgmma", "mma" or "popc") with ``kernel_detail``, ``conv_kernel``
        (what runs ``binary_conv2d``) and, where the GPU cannot be used, ``unavailable``
        with the reason.
    """
    info = {"cupy": None, "device": None, "compute_capability": None, "kernel": None}
    try:
        cupy = _cupy()
        info["cupy"] = cupy.__version__
        require()
        device = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(device.id)
        name = props["name"]
        info["device"] = name.decode() if isinstance(name, bytes) else str(name)
        cc = int(device.compute_capability)
        info["compute_capability"] = f"{cc // 10}.{cc % 10}"
        info["kernel"] = _kernel_choice()
        info["kernel_detail"] = _KERNEL_DETAIL[info["kernel"]]
        from . import gpu_conv  # it imports this module

        info["conv_kernel"] = gpu_conv.describe()
    except Exception as exc:  # config() reports problems, it never raises them
        info["unavailable"] = str(exc)
    return info


_deferred = threading.local()
_NAN_SUMS = _common.NAN_SUMS


@contextlib.contextmanager
def deferred_nan_checks():
    """Within the block, :func:`threshold_pack` queues its NaN checks instead of waiting for
    the device at each call; they are read together at its end (one wait)."""
    cupy = _cupy()
    outer = getattr(_deferred, "flags", None)
    flags = _deferred.flags = []
    try:
        yield
    finally:
        _deferred.flags = outer
    if flags and bool(cupy.concatenate(flags).any()):
        raise ValueError(_NAN_SUMS)


def threshold_pack(z, direction, threshold, n_threads=None):
    """Words of the signs of ``direction * z - threshold``; see :mod:`xnorcore._backends`.

    float32 sums (a real first layer's) take one kernel, the float32 operations
    of the array path; other sums go through those array operations.  NaN sums
    are an error, raised here or at the end of :func:`deferred_nan_checks`.
    """
    cupy = _cupy()
    direction, threshold = cupy.asarray(direction), cupy.asarray(threshold)
    if not (z.ndim == 2 and z.dtype == np.float32 and threshold.dtype == np.float32 and z.flags.c_contiguous):
        return _common.threshold_pack(z, direction, threshold)
    rows, length = z.shape
    width = n_words(length)
    words = _alloc(lambda: cupy.empty((rows, width), dtype=np.uint64), 8 * rows * width, "hold the layer's words")
    if words.size:
        flag = cupy.zeros(1, dtype=np.int32)
        _function("pack", "threshold_pack_float32")(
            _pack_rows_grid(rows, width), (_constant("pack", "PACK_THREADS"),),
            (z, np.int64(rows), np.int64(length), np.int64(width), cupy.ascontiguousarray(direction, dtype=np.int8),
             cupy.ascontiguousarray(threshold), words, flag),
        )
        deferred = getattr(_deferred, "flags", None)
        if deferred is not None:
            deferred.append(flag)
        elif int(flag[0]):  # sums past the float32 range (inf - inf), as pack_bits refuses them
            raise ValueError(_NAN_SUMS)
    return words


def xnor_gemm_threshold_pack(a_words, b_words, k, direction, threshold, n_threads=None, padded=False,
                             counts=None, bounds=None):
    """The binary layer: :func:`xnor_gemm`, then :func:`threshold_pack` on its sums.

    Where the wgmma kernel runs the product, one fused kernel: the sums never leave
    its registers, and only the words are stored.  ``padded`` and ``counts`` as for
    :func:`xnor_gemm`; ``bounds``: :func:`column_bounds` of these weights and
    thresholds, where the caller keeps them.
    """
    cupy = _cupy()
    m, n = a_words.shape[0], b_words.shape[0]
    if m == 0 or n == 0:
        return cupy.zeros((m, n_words(n)), dtype=np.uint64)
    a, b = _operands(a_words, b_words, k, padded)
    # The fused kernel compares integers whose terms stay within int32 (3 k < 2**31: its column
    # bounds, kernels/pack.cu); a and b are aligned now, hence padded=True below.
    integer = np.dtype(threshold.dtype).kind in "iu" and 3 * k < 2**31
    fused = _plan(m, n, a.shape[1], k, pack=True) if integer else None
    if fused is None:
        return threshold_pack(xnor_gemm(a, b, k, padded=True, counts=counts), direction, threshold)
    if counts is None:
        counts = _row_popcounts(a, b)
    if bounds is None:
        bounds = column_bounds(counts[m:], direction, threshold)
    out = _alloc(lambda: cupy.empty((m, n_words(n)), dtype=np.uint64), 8 * m * n_words(n), "hold the layer's words")
    fused(a, b, counts, out, bounds)
    return out


def column_bounds(b_counts, direction, threshold):
    """The fused layer's per-column tests (int32 (columns, 2), whole tiles of any
    schedule) from the weights' row popcounts and the layer's direction and threshold."""
    cupy = _cupy()
    n = b_counts.shape[0]
    tile = max(_constant("xnor_gemm_wgmma", "COOP_BN"), _constant("xnor_gemm_wgmma", "PING_BN"))
    padded = -(-n // tile) * tile
    bounds = _alloc(lambda: cupy.empty((padded, 2), dtype=_INT32), 8 * padded, "hold the layer's column bounds")
    threads = _constant("pack", "POPCOUNT_THREADS")
    _function("pack", "column_bounds")(
        _grid_1d(padded, threads), (threads,),
        (b_counts, cupy.asarray(direction, dtype=np.int8), cupy.asarray(threshold, dtype=_INT32),
         np.int64(n), np.int64(padded), bounds),
    )
    return bounds


#: Rows per block of a packed predict (PackedModel.decision_function): the
#: device takes large blocks, where the host keeps its blocks in cache.
PREDICT_ROWS = 32768

#: Output layers of at most this many units run as signed_sums (one kernel).
SIGNED_SUMS_MAX_UNITS = 16


#: cuBLAS's names for what the bfloat16 first layer multiplies (library_types.h, cublas_api.h).
_CUDA_R_32F, _CUDA_R_16BF, _CUBLAS_COMPUTE_32F, _CUBLAS_GEMM_DEFAULT = 0, 14, 68, -1
#: The bfloat16 operands' rows are whole 16-byte units, as the tensor cores read them.
_BF16_ALIGN = 8
_ONE_F32, _ZERO_F32 = np.ones(1, dtype=np.float32), np.zeros(1, dtype=np.float32)


def _split_bf16x3(x, mean, scale, blocks=3):
    """The bfloat16 parts of the float32 rows ``(x - mean) / scale`` of a C-contiguous float32
    ``x`` (R, k): uint16 (R, blocks, kp), kp = k rounded up to whole 16 bytes, zeros past k;
    ``blocks`` 3 for ``b1, b2, b3``, 6 for ``b1, b2, b3, b1, b2, b1``."""
    cupy = _cupy()
    rows, k = x.shape
    kp = -(-k // _BF16_ALIGN) * _BF16_ALIGN
    parts = _alloc(lambda: cupy.empty((rows, blocks, kp), dtype=np.uint16), 2 * rows * blocks * kp,
                   "split rows into bfloat16")
    if parts.size:
        threads = _constant("real", "SPLIT_THREADS")
        _function("real", "split_bf16x3")(
            (min(rows, 2**31 - 1),), (threads,),
            (x, np.int64(rows), np.int64(k), mean, scale, np.int64(kp), np.int32(blocks), parts),
        )
    return parts


def prepare_input_layer(w, mean, scale):
    """The first layer's weights and the input standardization, on the device.

    The weights are split into three bfloat16 parts, ``w = c1 + c2 + c3``,
    stacked to meet the row parts of :func:`input_layer`: ``b1, b2, b3`` times
    ``c1``, ``b1, b2`` times ``c2`` and ``b1`` times ``c3``, every product of
    parts down to ``2^-24`` of ``|x| |w|``, in one product with six times the
    rows' length.  Weights that bfloat16 holds (the +-1 of binary weights)
    have ``c2 = c3 = 0``: three times the length, ``c1`` only.
    """
    cupy = _cupy()
    w = cupy.ascontiguousarray(to_device(w), dtype=np.float32)
    mean, scale = cupy.asarray(mean, dtype=np.float32), cupy.asarray(scale, dtype=np.float32)
    k, n = w.shape
    kp = -(-k // _BF16_ALIGN) * _BF16_ALIGN
    # The columns of w.T are the rows of w: its split along n, moved to (part, k, n).
    c = _split_bf16x3(cupy.ascontiguousarray(w.T), cupy.zeros(k, dtype=np.float32),
                      cupy.ones((), dtype=np.float32))[:, :, :k].transpose(1, 2, 0)
    order = (0, 0, 0) if not bool(c[1:].any()) else (0, 0, 0, 1, 1, 2)
    stacked = cupy.zeros((len(order), kp, n), dtype=np.uint16)
    for block, part in enumerate(order):
        stacked[block, :k] = c[part]
    return w, mean, scale, stacked.reshape(len(order) * kp, n)


def input_layer(x, prepared):
    """First-layer sums of raw rows (numpy or cupy), standardized on the device in float32.

    ``(x - mean) / scale`` rounds in float32 as it does on the host.  The rows
    are split into three bfloat16 parts that sum to them exactly
    (``split_bf16x3`` in ``kernels/real.cu``), and one tensor-core product of
    the rows' and the weights' parts (:func:`prepare_input_layer`) adds up in
    float32: the sums of a float32 product, but for the order of the
    additions and terms below ``2^-24`` of a product, at about twice the
    speed of cuBLAS in float32 (four times with +-1 weights) on an H200.
    """
    cupy = _cupy()
    w, mean, scale, stacked = prepared
    x = cupy.ascontiguousarray(to_device(x), dtype=np.float32)
    rows, n = x.shape[0], w.shape[1]
    out = _alloc(lambda: cupy.empty((rows, n), dtype=np.float32), 4 * rows * n, "hold the first layer's sums")
    if rows == 0 or n == 0:
        return out
    blocks = stacked.shape[0] // (-(-x.shape[1] // _BF16_ALIGN) * _BF16_ALIGN)
    parts = _split_bf16x3(x, mean, scale, blocks).reshape(rows, -1)
    _gemm_bf16(parts, stacked, out)
    return out


def _gemm_bf16(a, b, out):
    """``out = a @ b`` for row-major bfloat16 ``a`` (R, K) and ``b`` (K, N) held as uint16,
    float32 ``out`` (R, N), in float32 accumulation (cuBLAS on the current stream)."""
    cupy = _cupy()
    from cupy_backends.cuda.libs import cublas

    (rows, kk), n = a.shape, b.shape[1]
    handle = cupy.cuda.device.get_cublas_handle()
    cublas.setStream(handle, cupy.cuda.get_current_stream().ptr)
    mode = cublas.getPointerMode(handle)
    cublas.setPointerMode(handle, cublas.CUBLAS_POINTER_MODE_HOST)
    try:
        # Column-major cuBLAS computes out.T = b.T @ a.T, the same memory.
        cublas.gemmEx(handle, cublas.CUBLAS_OP_N, cublas.CUBLAS_OP_N, n, rows, kk,
                      _ONE_F32.ctypes.data, b.data.ptr, _CUDA_R_16BF, n, a.data.ptr, _CUDA_R_16BF, kk,
                      _ZERO_F32.ctypes.data, out.data.ptr, _CUDA_R_32F, n, _CUBLAS_COMPUTE_32F, _CUBLAS_GEMM_DEFAULT)
    finally:
        cublas.setPointerMode(handle, mode)


def signed_sums(words, k, w):
    """``unpack(words) @ w`` in float64, each sum in input order (the CPU kernel's sums, bit for bit)."""
    cupy = _cupy()
    rows, n_out = words.shape[0], w.shape[1]
    out = cupy.empty((rows, n_out), dtype=np.float64)
    if rows and n_out:
        threads = _constant("real", "SIGNED_SUMS_THREADS")
        columns = min(n_out, _constant("real", "SIGNED_SUMS_COLUMNS"))
        _function("real", f"signed_sums_{columns}")(
            (math.ceil(rows / threads), math.ceil(n_out / columns)), (threads,),
            (cupy.ascontiguousarray(words), np.int64(rows), np.int64(words.shape[1]), np.int64(k),
             cupy.ascontiguousarray(cupy.asarray(w, dtype=np.float64)), np.int64(n_out), out),
        )
    return out


def real_layer(words, k, w):
    """``unpack(words) @ w`` in float64; see :mod:`xnorcore._backends`.

    A classifier's few outputs come from :func:`signed_sums`; wider layers
    unpack blocks of rows for cuBLAS.
    """
    if w.shape[1] <= SIGNED_SUMS_MAX_UNITS:
        return signed_sums(words, k, w)
    return _common.real_layer(words, k, w)


# The conv operations of the contract (they launch this module's kernels).
from . import gpu_conv as _gpu_conv  # noqa: E402

conv2d, conv2d_threshold_pack, real_conv2d = _gpu_conv.conv2d, _gpu_conv.conv2d_threshold_pack, _gpu_conv.real_conv2d
#: No fused first conv block: callers pool the sums of array operations.
real_conv2d_pool = None
