"""Array-operation versions of contract operations, for backends without a kernel for them."""

import numpy as np

from .._array import get_array_module
from ..ops import PackedBits, pack_bits, unpack_bits

#: The error of a threshold on float32 sums with NaN among them, on every backend.
NAN_SUMS = "the sums to threshold must not contain NaN (float32 sums overflowed: inputs too large)"


def threshold_pack(z, direction, threshold):
    """Words of ``direction * z - threshold >= 0``, computed in place on ``z`` (a fresh array of sums)."""
    z *= direction
    z -= threshold
    return pack_bits(z, axis=1).words


def real_layer(words, k, w, rows=1024):
    """``unpack(words) @ w`` in float64, unpacking blocks of rows that stay in cache.

    One float64 array of all the unpacked rows would be eight times the size
    of a float32 input.
    """
    xp = get_array_module(words)
    n = words.shape[0]
    w = w.astype(np.float64)
    out = xp.empty((n, w.shape[1]), dtype=np.float64)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        part = PackedBits._trusted(words[start:stop], (stop - start, k), 1)
        out[start:stop] = unpack_bits(part, dtype=np.float64) @ w
    return out
