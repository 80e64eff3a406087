# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""CPU kernels of the binary conv2d (private): int32 sums, and the fused
threshold-pack and 2x2 max-pool outputs; and the real-valued first block of a
binary CNN (convolution, 2x2 max-pool and threshold-pack, ``real_conv2d_pool``).

The C code is ``csrc/conv.h`` (the driver) and each instruction set's
``conv_ukernel``, ``conv_bits`` (the fused output compared in the tile, where
the set has one) and ``real_pool`` in the one dispatch table of
``csrc/dispatch.h``; the packed
layout is that of ``kernels/xnor_layout.h``.  The caller (``xnorcore._conv_cpu``)
builds the panels, the padding block and the zero-padding corrections and
passes the variant index in use (``xnorcore._bitpack``'s); the functions here
trust shapes and dtypes.
"""

import numpy as np

from cython.parallel cimport prange
from libc.stdint cimport int8_t, int32_t, int64_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset


cdef extern from "dispatch.h" nogil:
    enum:
        XNOR_N_VARIANTS
        XNOR_F32

    ctypedef struct xnor_kernels:
        int mr
        int nr
        int (*pack_row)(int dtype, const void *x, int64_t length, uint64_t *out) noexcept nogil
        void (*threshold_pack)(const int32_t *z, const int8_t *direction,
                               const int32_t *threshold, int64_t n, uint64_t *out) noexcept nogil
        void (*threshold_pack_rows)(const int32_t *z, int64_t ldz, const int8_t *direction,
                                    const int32_t *threshold, int64_t n, int64_t rows,
                                    uint64_t *out, int64_t ldo) noexcept nogil
        void (*real_pool)(const float *x, int64_t wp, int64_t c, int64_t kh, int64_t kw,
                          int64_t ph, int64_t pw, const float *w, int64_t o, int64_t o_pad,
                          const float *bias, float *z) noexcept nogil
        int real_pool_width
        void *conv_bits

    const xnor_kernels xnor_variants[]

    ctypedef struct xnor_conv_geom:
        int64_t h, w, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl, xs, cwg, og, o, ppg, k

    int64_t xnor_conv_pad_classes(int64_t n, int64_t s, int64_t p, int64_t k, int64_t d,
                                  int64_t h, int32_t *key, int64_t *span)

    void xnor_conv_bounds_table(const xnor_conv_geom *g, const int32_t *corr,
                                const int64_t *twice, const int64_t *yspan, int64_t ny,
                                const int64_t *xspan, int64_t nx, int64_t *table)

    void xnor_conv_pixels_bits(const xnor_kernels *kern, const xnor_conv_geom *g, const uint64_t *x,
                               const uint64_t *panels, const uint64_t *pad, int64_t q0, int64_t q1,
                               const int32_t *ykey, const int32_t *xkey, int64_t nx,
                               const int64_t *table, const uint64_t *flips, uint64_t *bits,
                               int64_t ldb, const uint64_t **ptrs)

    void xnor_conv_pixels(const xnor_kernels *kern, const xnor_conv_geom *g, const uint64_t *x,
                          const uint64_t *panels, const int32_t *corr, const uint64_t *pad,
                          int64_t q0, int64_t q1, int64_t p0, int64_t p1, int32_t *c,
                          int64_t ldc, const uint64_t **ptrs)


def panel_width(int variant):
    """Columns per weight panel (nr) of dispatch-table row ``variant``."""
    return xnor_variants[variant].nr


def conv_weights(const uint64_t[:, :, ::1] w, int64_t groups, int64_t cg, bint corrections,
                 int variant):
    """Weight panels and zero-padding corrections from words w (KH KW, O, cwg).

    Group g's output channels ``[g O / groups, (g + 1) O / groups)`` go into
    ``ceil(O / groups / nr)`` panels, the groups one after the other; panel p
    holds ``panel[t][w][jj] = w[t, p nr + jj, w]`` (zero past the group's
    channels), the GEMM's panel layout with K running over (tap, word).  With
    ``corrections``, also returns corr (taps, O) int32, ``2 popcount(w[t, o])
    - cg``: the sum of the weight signs of tap t, which turns the -1 read at a
    padded tap into a zero contribution.  Otherwise corr is None.
    """
    cdef int nr = xnor_variants[variant].nr
    cdef int64_t taps = w.shape[0], o = w.shape[1], cwg = w.shape[2]
    cdef int64_t og = o // groups
    cdef int64_t ppg = (og + nr - 1) // nr
    cdef int64_t panel_words = taps * cwg * nr
    panels_arr = np.zeros(max(1, groups * ppg * panel_words), dtype=np.uint64)
    cdef uint64_t[::1] panels = panels_arr
    cdef int64_t g, p, t, j, wd, col, base
    cdef uint64_t *dst
    with nogil:
        for g in range(groups):
            for p in range(ppg):
                dst = &panels[0] + (g * ppg + p) * panel_words
                # reads run along w[t, col0 : col0 + nr, :] (contiguous); the
                # writes stay within one panel's tap (nr x cwg words, in L1)
                col = g * og + p * nr
                for t in range(taps):
                    for j in range(min(nr, og - p * nr)):
                        for wd in range(cwg):
                            dst[(t * cwg + wd) * nr + j] = w[t, col + j, wd]
    if not corrections:
        return panels_arr, None
    corr_arr = np.empty((taps, o), dtype=np.int32)
    cdef int32_t[:, ::1] corr = corr_arr
    cdef int count
    with nogil:
        for t in range(taps):
            for col in range(o):
                count = 0
                for wd in range(cwg):
                    count = count + _popcount64(w[t, col, wd])
                corr[t, col] = <int32_t>(2 * count - cg)
    return panels_arr, corr_arr


cdef inline int _popcount64(uint64_t v) noexcept nogil:
    # Portable (SWAR): this runs once per weight word, not in the inner loop.
    v = v - ((v >> 1) & 0x5555555555555555ULL)
    v = (v & 0x3333333333333333ULL) + ((v >> 2) & 0x3333333333333333ULL)
    v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0FULL
    return <int>((v * 0x0101010101010101ULL) >> 56)


cdef const int32_t *_corr_pointer(corr):
    # corr: None or a C-contiguous int32 (taps, O) array that the caller keeps alive.
    cdef const int32_t[:, ::1] view
    if corr is None:
        return NULL
    view = corr
    return &view[0, 0]


# Work items per thread to aim for: with the dynamic schedule the threads
# finish at most one item apart, so a few percent of the work at 2 threads.
cdef enum:
    _ITEMS_PER_THREAD = 16


cdef xnor_conv_geom _geom(tuple geometry, int64_t xs, int64_t cwg, int64_t o, int64_t groups,
                          int nr):
    # geometry: (H, W, OH, OW, KH, KW, SH, SW, DH, DW, PT, PL, K)
    cdef xnor_conv_geom g
    (g.h, g.w, g.oh, g.ow, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, g.k) = geometry
    g.xs = xs
    g.cwg = cwg
    g.o = o
    g.og = o // groups
    g.ppg = (g.og + nr - 1) // nr
    return g


def conv2d(const uint64_t[:, :, :, ::1] x, const uint64_t[::1] panels, corr,
           const uint64_t[::1] pad, tuple geometry, int64_t o, int64_t groups, int variant,
           int n_threads):
    """int32 sums (N, OH, OW, O) of the binary conv2d.

    x (N, H, W, xs) words: input; panels, corr: from :func:`conv_weights` (corr None
    without padding); pad (cwg,) words: what a padded tap reads.  For a
    variant whose tiles read split words (``split_words``) all three come
    split, and so twice the words.
    Work items are blocks of output pixels of one image times blocks of panels.
    """
    cdef const xnor_kernels *kern = &xnor_variants[variant]
    cdef xnor_conv_geom g = _geom(geometry, x.shape[3], pad.shape[0], o, groups, kern.nr)
    cdef int64_t n = x.shape[0], pixels = g.oh * g.ow
    result = np.empty((n, g.oh, g.ow, o), dtype=np.int32)
    if n == 0 or pixels == 0 or o == 0:
        return result
    cdef int32_t[:, :, :, ::1] out = result
    cdef const int32_t *corr_ptr = _corr_pointer(corr)
    cdef int64_t n_panels = groups * g.ppg
    # Blocks of up to 64 pixels x 8 panels, shrunk (pixels first: the panels
    # of one pixel tile share its indirection buffer) until every thread has
    # _ITEMS_PER_THREAD items; pixel blocks stay within one image.
    cdef int64_t pix_per = 64, panels_per = 8
    while n * ((pixels + pix_per - 1) // pix_per) * ((n_panels + panels_per - 1) // panels_per) < _ITEMS_PER_THREAD * n_threads:
        if pix_per > kern.mr:
            pix_per //= 2
        elif panels_per > 1:
            panels_per //= 2
        else:
            break
    # Even blocks (whole tiles of mr rows) rather than full blocks and a short last one.
    cdef int64_t pix_blocks = (pixels + pix_per - 1) // pix_per
    pix_per = ((pixels + pix_blocks - 1) // pix_blocks + kern.mr - 1) // kern.mr * kern.mr
    pix_blocks = (pixels + pix_per - 1) // pix_per
    cdef int64_t col_blocks = (n_panels + panels_per - 1) // panels_per
    panels_per = (n_panels + col_blocks - 1) // col_blocks
    col_blocks = (n_panels + panels_per - 1) // panels_per
    cdef int64_t per_image = pix_blocks * col_blocks
    cdef int64_t item, img, q0, p0
    cdef int failed = 0
    cdef const uint64_t **ptrs
    # Dynamic: the items differ in size (edge blocks of pixels and panels).
    for item in prange(n * per_image, nogil=True, schedule="dynamic", num_threads=n_threads):
        img = item // per_image
        q0 = ((item % per_image) // col_blocks) * pix_per
        p0 = (item % col_blocks) * panels_per
        ptrs = <const uint64_t **>malloc(g.kh * g.kw * kern.mr * sizeof(uint64_t *))
        if ptrs == NULL:
            failed += 1
        else:
            xnor_conv_pixels(kern, &g, &x[img, 0, 0, 0], &panels[0], corr_ptr, &pad[0],
                             q0, min(q0 + pix_per, pixels), p0, min(p0 + panels_per, n_panels),
                             &out[img, q0 // g.ow, q0 % g.ow, 0], o, ptrs)
            free(ptrs)
    if failed:
        raise MemoryError("conv2d could not allocate its indirection buffer")
    return result


cdef inline void _threshold_rows(const xnor_kernels *kern, const int32_t *sums, int64_t o,
                                 const int8_t *direction, const int32_t *threshold, int64_t rows,
                                 uint64_t *out, int64_t ldo) noexcept nogil:
    # rows of o sums (stride o) -> rows of words (stride ldo)
    cdef int64_t r
    if kern.threshold_pack_rows != NULL:
        kern.threshold_pack_rows(sums, o, direction, threshold, o, rows, out, ldo)
    else:
        for r in range(rows):
            kern.threshold_pack(sums + r * o, direction, threshold, o, out + r * ldo)


cdef bint _count_bounds(const int8_t[::1] direction, const int32_t[::1] threshold, int64_t k,
                        int64_t *twice, uint64_t *flips) noexcept nogil:
    # direction * z - threshold >= 0 with z = k - v, v = 2 popcount - C (C the
    # zero-padding corrections), as the bit of v > twice[j] negated where bit
    # j of flips (zeroed by the caller) is set: for direction 1, not v > k - t;
    # for -1, v > k + t - 1; for 0, always (t <= 0) or never.  False where
    # int32 arithmetic could wrap (|t| + k >= 2**31): no bounds then.
    cdef int64_t j, t
    cdef int64_t far = (<int64_t>1) << 40
    for j in range(direction.shape[0]):
        t = threshold[j]
        if (t if t >= 0 else -t) + k >= (<int64_t>1) << 31:
            return False
        if direction[j] > 0:
            twice[j] = k - t
            flips[j // 64] |= (<uint64_t>1) << (j % 64)
        elif direction[j] < 0:
            twice[j] = k + t - 1
        else:
            twice[j] = -far if t <= 0 else far
    return True


# At most this many classes of pixels (by their padded taps) get a row of
# bounds for the in-tile compare; more (kernels far larger than the input)
# go through int32 sums.
cdef enum:
    _MAX_BOUND_ROWS = 4096


def conv2d_threshold_pack(const uint64_t[:, :, :, ::1] x, const uint64_t[::1] panels, corr,
                          const uint64_t[::1] pad, tuple geometry, int64_t o, int64_t groups,
                          const int8_t[::1] direction, const int32_t[::1] threshold,
                          bint pool, int variant, int n_threads):
    """Packed signs of ``direction * conv2d(...) - threshold``, optionally 2x2 max-pooled.

    Arguments as :func:`conv2d`, plus direction (O,) in {-1, 0, 1} and
    threshold (O,): input, folded batch norm.  Returns words
    (N, OH, OW, ceil(O / 64)), bit o set where ``direction[o] * z[o] -
    threshold[o] >= 0``; with ``pool``, words (N, OH // 2, OW // 2, ...) whose
    bits are the OR over each 2x2 window (stride 2), the max of +-1 values.
    An item is a block of pixels (pool: two output rows) of one image times
    all output channels.  Where the variant has ``conv_bits``, the tiles
    compare the popcounts with per-channel bounds in registers, one row of
    bounds for each class of pixels by their padded taps (the zero-padding
    corrections of those taps folded in); otherwise the int32 sums of an item
    live only in a per-thread buffer and are thresholded from there.
    """
    cdef const xnor_kernels *kern = &xnor_variants[variant]
    cdef xnor_conv_geom g = _geom(geometry, x.shape[3], pad.shape[0], o, groups, kern.nr)
    cdef int64_t n = x.shape[0], pixels = g.oh * g.ow
    cdef int64_t ow_words = (o + 63) // 64
    cdef int64_t ph = g.oh // 2 if pool else g.oh
    cdef int64_t pw = g.ow // 2 if pool else g.ow
    words = np.zeros((n, ph, pw, ow_words), dtype=np.uint64)
    if n == 0 or ph == 0 or pw == 0 or o == 0:
        return words
    cdef uint64_t[:, :, :, ::1] out = words
    cdef const int32_t *corr_ptr = _corr_pointer(corr)
    cdef int64_t n_panels = groups * g.ppg
    # Pixels per item: two output rows when pooling, else blocks of up to 64
    # pixels, shrunk until every thread has several items.
    cdef int64_t pix_per
    if pool:
        pix_per = 2 * g.ow
    else:
        pix_per = 64
        while pix_per > kern.mr and n * ((pixels + pix_per - 1) // pix_per) < _ITEMS_PER_THREAD * n_threads:
            pix_per //= 2
        pix_per = (pixels + (pixels + pix_per - 1) // pix_per - 1) // ((pixels + pix_per - 1) // pix_per)
        pix_per = (pix_per + kern.mr - 1) // kern.mr * kern.mr
    cdef int64_t per_image = ph if pool else (pixels + pix_per - 1) // pix_per
    cdef int64_t item, img, q0, q1, r, px, wd
    cdef int failed = 0
    cdef const uint64_t **ptrs
    cdef int32_t *sums
    cdef uint64_t *bits
    cdef uint64_t *top
    cdef uint64_t *bottom
    # The in-tile compare: each pixel's bounds are the row of its class pair
    # (ykey[oy], xkey[ox]) in table, with the zero-padding corrections of its
    # padded taps; without corrections all pixels are of one class.  aux
    # holds the keys, the classes' spans, the doubled bounds and the flips.
    cdef int64_t flip_words = ow_words + 1, ny = 1, nx = 1
    cdef int64_t *aux = <int64_t *>calloc((g.oh + g.ow + 1) // 2 + 2 * (g.oh + g.ow) + o
                                          + flip_words, sizeof(int64_t))
    if aux == NULL:
        raise MemoryError("conv2d_threshold_pack could not allocate its bounds")
    cdef int64_t *yspan = aux + (g.oh + g.ow + 1) // 2
    cdef int64_t *xspan = yspan + 2 * g.oh
    cdef int64_t *twice = xspan + 2 * g.ow
    cdef uint64_t *flips = <uint64_t *>(twice + o)
    cdef int32_t *ykey = <int32_t *>aux
    cdef int32_t *xkey = ykey + g.oh
    cdef int64_t *table = NULL
    cdef bint in_tile = kern.conv_bits != NULL and _count_bounds(direction, threshold, g.k, twice,
                                                                 flips)
    if in_tile and corr_ptr != NULL:
        ny = xnor_conv_pad_classes(g.oh, g.sh, g.pt, g.kh, g.dh, g.h, ykey, yspan)
        nx = xnor_conv_pad_classes(g.ow, g.sw, g.pl, g.kw, g.dw, g.w, xkey, xspan)
        in_tile = ny * nx <= _MAX_BOUND_ROWS
    if in_tile:
        table = <int64_t *>malloc(ny * nx * o * sizeof(int64_t))
        if table == NULL:
            free(aux)
            raise MemoryError("conv2d_threshold_pack could not allocate its bounds")
        xnor_conv_bounds_table(&g, corr_ptr, twice, yspan, ny, xspan, nx, table)
    cdef int64_t sum_ints = 0 if in_tile else pix_per * o
    # Dynamic: the items differ in size (edge blocks of pixels and panels).
    for item in prange(n * per_image, nogil=True, schedule="dynamic", num_threads=n_threads):
        img = item // per_image
        q0 = (item % per_image) * pix_per
        q1 = min(q0 + pix_per, pixels)
        ptrs = <const uint64_t **>malloc(g.kh * g.kw * kern.mr * sizeof(uint64_t *)
                                         + sum_ints * sizeof(int32_t)
                                         + pix_per * ow_words * sizeof(uint64_t))
        if ptrs == NULL:
            failed += 1
        else:
            bits = <uint64_t *>(ptrs + g.kh * g.kw * kern.mr)
            sums = <int32_t *>(bits + pix_per * ow_words)
            if in_tile:
                xnor_conv_pixels_bits(kern, &g, &x[img, 0, 0, 0], &panels[0], &pad[0], q0, q1,
                                      ykey, xkey, nx, table, flips,
                                      bits if pool else &out[img, q0 // g.ow, q0 % g.ow, 0],
                                      ow_words, ptrs)
            else:
                xnor_conv_pixels(kern, &g, &x[img, 0, 0, 0], &panels[0], corr_ptr, &pad[0],
                                 q0, q1, 0, n_panels, sums, o, ptrs)
            if pool:
                if not in_tile:
                    _threshold_rows(kern, sums, o, &direction[0], &threshold[0], q1 - q0, bits,
                                    ow_words)
                for px in range(pw):
                    top = bits + 2 * px * ow_words
                    bottom = top + g.ow * ow_words
                    for wd in range(ow_words):
                        out[img, item % per_image, px, wd] = (
                            top[wd] | top[ow_words + wd] | bottom[wd] | bottom[ow_words + wd])
            elif not in_tile:
                # the pixels q0 .. q1 - 1 of one image: consecutive rows of words
                _threshold_rows(kern, sums, o, &direction[0], &threshold[0], q1 - q0,
                                &out[img, q0 // g.ow, q0 % g.ow, 0], ow_words)
            free(ptrs)
    free(table)
    free(aux)
    if failed:
        raise MemoryError("conv2d_threshold_pack could not allocate its row buffer")
    return words


def real_pool_width(int variant):
    """Floats per vector of dispatch-table row ``variant``'s real_pool (o_pad's multiple)."""
    return xnor_variants[variant].real_pool_width


def real_conv2d_pool(const float[:, :, :, ::1] x, const float[:, ::1] w, bias, tuple geometry,
                     direction, threshold, int variant, int n_threads):
    """The real first conv block: stride-1 convolution, 2x2 max-pool, bias; optionally thresholded.

    x (N, H, W, C) float32: input images; w (KH KW C, o_pad) float32: the HWIO
    weights with zero columns up to o_pad (a multiple of
    :func:`real_pool_width`); bias None or (o_pad,) float32; geometry
    ``(KH, KW, PT, PL, PH, PW, O)``: kernel, padding above and left, pooled
    output size and channels.  Without ``direction``: float32 sums (N, PH, PW,
    O), ``max`` over each 2x2 window of the convolution, plus the bias.  With
    direction (O,) int8 and threshold (O,) float32: the words (N, PH, PW,
    ceil(O / 64)) of ``direction * z - threshold >= 0``, the arithmetic of
    ``threshold_pack`` on those sums, which never reach memory.  Returns
    ``(result, has_nan)``: whether a thresholded value was NaN (its bit is 0;
    always False without ``direction``).
    Images go to the threads in static blocks.
    """
    cdef const xnor_kernels *kern = &xnor_variants[variant]
    cdef int64_t kh, kw, pt, pl, ph, pw, o
    kh, kw, pt, pl, ph, pw, o = geometry
    cdef int64_t n = x.shape[0], h = x.shape[1], wd = x.shape[2], c = x.shape[3]
    cdef int64_t o_pad = w.shape[1]
    cdef int64_t hp = 2 * ph + kh - 1, wp = 2 * pw + kw - 1
    cdef bint fused = direction is not None
    cdef int64_t n_words = (o + 63) // 64
    if fused:
        result = np.zeros((n, ph, pw, n_words), dtype=np.uint64)
    else:
        result = np.empty((n, ph, pw, o), dtype=np.float32)
    if n == 0 or ph == 0 or pw == 0 or o == 0:
        return result, False
    cdef const float *bias_ptr = NULL
    cdef const float[::1] bias_view
    if bias is not None:
        bias_view = bias
        bias_ptr = &bias_view[0]
    cdef const int8_t[::1] d
    cdef const float[::1] t
    cdef uint64_t[:, :, :, ::1] words
    cdef float[:, :, :, ::1] sums
    if fused:
        d = direction
        t = threshold
        words = result
    else:
        sums = result
    # The rows and columns of the input that the padded buffer holds.
    cdef int64_t y0 = max(0, -pt), y1 = min(h, hp - pt), x0 = max(0, -pl), x1 = min(wd, wp - pl)
    cdef int64_t img, y, j, r
    cdef int failed = 0
    cdef int nan = 0
    cdef float *buf
    cdef float *z
    cdef float *row
    cdef int64_t buf_floats = hp * wp * c
    cdef int64_t z_floats = ph * pw * o if fused else 0
    for img in prange(n, nogil=True, schedule="static", num_threads=n_threads):
        buf = <float *>malloc((buf_floats + z_floats + o) * sizeof(float))
        if buf == NULL:
            failed += 1
        else:
            # The padding of the buffer stays zero; only the image is copied in.
            memset(buf, 0, buf_floats * sizeof(float))
            if x1 > x0:
                for y in range(y0, y1):
                    memcpy(buf + ((y + pt) * wp + x0 + pl) * c, &x[img, y, x0, 0],
                           (x1 - x0) * c * sizeof(float))
            if fused:
                z = buf + buf_floats
                row = z + z_floats
                kern.real_pool(buf, wp, c, kh, kw, ph, pw, &w[0, 0], o, o_pad, bias_ptr, z)
                for r in range(ph * pw):
                    for j in range(o):
                        row[j] = d[j] * z[r * o + j] - t[j]
                    nan += kern.pack_row(XNOR_F32, row, o, &words[img, r // pw, r % pw, 0])
            else:
                kern.real_pool(buf, wp, c, kh, kw, ph, pw, &w[0, 0], o, o_pad, bias_ptr,
                               &sums[img, 0, 0, 0])
            free(buf)
    if failed:
        raise MemoryError("real_conv2d_pool could not allocate its image buffer")
    return result, nan > 0
