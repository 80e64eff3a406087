"""CPU backend: sign packing and XNOR GEMM (numpy reference implementation).

Contract shared with ``xnorcore._gpu``:

``pack_rows(x, n_threads) -> (words, has_nan)``
    ``x`` is a C-contiguous 2-D array (R, L) of dtype int8/16/32/64 or
    float32/64.  ``words`` is uint64 of shape (R, ceil(L / 64)) in the layout of
    :mod:`xnorcore.ops`; ``has_nan`` tells whether ``x`` held a NaN.
``xnor_gemm(a_words, b_words, k, n_threads) -> int32 (M, N)``
    ``a_words`` (M, W) and ``b_words`` (N, W) are C-contiguous uint64 with
    ``W = ceil(k / 64)`` and zero padding; the result is ``k - 2 popcount(a ^ b)``.
"""

import numpy as np

from .ops import n_words


def pack_rows(x, n_threads=None):
    rows, length = x.shape
    has_nan = x.dtype.kind == "f" and bool(np.isnan(x).any())
    bits = np.zeros((rows, n_words(length) * 64), dtype=bool)
    bits[:, :length] = x >= 0
    words = np.packbits(bits, axis=1, bitorder="little").view(np.uint64)
    return np.ascontiguousarray(words), has_nan


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.int32)


def xnor_gemm(a_words, b_words, k, n_threads=None):
    out = np.empty((a_words.shape[0], b_words.shape[0]), dtype=np.int32)
    for i in range(a_words.shape[0]):
        x = np.bitwise_xor(a_words[i], b_words).view(np.uint8)
        out[i] = k - 2 * _POPCOUNT8[x].sum(axis=1)
    return out


def config():
    return {"popcount": "numpy", "variants": ["numpy"], "threads": 1}
