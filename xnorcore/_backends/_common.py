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


def round_bf16(x):
    """Float32 ``x`` rounded to bfloat16, as float32: to nearest, ties to even; zeros and
    subnormals to the zero of their sign, infinities and NaN kept (as AVX512-BF16 rounds)."""
    xp = get_array_module(x)
    u = xp.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    exponent = u & np.uint32(0x7F800000)
    rounded = (u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) & np.uint32(0xFFFF0000)
    rounded = xp.where(exponent == 0, u & np.uint32(0x80000000), rounded)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    rounded = xp.where(nan, (u | np.uint32(0x00400000)) & np.uint32(0xFFFF0000), rounded)
    return rounded.view(np.float32)


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
