"""Building blocks for training binary neural networks on numpy or cupy arrays.

One code path serves the CPU and the GPU: every function takes its array
module from its inputs (``xp = get_array_module(x)``).
"""

from ._conv import ChannelBatchNorm, Conv2D, Flatten, MaxPool2D
from ._convnet import ConvFeatures, ConvNetwork, PackedConvModel, recommended_conv_layers
from ._layers import BatchNorm, Dense, ReLU, Sign, binarize, ste_mask
from ._loss import log_softmax, softmax, softmax_cross_entropy
from ._inference import PackedModel
from ._network import Network
from ._optim import Adam

__all__ = [
    "Adam",
    "BatchNorm",
    "ChannelBatchNorm",
    "Conv2D",
    "ConvFeatures",
    "ConvNetwork",
    "Dense",
    "Flatten",
    "MaxPool2D",
    "Network",
    "PackedConvModel",
    "PackedModel",
    "ReLU",
    "Sign",
    "binarize",
    "log_softmax",
    "softmax",
    "softmax_cross_entropy",
    "recommended_conv_layers",
    "ste_mask",
]
