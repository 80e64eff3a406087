"""Lazy ``sign``, ``pack_bits``, ``unpack_bits`` and ``binary_matmul`` on dask arrays.

:mod:`xnorcore.ops` sends dask operands here, so dask is imported only by users
who pass dask arrays.  Every function builds a graph and computes nothing: the
checks that need the data (NaN) run inside the tasks, one block at a time, and
name the block.

``binary_matmul(a, b)`` packs every block of ``a`` along K and every block of
``b`` along K in tasks of their own, then each output block ``(i, j)`` sums
the exact int32 products of row block ``i`` of ``a`` with column block ``j``
of ``b`` over the K blocks.  A block packed on its own has zero padding in its
last word, so its partial product is exact whatever the K chunks; the sum of
partial products is bounded by K, which the int32 result already requires.
Operands packed as a whole (:class:`~xnorcore.ops.PackedBits`) have padding
only at the end of K, so the other operand's K chunks are made multiples of 64
to line up with their words.
"""

import numpy as np

import dask.array as da
from dask.array.utils import meta_from_array

from . import ops
from ._array import is_dask
from ._backends import get_backend
from .ops import WORD_BITS, PackedBits, n_words

__all__ = ["sign", "pack_bits", "unpack_bits", "binary_matmul"]


def _check_dask(x, name):
    """Eager checks that need no data: dtype and known chunk sizes."""
    if x.dtype.kind not in "biuf":
        raise TypeError(
            f"{name} must have a boolean, integer or real floating dtype, got dtype={x.dtype}"
        )
    if any(np.isnan(c) for chunks in x.chunks for c in chunks):
        raise ValueError(
            f"{name} has unknown chunk sizes (shape {x.shape}); call "
            f"{name}.compute_chunk_sizes() first"
        )


def _location(name, block_info):
    """``a[0:100, 64:128]`` for the block that a task was given."""
    if not block_info or 0 not in block_info:
        return name
    where = ", ".join(f"{start}:{stop}" for start, stop in block_info[0]["array-location"])
    return f"{name}[{where}]"


# -- sign ---------------------------------------------------------------------


def _sign_block(x, name, block_info=None):
    if x.dtype.kind == "f" and np.isnan(x).any():
        raise ValueError(f"{name} must not contain NaN (found in {_location(name, block_info)})")
    return ops.sign(x)


def sign(x):
    """Lazy :func:`xnorcore.sign` of a dask array."""
    _check_dask(x, "x")
    dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.int8)
    return x.map_blocks(_sign_block, "x", dtype=dtype, meta=meta_from_array(x._meta, dtype=dtype))


# -- pack_bits / unpack_bits --------------------------------------------------


def _aligned(chunks):
    """Whether chunks along a packed axis start on word boundaries."""
    return all(c % WORD_BITS == 0 for c in chunks[:-1])


def _word_aligned_chunks(chunks):
    """``chunks`` if every block but the last is whole words, else regular
    chunks of the largest size rounded up to whole words."""
    if _aligned(chunks):
        return chunks
    size = WORD_BITS * n_words(max(chunks))
    total = sum(chunks)
    full, rest = divmod(total, size)
    return (size,) * full + ((rest,) if rest else ())


def _pack_block(x, axis, name, backend, n_threads, block_info=None):
    """Pack one block; the words keep the block's axis order (packed axis at
    ``axis``) so that block (i, j, ...) of the words is block (i, j, ...) of x."""
    module = ops._backend_module(backend, x, names=(name,))
    x = module.to_device(x)
    packed, has_nan = ops._pack_unchecked(module, x, axis, n_threads)
    if has_nan:
        raise ValueError(f"{name} must not contain NaN (found in {_location(name, block_info)})")
    return ops.get_array_module(packed.words).moveaxis(packed.words, -1, axis)


def _words_of(x, axis, name, backend="auto", n_threads=None):
    """Words of x packed block by block along ``axis`` as a dask array in x's
    axis order; each block has its own padding."""
    word_chunks = tuple(n_words(c) for c in x.chunks[axis])
    chunks = x.chunks[:axis] + (word_chunks,) + x.chunks[axis + 1 :]
    meta = meta_from_array(x._meta, ndim=x.ndim, dtype=np.uint64)
    if backend == "gpu":  # the blocks are copied to the device in their tasks
        meta = get_backend("gpu").to_device(np.empty((0,) * x.ndim, dtype=np.uint64))
    return x.map_blocks(
        _pack_block, axis, name, backend, n_threads, chunks=chunks, dtype=np.uint64, meta=meta
    )


def pack_bits(x, axis=-1, *, n_threads=None):
    """Lazy :func:`xnorcore.pack_bits` of a dask array.

    The packed axis is rechunked to whole words (multiples of 64) unless its
    chunks already are, so that the words of each block sit where the layout of
    :mod:`xnorcore.ops` puts them; the other axes keep their chunks.  The words
    are a dask array; their blocks along the last axis follow the chunks of the
    packed axis.
    """
    _check_dask(x, "x")
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension, got a 0-d array")
    axis = ops._normalize_axis(axis, x.ndim)
    n_threads = ops._check_n_threads(n_threads)
    chunks = _word_aligned_chunks(x.chunks[axis])
    if chunks != x.chunks[axis]:
        x = x.rechunk({axis: chunks})
    words = da.moveaxis(_words_of(x, axis, "x", n_threads=n_threads), axis, -1)
    return PackedBits(words, x.shape, axis)


def _unpack_block(words, length, dtype, block_info=None):
    start, stop = block_info[0]["array-location"][-1]
    here = min(WORD_BITS * (stop - start), length - WORD_BITS * start)
    packed = PackedBits(words, words.shape[:-1] + (here,), words.ndim - 1)
    return ops.unpack_bits(packed, dtype)


def unpack_bits(packed, dtype=np.int8):
    """Lazy :func:`xnorcore.unpack_bits` of a PackedBits with dask words."""
    words, length = packed.words, packed.length
    value_chunks = tuple(
        min(WORD_BITS * c, length - WORD_BITS * start)
        for c, start in zip(words.chunks[-1], np.cumsum((0,) + words.chunks[-1][:-1]))
    )
    dtype = np.dtype(dtype)
    values = words.map_blocks(
        _unpack_block, length, dtype,
        chunks=words.chunks[:-1] + (value_chunks,), dtype=dtype,
        meta=meta_from_array(words._meta, ndim=words.ndim, dtype=dtype),
    )
    return da.moveaxis(values, -1, packed.axis)


# -- binary_matmul ------------------------------------------------------------


def _product_block(a_blocks, b_blocks, klens, backend, n_threads):
    """Output block (i, j): the exact sum over K blocks of the partial products.

    ``a_blocks[k]`` holds the words of block (i, k) of a, shape (m, w_k);
    ``b_blocks[k]`` the words of block (k, j) of b in b's axis order, shape
    (w_k, n); ``klens[k]`` how many values of K block k holds.
    """
    xp = ops.get_array_module(a_blocks[0], b_blocks[0])
    m, n = a_blocks[0].shape[0], b_blocks[0].shape[1]
    out = None
    for aw, bw, k in zip(a_blocks, b_blocks, klens):
        if m == 0 or n == 0 or k == 0:
            continue
        module = ops._backend_module(backend, aw, bw, names=("a", "b"))
        part = module.xnor_gemm(xp.ascontiguousarray(aw), xp.ascontiguousarray(bw.T), k, n_threads)
        out = part if out is None else out.__iadd__(part)
    return xp.zeros((m, n), dtype=np.int32) if out is None else out


def _as_dask(x, chunks):
    return x if is_dask(x) else da.from_array(x, chunks=chunks)


def _operand(x, name, axis):
    """Validate one operand without reading its data."""
    if isinstance(x, PackedBits) or not is_dask(x):
        return ops._matmul_operand(x, name, axis)
    _check_dask(x, name)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got {name}.ndim={x.ndim} ({name}.shape={tuple(x.shape)})")
    return x


def _packed_words(p, klens, free_chunks, axis):
    """Words of a PackedBits ``p`` as a dask array in the operand's axis order
    ((M, W) for a, (W, N) for b), split into the K blocks ``klens``."""
    word_chunks = tuple(n_words(k) for k in klens)
    words = p.words if axis == 1 else p.words.T
    chunks = (free_chunks, word_chunks) if axis == 1 else (word_chunks, free_chunks)
    if is_dask(words):
        return words.rechunk(chunks)
    return da.from_array(words, chunks=chunks)


def _klens_of_words(word_chunks, length):
    """Values of K in each block of words that cover the whole of K."""
    starts = np.cumsum((0,) + tuple(word_chunks[:-1]))
    return tuple(min(WORD_BITS * w, length - WORD_BITS * int(s)) for w, s in zip(word_chunks, starts))


def binary_matmul(a, b, *, backend="auto", n_threads=None):
    """Lazy :func:`xnorcore.binary_matmul` where ``a`` or ``b`` is a dask array.

    The result is an int32 dask array of shape (M, N) with the row chunks of
    ``a`` and the column chunks of ``b`` (one chunk where that operand is in
    memory); ``compute()`` gives exactly what the numpy path gives.
    """
    n_threads = ops._check_n_threads(n_threads)
    if backend not in ops._BACKENDS:
        raise ValueError(f"backend must be one of {ops._BACKENDS}, got backend={backend!r}")
    a = _operand(a, "a", 1)
    b = _operand(b, "b", 0)
    if a.shape[1] != b.shape[0]:
        raise ValueError(
            "a and b must have matching inner dimensions, got "
            f"a.shape={tuple(a.shape)} and b.shape={tuple(b.shape)}"
        )
    k_total = a.shape[1]
    if k_total > ops._MAX_INNER and a.shape[0] and b.shape[1]:
        raise ValueError(
            f"the inner dimension must be at most {ops._MAX_INNER} for an int32 result, got "
            f"a.shape={tuple(a.shape)} and b.shape={tuple(b.shape)}"
        )
    if backend == "gpu":
        get_backend("gpu")  # no CuPy or no device: say so now, not in a task
    a_packed, b_packed = isinstance(a, PackedBits), isinstance(b, PackedBits)

    # Pick the K blocks.  Words packed as a whole fix them (a dask PackedBits)
    # or need them whole words long (a numpy PackedBits); raw operands follow.
    klens = None
    for p in (a, b):
        if isinstance(p, PackedBits) and is_dask(p.words):
            klens = _klens_of_words(p.words.chunks[-1], k_total)
            break
    if klens is None:
        raw = a if is_dask(a) else b
        klens = raw.chunks[1] if raw is a else raw.chunks[0]
        if a_packed or b_packed:
            klens = _word_aligned_chunks(klens)
    if not klens:  # K = 0 gives one empty block
        klens = (0,)

    if a_packed:
        a_free = a.words.chunks[0] if is_dask(a.words) else (a.shape[0],)
        a_words = _packed_words(a, klens, a_free, 1)
    else:
        a_free = a.chunks[0] if is_dask(a) else (a.shape[0],)
        a_raw = _as_dask(a, (a_free, klens)).rechunk((a_free, klens))
        a_words = _words_of(a_raw, 1, "a", backend, n_threads)
    if b_packed:
        b_free = b.words.chunks[0] if is_dask(b.words) else (b.shape[1],)
        b_words = _packed_words(b, klens, b_free, 0)
    else:
        b_free = b.chunks[1] if is_dask(b) else (b.shape[1],)
        b_raw = _as_dask(b, (klens, b_free)).rechunk((klens, b_free))
        b_words = _words_of(b_raw, 0, "b", backend, n_threads)

    meta = meta_from_array(a_words._meta, ndim=2, dtype=np.int32)
    return da.blockwise(
        _product_block, "ij",
        a_words, "ik",
        b_words, "kj",
        klens=tuple(int(k) for k in klens), backend=backend, n_threads=n_threads,
        concatenate=False, align_arrays=False, dtype=np.int32, meta=meta,
    )
