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
from .estimator import BNNClassifier
from ._config import get_config, show_config
from ._model_io import ModelFileError, load_model, save_model

__version__ = "0.1.0"

__all__ = [
    "BNNClassifier",
    "ModelFileError",
    "WORD_BITS",
    "PackedBits",
    "binary_matmul",
    "get_array_module",
    "get_config",
    "load_model",
    "pack_bits",
    "save_model",
    "show_config",
    "sign",
    "unpack_bits",
    "__version__",
]
