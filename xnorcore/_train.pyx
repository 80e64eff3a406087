# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""CPU kernels of the training loop (private): the Adam update and the 2x2
max-pool of float32 NHWC activations, each one pass over memory where numpy
needs several.  :mod:`xnorcore.nn` calls them on numpy arrays (the cupy path
keeps its array expressions); the functions here trust shapes and dtypes.
"""

from cython.parallel cimport prange
from libc.math cimport sqrtf
from libc.stdint cimport int64_t, uint8_t


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
