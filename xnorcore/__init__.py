"""xnorcore: binary neural networks with XNOR-popcount matrix products."""

import importlib.util as _importlib_util

from ._version import __version__

try:
    from . import _bitpack  # noqa: F401  (the compiled CPU kernels)
except ImportError as _exc:
    # In a source checkout without a build, Python would report a circular
    # import from deep inside; say what is missing and how to get it.
    if _importlib_util.find_spec(f"{__name__}._bitpack") is None:
        raise ImportError(
            f"xnorcore's compiled extension is not built (no xnorcore._bitpack in "
            f"{__path__[0]}): install with `pip install .`, or build it in place with "
            "`python setup.py build_ext --inplace`"
        ) from None
    raise ImportError(
        f"xnorcore's compiled extension xnorcore._bitpack is present but cannot be loaded: "
        f"{_exc}; rebuild it with `pip install .`"
    ) from _exc

from .ops import (  # noqa: E402
    WORD_BITS,
    ConvWeights,
    PackedBits,
    binary_conv2d,
    binary_conv2d_threshold_pack,
    binary_matmul,
    get_array_module,
    pack_bits,
    pack_conv_weights,
    sign,
    unpack_bits,
)
from ._config import get_config, show_config  # noqa: E402
from ._model_io import ModelFileError, load_model, save_model  # noqa: E402

__all__ = [
    "BNNClassifier",
    "ModelFileError",
    "WORD_BITS",
    "ConvWeights",
    "PackedBits",
    "binary_conv2d",
    "binary_conv2d_threshold_pack",
    "binary_matmul",
    "get_array_module",
    "get_config",
    "load_model",
    "pack_bits",
    "pack_conv_weights",
    "save_model",
    "show_config",
    "sign",
    "unpack_bits",
    "__version__",
]


def __getattr__(name):
    # BNNClassifier imports scikit-learn (about half a second): only when asked,
    # so that the command line's --help and the array functions stay quick.
    if name == "BNNClassifier":
        from .estimator import BNNClassifier

        globals()[name] = BNNClassifier
        return BNNClassifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | {"BNNClassifier"})
