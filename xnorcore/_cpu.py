"""CPU backend: sign packing and XNOR GEMM through the Cython kernels.

Contract shared with ``xnorcore._gpu``:

``pack_rows(x, n_threads) -> (words, has_nan)``
    ``x`` is a C-contiguous 2-D array (R, L) of dtype int8/16/32/64 or
    float32/64.  ``words`` is uint64 of shape (R, ceil(L / 64)) in the layout of
    :mod:`xnorcore.ops`; ``has_nan`` tells whether ``x`` held a NaN: a bool,
    or (GPU) a one-element device array, nonzero for NaN, that ``ops`` reads
    only after queuing the product, so packing does not wait for the device.
``xnor_gemm(a_words, b_words, k, n_threads) -> int32 (M, N)``
    ``a_words`` (M, W) and ``b_words`` (N, W) are C-contiguous uint64 with
    ``W = ceil(k / 64)`` and zero padding; the result is ``k - 2 popcount(a ^ b)``.
``config() -> dict``
    What the backend runs on; never raises.

Optional (``ops`` uses it when present):

``pack_cols(x, n_threads) -> (words, has_nan)``
    ``x`` is a C-contiguous 2-D array (L, R) packed along its first axis;
    ``words`` is uint64 of shape (R, ceil(L / 64)).  Saves the transposed copy
    that packing ``b`` of ``binary_matmul`` would otherwise need.

The popcount variant (``"avx512"``, ``"avx2"``, ``"scalar"`` or ``"generic"``)
is the fastest that the CPU supports, unless the environment variable
``XNORCORE_POPCOUNT`` names one.  ``n_threads=None`` means OpenMP's limit,
which follows ``OMP_NUM_THREADS`` and threadpoolctl.
"""

import os

import numpy as np

from . import _bitpack

__all__ = ["pack_rows", "pack_cols", "xnor_gemm", "config", "set_variant", "get_variant"]

#: Environment variable that forces a popcount variant.
VARIANT_ENV = "XNORCORE_POPCOUNT"


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


_bitpack.set_variant(_initial_variant())


def set_variant(name):
    """Use popcount variant ``name`` from now on (for tests and benchmarks).

    Returns the previous variant's name, so callers can restore it.
    """
    previous = _bitpack.get_variant()
    _bitpack.set_variant(name)
    return previous


def get_variant():
    """Name of the popcount variant in use."""
    return _bitpack.get_variant()


def pack_rows(x, n_threads=None):
    return _bitpack.pack_rows(x, n_threads)


def pack_cols(x, n_threads=None):
    return _bitpack.pack_cols(x, n_threads)


def xnor_gemm(a_words, b_words, k, n_threads=None):
    return _bitpack.xnor_gemm(
        np.ascontiguousarray(a_words), np.ascontiguousarray(b_words), int(k), n_threads
    )


def threshold_pack(z, direction, threshold, n_threads=None):
    """Words of the signs of ``direction * z - threshold`` along rows, in one pass.

    ``z`` is a C-contiguous (R, N) int32 or float32 array, ``direction`` int8
    (N,) and ``threshold`` (N,) of z's dtype.
    """
    return _bitpack.threshold_pack(z, direction, threshold, n_threads)


def xnor_gemm_threshold_pack(a_words, b_words, k, direction, threshold, n_threads=None):
    """Words of the signs of ``direction * xnor_gemm(a_words, b_words, k) - threshold``.

    One pass: the int32 sums of each block of rows stay in a per-thread buffer.
    """
    return _bitpack.xnor_gemm_threshold_pack(
        np.ascontiguousarray(a_words), np.ascontiguousarray(b_words), int(k), direction, threshold, n_threads
    )


def input_weights(w):
    """Float32 weights (F, N) laid out for :func:`input_sums`."""
    return _bitpack.input_weights(w)


def input_sums(x, w_blocks, init, n_threads=None, max_density=1.0):
    """``init + x @ w`` for a C-contiguous float32 ``x``, zero inputs skipped, one fixed order per row.

    Returns ``(z, dense)``: rows with more than ``max_density`` of their
    inputs nonzero are listed in ``dense`` and left unwritten in ``z``.
    """
    return _bitpack.input_sums(x, w_blocks, init, n_threads, max_density)


#: Most output units of :func:`signed_sums`.
SIGNED_SUMS_MAX_UNITS = _bitpack.SIGNED_SUMS_MAX_UNITS


def signed_sums(words, k, w, n_threads=None):
    """A real layer (k, N) on packed +-1 rows, each row's terms added in input order, in float64."""
    return _bitpack.signed_sums(np.ascontiguousarray(words), int(k), np.ascontiguousarray(w, dtype=np.float64),
                                n_threads)


def config():
    return {
        "popcount": _bitpack.get_variant(),
        "variants": _bitpack.available_variants(),
        "threads": _bitpack.max_threads(),
    }
