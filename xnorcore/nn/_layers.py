"""Layers of a binary (or real-valued) multilayer perceptron.

Every layer works on numpy and cupy arrays alike: the array module is taken
from the layer's parameters (``xp = get_array_module(self.weight)``), so there
is one code path for the CPU and the GPU.

Binarization follows BinaryNet (Courbariaux et al., 2016): the forward pass
uses ``sign`` with ``sign(0) = +1``; the backward pass uses the
straight-through estimator, passing the gradient through where ``|x| <= 1``
and cancelling it elsewhere.
"""

import numpy as np

from .._array import get_array_module
from .._threads import training_threads
from .._backends import backend_for
from ..ops import binary_matmul, pack_bits, unpack_bits

_F32 = np.float32


def binarize(x):
    """``+1`` where ``x >= 0``, ``-1`` elsewhere, in the dtype of ``x``.

    Unlike :func:`xnorcore.sign` this does not check for NaN: inside training
    the check would cost a device synchronisation per call, and the inputs
    were validated when they entered the network.
    """
    return backend_for(x).signs(x, x.dtype)


def matmul(a, b):
    """``a @ b`` of a training step's float products, on the arrays' backend (a CUDA graph can capture the GPU's)."""
    return backend_for(a, b).matmul(a, b)


def sign_matmul(a, b, bf16):
    """``a @ b`` of a backward product with a +-1 operand (the signs of activations or of weights).

    Where ``bf16`` (see :meth:`Network.set_backward_dtype`), both operands are
    rounded to bfloat16, which holds the +-1 (and the zeros of dropout and
    padding) exactly: only the gradient loses precision, to 8 significant bits.
    """
    if bf16:
        threads = training_threads(a.shape[0] * a.shape[1] * b.shape[1] // 64)
        return backend_for(a, b).bf16_matmul(a, b, n_threads=threads)
    return matmul(a, b)


def set_backward_dtype(layers, dtype):
    """Sets how the weight layers among ``layers`` compute their backward products with a +-1 operand.

    ``dtype`` is ``"float32"`` or ``"bfloat16"`` (:func:`sign_matmul`); the
    latter needs a backend with ``bf16_matmul`` (the CPU's), else ValueError.
    """
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"backward_dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    weight_layers = [layer for layer in layers if isinstance(layer, WeightLayer)]
    bf16 = dtype == "bfloat16"
    for layer in weight_layers:
        array = layer.weight if layer.weight is not None else layer.weight_packed
        if bf16 and backend_for(array).bf16_matmul is None:
            raise ValueError(f"backward_dtype='bfloat16' needs a network on the CPU: the "
                             f"{backend_for(array).NAME} backend has no bfloat16 products")
    for layer in weight_layers:
        # (a real layer on real inputs has no +-1 operand: its products stay float32)
        layer.bf16_backward = bf16 and (layer.binary_input or layer.binary_weights)


def ste_mask(x):
    """Where the straight-through estimator lets the gradient of sign through."""
    xp = get_array_module(x)
    return (xp.abs(x) <= 1).astype(x.dtype)


class WeightLayer:
    """What the layers with weights share (:class:`Dense`, :class:`~xnorcore.nn.Conv2D`).

    Latent float32 weights, used as ``sign(W)`` in the forward pass where
    ``binary_weights``; an optional bias per output (the last weight axis);
    the gradients of the last step; and ``weight_packed``, the bit-packed
    ``sign(W)`` that is the only copy of binary weights once the latent ones
    are dropped.
    """

    def __init__(self, name, weight, *, binary_weights, binary_input, bias, need_input_grad):
        xp = get_array_module(weight)
        self.name = name
        self.weight = weight
        self.bias = xp.zeros(weight.shape[-1], dtype=_F32) if bias else None
        self.binary_weights = binary_weights
        self.binary_input = binary_input
        self.need_input_grad = need_input_grad
        self.bf16_backward = False
        self.weight_grad = None
        self.bias_grad = None
        self.weight_packed = None
        self._cache = None

    @property
    def shape(self):
        """Shape of the weights."""
        return tuple(self.weight.shape if self.weight is not None else self.weight_packed.shape)

    def effective_weight(self):
        """The weights the forward pass multiplies by (``sign(W)`` if binary)."""
        if self.weight is None:
            return unpack_bits(self.weight_packed, dtype=_F32)
        return binarize(self.weight) if self.binary_weights else self.weight

    def params(self):
        out = [(f"{self.name}/weight", self.weight, self.weight_grad, self.binary_weights)]
        if self.bias is not None:
            out.append((f"{self.name}/bias", self.bias, self.bias_grad, False))
        return out


class Dense(WeightLayer):
    """Fully connected layer ``z = dropout(x) @ W (+ b)``.

    Parameters
    ----------
    name : str
        Name used in histograms and summaries ("dense1", ...).
    weight : ndarray of shape (n_in, n_out)
        Initial latent weights (numpy or cupy, float32).
    binary_weights : bool
        Use ``sign(W)`` in the forward pass (latent weights are clipped to
        [-1, 1] by the optimizer and trained through the straight-through
        estimator).
    binary_input : bool
        The input is known to hold only -1 and +1 (the output of a sign
        activation), so the product can be computed with XNOR-popcount.
    bias : bool
        Add a trainable bias.
    dropout : float
        Probability of zeroing each input element during training.
    xnor : bool
        Compute ``sign(x) @ sign(W)`` with :func:`xnorcore.binary_matmul`
        when both the input and the weights are binary.  The result is exactly
        the float product, so ``xnor`` never changes what the layer computes.
    need_input_grad : bool
        Compute the gradient with respect to the input (not needed for the
        first layer).
    """

    def __init__(self, name, weight, *, binary_weights, binary_input, bias, dropout,
                 xnor, need_input_grad=True):
        super().__init__(name, weight, binary_weights=binary_weights, binary_input=binary_input, bias=bias,
                         need_input_grad=need_input_grad)
        self.dropout = float(dropout)
        self.xnor = bool(xnor)

    @property
    def uses_xnor(self):
        return self.xnor and self.binary_input and self.binary_weights

    def packed_weight(self, n_threads=None):
        """``sign(W)`` packed along the inputs (binary layers only)."""
        if self.weight is None:
            return self.weight_packed
        return pack_bits(self.weight, axis=0, n_threads=n_threads)

    @property
    def takes_packed_input(self):
        """Whether a training step's forward pass can take its input as words (:meth:`forward`'s ``x_words``)."""
        return self.uses_xnor and self.dropout == 0

    def forward(self, x, training, rng=None, x_words=None, int_sums=False):
        """``dropout(x) @ W (+ b)``.

        In training, ``x_words`` (the words of ``sign(x)`` along rows, where the
        activation that made ``x`` packed them too) saves the XNOR product a
        packing pass; ``int_sums``, for a batch norm next, lets the XNOR
        product's sums stay int32 (batch norm takes them as they are).
        """
        mask = None
        scale = None
        if training and self.dropout > 0:
            # The input is masked with 0/1 and the product rescaled afterwards,
            # so that a masked +-1 input still gives an integer product that the
            # XNOR path reproduces exactly.
            mask = (rng.random_sample(x.shape) >= self.dropout).astype(_F32)
            x = x * mask
            scale = _F32(1.0 / (1.0 - self.dropout))
        w = None
        if self.uses_xnor and training:
            # The backend's kernels straight away: x holds +-1 (and the zeros of
            # dropout), never NaN, and the latent weights are checked by the loss,
            # so nothing waits for a NaN flag.  sign(W) comes out of the packing
            # as floats too, for the backward pass.  The CPU threads of the fit
            # (one where OpenBLAS has the cores for float32 products: OpenMP
            # threads would fight its spinning threads for them; see the CPU
            # backend's training_context and benchmarks/RESULTS.md).
            backend = backend_for(x)
            threads = training_threads(x.size * self.weight.shape[1] // 64)
            w, w_words = backend.sign_pack_cols(self.weight, threads)
            k = x.shape[1]
            if x_words is None or mask is not None:
                x_words = backend.pack_signs(get_array_module(x).ascontiguousarray(x), threads)
            z = backend.xnor_gemm(x_words, w_words, k, threads)
            if mask is not None:
                # x holds -1, 0, +1.  With s = sign(x) (0 -> +1) and
                # t = -sign(-x) (0 -> -1), x = (s + t) / 2, and both s and t
                # are +-1 vectors.
                z -= backend.xnor_gemm(backend.pack_signs(-x, threads), w_words, k, threads)
                z //= 2
            if not (int_sums and mask is None and self.bias is None):
                z = z.astype(x.dtype if x.dtype.kind == "f" else _F32)
        elif self.uses_xnor:
            z = binary_matmul(x, self.packed_weight(n_threads=1), n_threads=1)
            z = z.astype(x.dtype if x.dtype.kind == "f" else _F32)
        elif not training and self.binary_input and not self.binary_weights:
            # A real layer on +-1 inputs: each row's float64 sums come from its
            # own bits in one fixed order, so a sample's scores do not depend
            # on its batch (as they would through BLAS's blocking).
            bits = pack_bits(x, axis=1)
            z = backend_for(bits).real_layer(bits.words, bits.length, self.weight)
        else:
            w = self.effective_weight()
            z = matmul(x, w) if training else x @ w
        if scale is not None:
            z *= scale
        if self.bias is not None:
            z += self.bias
        if training:
            self._cache = (x, w, mask, scale)
        return z

    def backward(self, dz):
        x, w, mask, scale = self._cache
        if self.bias is not None:
            self.bias_grad = dz.sum(axis=0)
        if scale is not None:
            dz = dz * scale
        # For binary weights the straight-through estimator would cancel the
        # gradient where |W| > 1, but the optimizer clips latent weights to
        # [-1, 1] after every step, so that mask is identically one.
        bf16 = getattr(self, "bf16_backward", False)  # (absent from networks pickled before it)
        # (C order, as the optimizer's fused kernel takes it)
        self.weight_grad = get_array_module(dz).ascontiguousarray(sign_matmul(x.T, dz, bf16 and self.binary_input))
        if not self.need_input_grad:
            return None
        if w is None:
            w = self.effective_weight()
        dx = sign_matmul(dz, w.T, bf16 and self.binary_weights)
        if mask is not None:
            dx *= mask
        return dx


def batch_norm(z, mean, var, gamma, beta, eps):
    """``(z - mean) / sqrt(var + eps) * gamma + beta``; returns it, the normalized ``z`` and ``1 / sqrt(var + eps)``.

    Training and the packed inference model both go through this, so that
    they compute the same numbers.
    """
    inv_std = 1 / (var + _F32(eps)) ** _F32(0.5)
    xhat = (z - mean) * inv_std
    return xhat * gamma + beta, xhat, inv_std


class BatchNorm:
    """Batch normalization over the sample axis, with running statistics.

    Parameters
    ----------
    name : str
        Layer name ("bn1", ...).
    n_units : int
        Number of features.
    xp : module
        numpy or cupy.
    momentum : float, default=0.9
        Running statistics are ``momentum * running + (1 - momentum) * batch``.
    eps : float, default=1e-4
        Added to the variance; larger than the usual 1e-5 because everything
        is float32.
    """

    def __init__(self, name, n_units, xp, momentum=0.9, eps=1e-4):
        self.name = name
        self.gamma = xp.ones(n_units, dtype=_F32)
        self.beta = xp.zeros(n_units, dtype=_F32)
        self.running_mean = xp.zeros(n_units, dtype=_F32)
        self.running_var = xp.ones(n_units, dtype=_F32)
        self.momentum = momentum
        self.eps = eps
        self.gamma_grad = None
        self.beta_grad = None
        self._cache = None

    def params(self):
        return [
            (f"{self.name}/gamma", self.gamma, self.gamma_grad, False),
            (f"{self.name}/beta", self.beta, self.beta_grad, False),
        ]

    def _fused_forward(self, z):
        """The training forward pass in the backend's fused kernels, or None where it has none."""
        fused = backend_for(z).batch_norm_train
        if fused is None:
            return None
        out, xhat, inv_std = fused(z, self.gamma, self.beta, self.running_mean, self.running_var,
                                   self.momentum, self.eps)
        self._cache = (xhat, inv_std)
        return out

    def _fused_backward(self, dy):
        """The backward pass in the backend's fused kernels, or None where it has none
        (then the forward pass had none either: both run on the device of the step)."""
        fused = backend_for(dy).batch_norm_backward
        if fused is None:
            return None
        xhat, inv_std = self._cache[:2]
        dz, self.gamma_grad, self.beta_grad = fused(dy, xhat, inv_std, self.gamma)
        return dz

    def forward(self, z, training, rng=None):
        if training:
            out = self._fused_forward(z)
            if out is not None:
                return out
            if z.dtype.kind != "f":  # the int32 sums of an XNOR product (Dense's int_sums)
                z = z.astype(_F32)
            mean = z.mean(axis=0)
            var = z.var(axis=0)
            m = _F32(self.momentum)
            self.running_mean *= m
            self.running_mean += (1 - m) * mean
            # Unbiased variance for inference, as in the original batch norm paper.
            n = z.shape[0]
            self.running_var *= m
            self.running_var += (1 - m) * var * _F32(n / max(n - 1, 1))
        else:
            mean, var = self.running_mean, self.running_var
        out, xhat, inv_std = batch_norm(z, mean, var, self.gamma, self.beta, self.eps)
        if training:
            self._cache = (xhat, inv_std)
        return out

    def backward(self, dy):
        dz = self._fused_backward(dy)
        if dz is not None:
            return dz
        xhat, inv_std = self._cache
        self.beta_grad = dy.sum(axis=0)
        self.gamma_grad = (dy * xhat).sum(axis=0)
        dxhat = dy * self.gamma
        n = _F32(dy.shape[0])
        return (inv_std / n) * (n * dxhat - dxhat.sum(axis=0) - xhat * (dxhat * xhat).sum(axis=0))


class ParameterFreeLayer:
    """A layer without parameters: ``_x`` keeps what its backward pass needs of the last training input."""

    def __init__(self, name):
        self.name = name
        self._x = None

    def params(self):
        return []


class Sign(ParameterFreeLayer):
    """Sign activation with the straight-through estimator."""

    def forward(self, x, training, rng=None):
        if training:
            self._x = x
        return binarize(x)

    def forward_packed(self, x):
        """The forward pass of a training step, and the words of its output along rows."""
        self._x = x
        return backend_for(x).sign_pack_rows(x, training_threads(x.size))

    def backward(self, dy):
        return backend_for(dy, self._x).ste_grad(dy, self._x)


class ReLU(ParameterFreeLayer):
    """Rectified linear activation (for the real-valued network)."""

    def forward(self, x, training, rng=None):
        if training:
            self._x = x
        xp = get_array_module(x)
        return xp.maximum(x, _F32(0))

    def backward(self, dy):
        return dy * (self._x > 0)
