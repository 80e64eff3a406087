"""The convolutional front of a binary CNN: conv blocks and max-pools on NHWC images.

Layout of a binary network with ``conv_layers=(32, "pool", 64, "pool")`` on
28x28x1 images, before the dense layers of :class:`~xnorcore.nn.Network`::

    x (real, NHWC) -> conv1 -> pool -> bn -> sign -> conv2 -> pool -> bn -> sign -> flatten
                      real W                         sign(W), +-1 in

The first convolution reads the real-valued pixels and has real weights, as in
BinaryNet; every later one has binary weights and +-1 inputs.  A pool right
after a convolution pools its sums, before batch norm and sign, as BinaryNet
does: the gradient then goes to the largest sum of each window, where pooling
the +-1 signs would leave it to the first of many ties.  The function is the
same as pooling the signs for channels with a positive batch-norm scale (an OR
of set bits in the packed form) and an AND for a negative one; a pool after a
pool takes the signs.  The real-valued network (``binary=False``) has ReLU in
place of sign.

:meth:`ConvFeatures.pack` folds each block's batch norm into one threshold per
channel, as :meth:`Network.pack` does for dense layers, and
:meth:`ConvFeatures.forward_packed` then runs binary blocks layer to layer on
packed NHWC bits (convolution, threshold, sign, packing and pooling in one
kernel per block), equal to the float path.
"""

import copy
import numbers
import types

import numpy as np

from .._array import get_array_module, is_cupy, to_numpy
from .._backends import backend_for
from ..ops import PackedBits, binary_conv2d_threshold_pack, n_words, pack_bits, unpack_bits
from ._conv import ChannelBatchNorm, Conv2D, Flatten, MaxPool2D, glorot_conv_weight, im2col
from ._inference import (PackedModel, blocked_logits, check_format, first_difference, fold_threshold, format_header,
                         run_layers)
from ._layers import ReLU, Sign, set_backward_dtype
from ._network import Block, BlockStack, Network, clear_caches

__all__ = ["ConvBlock", "ConvFeatures", "ConvNetwork", "PackedConvModel", "check_image_shape", "check_same_conv",
           "conv_config", "flatten_packed", "image_rows", "normalize_conv_layers", "pool_packed", "real_block_sums",
           "recommended_conv_layers"]

_F32 = np.float32


def normalize_conv_layers(conv_layers, name="conv_layers"):
    """Parse conv layer items into ``("conv", filters, (kh, kw))`` and ``("pool",)`` tuples.

    An item is an int ``c`` (3x3 convolution, stride 1, "same" zero padding,
    ``c`` output channels, then batch norm and sign), ``"pool"`` (2x2 max-pool
    with stride 2: of the sums, before batch norm and sign, when it follows a
    convolution) or a tuple ``(c, k)`` with ``k`` an int or ``(kh, kw)``:
    the convolution with that kernel size (lists for tuples too, as JSON gives them).

    Raises
    ------
    ValueError
        Naming ``name`` and the offending item.
    """
    if isinstance(conv_layers, (str, bytes)) or not hasattr(conv_layers, "__iter__"):
        raise ValueError(f"{name} must be a sequence of ints, (channels, kernel_size) tuples and "
                         f"'pool', got {name}={conv_layers!r}")
    out = []

    def positive(v):
        return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1

    for item in conv_layers:
        if isinstance(item, list):  # as JSON and YAML configurations give tuples
            item = tuple(tuple(v) if isinstance(v, list) else v for v in item)
        # (the normalized items themselves are accepted too)
        if isinstance(item, tuple) and item == ("pool",):
            item = "pool"
        elif isinstance(item, tuple) and len(item) == 3 and item[0] == "conv":
            item = item[1:]
        if isinstance(item, str) and item == "pool":
            out.append(("pool",))
            continue
        if positive(item):
            out.append(("conv", int(item), (3, 3)))
            continue
        if isinstance(item, tuple) and len(item) == 2 and positive(item[0]):
            k = item[1]
            if positive(k):
                out.append(("conv", int(item[0]), (int(k), int(k))))
                continue
            if isinstance(k, tuple) and len(k) == 2 and all(positive(v) for v in k):
                out.append(("conv", int(item[0]), (int(k[0]), int(k[1]))))
                continue
        raise ValueError(
            f"{name} items must be a positive int (3x3 conv channels), 'pool', or a tuple "
            f"(channels, kernel_size) of positive ints, got {item!r} in {name}={conv_layers!r}"
        )
    return tuple(out)


def pool_packed(h, size=2):
    """Max-pool of packed +-1 NHWC bits: the OR of each window's words."""
    n, hh, ww, c = h.shape
    oh, ow = hh // size, ww // size
    words = None
    for i in range(size):
        for j in range(size):
            tap = h.words[:, i:i + size * (oh - 1) + 1:size, j:j + size * (ow - 1) + 1:size]
            words = tap.copy() if words is None else (words | tap)
    return PackedBits(words, (n, oh, ow, c), 3)


class ConvBlock(Block):
    """One convolution, its optional max-pool, batch norm and activation, in that order."""

    LAYERS = ("conv", "pool", "bn", "act")

    def __init__(self, conv, bn, act, pool=None):
        self.conv = conv
        self.bn = bn
        self.act = act
        self.pool = pool
        self.activation = None  # output of the last forward, for histograms
        # Folded batch norm and sign (filled by ConvFeatures.pack).
        self.threshold = None
        self.direction = None


class ConvFeatures(BlockStack):
    """Conv blocks and max-pools from NHWC images to flat features for the dense layers.

    Parameters
    ----------
    image_shape : tuple of int
        ``(H, W, C)`` of the input images.
    conv_layers : sequence
        Items as accepted by :func:`normalize_conv_layers`.
    binary : bool
        Binary weights (but in the first convolution) and sign activations,
        else a real-valued ReLU network.
    random_state : numpy.random.RandomState
    xp : module
        numpy or cupy.
    """

    def __init__(self, image_shape, conv_layers, *, binary=True, random_state=None, xp=np):
        rng = random_state if random_state is not None else np.random.RandomState(0)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.conv_layers = normalize_conv_layers(conv_layers)
        self.binary = bool(binary)
        # Items: ConvBlock, or MaxPool2D for a pool with no convolution before it.
        self.items = []
        h, w, c = self.image_shape
        n_conv = 0
        for spec in self.conv_layers:
            if spec[0] == "pool":
                pool_name = f"pool{len(self.items) + 1}"
                if h < 2 or w < 2:
                    raise ValueError(
                        f"conv_layers={conv_layers!r} pools an {h}x{w} image: a 2x2 max-pool needs "
                        f"at least 2x2 (image_shape={self.image_shape})"
                    )
                pool = MaxPool2D(pool_name)
                last = self.items[-1] if self.items else None
                if isinstance(last, ConvBlock) and last.pool is None:
                    last.pool = pool
                else:
                    self.items.append(pool)
                h, w = h // 2, w // 2
                continue
            _, filters, kernel = spec
            n_conv += 1
            first = n_conv == 1
            weight = xp.asarray(glorot_conv_weight(rng, kernel, c, filters))
            conv = Conv2D(
                f"conv{n_conv}", weight, binary_weights=self.binary and not first,
                binary_input=self.binary and not first, padding="same",
                need_input_grad=not first,
            )
            bn = ChannelBatchNorm(f"conv_bn{n_conv}", filters, xp)
            act = Sign(f"conv_sign{n_conv}") if self.binary else ReLU(f"conv_relu{n_conv}")
            self.items.append(ConvBlock(conv, bn, act))
            h, w, c = conv.output_shape((h, w, c))
        self.output_shape = (h, w, c)
        self.flatten = Flatten("flatten")
        self._packed = False

    # ------------------------------------------------------------------ basics
    @property
    def n_features(self):
        h, w, c = self.output_shape
        return h * w * c

    @property
    def blocks(self):
        return [item for item in self.items if isinstance(item, ConvBlock)]

    def layers(self):
        out = []
        for item in self.items:
            out.extend(item.layers() if isinstance(item, ConvBlock) else [item])
        return out + [self.flatten]

    # ---------------------------------------------------------------- training
    def forward(self, x, training=False, rng=None):
        """Flat features ``(n_samples, n_features)`` of NHWC ``x`` through the float path."""
        if training:
            self._packed = False  # the folded thresholds are out of date
        h = x
        for item in self.items:
            if isinstance(item, ConvBlock):
                layers = item.layers()
                if not training and not item.conv.binary_input:
                    h, layers = real_block_sums(item, h), layers[2 if item.pool is not None else 1:]
                for layer in layers:
                    if layer is item.conv:
                        # (its XNOR sums may stay int32: the max-pool and batch norm after it take them)
                        h = layer.forward(h, training, rng, int_sums=True)
                    else:
                        h = layer.forward(h, training, rng)
                item.activation = h
            else:
                h = item.forward(h, training, rng)
        return self.flatten.forward(h, training, rng)

    # -------------------------------------------------------------- inference
    def pack(self):
        """Fold batch norm and sign into per-channel thresholds; pack binary weights."""
        if self._packed:
            return self
        xp = self.xp
        for block in self.blocks:
            conv = block.conv
            kh, kw, c, o = conv.shape
            integer = conv.binary_weights and conv.binary_input
            if conv.binary_weights and conv.weight is not None:
                conv.weight_packed = pack_bits(conv.weight, axis=2)
            if isinstance(block.act, Sign):
                # The dense rule with the conv's inner size: |z| <= KH * KW * C.
                shape = types.SimpleNamespace(shape=(kh * kw * c, o), bias=conv.bias)
                direction, threshold = fold_threshold(shape, block.bn, integer)
                block.direction, block.threshold = xp.asarray(direction), xp.asarray(threshold)
        self._packed = True
        return self

    @property
    def xp(self):
        block = self.blocks[0] if self.blocks else None
        if block is None:
            return np
        return get_array_module(block.conv.weight if block.conv.weight is not None else block.conv.weight_packed)

    def forward_packed(self, x):
        """Packed flat features of NHWC ``x``: PackedBits of shape (n_samples, n_features).

        Binary networks only.  Real-valued blocks (the first convolution)
        compute their sums as the float path does, then threshold and pack
        them; binary blocks map packed bits to packed bits with
        :func:`xnorcore.binary_conv2d_threshold_pack`, pooling included.
        """
        if not self.binary:
            raise ValueError("the packed path exists only for binary networks")
        self.pack()
        h = x
        for item in self.items:
            if not isinstance(item, ConvBlock):  # a pool after a pool (or on the pixels)
                h = pool_packed(h) if isinstance(h, PackedBits) else item.forward(h, False)
                continue
            conv = item.conv
            pooled = item.pool is not None
            if isinstance(h, PackedBits) and not is_cupy(h):
                direction, threshold = item.direction, item.threshold
                if pooled:
                    # sign(bn(max z)) over a window is the OR of the signs of its
                    # sums where the batch-norm scale is positive, their AND where
                    # it is negative.  The kernel pools with OR, so those channels
                    # get the complement of their bits (for integer sums, not
                    # ``d * z - t >= 0`` is ``-d * z - (1 - t) >= 0``), flipped
                    # back after the pool: not OR(not b) = AND(b).
                    negative = direction < 0
                    direction = np.where(negative, -direction, direction).astype(np.int8)
                    threshold = np.where(negative, 1 - threshold, threshold).astype(np.int32)
                h = binary_conv2d_threshold_pack(
                    h, conv.weight_packed, direction, threshold, pool=pooled,
                    stride=conv.stride, padding=conv.pads(h.shape[1:3]), dilation=conv.dilation,
                )
                if pooled and negative.any():
                    mask = pack_bits(np.where(negative, 1, -1).astype(np.int8)).words
                    h = PackedBits(h.words ^ mask, h.shape, 3)
            elif item.direction is not None and _real_pool_kernel(item, h) is not None:
                # The real first block in one kernel: the float path's sums
                # (real_block_sums), thresholded and packed as they are made.
                words = _real_pool_kernel(item, h)(
                    h, conv.effective_weight(), conv.bias, conv.pads(h.shape[1:3]),
                    item.direction, item.threshold)
                h = PackedBits(words, words.shape[:3] + (conv.shape[3],), 3)
            else:
                # The real first block, or +-1 inputs that no kernel takes (on
                # the GPU): the float path's sums (integers for +-1 inputs).
                packed_input = isinstance(h, PackedBits)
                if packed_input:
                    z = conv.forward(unpack_bits(h, dtype=_F32), False)
                    if pooled:
                        z = item.pool.forward(z, False)
                else:
                    z = real_block_sums(item, h)
                n, oh, ow, o = z.shape
                z = z.reshape(-1, o)
                if packed_input:
                    z = z.astype(np.int32)
                words = backend_for(z).threshold_pack(z, item.direction, item.threshold)
                h = PackedBits(words.reshape(n, oh, ow, -1), (n, oh, ow, o), 3)
            item.activation = h
        if not isinstance(h, PackedBits):  # pools alone, on the pixels: the head reads their signs
            h = pack_bits(h, axis=3)
        return flatten_packed(h)

    def drop_training_state(self):
        """Keep only what inference needs: packed binary weights, no latent ones."""
        self.pack()
        for block in self.blocks:
            conv = block.conv
            if conv.binary_weights:
                conv.weight = None
            conv.weight_grad = conv.bias_grad = None
            block.activation = None
            for layer in block.layers():
                clear_caches(layer)
        return self

    # -------------------------------------------------------------- reporting
    def memory_rows(self):
        """Per-block parameter memory, packed vs float32 (the keys of :meth:`Network.memory_rows`).

        Binary weights are packed along their input channels (``KH * KW * O``
        rows of ``ceil(C / 64)`` words); a block followed by sign keeps one
        4-byte threshold and one int8 direction per channel in place of batch
        norm.  ``shape`` is the HWIO weight shape.
        """
        rows = []
        for block in self.blocks:
            conv = block.conv
            kh, kw, c, o = conv.shape
            n_params = kh * kw * c * o
            extra = (o if conv.bias is not None else 0) + 4 * o
            float_bytes = 4 * (n_params + extra)
            per_unit = 5 * o if isinstance(block.act, Sign) else 4 * extra
            if conv.binary_weights:
                packed = 8 * kh * kw * o * n_words(c) + per_unit
            else:
                packed = 4 * n_params + per_unit
            rows.append({
                "layer": conv.name, "shape": (kh, kw, c, o), "binary": conv.binary_weights,
                "n_params": n_params + extra, "float32_bytes": float_bytes, "packed_bytes": packed,
            })
        return rows

    # ------------------------------------------------------------ persistence
    def __getstate__(self):
        state = dict(self.__dict__)
        items = []
        for item in self.items:
            if isinstance(item, ConvBlock):
                items.append(item.host_copy())
            else:
                item = copy.copy(item)
                clear_caches(item)
                items.append(item)
        state["items"] = items
        state["flatten"] = Flatten("flatten")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._packed = False


#: Images per block of the first layer at inference: the products of a block
#: (14x14x4x32 float32 for an MNIST digit) stay in cache until they are pooled.
_REAL_BLOCK_IMAGES = 256


def _real_pool_kernel(block, x):
    """The backend's fused first block (``real_conv2d_pool``) where it applies to ``block`` and ``x``, else None.

    It takes float32 pixels into a stride-1, undilated convolution with a
    2x2 max-pool after it.
    """
    conv = block.conv
    if (isinstance(x, PackedBits) or x.dtype != _F32 or block.pool is None or conv.stride != 1
            or conv.dilation != 1 or conv.binary_input):
        return None
    return backend_for(x).real_conv2d_pool


def real_block_sums(block, x):
    """Inference sums of a block on real input: the convolution, then its max-pool if it has one.

    Both inference paths take the first block's sums from here (or from the
    same kernel, thresholded there), so they stay equal.  On the CPU, float32
    pixels, a stride-1 convolution and its 2x2 pool go through one kernel
    (the backend's ``real_conv2d_pool``).  Elsewhere, a 2x2 pool of a stride-1
    convolution is one product: each pooled output reads a ``(KH + 1) x
    (KW + 1)`` patch at stride 2, and the four kernel positions inside it are
    four column blocks of one weight matrix, so the full-resolution sums are
    never written out.  Images go through in blocks that keep the
    intermediates in cache.
    """
    conv = block.conv
    xp = get_array_module(x)
    kh, kw, c, o = conv.shape
    if block.pool is None or conv.stride != 1 or conv.dilation != 1:
        z = conv.forward(x, False)
        return block.pool.forward(z, False) if block.pool is not None else z
    kernel = _real_pool_kernel(block, x)
    if kernel is not None:
        return kernel(x, conv.effective_weight(), conv.bias, conv.pads(x.shape[1:3]))
    w = conv.effective_weight().astype(x.dtype, copy=False)
    embedded = xp.zeros((kh + 1, kw + 1, c, 2, 2, o), dtype=w.dtype)
    for a in range(2):
        for b in range(2):
            embedded[a:a + kh, b:b + kw, :, a, b, :] = w
    embedded = embedded.reshape((kh + 1) * (kw + 1) * c, 4 * o)
    pads = conv.pads(x.shape[1:3])
    oh, ow = (s // 2 for s in conv.output_shape(x.shape[1:])[:2])
    out = xp.empty((x.shape[0], oh, ow, o), dtype=x.dtype)
    for start in range(0, x.shape[0], _REAL_BLOCK_IMAGES):
        xb = x[start:start + _REAL_BLOCK_IMAGES]
        cols, ph, pw = im2col(xb, (kh + 1, kw + 1), 2, 1, pads)
        z = (cols @ embedded).reshape(len(xb), ph, pw, 4, o)[:, :oh, :ow]
        pooled = out[start:start + len(xb)]
        xp.maximum(z[..., 0, :], z[..., 1, :], out=pooled)
        xp.maximum(pooled, z[..., 2, :], out=pooled)
        xp.maximum(pooled, z[..., 3, :], out=pooled)
    if conv.bias is not None:  # (max(z) + b is max(z + b))
        out += conv.bias
    return out


def flatten_packed(h):
    """Packed NHWC bits as rows of ``H * W * C`` packed features (channels fastest)."""
    n, hh, ww, c = h.shape
    if c % 64 == 0:
        # Each pixel fills whole words: the NHWC words are the packed flat rows.
        return PackedBits(h.words.reshape(n, -1), (n, hh * ww * c), 1)
    return pack_bits(unpack_bits(h, dtype=np.int8).reshape(n, -1), axis=1)


class ConvNetwork:
    """A CNN for training: :class:`ConvFeatures` then the dense layers of a :class:`Network`.

    It takes the rows that :class:`Network` takes, ``(n_samples, H * W * C)``
    (an image's pixels in NHWC order, channels fastest), and reshapes them to
    NHWC images; it offers the methods of :class:`Network` that training,
    inference and the estimator use.

    Parameters
    ----------
    image_shape : tuple of int
        ``(H, W, C)``.
    conv_layers : sequence
        Items as accepted by :func:`normalize_conv_layers`.
    n_outputs : int
    hidden_layer_sizes : tuple of int
        Dense layers after the conv layers.
    binary, batch_norm, dropout, binarize_last, xnor, random_state, xp
        As for :class:`Network`; ``dropout`` applies to the input of every
        dense layer, the flattened conv features included.
    """

    def __init__(self, image_shape, conv_layers, n_outputs, hidden_layer_sizes, *, binary=True,
                 batch_norm=True, dropout=0.0, binarize_last=False, xnor=False, random_state=None, xp=np):
        rng = random_state if random_state is not None else np.random.RandomState(0)
        self.features = ConvFeatures(image_shape, conv_layers, binary=binary, random_state=rng, xp=xp)
        self.head = Network(
            self.features.n_features, n_outputs, hidden_layer_sizes, binary=binary, batch_norm=batch_norm,
            dropout=dropout, binarize_last=binarize_last, xnor=xnor, conv_input=True, random_state=rng, xp=xp,
        )
        self.set_xnor(xnor)

    # ------------------------------------------------------------------ basics
    binary = property(lambda self: self.head.binary)
    batch_norm = property(lambda self: self.head.batch_norm)
    binarize_first = property(lambda self: self.head.binarize_first)
    binarize_last = property(lambda self: self.head.binarize_last)
    hidden_layer_sizes = property(lambda self: self.head.hidden_layer_sizes)
    n_outputs = property(lambda self: self.head.n_outputs)
    image_shape = property(lambda self: self.features.image_shape)
    conv_layers = property(lambda self: self.features.conv_layers)
    xp = property(lambda self: self.head.xp)
    xnor = property(lambda self: self.head.xnor)
    blocks = property(lambda self: self.head.blocks)

    @property
    def n_features(self):
        h, w, c = self.image_shape
        return h * w * c

    def set_xnor(self, xnor, conv=None):
        """Use XNOR products in the binary dense layers, and in the conv layers where ``conv`` (default: ``xnor``)."""
        self.head.set_xnor(xnor)
        for block in self.features.blocks:
            block.conv.xnor = bool(xnor if conv is None else conv)

    @property
    def has_training_state(self):
        return self.features.has_training_state and self.head.has_training_state

    def layers(self):
        return self.features.layers() + self.head.layers()

    def set_backward_dtype(self, dtype):
        """As :meth:`Network.set_backward_dtype`, for the conv layers and the dense ones."""
        set_backward_dtype(self.layers(), dtype)

    def params(self):
        return self.features.params() + self.head.params()

    # ---------------------------------------------------------------- training
    def images(self, x):
        """Rows of ``H * W * C`` pixels (or NHWC images) as NHWC images."""
        return x.reshape((x.shape[0],) + self.image_shape)

    def forward(self, x, training=False, rng=None):
        """Logits of rows ``x``; see :meth:`Network.forward`."""
        return self.head.forward(self.features.forward(self.images(x), training, rng), training, rng)

    def backward(self, grad):
        self.features.backward(self.head.backward(grad))

    train_step = Network.train_step
    label_smoothing = Network.label_smoothing

    # -------------------------------------------------------------- inference
    def drop_training_state(self):
        self.features.drop_training_state()
        self.head.drop_training_state()
        return self

    def histograms(self):
        """The arrays of :meth:`ConvFeatures.histograms` and :meth:`Network.histograms`."""
        return {**self.features.histograms(), **self.head.histograms()}

    def training_state_nbytes(self):
        return self.features.training_state_nbytes() + self.head.training_state_nbytes()

    def to(self, xp):
        self.features.to(xp)
        self.head.to(xp)
        return self


class PackedConvModel:
    """Inference-only form of a trained binary :class:`ConvNetwork`, on packed bits.

    The conv blocks run layer to layer on packed NHWC bits
    (:meth:`ConvFeatures.forward_packed`), the dense layers as in
    :class:`PackedModel`.  Raw rows are standardized as for the float path
    (``(x - mean) / scale``, then reshaped to images), so both paths give the
    first convolution the same float32 input and the same sums.

    Parameters
    ----------
    features : ConvFeatures
        Packed, without training state; on the CPU.
    head : PackedModel
        The dense layers, their first one reading packed bits.
    input_mean : ndarray of shape (H * W * C,)
    input_scale : float
    """

    def __init__(self, features, head, input_mean, input_scale):
        self.features = features
        self.head = head
        self.input_mean = np.asarray(input_mean, dtype=_F32)
        self.input_scale = _F32(input_scale)

    @classmethod
    def from_network(cls, network, input_mean=None, input_scale=1.0):
        """Compile a trained binary :class:`ConvNetwork` (a copy: the network is left as it is)."""
        if not network.binary:
            raise ValueError("the packed path exists only for binary networks")
        features = copy.deepcopy(network.features).to(np).drop_training_state()
        head = PackedModel.from_network(network.head).to(np)
        if input_mean is None:
            input_mean = np.zeros(network.features.n_features, dtype=_F32)
        return cls(features, head, input_mean, input_scale)

    @property
    def n_features(self):
        return self.input_mean.shape[0]

    def forward(self, x, activations=None):
        """Logits (float64) of raw float32 rows ``x``."""
        rows = (x - self.input_mean) / self.input_scale
        h = self.features.forward_packed(rows.reshape((rows.shape[0],) + self.features.image_shape))
        if activations is not None:
            activations.extend(block.activation for block in self.features.blocks)
        return run_layers(self.head.layers, h, backend_for(self.head.layers[-1].weight), None, activations)

    def decision_function(self, X, host=True):
        """Logits of raw rows ``X`` (float32 numpy array), in blocks of rows as the float path
        (``host`` as for :meth:`PackedModel.decision_function`)."""
        with backend_for(self.head.layers[-1].weight).deferred_nan_checks():
            return blocked_logits(self.forward, X, host=host)

    # ------------------------------------------------------------ arrays
    def to_arrays(self):
        """``(metadata, arrays)``: a JSON-able dict and a dict of numpy arrays that :meth:`from_arrays` takes.

        The metadata records ``image_shape``, ``input_scale``, each conv item
        in order (``conv``: kernel size, channels, stride, dilation, the zero
        padding of its input, the max-pool that follows it, binary weights and
        input; or a ``pool`` of its own) and the dense part's
        :meth:`PackedModel.to_arrays` metadata (``head``).  The arrays are
        ``input_mean``, per convolution its weights (``features/<conv>/weight``,
        float32 HWIO, for the real first one; ``features/<conv>/weight_bits``,
        the uint64 words of ``sign(W)`` packed along the input channels, for
        binary ones) and its folded batch norm and sign (``direction``,
        ``threshold``), and the dense part's arrays under ``head/``.
        """
        features = self.features.pack()
        arrays = {"input_mean": to_numpy(self.input_mean)}
        for block in features.blocks:
            conv, base = block.conv, f"features/{block.name}/"
            if conv.binary_weights:
                arrays[base + "weight_bits"] = to_numpy(conv.weight_packed.words)
            else:
                arrays[base + "weight"] = to_numpy(conv.weight)
            arrays[base + "direction"] = to_numpy(block.direction)
            arrays[base + "threshold"] = to_numpy(block.threshold)
        head_meta, head_arrays = self.head.to_arrays()
        del head_arrays["input_mean"]  # the dense part reads the conv features: nothing to centre
        arrays.update({"head/" + name: a for name, a in head_arrays.items()})
        metadata = {**format_header("xnorcore.PackedConvModel"), "image_shape": list(features.image_shape),
                    "input_scale": float(self.input_scale), "conv": _describe_items(features), "head": head_meta}
        return metadata, arrays

    @classmethod
    def from_arrays(cls, metadata, arrays):
        """The model that :meth:`to_arrays` described (numpy arrays).

        Raises
        ------
        ValueError
            If the metadata is not of a PackedConvModel of this version, its
            conv items do not chain (channels, strides, padding and pools that
            the conv layers would not have), or an array is missing or of
            another dtype or shape than they need.
        """
        check_format(metadata, "xnorcore.PackedConvModel")
        if not (isinstance(metadata.get("conv"), list) and all(isinstance(item, dict) for item in metadata["conv"])):
            raise ValueError(f"metadata conv must be a list of conv items (dicts), got {metadata.get('conv')!r}")
        conv_layers = []
        try:
            for item in metadata["conv"]:
                if item.get("kind") == "conv":
                    conv_layers.append(("conv", item["out_channels"], tuple(item["kernel"])))
                if item.get("kind") == "pool" or item.get("pool"):
                    conv_layers.append(("pool",))
            features = ConvFeatures(metadata["image_shape"], conv_layers)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"metadata does not describe conv layers ({type(exc).__name__}: {exc})") from None
        expected = _describe_items(features)
        if expected != metadata["conv"]:
            where, got, made = first_difference(metadata["conv"], expected, "conv")
            raise ValueError(f"metadata conv items are not those of conv layers {conv_layers} on images of shape "
                             f"{features.image_shape}: {where} is {got!r}, they make {made!r}")

        def array(key, dtype, shape):
            a = arrays.get(key)
            if not isinstance(a, np.ndarray) or a.dtype != dtype or a.shape != shape:
                got = ("nothing" if a is None else f"a {type(a).__name__}" if not isinstance(a, np.ndarray)
                       else f"dtype {a.dtype} and shape {a.shape}")
                raise ValueError(f"arrays[{key!r}] must have dtype {np.dtype(dtype)} and shape {shape}, got {got}")
            return a

        for block in features.blocks:
            conv, base = block.conv, f"features/{block.name}/"
            kh, kw, c, o = conv.shape
            if conv.binary_weights:
                conv.weight_packed = PackedBits(array(base + "weight_bits", np.uint64, (kh, kw, o, n_words(c))),
                                                conv.shape, 2)
                conv.weight = None
            else:
                conv.weight = array(base + "weight", _F32, conv.shape)
            block.direction = array(base + "direction", np.int8, (o,))
            integer = conv.binary_weights and conv.binary_input  # (as pack folds them)
            block.threshold = array(base + "threshold", np.int32 if integer else _F32, (o,))
        features._packed = True
        head_arrays = {name[len("head/"):]: a for name, a in arrays.items() if name.startswith("head/")}
        head = PackedModel.from_arrays(metadata["head"], {**head_arrays,
                                                          "input_mean": np.zeros(features.n_features, _F32)})
        n_pixels = int(np.prod(features.image_shape))
        return cls(features, head, array("input_mean", _F32, (n_pixels,)), metadata["input_scale"])


def _describe_items(features):
    """The conv items of ``features`` as JSON: what :meth:`PackedConvModel.from_arrays` checks a model against."""
    out = []
    shape = features.image_shape
    for item in features.items:
        if not isinstance(item, ConvBlock):
            out.append({"kind": "pool", "size": item.size})
            shape = item.output_shape(shape)
            continue
        conv = item.conv
        kh, kw, c, o = conv.shape
        out.append({
            "kind": "conv", "name": conv.name, "kernel": [kh, kw], "in_channels": c, "out_channels": o,
            "stride": conv.stride, "dilation": conv.dilation,
            "padding": [list(p) for p in conv.pads(shape[:2])], "bias": conv.bias is not None,
            "pool": None if item.pool is None else item.pool.size,
            "binary_weights": conv.binary_weights, "binary_input": conv.binary_input,
        })
        shape = conv.output_shape(shape)
        if item.pool is not None:
            shape = item.pool.output_shape(shape)
    return out


def recommended_conv_layers(image_shape):
    """The conv layers that ``conv_layers="auto"`` gives for images of ``image_shape``.

    Stages of a 5x5 convolution and a 2x2 max-pool, 64 channels in the first
    and twice as many in each next one, as long as the pooled image keeps at
    least 4 pixels a side (three stages at most): ``((64, 5), "pool", (128, 5),
    "pool")`` for 28x28 MNIST digits, 99.4% accurate there after 10 epochs
    with dropout 0.2 (``benchmarks/RESULTS.md``; 3x3 kernels and half the
    channels level off at 99.2-99.35%).  Images too small to pool get one
    convolution.  ``image_shape`` that is not 3 positive ints is a ValueError.
    """
    h, w, _ = check_image_shape(image_shape)
    side = min(h, w)
    out = []
    channels = 64
    while side // 2 >= 4 and len(out) < 6:
        out += [(channels, 5), "pool"]
        channels *= 2
        side //= 2
    return tuple(out) if out else ((64, 5),)


def check_image_shape(image_shape, name="image_shape"):
    """``(H, W, C)`` of positive ints, or a ValueError naming ``name``."""
    try:
        shape = tuple(image_shape)
    except TypeError:
        shape = None
    if shape is None or len(shape) != 3 or not all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in shape
    ):
        raise ValueError(f"{name} must be a tuple (height, width, channels) of positive ints, "
                         f"got {name}={image_shape!r}")
    return tuple(int(s) for s in shape)


def image_rows(X, fitted_shape=None):
    """``(rows, image_shape)``: 4-D X flattened to rows of NHWC pixels, and its ``(H, W, C)``.

    Other X comes back as it is, with an image shape of None.  ``fitted_shape``,
    the image shape of a fitted network, refuses 4-D X of another shape.  A cupy
    X stays on its device.
    """
    if getattr(X, "ndim", None) != 4:
        return X, None
    if not is_cupy(X):
        X = np.asarray(X)
    shape = tuple(int(s) for s in X.shape[1:])
    if fitted_shape is not None and shape != fitted_shape:
        raise ValueError(f"X holds images of shape {shape}, but the model was fitted on "
                         f"images of shape {fitted_shape}")
    return X.reshape(X.shape[0], -1), shape


def conv_config(image_shape, conv_layers, n_features, x_image_shape=None):
    """``(image_shape, conv_layers)`` of the network to build: ``(None, ())`` without conv layers.

    ``image_shape`` and ``conv_layers`` are the estimator's parameters (see
    :class:`~xnorcore.BNNClassifier`), ``n_features`` the width of the rows
    of X and ``x_image_shape`` the image shape of 4-D X (None for rows).
    """
    if isinstance(conv_layers, str):  # "auto" (the parameter constraints allow no other string)
        conv = "auto"
    else:
        conv = normalize_conv_layers(conv_layers, "conv_layers")
    shape = None if image_shape is None else check_image_shape(image_shape, "image_shape")
    if shape is not None and x_image_shape is not None and shape != x_image_shape:
        raise ValueError(f"X holds images of shape {x_image_shape}, but image_shape={image_shape!r}")
    if shape is None:
        shape = x_image_shape
    if shape is not None and int(np.prod(shape)) != n_features:
        raise ValueError(
            f"image_shape={image_shape!r} holds {int(np.prod(shape))} values, but X has "
            f"n_features={n_features}"
        )
    if conv == ():
        return None, ()
    if shape is None:
        shape = (1, n_features, 1)
    if conv == "auto":
        conv = normalize_conv_layers(recommended_conv_layers(shape))
    return shape, conv


def check_same_conv(network, image_shape, conv_layers):
    """Refuse to continue ``network`` (warm start) with other conv layers or images than it was built for."""
    fitted_conv = getattr(network, "conv_layers", ())
    fitted_shape = getattr(network, "image_shape", None)
    if (image_shape, conv_layers) != (fitted_shape if fitted_conv else None, fitted_conv):
        raise ValueError(
            "warm_start=True needs the same image_shape and conv_layers as the fitted network, got "
            f"{image_shape} and {conv_layers}, fitted {fitted_shape} and {fitted_conv}"
        )
