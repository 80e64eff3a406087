"""The backend contract: one module per device, the same named operations in each.

:mod:`xnorcore._backends.cpu` (Cython kernels in ``xnorcore._bitpack``) serves
numpy arrays and :mod:`xnorcore._backends.gpu` (CUDA sources in ``kernels/``,
loaded through CuPy) serves cupy arrays.  :func:`backend_for` picks one from
the arrays' type; it is the only place that does.  Callers (``ops``, ``nn``)
never test which backend they hold: where a device has no fused kernel, its
module implements the operation with array operations instead.

Every array argument is C-contiguous and already on the backend's device;
packed words have the layout stated in :mod:`xnorcore.ops` (zero padding).
``n_threads=None`` means the backend's default (OpenMP's limit on the CPU;
ignored on the GPU).

Operations
----------
``NAME``
    ``"cpu"`` or ``"gpu"``.
``require()``
    Raise a RuntimeError that says how to fix it if the backend cannot run here.
``config() -> dict``
    What the backend runs on; never raises.
``to_device(x) -> array or PackedBits``
    ``x`` (numpy array or PackedBits) with its data on this backend's device.
``pack_rows(x, n_threads) -> (words, has_nan)``
    ``x`` is a 2-D array (R, L) of dtype int8/16/32/64 or float32/64;
    ``words`` is uint64 (R, ceil(L / 64)).  ``has_nan`` is a bool, or (GPU) a
    one-element device array, nonzero for NaN, that ``ops`` reads only after
    queuing the product, so packing does not wait for the device.
``pack_cols(x, n_threads) -> (words, has_nan)``
    ``x`` is (L, R), packed along its first axis; ``words`` is (R, ceil(L / 64)).
    Saves the transposed copy that packing ``b`` of ``binary_matmul`` would need.
``signs(x, dtype) -> array``
    ``+1`` where ``x >= 0``, ``-1`` elsewhere (NaN too), as ``dtype``;
    unchecked (training's sign activations).
``ste_grad(dy, x) -> array``
    The straight-through estimator's gradient of sign: ``dy * (|x| <= 1)``,
    the mask as 1 or 0 of ``x``'s dtype.
``batch_norm_train(z, gamma, beta, running_mean, running_var, momentum, eps) -> (out, xhat, inv_std)``
    Batch norm of a training step over the rows of a 2-D float32 or int32
    ``z``: the batch's mean and (biased) variance per column, taken in float64;
    the running statistics updated in place (the variance unbiased);
    ``xhat = (z - mean) * inv_std`` and ``out = xhat * gamma + beta`` in
    float32.  None where the layers' array operations serve (the CPU).
``batch_norm_backward(dy, xhat, inv_std, gamma) -> (dz, gamma_grad, beta_grad)``
    Its gradients, ``gamma * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat))``
    with the sums in float64.  None where ``batch_norm_train`` is.
``pack_signs(x, n_threads) -> words``
    The words of ``pack_rows`` for rows known to hold no NaN (training's +-1
    activations): nothing to check, so nothing waits for the device.
``sign_pack_rows(x, n_threads) -> (signs, words)``
    A sign activation of training on float32 rows ``x`` (R, L): ``sign(x)``
    as float32 +-1 (NaN to -1) and the words of ``pack_rows(x)``, in one pass
    on the GPU, unchecked.
``sign_pack_cols(w, n_threads) -> (signs, words)``
    Float32 weights ``w`` (K, N) of a training step: ``sign(w)`` as float32
    +-1 (NaN to -1, as ``binarize``; the backward pass multiplies by it) and
    the words of ``pack_cols(w)``, in one pass on the GPU, unchecked.
``adam_update(p, g, m, v, b1, b2, eps, step, clip, n_threads)``
    One Adam step in place on float32 C-contiguous arrays of one shape, in
    the float32 operations of ``nn.Adam``'s array path (``clip``: then clip
    ``p`` to [-1, 1]); one pass over memory.  ``n_threads=None`` is one thread.
``matmul(a, b) -> array``
    ``a @ b`` of training's float products (2-D, each operand C-contiguous or
    a transposed C-contiguous array).  The GPU calls cuBLAS itself for float32,
    so that a training step can be captured into a CUDA graph (CuPy's own
    products refuse capture; :mod:`xnorcore.nn._graph`).
``bf16_matmul(a, b, out=None, n_threads=1) -> float32 (M, N)``
    ``a @ b`` of float32 2-D arrays (any strides) from operands rounded to
    bfloat16 (nearest even), the sums float32: the backward products of
    training that have a +-1 operand, which bfloat16 holds exactly.  ``out``:
    a C-contiguous (M, N) float32 array to write.  None where the backend has
    none (the GPU).
``prefers_bf16_backward``
    Whether ``BNNClassifier(backward_dtype="auto")`` takes ``bf16_matmul``:
    where the device computes it natively (AVX512-BF16), twice as fast as
    float32.
``training_context(bf16_backward)``
    A context manager for a fit: the CPU's sets the threads of BLAS and of the
    kernels of a training step (``xnorcore._threads.training_threads``) for
    float32 or bfloat16 backward products.
``xnor_gemm(a_words, b_words, k, n_threads) -> int32 (M, N)``
    ``a_words`` (M, W) and ``b_words`` (N, W), ``W = ceil(k / 64)``; the result
    is ``k - 2 popcount(a ^ b)``.
``threshold_pack(z, direction, threshold, n_threads) -> words (R, ceil(N / 64))``
    Bits of ``direction * z - threshold >= 0`` for an (R, N) int32 or float32
    ``z``, int8 ``direction`` (N,) and ``threshold`` (N,) of z's dtype: batch
    norm and sign folded into one comparison per unit.  Float32 sums that give
    NaN (past the float32 range) raise ValueError.
``deferred_nan_checks()``
    A context manager: within it, ``threshold_pack`` need not wait for the
    device to check its sums for NaN; the checks raise at its end.
``xnor_gemm_threshold_pack(a_words, b_words, k, direction, threshold, n_threads) -> words (M, ceil(N / 64))``
    The fused binary layer: ``threshold_pack(xnor_gemm(a_words, b_words, k), ...)``.
``prepare_input_layer(w, mean, scale) -> prepared``
    The real first layer, float32 weights ``w`` (F, N), with the input
    standardization ``(x - mean) / scale`` folded in; ``prepared`` is opaque.
``input_layer(x, prepared) -> float32 (R, N)``
    The first layer's sums (no bias) of raw float32 rows ``x`` (R, F).
``real_layer(words, k, w) -> float64 (R, N)``
    A real layer (k, N) on packed +-1 rows: ``unpack(words) @ w`` in float64.
``prefers_xnor_training``
    Whether training's binary x binary products of dense layers should use
    ``xnor_gemm`` (``BNNClassifier(xnor="auto")``): whichever trained faster on
    this device in ``benchmarks/train_bench.py``.
``prefers_xnor_conv_training``
    The same for binary conv layers (``conv2d`` against a float product),
    from ``benchmarks/conv_train_bench.py``.

``conv2d(x_words, w_words, geometry, groups, cg, pad_value, n_threads, prepared=None) -> int32 (N, OH, OW, O)``
    The binary convolution (``binary_conv2d``) of NHWC words ``x_words``
    (N, H, W, groups, words per group) with HWIO weight words ``w_words``
    (KH, KW, O, words per group); ``geometry`` is ``ops._conv_geometry``'s
    (H, W, OH, OW, KH, KW, SH, SW, DH, DW, PT, PB, PL, PR), ``cg`` the
    channels per group and ``pad_value`` (0, 1 or -1) what padding counts.
    ``prepared`` is None or the dict of a ``ConvWeights`` (the same words
    each call): the backend may keep what it builds from the weights there.
``conv2d_threshold_pack(..., direction, threshold, pool, n_threads, prepared=None) -> words (N, OH', OW', ceil(O / 64))``
    The fused binary conv layer: ``threshold_pack`` of ``conv2d`` along O,
    then, with ``pool``, a 2x2 max-pool (stride 2) on the bits.
``real_conv2d(x, w, geometry) -> float32 (N, OH, OW, O)``
    A real-valued, zero-padded convolution: the first layer of a binary CNN.
    The GPU module runs the binary ones as an implicit GEMM on its GEMM kernels
    (``gpu_conv.py``) and this one as one product per tap.
``real_conv2d_pool(x, w, bias, pads, direction=None, threshold=None, n_threads=None)``
    The first block of a binary CNN at inference, float32 NHWC ``x``: the
    stride-1 convolution with HWIO ``w`` zero padded by ``pads``
    ``((top, bottom), (left, right))``, its 2x2 max-pool (stride 2), plus
    ``bias``: float32 (N, OH // 2, OW // 2, O), each output's sums added in one
    fixed order; with ``direction`` and ``threshold`` (float32), the words of
    ``threshold_pack`` of those sums.  None on a device without that kernel
    (the GPU): the caller then uses array operations.
"""

import numpy as np

from .._array import is_cupy
from . import cpu, gpu

__all__ = ["backend_for", "for_device", "get_backend", "cpu", "gpu"]

_BY_NAME = {"cpu": cpu, "gpu": gpu}


def get_backend(name):
    """The backend module called ``name`` ("cpu" or "gpu"), usable here (else RuntimeError)."""
    try:
        module = _BY_NAME[name]
    except KeyError:
        raise ValueError(f"backend must be one of {tuple(_BY_NAME)}, got backend={name!r}") from None
    module.require()
    return module


def for_device(device, what="device='gpu'"):
    """``(array module, backend)`` for ``device``: "cpu", "gpu" (else RuntimeError), or "auto" (the GPU where usable)."""
    if device == "cpu":
        return np, cpu
    try:
        return gpu.require(what), gpu
    except RuntimeError:
        if device == "gpu":
            raise
        return np, cpu


def backend_for(*arrays):
    """The backend of ``arrays``: the GPU if any is a cupy array (or PackedBits on the GPU), else the CPU."""
    if any(is_cupy(x) for x in arrays):
        gpu.require()
        return gpu
    return cpu
