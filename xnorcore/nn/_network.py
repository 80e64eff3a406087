"""A multilayer perceptron with binary weights and activations.

Layout of a binary network with ``hidden_layer_sizes=(h1, ..., hL)``::

    x (real) -> dense1 -> bn1 -> sign -> dense2 -> bn2 -> sign -> ... -> dense{L+1} -> logits
                real W                 sign(W), XNOR                    real W (+ bias)

The first layer sees the real-valued input and the last layer gives real
logits, as in BinaryNet; ``binarize_first`` / ``binarize_last`` binarize their
weights too (the last one then gets a batch norm as its scale).  The real-valued
network (``binary=False``) is ``dense -> bn -> relu`` per hidden layer.

After training, :meth:`Network.pack` builds the inference form: each binary
layer keeps its weights as :class:`~xnorcore.PackedBits`, and batch norm
followed by sign becomes one integer threshold per unit, so a binary layer maps
packed bits to packed bits with one :func:`~xnorcore.binary_matmul`.
"""

import contextlib
import copy
import math

import numpy as np

from .. import _cpu
from ..ops import PackedBits, binary_matmul, get_array_module, n_words, pack_bits, unpack_bits
from ._layers import BatchNorm, Dense, ReLU, Sign
from ._loss import softmax_cross_entropy

_F32 = np.float32

#: Rows of the first layer's input with at most this fraction of nonzeros go
#: through the zero-skipping kernel (see Network.input_sums), the others
#: through BLAS: on a 2-core Zen 4, the kernel was faster up to about 45%.
_SPARSE_INPUT_DENSITY = 0.4


def _to_numpy(a):
    if a is None or isinstance(a, np.ndarray):
        return a
    if isinstance(a, PackedBits):
        return PackedBits(_to_numpy(a.words), a.shape, a.axis)
    if type(a).__module__.split(".")[0] == "cupy":
        return a.get()
    return a


def _to_module(a, xp):
    if isinstance(a, PackedBits):
        return PackedBits(_to_module(a.words, xp), a.shape, a.axis)
    if isinstance(a, np.ndarray) and xp is not np:
        return xp.asarray(a)
    return a


def _unpacked_matmul(packed, weight, rows=1024):
    """``unpack_bits(packed) @ weight`` in float64: a real layer on binary inputs.

    On the CPU, with few output units (a classifier's logits), one kernel adds
    the terms of each row in input order straight from the bits (see
    ``_real_layers.h``): the sums of a sample do not depend on its batch.
    Otherwise the +-1 rows are unpacked in blocks that stay in cache instead
    of as one float64 array eight times the size of a float32 input, and go
    through BLAS.
    """
    xp = get_array_module(packed.words)
    weight = weight.astype(np.float64)
    n, k = packed.shape
    if xp is np and weight.shape[1] <= _cpu.SIGNED_SUMS_MAX_UNITS:
        return _cpu.signed_sums(packed.words, k, weight)
    out = xp.empty((n, weight.shape[1]), dtype=np.float64)
    with _one_blas_thread() if xp is np else contextlib.nullcontext():
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            part = PackedBits(packed.words[start:stop], (stop - start, k), 1)
            out[start:stop] = unpack_bits(part, dtype=np.float64) @ weight
    return out


_blas_controller = None


def _one_blas_thread():
    """A context in which BLAS runs on one thread (threadpoolctl).

    For real output layers too wide for ``signed_sums``, the packed CPU path
    calls BLAS once per block of rows.  With several BLAS threads, the idle
    ones keep spinning after each call and slow the OpenMP kernels of the next
    block (1.5x in all on a 2-core machine, measured before ``signed_sums``).
    """
    global _blas_controller
    if _blas_controller is None:
        from threadpoolctl import ThreadpoolController

        _blas_controller = ThreadpoolController()
    return _blas_controller.limit(limits=1, user_api="blas")


def _threshold_pack(z, direction, threshold):
    """Folded batch norm and sign: packed bits of ``direction * z - threshold >= 0``.

    ``z`` is a fresh (R, N) array of a layer's sums.  On the CPU one fused
    kernel does it; elsewhere (and for other dtypes) the same arithmetic runs
    in place on ``z``.
    """
    if get_array_module(z) is np and z.dtype == threshold.dtype and z.dtype in (np.int32, np.float32):
        words = _cpu.threshold_pack(np.ascontiguousarray(z), direction, threshold)
        return PackedBits(words, z.shape, 1)
    z *= direction
    z -= threshold
    return pack_bits(z, axis=1)


class _Block:
    """One dense layer with what follows it (batch norm, activation)."""

    def __init__(self, dense, bn, act):
        self.dense = dense
        self.bn = bn
        self.act = act
        self.activation = None  # output of the last forward, for histograms
        # Folded batch norm and sign (filled by Network.pack).
        self.threshold = None
        self.direction = None

    @property
    def name(self):
        return self.dense.name

    def layers(self):
        return [layer for layer in (self.dense, self.bn, self.act) if layer is not None]


class Network:
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
    binarize_first, binarize_last : bool
        Binarize the weights of the first / the output layer as well.
    xnor : bool
        Compute binary x binary products with :func:`~xnorcore.binary_matmul`.
    random_state : numpy.random.RandomState
        Source of the initial weights (drawn on the CPU, so a network starts
        the same on any device).
    xp : module
        numpy or cupy: where the arrays live.
    """

    def __init__(self, n_features, n_outputs, hidden_layer_sizes, *, binary=True,
                 batch_norm=True, dropout=0.0, binarize_first=False, binarize_last=False,
                 xnor=False, random_state=None, xp=np):
        rng = random_state if random_state is not None else np.random.RandomState(0)
        self.binary = bool(binary)
        self.batch_norm = bool(batch_norm)
        self.n_features = int(n_features)
        self.n_outputs = int(n_outputs)
        self.hidden_layer_sizes = tuple(int(h) for h in hidden_layer_sizes)
        self.binarize_first = bool(binarize_first) and self.binary
        self.binarize_last = bool(binarize_last) and self.binary
        self.blocks = []
        sizes = (self.n_features,) + self.hidden_layer_sizes + (self.n_outputs,)
        n_layers = len(sizes) - 1
        for i in range(n_layers):
            n_in, n_out = sizes[i], sizes[i + 1]
            first, last = i == 0, i == n_layers - 1
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
                bias=not has_bn, dropout=0.0 if first else dropout, xnor=xnor,
                need_input_grad=not first,
            )
            bn = BatchNorm(f"bn{i + 1}", n_out, xp) if has_bn else None
            if last:
                act = None
            else:
                act = Sign(f"sign{i + 1}") if self.binary else ReLU(f"relu{i + 1}")
            self.blocks.append(_Block(dense, bn, act))
        self._packed = False
        self._input_fold = None  # see input_sums

    # ------------------------------------------------------------------ basics
    @property
    def xp(self):
        d = self.blocks[-1].dense
        return get_array_module(d.weight if d.weight is not None else d.weight_packed)

    @property
    def xnor(self):
        return self.blocks[-1].dense.xnor

    def set_xnor(self, xnor):
        for block in self.blocks:
            block.dense.xnor = bool(xnor)

    @property
    def has_training_state(self):
        return all(b.dense.weight is not None for b in self.blocks)

    def layers(self):
        return [layer for block in self.blocks for layer in block.layers()]

    def params(self):
        return [p for layer in self.layers() for p in layer.params()]

    # ---------------------------------------------------------------- training
    def forward(self, x, training=False, rng=None, first_sums=None):
        """Logits of ``x`` through the (unpacked) float path.

        Training runs in float32.  Inference computes real-valued products in
        float64 (all layers of a real-valued network, the output layer of a
        binary one): float32 sums vary in their last bit with the batch
        composition, and a sample's scores should not depend on its batch.
        ``first_sums`` (from :meth:`input_sums`) replaces the first layer's
        product; ``x`` is then not used.
        """
        h = x
        last = self.blocks[-1]
        if not training and not self.binary:
            h = h.astype(np.float64)
        for block in self.blocks:
            layers = block.layers()
            d = block.dense
            if first_sums is not None and block is self.blocks[0]:
                h, layers = first_sums, layers[1:]  # what Dense.forward would give, but the bias
                if d.bias is not None:
                    h = h + d.bias
            if not training and block is last:
                h = h.astype(np.float64)
                if d.binary_input and not d.binary_weights:
                    # The real output layer on +-1 inputs: the same sums as the packed path.
                    h, layers = _unpacked_matmul(pack_bits(h, axis=1), d.weight), layers[1:]
                    if d.bias is not None:
                        h = h + d.bias
            for layer in layers:
                h = layer.forward(h, training, rng)
            block.activation = h
        return h

    def backward(self, grad):
        for layer in reversed(self.layers()):
            grad = layer.backward(grad)
            if grad is None:
                break

    def train_step(self, x, y, optimizer, lr, reg=0.0, rng=None):
        """One optimizer step on a minibatch; returns the loss (on the device)."""
        if not self.has_training_state:
            raise RuntimeError(
                "this network's training state was dropped (drop_training_state); "
                "it can predict but not train"
            )
        self._packed = False
        logits = self.forward(x, training=True, rng=rng)
        loss, grad = softmax_cross_entropy(logits, y)
        self.backward(grad)
        params = self.params()
        if reg:
            xp = self.xp
            reg32 = _F32(reg)
            for name, p, g, _ in params:
                if name.endswith("/weight"):
                    g += reg32 * xp.sign(p)
                    loss = loss + reg32 * xp.abs(p).sum()
        optimizer.step(params, lr)
        return loss

    # -------------------------------------------------------------- inference
    def pack(self):
        """Build the packed inference form of every binary layer.

        Each layer followed by sign gets batch norm (and bias) folded into one
        threshold per unit: ``bn(z) >= 0`` is ``z >= t`` for a positive
        batch-norm scale and ``z <= t`` for a negative one, so the layer
        computes ``s * z - s * t >= 0`` with ``s`` the sign of the scale; a
        zero scale makes the unit a constant (``s = 0`` and ``t = -1`` or
        ``+1``, so that ``-t`` is the sign of the batch-norm shift).  For binary x binary products ``z`` is
        an integer and so is ``t`` (rounded up or down with the direction), so
        the packed path reproduces the float path exactly.
        """
        if self._packed:
            return self
        self._input_fold = None
        for block in self.blocks:
            d = block.dense
            if d.binary_weights and d.weight is not None:
                d.weight_packed = pack_bits(d.weight, axis=0)
            if isinstance(block.act, Sign):
                block.direction, block.threshold = self._thresholds(
                    block, integer=d.binary_input and d.binary_weights
                )
        self._packed = True
        return self

    def _thresholds(self, block, integer):
        xp = self.xp
        d, bn = block.dense, block.bn
        k, n_out = d.shape
        bias = _to_numpy(d.bias).astype(np.float64) if d.bias is not None else np.zeros(n_out)
        if bn is not None:
            inv_std = 1.0 / np.sqrt(_to_numpy(bn.running_var).astype(np.float64) + bn.eps)
            alpha = _to_numpy(bn.gamma).astype(np.float64) * inv_std
            offset = alpha * (bias - _to_numpy(bn.running_mean)) + _to_numpy(bn.beta)
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
        dtype = np.int32 if integer else _F32
        return xp.asarray(direction.astype(np.int8)), xp.asarray(threshold.astype(dtype))

    def input_sums(self, x, mean, scale):
        """First-layer sums of raw inputs, with their standardization folded in.

        For a binary network on the CPU, the sums of ``(x - mean) / scale``
        through the first layer are computed as ``x @ (W / scale)`` plus
        ``-(mean / scale) @ W`` (without the bias), by a kernel that skips zero
        inputs and adds each row's terms in one fixed order (see
        ``_real_layers.h``).  Both inference paths take these sums through
        ``first_sums``, so they stay equal.

        Returns
        -------
        sums : ndarray of shape (n_samples, n_units) float32, or None
            None where this does not apply (a real-valued network, no hidden
            layer, arrays on the GPU): the caller then standardizes and runs
            the usual product.
        """
        if not self.binary or self.xp is not np or len(self.blocks) < 2:
            return None  # (with no hidden layer, the first layer is the output layer)
        self.pack()
        fold = getattr(self, "_input_fold", None)
        if fold is None or fold[0] is not mean or fold[1] != scale:
            d = self.blocks[0].dense
            w = d.effective_weight().astype(np.float64) / float(scale)
            # The bias stays out: forward adds it, and the packed path has it in its thresholds.
            init = -(np.asarray(mean, dtype=np.float64) @ w)
            w = w.astype(_F32)
            fold = self._input_fold = (mean, scale, w, _cpu.input_weights(w), init.astype(_F32))
        w, w_blocks, init = fold[2:]
        x = np.ascontiguousarray(x, dtype=_F32)
        sums, dense = _cpu.input_sums(x, w_blocks, init, max_density=_SPARSE_INPUT_DENSITY)
        # Rows with few zeros go through BLAS, which is faster on them.
        if dense.size == len(x):
            sums = x @ w
            sums += init
        elif dense.size:
            sums[dense] = x[dense] @ w + init
        return sums

    def forward_packed(self, x, first_sums=None):
        """Logits of ``x`` through the packed path (binary networks only).

        ``first_sums`` (from :meth:`input_sums`) replaces the first layer's
        product; ``x`` is then not used.
        """
        if not self.binary:
            raise ValueError("the packed path exists only for binary networks")
        self.pack()
        h = x
        for block in self.blocks:
            d = block.dense
            if first_sums is not None and block is self.blocks[0]:
                h = _threshold_pack(first_sums, block.direction, block.threshold)
                block.activation = h
                continue
            if (isinstance(h, PackedBits) and d.binary_weights and block.threshold is not None
                    and self.xp is np):
                # Binary in, binary out: product, folded batch norm and sign in
                # one CPU kernel, with no int32 sums written out.
                words = _cpu.xnor_gemm_threshold_pack(
                    h.words, d.weight_packed.words, h.shape[1], block.direction, block.threshold
                )
                h = block.activation = PackedBits(words, (h.shape[0], d.shape[1]), 1)
                continue
            if isinstance(h, PackedBits):
                if d.binary_weights:
                    z = binary_matmul(h, d.weight_packed)
                else:
                    z = _unpacked_matmul(h, d.weight)
            else:
                z = h @ d.effective_weight()
            if block.threshold is not None:
                h = _threshold_pack(z, block.direction, block.threshold)
                block.activation = h
                continue
            if z.dtype.kind != "f":
                z = z.astype(np.float64)
            if d.bias is not None:
                z = z + d.bias
            if block.bn is not None:
                z = block.bn.forward(z, False)
            h = z
            block.activation = h
        return h

    def drop_training_state(self):
        """Keep only what inference needs: packed binary weights, no latent ones."""
        self.pack()
        for block in self.blocks:
            d = block.dense
            if d.binary_weights:
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

    # -------------------------------------------------------------- reporting
    def histograms(self):
        """Per-layer arrays for TensorBoard-style histograms (numpy copies).

        Returns
        -------
        hist : dict of str to ndarray
            ``"dense{i}/weight"`` (latent real weights),
            ``"dense{i}/weight_binary"`` (binarized weights of binary layers),
            ``"dense{i}/activation"`` (output of the layer's block in the last
            forward pass, after batch norm and activation; unpacked to +-1 if
            it came from the packed path), ``"dense{i}/weight_grad"`` (gradient
            of the last training step), and ``"bn{i}/gamma"``, ``"bn{i}/beta"``.
        """
        out = {}
        for block in self.blocks:
            d, name = block.dense, block.name
            if d.weight is not None:
                out[f"{name}/weight"] = _to_numpy(d.weight).copy()
            if d.binary_weights:
                out[f"{name}/weight_binary"] = _to_numpy(d.effective_weight())
            if d.bias is not None:
                out[f"{name}/bias"] = _to_numpy(d.bias).copy()
            if block.activation is not None:
                act = block.activation
                if isinstance(act, PackedBits):
                    act = unpack_bits(act, dtype=_F32)
                out[f"{name}/activation"] = _to_numpy(act).copy()
            if d.weight_grad is not None:
                out[f"{name}/weight_grad"] = _to_numpy(d.weight_grad).copy()
            if block.bn is not None:
                out[f"{block.bn.name}/gamma"] = _to_numpy(block.bn.gamma).copy()
                out[f"{block.bn.name}/beta"] = _to_numpy(block.bn.beta).copy()
        return out

    def memory_rows(self):
        """Per-layer parameter memory of the inference model, packed vs float32.

        Returns
        -------
        rows : list of dict
            Keys ``layer``, ``shape``, ``binary``, ``n_params``, ``float32_bytes``
            (every parameter as float32) and ``packed_bytes`` (binary weights as
            bits, real weights as float32, and for layers followed by sign one
            4-byte threshold and one int8 direction per unit in place of bias
            and batch norm).
        """
        self.pack()
        rows = []
        for block in self.blocks:
            d = block.dense
            n_in, n_out = d.shape
            n_params = n_in * n_out
            extra = 0  # per-unit float parameters kept in both forms
            if d.bias is not None:
                extra += n_out
            if block.bn is not None:
                extra += 4 * n_out  # gamma, beta, running mean, running variance
            float_bytes = 4 * (n_params + extra)
            # Units followed by sign keep a 4-byte threshold and an int8
            # direction in place of bias and batch norm.
            per_unit = 5 * n_out if block.threshold is not None else 4 * extra
            if d.binary_weights:
                packed = 8 * n_out * n_words(n_in) + per_unit
            else:
                packed = 4 * n_params + per_unit
            rows.append({
                "layer": d.name, "shape": (n_in, n_out), "binary": d.binary_weights,
                "n_params": n_params + extra, "float32_bytes": float_bytes,
                "packed_bytes": packed,
            })
        return rows

    def training_state_nbytes(self):
        """Bytes of latent float32 weights of binary layers (dropped by drop_training_state)."""
        return sum(b.dense.weight.nbytes for b in self.blocks
                   if b.dense.binary_weights and b.dense.weight is not None)

    # ------------------------------------------------------------ persistence
    def to(self, xp):
        """Move every array to ``xp`` (numpy or cupy), in place."""
        conv = (lambda a: _to_numpy(a)) if xp is np else (lambda a: _to_module(a, xp))
        for block in self.blocks:
            for obj in (block, *block.layers()):
                for key, value in vars(obj).items():
                    if isinstance(value, (np.ndarray, PackedBits)) or (
                        type(value).__module__.split(".")[0] == "cupy"
                    ):
                        setattr(obj, key, conv(value))
        return self

    def __getstate__(self):
        # Caches of the last step are not part of the model; arrays are stored
        # as numpy so that a network trained on a GPU loads anywhere.
        state = dict(self.__dict__)
        state["_input_fold"] = None  # recomputed on demand
        blocks = []
        for block in self.blocks:
            b = copy.copy(block)
            b.dense = copy.copy(block.dense)
            b.dense._cache = None
            b.dense.weight_grad = None
            b.dense.bias_grad = None
            b.bn = copy.copy(block.bn) if block.bn is not None else None
            if b.bn is not None:
                b.bn._cache = None
                b.bn.gamma_grad = b.bn.beta_grad = None
            b.act = copy.copy(block.act) if block.act is not None else None
            if b.act is not None:
                b.act._x = None
            b.activation = None
            for obj in (b, *b.layers()):
                for key, value in list(vars(obj).items()):
                    setattr(obj, key, _to_numpy(value))
            blocks.append(b)
        state["blocks"] = blocks
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        # Thresholds are cheap to recompute; folding them again after loading
        # keeps a pickle valid across versions of the folding rules.
        self._packed = False
