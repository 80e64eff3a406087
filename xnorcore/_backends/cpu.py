"""CPU backend: the operations of the :mod:`xnorcore._backends` contract over the Cython kernels.

The kernels live in ``xnorcore._bitpack`` (the conv operations, over
``xnorcore._conv``, in :mod:`xnorcore._backends.cpu_conv`); this module adds what the contract
asks beyond them (the real first and last layers around BLAS) and the choice
of the popcount variant: the fastest that the CPU supports (``"avx512"``,
``"avx2"``, ``"scalar"`` or ``"generic"``), unless the environment variable
``XNORCORE_POPCOUNT`` names one.  ``n_threads=None`` means one thread per
:data:`MIN_THREAD_WORK_NS` of work, up to OpenMP's limit, which follows
``OMP_NUM_THREADS`` and threadpoolctl; every count, the conv kernels'
included, comes from :func:`xnorcore._threads.work_threads`, so none exceeds
the CPUs the process may use.
"""

import contextlib
import math
import os

import numpy as np

from .. import _bitpack, _train
from ..ops import _signs
from .._threads import MIN_THREAD_WORK_NS, kernel_threads, training_thread_count, training_threads, work_threads
from . import _common
from . import cpu_conv as _cpu_conv

NAME = "cpu"

# The conv operations of the contract.
conv2d, conv2d_threshold_pack = _cpu_conv.conv2d, _cpu_conv.conv2d_threshold_pack
real_conv2d, real_conv2d_pool = _cpu_conv.real_conv2d, _cpu_conv.real_conv2d_pool

#: Environment variable that forces a popcount variant.
VARIANT_ENV = "XNORCORE_POPCOUNT"

#: Training's binary products go through xnor_gemm and conv2d (benchmarks/train_bench.py,
#: benchmarks/conv_train_bench.py).
prefers_xnor_training = True
prefers_xnor_conv_training = True

#: Rows of the first layer's input with at most this fraction of nonzeros go
#: through the zero-skipping kernel (see input_layer), the others through BLAS,
#: which is faster on them (benchmarks/RESULTS.md).
SPARSE_INPUT_DENSITY = 0.4

#: Most output units of :func:`signed_sums`.
SIGNED_SUMS_MAX_UNITS = _bitpack.SIGNED_SUMS_MAX_UNITS


def _initial_variant():
    name = os.environ.get(VARIANT_ENV, "").strip().lower()
    if not name:
        return _bitpack.best_variant()
    if name not in _bitpack.VARIANTS:
        raise ValueError(
            f"{VARIANT_ENV} must be one of {', '.join(_bitpack.VARIANTS)}, got {VARIANT_ENV}={name!r}"
        )
    if name not in _bitpack.available_variants():
        raise RuntimeError(
            f"{VARIANT_ENV}={name!r} asks for a popcount variant that this CPU does not "
            f"support; available: {', '.join(_bitpack.available_variants())}"
        )
    return name


try:
    _bitpack.set_variant(_initial_variant())
    _variant_error = None
except (ValueError, RuntimeError) as exc:
    # Raised on first use instead of at import, so that `import xnorcore`
    # and the command line can still start and report it in one line.
    _variant_error = exc


def environment_error():
    """What is wrong with XNORCORE_POPCOUNT (a message), or None."""
    return None if _variant_error is None else str(_variant_error)



#: Nanoseconds per unit of work on one core (the avx512 variant; the others
#: are slower, so their work is underestimated and they thread a little later).
_NS_PER_GEMM_WORD = 0.12      # one 64-bit word of xnor_gemm: rows x columns x words
_NS_PER_THRESHOLD = 0.5       # one unit of threshold_pack
_NS_PER_PACKED_ELEMENT = 0.2  # one element of pack_rows / pack_cols
_NS_PER_SIGNED_TERM = 0.12    # one term of signed_sums: rows x inputs x units
_NS_PER_INPUT_TERM = 0.03     # one term of input_sums: rows x features x units
_NS_PER_BLAS_FLOP = 0.02      # float32 GEMM on one core
#: Multiply-adds (m * n * k) from which OpenBLAS runs a GEMM on several threads
#: (its SMP_THRESHOLD_MIN times GEMM_MULTITHREAD_THRESHOLD).
BLAS_THREADED_MACS = 65536 * 4


def _threads(n_threads, work_ns=None):
    """:func:`xnorcore._threads.work_threads`; raises first if XNORCORE_POPCOUNT is bad."""
    if _variant_error is not None:
        raise type(_variant_error)(str(_variant_error))
    return work_threads(n_threads, work_ns)


def threads_for(work_ns, n_threads=None):
    """The thread count a kernel with ``work_ns`` of work gets for ``n_threads`` (for tests and benchmarks)."""
    return _threads(n_threads, work_ns)


def set_variant(name):
    """Use popcount variant ``name`` from now on (for tests and benchmarks).

    Returns the previous variant's name, so callers can restore it.
    """
    global _variant_error
    previous = _bitpack.get_variant()
    _bitpack.set_variant(name)
    _variant_error = None  # a variant chosen here overrides a bad XNORCORE_POPCOUNT
    return previous


def get_variant():
    """Name of the popcount variant in use."""
    return _bitpack.get_variant()


def require():
    """The CPU backend runs wherever xnorcore imports."""


def config():
    if _variant_error is not None:
        # Never raises: show_config reports what is wrong instead.
        return {"popcount": None, "variants": _bitpack.available_variants(), "threads": kernel_threads(None),
                "unavailable": str(_variant_error)}
    return {
        "popcount": _bitpack.get_variant(),
        "variants": _bitpack.available_variants(),
        "threads": kernel_threads(None),
    }


def to_device(x):
    return x


#: Rows of whole words shorter than this many elements are packed a group at a time.
PACK_GROUP_ELEMENTS = 4096


def pack_rows(x, n_threads=None):
    """Pack the rows of a C-contiguous 2-D array; see :mod:`xnorcore._backends`.

    Rows of whole words (the channels of an NHWC image, 64 of them) pack
    into the same words as the longer rows of g consecutive ones, which cost
    less per element than many short calls of the row kernel.
    """
    threads = _threads(n_threads, x.size * _NS_PER_PACKED_ELEMENT)
    rows, length = x.shape
    if length and length % 64 == 0 and length < PACK_GROUP_ELEMENTS:
        group = math.gcd(rows, PACK_GROUP_ELEMENTS // length)
        if group > 1:
            words, has_nan = _bitpack.pack_rows(x.reshape(rows // group, group * length), threads)
            return words.reshape(rows, length // 64), has_nan
    return _bitpack.pack_rows(x, threads)


def pack_cols(x, n_threads=None):
    return _bitpack.pack_cols(x, _threads(n_threads, x.size * _NS_PER_PACKED_ELEMENT))


def signs(x, dtype):
    """``sign(x)`` as ``dtype``; see :mod:`xnorcore._backends`.  Float32 arrays take one pass
    of a kernel (on the training step's threads, as the training loop's other copies) instead of four."""
    if x.dtype != np.float32 or np.dtype(dtype) != np.float32 or not x.flags.c_contiguous:
        return _signs(x, dtype)
    out = np.empty_like(x)
    _train.signs(x.reshape(-1), out.reshape(-1), training_threads(x.size))
    return out

#: No fused batch norm: the layers' array operations are as fast here.
batch_norm_train = batch_norm_backward = None


def ste_grad(dy, x):
    """``dy`` where ``|x| <= 1``, ``dy * 0`` elsewhere; see :mod:`xnorcore._backends`."""
    return dy * (np.abs(x) <= 1).astype(x.dtype)


def pack_signs(x, n_threads=None):
    """The words of :func:`pack_rows` of rows known to hold no NaN; see :mod:`xnorcore._backends`."""
    return pack_rows(x, n_threads)[0]


def sign_pack_rows(x, n_threads=None):
    """``sign(x)`` of float32 rows as float32 and its words; see :mod:`xnorcore._backends`."""
    x = np.ascontiguousarray(x)
    return signs(x, np.float32), pack_rows(x, n_threads)[0]


def sign_pack_cols(w, n_threads=None):
    """``sign(w)`` as float32 and its words along the first axis; see :mod:`xnorcore._backends`."""
    return signs(w, np.float32), pack_cols(w, n_threads)[0]


def matmul(a, b):
    """``a @ b`` of training's products (BLAS through numpy); see :mod:`xnorcore._backends`."""
    return a @ b


#: Whether this CPU has the bfloat16 products of :func:`bf16_matmul` (AVX512-BF16),
#: which do twice the float32 multiply-adds a cycle (benchmarks/RESULTS.md).
has_bf16 = _train.bf16_supported()

#: ``BNNClassifier(backward_dtype="auto")`` takes bfloat16 products where they are fast.
prefers_bf16_backward = has_bf16


def _padded_tiles(m, n):
    """The elements of C that the bfloat16 kernel's 8 x 48 tiles cover."""
    return -(-m // 8) * 8 * (-(-n // 48) * 48)


def bf16_matmul(a, b, out=None, n_threads=1):
    """``a @ b`` in float32 from bfloat16 operands; see :mod:`xnorcore._backends`.

    The AVX512-BF16 kernel where the CPU has it (computing ``(b.T @ a.T).T``,
    a transposed array, where its tiles fit that way round a tenth better,
    unless ``out`` is given), else both operands rounded by array operations
    and multiplied by BLAS.
    """
    if not has_bf16:
        return np.matmul(_common.round_bf16(a), _common.round_bf16(b), out=out)
    a, b = (x if x.strides[0] % 4 == 0 and x.strides[1] % 4 == 0 else x.copy() for x in (a, b))
    m, n = a.shape[0], b.shape[1]
    if out is None and _padded_tiles(n, m) < 0.9 * _padded_tiles(m, n):
        result = np.empty((n, m), dtype=np.float32)
        status = _train.bf16_matmul(b.T, a.T, result, n_threads)
        result = result.T
    else:
        result = np.empty((m, n), dtype=np.float32) if out is None else out
        status = _train.bf16_matmul(a, b, result, n_threads)
    if status == -2:
        raise MemoryError("bf16_matmul could not allocate its packing buffers")
    return result


def adam_update(p, g, m, v, b1, b2, eps, step, clip, n_threads=None):
    """One Adam step in place, one pass over memory; see :mod:`xnorcore._backends`."""
    _train.adam_update(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), b1, 1 - b1, b2, 1 - b2, eps,
                       step, bool(clip), 1 if n_threads is None else n_threads)


def xnor_gemm(a_words, b_words, k, n_threads=None):
    work = a_words.shape[0] * b_words.shape[0] * a_words.shape[1] * _NS_PER_GEMM_WORD
    return _bitpack.xnor_gemm(
        np.ascontiguousarray(a_words), np.ascontiguousarray(b_words), int(k), _threads(n_threads, work)
    )


#: No checks to defer: the CPU kernels return with their results.
deferred_nan_checks = contextlib.nullcontext


def threshold_pack(z, direction, threshold, n_threads=None):
    """Words of the signs of ``direction * z - threshold`` along rows, in one pass."""
    if z.dtype == threshold.dtype and z.dtype in (np.int32, np.float32):
        words, has_nan = _bitpack.threshold_pack(np.ascontiguousarray(z), direction, threshold,
                                                 _threads(n_threads, z.size * _NS_PER_THRESHOLD))
        if has_nan:  # sums past the float32 range (inf - inf), as the GPU refuses them
            raise ValueError(_common.NAN_SUMS)
        return words
    return _common.threshold_pack(z, direction, threshold)


def xnor_gemm_threshold_pack(a_words, b_words, k, direction, threshold, n_threads=None):
    """Words of the signs of ``direction * xnor_gemm(a_words, b_words, k) - threshold``.

    One pass: the int32 sums of each block of rows stay in a per-thread buffer.
    """
    work = a_words.shape[0] * b_words.shape[0] * a_words.shape[1] * _NS_PER_GEMM_WORD
    return _bitpack.xnor_gemm_threshold_pack(
        np.ascontiguousarray(a_words), np.ascontiguousarray(b_words), int(k), direction, threshold,
        _threads(n_threads, work),
    )


def input_weights(w):
    """Float32 weights (F, N) laid out for :func:`input_sums`."""
    return _bitpack.input_weights(w)


def input_sums(x, w_blocks, init, n_threads=None, max_density=1.0):
    """``init + x @ w`` for a C-contiguous float32 ``x``, zero inputs skipped, one fixed order per row.

    Returns ``(z, dense)``: rows with more than ``max_density`` of their
    inputs nonzero are listed in ``dense`` and left unwritten in ``z``.
    """
    work = x.size * init.shape[0] * _NS_PER_INPUT_TERM
    return _bitpack.input_sums(x, w_blocks, init, _threads(n_threads, work), max_density)


def prepare_input_layer(w, mean, scale):
    """Fold ``(x - mean) / scale`` into the first layer: ``x @ (w / scale)`` plus ``-(mean / scale) @ w``."""
    w = np.asarray(w, dtype=np.float64) / float(scale)
    init = -(np.asarray(mean, dtype=np.float64) @ w)
    w = w.astype(np.float32)
    return w, input_weights(w), init.astype(np.float32)


def input_layer(x, prepared):
    """First-layer sums of raw rows: zero inputs skipped, each row's terms added in one fixed order.

    A sample's sums then do not depend on its batch.  Rows with few zeros go
    through BLAS instead, which is faster on them.
    """
    w, w_blocks, init = prepared
    x = np.ascontiguousarray(x, dtype=np.float32)
    sums, dense = input_sums(x, w_blocks, init, max_density=SPARSE_INPUT_DENSITY)
    if not dense.size:
        return sums
    # A small product on one BLAS thread: BLAS threads that spin after the
    # call would take the cores from the OpenMP kernels of the next layer.
    # Below BLAS_THREADED_MACS OpenBLAS uses one thread by itself, and setting
    # the limit would cost more than the product.
    macs = dense.size * w.size
    small = BLAS_THREADED_MACS <= macs and 2 * macs * _NS_PER_BLAS_FLOP < 2 * MIN_THREAD_WORK_NS
    with _one_blas_thread() if small else contextlib.nullcontext():
        if dense.size == len(x):
            sums = x @ w
            sums += init
        else:
            sums[dense] = x[dense] @ w + init
    return sums


def signed_sums(words, k, w, n_threads=None):
    """A real layer (k, N) on packed +-1 rows, each row's terms added in input order, in float64."""
    work = words.shape[0] * int(k) * w.shape[1] * _NS_PER_SIGNED_TERM
    return _bitpack.signed_sums(np.ascontiguousarray(words), int(k), np.ascontiguousarray(w, dtype=np.float64),
                                _threads(n_threads, work))


def real_layer(words, k, w):
    """``unpack(words) @ w`` in float64.

    With few output units (a classifier's logits) one kernel adds each row's
    terms in input order straight from the bits: the sums of a sample do not
    depend on its batch.  Wider layers unpack blocks of rows for BLAS.
    """
    if w.shape[1] <= SIGNED_SUMS_MAX_UNITS:
        return signed_sums(words, k, w)
    with _one_blas_thread():
        return _common.real_layer(words, k, w)


_blas_controller = None


@contextlib.contextmanager
def training_context(bf16_backward):
    """The threads of a fit; see :mod:`xnorcore._backends`.

    With float32 products OpenBLAS takes every core for them, and the kernels
    of a step run on one thread: OpenBLAS's threads spin for a while after each
    of its calls, and a kernel's second thread would wait for their core.  With
    bfloat16 backward products the large products are the kernel's, so the
    kernels take every core and BLAS (the real first and last layers) one.
    """
    if not bf16_backward:
        yield
        return
    with _one_blas_thread(), training_thread_count(None):
        yield


def _one_blas_thread():
    """A context in which BLAS runs on one thread (threadpoolctl).

    ``real_layer`` calls BLAS once per block of rows; with several BLAS
    threads, the idle ones keep spinning after each call and slow the OpenMP
    kernels of the next block.
    """
    global _blas_controller
    if _blas_controller is None:
        from threadpoolctl import ThreadpoolController

        _blas_controller = ThreadpoolController()
    return _blas_controller.limit(limits=1, user_api="blas")
