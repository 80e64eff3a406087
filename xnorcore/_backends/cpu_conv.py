"""The conv operations of the CPU backend, over the Cython kernels of ``xnorcore._conv``.

:mod:`xnorcore._backends.cpu` exports them; ``xnorcore.ops`` validates and
packs, this module trusts its input:

``conv2d(x_words, w_words, geometry, groups, cg, pad_value, n_threads, prepared) -> int32 (N, OH, OW, O)``
    ``x_words`` uint64 (N, H, W, groups, cwg): each group's C / groups = cg
    channels packed into cwg words of their own (for groups == 1, or cg a
    multiple of 64, that is just the NHWC words packed along C); ``w_words``
    uint64 (KH, KW, O, cwg): HWIO weights packed along their input channels.
    ``geometry`` is ``(H, W, OH, OW, KH, KW, SH, SW, DH, DW, PT, PB, PL, PR)``.
    ``pad_value`` in {0, 1, -1} is what a padded position contributes.
    ``prepared``: None or a ConvWeights' dict, which keeps the panels,
    corrections and padding block per (variant, groups, pad_value, corrections).
``conv2d_threshold_pack(..., direction, threshold, pool, n_threads, prepared) -> uint64 words``
    The packed signs of ``direction * conv2d(...) - threshold`` along O,
    (N, OH, OW, ceil(O / 64)); with ``pool``, max-pooled 2x2 with stride 2
    on the bits (N, OH // 2, OW // 2, ceil(O / 64)).
``real_conv2d(x, w, geometry) -> float32 (N, OH, OW, O)``
    A real-valued convolution (the first layer of a binary CNN: pixels in,
    real weights), zero padded, by im2col and one BLAS product.
``real_conv2d_pool(x, w, bias, pads, direction=None, threshold=None, n_threads=None)``
    The first block of a binary CNN at inference in one kernel: stride-1
    convolution of float32 NHWC ``x`` with HWIO ``w``, 2x2 max-pool (stride
    2), plus ``bias``; float32 (N, OH // 2, OW // 2, O), or with ``direction``
    and ``threshold`` the words of ``threshold_pack`` of those sums.

The popcount variant is the CPU backend's (``cpu.set_variant``).  Thread
counts follow the one rule of :func:`xnorcore._threads.work_threads`.
"""

import numpy as np

from .. import _bitpack, _conv
from . import _common
from .._threads import work_threads

__all__ = ["conv2d", "conv2d_threshold_pack", "real_conv2d", "real_conv2d_pool"]

#: Nanoseconds per unit of work on one core (the avx512 variant), for the
#: thread count: one 64-bit word of a binary conv (pixels x channels x words
#: of K, as a GEMM word) and one multiply-add of the real first block.
_NS_PER_CONV_WORD = 0.12
_NS_PER_REAL_MAC = 0.03

def _variant():
    return _bitpack.VARIANTS.index(_bitpack.get_variant())


def _weights(w_words, groups, cg, pad_value, corrections, variant):
    """(panels, corr or None, pad block): what the kernels read of the weights."""
    kh, kw, o, cwg = w_words.shape
    w3 = np.ascontiguousarray(w_words).reshape(kh * kw, o, cwg)
    pad = np.zeros(max(cwg, 1), dtype=np.uint64)
    if pad_value == 1:
        # +1 padding: the cg valid bits set, the padding bits clear as in any word.
        bits = np.zeros(64 * pad.shape[0], dtype=np.uint8)
        bits[:cg] = 1
        pad = np.packbits(bits, bitorder="little").view(np.uint64).copy()
    if _bitpack.splits_words(variant):
        # Split words have the popcounts of the words: the corrections hold.
        w3, pad = _bitpack.split_words(w3), _bitpack.split_words(pad)
    panels, corr = _conv.conv_weights(w3, groups, cg, corrections, variant)
    for a in (panels, corr, pad):
        if a is not None:
            a.flags.writeable = False
    return panels, corr, pad


def _operands(x_words, w_words, geometry, groups, cg, pad_value, prepared=None, n_threads=None):
    """Kernel operands: (x (N, H, W, xs), panels, corr or None, pad, geometry for C, variant).

    ``prepared``: None, or a ConvWeights' dict (always the same words), where
    the weights' operands are kept under their configuration.
    """
    h, w, oh, ow, kh, kw, sh, sw, dh, dw, pt, pb, pl, pr = geometry
    variant = _variant()
    # Zero padding needs corrections only where some tap falls in the padding.
    corrections = pad_value == 0 and bool(pt or pb or pl or pr)
    key = (variant, groups, pad_value, corrections)
    weights = None if prepared is None else prepared.get(key)
    if weights is None:
        weights = _weights(w_words, groups, cg, pad_value, corrections, variant)
        if prepared is not None:
            prepared[key] = weights
    panels, corr, pad = weights
    x = x_words.reshape(x_words.shape[:3] + (-1,))
    if _bitpack.splits_words(variant):
        x = _bitpack.split_words(x, n_threads)
    elif not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    c_geometry = (h, w, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl, kh * kw * cg)
    return x, panels, corr, pad, c_geometry, variant


def _conv_threads(n_threads, x, w_words, c_geometry):
    kh, kw, o, cwg = w_words.shape
    work = x.shape[0] * c_geometry[2] * c_geometry[3] * o * kh * kw * cwg * _NS_PER_CONV_WORD
    return work_threads(n_threads, work)


def conv2d(x_words, w_words, geometry, groups, cg, pad_value, n_threads=None, prepared=None):
    x, panels, corr, pad, c_geometry, variant = _operands(x_words, w_words, geometry, groups, cg, pad_value,
                                                          prepared, n_threads)
    return _conv.conv2d(x, panels, corr, pad, c_geometry, w_words.shape[2], groups, variant,
                        _conv_threads(n_threads, x, w_words, c_geometry))


def conv2d_threshold_pack(x_words, w_words, geometry, groups, cg, pad_value, direction, threshold,
                          pool=False, n_threads=None, prepared=None):
    x, panels, corr, pad, c_geometry, variant = _operands(x_words, w_words, geometry, groups, cg, pad_value,
                                                          prepared, n_threads)
    return _conv.conv2d_threshold_pack(
        x, panels, corr, pad, c_geometry, w_words.shape[2], groups,
        np.ascontiguousarray(direction, dtype=np.int8), np.ascontiguousarray(threshold, dtype=np.int32),
        bool(pool), variant, _conv_threads(n_threads, x, w_words, c_geometry),
    )


def real_conv2d(x, w, geometry):
    """float32 NHWC convolution of x (N, H, W, C) with HWIO w, zero padded (im2col + BLAS)."""
    h, w_, oh, ow, kh, kw, sh, sw, dh, dw, pt, pb, pl, pr = geometry
    x = np.asarray(x, dtype=np.float32)
    w = np.asarray(w, dtype=np.float32)
    n, c, o = x.shape[0], x.shape[3], w.shape[3]
    padded = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0))) if pt or pb or pl or pr else x
    s = padded.strides
    # cols[n, y, x, i, j, c] = padded[n, y sh + i dh, x sw + j dw, c]: a view, copied once by reshape
    cols = np.lib.stride_tricks.as_strided(
        padded, (n, oh, ow, kh, kw, c), (s[0], s[1] * sh, s[2] * sw, s[1] * dh, s[2] * dw, s[3]), writeable=False
    )
    out = cols.reshape(n * oh * ow, kh * kw * c) @ w.reshape(kh * kw * c, o)
    return out.reshape(n, oh, ow, o)


def real_conv2d_pool(x, w, bias, pads, direction=None, threshold=None, n_threads=None):
    """The real first block: conv (stride 1, zero padding ``pads``), 2x2 max-pool, bias, [threshold-pack].

    ``x`` float32 (N, H, W, C); ``w`` HWIO float32; ``bias`` None or (O,);
    ``pads`` ``((top, bottom), (left, right))``.  Each output's four sums are
    added in one fixed order that depends on that output alone (a sample gets
    the same sums in any batch), so both inference paths agree exactly.
    """
    (pt, pb), (pl, pr) = pads
    n, h, w_in, c = x.shape
    kh, kw, _, o = w.shape
    ph, pw = (h + pt + pb - kh + 1) // 2, (w_in + pl + pr - kw + 1) // 2
    variant = _variant()
    width = _conv.real_pool_width(variant)
    o_pad = -(-o // width) * width
    weights = np.zeros((kh * kw * c, o_pad), dtype=np.float32)
    weights[:, :o] = np.asarray(w, dtype=np.float32).reshape(kh * kw * c, o)
    if bias is not None:
        bias = np.concatenate([np.asarray(bias, dtype=np.float32), np.zeros(o_pad - o, dtype=np.float32)])
    if direction is not None:
        direction = np.ascontiguousarray(direction, dtype=np.int8)
        threshold = np.ascontiguousarray(threshold, dtype=np.float32)
    work = n * ph * pw * 4 * kh * kw * c * o_pad * _NS_PER_REAL_MAC
    out, has_nan = _conv.real_conv2d_pool(np.ascontiguousarray(x, dtype=np.float32), weights, bias,
                                          (kh, kw, pt, pl, ph, pw, o), direction, threshold, variant,
                                          work_threads(n_threads, work))
    if has_nan:  # sums past the float32 range (inf - inf): threshold_pack refuses them too
        raise ValueError(_common.NAN_SUMS)
    return out
