"""xnorcore: binary neural networks with XNOR-popcount matrix products."""

from .ops import (
    WORD_BITS,
    PackedBits,
    binary_matmul,
    get_array_module,
    pack_bits,
    sign,
    unpack_bits,
)

__version__ = "0.1.0"

__all__ = [
    "WORD_BITS",
    "PackedBits",
    "binary_matmul",
    "get_array_module",
    "pack_bits",
    "sign",
    "unpack_bits",
    "__version__",
]
