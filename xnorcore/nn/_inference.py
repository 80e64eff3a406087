"""The inference-only form of a trained binary network: packed weights, integer thresholds.

:class:`PackedModel` is built once from a trained :class:`~xnorcore.nn.Network`
and holds nothing but arrays and a little metadata, so that it can be saved
as arrays (:meth:`PackedModel.to_arrays`) and loaded without pickled code.
Every operation goes through the backend of its arrays
(:mod:`xnorcore._backends`), so the same code runs on numpy and cupy.

Each hidden layer maps packed bits to packed bits: batch norm (and bias)
followed by sign is one comparison per unit, ``s * z - t >= 0``, with ``s``
the sign of the batch-norm scale and ``t`` its threshold (see
:func:`fold_threshold`).  The first layer reads raw input rows, the input
standardization ``(x - mean) / scale`` folded into its weights; the output
layer gives float64 logits.
"""

import dataclasses
from typing import Any, ClassVar, Optional

import numpy as np

from .._array import get_array_module, to_module, to_numpy
from .._backends import backend_for
from ..ops import PackedBits
from ._layers import Sign, batch_norm

__all__ = ["PackedModel", "fold_threshold"]

_F32 = np.float32

#: Rows per block in predict: the intermediates of a 1024-unit layer stay near
#: 16 MB, in cache, and each block reuses the buffers of the one before
#: instead of faulting in fresh pages for the whole batch.
PREDICT_ROWS = 4096

_FORMAT_VERSION = 1


def blocked_logits(forward, X, rows=PREDICT_ROWS, host=True):
    """``forward`` over blocks of ``rows`` rows of ``X``, as one float64 array: numpy, or with
    ``host=False`` on the device of ``forward``'s results."""
    blocks = []
    for start in range(0, max(X.shape[0], 1), rows):
        z = forward(X[start:start + rows])
        blocks.append((to_numpy(z) if host else z).astype(np.float64, copy=False))
    return (np if host else get_array_module(blocks[0])).concatenate(blocks)


def format_header(name):
    """The ``format`` and ``version`` keys that the metadata of a ``to_arrays`` starts with."""
    return {"format": name, "version": _FORMAT_VERSION}


def check_format(metadata, name):
    """Refuse ``metadata`` unless it describes a ``name`` of this format version (a ValueError)."""
    if not isinstance(metadata, dict) or metadata.get("format") != name or metadata.get("version") != _FORMAT_VERSION:
        got = metadata if not isinstance(metadata, dict) else {k: metadata.get(k) for k in ("format", "version")}
        raise ValueError(f"metadata must describe an {name} of version {_FORMAT_VERSION}, got {got!r}")


def first_difference(a, b, where):
    """``(where, part of a, part of b)``: the first place where the JSON values ``a`` and ``b`` differ.

    ``where`` names it as ``where.key[index]...``, going into objects with
    the same keys and lists of objects of the same length.
    """
    if isinstance(a, dict) and isinstance(b, dict) and set(a) == set(b):
        for key in a:
            if a[key] != b[key]:
                return first_difference(a[key], b[key], f"{where}.{key}")
    if (isinstance(a, list) and isinstance(b, list) and len(a) == len(b)
            and all(isinstance(v, dict) for v in b)):  # (a list of numbers is shown whole)
        for i, (u, v) in enumerate(zip(a, b)):
            if u != v:
                return first_difference(u, v, f"{where}[{i}]")
    return where, a, b


def fold_threshold(dense, bn, integer):
    """(direction int8, threshold) of a unit's ``sign(bn(z + bias))`` as ``direction * z - threshold >= 0``.

    ``bn(z) >= 0`` is ``z >= t`` for a positive batch-norm scale and
    ``z <= t`` for a negative one, so the layer computes ``s * z - s * t >= 0``
    with ``s`` the sign of the scale.  A zero scale makes the unit a constant
    (``s = 0`` and a threshold of -1 or +1, so that ``-t`` is the sign of the
    batch-norm shift).  For binary x binary products (``integer``) ``z`` is an
    integer and so is ``t`` (rounded up or down with the direction), so the
    packed path reproduces the float path exactly.
    """
    k, n_out = dense.shape
    bias = to_numpy(dense.bias).astype(np.float64) if dense.bias is not None else np.zeros(n_out)
    if bn is not None:
        inv_std = 1.0 / np.sqrt(to_numpy(bn.running_var).astype(np.float64) + bn.eps)
        alpha = to_numpy(bn.gamma).astype(np.float64) * inv_std
        offset = alpha * (bias - to_numpy(bn.running_mean)) + to_numpy(bn.beta)
    else:
        alpha = np.ones(n_out)
        offset = bias
    direction = np.sign(alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = np.where(alpha != 0, -offset / np.where(alpha != 0, alpha, 1), 0.0)
    if integer:
        # |z| <= k, so thresholds beyond +-(k + 1) all act alike; clipping keeps int32 safe.
        tau = np.clip(tau, -k - 1, k + 1)
        tau = np.where(direction > 0, np.ceil(tau), np.floor(tau))
    threshold = direction * tau
    constant = direction == 0
    threshold[constant] = np.where(offset[constant] >= 0, -1, 1)
    return direction.astype(np.int8), threshold.astype(np.int32 if integer else _F32)


@dataclasses.dataclass
class PackedLayer:
    """One layer of a :class:`PackedModel`: plain arrays and what kind of layer they make.

    Attributes
    ----------
    weight : PackedBits or ndarray of shape (n_in, n_out)
        Binary weights packed along the inputs, or real float32 weights.
    packed_input : bool
        The input is packed bits (the output of a hidden layer), not real rows.
    direction, threshold : ndarray of shape (n_out,) or None
        Folded batch norm and sign of a hidden layer (its output is packed
        bits); None for the output layer.
    bias : ndarray of shape (n_out,) or None
        Bias of the output layer.
    batch_norm : tuple of (mean, var, gamma, beta) arrays, or None
        Batch norm of the output layer (``binarize_last``), with ``eps``.
    """

    _ARRAYS: ClassVar = ("direction", "threshold", "bias")
    _BN: ClassVar = ("running_mean", "running_var", "gamma", "beta")

    weight: Any
    packed_input: bool
    direction: Any = None
    threshold: Any = None
    bias: Any = None
    batch_norm: Optional[tuple] = None
    eps: Optional[float] = None

    @property
    def binary_weights(self):
        return isinstance(self.weight, PackedBits)

    @property
    def shape(self):
        return tuple(self.weight.shape)

    def to(self, xp):
        """This layer with its arrays in ``xp`` (numpy or cupy)."""
        conv = lambda a: None if a is None else to_module(a, xp)  # noqa: E731
        bn = None if self.batch_norm is None else tuple(conv(a) for a in self.batch_norm)
        return PackedLayer(conv(self.weight), self.packed_input, conv(self.direction), conv(self.threshold),
                           conv(self.bias), bn, self.eps)

    def forward(self, h, backend, prepared_input):
        """Packed bits (a hidden layer) or float64 logits (the output layer) of ``h``."""
        w = self.weight
        hidden = self.threshold is not None
        if not self.packed_input:
            if hidden:  # raw rows, their standardization folded into prepared_input
                z = backend.input_layer(h, prepared_input)
            else:  # the output layer of a network without hidden layers, on standardized rows
                z = h @ w
        elif self.binary_weights:
            k, n = w.shape
            if hidden:
                words = backend.xnor_gemm_threshold_pack(h.words, w.words, k, self.direction, self.threshold)
                return PackedBits._trusted(words, (h.shape[0], n), 1)
            z = backend.xnor_gemm(h.words, w.words, k)
        else:
            z = backend.real_layer(h.words, h.shape[1], w)
        if hidden:
            words = backend.threshold_pack(z, self.direction, self.threshold)
            return PackedBits._trusted(words, z.shape, 1)
        if z.dtype.kind != "f":
            z = z.astype(np.float64)
        if self.bias is not None:
            z = z + self.bias
        if self.batch_norm is not None:
            z = batch_norm(z, *self.batch_norm, self.eps)[0]
        return z


def run_layers(layers, h, backend, prepared_input, activations=None):
    """``h`` through the :class:`PackedLayer` s ``layers`` in turn; ``activations``, a list,
    receives every layer's output."""
    for layer in layers:
        h = layer.forward(h, backend, prepared_input)
        if activations is not None:
            activations.append(h)
    return h


class PackedModel:
    """Inference-only form of a trained binary network, on packed bits.

    Build it with :meth:`from_network`; :meth:`decision_function` gives the
    logits of raw input rows.  It holds only arrays and small metadata
    (:meth:`to_arrays` / :meth:`from_arrays`).

    Parameters
    ----------
    layers : list of PackedLayer
    input_mean : ndarray of shape (n_features,)
        Per-feature mean subtracted from the input.
    input_scale : float
        Global scale the centred input is divided by.
    """

    def __init__(self, layers, input_mean, input_scale):
        self.layers = list(layers)
        self.input_mean = np.asarray(input_mean, dtype=_F32)
        self.input_scale = _F32(input_scale)
        self._prepared = None  # the backend's folded first layer, made on first use

    @classmethod
    def from_network(cls, network, input_mean=None, input_scale=1.0):
        """Compile a trained binary :class:`~xnorcore.nn.Network`.

        The arrays stay on the network's device.  ``input_mean`` (default
        zeros) and ``input_scale`` are the standardization of the raw input.
        """
        if not network.binary:
            raise ValueError("the packed path exists only for binary networks")
        layers = []
        xp = network.xp
        for block in network.blocks:
            d = block.dense
            if not d.binary_input:  # the first layer reads real rows: float32 weights, +-1 if binary
                weight = d.effective_weight()
            else:
                weight = d.packed_weight() if d.binary_weights else d.weight
            if isinstance(block.act, Sign):
                direction, threshold = fold_threshold(d, block.bn, integer=d.binary_input and d.binary_weights)
                layers.append(PackedLayer(weight, d.binary_input, xp.asarray(direction), xp.asarray(threshold)))
            else:
                bn = block.bn
                stats = None if bn is None else (bn.running_mean, bn.running_var, bn.gamma, bn.beta)
                layers.append(PackedLayer(weight, d.binary_input, bias=d.bias, batch_norm=stats,
                                          eps=None if bn is None else bn.eps))
        if input_mean is None:
            input_mean = np.zeros(network.n_features, dtype=_F32)
        return cls(layers, input_mean, input_scale)

    @property
    def xp(self):
        return get_array_module(self.layers[-1].weight)

    @property
    def n_features(self):
        return self.input_mean.shape[0]

    def to(self, xp):
        """This model with its arrays in ``xp`` (numpy or cupy)."""
        return PackedModel([layer.to(xp) for layer in self.layers], self.input_mean, self.input_scale)

    def _input(self, backend):
        if self._prepared is None:
            self._prepared = backend.prepare_input_layer(self.layers[0].weight, self.input_mean, self.input_scale)
        return self._prepared

    def forward(self, x, activations=None):
        """Logits (float64, on the model's device) of raw float32 rows ``x`` (numpy, or cupy on the GPU).

        ``activations``, a list, receives the output of every layer (packed
        bits for hidden layers).
        """
        backend = backend_for(self.layers[-1].weight)
        if self.layers[0].threshold is not None:
            h, prepared = x, self._input(backend)
        else:  # no hidden layer: the output layer reads standardized rows
            xp = get_array_module(x)
            rows = (x - to_module(self.input_mean, xp)) / self.input_scale
            h, prepared = backend.to_device(xp.ascontiguousarray(rows)), None
        return run_layers(self.layers, h, backend, prepared, activations)

    def decision_function(self, X, host=True):
        """Logits of raw rows ``X`` (float32, numpy, or cupy for a model on the GPU), as a float64
        numpy array (on the model's device with ``host=False``), in blocks of rows (the backend's
        ``PREDICT_ROWS``, or :data:`PREDICT_ROWS`)."""
        backend = backend_for(self.layers[-1].weight)
        with backend.deferred_nan_checks():  # the device runs ahead through every block
            return blocked_logits(self.forward, X, getattr(backend, "PREDICT_ROWS", PREDICT_ROWS), host)

    # ------------------------------------------------------------ arrays
    def to_arrays(self):
        """``(metadata, arrays)``: a JSON-able dict and a dict of numpy arrays that :meth:`from_arrays` takes."""
        arrays = {"input_mean": to_numpy(self.input_mean)}
        layers = []
        for i, layer in enumerate(self.layers):
            meta = {"packed_input": layer.packed_input, "binary_weights": layer.binary_weights,
                    "eps": layer.eps}
            if layer.binary_weights:
                arrays[f"layer{i}/weight"] = to_numpy(layer.weight.words)
                meta["shape"] = list(layer.weight.shape)
            else:
                arrays[f"layer{i}/weight"] = to_numpy(layer.weight)
            for name in PackedLayer._ARRAYS:
                value = getattr(layer, name)
                if value is not None:
                    arrays[f"layer{i}/{name}"] = to_numpy(value)
            if layer.batch_norm is not None:
                for name, value in zip(PackedLayer._BN, layer.batch_norm):
                    arrays[f"layer{i}/{name}"] = to_numpy(value)
            layers.append(meta)
        metadata = {**format_header("xnorcore.PackedModel"), "input_scale": float(self.input_scale),
                    "layers": layers}
        return metadata, arrays

    @classmethod
    def from_arrays(cls, metadata, arrays):
        """The model that :meth:`to_arrays` described (numpy arrays)."""
        check_format(metadata, "xnorcore.PackedModel")
        layers = []
        for i, meta in enumerate(metadata["layers"]):
            weight = arrays[f"layer{i}/weight"]
            if meta["binary_weights"]:
                weight = PackedBits(weight, tuple(meta["shape"]), 0)
            values = {name: arrays.get(f"layer{i}/{name}") for name in PackedLayer._ARRAYS}
            bn = None
            if f"layer{i}/running_mean" in arrays:
                bn = tuple(arrays[f"layer{i}/{name}"] for name in PackedLayer._BN)
            layers.append(PackedLayer(weight, meta["packed_input"], batch_norm=bn, eps=meta["eps"], **values))
        return cls(layers, arrays["input_mean"], metadata["input_scale"])


def float_decision_function(network, X, input_mean, input_scale):
    """Logits of raw rows ``X`` through ``network``'s float inference path, in the same blocks of rows."""
    xp = network.xp
    blocks = []
    for start in range(0, max(X.shape[0], 1), PREDICT_ROWS):
        rows = xp.asarray((X[start:start + PREDICT_ROWS] - input_mean) / input_scale)
        blocks.append(to_numpy(network.forward(rows, training=False)).astype(np.float64))
    return np.concatenate(blocks)

