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
from ._inference import PackedModel, blocked_logits, fold_threshold
from ._layers import ReLU, Sign
from ._network import Network, move_blocks

__all__ = ["ConvBlock", "ConvFeatures", "ConvNetwork", "PackedConvModel", "check_image_shape", "flatten_packed",
           "normalize_conv_layers", "pool_packed", "real_block_sums", "recommended_conv_layers"]

_F32 = np.float32


def normalize_conv_layers(conv_layers, name="conv_layers"):
    """Parse conv layer items into ``("conv", filters, (kh, kw))`` and ``("pool",)`` tuples.

    An item is an int ``c`` (3x3 convolution, stride 1, "same" zero padding,
    ``c`` output channels, then batch norm and sign), ``"pool"`` (2x2 max-pool
    with stride 2: of the sums, before batch norm and sign, when it follows a
    convolution) or a tuple ``(c, k)`` with ``k`` an int or ``(kh, kw)``:
    the convolution with that kernel size.

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


class ConvBlock:
    """One convolution, its optional max-pool, batch norm and activation, in that order."""

    def __init__(self, conv, bn, act, pool=None):
        self.conv = conv
        self.bn = bn
        self.act = act
        self.pool = pool
        self.activation = None  # output of the last forward, for histograms
        # Folded batch norm and sign (filled by ConvFeatures.pack).
        self.threshold = None
        self.direction = None

    @property
    def name(self):
        return self.conv.name

    def layers(self):
        return [layer for layer in (self.conv, self.pool, self.bn, self.act) if layer is not None]


class ConvFeatures:
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

    def params(self):
        return [p for layer in self.layers() for p in layer.params()]

    @property
    def has_training_state(self):
        return all(b.conv.weight is not None for b in self.blocks)

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
                    h = layer.forward(h, training, rng)
                item.activation = h
            else:
                h = item.forward(h, training, rng)
        return self.flatten.forward(h, training, rng)

    def backward(self, grad):
        for layer in reversed(self.layers()):
            grad = layer.backward(grad)
            if grad is None:
                break
        return grad

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
                _clear_caches(layer)
        return self

    # -------------------------------------------------------------- reporting
    def histograms(self):
        """``conv{i}/weight``, ``/weight_binary``, ``/activation``, ``/weight_grad`` and batch norm arrays."""
        out = {}
        for block in self.blocks:
            conv, name = block.conv, block.name
            if conv.weight is not None:
                out[f"{name}/weight"] = to_numpy(conv.weight).copy()
            if conv.binary_weights:
                out[f"{name}/weight_binary"] = to_numpy(conv.effective_weight())
            if block.activation is not None:
                act = block.activation
                if isinstance(act, PackedBits):
                    act = unpack_bits(act, dtype=_F32)
                out[f"{name}/activation"] = to_numpy(act).copy()
            if conv.weight_grad is not None:
                out[f"{name}/weight_grad"] = to_numpy(conv.weight_grad).copy()
            out[f"{block.bn.name}/gamma"] = to_numpy(block.bn.gamma).copy()
            out[f"{block.bn.name}/beta"] = to_numpy(block.bn.beta).copy()
        return out

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

    def training_state_nbytes(self):
        return sum(b.conv.weight.nbytes for b in self.blocks
                   if b.conv.binary_weights and b.conv.weight is not None)

    # ------------------------------------------------------------ persistence
    def to(self, xp):
        """Move every array to ``xp`` (numpy or cupy), in place."""
        move_blocks(self.blocks, xp)
        return self

    def __getstate__(self):
        state = dict(self.__dict__)
        items = []
        for item in self.items:
            if isinstance(item, ConvBlock):
                b = copy.copy(item)
                b.conv, b.bn, b.act = copy.copy(item.conv), copy.copy(item.bn), copy.copy(item.act)
                b.pool = copy.copy(item.pool) if item.pool is not None else None
                b.activation = None
                b.conv.weight_grad = b.conv.bias_grad = None
                b.bn.gamma_grad = b.bn.beta_grad = None
                for layer in b.layers():
                    _clear_caches(layer)
                for obj in (b, *b.layers()):
                    for key, value in list(vars(obj).items()):
                        setattr(obj, key, to_numpy(value))
                items.append(b)
            else:
                p = copy.copy(item)
                _clear_caches(p)
                items.append(p)
        state["items"] = items
        state["flatten"] = Flatten("flatten")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._packed = False


def _clear_caches(layer):
    for key in ("_cache", "_x", "_shape"):
        if hasattr(layer, key):
            setattr(layer, key, None)


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

    def set_xnor(self, xnor):
        self.head.set_xnor(xnor)

    @property
    def has_training_state(self):
        return self.features.has_training_state and self.head.has_training_state

    def layers(self):
        return self.features.layers() + self.head.layers()

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
        for layer in self.head.layers:
            h = layer.forward(h, backend_for(layer.weight), None)
            if activations is not None:
                activations.append(h)
        return h

    def decision_function(self, X):
        """Logits of raw rows ``X`` (float32 numpy array), in blocks of rows as the float path."""
        return blocked_logits(self.forward, X)


def recommended_conv_layers(image_shape):
    """The conv layers that ``conv_layers="auto"`` gives for images of ``image_shape``.

    Stages of a 3x3 convolution and a 2x2 max-pool, 32 channels in the first
    and twice as many in each next one, as long as the pooled image keeps at
    least 4 pixels a side (three stages at most): ``(32, "pool", 64, "pool")``
    for 28x28 MNIST digits.  Images too small to pool get one convolution.
    """
    h, w, _ = image_shape
    side = min(h, w)
    out = []
    channels = 32
    while side // 2 >= 4 and len(out) < 6:
        out += [channels, "pool"]
        channels *= 2
        side //= 2
    return tuple(out) if out else (32,)


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
