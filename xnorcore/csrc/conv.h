/* The binary conv2d driver over any row of the dispatch table: an implicit
 * GEMM on packed NHWC words (xnor_layout.h), without im2col.
 *
 * Output pixels play the rows of A and output channels the columns of B.
 * For a tile of mr output pixels the driver writes an indirection buffer of
 * kh kw x mr pointers, one per (tap, pixel): the words of the input pixel
 * under that tap, or `pad` where the tap falls in the padding.  The micro-
 * kernel (conv_ukernel) then sums XOR popcounts over all taps in registers
 * against panels of the weights laid out as the GEMM's (panel[t][w][jj]),
 * reusing the GEMM's register tiling.
 *
 * `pad` is a block of cwg words: all clear bits stand for -1 padding, the
 * C / groups valid bits set for +1 padding (padding bits stay 0 either way).
 * Zero padding (the float convolution of sign(x) with zero padding) is the -1
 * result plus, for each padded tap, the sum of that tap's weight signs: `corr`
 * (taps, O) holds those sums, added to the pixels that have padded taps, so the
 * borders are exact for every stride and dilation at the price of border work.
 */
#ifndef XNORCORE_CSRC_CONV_H
#define XNORCORE_CSRC_CONV_H

#include "common.h"

typedef struct {
    int64_t h, w;   /* input height, width */
    int64_t oh, ow; /* output height, width */
    int64_t kh, kw, sh, sw, dh, dw;
    int64_t pt, pl; /* padding rows above, columns left of the input */
    int64_t xs;     /* words per input pixel: groups x cwg */
    int64_t cwg;    /* words per pixel and group */
    int64_t og;     /* output channels per group */
    int64_t o;      /* output channels */
    int64_t ppg;    /* weight panels per group */
    int64_t k;      /* bits summed per output: kh kw C / groups */
} xnor_conv_geom;

/* Output coordinates oy[r], ox[r] of the mr rows of a tile whose first pixel
 * is (y, x): rows from `rows` on (past the pixels of the call) repeat the
 * last pixel. */
__attribute__((always_inline)) static inline void xnor_conv_tile_pixels(
    const xnor_conv_geom *g, int64_t y, int64_t x, int rows, int mr, int64_t *oy, int64_t *ox)
{
    for (int r = 0; r < mr; r++) {
        if (r > 0 && r < rows && ++x == g->ow) {
            x = 0;
            y++;
        }
        oy[r] = y;
        ox[r] = x;
    }
}

/* The first pixel (y, x) of the next tile, mr pixels on. */
static inline void xnor_conv_next_tile(const xnor_conv_geom *g, int mr, int64_t *y, int64_t *x)
{
    for (*x += mr; *x >= g->ow; *x -= g->ow)
        ++*y;
}

/* Point ptrs[t * mr + r] at the words of group `grp` under tap t of output
 * pixel (oy[r], ox[r]) of one image (x), or at pad.  Returns a mask of the
 * rows that have a padded tap (mr is at most 32).
 *
 * Every row first gets its window origin plus the tap's offset, tap by tap
 * over all rows (a loop the compiler vectorizes); the rows whose window
 * leaves the input (those with a padded tap) are then rewritten tap by tap
 * with bounds checks.  The addresses of those rows' first pass are formed as
 * integers and never read. */
__attribute__((always_inline)) static inline uint32_t xnor_conv_indirection(
    const xnor_conv_geom *g, const uint64_t *x, const uint64_t *pad, int64_t grp,
    const int64_t *oy, const int64_t *ox, int mr, const uint64_t **ptrs)
{
    uint32_t border = 0;
    const uint64_t *xg = x + grp * g->cwg;
    int64_t y0s[32], x0s[32];
    uintptr_t origin[32]; /* address of each row's window origin */
    for (int r = 0; r < mr; r++) {
        int64_t y0 = oy[r] * g->sh - g->pt, x0 = ox[r] * g->sw - g->pl;
        y0s[r] = y0;
        x0s[r] = x0;
        origin[r] = (uintptr_t)xg + (uintptr_t)((y0 * g->w + x0) * g->xs) * sizeof(uint64_t);
        int inside = y0 >= 0 && y0 + (g->kh - 1) * g->dh < g->h && x0 >= 0 &&
                     x0 + (g->kw - 1) * g->dw < g->w;
        border |= (uint32_t)!inside << r;
    }
    const uintptr_t row_step = (uintptr_t)(g->dh * g->w * g->xs) * sizeof(uint64_t);
    const uintptr_t col_step = (uintptr_t)(g->dw * g->xs) * sizeof(uint64_t);
    uintptr_t tap_off = 0;
    const uint64_t **pt = ptrs;
    for (int64_t i = 0; i < g->kh; i++, tap_off += row_step - g->kw * col_step)
        for (int64_t j = 0; j < g->kw; j++, tap_off += col_step, pt += mr)
            for (int r = 0; r < mr; r++)
                pt[r] = (const uint64_t *)(origin[r] + tap_off);
    for (uint32_t rest = border; rest != 0; rest &= rest - 1) {
        int r = __builtin_ctz(rest);
        int t = 0;
        for (int64_t i = 0; i < g->kh; i++) {
            int64_t iy = y0s[r] + i * g->dh;
            int row_in = iy >= 0 && iy < g->h;
            for (int64_t j = 0; j < g->kw; j++, t++) {
                int64_t ix = x0s[r] + j * g->dw;
                int in = row_in && ix >= 0 && ix < g->w;
                ptrs[t * mr + r] = in ? xg + (iy * g->w + ix) * g->xs : pad;
            }
        }
    }
    return border;
}

/* Columns of panel pp of group grp: the first (*col) and how many. */
static inline int xnor_conv_panel_cols(const xnor_conv_geom *g, int nr, int64_t grp, int64_t pp,
                                       int64_t *col)
{
    *col = grp * g->og + pp * nr;
    int64_t left = g->og - pp * nr;
    return left < nr ? (int)left : nr;
}

/* Zero padding: add to the sums ct (rows of ldc) of each row with padded taps
 * (border) the sums of those taps' weight signs. */
static inline void xnor_conv_correct(const xnor_conv_geom *g, const int32_t *corr,
                                     const uint64_t *pad, const uint64_t **ptrs, int mr,
                                     uint32_t border, int rows, int64_t col, int ncols,
                                     int32_t *ct, int64_t ldc)
{
    const int taps = (int)(g->kh * g->kw);
    for (int r = 0; r < rows; r++)
        for (int t = 0; t < taps && (border >> r & 1); t++)
            if (ptrs[t * mr + r] == pad) {
                const int32_t *cr = corr + t * g->o + col;
                int32_t *dst = ct + r * ldc;
                for (int jj = 0; jj < ncols; jj++)
                    dst[jj] += cr[jj];
            }
}

/* Output pixels [q0, q1) of one image (x: its H x W x xs words) for weight
 * panels [p0, p1) (panel p: group p / ppg, channels from (p % ppg) nr of that
 * group).  c points at the output of pixel q0, channel 0; row stride ldc.
 * ptrs: scratch of kh kw mr pointers. */
__attribute__((always_inline)) static inline void xnor_conv_pixels_mr(
    const int mr, const xnor_kernels *kern, const xnor_conv_geom *g, const uint64_t *x,
    const uint64_t *panels, const int32_t *corr, const uint64_t *pad, int64_t q0, int64_t q1,
    int64_t p0, int64_t p1, int32_t *c, int64_t ldc, const uint64_t **ptrs)
{
    const int nr = kern->nr;
    const int taps = (int)(g->kh * g->kw);
    const int64_t panel_words = (int64_t)taps * g->cwg * nr;
    int64_t y = q0 / g->ow, x0 = q0 % g->ow;
    for (int64_t q = q0; q < q1; q += mr, xnor_conv_next_tile(g, mr, &y, &x0)) {
        int rows = q1 - q < mr ? (int)(q1 - q) : mr;
        int64_t oy[32], ox[32];
        xnor_conv_tile_pixels(g, y, x0, rows, mr, oy, ox);
        int64_t grp = p0 / g->ppg, pp = p0 % g->ppg;
        uint32_t border = xnor_conv_indirection(g, x, pad, grp, oy, ox, mr, ptrs);
        for (int64_t p = p0; p < p1; p++, pp++) {
            if (pp == g->ppg) { /* the next group's pixels */
                pp = 0;
                border = xnor_conv_indirection(g, x, pad, ++grp, oy, ox, mr, ptrs);
            }
            int64_t col;
            int ncols = xnor_conv_panel_cols(g, nr, grp, pp, &col);
            int32_t *ct = c + (q - q0) * ldc + col;
            kern->conv_ukernel(ptrs, taps, panels + p * panel_words, g->cwg, ct, ldc, rows,
                               ncols, g->k);
            if (corr != NULL && border != 0)
                xnor_conv_correct(g, corr, pad, ptrs, mr, border, rows, col, ncols, ct, ldc);
        }
    }
}

/* The drivers' loops over the rows of a tile unroll where mr is a constant:
 * one copy for each tile height of the dispatch table (8: avx512, 4: avx2)
 * and one for any other. */
#define XNOR_CONV_BY_MR(fn, kern, ...)                                                       \
    do {                                                                                     \
        if ((kern)->mr == 8)                                                                 \
            fn(8, kern, __VA_ARGS__);                                                        \
        else if ((kern)->mr == 4)                                                            \
            fn(4, kern, __VA_ARGS__);                                                        \
        else                                                                                 \
            fn((kern)->mr, kern, __VA_ARGS__);                                               \
    } while (0)

XNOR_MAYBE_UNUSED static void xnor_conv_pixels(const xnor_kernels *kern, const xnor_conv_geom *g,
                                               const uint64_t *x, const uint64_t *panels,
                                               const int32_t *corr, const uint64_t *pad,
                                               int64_t q0, int64_t q1, int64_t p0, int64_t p1,
                                               int32_t *c, int64_t ldc, const uint64_t **ptrs)
{
    XNOR_CONV_BY_MR(xnor_conv_pixels_mr, kern, g, x, panels, corr, pad, q0, q1, p0, p1, c, ldc,
                    ptrs);
}

/* The kernel rows (or columns) of an output row whose taps fall in the
 * padding: the first *above of them and the last *below; y0 is the input row
 * of tap 0, k the kernel size, d the dilation, h the input size. */
static inline void xnor_conv_pad_span(int64_t y0, int64_t k, int64_t d, int64_t h,
                                      int64_t *above, int64_t *below)
{
    int64_t first_in = y0 >= 0 ? 0 : (d - 1 - y0) / d;      /* first i: y0 + i d >= 0 */
    int64_t first_out = h - y0 <= 0 ? 0 : (h - y0 + d - 1) / d; /* first i: y0 + i d >= h */
    *above = first_in < k ? first_in : k;
    *below = first_out < k ? k - first_out : 0;
}

/* Classes of the n output rows (or columns) of stride s and padding p by
 * their padded kernel rows: key[o] is the class of row o, span[2 c], span[2 c
 * + 1] the rows above and below of class c.  The spans only shrink above and
 * grow below along the rows, so equal spans are consecutive and a class is
 * a run of rows.  Returns the number of classes (at most n). */
XNOR_MAYBE_UNUSED static int64_t xnor_conv_pad_classes(int64_t n, int64_t s, int64_t p, int64_t k,
                                                       int64_t d, int64_t h, int32_t *key,
                                                       int64_t *span)
{
    int64_t classes = 0;
    for (int64_t o = 0; o < n; o++) {
        int64_t above, below;
        xnor_conv_pad_span(o * s - p, k, d, h, &above, &below);
        if (classes == 0 || above != span[2 * classes - 2] || below != span[2 * classes - 1]) {
            span[2 * classes] = above;
            span[2 * classes + 1] = below;
            classes++;
        }
        key[o] = (int32_t)(classes - 1);
    }
    return classes;
}

/* The bounds of the fused output for each pair of a row class and a column
 * class (xnor_conv_pad_classes): table[(cy nx + cx) o + j] =
 * floor((twice[j] + C[j]) / 2), C[j] the sum of corr[t][j] (the zero-padding
 * corrections) over the taps t padded in that class pair; corr NULL: C = 0. */
XNOR_MAYBE_UNUSED static void xnor_conv_bounds_table(const xnor_conv_geom *g, const int32_t *corr,
                                                     const int64_t *twice, const int64_t *yspan,
                                                     int64_t ny, const int64_t *xspan, int64_t nx,
                                                     int64_t *table)
{
    for (int64_t cy = 0; cy < ny; cy++)
        for (int64_t cx = 0; cx < nx; cx++) {
            int64_t *row = table + (cy * nx + cx) * g->o;
            for (int64_t j = 0; j < g->o; j++)
                row[j] = twice[j];
            for (int64_t i = 0; i < g->kh && corr != NULL; i++)
                for (int64_t jj = 0; jj < g->kw; jj++) {
                    int padded = i < yspan[2 * cy] || i >= g->kh - yspan[2 * cy + 1] ||
                                 jj < xspan[2 * cx] || jj >= g->kw - xspan[2 * cx + 1];
                    const int32_t *cr = corr + (i * g->kw + jj) * g->o;
                    for (int64_t j = 0; padded && j < g->o; j++)
                        row[j] += cr[j];
                }
            for (int64_t j = 0; j < g->o; j++)
                row[j] = row[j] >= 0 ? row[j] / 2 : -((1 - row[j]) / 2);
        }
}

/* The fused output of xnor_conv_pixels over all panels, for a kernel with
 * conv_bits: words bits[(q - q0) ldb + ...] (zeroed here) get, for each pixel
 * q in [q0, q1) and channel j, the bit of direction[j] z[j] - threshold[j]
 * >= 0.  With z = k - 2 popcount + C (C: the zero-padding corrections of the
 * pixel's padded taps) that is popcount > table[c][j], negated where bit j
 * of the words flips is set, compared in the tile: c = ykey[oy] nx +
 * xkey[ox] is the pixel's class pair (xnor_conv_bounds_table). */
__attribute__((always_inline)) static inline void xnor_conv_pixels_bits_mr(
    const int mr, const xnor_kernels *kern, const xnor_conv_geom *g, const uint64_t *x,
    const uint64_t *panels, const uint64_t *pad, int64_t q0, int64_t q1, const int32_t *ykey,
    const int32_t *xkey, int64_t nx, const int64_t *table, const uint64_t *flips, uint64_t *bits,
    int64_t ldb, const uint64_t **ptrs)
{
    const int nr = kern->nr;
    const int taps = (int)(g->kh * g->kw);
    const int64_t panel_words = (int64_t)taps * g->cwg * nr;
    const int64_t groups = g->o / g->og;
    memset(bits, 0, (size_t)((q1 - q0) * ldb) * sizeof(uint64_t));
    int64_t y = q0 / g->ow, x0 = q0 % g->ow;
    for (int64_t q = q0; q < q1; q += mr, xnor_conv_next_tile(g, mr, &y, &x0)) {
        int rows = q1 - q < mr ? (int)(q1 - q) : mr;
        int64_t oy[32], ox[32];
        const int64_t *half[32];
        xnor_conv_tile_pixels(g, y, x0, rows, mr, oy, ox);
        for (int r = 0; r < mr; r++)
            half[r] = table + (ykey[oy[r]] * nx + xkey[ox[r]]) * g->o;
        const uint64_t *panel = panels;
        for (int64_t grp = 0; grp < groups; grp++) {
            xnor_conv_indirection(g, x, pad, grp, oy, ox, mr, ptrs);
            for (int64_t pp = 0; pp < g->ppg; pp++, panel += panel_words) {
                int64_t col;
                int ncols = xnor_conv_panel_cols(g, nr, grp, pp, &col);
                const int shift = (int)(col & 63);
                const uint64_t *fw = flips + (col >> 6);
                uint32_t flip = (uint32_t)((fw[0] >> shift) | (shift ? fw[1] << (64 - shift) : 0));
                kern->conv_bits(ptrs, taps, panel, g->cwg, bits + (q - q0) * ldb, ldb, rows, ncols,
                                half, col, flip);
            }
        }
    }
}

XNOR_MAYBE_UNUSED static void xnor_conv_pixels_bits(
    const xnor_kernels *kern, const xnor_conv_geom *g, const uint64_t *x, const uint64_t *panels,
    const uint64_t *pad, int64_t q0, int64_t q1, const int32_t *ykey, const int32_t *xkey,
    int64_t nx, const int64_t *table, const uint64_t *flips, uint64_t *bits, int64_t ldb,
    const uint64_t **ptrs)
{
    XNOR_CONV_BY_MR(xnor_conv_pixels_bits_mr, kern, g, x, panels, pad, q0, q1, ykey, xkey, nx,
                    table, flips, bits, ldb, ptrs);
}

#endif /* XNORCORE_CSRC_CONV_H */
