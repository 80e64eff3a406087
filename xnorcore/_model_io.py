"""Model files that hold no code: :func:`save_model` and :func:`load_model`.

A pickle runs code when it is loaded, so a model file from elsewhere is as
dangerous as a script.  The files written here hold only numbers and text, and
:func:`load_model` never unpickles: it reads JSON and raw arrays, checks every
array against the architecture the metadata describes, and rebuilds the
estimator from them.

Format (version 1)
------------------
A zip archive (numpy can list it like an ``.npz``) with these members, and no
others:

``metadata.json``
    UTF-8 JSON object:

    - ``format``: ``"xnorcore-model"``; ``format_version``: 1 (a reader
      refuses a larger version); ``xnorcore_version``: the writer's version.
    - ``estimator``: ``"BNNClassifier"``; ``params``: its parameters
      (``get_params()``; a ``random_state`` that is a RandomState instance is
      stored as null).
    - ``model_kind``: the kind of network, a key of :data:`MODEL_KINDS`:
      ``"mlp"`` (:class:`xnorcore.nn.Network`) or ``"cnn"``
      (:class:`xnorcore.nn.ConvNetwork`, an estimator with ``conv_layers``);
      ``architecture``: what builds that network.  Both kinds record the
      dense layers' ``n_outputs``, ``hidden_layer_sizes``, ``binary``,
      ``batch_norm``, ``dropout`` and ``binarize_last``; ``"mlp"`` adds
      ``n_features``, ``binarize_first`` and ``input_dropout`` (0 where
      absent, in files of earlier versions), ``"cnn"`` adds ``image_shape``
      (``[height, width, channels]``) and ``conv_layers``, the normalized
      items in order: ``["conv", channels, [kernel_height, kernel_width]]``
      (stride 1, "same" zero padding, then batch norm and sign, or ReLU) or
      ``["pool"]`` (2x2 max-pool).  ``layers``: per batch-norm layer, its
      ``eps`` and ``momentum``.
    - ``fitted``: ``classes_`` (``{"dtype": numpy dtype string, "values":
      [...]}``, numbers or strings), ``n_features_in_``,
      ``feature_names_in_`` (list of str or null), ``input_scale_``,
      ``input_exponent_``, ``device_``, ``xnor_``, ``n_iter_``, ``t_``,
      ``loss_curve_``, ``best_loss_``, ``validation_scores_``,
      ``best_validation_score_``.
    - ``inference``: metadata of the packed inference model of a binary
      network (:meth:`xnorcore.nn.PackedModel.to_arrays`, or
      :meth:`xnorcore.nn.PackedConvModel.to_arrays` for a ``"cnn"``: each
      convolution's kernel, channels, stride, dilation, padding, max-pool,
      binary weights and input), or null; the model compiled on loading
      from the arrays must agree with it.
    - ``training_state``: true when the latent weights, the Adam state and the
      random generator are stored (``partial_fit`` can go on); ``optimizer``:
      ``beta1``, ``beta2``, ``eps``, ``t`` (or null); ``random_state``:
      ``pos``, ``has_gauss``, ``cached_gaussian`` of the MT19937 generator
      (or null).
    - ``arrays``: for each array member, its ``dtype`` (little-endian numpy
      dtype string) and ``shape``.

``arrays/<name>.npy``
    One array each, in numpy's ``.npy`` format (never of object dtype):
    ``input_mean``; ``network/<layer>/weight`` (float32 latent or real
    weights: ``(n_in, n_out)`` of a dense layer, HWIO ``(KH, KW, C, O)`` of
    a convolution), ``network/<layer>/weight_bits`` (uint64 words of a binary
    layer's ``sign(W)``, as :func:`xnorcore.pack_bits` lays them out, when the
    latent weights are not stored: a dense layer's packed along its inputs,
    ``(n_out, words of n_in)``, a convolution's along its input channels,
    ``(KH, KW, O, words of C)``), ``network/<layer>/bias``,
    ``network/<bn>/{gamma,beta,running_mean,running_var}`` (``bn<i>`` after
    dense layers, ``conv_bn<i>`` after convolutions); with the training
    state ``adam/m/<param>``, ``adam/v/<param>`` and ``random_state/keys``.

A packed model's thresholds are not stored: they follow exactly from the
stored batch-norm statistics, so loading compiles them again, as fitting does.
"""

import copy
import io
import json
import math
import numbers
import os
import pickletools
import warnings
import zipfile
from typing import Any, NamedTuple, Optional

import numpy as np

from ._array import to_numpy
from ._io import atomic_write
from .nn import Adam, Conv2D, ConvNetwork, Dense, Network, PackedConvModel, PackedModel
from .nn._inference import first_difference
from .ops import PackedBits, n_words

__all__ = ["FORMAT", "FORMAT_VERSION", "MODEL_KINDS", "ModelFileError", "load_model", "save_model"]

FORMAT = "xnorcore-model"
FORMAT_VERSION = 1
METADATA = "metadata.json"
_PREFIX = "arrays/"
_SUFFIX = ".npy"
#: Metadata larger than this is not a model's: refuse it before parsing.
_MAX_METADATA_BYTES = 64 << 20
_F4, _U8, _U4 = np.dtype("<f4"), np.dtype("<u8"), np.dtype("<u4")


class ModelFileError(ValueError):
    """A model file that :func:`load_model` refuses: corrupt, truncated, forged or too new.

    The message names the file and what is wrong with it.
    """


# ------------------------------------------------------------------ helpers
def _fail(path, message):
    return ModelFileError(f"{path}: {message}")


def _json_number(value, name):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite to be saved, got {value}")
        return value
    raise TypeError(f"{name} must be a number, got {type(value).__name__}")


def _labels_to_json(values, name):
    """``{"dtype", "values"}`` of a 1-d array of numbers or strings (no other objects)."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-dimensional to be saved, got shape {values.shape}")
    kind = values.dtype.kind
    if kind == "U":
        return {"dtype": values.dtype.str, "values": values.tolist()}
    if kind in "biuf":
        return {"dtype": values.dtype.str, "values": [_json_number(v, name) for v in values.tolist()]}
    if kind == "O":
        items = values.tolist()
        if all(isinstance(v, str) for v in items):
            return {"dtype": "|O", "values": items}
        if all(isinstance(v, (numbers.Real, np.bool_)) for v in items):
            return {"dtype": "|O", "values": [_json_number(v, name) for v in items]}
    raise TypeError(
        f"{name} can be saved only as numbers or strings, got dtype={values.dtype} with elements of types "
        f"{sorted({type(v).__name__ for v in values.tolist()})}"
    )


def _labels_from_json(spec, name, path):
    if not isinstance(spec, dict) or set(spec) != {"dtype", "values"} or not isinstance(spec["values"], list):
        raise _fail(path, f"{name} must be an object with 'dtype' and a list of 'values', got {_short(spec)}")
    try:
        dtype = np.dtype(spec["dtype"])
    except (TypeError, ValueError):
        raise _fail(path, f"{name} has an unknown dtype {spec['dtype']!r}") from None
    items = spec["values"]
    if dtype.kind == "O":
        if not (all(isinstance(v, str) for v in items)
                or all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items)
                or all(isinstance(v, bool) for v in items)):
            raise _fail(path, f"{name} of dtype object must hold only strings or only numbers")
        out = np.empty(len(items), dtype=object)
        out[:] = items
        return out
    if dtype.kind == "U":
        ok = all(isinstance(v, str) for v in items)
    elif dtype.kind == "b":
        ok = all(isinstance(v, bool) for v in items)
    elif dtype.kind in "iu":
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in items)
    elif dtype.kind == "f":
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items)
    else:
        raise _fail(path, f"{name} must be numbers or strings, got dtype {dtype}")
    if not ok:
        raise _fail(path, f"{name}: values do not match dtype {dtype}")
    try:
        out = np.array(items, dtype=dtype)
    except (OverflowError, ValueError):
        raise _fail(path, f"{name}: values do not fit dtype {dtype}") from None
    if out.ndim != 1 or out.tolist() != items:
        raise _fail(path, f"{name}: values do not fit dtype {dtype}")
    return out


def _short(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class _Reader:
    """Typed access to the metadata: every wrong value is an error naming the key."""

    def __init__(self, path, data, where=""):
        self.path, self.data, self.where = path, data, where

    def _name(self, key):
        return f"{self.where}{key}"

    def get(self, key, kinds, *, optional=False):
        if key not in self.data:
            if optional:
                return None
            raise _fail(self.path, f"metadata has no {self._name(key)!r}")
        value = self.data[key]
        if value is None and optional:
            return None
        ok = {
            "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "bool": lambda v: isinstance(v, bool),
            "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
            "str": lambda v: isinstance(v, str),
            "dict": lambda v: isinstance(v, dict),
            "list": lambda v: isinstance(v, list),
        }
        if not any(ok[k](value) for k in kinds.split("|")):
            raise _fail(self.path, f"metadata {self._name(key)!r} must be {kinds.replace('|', ' or ')}, "
                                   f"got {_short(value)}")
        return value

    def sub(self, key, *, optional=False):
        value = self.get(key, "dict", optional=optional)
        return None if value is None else _Reader(self.path, value, f"{self._name(key)}.")

    def floats(self, key):
        values = self.get(key, "list")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise _fail(self.path, f"metadata {self._name(key)!r} must be a list of finite numbers")
        return [float(v) for v in values]


# ------------------------------------------------------------------ model kinds
class _Slot(NamedTuple):
    """Where a stored array goes: ``layer.attr``, of ``dtype`` and ``shape``.

    ``bits`` is ``(shape, axis)`` of the :class:`~xnorcore.PackedBits` that
    the stored words make, or None for an array stored as it is.
    """

    layer: Any
    attr: str
    dtype: np.dtype
    shape: tuple
    bits: Optional[tuple] = None


def _packed_axis(layer):
    """The axis that a layer's binary weights are packed along, or None for a layer without weights.

    Dense weights ``(n_in, n_out)`` are packed along their inputs; HWIO conv
    weights along their input channels, as the kernels read them.
    """
    if isinstance(layer, Dense):
        return 0
    if isinstance(layer, Conv2D):
        return 2
    return None


def _network_slots(network, latent):
    """``{member name: _Slot}`` of a network's stored arrays.

    The names and shapes come from the network the architecture built, so
    that a file is checked against the network its metadata describes, not
    against itself.  Binary weights without their latent values are stored as
    the words of ``sign(W)`` (``weight_bits``), laid out as
    :func:`xnorcore.pack_bits` packs them.
    """
    slots = {}
    for layer in network.layers():
        base = f"network/{layer.name}/"
        axis = _packed_axis(layer)
        if axis is not None:
            shape = tuple(layer.shape)
            if layer.binary_weights and not latent:
                words = shape[:axis] + shape[axis + 1:] + (n_words(shape[axis]),)
                slots[base + "weight_bits"] = _Slot(layer, "weight_packed", _U8, words, (shape, axis))
            else:
                slots[base + "weight"] = _Slot(layer, "weight", _F4, shape)
            if layer.bias is not None:
                slots[base + "bias"] = _Slot(layer, "bias", _F4, (shape[-1],))
        elif hasattr(layer, "running_var"):  # batch norm, of dense or conv layers
            for name in ("gamma", "beta", "running_mean", "running_var"):
                slots[base + name] = _Slot(layer, name, _F4, tuple(getattr(layer, name).shape))
    return slots


def _positive_ints(values):
    return isinstance(values, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                            for v in values)


def _dense_architecture(network):
    """The architecture of a :class:`~xnorcore.nn.Network`'s dense layers, but their input."""
    return {
        "n_outputs": network.n_outputs, "hidden_layer_sizes": list(network.hidden_layer_sizes),
        "binary": network.binary, "batch_norm": network.batch_norm,
        "dropout": float(network.blocks[-1].dense.dropout), "binarize_last": network.binarize_last,
    }


def _dense_options(arch):
    """``(n_outputs, hidden_layer_sizes, keyword arguments)`` of the dense layers in ``arch``, checked."""
    n_outputs = arch.get("n_outputs", "int")
    sizes = arch.get("hidden_layer_sizes", "list")
    if n_outputs < 2 or not _positive_ints(sizes):
        raise _fail(arch.path, f"architecture is not a network: n_outputs={n_outputs}, "
                               f"hidden_layer_sizes={_short(sizes)}")
    dropout = arch.get("dropout", "float")
    if not 0 <= dropout < 1:
        raise _fail(arch.path, f"architecture dropout must be in [0, 1), got {dropout}")
    options = dict(binary=arch.get("binary", "bool"), batch_norm=arch.get("batch_norm", "bool"),
                   dropout=dropout, binarize_last=arch.get("binarize_last", "bool"))
    return n_outputs, sizes, options


def _dense_weights(widths):
    return sum(a * b for a, b in zip(widths, widths[1:]))


def _max_weights(path, infos):
    """The most weights that the archive at ``path`` with members ``infos`` can hold.

    Every weight is stored, in one bit at least (packed); a stored member
    holds no more bytes than the file, a deflated one expands at most about
    1032 times.
    """
    deflated = any(info.compress_type != zipfile.ZIP_STORED for info in infos)
    return 8 * os.path.getsize(path) * (1032 if deflated else 1) + (1 << 16)


def _check_weight_count(arch, n_weights, max_weights):
    """Refuse an architecture with more weights than the file can hold.

    Building the network allocates its weights before any array is read, so
    a forged architecture of a billion units would exhaust the memory first.
    """
    if n_weights > max_weights:
        raise _fail(arch.path, f"architecture needs {n_weights} weights, more than the file can hold "
                               f"({max_weights} at most)")


class _MLPKind:
    """The multilayer perceptron (:class:`xnorcore.nn.Network`)."""

    name = "mlp"
    network = Network
    compiler = PackedModel
    slots = staticmethod(_network_slots)

    @staticmethod
    def architecture(network):
        return {"n_features": network.n_features, **_dense_architecture(network),
                "binarize_first": network.binarize_first,
                "input_dropout": float(network.blocks[0].dense.dropout)}

    @staticmethod
    def build(arch, xnor, max_weights):
        """A network of the recorded architecture (its arrays to be overwritten)."""
        n_features = arch.get("n_features", "int")
        n_outputs, sizes, options = _dense_options(arch)
        if n_features < 1:
            raise _fail(arch.path, f"architecture is not a network: n_features={n_features}, "
                                   f"n_outputs={n_outputs}, hidden_layer_sizes={_short(sizes)}")
        _check_weight_count(arch, _dense_weights([n_features, *sizes, n_outputs]), max_weights)
        # Drawing initial weights costs as much as reading the file; they are
        # replaced, so any seed does.
        input_dropout = arch.get("input_dropout", "float", optional=True) or 0.0
        if not 0 <= input_dropout < 1:
            raise _fail(arch.path, f"architecture input_dropout must be in [0, 1), got {input_dropout}")
        return Network(n_features, n_outputs, sizes, **options, binarize_first=arch.get("binarize_first", "bool"),
                       input_dropout=input_dropout, xnor=xnor, random_state=np.random.RandomState(0), xp=np)


class _CNNKind:
    """The convolutional network (:class:`xnorcore.nn.ConvNetwork`): conv blocks, then dense layers."""

    name = "cnn"
    network = ConvNetwork
    compiler = PackedConvModel
    slots = staticmethod(_network_slots)

    @staticmethod
    def architecture(network):
        items = [["pool"] if item == ("pool",) else ["conv", item[1], list(item[2])] for item in network.conv_layers]
        return {"image_shape": list(network.image_shape), "conv_layers": items, **_dense_architecture(network.head)}

    @staticmethod
    def build(arch, xnor, max_weights):
        """A network of the recorded architecture (its arrays to be overwritten)."""
        image_shape = arch.get("image_shape", "list")
        if len(image_shape) != 3 or not _positive_ints(image_shape):
            raise _fail(arch.path, f"architecture image_shape must be [height, width, channels] of positive "
                                   f"ints, got {_short(image_shape)}")
        conv_layers = []
        n_weights, (h, w, channels) = 0, image_shape
        for i, item in enumerate(arch.get("conv_layers", "list")):
            if item == ["pool"]:
                conv_layers.append(("pool",))
                h, w = h // 2, w // 2
            elif (isinstance(item, list) and len(item) == 3 and item[0] == "conv" and _positive_ints(item[1:2])
                  and isinstance(item[2], list) and len(item[2]) == 2 and _positive_ints(item[2])):
                conv_layers.append(("conv", item[1], tuple(item[2])))
                n_weights += item[2][0] * item[2][1] * channels * item[1]
                channels = item[1]
            else:
                raise _fail(arch.path, f"architecture conv_layers[{i}] must be [\"pool\"] or [\"conv\", channels, "
                                       f"[kernel_height, kernel_width]] of positive ints, got {_short(item)}")
        if not conv_layers:
            raise _fail(arch.path, "architecture conv_layers is empty: a cnn has conv layers")
        n_outputs, sizes, options = _dense_options(arch)
        # (the convolutions keep the image size: stride 1, "same" padding)
        _check_weight_count(arch, n_weights + _dense_weights([h * w * channels, *sizes, n_outputs]), max_weights)
        try:
            return ConvNetwork(tuple(image_shape), conv_layers, n_outputs, sizes, **options, xnor=xnor,
                               random_state=np.random.RandomState(0), xp=np)
        except ValueError as exc:  # layers that do not fit the image
            raise _fail(arch.path, f"architecture is not a network: {exc}") from None


#: Kinds of network a model file can hold, by the ``model_kind`` it records.
#: A kind has a ``name``, ``network`` (the class of its networks),
#: ``compiler`` (the class of the packed inference model of its binary
#: networks), ``architecture(network)`` (a JSON object),
#: ``build(architecture, xnor, max_weights)`` (a network of that architecture
#: whose arrays are then overwritten, refused if it has more than
#: ``max_weights`` weights) and ``slots(network, latent)`` (where
#: each stored array goes, and its dtype and shape).  A file of a kind this
#: version does not have is refused ("unknown model kind").
MODEL_KINDS = {kind.name: kind for kind in (_MLPKind, _CNNKind)}


def _kind_of(network):
    for kind in MODEL_KINDS.values():
        if type(network) is kind.network:
            return kind
    raise TypeError(f"save_model cannot save a network of type {type(network).__name__} "
                    f"(model kinds: {sorted(MODEL_KINDS)})")


# ------------------------------------------------------------------ saving
def _little(a):
    a = np.ascontiguousarray(a)
    return a.astype(a.dtype.newbyteorder("<"), copy=False)


def _npy_bytes(a):
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def save_model(estimator, path, *, training_state=True):
    """Save a fitted :class:`~xnorcore.BNNClassifier` to ``path`` in a file that holds no code.

    The file is a zip of JSON metadata and ``.npy`` arrays (format described in
    :mod:`xnorcore._model_io`); :func:`load_model` reads it back without
    unpickling anything.  The write is atomic: a temporary file in the same
    folder is written, flushed to disk and renamed over ``path``, so a failure
    leaves an existing ``path`` as it was.

    Parameters
    ----------
    estimator : BNNClassifier
        A fitted estimator, an MLP or a CNN (``conv_layers``), trained on any
        device: arrays are stored from the host.
    path : str or os.PathLike
        File to write (a usual suffix is ``.xnor``).
    training_state : bool, default=True
        Also store the latent weights, the Adam state and the random
        generator, so that :meth:`~xnorcore.BNNClassifier.partial_fit` (and
        ``warm_start``) can go on after loading.  ``False`` stores what
        prediction needs: binary weights as packed bits.

    Raises
    ------
    TypeError
        If ``estimator`` is not a BNNClassifier, or its labels or feature
        names are not numbers or strings.
    ValueError
        If it is not fitted, or ``training_state=True`` for an estimator whose
        training state was dropped.
    OSError
        If ``path`` cannot be written.

    Examples
    --------
    >>> import os, tempfile
    >>> from sklearn.datasets import load_digits
    >>> from xnorcore import BNNClassifier, load_model, save_model
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = BNNClassifier((64,), max_iter=2, random_state=0).fit(X, y)
    >>> path = os.path.join(tempfile.mkdtemp(), "digits.xnor")
    >>> save_model(clf, path)
    >>> bool((load_model(path).decision_function(X) == clf.decision_function(X)).all())
    True
    """
    from .estimator import BNNClassifier

    if not isinstance(estimator, BNNClassifier):
        raise TypeError(f"estimator must be a BNNClassifier, got {type(estimator).__name__}")
    if not hasattr(estimator, "network_"):
        raise ValueError("estimator must be fitted before save_model (call fit or partial_fit first)")
    if not isinstance(training_state, (bool, np.bool_)):
        raise TypeError(f"training_state must be True or False, got training_state={training_state!r}")
    network = estimator.network_
    has_state = estimator.optimizer_ is not None and network.has_training_state
    if training_state and not has_state:
        raise ValueError("training_state=True, but this estimator's training state was dropped "
                         "(drop_training_state); save it with training_state=False")
    kind = _kind_of(network)
    # Arrays go to the host (a network trained on a GPU loads anywhere); the
    # estimator itself is not changed.
    network = copy.deepcopy(network).to(np)
    if not training_state:
        network.drop_training_state()

    arrays = {"input_mean": np.asarray(estimator.input_mean_, dtype=np.float32)}
    for name, slot in kind.slots(network, training_state).items():
        value = getattr(slot.layer, slot.attr)
        arrays[name] = value.words if isinstance(value, PackedBits) else value
    optimizer = random_state = None
    if training_state:
        opt = estimator.optimizer_
        optimizer = {"beta1": float(opt.beta1), "beta2": float(opt.beta2), "eps": float(opt.eps), "t": int(opt.t)}
        params = {p[0] for p in network.params()}
        for moments, key in ((opt.m, "m"), (opt.v, "v")):
            for param, value in moments.items():
                if param not in params:
                    raise ValueError(f"the optimizer holds a moment for {param!r}, which the network does not have")
                arrays[f"adam/{key}/{param}"] = to_numpy(value)
        rng = getattr(estimator, "_random_state", None)
        if isinstance(rng, np.random.RandomState):
            algorithm, keys, pos, has_gauss, cached = rng.get_state(legacy=True)
            random_state = {"pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
            arrays["random_state/keys"] = np.asarray(keys, dtype=np.uint32)

    inference = None
    if network.binary:
        inference = kind.compiler.from_network(network, estimator.input_mean_, estimator.input_scale_).to_arrays()[0]

    params = {}
    for key, value in estimator.get_params(deep=False).items():
        if key == "hidden_layer_sizes":
            value = [int(h) for h in (value if not isinstance(value, numbers.Integral) else [value])]
        elif key == "random_state" and not (value is None or isinstance(value, numbers.Integral)):
            value = None  # a RandomState instance: its state at save time is random_state/keys
        elif isinstance(value, (numbers.Number, np.bool_)):
            value = _json_number(value, key)
        params[key] = value

    names = getattr(estimator, "feature_names_in_", None)
    if names is not None and not all(isinstance(n, str) for n in np.asarray(names).tolist()):
        raise TypeError("feature_names_in_ must hold strings to be saved")
    fitted = {
        "classes_": _labels_to_json(estimator.classes_, "classes_"),
        "n_features_in_": int(estimator.n_features_in_),
        "feature_names_in_": None if names is None else list(np.asarray(names).tolist()),
        "input_scale_": float(estimator.input_scale_),
        "input_exponent_": int(getattr(estimator, "input_exponent_", 0)),
        "device_": str(estimator.device_),
        "xnor_": bool(estimator.xnor_),
        "n_iter_": int(estimator.n_iter_),
        "t_": int(estimator.t_),
        "loss_curve_": [_json_number(v, "loss_curve_") for v in estimator.loss_curve_],
        "best_loss_": _json_number(estimator.best_loss_, "best_loss_"),
        "validation_scores_": None if estimator.validation_scores_ is None
        else [_json_number(v, "validation_scores_") for v in estimator.validation_scores_],
        "best_validation_score_": None if estimator.best_validation_score_ is None
        else _json_number(estimator.best_validation_score_, "best_validation_score_"),
    }
    from ._version import __version__

    arrays = {name: _little(a) for name, a in arrays.items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "xnorcore_version": __version__,
        "estimator": "BNNClassifier",
        "params": params,
        "model_kind": kind.name,
        "architecture": kind.architecture(network),
        "layers": {layer.name: {"eps": float(layer.eps), "momentum": float(layer.momentum)}
                   for layer in network.layers() if hasattr(layer, "running_var")},
        "fitted": fitted,
        "inference": inference,
        "training_state": bool(training_state),
        "optimizer": optimizer,
        "random_state": random_state,
        "arrays": {name: {"dtype": a.dtype.str, "shape": list(a.shape)} for name, a in arrays.items()},
    }
    text = json.dumps(metadata, allow_nan=False, indent=1).encode("utf-8")
    with atomic_write(path) as f:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr(METADATA, text)
            for name, a in arrays.items():
                zf.writestr(_PREFIX + name + _SUFFIX, _npy_bytes(a))


# ------------------------------------------------------------------ loading
def _read_npy(zf, info, expected, path):
    """The array of member ``info``, refused unless its header says exactly ``expected`` (dtype, shape)."""
    dtype, shape = expected
    name = info.filename
    try:
        with zf.open(info) as f:
            try:
                version = np.lib.format.read_magic(f)
            except ValueError:
                raise _fail(path, f"member {name} is not a .npy array") from None
            if version == (1, 0):
                got_shape, fortran, got_dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                got_shape, fortran, got_dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise _fail(path, f"member {name} has an unsupported .npy version {version}")
            if got_dtype != dtype or got_dtype.hasobject:
                raise _fail(path, f"member {name} has dtype {got_dtype.str}, expected {dtype.str}")
            if tuple(got_shape) != tuple(shape):
                raise _fail(path, f"member {name} has shape {tuple(got_shape)}, expected {tuple(shape)}")
            if fortran and len(shape) > 1:
                raise _fail(path, f"member {name} is in Fortran order, expected C order")
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            data = f.read(nbytes)
            if len(data) != nbytes:
                raise _fail(path, f"member {name} is truncated: {len(data)} of {nbytes} data bytes")
            if f.read(1):
                raise _fail(path, f"member {name} has data after its array")
    except (zipfile.BadZipFile, EOFError, OSError, RuntimeError, NotImplementedError) as exc:
        raise _fail(path, f"member {name} cannot be read ({type(exc).__name__}: {exc})") from None
    except ValueError as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise _fail(path, f"member {name} has a bad .npy header ({exc})") from None
    return np.frombuffer(data, dtype=dtype).astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def _open_archive(path):
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such model file") from None
    except IsADirectoryError:
        raise ModelFileError(f"{path}: is a folder, not a model file") from None
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror or exc})") from None
    if not zipfile.is_zipfile(path) and _is_pickle(path):
        raise _fail(path, "is a pickle, not an xnorcore model file: load_model never unpickles (loading a "
                          "pickle runs code); load it with pickle only if you trust where it came from")
    try:
        return zipfile.ZipFile(path, "r")
    except zipfile.BadZipFile as exc:
        raise _fail(path, f"not an xnorcore model file: not a zip archive, or truncated ({exc})") from None
    except (OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise _fail(path, f"not an xnorcore model file: cannot read it as a zip archive ({exc})") from None


def _read_metadata(zf, path):
    try:
        info = zf.getinfo(METADATA)
    except KeyError:
        raise _fail(path, f"not an xnorcore model file: it has no {METADATA} member") from None
    if info.file_size > _MAX_METADATA_BYTES:
        raise _fail(path, f"{METADATA} is {info.file_size} bytes, more than a model's metadata can be")
    try:
        text = zf.read(info)
    except (zipfile.BadZipFile, EOFError, OSError, RuntimeError, NotImplementedError, ValueError) as exc:
        raise _fail(path, f"{METADATA} cannot be read ({type(exc).__name__}: {exc})") from None

    def no_constants(name):
        raise ValueError(f"{name} is not a number in JSON")

    try:
        meta = json.loads(text.decode("utf-8"), parse_constant=no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _fail(path, f"{METADATA} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise _fail(path, f"{METADATA} must be a JSON object, got {type(meta).__name__}")
    return meta


def load_model(path):
    """Load an estimator that :func:`save_model` wrote, without running any code from the file.

    Nothing is unpickled.  The metadata is checked for the format, its
    version and every key; every array's dtype and shape is checked against
    the architecture the metadata describes (an MLP's or a CNN's: layer sizes
    chain, conv kernel sizes and channel counts follow from the conv layers,
    packed word counts, padding bits of packed words zero) before it is used,
    and the packed model compiled from the arrays must be the one recorded
    (for a CNN: each convolution's padding, stride and max-pool).

    Parameters
    ----------
    path : str or os.PathLike
        A model file.

    Returns
    -------
    estimator : BNNClassifier
        Fitted, on the CPU, predicting exactly as the saved one did; it can
        go on training (``partial_fit``, ``warm_start``) if the file holds the
        training state.

    Raises
    ------
    ModelFileError
        (a ValueError) If the file is not an xnorcore model file, is corrupt,
        truncated or forged (members not listed in the metadata or missing,
        arrays of another dtype or shape than the architecture needs, object
        arrays, bad values), or was written by a newer format version; the
        message names the file and what is wrong.
    FileNotFoundError
        If ``path`` does not exist.
    """
    path = os.fspath(path)
    with _open_archive(path) as zf:
        meta = _read_metadata(zf, path)
        return _load(zf, _Reader(path, meta), path)


def _as_tuples(value):
    """``value`` with every list in it, nested ones too, turned into a tuple."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


def _load(zf, meta, path):
    from .estimator import BNNClassifier

    fmt = meta.data.get("format")
    if fmt != FORMAT:
        raise _fail(path, f"not an xnorcore model file: format is {_short(fmt)}, expected {FORMAT!r}")
    version = meta.get("format_version", "int")
    if version > FORMAT_VERSION:
        raise _fail(path, f"was written in format version {version} (by xnorcore "
                          f"{_short(meta.data.get('xnorcore_version'))}); this xnorcore reads versions up to "
                          f"{FORMAT_VERSION}: upgrade xnorcore to load it")
    if version < 1:
        raise _fail(path, f"format_version must be at least 1, got {version}")
    if meta.get("estimator", "str") != "BNNClassifier":
        raise _fail(path, f"holds a {_short(meta.data['estimator'])}, expected a BNNClassifier")

    # Members: exactly the listed arrays and the metadata.
    listed = meta.get("arrays", "dict")
    infos = zf.infolist()
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        raise _fail(path, "the archive has duplicate member names")
    for info in infos:
        name = info.filename
        if name == METADATA:
            continue
        key = name[len(_PREFIX):-len(_SUFFIX)] if name.startswith(_PREFIX) and name.endswith(_SUFFIX) else None
        if key not in listed:
            raise _fail(path, f"member {name!r} is not listed in the metadata (a model file holds only "
                              f"{METADATA} and the arrays it lists)")
        if info.flag_bits & 0x1:
            raise _fail(path, f"member {name} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _fail(path, f"member {name} uses an unsupported compression method {info.compress_type}")
    for key in listed:
        if _PREFIX + key + _SUFFIX not in names:
            raise _fail(path, f"array {key!r} is listed in the metadata but the member "
                              f"{_PREFIX + key + _SUFFIX} is missing")

    # The network of the recorded kind and architecture: it fixes every array's shape.
    kind_name = meta.get("model_kind", "str")
    if kind_name not in MODEL_KINDS:
        raise _fail(path, f"unknown model kind {kind_name!r}: this xnorcore loads {sorted(MODEL_KINDS)}")
    kind = MODEL_KINDS[kind_name]
    fitted = meta.sub("fitted")
    xnor = fitted.get("xnor_", "bool")
    arch = meta.sub("architecture")
    network = kind.build(arch, xnor, _max_weights(path, infos))
    training_state = meta.get("training_state", "bool")
    slots = kind.slots(network, training_state)
    n_features = fitted.get("n_features_in_", "int")
    if n_features != network.n_features:
        raise _fail(path, f"n_features_in_={n_features} but the network reads {network.n_features} features")
    expected = {"input_mean": (_F4, (n_features,))}
    expected.update({name: (slot.dtype, slot.shape) for name, slot in slots.items()})
    opt_meta = meta.sub("optimizer", optional=True)
    rng_meta = meta.sub("random_state", optional=True)
    param_shapes = {p[0]: tuple(p[1].shape) for p in network.params()}
    if training_state:
        if opt_meta is None:
            raise _fail(path, "training_state is true but there is no optimizer state")
        for key in listed:
            for moment in ("m", "v"):
                prefix = f"adam/{moment}/"
                if key.startswith(prefix):
                    param = key[len(prefix):]
                    if param not in param_shapes:
                        raise _fail(path, f"array {key!r} is a moment of {param!r}, which the network has not")
                    expected[key] = (_F4, param_shapes[param])
        if rng_meta is not None:
            expected["random_state/keys"] = (_U4, (624,))
    for key in expected:
        if key not in listed:
            raise _fail(path, f"array {key!r}, which the architecture needs, is not in the file")
    for key, spec in listed.items():
        if key not in expected:
            raise _fail(path, f"array {key!r} is not part of a {kind_name} model with this architecture "
                              f"(training_state={training_state})")
        dtype, shape = expected[key]
        if spec != {"dtype": dtype.str, "shape": list(shape)}:
            raise _fail(path, f"array {key!r} is recorded as {_short(spec)}, but the architecture needs "
                              f"dtype {dtype.str} and shape {list(shape)}")

    arrays = {}
    for key, spec in expected.items():
        a = _read_npy(zf, zf.getinfo(_PREFIX + key + _SUFFIX), spec, path)
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise _fail(path, f"array {key!r} holds NaN or infinite values")
        arrays[key] = a

    # Fill the network.
    for name, slot in slots.items():
        value = arrays[name]
        if slot.bits is not None:
            try:
                value = PackedBits(value, *slot.bits)
            except (TypeError, ValueError) as exc:
                raise _fail(path, f"array {name!r}: {exc}") from None
            slot.layer.weight = None
        setattr(slot.layer, slot.attr, value)
    layer_meta = meta.get("layers", "dict")
    bn_layers = {layer.name: layer for layer in network.layers() if hasattr(layer, "running_var")}
    if set(layer_meta) != set(bn_layers):
        raise _fail(path, f"metadata layers lists {sorted(layer_meta)}, but the network's batch-norm "
                          f"layers are {sorted(bn_layers)}")
    for name, layer in bn_layers.items():
        spec = meta.sub("layers").sub(name)
        eps, momentum = spec.get("eps", "float"), spec.get("momentum", "float")
        if not (eps > 0 and 0 <= momentum <= 1):
            raise _fail(path, f"layer {name}: eps must be > 0 and momentum in [0, 1], got {eps}, {momentum}")
        layer.eps, layer.momentum = eps, momentum
    if any(np.any(arrays[f"network/{name}/running_var"] < 0) for name in bn_layers):
        raise _fail(path, "a batch-norm running_var is negative")

    # The estimator.
    params = dict(meta.get("params", "dict"))
    known = BNNClassifier().get_params(deep=False)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise _fail(path, f"params has unknown parameters {unknown} for this xnorcore's BNNClassifier")
    # JSON keeps tuples as lists: give the sequence parameters back as tuples.
    for key in ("hidden_layer_sizes", "image_shape", "conv_layers"):
        if isinstance(params.get(key), list):
            params[key] = _as_tuples(params[key])
    estimator = BNNClassifier(**params)
    try:
        estimator._validate_params()
    except ValueError as exc:  # InvalidParameterError
        raise _fail(path, f"params are not valid BNNClassifier parameters: {exc}") from None

    classes = _labels_from_json(fitted.get("classes_", "dict"), "classes_", path)
    if len(classes) != network.n_outputs or len(classes) < 2:
        raise _fail(path, f"classes_ has {len(classes)} labels but the network has {network.n_outputs} outputs")
    names = fitted.get("feature_names_in_", "list", optional=True)
    if names is not None and (len(names) != n_features or not all(isinstance(n, str) for n in names)):
        raise _fail(path, f"feature_names_in_ must be {n_features} strings")
    input_scale = fitted.get("input_scale_", "float")
    if not input_scale > 0:
        raise _fail(path, f"input_scale_ must be positive, got {input_scale}")
    device = fitted.get("device_", "str")
    if device not in ("cpu", "gpu"):
        raise _fail(path, f"device_ must be 'cpu' or 'gpu', got {device!r}")
    loss_curve = fitted.floats("loss_curve_")
    n_iter, t = fitted.get("n_iter_", "int"), fitted.get("t_", "int")
    if n_iter < 0 or t < 0:
        raise _fail(path, f"n_iter_ and t_ must be non-negative, got {n_iter} and {t}")

    estimator.classes_ = classes
    estimator.n_features_in_ = n_features
    if names is not None:
        estimator.feature_names_in_ = np.array(names, dtype=object)
    estimator.input_mean_ = arrays["input_mean"]
    estimator.input_scale_ = np.float32(input_scale)
    estimator.input_exponent_ = fitted.get("input_exponent_", "int")
    estimator.network_ = network
    estimator.image_shape_ = getattr(network, "image_shape", None)
    estimator.loss_curve_ = loss_curve
    estimator.best_loss_ = fitted.get("best_loss_", "float")
    estimator.n_iter_ = n_iter
    estimator.t_ = t
    scores = fitted.get("validation_scores_", "list", optional=True)
    estimator.validation_scores_ = None if scores is None else fitted.floats("validation_scores_")
    best = fitted.get("best_validation_score_", "float", optional=True)
    estimator.best_validation_score_ = None if best is None else float(best)
    estimator.device_ = device
    estimator.xnor_ = xnor

    estimator.optimizer_ = None
    rng = np.random.RandomState(params.get("random_state") if isinstance(params.get("random_state"), int) else None)
    if training_state:
        opt = Adam(opt_meta.get("beta1", "float"), opt_meta.get("beta2", "float"), opt_meta.get("eps", "float"))
        opt.t = opt_meta.get("t", "int")
        opt.m = {key[len("adam/m/"):]: a for key, a in arrays.items() if key.startswith("adam/m/")}
        opt.v = {key[len("adam/v/"):]: a for key, a in arrays.items() if key.startswith("adam/v/")}
        if set(opt.m) != set(opt.v):
            raise _fail(path, "the Adam moments m and v are not stored for the same parameters")
        if any(np.any(a < 0) for a in opt.v.values()):
            raise _fail(path, "an Adam second moment (adam/v) is negative")
        estimator.optimizer_ = opt
        if rng_meta is not None:
            has_gauss = rng_meta.get("has_gauss", "int")
            pos = rng_meta.get("pos", "int")
            if has_gauss not in (0, 1) or not 0 <= pos <= 624:
                raise _fail(path, f"random_state has pos={pos} and has_gauss={has_gauss}, out of range")
            rng.set_state(("MT19937", arrays["random_state/keys"], pos, has_gauss,
                           rng_meta.get("cached_gaussian", "float")))
    estimator._random_state = rng

    # The packed model compiled from these arrays must be the one that was saved.
    estimator._inference = estimator._compile()
    recorded = meta.data.get("inference")
    compiled = None if estimator._inference is None else estimator._inference.to_arrays()[0]
    if compiled != recorded:
        where, in_file, made = first_difference(recorded, compiled, "inference")
        raise _fail(path, "the inference metadata disagrees with the packed model these arrays make "
                          f"({where}: the file records {_short(in_file)}, the arrays make {_short(made)})")
    return estimator


def _is_pickle(path):
    """Whether the file parses as a pickle, to say so in the error (pickletools only parses: it runs nothing)."""
    try:
        # (decoding the string operands of arbitrary bytes warns about their escapes)
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            last = None
            for last, _, _ in pickletools.genops(f):
                pass
        return last is not None and last.name == "STOP"
    except Exception:  # anything that is not a well-formed pickle
        return False

