"""Building blocks for training binary neural networks on numpy or cupy arrays.

One code path serves the CPU and the GPU: every function takes its array
module from its inputs (``xp = get_array_module(x)``).
"""

from ._layers import BatchNorm, Dense, ReLU, Sign, binarize, ste_mask
from ._loss import log_softmax, softmax, softmax_cross_entropy
from ._inference import PackedModel
from ._network import Network
from ._optim import Adam

__all__ = [
    "Adam",
    "BatchNorm",
    "Dense",
    "Network",
    "PackedModel",
    "ReLU",
    "Sign",
    "binarize",
    "log_softmax",
    "softmax",
    "softmax_cross_entropy",
    "ste_mask",
]
