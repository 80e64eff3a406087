# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""CPU kernels of the training loop (private): the signs of float32 activations,
the Adam update, the 2x2 max-pool of float32 NHWC activations and the patch matrix of a convolution
(im2col) with its adjoint, each one pass over memory where numpy needs
several; and the bfloat16 products of the backward pass (``csrc/bf16_gemm.h``).
:mod:`xnorcore.nn` calls them on numpy arrays (the cupy path keeps
its array expressions); the functions here trust shapes and dtypes.
"""

from cython.parallel cimport prange
from libc.math cimport sqrtf
from libc.stdint cimport int64_t, uint8_t
from libc.string cimport memcpy, memset


cdef extern from "bf16_gemm.h" nogil:
    int xnor_bf16_supported()
    int xnor_bf16_gemm(int64_t m, int64_t n, int64_t k, const float *a, int64_t ars, int64_t acs,
                       const float *b, int64_t brs, int64_t bcs, float *c, int64_t ldc, int n_threads)


def bf16_supported():
    """Whether this CPU runs :func:`bf16_matmul` (AVX512-BF16, its state saved by the OS)."""
    return bool(xnor_bf16_supported())


def bf16_matmul(const float[:, :] a, const float[:, :] b, float[:, ::1] out, int n_threads):
    """``out = a @ b`` in float32 from operands rounded to bfloat16 (``csrc/bf16_gemm.h``).

    ``a`` and ``b`` may be any strided views (a transpose costs no copy).  Returns 0,
    -1 where the CPU lacks AVX512-BF16, -2 where a buffer could not be allocated.
    """
    cdef int64_t m = a.shape[0], k = a.shape[1], n = b.shape[1]
    cdef int status
    cdef const float *pa = &a[0, 0] if m > 0 and k > 0 else NULL
    cdef const float *pb = &b[0, 0] if k > 0 and n > 0 else NULL
    with nogil:
        status = xnor_bf16_gemm(m, n, k, pa, a.strides[0] // 4, a.strides[1] // 4,
                                pb, b.strides[0] // 4, b.strides[1] // 4, &out[0, 0] if m > 0 and n > 0 else NULL,
                                out.strides[0] // 4, n_threads)
    return status


def signs(const float[::1] x, float[::1] out, int n_threads):
    """``out = +1.0`` where ``x >= 0`` (-0.0 included), ``-1.0`` elsewhere (NaN included):
    :func:`xnorcore.ops._signs` of float32 in one pass instead of four."""
    cdef int64_t i, n = x.shape[0]
    for i in prange(n, nogil=True, schedule="static", num_threads=n_threads):
        out[i] = 1.0 if x[i] >= 0 else -1.0


def adam_update(float[::1] p, const float[::1] g, float[::1] m, float[::1] v, float b1, float c1,
                float b2, float c2, float eps, float step, bint clip, int n_threads):
    """One Adam step in place, as :meth:`xnorcore.nn.Adam.step` spells it in array operations.

    ``m = b1 m + c1 g``, ``v = b2 v + c2 g^2`` (``c1 = 1 - b1`` and ``c2 = 1 - b2``
    rounded from double, as the array path rounds them),
    ``p -= step m / (sqrt(v) + eps)``, then ``p`` clipped to [-1, 1] where
    ``clip``.
    """
    cdef int64_t i, n = p.shape[0]
    cdef float gi, mi, vi, pi
    for i in prange(n, nogil=True, schedule="static", num_threads=n_threads):
        gi = g[i]
        mi = b1 * m[i] + c1 * gi
        vi = b2 * v[i] + c2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        pi = p[i] - step * (mi / (sqrtf(vi) + eps))
        if clip:
            # NaN stays NaN, as numpy's clip leaves it: the loss check reports it.
            if pi > 1:
                pi = 1
            elif pi < -1:
                pi = -1
        p[i] = pi


def maxpool_forward(const float[:, :, :, ::1] x, int size, float[:, :, :, ::1] out,
                    uint8_t[:, :, :, ::1] tap, int n_threads):
    """``size x size`` max-pool with stride ``size``; ``tap`` gets the row-major index of the first largest input.

    A NaN input is the window's largest (numpy's maximum propagates NaN too).
    """
    cdef int64_t n = out.shape[0], oh = out.shape[1], ow = out.shape[2], c = out.shape[3]
    cdef int64_t row, b, i, j, k, di, dj
    cdef const float *src
    cdef float *best
    cdef uint8_t *at
    cdef float value, current
    cdef uint8_t here, where
    cdef bint take
    for row in prange(n * oh, nogil=True, schedule="static", num_threads=n_threads):
        b = row // oh
        i = row % oh
        for j in range(ow):
            best = &out[b, i, j, 0]
            at = &tap[b, i, j, 0]
            src = &x[b, i * size, j * size, 0]
            for k in range(c):
                best[k] = src[k]
                at[k] = 0
            # Channels innermost: each tap is one contiguous run of C values.
            for di in range(size):
                for dj in range(size):
                    if di == 0 and dj == 0:
                        continue
                    here = <uint8_t>(di * size + dj)
                    src = &x[b, i * size + di, j * size + dj, 0]
                    for k in range(c):
                        # Loads and stores unconditional, so that the compiler
                        # selects instead of branching (random data mispredict).
                        value = src[k]
                        current = best[k]
                        where = at[k]
                        take = (value > current) | ((value != value) & (current == current))
                        best[k] = value if take else current
                        at[k] = here if take else where


def maxpool_backward(const float[:, :, :, ::1] dy, const uint8_t[:, :, :, ::1] tap, int size,
                     float[:, :, :, ::1] dx, int n_threads):
    """The gradient of :func:`maxpool_forward`: each window's ``dy`` to its ``tap``, 0 elsewhere.

    ``dx`` is written whole, the rows and columns that fill no window included.
    """
    cdef int64_t n = dx.shape[0], h = dx.shape[1], w = dx.shape[2], c = dx.shape[3]
    cdef int64_t oh = dy.shape[1], ow = dy.shape[2]
    cdef int64_t row, b, y, xx, k, i, j
    cdef float *dst
    cdef const float *src
    cdef const uint8_t *at
    cdef uint8_t here
    cdef float value
    for row in prange(n * h, nogil=True, schedule="static", num_threads=n_threads):
        b = row // h
        y = row % h
        i = y // size
        for xx in range(w):
            j = xx // size
            dst = &dx[b, y, xx, 0]
            if i >= oh or j >= ow:
                for k in range(c):
                    dst[k] = 0
                continue
            here = <uint8_t>((y - i * size) * size + (xx - j * size))
            src = &dy[b, i, j, 0]
            at = &tap[b, i, j, 0]
            for k in range(c):
                value = src[k]
                dst[k] = value if at[k] == here else 0


cdef inline void copy_floats(float *dst, const float *src, int64_t n) noexcept nogil:
    # A loop for the short runs of inputs with few channels (one call of memcpy
    # costs more than copying three floats).
    cdef int64_t k
    if n >= 16:
        memcpy(dst, src, n * sizeof(float))
    else:
        for k in range(n):
            dst[k] = src[k]


def im2col(const float[:, :, :, ::1] x, int kh, int kw, int stride, int dilation, int pad_top,
           int pad_left, float[:, ::1] cols, int oh, int ow, int n_threads):
    """The patches of NHWC ``x`` with zero padding into ``cols`` (``(N * OH * OW, KH * KW * C)``).

    Row ``(b * OH + y) * OW + x`` holds, at column ``(i * KW + j) * C + c``, channel ``c``
    of input pixel ``(y * stride - pad_top + i * dilation, x * stride - pad_left +
    j * dilation)``, or 0 where that pixel lies in the padding.  Without dilation a kernel
    row inside the image is one copy of ``KW * C`` floats.
    """
    cdef int64_t n = x.shape[0], h = x.shape[1], w = x.shape[2], c = x.shape[3]
    cdef int64_t row, b, y, xx, i, j, iy, ix
    cdef float *dst
    cdef size_t run = kw * c * sizeof(float)
    for row in prange(n * oh, nogil=True, schedule="static", num_threads=n_threads):
        b = row // oh
        y = row % oh
        for xx in range(ow):
            dst = &cols[row * ow + xx, 0]
            for i in range(kh):
                iy = y * stride - pad_top + i * dilation
                ix = xx * stride - pad_left
                if iy < 0 or iy >= h:
                    memset(dst, 0, run)
                elif dilation == 1 and ix >= 0 and ix + kw <= w:
                    copy_floats(dst, &x[b, iy, ix, 0], kw * c)
                else:
                    for j in range(kw):
                        if ix + j * dilation < 0 or ix + j * dilation >= w:
                            memset(dst + j * c, 0, c * sizeof(float))
                        else:
                            copy_floats(dst + j * c, &x[b, iy, ix + j * dilation, 0], c)
                dst = dst + kw * c


def col2im(const float[:, ::1] cols, int kh, int kw, int stride, int dilation, int pad_top,
           int pad_left, float[:, :, :, ::1] dx, int oh, int ow, int n_threads):
    """The adjoint of :func:`im2col`: each entry of ``cols`` added onto the input pixel it came from.

    ``dx`` (NHWC) is written whole; entries that came from the padding are dropped.
    Threads split the images, so no two of them add onto the same pixel.
    """
    cdef int64_t n = dx.shape[0], h = dx.shape[1], w = dx.shape[2], c = dx.shape[3]
    cdef int64_t b, y, xx, i, j, k, iy, ix
    cdef const float *src
    cdef float *dst
    for b in prange(n, nogil=True, schedule="static", num_threads=n_threads):
        memset(&dx[b, 0, 0, 0], 0, h * w * c * sizeof(float))
        for y in range(oh):
            for xx in range(ow):
                src = &cols[(b * oh + y) * ow + xx, 0]
                for i in range(kh):
                    iy = y * stride - pad_top + i * dilation
                    if iy < 0 or iy >= h:
                        continue
                    for j in range(kw):
                        ix = xx * stride - pad_left + j * dilation
                        if ix < 0 or ix >= w:
                            continue
                        dst = &dx[b, iy, ix, 0]
                        for k in range(c):
                            dst[k] += src[(i * kw + j) * c + k]
