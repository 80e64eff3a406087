"""A multilayer perceptron with binary weights and activations, for training.

Layout of a binary network with ``hidden_layer_sizes=(h1, ..., hL)``::

    x (real) -> dense1 -> bn1 -> sign -> dense2 -> bn2 -> sign -> ... -> dense{L+1} -> logits
                real W                 sign(W), XNOR                    real W (+ bias)

The first layer sees the real-valued input and the last layer gives real
logits, as in BinaryNet; ``binarize_first`` / ``binarize_last`` binarize their
weights too (the last one then gets a batch norm as its scale).  The real-valued
network (``binary=False``) is ``dense -> bn -> relu`` per hidden layer.

The inference form of a trained binary network, on packed bits, is
:class:`xnorcore.nn.PackedModel` (``PackedModel.from_network(net)``).
"""

import copy
import math

import numpy as np

from .._array import get_array_module, is_cupy, to_module, to_numpy
from ..ops import PackedBits, unpack_bits
from ._layers import BatchNorm, Dense, ReLU, Sign, set_backward_dtype
from ._loss import cross_entropy

_F32 = np.float32


#: What a layer keeps of the last step for its backward pass (not part of the model).
_CACHES = ("_cache", "_x", "_shape")
_GRADIENTS = ("weight_grad", "bias_grad", "gamma_grad", "beta_grad")


def clear_caches(layer, names=_CACHES):
    """Set the attributes ``names`` of ``layer`` that it has to None."""
    for key in names:
        if hasattr(layer, key):
            setattr(layer, key, None)


class Block:
    """A layer with weights and the layers that follow it.

    ``LAYERS`` names the attributes that hold them, in forward order, the
    layer with the weights first; the ones that are None are left out.
    """

    LAYERS = ()

    @property
    def weight_layer(self):
        return getattr(self, self.LAYERS[0])

    @property
    def name(self):
        return self.weight_layer.name

    def layers(self):
        return [layer for layer in (getattr(self, key) for key in self.LAYERS) if layer is not None]

    def host_copy(self):
        """A copy to pickle: its layers copied without caches or gradients, arrays as numpy."""
        b = copy.copy(self)
        b.activation = None
        for key in self.LAYERS:
            layer = getattr(self, key)
            if layer is not None:
                layer = copy.copy(layer)
                clear_caches(layer, _CACHES + _GRADIENTS)
                setattr(b, key, layer)
        for obj in (b, *b.layers()):
            for key, value in list(vars(obj).items()):
                setattr(obj, key, to_numpy(value))
        return b


class _Block(Block):
    """One dense layer with what follows it (batch norm, activation)."""

    LAYERS = ("dense", "bn", "act")

    def __init__(self, dense, bn, act):
        self.dense = dense
        self.bn = bn
        self.act = act
        self.activation = None  # output of the last forward, for histograms


class BlockStack:
    """What networks of :class:`Block` items share (:class:`Network`, :class:`~xnorcore.nn.ConvFeatures`).

    Subclasses have ``blocks`` and ``layers()``, every layer in forward order.
    """

    def params(self):
        return [p for layer in self.layers() for p in layer.params()]

    @property
    def has_training_state(self):
        return all(b.weight_layer.weight is not None for b in self.blocks)

    def backward(self, grad):
        """Gradients of every layer; returns that of the input (None where the first layer needs none)."""
        for layer in reversed(self.layers()):
            grad = layer.backward(grad)
            if grad is None:
                break
        return grad

    def histograms(self):
        """Per-layer arrays for TensorBoard-style histograms (numpy copies).

        Returns
        -------
        hist : dict of str to ndarray
            ``"{layer}/weight"`` (latent real weights, ``layer`` being
            ``"dense{i}"`` or ``"conv{i}"``), ``"{layer}/weight_binary"``
            (binarized weights of binary layers), ``"{layer}/bias"``,
            ``"{layer}/activation"`` (output of the layer's block in the last
            forward pass, after batch norm and activation),
            ``"{layer}/weight_grad"`` (gradient of the last training step),
            and the batch norms' ``"{bn}/gamma"``, ``"{bn}/beta"``.
        """
        out = {}
        for block in self.blocks:
            layer, name = block.weight_layer, block.name
            if layer.weight is not None:
                out[f"{name}/weight"] = to_numpy(layer.weight).copy()
            if layer.binary_weights:
                out[f"{name}/weight_binary"] = to_numpy(layer.effective_weight())
            if layer.bias is not None:
                out[f"{name}/bias"] = to_numpy(layer.bias).copy()
            if block.activation is not None:
                act = block.activation
                if isinstance(act, PackedBits):
                    act = unpack_bits(act, dtype=_F32)
                out[f"{name}/activation"] = to_numpy(act).copy()
            if layer.weight_grad is not None:
                out[f"{name}/weight_grad"] = to_numpy(layer.weight_grad).copy()
            if block.bn is not None:
                out[f"{block.bn.name}/gamma"] = to_numpy(block.bn.gamma).copy()
                out[f"{block.bn.name}/beta"] = to_numpy(block.bn.beta).copy()
        return out

    def training_state_nbytes(self):
        """Bytes of latent float32 weights of binary layers (dropped by drop_training_state)."""
        return sum(b.weight_layer.weight.nbytes for b in self.blocks
                   if b.weight_layer.binary_weights and b.weight_layer.weight is not None)

    def to(self, xp):
        """Move every array to ``xp`` (numpy or cupy), in place."""
        for block in self.blocks:
            for obj in (block, *block.layers()):
                for key, value in vars(obj).items():
                    if isinstance(value, (np.ndarray, PackedBits)) or is_cupy(value):
                        setattr(obj, key, to_module(value, xp))
        return self


class Network(BlockStack):
    """Multilayer perceptron with optional binary weights and activations.

    Parameters
    ----------
    n_features : int
        Input width.
    n_outputs : int
        Number of logits.
    hidden_layer_sizes : tuple of int
        Width of each hidden layer.
    binary : bool
        Binarize hidden weights and activations (else a real-valued ReLU net).
    batch_norm : bool
        Batch norm after each hidden dense layer (without it, hidden layers get
        a bias).
    dropout : float
        Dropout probability on the input of every layer after the first.
    input_dropout : float, default=0.0
        Dropout probability on the input features of the first layer (of a
        network that reads real features, not conv layers' output).
    binarize_first, binarize_last : bool
        Binarize the weights of the first / the output layer as well.
    xnor : bool
        Compute binary x binary products with :func:`~xnorcore.binary_matmul`.
    conv_input : bool, default=False
        The input is the flattened output of conv layers
        (:class:`~xnorcore.nn.ConvFeatures`): the first layer takes dropout
        and passes its gradient on to them, and in a binary network its
        input holds only -1 and +1, so it is binary like any later layer.
    random_state : numpy.random.RandomState
        Source of the initial weights (drawn on the CPU, so a network starts
        the same on any device).
    xp : module
        numpy or cupy: where the arrays live.
    """

    #: The default for pickles that do not record it.
    conv_input = False
    #: ``label_smoothing`` of the training loss (see :func:`softmax_cross_entropy`): how
    #: training runs, not part of the network, set by the estimator before each fit.
    label_smoothing = 0.0

    def __init__(self, n_features, n_outputs, hidden_layer_sizes, *, binary=True,
                 batch_norm=True, dropout=0.0, input_dropout=0.0, binarize_first=False, binarize_last=False,
                 xnor=False, conv_input=False, random_state=None, xp=np):
        rng = random_state if random_state is not None else np.random.RandomState(0)
        self.binary = bool(binary)
        self.batch_norm = bool(batch_norm)
        self.n_features = int(n_features)
        self.n_outputs = int(n_outputs)
        self.hidden_layer_sizes = tuple(int(h) for h in hidden_layer_sizes)
        self.binarize_first = bool(binarize_first) and self.binary
        self.binarize_last = bool(binarize_last) and self.binary
        self.conv_input = bool(conv_input)
        self.blocks = []
        sizes = (self.n_features,) + self.hidden_layer_sizes + (self.n_outputs,)
        n_layers = len(sizes) - 1
        for i in range(n_layers):
            n_in, n_out = sizes[i], sizes[i + 1]
            last = i == n_layers - 1
            # After conv layers, the first dense layer is like any later one.
            first = i == 0 and not self.conv_input
            limit = math.sqrt(6.0 / (n_in + n_out))
            weight = xp.asarray(rng.uniform(-limit, limit, (n_in, n_out)).astype(_F32))
            if self.binary:
                binary_weights = (not first or self.binarize_first) and (not last or self.binarize_last)
            else:
                binary_weights = False
            binary_input = self.binary and not first
            has_bn = (self.batch_norm and not last) or (last and self.binarize_last)
            name = f"dense{i + 1}"
            dense = Dense(
                name, weight, binary_weights=binary_weights, binary_input=binary_input,
                bias=not has_bn, dropout=input_dropout if first else dropout, xnor=xnor,
                need_input_grad=i > 0 or self.conv_input,
            )
            bn = BatchNorm(f"bn{i + 1}", n_out, xp) if has_bn else None
            if last:
                act = None
            else:
                act = Sign(f"sign{i + 1}") if self.binary else ReLU(f"relu{i + 1}")
            self.blocks.append(_Block(dense, bn, act))

    # ------------------------------------------------------------------ basics
    @property
    def xp(self):
        d = self.blocks[-1].dense
        return get_array_module(d.weight if d.weight is not None else d.weight_packed)

    @property
    def xnor(self):
        return self.blocks[-1].dense.xnor

    def set_xnor(self, xnor, conv=None):
        """Use XNOR products in the binary dense layers (``conv``: for conv layers, which this network has none of)."""
        for block in self.blocks:
            block.dense.xnor = bool(xnor)

    def layers(self):
        return [layer for block in self.blocks for layer in block.layers()]

    def set_backward_dtype(self, dtype):
        """``"float32"`` or ``"bfloat16"``: the backward products with a +-1 operand
        (:func:`~xnorcore.nn._layers.sign_matmul`); bfloat16 only on the CPU."""
        set_backward_dtype(self.layers(), dtype)

    # ---------------------------------------------------------------- training
    def forward(self, x, training=False, rng=None):
        """Logits of ``x``.

        Training runs in float32.  Inference computes real-valued products in
        float64 (all layers of a real-valued network, the output layer of a
        binary one): float32 sums vary in their last bit with the batch
        composition, and a sample's scores should not depend on its batch.
        """
        h = x
        last = self.blocks[-1]
        if not training and not self.binary:
            h = h.astype(np.float64)
        words = None  # in training, the words of h where its sign activation packed them
        for i, block in enumerate(self.blocks):
            if not training:
                if block is last:
                    h = h.astype(np.float64)
                for layer in block.layers():
                    h = layer.forward(h, training, rng)
                block.activation = h
                continue
            h = block.dense.forward(h, training, rng, x_words=words, int_sums=block.bn is not None)
            words = None
            if block.bn is not None:
                h = block.bn.forward(h, training, rng)
            if block.act is not None:
                if isinstance(block.act, Sign) and self.blocks[i + 1].dense.takes_packed_input:
                    h, words = block.act.forward_packed(h)
                else:
                    h = block.act.forward(h, training, rng)
            block.activation = h
        return h

    def train_step(self, x, y, optimizer, lr, reg=0.0, rng=None, sample_weight=None, weight_sum=None,
                   step_size=None):
        """One optimizer step on a minibatch; returns the loss (on the device).

        ``sample_weight`` (on the device) and its host-side ``weight_sum``
        weight each sample's loss, as :func:`softmax_cross_entropy` does.
        ``step_size`` goes to :meth:`Adam.step` (a step captured as a CUDA graph).
        """
        if not self.has_training_state:
            raise RuntimeError(
                "this network's training state was dropped (drop_training_state); "
                "it can predict but not train"
            )
        logits = self.forward(x, training=True, rng=rng)
        loss, grad = cross_entropy(logits, y, sample_weight, weight_sum, self.label_smoothing)
        self.backward(grad)
        params = self.params()
        if reg:
            xp = self.xp
            reg32 = _F32(reg)
            for name, p, g, _ in params:
                if name.endswith("/weight"):
                    g += reg32 * xp.sign(p)
                    loss = loss + reg32 * xp.abs(p).sum()
        optimizer.step(params, lr, step_size=step_size)
        return loss

    # -------------------------------------------------------------- inference
    def drop_training_state(self):
        """Keep only what inference needs: binary weights as packed bits, no latent ones."""
        for block in self.blocks:
            d = block.dense
            if d.binary_weights:
                d.weight_packed = d.packed_weight()
                d.weight = None
            d.weight_grad = d.bias_grad = None
            d._cache = None
            for layer in block.layers():
                if hasattr(layer, "_cache"):
                    layer._cache = None
                if hasattr(layer, "_x"):
                    layer._x = None
            block.activation = None
        return self

    # ------------------------------------------------------------ persistence
    def __getstate__(self):
        # Caches of the last step are not part of the model; arrays are stored
        # as numpy so that a network trained on a GPU loads anywhere.
        state = dict(self.__dict__)
        state["blocks"] = [block.host_copy() for block in self.blocks]
        return state

    def __setstate__(self, state):
        # Pickles that held the inference form (folded thresholds) inside the
        # network: it is rebuilt from the trained parameters instead.
        state = {k: v for k, v in state.items() if k not in ("_packed", "_input_fold")}
        self.__dict__.update(state)
        for block in self.blocks:
            for name in ("threshold", "direction"):
                block.__dict__.pop(name, None)
