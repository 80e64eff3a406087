"""The conv operations of the GPU backend: an implicit GEMM over packed words.

:mod:`xnorcore._backends.gpu` exports them, with the signatures of
:mod:`xnorcore._backends.cpu_conv`.  On devices with bit tensor cores
(compute capability 8.0 and later) a convolution with ``groups=1`` is one
launch of ``kernels/conv_mma.cu``: for int32 sums the halo kernel copies the
input rows under a tile of pixels into shared memory once and reads every window
from there (where they fit, ``_HALO_MAX_BYTES``); the gather kernel, for larger
layers and for the fused layer, gathers each output pixel's window words stage
by stage.  Both count the rows' popcounts, correct the sums of the pixels whose
window reaches a zero padding, and write int32 sums or, for the fused layer, the
packed signs.  Its
epilogue reads one table per border class and output channel (``conv_class_table``:
the weights' popcounts and zero-padding corrections, and the fused layer's
thresholds), kept with a ConvWeights.  Grouped convolutions, kernels whose table
would not fit in shared memory, and devices without bit tensor cores (or
``XNORCORE_GPU_KERNEL=popc``), take the explicit path: ``kernels/conv.cu``
lays the activations out as GEMM rows (``im2col_words``); the rows go through
the GEMM kernels of :mod:`xnorcore._backends.gpu` (wgmma, mma or popc, as for
``binary_matmul``), whose rows may carry more words than ``ceil(k / 64)``
since padding bits are clear in both operands.  Zero padding is then exact
through ``conv_zero_pad_fix`` on the output pixels whose window reaches the
padding; the fused layer runs the fused GEMM kernel on every row and redoes
those border rows alone.
"""

import numpy as np

from .._array import to_numpy
from ..ops import n_words
from . import _common, gpu

__all__ = ["conv2d", "conv2d_threshold_pack", "real_conv2d"]

_border_rows = {}  # (device, n, geometry) -> int64 device array of the rows whose window reaches the padding
_MAX_BORDER_ENTRIES = 64
# (device, geometry) -> the border classes of the implicit GEMM (_border_classes); also
# ("taps", device, geometry) -> _taps_in_padding's and ("pad", device, ...) -> _pad_word's arrays
_classes = {}
_constants = {}  # (device, direction bytes, threshold bytes) -> both on the device
_MAX_CONSTANTS = 256
_implicit_plans = {}  # (device, x words shape, O, row words, geometry, cg, pad_value, pack) -> see _implicit_plan
_MAX_PLANS = 1024

#: Benchmarks set this to False to time the explicit path (GEMM rows, then a GEMM kernel).
_IMPLICIT = True
#: Benchmarks (and tests) set this to False to run every implicit GEMM as the gather kernel
#: (the fused layer always does).
_HALO = True
#: The most shared memory that the halo kernel's two buffers of input lines and its weights
#: may take; larger layers run the gather kernel.
_HALO_MAX_BYTES = 64 * 1024
#: Tests set this to run the halo kernel in so many persistent blocks at most, so that
#: each block takes many tiles of pixels; None: as many as the device holds at once.
_HALO_BLOCKS = None


def _launch(name, items, args):
    threads = gpu._constant("conv", "CONV_THREADS")
    gpu._function("conv", name)(gpu._grid_1d(items, threads, cap=4 * 65535), (threads,), args)


def _weights(w_words, cg, pad_value, prepared):
    """(weight rows (O, KH * KW * CW rounded up to even), their popcounts (O,) int32,
    tap sums (KH * KW, O) int32, pad word (CW,)), all on the device; kept in ``prepared``
    (a ConvWeights' dict) where given.  Device words are laid out by kernels alone:
    nothing waits for the device (a training step's weights change every step)."""
    cupy = gpu._cupy()
    key = ("gpu", cupy.cuda.runtime.getDevice(), pad_value)
    if prepared is not None and key in prepared:
        return prepared[key]
    words = cupy.ascontiguousarray(gpu.to_device(w_words))
    kh, kw, o, cw = words.shape
    per_row = kh * kw * cw
    rows = cupy.zeros((o, per_row + per_row % 2), dtype=np.uint64)  # even words per row, as _im2col's
    rows[:, :per_row] = words.transpose(2, 0, 1, 3).reshape(o, per_row)
    flat = words.reshape(kh * kw * o, cw)
    tap_counts = gpu._row_popcounts(flat, flat[:0]).reshape(kh * kw, o)
    counts = tap_counts.sum(axis=0, dtype=np.int32)
    # sum over the channels of sign(w) per tap and output channel: 2 popcount - cg
    tap_sums = 2 * tap_counts - np.int32(cg)
    weights = (rows, counts, tap_sums, _pad_word(cw, cg, pad_value))
    if prepared is not None:
        prepared[key] = weights
    return weights


def _cached(key, make):
    """``_classes[key]``, from ``make()`` where absent (the cache emptied when full)."""
    found = _classes.get(key)
    if found is None:
        if len(_classes) >= _MAX_BORDER_ENTRIES:
            _classes.clear()
        found = _classes[key] = make()
    return found


def _pad_word(cw, cg, pad_value):
    """The channel words (CW,) on the device of a padded position as the explicit path reads it:
    cg bits set for +1 padding, none otherwise (the padding bits of a word are clear)."""
    def make():
        bits = np.zeros(64 * cw, dtype=np.uint8)
        if pad_value == 1:
            bits[:cg] = 1
        return gpu.to_device(np.packbits(bits, bitorder="little").view(np.uint64))

    return _cached(("pad", gpu._cupy().cuda.runtime.getDevice(), cw, cg, pad_value == 1), make)


def _im2col(x_words, pad, geometry, groups, w_counts):
    """(GEMM rows (G, N * OH * OW, KH * KW * CW rounded up to even) of activation words
    (N, H, W, G, CW), and for one group their popcounts followed by ``w_counts``, what
    the GEMM takes as ``counts``; None for several groups)."""
    cupy = gpu._cupy()
    h, w, oh, ow, kh, kw, sh, sw, dh, dw, pt, pb, pl, pr = geometry
    n, cw = x_words.shape[0], x_words.shape[4]
    rows, per_row = n * oh * ow, kh * kw * cw
    if oh * ow >= 2**31 or per_row >= 2**31 - 1:
        raise ValueError(f"the GPU convolution takes at most 2**31 - 2 output pixels per image and words per "
                         f"window, got {oh} x {ow} pixels and {per_row} words")
    per_row += per_row % 2  # the GEMM kernels read rows of an even number of words
    cols = gpu._alloc(lambda: cupy.empty((groups, rows, per_row), dtype=np.uint64), 8 * groups * rows * per_row,
                      "hold the convolution's GEMM rows")
    x = cupy.ascontiguousarray(x_words)
    _launch("im2col_words", cols.size,
            (x, pad, cols, np.int64(n), *(np.int32(v) for v in (h, w, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl)),
             np.int32(groups), np.int32(cw), np.int32(per_row)))
    counts = None
    if groups == 1:  # group 0's rows, then the weights' (the other groups' GEMMs count their own)
        counts = gpu._alloc(lambda: cupy.empty(rows + w_counts.size, dtype=np.int32), 4 * rows, "hold row popcounts")
        threads = gpu._constant("pack", "POPCOUNT_THREADS")
        gpu._function("pack", "row_popcounts")(
            gpu._grid_1d(rows, threads // 32), (threads,), (cols[0], np.int64(rows), cols[0], np.int64(0),
                                                            np.int64(per_row), counts))
        counts[rows:] = w_counts
    return cols, counts


def _on_device(direction, threshold):
    """(int8 direction, int32 threshold, key): both on the device; host arrays are copied
    once per content and kept (a copy per call would wait for the device at every layer),
    under ``key`` (None for device arrays)."""
    cupy = gpu._cupy()
    if isinstance(direction, cupy.ndarray) and isinstance(threshold, cupy.ndarray):
        return direction.astype(np.int8, copy=False), threshold.astype(np.int32, copy=False), None
    direction = np.ascontiguousarray(to_numpy(direction), dtype=np.int8)
    threshold = np.ascontiguousarray(to_numpy(threshold), dtype=np.int32)
    key = (cupy.cuda.runtime.getDevice(), direction.tobytes(), threshold.tobytes())
    found = _constants.get(key)
    if found is None:
        if len(_constants) >= _MAX_CONSTANTS:
            _constants.clear()
        found = _constants[key] = (gpu.to_device(direction), gpu.to_device(threshold), key)
    return found


def _borders(n, geometry):
    """Device int64 indices of the output rows whose window has a tap in the padding (None if none)."""
    cupy = gpu._cupy()
    key = (cupy.cuda.runtime.getDevice(), n, geometry)
    if key in _border_rows:
        return _border_rows[key]
    h, w, oh, ow, kh, kw, sh, sw, dh, dw, pt, pb, pl, pr = geometry
    ys, xs = np.arange(oh) * sh - pt, np.arange(ow) * sw - pl
    out_y = (ys < 0) | (ys + (kh - 1) * dh >= h)
    out_x = (xs < 0) | (xs + (kw - 1) * dw >= w)
    pixels = np.flatnonzero(out_y[:, None] | out_x[None, :])
    rows = None
    if pixels.size:
        rows = gpu.to_device((np.arange(n, dtype=np.int64)[:, None] * (oh * ow) + pixels).ravel())
    if len(_border_rows) >= _MAX_BORDER_ENTRIES:
        _border_rows.clear()
    _border_rows[key] = rows
    return rows


def _fix_zero_padding(z, rows, tap_sums, geometry):
    """Make the sums z (all rows, O) of the border ``rows`` those of zero padding, in place."""
    h, w, oh, ow, kh, kw, sh, sw, dh, dw, pt, pb, pl, pr = geometry
    o = z.shape[-1]
    _launch("conv_zero_pad_fix", rows.size * o,
            (z, rows, np.int64(rows.size), tap_sums, np.int32(o),
             *(np.int32(v) for v in (oh, ow, h, w, kh, kw, sh, sw, dh, dw, pt, pl))))


def _gemm(cols, counts, w_rows, k, groups):
    """int32 sums (rows, O) of the GEMM rows of every group with its output channels' weights."""
    if groups == 1:
        return gpu.xnor_gemm(cols[0], w_rows, k, padded=True, counts=counts)
    cupy = gpu._cupy()
    o = w_rows.shape[0]
    og = o // groups
    z = cupy.empty((cols.shape[1], o), dtype=np.int32)
    for g in range(groups):
        z[:, g * og:(g + 1) * og] = gpu.xnor_gemm(cols[g], w_rows[g * og:(g + 1) * og], k, padded=True)
    return z


def _implicit_available():
    """Whether this device runs ``kernels/conv_mma.cu`` at all: bit tensor cores, not forced off."""
    return _IMPLICIT and gpu._kernel_choice() != "popc"


def describe():
    """What runs a convolution on the current device (for :func:`xnorcore.show_config`)."""
    if _implicit_available():
        return "implicit GEMM on the bit tensor cores (kernels/conv_mma.cu) for groups=1, GEMM rows otherwise"
    return f"GEMM rows on the {gpu._kernel_choice()} kernel"


#: The most shared memory that the implicit GEMM's table of border classes may take
#: (48 KiB, 4 bytes per class and column: 5 x 5 kernels with "same" padding take 12.5 KiB);
#: more goes the explicit path.
_MAX_TABLE_BYTES = 48 * 1024


def _classes_of(geometry, pad_value):
    """The number of border classes of the implicit GEMM's table: one without zero padding."""
    if pad_value != 0:
        return 1
    y_sets, x_sets = _border_classes(geometry)[2:]
    return y_sets.shape[0] * x_sets.shape[0]


def _implicit(x_words, groups, geometry, cg, o, pad_value):
    """Whether the convolution runs as one launch of ``kernels/conv_mma.cu``: one group,
    bit tensor cores, images under 2**29 rows and columns, sums whose terms fit in
    int32 (3 k < 2**31) and a table of border classes that fits in shared memory;
    other convolutions take the explicit path."""
    h, w, kh, kw = geometry[0], geometry[1], geometry[4], geometry[5]
    if not (groups == 1 and max(h, w) < 2**29 and 3 * kh * kw * cg < 2**31 and _implicit_available()):
        return False
    return _classes_of(geometry, pad_value) * _block_columns(o) * 4 <= _MAX_TABLE_BYTES


def _block_columns(o):
    """Output channels per block of the implicit GEMM: one warp's 64, or two warps' for more."""
    return 64 if o <= 64 else 128


def _mma_constant(name):
    """``CONV_MMA_<name>`` of ``kernels/conv_mma.cu``."""
    return gpu._constant("conv_mma", f"CONV_MMA_{name}")


def _keep_plan(key, plan):
    if len(_implicit_plans) >= _MAX_PLANS:
        _implicit_plans.clear()
    _implicit_plans[key] = plan
    return plan


def _halo_shape(n, oh, ow, kh, kw, sw, dw, cw, row_words, bn):
    """((lines, wp, rwp, scratch), shared memory in bytes before the table) of the halo kernel
    in ``kernels/conv_mma.cu`` for this layer, or None where its two buffers of input lines
    and its weights would take more than ``_HALO_MAX_BYTES`` or the layer has 2**30 output
    pixels or more: the output rows a tile of pixels may span, the pixels of a line, the
    weight rows' pitch in words (4 mod 8) and the words of the epilogue's scratch (row terms
    and staging tiles of int32 sums)."""
    bm = _mma_constant("BM")
    if n * oh * ow >= 2**30:  # its pixel indices are 32-bit
        return None
    lines = min((bm - 1) // ow + 2, n * oh)
    wp = (ow - 1) * sw + (kw - 1) * dw + 1
    rwp = -(-row_words // 4) * 4
    rwp += 4 if rwp % 8 == 0 else 0
    halo_words = -(-lines * kh * wp * cw // 2) * 2
    staging = _mma_constant("WARPS_M") * (bn // 64) * 16 * _mma_constant("STAGE_LD")  # ints
    scratch = -(-(bm + staging) * 4 // 8)
    if (bn * rwp + 2 * halo_words) * 8 > _HALO_MAX_BYTES:
        return None
    return (lines, wp, rwp, scratch), (scratch + bn * rwp + 2 * halo_words) * 8 + (rwp + 4 * bm) * 4


def _resident_blocks(smem, warps_n):
    """How many blocks of the halo kernel a multiprocessor holds at once: its registers
    (CONV_MMA_BLOCKS of one warp along O) and its 228 KiB of shared memory."""
    by_smem = (228 * 1024) // (smem + 1024)  # a block also takes 1 KiB reserved
    return max(1, min(_mma_constant("BLOCKS") // warps_n, by_smem))


def _implicit_plan(x_shape, o, row_words, geometry, cg, pad_value, pack):
    """(launch, its arrays after the output (window taps for the gather kernel, none for the
    halo kernel), then the four items of :func:`_border_classes`) of the implicit-GEMM kernel
    for this shape, cached per device."""
    cupy = gpu._cupy()
    key = (cupy.cuda.runtime.getDevice(), x_shape, o, row_words, geometry, cg, pad_value, pack, _HALO, _HALO_BLOCKS)
    plan = _implicit_plans.get(key)
    if plan is not None:
        return plan
    h, w, oh, ow, kh, kw, sh, sw, dh, dw, pt, pb, pl, pr = geometry
    n, cw = x_shape[0], x_shape[4]
    window = kh * kw * cw
    if oh * ow >= 2**31 or h * w * cw >= 2**31 or window >= 2**31 - 8:
        raise ValueError(f"the GPU convolution takes images of at most 2**31 - 1 output pixels and words, got "
                         f"{oh} x {ow} output pixels, {h} x {w} x {cw} words and {window} words per window")
    bn = _block_columns(o)
    warps_n = bn // 64

    bm = _mma_constant("BM")
    classes = _border_classes(geometry)
    x_classes = classes[3].shape[0]
    n_classes = _classes_of(geometry, pad_value)
    m = n * oh * ow
    scalars = (m, o, row_words, kh * kw * cg, h, w, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl, cw, pad_value, x_classes,
               n_classes)
    grid, block = (-(-m // bm), -(-o // bn)), (_mma_constant("WARPS_M") * warps_n * 32,)
    # The halo kernel for int32 sums where it fits; the fused layer measured as fast on the gather kernel.
    halo = _halo_shape(n, oh, ow, kh, kw, sw, dw, cw, row_words, bn) if _HALO and not pack else None
    if halo is not None:
        smem = halo[1] + n_classes * bn * 4
        # The kernel's shared memory limit is set once, for the largest layer it may take: lines and
        # weights, the scratch and the small arrays (under 64 KiB), the table.
        function = gpu._function("conv_mma", f"conv_halo_n{warps_n}",
                                 _HALO_MAX_BYTES + 64 * 1024 + _MAX_TABLE_BYTES)
        # Persistent blocks: as many as the device holds at once, each taking every so many tiles.
        blocks = _resident_blocks(smem, warps_n) * gpu._device()[1] if _HALO_BLOCKS is None else _HALO_BLOCKS
        grid = (min(grid[0], blocks), grid[1])
        launch = gpu._GemmLaunch(function, grid, block, smem, "conv",
                                 tuple(v & (2**64 - 1) for v in scalars + halo[0]), n_arrays=7)
        return _keep_plan(key, (launch, ()) + classes)
    # Stages of 8 words (two mma steps), but of 4 for a fused layer of fewer than 64 words
    # a window: the faster on the ResNet-18 layers (benchmarks/RESULTS.md).
    kstep = 4 if pack and window < 64 else 8
    # stages, rows' origins, coordinates and classes, the block's columns of the table
    base = _mma_constant("STAGES") * (bm + bn) * kstep * 8 + bm * 20
    smem = base + n_classes * bn * 4
    # The kernel's shared memory limit is set once, for the largest table any layer may have.
    function = gpu._function("conv_mma", f"conv_mma_k{kstep}_n{warps_n}" + ("_pack" if pack else ""),
                             base + _MAX_TABLE_BYTES)
    launch = gpu._GemmLaunch(function, grid, block, smem, "conv", tuple(v & (2**64 - 1) for v in scalars), n_arrays=8)
    # Window word q is channel word q % cw of tap q // cw, at (row i * dh, column j * dw) of the window.
    q = np.arange(-(-row_words // kstep) * kstep)
    i, j = np.divmod(q // cw, kw)
    taps = np.stack([i * dh, j * dw, (i * dh * w + j * dw) * cw + q % cw, q % cw], axis=1)
    taps[q >= window] = (gpu._constant("conv_mma", "CONV_MMA_PAST"), 0, 0, -1)
    if np.abs(taps).max() >= 2**31:
        raise ValueError(f"the GPU convolution takes windows spanning fewer than 2**31 words, got w.shape "
                         f"{kh} x {kw} with dilation {(dh, dw)} over {w} x {cw} words a row")
    return _keep_plan(key, (launch, (gpu.to_device(taps.astype(np.int32)),)) + classes)


def _taps_outside(n_out, size, k, stride, dilation, pad):
    """(sets, index): the distinct sets of kernel taps along one axis that fall outside
    the image, as rows of a bool (sets, k) array, the empty set first, and the set of
    each output position."""
    pos = np.arange(n_out)[:, None] * stride - pad + np.arange(k)[None, :] * dilation
    outside = np.vstack([np.zeros((1, k), dtype=bool), (pos < 0) | (pos >= size)])
    sets, index = np.unique(outside, axis=0, return_inverse=True)  # rows sort with False first
    return sets, index.reshape(-1)[1:].astype(np.int32)


def _border_classes(geometry):
    """(row classes (OH,), column classes (OW,) on the device, the sets of kernel rows and of
    kernel columns in the padding (bool, host)): an output pixel's border class is
    row class * (number of column sets) + column class, 0 inside the image."""
    def make():
        h, w, oh, ow, kh, kw, sh, sw, dh, dw, pt, pb, pl, pr = geometry
        y_sets, y_class = _taps_outside(oh, h, kh, sh, dh, pt)
        x_sets, x_class = _taps_outside(ow, w, kw, sw, dw, pl)
        return gpu.to_device(y_class), gpu.to_device(x_class), y_sets, x_sets

    return _cached((gpu._cupy().cuda.runtime.getDevice(), geometry), make)


def _border_fix(tap_sums, geometry, prepared):
    """(classes, O) int32 on the device: per border class and output channel, the sum of
    sign(w) over the taps in the zero padding (``tap_sums``: (KH * KW, O) per tap, device)."""
    cupy = gpu._cupy()
    key = ("gpu border", cupy.cuda.runtime.getDevice(), geometry)
    if prepared is not None and key in prepared:
        return prepared[key]
    outside = _taps_in_padding(geometry)
    fix = (outside[:, :, None] * tap_sums[None, :, :]).sum(axis=1, dtype=np.int32)
    if prepared is not None:
        if len(prepared) >= _MAX_CONSTANTS:
            prepared.clear()
        prepared[key] = fix
    return fix


def _taps_in_padding(geometry):
    """int32 (classes, KH * KW) on the device: 1 where a tap of a border class's windows is in the padding."""
    def make():
        y_sets, x_sets = _border_classes(geometry)[2:]
        outside = y_sets[:, None, :, None] | x_sets[None, :, None, :]  # (row sets, column sets, KH, KW)
        return gpu.to_device(outside.reshape(y_sets.shape[0] * x_sets.shape[0], -1).astype(np.int32))

    return _cached(("taps", gpu._cupy().cuda.runtime.getDevice(), geometry), make)


def _class_table(weights, geometry, pad_value, thresholds, prepared):
    """The implicit GEMM's epilogue table (conv_class_table in ``kernels/conv_mma.cu``) on the
    device: per border class and output channel, int32 terms, or with ``thresholds``
    (direction, threshold, key) the fused layer's bounds, then its flips (a bit per column).
    Kept in ``prepared`` where given (per content of the thresholds: device thresholds, whose
    key is None, make it each call)."""
    cupy = gpu._cupy()
    w_rows, w_counts, tap_sums = weights[:3]
    o = w_rows.shape[0]
    key = ("gpu class table", cupy.cuda.runtime.getDevice(), geometry, pad_value,
           None if thresholds is None else thresholds[2])
    keep = prepared is not None and (thresholds is None or thresholds[2] is not None)
    if keep and key in prepared:
        return prepared[key]
    classes = _classes_of(geometry, pad_value)
    bn = _block_columns(o)
    o_pad = -(-o // bn) * bn
    size = classes * o_pad + (0 if thresholds is None else o_pad // 32)  # int32 entries, then 64-bit words
    table = gpu._alloc(lambda: cupy.empty(size, dtype=np.int32), 4 * size, "hold the convolution's table")
    fix = _border_fix(tap_sums, geometry, prepared) if pad_value == 0 else None
    # without thresholds the kernel reads neither: any int array stands in
    direction, threshold = (w_counts, w_counts) if thresholds is None else thresholds[:2]
    gpu._function("conv_mma", "conv_class_table")(
        gpu._grid_1d(classes * o_pad, 256), (256,),
        (w_counts, w_counts if fix is None else fix, direction, threshold, table, np.int64(o), np.int64(o_pad),
         np.int64(classes), np.int32(fix is not None), np.int32(thresholds is not None)))
    if keep:
        if len(prepared) >= _MAX_CONSTANTS:
            prepared.clear()
        prepared[key] = table
    return table


def _implicit_conv(x_words, weights, geometry, cg, pad_value, thresholds=None, prepared=None):
    """int32 sums (N * OH * OW, O), or with ``thresholds`` (direction, threshold, key of
    :func:`_on_device`) the fused layer's words (N * OH * OW, ceil(O / 64)): one launch
    of the implicit GEMM."""
    cupy = gpu._cupy()
    w_rows, pad = weights[0], weights[3]
    oh, ow = geometry[2], geometry[3]
    m, o = x_words.shape[0] * oh * ow, w_rows.shape[0]
    if m == 0 or o == 0:
        return cupy.zeros((m, o) if thresholds is None else (m, n_words(o)), dtype=np.int32 if thresholds is None else np.uint64)
    x = cupy.ascontiguousarray(x_words)
    launch, arrays, y_class, x_class = _implicit_plan(
        x.shape, o, w_rows.shape[1], geometry, cg, pad_value, thresholds is not None)[:4]
    table = _class_table(weights, geometry, pad_value, thresholds, prepared)
    if thresholds is None:
        out = gpu._alloc(lambda: cupy.empty((m, o), dtype=np.int32), 4 * m * o, "hold the convolution's sums")
    else:
        out = gpu._alloc(lambda: cupy.empty((m, n_words(o)), dtype=np.uint64), 8 * m * n_words(o),
                         "hold the layer's words")
    launch(x, w_rows, table, pad, out, *arrays, y_class, x_class)
    return out


def conv2d(x_words, w_words, geometry, groups, cg, pad_value, n_threads=None, prepared=None):
    h, w, oh, ow, kh, kw = geometry[:6]
    n = x_words.shape[0]
    weights = _weights(w_words, cg, pad_value, prepared)
    if _implicit(x_words, groups, geometry, cg, weights[0].shape[0], pad_value):
        return _implicit_conv(x_words, weights, geometry, cg, pad_value, prepared=prepared).reshape(
            n, oh, ow, weights[0].shape[0])
    w_rows, w_counts, tap_sums, pad = weights[:4]
    cols, counts = _im2col(x_words, pad, geometry, groups, w_counts)
    z = _gemm(cols, counts, w_rows, kh * kw * cg, groups)
    rows = _borders(n, geometry) if pad_value == 0 else None
    if rows is not None:
        _fix_zero_padding(z, rows, tap_sums, geometry)
    return z.reshape(n, oh, ow, w_rows.shape[0])


def conv2d_threshold_pack(x_words, w_words, geometry, groups, cg, pad_value, direction, threshold,
                          pool=False, n_threads=None, prepared=None):
    cupy = gpu._cupy()
    h, w, oh, ow, kh, kw, sh, sw, dh, dw, pt, pb, pl, pr = geometry
    n = x_words.shape[0]
    direction, threshold, constants_key = _on_device(direction, threshold)
    weights = _weights(w_words, cg, pad_value, prepared)
    w_rows, w_counts, tap_sums, pad = weights[:4]
    k = kh * kw * cg
    if _implicit(x_words, groups, geometry, cg, w_rows.shape[0], pad_value):
        words = _implicit_conv(x_words, weights, geometry, cg, pad_value, (direction, threshold, constants_key),
                               prepared)
        return _pool(words.reshape(n, oh, ow, words.shape[-1]), pool)
    cols, counts = _im2col(x_words, pad, geometry, groups, w_counts)
    rows = _borders(n, geometry) if pad_value == 0 else None
    if groups == 1:
        # One fused kernel over every row; rows reaching the zero padding are redone as sums.
        # Kept with the weights per content of the thresholds (device arrays: made each call).
        key = ("gpu bounds", constants_key, pad_value)
        keep = prepared is not None and constants_key is not None
        bounds = prepared.get(key) if keep else None
        if bounds is None:
            bounds = gpu.column_bounds(w_counts, direction, threshold)
            if keep:
                if len(prepared) >= _MAX_CONSTANTS:
                    prepared.clear()
                prepared[key] = bounds
        words = gpu.xnor_gemm_threshold_pack(cols[0], w_rows, k, direction, threshold, padded=True,
                                             counts=counts, bounds=bounds)
        if rows is not None:
            z = gpu.xnor_gemm(cupy.take(cols[0], rows, axis=0), w_rows, k, padded=True)
            _launch("conv_border_threshold_pack", rows.size * words.shape[1],
                    (z, rows, np.int64(rows.size), tap_sums, direction, threshold, words,
                     np.int32(z.shape[1]), np.int32(words.shape[1]),
                     *(np.int32(v) for v in (oh, ow, h, w, kh, kw, sh, sw, dh, dw, pt, pl))))
    else:
        z = _gemm(cols, counts, w_rows, k, groups)
        if rows is not None:
            _fix_zero_padding(z, rows, tap_sums, geometry)
        words = _common.threshold_pack(z, direction, threshold)
    return _pool(words.reshape(n, oh, ow, words.shape[-1]), pool)


def _pool(words, pool):
    """The 2x2 max-pool with stride 2 of the layer's words (N, OH, OW, words), where ``pool``."""
    if not pool:
        return words
    n, oh, ow, width = words.shape
    out = gpu._cupy().empty((n, oh // 2, ow // 2, width), dtype=np.uint64)
    if out.size:
        _launch("pool_words", out.size, (words, out, np.int64(n), np.int32(oh), np.int32(ow), np.int32(width)))
    return out


def real_conv2d(x, w, geometry):
    """float32 NHWC convolution of x (N, H, W, C) with HWIO w, zero padded: one product per tap, summed."""
    cupy = gpu._cupy()
    h, w_, oh, ow, kh, kw, sh, sw, dh, dw, pt, pb, pl, pr = geometry
    x = cupy.asarray(x, dtype=np.float32)
    w = cupy.asarray(w, dtype=np.float32)
    n, c, o = x.shape[0], x.shape[3], w.shape[3]
    padded = cupy.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0))) if pt or pb or pl or pr else x
    out = cupy.zeros((n * oh * ow, o), dtype=np.float32)
    for i in range(kh):
        for j in range(kw):
            tap = padded[:, i * dh: i * dh + (oh - 1) * sh + 1: sh, j * dw: j * dw + (ow - 1) * sw + 1: sw]
            out += cupy.ascontiguousarray(tap).reshape(-1, c) @ w[i, j]
    return out.reshape(n, oh, ow, o)
