# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""CPU kernels: sign packing, the XNOR-popcount GEMM and the real layers (private).

The C kernels live in ``csrc/`` (one file per instruction set, one dispatch
table in ``csrc/dispatch.h``) and read and write the bit layout of
``kernels/xnor_layout.h``; this module runs them over OpenMP threads and holds
the variant (the row of the dispatch table) in use.  Validation is the caller's job
(``xnorcore.ops``); the functions here trust shapes and dtypes.
"""

import numpy as np

cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc
cimport openmp

cnp.import_array()


cdef extern from "dispatch.h" nogil:
    enum:
        XNOR_I8
        XNOR_I16
        XNOR_I32
        XNOR_I64
        XNOR_F32
        XNOR_F64
        XNOR_N_VARIANTS
        XNOR_STRIP_PAD
        XNOR_IN_BLOCK
        XNOR_OUT_WIDTH

    ctypedef void (*xnor_signed_sums_fn)(const uint64_t *words, int64_t n_words, int64_t rows,
                                         int64_t k, const double *w, double *out) noexcept nogil
    ctypedef void (*xnor_input_sums_fn)(const int32_t *idx, const float *val, const int64_t *start,
                                        int64_t rows, const float *w, int64_t f, int64_t n,
                                        const float *init, float *z, int64_t z_stride) noexcept nogil

    ctypedef struct xnor_kernels:
        const char *name
        int mr
        int nr
        int (*pack_row)(int dtype, const void *x, int64_t length, uint64_t *out) noexcept nogil
        int (*pack_cols_band)(int dtype, const void *x, int64_t length, int64_t rows,
                              uint64_t *out, int64_t kw, int64_t c0, int64_t c1,
                              uint64_t *buffer) noexcept nogil
        xnor_input_sums_fn input_sums
        xnor_signed_sums_fn signed_sums
        void (*threshold_pack)(const int32_t *z, const int8_t *direction,
                               const int32_t *threshold, int64_t n, uint64_t *out) noexcept nogil
        int conv_split

    const xnor_kernels xnor_variants[]
    void xnor_split_words(const uint64_t *words, int64_t n, uint64_t *out)
    int xnor_cpu_has(int v)
    void xnor_pack_panel(const uint64_t *b, int64_t n, int64_t n_words, int nr, int64_t p,
                         uint64_t *panels)
    void xnor_gemm_block(const xnor_kernels *kern, const uint64_t *a, int64_t n_words,
                         const uint64_t *panels, int32_t *c, int64_t n, int64_t k,
                         int64_t i0, int64_t i1, int64_t p0, int64_t p1)


#: Variant names, from the most portable to the fastest.
VARIANTS = tuple(xnor_variants[v].name.decode() for v in range(XNOR_N_VARIANTS))

cdef const xnor_kernels *_active = &xnor_variants[0]
cdef int _active_index = 0
# Variants that the tests pretend this CPU lacks, to exercise the error path.
_hidden = frozenset()

_DTYPE_CODES = {
    np.dtype(np.int8): XNOR_I8,
    np.dtype(np.int16): XNOR_I16,
    np.dtype(np.int32): XNOR_I32,
    np.dtype(np.int64): XNOR_I64,
    np.dtype(np.float32): XNOR_F32,
    np.dtype(np.float64): XNOR_F64,
}


def available_variants():
    """Names of the popcount variants that this CPU and OS can run."""
    return [
        VARIANTS[v] for v in range(XNOR_N_VARIANTS)
        if xnor_cpu_has(v) and VARIANTS[v] not in _hidden
    ]


def best_variant():
    """Name of the fastest variant that this CPU can run."""
    names = available_variants()
    return names[len(names) - 1]


def get_variant():
    """Name of the variant in use."""
    return VARIANTS[_active_index]


def set_variant(name):
    """Use the popcount variant ``name`` for every later call.

    Raises ValueError for an unknown name and RuntimeError for a variant that
    this CPU (or OS) cannot run.
    """
    global _active, _active_index
    if name not in VARIANTS:
        raise ValueError(f"popcount variant must be one of {VARIANTS}, got {name!r}")
    cdef int v = VARIANTS.index(name)
    if name not in available_variants():
        raise RuntimeError(
            f"popcount variant {name!r} is not supported by this CPU; "
            f"available: {', '.join(available_variants())}"
        )
    _active = &xnor_variants[v]
    _active_index = v


def _hide_variants(names):
    """Pretend that this CPU lacks the variants ``names`` (tests only)."""
    global _hidden
    _hidden = frozenset(names)


def max_threads():
    """OpenMP's current thread limit (OMP_NUM_THREADS, threadpoolctl)."""
    return openmp.omp_get_max_threads()


cdef inline int _threads(n_threads):
    if n_threads is None:
        return openmp.omp_get_max_threads()
    return max(1, <int>n_threads)


def pack_rows(cnp.ndarray x not None, n_threads=None):
    """Pack each row of a C-contiguous 2-D array: ``(words (R, W), has_nan)``."""
    cdef int dtype = _DTYPE_CODES[x.dtype]
    cdef int64_t rows = x.shape[0], length = x.shape[1]
    cdef int64_t n_words = (length + 63) // 64
    words = np.empty((rows, n_words), dtype=np.uint64)
    if rows == 0 or n_words == 0:
        return words, False
    cdef uint64_t[:, ::1] out = words
    cdef const char *src = <const char *>cnp.PyArray_DATA(x)
    cdef int64_t row_bytes = length * x.dtype.itemsize
    cdef const xnor_kernels *kern = _active
    cdef int nt = _threads(n_threads)
    cdef int64_t r
    cdef int nan = 0
    # Small inputs are not worth waking the thread team.
    if rows * length < 65536:
        nt = 1
    for r in prange(rows, nogil=True, schedule="static", num_threads=nt):
        nan += kern.pack_row(dtype, src + r * row_bytes, length, &out[r, 0])
    return words, nan != 0


def pack_cols(cnp.ndarray x not None, n_threads=None):
    """Pack each column of a C-contiguous 2-D array (L, R): ``(words (R, W), has_nan)``.

    Packing along the first axis directly avoids a transposed copy of ``x``.
    """
    cdef int dtype = _DTYPE_CODES[x.dtype]
    cdef int64_t length = x.shape[0], rows = x.shape[1]
    cdef int64_t n_words = (length + 63) // 64
    words = np.empty((rows, n_words), dtype=np.uint64)
    if rows == 0 or n_words == 0:
        return words, False
    cdef uint64_t *out = <uint64_t *>cnp.PyArray_DATA(<cnp.ndarray>words)
    cdef const void *src = cnp.PyArray_DATA(x)
    cdef const xnor_kernels *kern = _active
    cdef int nt = _threads(n_threads)
    if rows * length < 65536:
        nt = 1
    # An item is a band of 64 rows of x across all columns (one contiguous
    # sweep); only when there are too few bands for the threads are the
    # columns split as well.
    cdef int64_t chunks = 1
    if n_words < 4 * nt:
        chunks = min((rows + 4095) // 4096, (4 * nt + n_words - 1) // n_words)
    cdef int64_t cols_per = ((rows + chunks - 1) // chunks + 63) // 64 * 64
    chunks = (rows + cols_per - 1) // cols_per
    cdef size_t buffer_words = (cols_per // 64) * XNOR_STRIP_PAD
    cdef int64_t item, c0
    cdef int nan = 0
    cdef int failed = 0
    cdef uint64_t *buffer
    for item in prange(n_words * chunks, nogil=True, schedule="static", num_threads=nt):
        c0 = (item % chunks) * cols_per
        buffer = <uint64_t *>malloc(buffer_words * sizeof(uint64_t))
        if buffer == NULL:
            failed += 1
        else:
            nan += kern.pack_cols_band(dtype, src, length, rows, out, item // chunks,
                                       c0, min(c0 + cols_per, rows), buffer)
            free(buffer)
    if failed:
        raise MemoryError("pack_cols could not allocate its strip buffer")
    return words, nan != 0


def _check_words(a_words, b_words, int64_t k):
    # The kernels read W words per row of both operands: a mismatch would read
    # past the arrays, so it is checked even though ops never passes one.
    n_words = (k + 63) // 64
    if a_words.shape[1] != n_words or b_words.shape[1] != n_words:
        raise ValueError(
            f"a_words and b_words must both have ceil(k / 64) = {n_words} words per row, "
            f"got a_words.shape={tuple(a_words.shape)}, b_words.shape={tuple(b_words.shape)}, k={k}"
        )


def splits_words(int variant):
    """Whether dispatch-table row ``variant``'s conv tile reads split words (:func:`split_words`)."""
    return bool(xnor_variants[variant].conv_split)


def split_words(words, n_threads=None):
    """The split form of uint64 ``words`` along the last axis: twice the words.

    Word i of a row becomes words 2 i (the low nibble of each of its bytes) and
    2 i + 1 (the high nibble, shifted down): the conv operands of a variant
    whose tile counts nibbles without masks (``xnor_split_words`` in ``common.h``).
    """
    cdef cnp.ndarray arr = np.ascontiguousarray(words, dtype=np.uint64)
    cdef int nd = arr.ndim
    if nd < 1 or nd > 64:
        raise ValueError(f"words must have 1 to 64 dimensions, got {nd}")
    # The result made in C: this runs on every conv call of the variant.
    cdef cnp.npy_intp dims[64]
    cdef int d
    for d in range(nd):
        dims[d] = arr.shape[d]
    dims[nd - 1] *= 2
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(nd, dims, cnp.NPY_UINT64, 0)
    cdef int64_t n = arr.size, chunk = 16384, c0
    cdef const uint64_t *src = <const uint64_t *>cnp.PyArray_DATA(arr)
    cdef uint64_t *dst = <uint64_t *>cnp.PyArray_DATA(out)
    # Row after row, the split of the whole array is that of its flat words.
    if n < 65536:  # not worth waking the thread team
        with nogil:
            xnor_split_words(src, n, dst)
        return out
    cdef int nt = _threads(n_threads)
    for c0 in prange(0, n, chunk, nogil=True, schedule="static", num_threads=nt):
        xnor_split_words(src + c0, min(chunk, n - c0), dst + 2 * c0)
    return out


def _b_panels(const uint64_t[:, ::1] b, int nr, int nt):
    """B (N, W) copied into panels of nr columns, word by word (see xnor_pack_panel)."""
    cdef int64_t n = b.shape[0], n_words = b.shape[1]
    cdef int64_t n_panels = (n + nr - 1) // nr
    panels_arr = np.empty(n_panels * n_words * nr, dtype=np.uint64)
    cdef uint64_t[::1] panels = panels_arr
    cdef int64_t p
    for p in prange(n_panels, nogil=True, schedule="static", num_threads=nt):
        xnor_pack_panel(&b[0, 0], n, n_words, nr, p, &panels[0])
    return panels_arr


def xnor_gemm(a_words, b_words, int64_t k, n_threads=None):
    """``k - 2 popcount(a ^ b)`` for words (M, W) and (N, W): int32 (M, N)."""
    cdef const uint64_t[:, ::1] a = a_words
    cdef const uint64_t[:, ::1] b = b_words
    cdef int64_t m = a.shape[0], n = b.shape[0], n_words = a.shape[1]
    _check_words(a_words, b_words, k)
    result = np.empty((m, n), dtype=np.int32)
    if m == 0 or n == 0:
        return result
    if n_words == 0:
        result.fill(k)
        return result
    cdef int32_t[:, ::1] c = result
    cdef const xnor_kernels *kern = _active
    cdef int mr = kern.mr, nr = kern.nr
    cdef int64_t n_panels = (n + nr - 1) // nr
    cdef int nt = _threads(n_threads)
    if m * n * n_words < 200000:
        nt = 1
    cdef uint64_t[::1] panels = _b_panels(b, nr, nt)

    # Work items: blocks of up to 256 rows x 8 panels, shrunk for small
    # products so that every thread gets several items.
    cdef int64_t rows_per = 256, panels_per = 8
    while rows_per > mr and ((m + rows_per - 1) // rows_per) * ((n_panels + panels_per - 1) // panels_per) < 4 * nt:
        if panels_per > 1:
            panels_per //= 2
        else:
            rows_per //= 2
    rows_per = max(mr, (rows_per // mr) * mr)
    cdef int64_t row_blocks = (m + rows_per - 1) // rows_per
    cdef int64_t col_blocks = (n_panels + panels_per - 1) // panels_per
    cdef int64_t item, i0, p0
    for item in prange(row_blocks * col_blocks, nogil=True, schedule="static", num_threads=nt):
        i0 = (item // col_blocks) * rows_per
        p0 = (item % col_blocks) * panels_per
        xnor_gemm_block(kern, &a[0, 0], n_words, &panels[0], &c[0, 0], n, k,
                        i0, min(i0 + rows_per, m), p0, min(p0 + panels_per, n_panels))
    return result



ctypedef fused _unit_sum:
    int32_t
    float


cdef inline int _threshold_row(const xnor_kernels *kern, int dtype, const _unit_sum *z,
                               const int8_t *direction, const _unit_sum *threshold, int64_t n,
                               _unit_sum *buffer, uint64_t *out) noexcept nogil:
    # z, direction, threshold: input (n,); buffer: scratch (n,) for float sums;
    # out: output words.  Int32 sums go through the table's fused kernel.
    # Returns nonzero where a float value to pack is NaN.
    cdef int64_t j
    if _unit_sum is int32_t:
        kern.threshold_pack(z, direction, threshold, n, out)
        return 0
    for j in range(n):
        buffer[j] = direction[j] * z[j] - threshold[j]
    return kern.pack_row(dtype, buffer, n, out)


def threshold_pack(const _unit_sum[:, ::1] z, const int8_t[::1] direction,
                   const _unit_sum[::1] threshold, n_threads=None):
    """Signs of ``direction * z - threshold``, packed along rows.

    z (R, N): input, a layer's sums; direction (N,) in {-1, 0, 1} and
    threshold (N,): input, folded batch norm.  The words (R, ceil(N / 64)) have
    bit j of a row set where ``direction[j] * z[j] - threshold[j] >= 0`` (the
    arithmetic of the unfused numpy expression), padding bits 0.  Each row goes
    through a per-thread buffer that stays in L1 and the SIMD row packer, so z
    is read once and no (R, N) temporary is written.  Returns (words, has_nan),
    has_nan telling whether a float value to pack was NaN (its bit is 0).
    """
    cdef int64_t rows = z.shape[0], n = z.shape[1]
    cdef int64_t n_words = (n + 63) // 64
    words = np.empty((rows, n_words), dtype=np.uint64)
    if rows == 0 or n_words == 0:
        return words, False
    cdef uint64_t[:, ::1] out = words
    cdef const xnor_kernels *kern = _active
    cdef int dtype = XNOR_I32 if _unit_sum is int32_t else XNOR_F32
    cdef int nt = _threads(n_threads)
    if rows * n < 65536:
        nt = 1
    cdef int64_t block_rows = 64
    cdef int64_t r0, r, j
    cdef int failed = 0
    cdef int nan = 0
    cdef _unit_sum *buffer
    for r0 in prange(0, rows, block_rows, nogil=True, schedule="static", num_threads=nt):
        buffer = <_unit_sum *>malloc(n * sizeof(_unit_sum))
        if buffer == NULL:
            failed += 1
        else:
            for r in range(r0, min(r0 + block_rows, rows)):
                nan += _threshold_row(kern, dtype, &z[r, 0], &direction[0], &threshold[0], n, buffer,
                                      &out[r, 0])
            free(buffer)
    if failed:
        raise MemoryError("threshold_pack could not allocate its row buffer")
    return words, nan != 0


def xnor_gemm_threshold_pack(a_words, b_words, int64_t k, const int8_t[::1] direction,
                             const int32_t[::1] threshold, n_threads=None):
    """Packed signs of ``direction * (a . b) - threshold``: a binary layer in one pass.

    a_words (M, W), b_words (N, W): input words; direction (N,), threshold
    (N,): input, folded batch norm.  Returns words (M, ceil(N / 64)) equal to
    ``threshold_pack(xnor_gemm(a_words, b_words, k), direction, threshold)``,
    but each block of rows of the product lives only in a per-thread buffer
    that stays in cache, so no (M, N) int32 array is written.
    """
    cdef const uint64_t[:, ::1] a = a_words
    cdef const uint64_t[:, ::1] b = b_words
    cdef int64_t m = a.shape[0], n = b.shape[0], n_words = a.shape[1]
    _check_words(a_words, b_words, k)
    if k < 1:
        raise ValueError(f"k must be at least 1, got k={k}")
    if direction.shape[0] != n or threshold.shape[0] != n:
        raise ValueError(f"direction and threshold must have {n} entries, got "
                         f"{direction.shape[0]} and {threshold.shape[0]}")
    cdef int64_t out_words = (n + 63) // 64
    words = np.empty((m, out_words), dtype=np.uint64)
    if m == 0 or n == 0:
        return words
    cdef uint64_t[:, ::1] out = words
    cdef const xnor_kernels *kern = _active
    cdef int mr = kern.mr, nr = kern.nr
    cdef int64_t n_panels = (n + nr - 1) // nr
    cdef int nt = _threads(n_threads)
    if m * n * n_words < 200000:
        nt = 1
    cdef uint64_t[::1] panels = _b_panels(b, nr, nt)

    # A block of rows times all of B: its int32 sums (rows_per x N) fit in L2.
    cdef int64_t rows_per = max(mr, (64 // mr) * mr)
    cdef int64_t i0, i1, r
    cdef int failed = 0
    cdef int32_t *sums
    cdef int32_t *scratch
    for i0 in prange(0, m, rows_per, nogil=True, schedule="static", num_threads=nt):
        i1 = min(i0 + rows_per, m)
        sums = <int32_t *>malloc((rows_per + 1) * n * sizeof(int32_t))
        if sums == NULL:
            failed += 1
        else:
            scratch = sums + rows_per * n
            xnor_gemm_block(kern, &a[i0, 0], n_words, &panels[0], sums, n, k,
                            0, i1 - i0, 0, n_panels)
            for r in range(i1 - i0):
                _threshold_row(kern, XNOR_I32, sums + r * n, &direction[0], &threshold[0], n,
                               scratch, &out[i0 + r, 0])
            free(sums)
    if failed:
        raise MemoryError("xnor_gemm_threshold_pack could not allocate its row buffer")
    return words


def input_weights(w):
    """``w`` (F, N) stored block of columns by block, as :func:`input_sums` reads it."""
    w = np.asarray(w, dtype=np.float32)
    f, n = w.shape
    return np.concatenate([w[:, c0:c0 + XNOR_IN_BLOCK].ravel() for c0 in range(0, n, XNOR_IN_BLOCK)]
                          or [np.empty(0, dtype=np.float32)])


def input_sums(const float[:, ::1] x, const float[::1] w_blocks, const float[::1] init, n_threads=None,
               double max_density=1.0):
    """A real-valued layer that skips zero inputs: ``init + x @ w`` in a fixed order.

    x (R, F), init (N,): input; w_blocks: the (F, N) weights from
    :func:`input_weights`.  Returns ``(z, dense)``: z (R, N) float32, where
    ``z[r] = init + sum(x[r, j] * w[j] for j ascending if x[r, j] != 0)``, so
    each row's sums depend on that row alone and zero inputs cost nothing;
    and the indices (int64) of the rows with more than ``max_density * F``
    nonzeros, which are left unwritten for the caller (a dense GEMM does
    those faster).  The rows go in chunks whose nonzero lists sit in a
    per-thread buffer.
    """
    cdef int64_t rows = x.shape[0], f = x.shape[1], n = init.shape[0]
    if w_blocks.shape[0] != f * n:
        raise ValueError(f"w_blocks must hold {f} x {n} weights, got {w_blocks.shape[0]}")
    z = np.empty((rows, n), dtype=np.float32)
    is_dense = np.zeros(rows, dtype=np.uint8)
    if rows == 0 or n == 0:
        return z, np.flatnonzero(is_dense)
    cdef float[:, ::1] out = z
    cdef uint8_t[::1] dense = is_dense
    cdef xnor_input_sums_fn kernel = _active.input_sums
    cdef int nt = _threads(n_threads)
    if rows * n * f < 1000000:
        nt = 1
    cdef int64_t chunk = 64
    cdef int64_t max_nonzeros = <int64_t>(max_density * f)
    cdef int64_t r0, r1, r, j, p, q, row_start
    cdef int failed = 0
    cdef int64_t *start
    cdef int32_t *idx
    cdef float *val
    cdef float v
    cdef float no_weights = 0  # a valid address for w when f == 0
    cdef const float *wp = &w_blocks[0] if f > 0 else &no_weights
    for r0 in prange(0, rows, chunk, nogil=True, schedule="static", num_threads=nt):
        r1 = min(r0 + chunk, rows)
        start = <int64_t *>malloc((chunk + 1) * sizeof(int64_t) + chunk * f * (sizeof(int32_t) + sizeof(float)))
        if start == NULL:
            failed += 1
        else:
            idx = <int32_t *>(start + chunk + 1)
            val = <float *>(idx + chunk * f)
            p = 0
            q = 0  # rows kept
            for r in range(r0, r1):
                row_start = p
                for j in range(f):  # branch-free: scattered zeros would mispredict
                    v = x[r, j]
                    idx[p] = <int32_t>j
                    val[p] = v
                    p = p + (v != 0)
                    if (j & 63) == 63 and p - row_start > max_nonzeros:
                        break  # dense: no need to list the rest
                if p - row_start > max_nonzeros:
                    dense[r] = 1
                    p = row_start
                else:
                    start[q] = row_start
                    q = q + 1
            start[q] = p
            # Kept rows are written in order; dense ones are skipped by
            # running the kernel on each stretch of kept rows.
            _input_sums_kept(kernel, idx, val, start, &dense[r0], r1 - r0, wp, f, n, &init[0],
                             &out[r0, 0])
            free(start)
    if failed:
        raise MemoryError("input_sums could not allocate its row buffer")
    return z, np.flatnonzero(is_dense)


cdef inline void _input_sums_kept(xnor_input_sums_fn kernel, const int32_t *idx, const float *val,
                                  const int64_t *start, const uint8_t *dense, int64_t rows,
                                  const float *w, int64_t f, int64_t n, const float *init,
                                  float *z) noexcept nogil:
    # start lists the kept rows only; run the kernel on each stretch of
    # consecutive kept rows, writing them to their places in z.
    cdef int64_t r = 0, q = 0, stretch
    while r < rows:
        if dense[r]:
            r += 1
            continue
        stretch = 0
        while r + stretch < rows and not dense[r + stretch]:
            stretch += 1
        kernel(idx, val, start + q, stretch, w, f, n, init, z + r * n, n)
        q += stretch
        r += stretch


#: Most output units that :func:`signed_sums` takes.
SIGNED_SUMS_MAX_UNITS = XNOR_OUT_WIDTH


def signed_sums(const uint64_t[:, ::1] words, int64_t k, const double[:, ::1] w, n_threads=None):
    """A real layer on packed +-1 inputs, summed in input order: ``s @ w`` exactly as added up.

    words (R, ceil(k / 64)): input bits; w (k, N) float64 with N at most
    ``SIGNED_SUMS_MAX_UNITS``.  Returns out (R, N) float64 with
    ``out[r, c] = sum(s[r, j] * w[j, c] for j in range(k))`` added from 0.0
    in that order, s = +1 for a set bit and -1 for a clear one (see
    ``csrc/real_layers.h``).
    """
    cdef int64_t rows = words.shape[0], n_words = words.shape[1], n = w.shape[1]
    if w.shape[0] != k or n_words != (k + 63) // 64:
        raise ValueError(f"w must have k = {k} rows and words ceil(k / 64) columns, got w of shape "
                         f"({w.shape[0]}, {n}) and words of shape ({rows}, {n_words})")
    if n > XNOR_OUT_WIDTH:
        raise ValueError(f"signed_sums takes at most {XNOR_OUT_WIDTH} output units, got {n}")
    padded = np.zeros((k, XNOR_OUT_WIDTH), dtype=np.float64)
    padded[:, :n] = w
    result = np.empty((rows, XNOR_OUT_WIDTH), dtype=np.float64)
    if rows == 0 or k == 0:
        result[:] = 0.0
        return result[:, :n]
    cdef const double[:, ::1] wp = padded
    cdef double[:, ::1] out = result
    cdef xnor_signed_sums_fn kernel = _active.signed_sums
    cdef int nt = _threads(n_threads)
    if rows * k < 100000:
        nt = 1
    cdef int64_t chunk = 64
    cdef int64_t r0
    for r0 in prange(0, rows, chunk, nogil=True, schedule="static", num_threads=nt):
        kernel(&words[r0, 0], n_words, min(chunk, rows - r0), k, &wp[0, 0], &out[r0, 0])
    return result[:, :n]
