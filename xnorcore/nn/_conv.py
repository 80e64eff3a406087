"""Convolution, channel batch norm, max-pool and flatten layers (NHWC).

Activations are NHWC ``(n_samples, height, width, channels)`` and weights HWIO
``(kernel_height, kernel_width, in_channels, out_channels)``, the channels-last
layouts of the packed binary convolution.  As in :mod:`xnorcore.nn._layers`,
every layer takes its array module from its arrays, so the same code trains on
numpy and on cupy.

A convolution is one matrix product over an im2col matrix: the
``KH * KW`` shifted views of the (zero-padded) input side by side, an array of
shape ``(N, OH, OW, KH, KW, C)`` that reshapes for free to
``(N * OH * OW, KH * KW * C)``, multiplied by the HWIO weights reshaped to
``(KH * KW * C, O)``.  The backward pass reuses that matrix for the weight
gradient and adds the input gradient's patches back onto the pixels
(:func:`input_gradient`).  On float32 numpy arrays both copies are one pass of
a CPU kernel (:mod:`xnorcore._train`) into buffers reused from one training
step to the next (:func:`_workspace`); other arrays (cupy) copy one strided view and add one strided
slice per tap.  Python never loops over pixels, and all the arithmetic is one
BLAS call per product.

Zero padding is what a binary convolution with ``pad_value=0`` computes: with
``sign`` inputs and weights the float products here are integers, exactly those
of :func:`xnorcore.binary_conv2d`.
"""

import math
import numbers
import weakref

import numpy as np

from .. import _train
from .._backends import backend_for
from .._threads import training_threads
from ..ops import _conv_geometry, binary_conv2d, get_array_module, pack_bits
from ._layers import BatchNorm, ParameterFreeLayer, WeightLayer, matmul, sign_matmul

_F32 = np.float32


def conv_output_size(size, kernel, stride, dilation, pad_total):
    """Output length of a convolution along one axis."""
    span = dilation * (kernel - 1) + 1
    return (size + pad_total - span) // stride + 1


def conv_padding(padding, in_hw, kernel_hw, stride, dilation):
    """Normalize ``padding`` to ``((top, bottom), (left, right))``.

    ``"same"`` gives an output of ``ceil(size / stride)``, the extra row or
    column at the end when the total is odd (as TensorFlow does); ``"valid"``
    pads nothing; an int pads every side by that amount.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0), (0, 0))
        if padding != "same":
            raise ValueError(f"padding must be 'same', 'valid', an int or ((top, bottom), (left, right)), "
                             f"got padding={padding!r}")
        pads = []
        for size, k in zip(in_hw, kernel_hw):
            span = dilation * (k - 1) + 1
            out = -(-size // stride)
            total = max((out - 1) * stride + span - size, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    if isinstance(padding, numbers.Integral) and not isinstance(padding, bool):
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got padding={padding!r}")
        p = int(padding)
        return ((p, p), (p, p))
    try:
        (t, b), (l, r) = padding
        pads = ((int(t), int(b)), (int(l), int(r)))
    except (TypeError, ValueError):
        pads = None
    if pads is None or min(pads[0] + pads[1]) < 0:
        raise ValueError(f"padding must be 'same', 'valid', an int or ((top, bottom), (left, right)) "
                         f"of non-negative ints, got padding={padding!r}")
    return pads


def _tap_slices(i, j, oh, ow, stride, dilation):
    """Rows and columns of the padded input that kernel tap (i, j) reads."""
    r0, c0 = i * dilation, j * dilation
    return (slice(r0, r0 + stride * (oh - 1) + 1, stride),
            slice(c0, c0 + stride * (ow - 1) + 1, stride))


#: Per layer, the float32 buffers of its training steps (see :func:`_workspace`).
_WORKSPACES = weakref.WeakKeyDictionary()


def _workspace(layer, key, shape):
    """A float32 numpy array of ``shape`` that ``layer`` reuses from one training step to the next.

    Fresh pages of a large array cost more than the copy into them (the patch
    matrix of a 28 x 28 x 32 layer at batch 100 is 90 MB).  The buffers live
    outside the layer (a copy or pickle of it holds none) until
    :func:`release_workspaces`.  ``layer`` is None: a new array.
    """
    if layer is None:
        return np.empty(shape, dtype=_F32)
    spaces = _WORKSPACES.setdefault(layer, {})
    a = spaces.get(key)
    if a is None or a.shape != shape:
        spaces.pop(key, None)  # (the old buffer goes before the new one is taken)
        a = spaces[key] = np.empty(shape, dtype=_F32)
    return a


def release_workspaces():
    """Free the buffers of every layer's training steps (the end of a fit)."""
    _WORKSPACES.clear()


def _host_float32(*arrays):
    return all(isinstance(a, np.ndarray) and a.dtype == _F32 for a in arrays)


def im2col(x, kernel_hw, stride, dilation, pads, layer=None):
    """The patches of NHWC ``x`` as a matrix of shape ``(N * OH * OW, KH * KW * C)``.

    Column ``(i * KW + j) * C + c`` holds channel ``c`` under kernel tap
    ``(i, j)``, the row order of HWIO weights reshaped to ``(KH * KW * C, O)``.
    float32 numpy input takes one pass of a CPU kernel into ``layer``'s
    workspace (see :func:`_workspace`), other arrays one copy of a strided view.

    Returns
    -------
    cols : ndarray of shape (N * OH * OW, KH * KW * C)
    oh, ow : int
        Output height and width.
    """
    xp = get_array_module(x)
    n, h, w, c = x.shape
    kh, kw = kernel_hw
    (pt, pb), (pl, pr) = pads
    oh = conv_output_size(h, kh, stride, dilation, pt + pb)
    ow = conv_output_size(w, kw, stride, dilation, pl + pr)
    if kh == kw == 1 and stride == 1 and not any(pads[0] + pads[1]):
        return xp.ascontiguousarray(x).reshape(n * h * w, c), h, w
    if _host_float32(x):
        # The threads of a training step (Dense.forward).
        cols = _workspace(layer, "cols", (n * oh * ow, kh * kw * c))
        _train.im2col(np.ascontiguousarray(x), kh, kw, stride, dilation, pt, pl, cols, oh, ow,
                      training_threads(cols.size))
        return cols, oh, ow
    if any(pads[0] + pads[1]):
        xpad = xp.zeros((n, h + pt + pb, w + pl + pr, c), dtype=x.dtype)
        xpad[:, pt:pt + h, pl:pl + w] = x
    else:
        xpad = xp.ascontiguousarray(x)
    # One copy out of a strided view of the patches.  Without dilation the
    # KW taps of a kernel row are KW * C consecutive elements of the input,
    # so the innermost run of the copy is that long.
    sn, sh, sw, sc = xpad.strides
    as_strided = xp.lib.stride_tricks.as_strided
    if dilation == 1:
        view = as_strided(xpad, (n, oh, ow, kh, kw * c), (sn, stride * sh, stride * sw, sh, sc))
    else:
        view = as_strided(xpad, (n, oh, ow, kh, kw, c),
                          (sn, stride * sh, stride * sw, dilation * sh, dilation * sw, sc))
    cols = xp.ascontiguousarray(view)
    return cols.reshape(n * oh * ow, kh * kw * c), oh, ow


def input_gradient(dz, w, x_shape, kernel_hw, stride, dilation, pads, oh, ow, layer=None, bf16=False):
    """The gradient of a convolution with respect to its input, the adjoint of :func:`im2col` applied to ``dz @ w.T``.

    ``dz`` is ``(N * OH * OW, O)``, ``w`` the ``(KH * KW * C, O)`` weights.
    float32 numpy arrays: the patch matrix ``dz @ w.T`` (in ``layer``'s
    workspace), then one pass of a CPU kernel adding it onto the input pixels.
    Other arrays a tap at a time: each tap's ``dz @ w_tap.T`` comes out
    contiguous and adds onto the padded input as whole rows.  ``bf16``: the
    products from bfloat16 operands (:func:`~xnorcore.nn._layers.sign_matmul`;
    ``w`` holds +-1).
    """
    xp = get_array_module(dz)
    n, h, w_in, c = x_shape
    kh, kw = kernel_hw
    (pt, pb), (pl, pr) = pads
    if kh == kw == 1 and stride == 1 and not any(pads[0] + pads[1]):
        return sign_matmul(dz, w.T, bf16).reshape(n, h, w_in, c)
    if _host_float32(dz, w):
        dcols = _workspace(layer, "dcols", (dz.shape[0], w.shape[0]))
        if bf16:
            backend_for(dz).bf16_matmul(dz, w.T, out=dcols, n_threads=training_threads(dz.size * w.shape[0] // 64))
        else:
            np.matmul(dz, w.T, out=dcols)
        dx = np.empty(x_shape, dtype=_F32)
        _train.col2im(dcols, kh, kw, stride, dilation, pt, pl, dx, oh, ow, training_threads(dcols.size))
        return dx
    taps = w.reshape(kh, kw, c, -1)
    dxpad = xp.zeros((n, h + pt + pb, w_in + pl + pr, c), dtype=dz.dtype)
    for i in range(kh):
        for j in range(kw):
            rows, columns = _tap_slices(i, j, oh, ow, stride, dilation)
            dxpad[:, rows, columns, :] += sign_matmul(dz, taps[i, j].T, bf16).reshape(n, oh, ow, c)
    if any(pads[0] + pads[1]):
        return xp.ascontiguousarray(dxpad[:, pt:pt + h, pl:pl + w_in])
    return dxpad


def glorot_conv_weight(rng, kernel_hw, in_channels, out_channels):
    """Glorot-uniform HWIO weights (float32, numpy) for a convolution."""
    kh, kw = kernel_hw
    fan_in, fan_out = kh * kw * in_channels, kh * kw * out_channels
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, (kh, kw, in_channels, out_channels)).astype(_F32)


class Conv2D(WeightLayer):
    """2-D convolution of NHWC activations by HWIO weights (cross-correlation).

    Parameters
    ----------
    name : str
        Name used in histograms and summaries ("conv1", ...).
    weight : ndarray of shape (KH, KW, C, O)
        Initial latent weights (numpy or cupy, float32).
    binary_weights : bool
        Use ``sign(W)`` in the forward pass (latent weights are clipped to
        [-1, 1] by the optimizer and trained through the straight-through
        estimator, as for :class:`~xnorcore.nn.Dense`).
    binary_input : bool
        The input holds only -1 and +1 (the output of a sign activation or of
        a max-pool over one).
    bias : bool
        Add a trainable bias per output channel.
    stride, dilation : int, default=1
    padding : "same", "valid", int or ((top, bottom), (left, right)), default="same"
        Zero padding (see :func:`conv_padding`).
    need_input_grad : bool, default=True
        Compute the gradient with respect to the input (not needed for the
        first layer).
    xnor : bool, default=False
        Compute the sums of a binary layer on binary input with
        :func:`xnorcore.binary_conv2d` (XNOR and popcount, exact zero
        padding) instead of a float product; the result is the same.
    """

    def __init__(self, name, weight, *, binary_weights, binary_input, bias=False, stride=1,
                 padding="same", dilation=1, need_input_grad=True, xnor=False):
        if weight.ndim != 4:
            raise ValueError(f"weight must have shape (KH, KW, C, O), got weight.shape={weight.shape}")
        # weight_packed holds sign(W) packed along C.
        super().__init__(name, weight, binary_weights=bool(binary_weights), binary_input=bool(binary_input),
                         bias=bias, need_input_grad=need_input_grad)
        self.stride = int(stride)
        self.dilation = int(dilation)
        self.padding = padding
        self.xnor = bool(xnor)

    @property
    def uses_xnor(self):
        # (getattr: layers pickled before the attribute existed.)
        return getattr(self, "xnor", False) and self.binary_input and self.binary_weights

    @property
    def kernel_size(self):
        return self.shape[:2]

    def pads(self, in_hw):
        """``((top, bottom), (left, right))`` zero padding for an input of ``in_hw``."""
        return conv_padding(self.padding, in_hw, self.kernel_size, self.stride, self.dilation)

    def output_shape(self, in_shape):
        """``(OH, OW, O)`` for an input of shape ``(H, W, C)``."""
        h, w = in_shape[:2]
        (pt, pb), (pl, pr) = self.pads((h, w))
        kh, kw = self.kernel_size
        return (conv_output_size(h, kh, self.stride, self.dilation, pt + pb),
                conv_output_size(w, kw, self.stride, self.dilation, pl + pr),
                self.shape[3])

    def forward(self, x, training, rng=None, int_sums=False):
        """The convolution of ``x`` (NHWC) with the layer's weights (plus bias).

        ``int_sums``, for a max-pool or batch norm next, lets a training step's XNOR
        sums stay int32 (both take them as they are, as Dense's ``int_sums``).
        """
        n = x.shape[0]
        kh, kw, c, o = self.shape
        if x.ndim != 4 or x.shape[3] != c:
            raise ValueError(f"{self.name} expects NHWC input with {c} channels, got shape {x.shape}")
        pads = self.pads(x.shape[1:3])
        cols = w = None
        if training or not self.uses_xnor:  # (the backward pass needs the patches)
            cols, oh, ow = im2col(x, (kh, kw), self.stride, self.dilation, pads, self if training else None)
        if self.uses_xnor and training:
            w, z = self._xnor_training_sums(x, pads)
            if not (int_sums and self.bias is None):
                z = z.astype(x.dtype)
        elif self.uses_xnor:
            # The integer product, on one thread (as the training steps around it, Dense.forward).
            wp = pack_bits(self.weight, axis=2, n_threads=1) if self.weight is not None else self.weight_packed
            z = binary_conv2d(x, wp, stride=self.stride, padding=pads, dilation=self.dilation,
                              n_threads=1).astype(x.dtype)
        else:
            w = self.effective_weight().astype(x.dtype, copy=False).reshape(kh * kw * c, o)
            z = (matmul(cols, w) if training else cols @ w).reshape(n, oh, ow, o)
        oh, ow = z.shape[1:3]
        if self.bias is not None:
            z += self.bias
        if training:
            self._cache = (cols, w, x.shape, pads, oh, ow)
        return z

    def _xnor_training_sums(self, x, pads):
        """(sign(W) as (KH * KW * C, O) of x's dtype, the int32 XNOR sums of a training step).

        The backend's kernels straight away, as in Dense.forward: x holds the +-1 of a sign
        activation, never NaN, and the latent weights are checked by the loss, so nothing
        waits for the device (the GPU can capture the step as a CUDA graph).  sign(W) comes
        out of the packing along C (the columns of a (C, KH * KW * O) matrix) as floats too,
        for the backward pass.  The training step's CPU threads, as Dense.forward explains.
        """
        kh, kw, c, o = self.shape
        backend = backend_for(x)
        xp = get_array_module(x)
        threads = training_threads(x.size * kh * kw)
        signs, w_words = backend.sign_pack_cols(
            xp.ascontiguousarray(self.weight.transpose(2, 0, 1, 3)).reshape(c, kh * kw * o), threads)
        w = signs.reshape(c, kh, kw, o).transpose(1, 2, 0, 3).astype(x.dtype, copy=False).reshape(kh * kw * c, o)
        cw = w_words.shape[1]
        x_words = backend.pack_signs(xp.ascontiguousarray(x).reshape(-1, c), threads).reshape(*x.shape[:3], 1, cw)
        geometry = _conv_geometry(x.shape, self.shape, self.stride, pads, self.dilation)
        return w, backend.conv2d(x_words, w_words.reshape(kh, kw, o, cw), geometry, 1, c, 0, threads)

    def backward(self, dz):
        cols, w, x_shape, pads, oh, ow = self._cache
        kh, kw, c, o = self.weight.shape
        dz2 = dz.reshape(-1, o)
        if self.bias is not None:
            self.bias_grad = dz2.sum(axis=0)
        # As for dense layers, the straight-through mask of binary weights is
        # identically one: the optimizer keeps latent weights in [-1, 1].
        # BLAS is several times faster on the product with the narrower
        # matrix as its result's rows (a first layer has few columns).
        bf16 = getattr(self, "bf16_backward", False)  # (absent from networks pickled before it)
        xp = get_array_module(dz)
        if bf16 and self.binary_input:
            # (the kernel turns the product round itself where that fits its tiles better)
            self.weight_grad = xp.ascontiguousarray(sign_matmul(cols.T, dz2, True)).reshape(kh, kw, c, o)
        elif cols.shape[1] < o:
            # (C order, as the optimizer's fused kernel takes it)
            self.weight_grad = xp.ascontiguousarray(matmul(dz2.T, cols).T).reshape(kh, kw, c, o)
        else:
            self.weight_grad = matmul(cols.T, dz2).reshape(kh, kw, c, o)
        if not self.need_input_grad:
            return None
        return input_gradient(dz2, w, x_shape, (kh, kw), self.stride, self.dilation, pads, oh, ow, self,
                              bf16=bf16 and self.binary_weights)


class ChannelBatchNorm(BatchNorm):
    """Batch normalization of NHWC activations over samples and positions, per channel.

    The statistics of channel ``c`` are taken over every ``(n, h, w)``, as in
    convolutional batch norm; parameters as in :class:`~xnorcore.nn.BatchNorm`.
    The arithmetic is that of :class:`~xnorcore.nn.BatchNorm` on the rows of
    ``z.reshape(-1, C)``, with its per-channel sums as products by a vector of
    ones and ``einsum`` (BLAS-speed reductions over many rows of few columns)
    and in-place updates: at the resolution of the first layers these arrays
    are the largest of the network.
    """

    def forward(self, z, training, rng=None):
        xp = get_array_module(z)
        shape = z.shape
        z = z.reshape(-1, shape[-1])
        if not training:
            return super().forward(z, training, rng).reshape(shape)
        out = self._fused_forward(z)
        if out is not None:
            return out.reshape(shape)
        if z.dtype.kind != "f":  # the int32 sums of an XNOR product (Conv2D's int_sums)
            z = z.astype(_F32)
        m = z.shape[0]
        ones = xp.ones(m, dtype=z.dtype)
        mean = (ones @ z) / z.dtype.type(m)
        xhat = z - mean
        var = xp.einsum("ij,ij->j", xhat, xhat) / z.dtype.type(m)
        mom = _F32(self.momentum)
        self.running_mean *= mom
        self.running_mean += (1 - mom) * mean
        self.running_var *= mom
        self.running_var += (1 - mom) * var * _F32(m / max(m - 1, 1))
        inv_std = 1 / (var + _F32(self.eps)) ** _F32(0.5)
        xhat *= inv_std
        self._cache = (xhat, inv_std, ones)
        out = xhat * self.gamma
        out += self.beta
        return out.reshape(shape)

    def backward(self, dy):
        xp = get_array_module(dy)
        shape = dy.shape
        dy = dy.reshape(-1, shape[-1])
        dz = self._fused_backward(dy)
        if dz is not None:
            return dz.reshape(shape)
        xhat, inv_std, ones = self._cache
        m = dy.dtype.type(dy.shape[0])
        self.beta_grad = ones @ dy
        self.gamma_grad = xp.einsum("ij,ij->j", dy, xhat)
        # d/dz of gamma * xhat + beta: gamma * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat)).
        dz = xhat * (self.gamma_grad / m)
        dz += self.beta_grad / m
        xp.subtract(dy, dz, out=dz)
        dz *= self.gamma * inv_std
        return dz.reshape(shape)


class MaxPool2D:
    """Max-pool of NHWC activations over ``size x size`` windows with stride ``size``.

    Rows and columns that do not fill a window are dropped (``floor``, as
    "valid" pooling does).  On +-1 inputs the result is +1 where any input of
    the window is +1, an OR of the set bits of the packed form.  The gradient
    of a window goes to its first largest input in row-major order (ties are
    the rule on +-1 inputs).
    """

    def __init__(self, name, size=2):
        self.name = name
        self.size = int(size)
        self._cache = None

    def params(self):
        return []

    def output_shape(self, in_shape):
        h, w, c = in_shape
        return (h // self.size, w // self.size, c)

    def _taps(self, oh, ow):
        s = self.size
        for i in range(s):
            for j in range(s):
                yield (slice(None), slice(i, i + s * (oh - 1) + 1, s), slice(j, j + s * (ow - 1) + 1, s))

    def forward(self, x, training, rng=None):
        xp = get_array_module(x)
        n, h, w, c = x.shape
        oh, ow = h // self.size, w // self.size
        if oh < 1 or ow < 1:
            raise ValueError(f"{self.name}: {self.size}x{self.size} max-pool of an input of "
                             f"height and width {(h, w)} leaves nothing")
        if xp is np and x.dtype.kind != "f":  # the int32 sums of an XNOR product (Conv2D's int_sums)
            x = x.astype(np.float32)  # (for the kernel below; float32 represents them exactly)
        if xp is np and x.dtype == np.float32 and x.flags.c_contiguous and self.size <= 16:
            # One pass, which also notes the tap that the gradient goes to (a
            # uint8: windows of up to 16 x 16), on the training step's threads
            # (Dense.forward).
            out = np.empty((n, oh, ow, c), dtype=np.float32)
            taps = np.empty((n, oh, ow, c), dtype=np.uint8)
            _train.maxpool_forward(x, self.size, out, taps, training_threads(x.size) if training else 1)
            if training:
                self._cache = (x.shape, taps)
            return out
        out = None
        for tap in self._taps(oh, ow):
            out = x[tap].copy() if out is None else xp.maximum(out, x[tap], out=out)
        if training:
            self._cache = (x, out)
        return out

    def backward(self, dy):
        x, out = self._cache
        if isinstance(x, tuple):  # the CPU kernel's taps
            dx = np.empty(x, dtype=np.float32)
            _train.maxpool_backward(np.ascontiguousarray(dy, dtype=np.float32), out, self.size, dx,
                                    training_threads(dx.size))
            return dx
        xp = get_array_module(x)
        oh, ow = out.shape[1:3]
        dx = xp.zeros(x.shape, dtype=dy.dtype)  # (x may hold int32 sums)
        free = xp.ones(out.shape, dtype=bool)
        for tap in self._taps(oh, ow):
            hit = x[tap] == out
            hit &= free
            free &= ~hit
            dx[tap] = dy * hit
        return dx


class Flatten(ParameterFreeLayer):
    """NHWC activations to rows of ``H * W * C`` features (channels fastest)."""

    def forward(self, x, training, rng=None):
        if training:
            self._x = x.shape  # (the backward pass needs only the input's shape)
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self._x)
