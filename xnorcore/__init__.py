"""xnorcore: binary neural networks with XNOR-popcount matrix products."""

from .ops import (
    WORD_BITS,
    PackedBits,
    binary_conv2d,
    binary_conv2d_threshold_pack,
    binary_matmul,
    get_array_module,
    pack_bits,
    sign,
    unpack_bits,
)
from .estimator import BNNClassifier
from ._config import get_config, show_config

__version__ = "0.1.0"

__all__ = [
    "BNNClassifier",
    "WORD_BITS",
    "PackedBits",
    "binary_conv2d",
    "binary_conv2d_threshold_pack",
    "binary_matmul",
    "get_array_module",
    "get_config",
    "pack_bits",
    "show_config",
    "sign",
    "unpack_bits",
    "__version__",
]
