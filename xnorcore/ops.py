"""Sign binarization, bit packing and the binary matrix product.

This module validates input and dispatches to a backend of
:mod:`xnorcore._backends`: the Cython kernels for numpy arrays, the CUDA
kernels for cupy arrays.  Kernels trust their input; the checks are here.

Bit layout
----------
Every packed array in xnorcore has this layout, on the CPU and on the GPU:

* Values are binarized with :func:`sign`: ``x >= 0`` (including ``-0.0`` and
  ``+inf``) is +1, ``x < 0`` (including ``-inf``) is -1.  NaN is an error.
* One axis of the input (``axis``) is packed into little-endian 64-bit words
  (``uint64``).  Element ``j`` of that axis is bit ``j % 64`` of word ``j // 64``
  (bit 0 is the least significant bit).
* A set bit (1) stands for +1, a clear bit (0) for -1.
* The packed axis becomes the **last** axis of the word array, so an input of
  shape ``(..., L, ...)`` packed along ``L`` gives words of shape
  ``(..., ceil(L / 64))`` with the other axes in their original order.
* Padding bits (bit positions ``>= L`` in the last word) are always 0.  Both
  operands of a product have zero padding, so ``a XOR b`` is 0 there and the
  padding never changes a result: ``dot = L - 2 * popcount(a XOR b)``.

The original shape and the packed axis travel with the words in
:class:`PackedBits`.  For ``binary_matmul(a, b)``, ``a`` of shape ``(M, K)`` is
packed along K (``axis=1``, words of shape ``(M, ceil(K / 64))``) and ``b`` of
shape ``(K, N)`` is packed along K as well (``axis=0``, words of shape
``(N, ceil(K / 64))``: one row of words per column of ``b``).

For :func:`binary_conv2d`, activations are NHWC ``(N, H, W, C)`` packed along C
(``pack_bits(x, axis=-1)``, words of shape ``(N, H, W, ceil(C / 64))``: each
pixel a whole number of words), and HWIO weights ``(KH, KW, C // groups, O)``
are packed along their input channels (``pack_bits(w, axis=2)``, words of shape
``(KH, KW, O, ceil(C // groups / 64))``); :func:`pack_conv_weights` packs them
in the same layout and keeps each backend's preparation of them, for the layers
of a packed model (:class:`ConvWeights`).  The fused conv outputs are packed
NHWC activations again, ready for the next layer.  With ``groups > 1`` and
``C // groups`` not a multiple of 64, each group's channels are packed into
words of their own, ``(N, H, W, groups, ceil(C // groups / 64))`` (the packed
input is repacked that way when needed).

This is the one statement of the layout in Python; the C and CUDA kernels
(``xnorcore/csrc/``, ``kernels/*.cu``) include its one C statement,
``kernels/xnor_layout.h``, and the tests refer to both.
"""

import math
import numbers
import operator

import numpy as np

from ._array import get_array_module, is_cupy, is_dask, reject_masked, to_numpy
from ._threads import check_n_threads

__all__ = [
    "WORD_BITS",
    "PackedBits",
    "sign",
    "pack_bits",
    "unpack_bits",
    "binary_matmul",
    "binary_conv2d",
    "binary_conv2d_threshold_pack",
    "ConvWeights",
    "pack_conv_weights",
    "get_array_module",
]

#: Number of bits in one packed word.
WORD_BITS = 64

_BACKENDS = ("auto", "cpu", "gpu")

# Row b holds the +1/-1 values of the 8 bits of byte b, least significant first.
_SIGNS_OF_BYTE = (((np.arange(256)[:, None] >> np.arange(8)) & 1) * 2 - 1).astype(np.int8)

#: Largest inner dimension whose products fit the int32 result.
_MAX_INNER = np.iinfo(np.int32).max


def n_words(length):
    """Number of 64-bit words that hold ``length`` bits."""
    return (length + WORD_BITS - 1) // WORD_BITS


def _check_padding_block(block, padding, message, block_info=None):
    """A block of dask words, unchanged, once its share of the last words has no padding bits set."""
    info = block_info[0] if block_info else None
    last = info is None or info["array-location"][-1][1] == info["shape"][-1]
    if last and block.size and bool((block[..., -1] & padding).any()):
        raise ValueError(message)
    return block


class _Immutable:
    """Attributes set once, through ``object.__setattr__``; ``_REMAKE`` says what to do instead."""

    __slots__ = ()
    _REMAKE = ""

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable: cannot set {name!r}; {self._REMAKE}")

    def __delattr__(self, name):
        raise AttributeError(f"{type(self).__name__} is immutable: cannot delete {name!r}")


class PackedBits(_Immutable):
    """Sign bits of an array packed along one axis into 64-bit words.

    Made by :func:`pack_bits`; the layout is described in :mod:`xnorcore.ops`.
    A PackedBits is immutable: its attributes cannot be assigned, and numpy
    words are a read-only view (cupy arrays have no read-only flag: do not
    write into the words of a PackedBits on the GPU).

    Parameters
    ----------
    words : ndarray of dtype uint64
        The packed words (numpy or cupy).  The packed axis is the last axis.
    shape : tuple of int
        Shape of the array that was packed, every entry >= 0.
    axis : int
        Axis of ``shape`` that was packed, in ``range(len(shape))``.

    Attributes
    ----------
    length : int
        Number of elements along the packed axis, ``shape[axis]``.

    Raises
    ------
    TypeError
        If ``words`` is not a numpy or cupy array of dtype uint64, or
        ``shape`` or ``axis`` holds a non-integer.
    ValueError
        If ``shape`` has a negative entry, ``axis`` is out of range,
        ``words.shape`` disagrees with ``shape`` and ``axis``, or a padding bit
        (bit position >= ``length`` in the last word) is set: padding must be
        0, or every product would be off.  Checking padding of cupy words
        waits for the device.
    """

    __slots__ = ("_words", "_shape", "_axis")
    _REMAKE = "make a new PackedBits"

    def __init__(self, words, shape, axis):
        self._init(words, shape, axis, check_padding=True)

    @classmethod
    def _trusted(cls, words, shape, axis):
        """A PackedBits of words that a kernel wrote, whose padding is zero by construction."""
        self = cls.__new__(cls)
        self._init(words, shape, axis, check_padding=False)
        return self

    @classmethod
    def _of_kernel(cls, words, shape, axis):
        """A PackedBits of the C-contiguous words a kernel just wrote in the layout
        of (shape, axis), tuple of ints: nothing to check (numpy words made read-only)."""
        self = cls.__new__(cls)
        if not is_cupy(words):
            words.flags.writeable = False
        object.__setattr__(self, "_words", words)
        object.__setattr__(self, "_shape", shape)
        object.__setattr__(self, "_axis", axis)
        return self

    def _init(self, words, shape, axis, check_padding):
        try:
            shape = tuple(operator.index(s) for s in shape)
        except TypeError:
            raise TypeError(f"shape must be a tuple of integers, got shape={shape!r}") from None
        if any(s < 0 for s in shape):
            raise ValueError(f"shape must not have negative entries, got shape={shape}")
        try:
            axis = operator.index(axis)
        except TypeError:
            raise TypeError(f"axis must be an integer, got axis={axis!r}") from None
        if not 0 <= axis < len(shape):
            raise ValueError(f"axis must be in range({len(shape)}), got axis={axis}")
        if isinstance(words, np.ndarray) and not isinstance(words, np.ma.MaskedArray):
            words = words.view(np.ndarray)
            words.flags.writeable = False
        elif not (is_cupy(words) or is_dask(words)):
            raise TypeError(f"words must be a uint64 array (numpy or cupy), got {type(words).__name__}")
        if words.dtype != np.dtype(np.uint64):
            # Big-endian uint64 is refused too: the kernels read native words.
            raise TypeError(f"words must be a uint64 array, got {words.dtype} (native byte order needed)"
                            if words.dtype.kind == "u" and words.dtype.itemsize == 8
                            else f"words must be a uint64 array, got {words.dtype}")
        expected = shape[:axis] + shape[axis + 1 :] + (n_words(shape[axis]),)
        if tuple(words.shape) != expected:
            raise ValueError(
                f"words.shape={tuple(words.shape)} disagrees with the recorded "
                f"shape={shape} packed along axis={axis}: expected words of shape "
                f"{expected}"
            )
        tail = shape[axis] % WORD_BITS
        if check_padding and tail and words.size:
            padding = np.uint64(~((1 << tail) - 1) & (2**WORD_BITS - 1))
            message = (
                f"words has padding bits set: bits {tail}..63 of the last word must be 0 "
                f"for length={shape[axis]} (shape={shape}, axis={axis}), or every product "
                "would be off"
            )
            if is_dask(words):
                # Checked when the blocks holding the last words are computed,
                # so that building a graph reads no data.
                words = words.map_blocks(_check_padding_block, padding=padding, message=message,
                                         dtype=np.uint64)
            elif bool((words[..., -1] & padding).any()):
                raise ValueError(message)
        object.__setattr__(self, "_words", words)
        object.__setattr__(self, "_shape", shape)
        object.__setattr__(self, "_axis", axis)


    @property
    def words(self):
        return self._words

    @property
    def shape(self):
        return self._shape

    @property
    def axis(self):
        return self._axis

    @property
    def length(self):
        return self.shape[self.axis]

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def nbytes(self):
        return self.words.nbytes

    def __getstate__(self):
        return {"words": self.words, "shape": self.shape, "axis": self.axis}

    def __setstate__(self, state):
        # Loaded words are checked as a new PackedBits would be.
        try:
            words, shape, axis = state["words"], state["shape"], state["axis"]
        except (TypeError, KeyError):
            raise ValueError("not the state of a PackedBits: expected words, shape and axis") from None
        self._init(words, shape, axis, check_padding=True)

    def __repr__(self):
        xp = type(self.words).__module__.partition(".")[0]
        return f"PackedBits(shape={self.shape}, axis={self.axis}, words={xp}.uint64{tuple(self.words.shape)})"


def _is_sparse(x):
    # scipy.sparse, cupyx.scipy.sparse and pydata/sparse arrays, without importing them.
    module = type(x).__module__
    return module.startswith(("scipy.sparse", "cupyx.scipy.sparse")) or module.partition(".")[0] == "sparse"


def _check_array(x, name):
    """Return ``x`` as a numpy or cupy array of a real numeric dtype in native byte order."""
    reject_masked(x, name)
    if _is_sparse(x):
        raise TypeError(
            f"{name} must be a dense array, got a sparse {type(x).__name__}: sign maps 0 to +1, "
            f"so the signs of a sparse matrix are dense; convert it with {name}.toarray()"
        )
    if not is_cupy(x):
        try:
            x = np.asarray(x)
        except ValueError:
            raise ValueError(
                f"{name} must be a rectangular array, got nested sequences of different "
                "lengths (ragged)"
            ) from None
    if x.dtype.kind not in "biuf":
        raise TypeError(
            f"{name} must have a boolean, integer or real floating dtype, got dtype={x.dtype}"
        )
    if not x.dtype.isnative:
        # Big-endian input: the kernels read native words; the values are unchanged.
        x = x.astype(x.dtype.newbyteorder("="))
    return x


def _backend_module(backend, *operands, names):
    """Pick the backend module for ``operands`` and check that they agree."""
    _check_backend(backend)
    kinds = [is_cupy(x) for x in operands]
    on_gpu = kinds[0]
    if kinds.count(on_gpu) != len(kinds):
        desc = " and ".join(
            f"{name} is a {'cupy' if kind else 'numpy'} array" for name, kind in zip(names, kinds)
        )
        raise TypeError(f"{' and '.join(names)} must both be numpy or both be cupy arrays: {desc}")
    if backend == "cpu" and on_gpu:
        raise TypeError(
            f"backend='cpu' needs numpy arrays, got cupy arrays for {', '.join(names)}; "
            "copy them with cupy.asnumpy or use backend='gpu'"
        )
    if backend == "gpu":
        return get_backend("gpu")
    return backend_for(operands[0])  # the operands agree (checked above)


def sign(x):
    """Binarize ``x`` to +1/-1, with ``sign(0) = sign(-0.0) = +1``.

    Unlike :func:`numpy.sign`, zero maps to +1, so every element has a sign.

    Parameters
    ----------
    x : array_like or cupy.ndarray
        Boolean, integer or real floating input.

    Returns
    -------
    s : ndarray of the same shape
        +1 where ``x >= 0`` and -1 where ``x < 0``.  Floating inputs keep their
        dtype (so ``sign`` can be used inside float computations); boolean and
        integer inputs give int8.

    Raises
    ------
    ValueError
        If ``x`` contains NaN.
    TypeError
        If ``x`` has a complex, object or string dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from xnorcore import sign
    >>> sign(np.array([-2.0, -0.0, 0.0, 3.0]))
    array([-1.,  1.,  1.,  1.])
    """
    if is_dask(x):
        return _dask().sign(x)
    x = _check_array(x, "x")
    xp = get_array_module(x)
    dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.int8)
    if x.dtype.kind == "f" and bool(xp.isnan(x).any()):
        raise ValueError("x must not contain NaN")
    return _signs(x, dtype)


def _signs(x, dtype):
    """``sign`` without the checks: +1 where ``x >= 0``, -1 elsewhere (NaN too), as ``dtype``."""
    # Several times faster than xp.where(x >= 0, 1, -1) in numpy.
    out = (x >= 0).astype(dtype)
    out *= 2
    out -= 1
    return out


def _normalize_axis(axis, ndim, name="axis"):
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {name}={axis!r}") from None
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}={axis} is out of bounds for an array of ndim={ndim}")
    return axis % ndim


def _check_backend(backend):
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got backend={backend!r}")


def _check_inner(a, b):
    """``a`` (M, K) and ``b`` (K, N), arrays or PackedBits, agree on K."""
    if a.shape[1] != b.shape[0]:
        raise ValueError(
            "a and b must have matching inner dimensions, got "
            f"a.shape={tuple(a.shape)} and b.shape={tuple(b.shape)}"
        )


def _check_n_threads(n_threads):
    # Validated here, before any work; clamped where it enters a kernel.
    return check_n_threads(n_threads, "n_threads")


def pack_bits(x, axis=-1, *, n_threads=None):
    """Sign-binarize ``x`` and pack it along ``axis`` into 64-bit words.

    Parameters
    ----------
    x : array_like or cupy.ndarray, at least 1-D
        Boolean, integer or real floating input, any memory order.  Numpy input
        is packed on the CPU, cupy input on the GPU.
    axis : int, default=-1
        Axis to pack.  It becomes the last axis of the words.
    n_threads : int, optional
        CPU threads to use; by default one per millisecond of work, up to
        OpenMP's limit (``OMP_NUM_THREADS`` or a threadpoolctl limit).  Never
        more than the CPUs this process may run on.  Ignored on the GPU.

    Returns
    -------
    packed : PackedBits
        Words of shape ``x.shape`` without ``axis``, plus ``(ceil(L / 64),)``,
        with the layout described in :mod:`xnorcore.ops`.

    Raises
    ------
    ValueError
        If ``x`` contains NaN, is 0-D or ragged, or ``axis`` is out of bounds.
    TypeError
        If ``x`` has a complex, object or string dtype, or is a masked array
        or a sparse matrix.

    Notes
    -----
    Any byte order and any real dtype are accepted: big-endian input is
    read in native order, and long double is compared in its own precision
    (a cast to float64 would turn tiny negatives into -0.0, that is +1).

    Examples
    --------
    >>> import numpy as np
    >>> from xnorcore import pack_bits
    >>> p = pack_bits(np.array([[1.0, -1.0, 0.0]]))
    >>> p.words
    array([[5]], dtype=uint64)
    """
    if is_dask(x):
        return _dask().pack_bits(x, axis, n_threads=n_threads)
    x = _check_array(x, "x")
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension, got a 0-d array")
    axis = _normalize_axis(axis, x.ndim)
    n_threads = _check_n_threads(n_threads)
    backend = _backend_module("auto", x, names=("x",))
    return _pack(backend, x, axis, n_threads, "x")


def _pack(backend, x, axis, n_threads, name):
    """Pack a validated array ``x`` along ``axis`` with ``backend``."""
    packed, has_nan = _pack_unchecked(backend, x, axis, n_threads)
    _check_nan(has_nan, name)
    return packed


def _check_nan(has_nan, name):
    # ``has_nan`` is a bool, or a device flag that this reads (and so waits for).
    if has_nan:
        raise ValueError(f"{name} must not contain NaN")


def _pack_unchecked(backend, x, axis, n_threads):
    """Pack ``x``; return (PackedBits, has_nan) with the NaN flag not yet checked."""
    xp = get_array_module(x)
    shape = tuple(x.shape)
    length = shape[axis]
    out_shape = shape[:axis] + shape[axis + 1 :] + (n_words(length),)
    if x.dtype.kind in "bu":
        # Booleans and unsigned integers are never negative: every bit is +1.
        words = xp.full(out_shape, np.uint64(2**64 - 1), dtype=np.uint64)
        if length % WORD_BITS:
            words[..., -1] = np.uint64((1 << (length % WORD_BITS)) - 1)
        return PackedBits._trusted(words, shape, axis), False
    if x.dtype == np.float16:
        x = x.astype(np.float32)
    elif x.dtype.kind == "f" and x.dtype.itemsize > 8:
        # long double: a cast to float64 would turn tiny negatives into -0.0
        # (+1) and NaN must still be found, so compare in long double.
        has_nan = bool(np.isnan(x).any())
        packed, _ = _pack_unchecked(backend, np.where(x >= 0, np.int8(1), np.int8(-1)), axis, n_threads)
        return packed, has_nan
    moved = x if axis == x.ndim - 1 else xp.moveaxis(x, axis, -1)  # moveaxis costs microseconds
    pack_cols = getattr(backend, "pack_cols", None)
    if pack_cols is not None and not moved.flags.c_contiguous:
        # Pack along a leading axis in place rather than copying a transpose:
        # for b of binary_matmul that copy would cost more than the packing.
        pre, post = math.prod(shape[:axis]), math.prod(shape[axis + 1 :])
        blocks = xp.ascontiguousarray(x).reshape(pre, length, post)
        if pre == 1:  # a matrix packed along its rows' axis: b of binary_matmul
            words, has_nan = pack_cols(blocks[0], n_threads)
        else:
            words = xp.empty((pre, post, n_words(length)), dtype=np.uint64)
            has_nan = False
            for i in range(pre):
                words[i], nan_here = pack_cols(blocks[i], n_threads)
                has_nan = has_nan or nan_here
    else:
        rows = xp.ascontiguousarray(moved).reshape(math.prod(moved.shape[:-1]), length)
        words, has_nan = backend.pack_rows(rows, n_threads)
    return PackedBits._of_kernel(words.reshape(out_shape), shape, axis), has_nan


def unpack_bits(packed, dtype=np.int8):
    """Unpack :class:`PackedBits` back to a +1/-1 array of the original shape.

    Parameters
    ----------
    packed : PackedBits
        Output of :func:`pack_bits`.
    dtype : dtype, default=int8
        Dtype of the result: a signed integer or real floating dtype (one
        that holds -1 and +1 exactly).

    Returns
    -------
    x : ndarray of shape ``packed.shape``
        ``sign`` of the array that was packed (numpy or cupy, as the words).

    Raises
    ------
    TypeError
        If ``packed`` is not a PackedBits, or ``dtype`` is not a signed
        integer or real floating dtype (bool, unsigned, complex, string and
        object dtypes are refused: they do not hold -1 and +1 as numbers).

    Examples
    --------
    >>> import numpy as np
    >>> from xnorcore import pack_bits, unpack_bits
    >>> unpack_bits(pack_bits(np.array([0.5, -2.0, 0.0])))
    array([ 1, -1,  1], dtype=int8)
    """
    if not isinstance(packed, PackedBits):
        raise TypeError(f"packed must be a PackedBits, got {type(packed).__name__}")
    dtype = _check_unpack_dtype(dtype)
    if is_dask(packed):
        return _dask().unpack_bits(packed, dtype)
    xp = get_array_module(packed.words)
    length = packed.length
    words = xp.ascontiguousarray(packed.words)
    bytes_ = words.view(np.uint8).reshape(words.shape[:-1] + (8 * words.shape[-1],))
    # One gather from a byte -> 8 signs table writes the result in its dtype
    # directly (instead of unpacking to bits, casting and scaling).
    table = xp.asarray(_SIGNS_OF_BYTE.astype(dtype))
    values = xp.take(table, bytes_, axis=0).reshape(bytes_.shape[:-1] + (8 * bytes_.shape[-1],))
    return xp.moveaxis(values[..., :length], -1, packed.axis)


def _check_unpack_dtype(dtype):
    expected = "dtype must be a signed integer or real floating dtype (int8, float32, ...)"
    if dtype is None:
        raise TypeError(f"{expected}, got dtype=None")
    try:
        resolved = np.dtype(dtype)
    except (TypeError, ValueError):
        raise TypeError(f"{expected}, got dtype={dtype!r}") from None
    if resolved.kind not in "if":
        raise TypeError(f"{expected}, got dtype={resolved} (it does not hold -1 and +1 as numbers)")
    return resolved


def _matmul_operand(x, name, axis):
    """Validate one operand of binary_matmul and return its PackedBits."""
    if isinstance(x, PackedBits):
        if x.ndim != 2:
            raise ValueError(f"{name} must be 2-D, got a PackedBits of shape {x.shape}")
        if x.axis != axis:
            raise ValueError(
                f"{name} must be packed along axis={axis} (the inner dimension), "
                f"got a PackedBits packed along axis={x.axis}"
            )
        if x.words.shape[-1] != n_words(x.length):
            raise ValueError(
                f"{name} has {x.words.shape[-1]} words per row but its recorded length "
                f"{x.length} needs {n_words(x.length)}"
            )
        return x
    x = _check_array(x, name)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got {name}.ndim={x.ndim} ({name}.shape={tuple(x.shape)})")
    return x


def binary_matmul(a, b, *, backend="auto", n_threads=None):
    """Exact product ``sign(a) @ sign(b)`` through XNOR and popcount.

    Parameters
    ----------
    a : array_like of shape (M, K), or PackedBits packed along axis=1
        Left operand.  Pack it once with ``pack_bits(a, axis=1)`` to reuse it.
    b : array_like of shape (K, N), or PackedBits packed along axis=0
        Right operand.  Pack it once with ``pack_bits(b, axis=0)`` to reuse it.
    backend : {"auto", "cpu", "gpu"}, default="auto"
        "auto" uses the GPU for cupy operands and the CPU for numpy operands.
        "gpu" copies numpy operands to the GPU.
    n_threads : int, optional
        CPU threads to use; by default one per millisecond of work, up to
        OpenMP's limit.  Never more than the CPUs this process may run on.
        Ignored on the GPU.

    Returns
    -------
    c : ndarray of shape (M, N) and dtype int32
        ``sign(a) @ sign(b)``, exactly (numpy or cupy, as the operands).

    Raises
    ------
    ValueError
        If an operand is not 2-D, the inner dimensions differ, an operand
        contains NaN, a packed operand is inconsistent, an operand is a ragged
        nested sequence, ``n_threads`` is not a positive integer, or
        ``backend`` is unknown.
    TypeError
        If an operand has a complex, object or string dtype, is a masked
        array or a sparse matrix, or numpy and cupy operands are mixed.
    RuntimeError
        If ``backend="gpu"`` and CuPy or a CUDA device is missing.

    Examples
    --------
    >>> import numpy as np
    >>> from xnorcore import binary_matmul
    >>> a = np.array([[1.0, -2.0], [0.0, 3.0]])
    >>> b = np.array([[1.0], [-1.0]])
    >>> binary_matmul(a, b)
    array([[2],
           [0]], dtype=int32)
    """
    n_threads = _check_n_threads(n_threads)
    _check_backend(backend)
    if is_dask(a) or is_dask(b):
        return _dask().binary_matmul(a, b, backend=backend, n_threads=n_threads)
    a = _matmul_operand(a, "a", 1)
    b = _matmul_operand(b, "b", 0)
    _check_inner(a, b)
    if a.shape[1] > _MAX_INNER and a.shape[0] and b.shape[1]:
        raise ValueError(
            f"the inner dimension must be at most {_MAX_INNER} for an int32 result, got "
            f"a.shape={tuple(a.shape)} and b.shape={tuple(b.shape)}"
        )
    module = _backend_module(backend, a, b, names=("a", "b"))
    a, b = module.to_device(a), module.to_device(b)
    # NaN flags are checked after the product is queued: on the GPU, reading
    # them waits for the device, and this way the wait covers the product too.
    nan_flags = []
    if not isinstance(a, PackedBits):
        a, has_nan = _pack_unchecked(module, a, 1, n_threads)
        nan_flags.append(("a", has_nan))
    if not isinstance(b, PackedBits):
        b, has_nan = _pack_unchecked(module, b, 0, n_threads)
        nan_flags.append(("b", has_nan))
    m, k = a.shape
    n = b.shape[1]
    if m == 0 or n == 0 or k == 0:
        out = get_array_module(a.words).zeros((m, n), dtype=np.int32)
    else:
        out = module.xnor_gemm(a.words, b.words, k, n_threads)
    for name, has_nan in nan_flags:
        _check_nan(has_nan, name)
    return out


def _dask():
    # Imported on first use: only users who pass dask arrays need dask.
    from . import _dask

    return _dask


# ------------------------------------------------------------------ conv2d

_PAD_VALUES = (0, 1, -1)


def _is_int(v):
    # A plain int first: the abstract-class check costs more than the convolution of a tiny layer.
    return type(v) is int or (isinstance(v, numbers.Integral) and not isinstance(v, bool))


#: Strides, dilations and paddings are below this (the kernels' geometry is in C ints).
_MAX_CONV_STEP = 2**31


def _pair(value, name):
    """An int >= 1 or a pair of them, as a pair."""
    pair = value if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(_is_int(v) and 1 <= v < _MAX_CONV_STEP for v in pair):
        raise ValueError(f"{name} must be a positive integer below 2**31 or a pair of them, got {name}={value!r}")
    return int(pair[0]), int(pair[1])


def _conv_padding(padding, size, kernel, stride, dilation):
    """(before, after) padding of one spatial axis, and the output size."""
    if isinstance(padding, str):
        if padding == "valid":
            before = after = 0
        else:  # "same", as TensorFlow: the odd row or column goes after
            out = -(-size // stride)
            total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
            before, after = total // 2, total - total // 2
    else:
        before, after = padding
    return before, after


# Geometries of plain int / str arguments already checked: a layer called
# again skips the checks (keyed by the argument types too, so that True never
# passes for 1).  Bounded: cleared when full.
_GEOMETRIES = {}


def _conv_geometry(x_shape, w_shape, stride, padding, dilation):
    """(H, W, OH, OW, KH, KW, SH, SW, DH, DW, PT, PB, PL, PR), checking the kernel fits."""
    key = None
    if type(stride) is int and type(dilation) is int and type(padding) in (int, str):
        key = (x_shape[1], x_shape[2], w_shape[0], w_shape[1], stride, dilation, padding, type(padding))
        geometry = _GEOMETRIES.get(key)
        if geometry is not None:
            return geometry
    geometry = _check_conv_geometry(x_shape, w_shape, stride, padding, dilation)
    if key is not None:
        if len(_GEOMETRIES) >= 1024:
            _GEOMETRIES.clear()
        _GEOMETRIES[key] = geometry
    return geometry


def _check_conv_geometry(x_shape, w_shape, stride, padding, dilation):
    _, h, w, _ = x_shape
    kh, kw = w_shape[0], w_shape[1]
    sh, sw = _pair(stride, "stride")
    dh, dw = _pair(dilation, "dilation")
    if isinstance(padding, str):
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid', 'same', an int or ((top, bottom), (left, right)), got padding={padding!r}")
        rows = cols = padding
    else:
        def count(v):
            if not _is_int(v) or not 0 <= v < _MAX_CONV_STEP:
                raise ValueError
            return int(v)

        try:
            if _is_int(padding):
                rows = cols = (count(padding), count(padding))
            else:
                (t, b), (l, r) = padding
                rows, cols = (count(t), count(b)), (count(l), count(r))
        except (TypeError, ValueError):
            raise ValueError(
                "padding must be 'valid', 'same', a non-negative int or ((top, bottom), (left, right)) "
                f"of non-negative ints, each below 2**31, got padding={padding!r}"
            ) from None
    pt, pb = _conv_padding(rows, h, kh, sh, dh)
    pl, pr = _conv_padding(cols, w, kw, sw, dw)
    span_h, span_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if span_h > h + pt + pb or span_w > w + pl + pr:
        raise ValueError(
            f"the kernel is larger than the padded input: w.shape={tuple(w_shape)} with "
            f"dilation={(dh, dw)} spans {span_h} x {span_w}, x.shape={tuple(x_shape)} padded by "
            f"{((pt, pb), (pl, pr))} is {h + pt + pb} x {w + pl + pr}"
        )
    oh = (h + pt + pb - span_h) // sh + 1
    ow = (w + pl + pr - span_w) // sw + 1
    if oh * ow >= 2**40:  # more output pixels an image than any memory holds
        raise ValueError(
            f"the output would have {oh} x {ow} pixels an image: x.shape={tuple(x_shape)} padded by "
            f"{((pt, pb), (pl, pr))} with stride={(sh, sw)}"
        )
    return (h, w, oh, ow, kh, kw, sh, sw, dh, dw, pt, pb, pl, pr)


def _conv_operand(x, name, axis):
    """Validate one conv2d operand (4-D array, or PackedBits packed along ``axis``)."""
    if isinstance(x, PackedBits):
        if x.ndim != 4 or x.axis != axis:
            raise ValueError(
                f"{name} must be a 4-D PackedBits packed along axis={axis} "
                f"({'pack_bits(x, axis=-1)' if name == 'x' else 'pack_bits(w, axis=2)'}), "
                f"got a PackedBits of shape {x.shape} packed along axis={x.axis}"
            )
    else:
        x = _check_array(x, name)
        if x.ndim != 4:
            layout = "NHWC (N, H, W, C)" if name == "x" else "HWIO (KH, KW, C // groups, O)"
            raise ValueError(f"{name} must be 4-D {layout}, got {name}.ndim={x.ndim} ({name}.shape={tuple(x.shape)})")
    return x


class ConvWeights(_Immutable):
    """HWIO binary conv weights packed once, for the layers of a packed model.

    Made by :func:`pack_conv_weights`.  Besides the packed words (held on the
    host) it keeps what each backend builds from them: the CPU kernel's weight
    panels for the popcount variant in use and its zero-padding corrections,
    or, per GPU, the weight rows, popcounts and padded-tap sums on that device.
    They are built at the first convolution of each configuration (variant,
    groups, padding) and reused by every later one: pass it as ``w`` to
    :func:`binary_conv2d` and :func:`binary_conv2d_threshold_pack`, with numpy
    or cupy input.  The words are a private read-only copy, so what was
    prepared from them cannot go stale; like PackedBits, a ConvWeights is
    immutable.  Pickling keeps the words only.

    Attributes
    ----------
    packed : PackedBits
        The weights packed along axis 2 (words ``(KH, KW, O, ceil(C // groups / 64))``).
    shape : tuple of int
        ``(KH, KW, C // groups, O)``.
    """

    __slots__ = ("_packed", "_prepared")
    _REMAKE = "make a new one with pack_conv_weights"

    def __init__(self, packed):
        if not isinstance(packed, PackedBits) or packed.ndim != 4 or packed.axis != 2:
            raise TypeError(
                "ConvWeights needs a 4-D PackedBits packed along axis=2; make one with "
                f"pack_conv_weights(w), got {type(packed).__name__}"
                + (f" of shape {packed.shape} packed along axis={packed.axis}" if isinstance(packed, PackedBits) else "")
            )
        if is_dask(packed.words):
            raise TypeError("ConvWeights needs numpy or cupy words, got dask words: compute them first")
        # Our own copy, on the host (each backend moves what it prepares to its
        # device): nobody else can write the words the prepared panels came from.
        words = np.array(to_numpy(packed.words), dtype=np.uint64, order="C", copy=True)
        words.flags.writeable = False
        object.__setattr__(self, "_packed", PackedBits._trusted(words, packed.shape, 2))
        # (backend key) -> what the backend prepared; filled by the backend.
        object.__setattr__(self, "_prepared", {})


    @property
    def packed(self):
        return self._packed

    @property
    def shape(self):
        return self._packed.shape

    def __getstate__(self):
        return {"packed": self._packed}

    def __setstate__(self, state):
        try:
            packed = state["packed"]
        except (TypeError, KeyError):
            raise ValueError("not the state of a ConvWeights: expected packed") from None
        ConvWeights.__init__(self, packed)

    def __repr__(self):
        return f"ConvWeights(shape={self.shape}, prepared={len(self._prepared)})"


def pack_conv_weights(w, *, n_threads=None):
    """Pack HWIO conv weights once and keep the kernel's preparation of them.

    Parameters
    ----------
    w : array_like of shape (KH, KW, C // groups, O), or PackedBits packed along axis=2
        HWIO weights, any real dtype (binarized with :func:`sign`).
    n_threads : int, optional
        CPU threads for the packing.

    Returns
    -------
    ConvWeights
        To pass as ``w`` to :func:`binary_conv2d` and
        :func:`binary_conv2d_threshold_pack`: the same results as the packed
        weights, without rebuilding the weight panels on every call.

    Raises
    ------
    ValueError, TypeError
        As :func:`binary_conv2d` for ``w``.

    Examples
    --------
    >>> import numpy as np
    >>> from xnorcore import binary_conv2d, pack_conv_weights
    >>> w = pack_conv_weights(np.ones((2, 2, 1, 1)))
    >>> binary_conv2d(np.ones((1, 3, 3, 1)), w, padding="same")[0, :, :, 0]
    array([[4, 4, 2],
           [4, 4, 2],
           [2, 2, 1]], dtype=int32)
    """
    n_threads = _check_n_threads(n_threads)
    if isinstance(w, ConvWeights):
        return w
    w = _conv_operand(w, "w", 2)
    if not isinstance(w, PackedBits):
        w = _pack(backend_for(w), w, 2, n_threads, "w")
    return ConvWeights(w)


def _conv_setup(x, w, stride, padding, dilation, groups, pad_value, n_threads, backend):
    """Validate binary_conv2d's arguments.

    Returns (x words (N, H, W, G, cwg), w words, geometry, cg, n_threads,
    backend, prepared): ``prepared`` is the dict of a ConvWeights ``w`` in which
    the backend keeps its preparation of the weights, else None.
    """
    n_threads = _check_n_threads(n_threads)
    _check_backend(backend)
    x = _conv_operand(x, "x", 3)
    prepared = None
    if isinstance(w, ConvWeights):
        w, prepared = w._packed, w._prepared
    else:
        w = _conv_operand(w, "w", 2)
    # x decides the device; ConvWeights hold host words that each backend prepares for its own.
    on_gpu = backend == "gpu" or (backend == "auto" and is_cupy(x))
    if backend == "cpu" and (is_cupy(x) or is_cupy(w)):
        raise TypeError("backend='cpu' needs numpy operands, got cupy arrays; copy them with cupy.asnumpy "
                        "or use backend='gpu'")
    if on_gpu:
        gpu_backend = get_backend("gpu")
        x = gpu_backend.to_device(x)
        if prepared is None:
            w = gpu_backend.to_device(w)
    elif is_cupy(w) and prepared is None:
        raise TypeError("x is a numpy array and w a cupy array: pass both on the same device, or "
                        "backend='gpu' to run on the GPU")
    if not _is_int(groups) or groups < 1:
        raise ValueError(f"groups must be a positive integer, got groups={groups!r}")
    groups = int(groups)
    if pad_value not in _PAD_VALUES or isinstance(pad_value, bool):
        raise ValueError(f"pad_value must be 0, 1 or -1, got pad_value={pad_value!r}")
    n, h, wd, c = x.shape
    kh, kw, cg, o = w.shape
    if c % groups or o % groups:
        raise ValueError(
            f"groups={groups} must divide the input channels and the output channels, got "
            f"x.shape={tuple(x.shape)} (C={c}) and w.shape={tuple(w.shape)} (O={o})"
        )
    if cg != c // groups:
        raise ValueError(
            f"w must have C // groups = {c // groups} input channels (axis 2), got "
            f"x.shape={tuple(x.shape)}, w.shape={tuple(w.shape)} and groups={groups}"
        )
    if min(kh, kw) < 1:
        raise ValueError(f"w must have a kernel of at least 1 x 1, got w.shape={tuple(w.shape)}")
    if kh * kw * cg > _MAX_INNER:
        raise ValueError(f"KH * KW * C // groups must be at most {_MAX_INNER} for an int32 result, got w.shape={tuple(w.shape)}")
    geometry = _conv_geometry(x.shape, w.shape, stride, padding, dilation)
    backend = backend_for(x)
    xp = get_array_module(x.words if isinstance(x, PackedBits) else x)
    cwg = n_words(cg)
    if isinstance(x, PackedBits):
        words = xp.ascontiguousarray(x.words)
        if groups > 1 and cg % WORD_BITS:
            # Each group's channels must start a word: repack them group by group.
            signs = unpack_bits(x).reshape(n, h, wd, groups, cg)
            words = _pack(backend, signs, 4, n_threads, "x").words
    else:
        x = xp.ascontiguousarray(x)
        if cg % WORD_BITS == 0 and x.dtype.kind in "if" and x.dtype != np.float16 and x.size:
            # Whole words per pixel: pack each image row as one long row of bits.
            words, has_nan = backend.pack_rows(x.reshape(n * h, wd * c), n_threads)
            _check_nan(has_nan, "x")
        else:
            words = _pack(backend, x.reshape(n, h, wd, groups, cg), 4, n_threads, "x").words
    w_words = w.words if isinstance(w, PackedBits) else _pack(backend, w, 2, n_threads, "w").words
    w_words = get_array_module(w_words).ascontiguousarray(w_words)
    return words.reshape(n, h, wd, groups, cwg), w_words, geometry, cg, n_threads, backend, prepared


def binary_conv2d(x, w, *, stride=1, padding="valid", dilation=1, groups=1, pad_value=0, n_threads=None,
                  backend="auto"):
    """Exact 2-D convolution of ``sign(x)`` with ``sign(w)`` through XNOR and popcount.

    Parameters
    ----------
    x : array_like of shape (N, H, W, C), or PackedBits packed along C
        NHWC input, any real dtype and memory order.  Pack it once with
        ``pack_bits(x, axis=-1)``; the packed conv layout is in :mod:`xnorcore.ops`.
    w : array_like of shape (KH, KW, C // groups, O), PackedBits packed along axis=2, or ConvWeights
        HWIO weights.  Pack them once with :func:`pack_conv_weights` (which
        also keeps the kernel's weight panels from one call to the next) or
        ``pack_bits(w, axis=2)``.
    stride, dilation : int or (int, int), default=1
        Steps between output positions and between kernel taps, (rows, columns).
    padding : "valid", "same", int or ((top, bottom), (left, right)), default="valid"
        "same" gives an output of ``ceil(H / stride)`` x ``ceil(W / stride)``,
        the odd padding row or column at the end, as TensorFlow does.
    groups : int, default=1
        Channel groups; it must divide C and O.  ``groups=C`` is depthwise.
    pad_value : {0, 1, -1}, default=0
        What a padded position contributes: 0 is true zero padding (the float
        convolution of ``sign(x)`` with zero padding), +1 or -1 a padding of
        that sign (Larq Compute Engine's and daBNN's conventions).
    n_threads : int, optional
        CPU threads to use; by default OpenMP's limit.
    backend : {"auto", "cpu", "gpu"}, default="auto"
        "auto" runs on the device of ``x``: the GPU for a cupy array (an
        implicit GEMM on the same kernels as :func:`binary_matmul`), else
        the CPU.  "gpu" copies numpy operands to the GPU.

    Returns
    -------
    out : ndarray of shape (N, OH, OW, O) and dtype int32
        ``out[n, y, x, o] = sum over i, j, c of sign(x)[n, y*SH + i*DH - PT,
        x*SW + j*DW - PL, g*Cg + c] * sign(w)[i, j, c, o]`` with ``g`` the group
        of ``o``, padded positions counting ``pad_value``: exactly.

    Raises
    ------
    ValueError
        If an operand is not 4-D, contains NaN, the channels or ``groups``
        disagree, the kernel is larger than the padded input, or ``stride``,
        ``padding``, ``dilation``, ``pad_value`` or ``backend`` is invalid.
    TypeError
        If an operand has a complex, object or string dtype, or the operands
        are on different devices.

    Examples
    --------
    >>> import numpy as np
    >>> from xnorcore import binary_conv2d
    >>> x = np.ones((1, 3, 3, 1))
    >>> w = np.ones((2, 2, 1, 1))
    >>> binary_conv2d(x, w, padding="same")[0, :, :, 0]
    array([[4, 4, 2],
           [4, 4, 2],
           [2, 2, 1]], dtype=int32)
    """
    x_words, w_words, geometry, cg, n_threads, backend, prepared = _conv_setup(
        x, w, stride, padding, dilation, groups, pad_value, n_threads, backend
    )
    n, o = x_words.shape[0], w_words.shape[2]
    if cg == 0 or n == 0:  # no channels: sums of nothing; no images: nothing to compute
        return get_array_module(x_words).zeros((n, geometry[2], geometry[3], o), dtype=np.int32)
    return backend.conv2d(x_words, w_words, geometry, int(groups), cg, pad_value, n_threads, prepared)


def _conv_thresholds(direction, threshold, o):
    """direction as int8 and threshold as int32, both (O,), checked."""
    if (
        type(direction) is np.ndarray and type(threshold) is np.ndarray
        and direction.dtype == np.int8 and threshold.dtype == np.int32
        and direction.shape == (o,) and threshold.shape == (o,)
        # the bytes of -1, 0 and 1 deleted leave nothing: one C pass, no reductions
        and not direction.tobytes().translate(None, b"\xff\x00\x01")
    ):
        return direction, threshold  # a folded batch norm as the layers keep it
    direction = np.asarray(to_numpy(direction))
    threshold = np.asarray(to_numpy(threshold))
    ok = direction.shape == (o,) and direction.dtype.kind in "biuf"
    if ok and direction.size:
        ok = bool(-1 <= direction.min() and direction.max() <= 1)
        if ok and direction.dtype.kind == "f":
            ok = bool((direction == np.trunc(direction)).all())
    if not ok:
        raise ValueError(
            f"direction must hold O = {o} values in {{-1, 0, 1}}, got shape {direction.shape} and dtype {direction.dtype}"
        )
    ok = threshold.shape == (o,) and threshold.dtype.kind in "iuf"
    if ok and threshold.dtype != np.int32 and threshold.size:
        info = np.iinfo(np.int32)
        ok = bool(
            np.isfinite(threshold).all()
            and (threshold == np.trunc(threshold)).all()
            and info.min <= threshold.min()
            and threshold.max() <= info.max
        )
    if not ok:
        raise ValueError(
            f"threshold must hold O = {o} integer values within int32, got shape {threshold.shape} "
            f"and dtype {threshold.dtype}"
        )
    return direction.astype(np.int8, copy=False), threshold.astype(np.int32, copy=False)


def binary_conv2d_threshold_pack(x, w, direction, threshold, *, pool=False, stride=1, padding="valid",
                                 dilation=1, groups=1, pad_value=0, n_threads=None, backend="auto"):
    """A binary conv layer in one pass: convolution, folded batch norm, sign, packing (and 2x2 max-pool).

    Computes ``z = binary_conv2d(x, w, ...)`` and returns the signs of
    ``direction * z - threshold`` packed along the output channels: the
    packed NHWC input of the next binary conv layer.  The int32 sums of each
    block of pixels stay in a per-thread buffer; no (N, OH, OW, O) array is
    written.

    Parameters
    ----------
    x, w, stride, padding, dilation, groups, pad_value, n_threads, backend
        As for :func:`binary_conv2d`.
    direction : array_like of shape (O,), values in {-1, 0, 1}
        Sign of each channel's batch-norm scale (0: the channel is constant).
    threshold : array_like of shape (O,), integer values within int32
        Per-channel threshold; bit ``o`` is set where ``direction[o] * z[o] -
        threshold[o] >= 0``, computed in int32 with wrap-around as numpy's
        int32 arithmetic does, on every backend (thresholds within the range
        of the sums, as folded batch norms give, never wrap).
    pool : bool, default=False
        Also max-pool 2x2 with stride 2 (floor: an odd last row or column is
        dropped).  The max of +-1 values is +1 where any is +1: an OR of the bits.

    Returns
    -------
    packed : PackedBits of shape (N, OH, OW, O), or (N, OH // 2, OW // 2, O) with ``pool``
        Packed along axis 3, in the layout of :mod:`xnorcore.ops`.

    Raises
    ------
    ValueError
        As :func:`binary_conv2d`, and if ``direction`` or ``threshold`` has the
        wrong shape or values.

    Examples
    --------
    >>> import numpy as np
    >>> from xnorcore import binary_conv2d_threshold_pack, unpack_bits
    >>> x = np.ones((1, 2, 2, 1))
    >>> w = np.ones((1, 1, 1, 2))
    >>> p = binary_conv2d_threshold_pack(x, w, [1, -1], [0, 0])
    >>> unpack_bits(p)[0, 0, 0]
    array([ 1, -1], dtype=int8)
    """
    x_words, w_words, geometry, cg, n_threads, backend, prepared = _conv_setup(
        x, w, stride, padding, dilation, groups, pad_value, n_threads, backend
    )
    n, o = x_words.shape[0], w_words.shape[2]
    direction, threshold = _conv_thresholds(direction, threshold, o)
    oh, ow = geometry[2], geometry[3]
    shape = (n, oh // 2, ow // 2, o) if pool else (n, oh, ow, o)
    xp = get_array_module(x_words)
    if n == 0:
        return PackedBits._trusted(xp.zeros(shape[:3] + (n_words(o),), dtype=np.uint64), shape, 3)
    if cg == 0:
        z = xp.zeros((n, oh, ow, o), dtype=np.int32)
        words = backend.threshold_pack(
            z.reshape(-1, o), direction, threshold
        ).reshape(n, oh, ow, n_words(o))
        if pool:  # every sum is 0: each window's four signs are the same
            words = words[:, : 2 * shape[1] : 2, : 2 * shape[2] : 2]
        return PackedBits._trusted(xp.ascontiguousarray(words), shape, 3)
    words = backend.conv2d_threshold_pack(
        x_words, w_words, geometry, int(groups), cg, pad_value, direction, threshold, bool(pool), n_threads,
        prepared,
    )
    return PackedBits._of_kernel(words, shape, 3)


# The backends build PackedBits and call pack_bits: they are imported once
# this module's names exist.
from ._backends import backend_for, get_backend  # noqa: E402
