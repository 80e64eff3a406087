/* Shared definitions of the CPU kernels (xnorcore/csrc/): dtype and variant
 * codes, the row type of the dispatch table, and helpers that every
 * instruction set uses.
 *
 * The bit layout is that of xnor_layout.h (kernels/, shared with the CUDA
 * sources).  Several variants are compiled into one object with per-function
 * target attributes, so the build needs no -march flag and the binary runs on
 * any x86-64 (or any other CPU, where only the generic variant exists).  The
 * variant is chosen at run time (detect.h) and reached through one table of
 * function pointers (dispatch.h), as c-blosc's shuffle.c does.
 */
#ifndef XNORCORE_CSRC_COMMON_H
#define XNORCORE_CSRC_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "xnor_layout.h"

/* XNOR_NO_X86 builds only the portable variant, as on other CPUs (for tests). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(XNOR_NO_X86)
#define XNOR_X86 1
#include <cpuid.h>
#include <immintrin.h>
#else
#define XNOR_X86 0
#endif

/* Each extension module includes every kernel but calls only some. */
#if defined(__GNUC__) || defined(__clang__)
#define XNOR_MAYBE_UNUSED __attribute__((unused))
#else
#define XNOR_MAYBE_UNUSED
#endif

/* dtype codes shared with _bitpack.pyx */
enum { XNOR_I8 = 0, XNOR_I16 = 1, XNOR_I32 = 2, XNOR_I64 = 3, XNOR_F32 = 4, XNOR_F64 = 5 };

/* variant codes, in order of preference */
enum { XNOR_GENERIC = 0, XNOR_SCALAR = 1, XNOR_AVX2 = 2, XNOR_AVX512 = 3, XNOR_N_VARIANTS = 4 };

/* Words of K per cache block: a panel of NR columns x XNOR_KC words stays in
 * L1 while the rows of A stream past it from L2. */
#define XNOR_KC 128

typedef uint64_t (*xnor_mask64_fn)(int dtype, const void *p, int n, int *nan);
typedef void (*xnor_ukernel_fn)(const uint64_t *const *a, const uint64_t *panel, int64_t nw,
                                int32_t *c, int64_t ldc, int mr, int ncols, int64_t k,
                                int first);
/* The same tile for a convolution (conv.h): K is `taps` segments of nw words,
 * segment t of row r read from a[t * mr_kernel + r] (an indirection buffer:
 * input pixels, or a padding word block), and panel holds taps x nw words of
 * nr interleaved columns.  Writes c = k - 2 popcount over all segments. */
typedef void (*xnor_conv_ukernel_fn)(const uint64_t *const *a, int taps,
                                     const uint64_t *panel, int64_t nw, int32_t *c,
                                     int64_t ldc, int mr, int ncols, int64_t k);
/* The conv tile with the threshold compared in registers: or-s into bit
 * col + jj of row r (r < mr) of the words bits (row stride ldb) that of
 * popcount > half[r][col + jj], flipped where bit jj of flip is set; no sum
 * is stored. */
typedef void (*xnor_conv_bits_fn)(const uint64_t *const *a, int taps, const uint64_t *panel,
                                  int64_t nw, uint64_t *bits, int64_t ldb, int mr, int ncols,
                                  const int64_t *const *half, int64_t col, uint32_t flip);
/* Folded batch norm and sign of one row of int32 sums: bit j of out set where
 * direction[j] * z[j] - threshold[j] >= 0, computed with int32 wrap-around as
 * numpy does; padding bits 0. */
typedef void (*xnor_threshold_pack_fn)(const int32_t *z, const int8_t *direction,
                                       const int32_t *threshold, int64_t n, uint64_t *out);
/* threshold_pack of `rows` rows of n sums (row stride ldz) with the same
 * direction and threshold, into out (row stride ldo words). */
typedef void (*xnor_threshold_pack_rows_fn)(const int32_t *z, int64_t ldz, const int8_t *direction,
                                            const int32_t *threshold, int64_t n, int64_t rows,
                                            uint64_t *out, int64_t ldo);
/* The real-valued first and last layers: see real_layers.h. */
typedef void (*xnor_input_sums_fn)(const int32_t *idx, const float *val, const int64_t *start,
                                   int64_t rows, const float *w, int64_t f, int64_t n,
                                   const float *init, float *z, int64_t z_stride);
typedef void (*xnor_signed_sums_fn)(const uint64_t *words, int64_t n_words, int64_t rows,
                                    int64_t k, const double *w, double *out);
typedef void (*xnor_real_pool_fn)(const float *x, int64_t wp, int64_t c, int64_t kh, int64_t kw,
                                  int64_t ph, int64_t pw, const float *w, int64_t o,
                                  int64_t o_pad, const float *bias, float *z);

/* One row of the dispatch table (dispatch.h): every kernel of one instruction
 * set.  Arguments: x, a, panel are inputs; out and c are outputs (c is read
 * too after the first K block); buffer is scratch. */
typedef struct {
    const char *name;
    int mr; /* rows of A per micro-tile */
    int nr; /* columns of B per panel */
    /* c[0:mr, 0:ncols] (row stride ldc) from mr row pointers into A and one
     * panel, over nw words: k - 2 popcount on the first K block, minus
     * 2 popcount after it */
    xnor_ukernel_fn ukernel;
    /* one row of `length` elements -> out[0 : ceil(length / 64)]; returns NaN seen */
    int (*pack_row)(int dtype, const void *x, int64_t length, uint64_t *out);
    /* rows [64 kw, 64 kw + 64) x columns [c0, c1) of x (length, rows), packed
     * along the first axis -> out[c, kw]; returns NaN seen */
    int (*pack_cols_band)(int dtype, const void *x, int64_t length, int64_t rows,
                          uint64_t *out, int64_t kw, int64_t c0, int64_t c1, uint64_t *buffer);
    xnor_input_sums_fn input_sums;
    xnor_signed_sums_fn signed_sums;
    /* the binary conv2d tile, same mr x nr as ukernel */
    xnor_conv_ukernel_fn conv_ukernel;
    /* the fused output of binary layers (GEMM and conv) */
    xnor_threshold_pack_fn threshold_pack;
    /* the same over rows, the per-channel work done once per 64 channels
     * rather than per row; NULL where a loop over threshold_pack is as fast */
    xnor_threshold_pack_rows_fn threshold_pack_rows;
    /* the real first conv block with its 2x2 max-pool (real_layers.h) and
     * its vector width in floats (o_pad is a multiple of it) */
    xnor_real_pool_fn real_pool;
    int real_pool_width;
    /* conv_ukernel with the threshold in the tile (NULL: sums, then threshold_pack) */
    xnor_conv_bits_fn conv_bits;
    /* 1 where conv_ukernel reads split words (xnor_split_words): the input,
     * the padding block and the weight panels in that form, twice the words */
    int conv_split;
} xnor_kernels;

/* The split form of n words: out[2 i] holds the low nibble of each byte of
 * in[i], out[2 i + 1] the high nibble, each as the low 4 bits of its byte.
 * The split of a ^ b is the XOR of the splits, and the popcount of a word is
 * the sum of its two halves' nibble counts. */
static inline void xnor_split_words(const uint64_t *in, int64_t n, uint64_t *out)
{
    const uint64_t low = 0x0F0F0F0F0F0F0F0FULL;
    for (int64_t i = 0; i < n; i++) {
        out[2 * i] = in[i] & low;
        out[2 * i + 1] = (in[i] >> 4) & low;
    }
}

static inline size_t xnor_itemsize(int dtype)
{
    switch (dtype) {
    case XNOR_I8: return 1;
    case XNOR_I16: return 2;
    case XNOR_I32: case XNOR_F32: return 4;
    default: return 8;
    }
}

/* ---------------------------------------------------------------- helpers */

/* Transpose a 64 x 64 bit matrix in place: bit c of a[r] <-> bit r of a[c]
 * (Hacker's Delight 7-3, for least-significant-bit-first columns). */
static inline void xnor_transpose64(uint64_t a[64])
{
    uint64_t m = 0x00000000FFFFFFFFULL;
    for (int j = 32; j != 0; j >>= 1, m ^= m << j) {
        for (int k = 0; k < 64; k = ((k | j) + 1) & ~j) {
            uint64_t t = ((a[k] >> j) ^ a[k | j]) & m;
            a[k] ^= t << j;
            a[k | j] ^= t;
        }
    }
}

/* Pack rows [64 kw, 64 kw + 64) x columns [c0, c1) of the C-contiguous
 * (length, rows) array x along its first axis into words out[c, kw] of the
 * (rows, W) output; rows past `length` give zero padding bits.
 *
 * The rows are read in one sweep (contiguous when [c0, c1) spans all columns),
 * which the prefetchers follow: reading 64 x 64 blocks instead was three
 * times slower.  The masks wait in a buffer of 64-row strips until each strip
 * is transposed; its rows are padded to 72 words so that the strips do not
 * fall into the same L1 sets. */
#define XNOR_STRIP_PAD 72

typedef void (*xnor_transpose_fn)(uint64_t a[64]);

__attribute__((always_inline)) static inline int xnor_pack_cols_band_with(
    xnor_mask64_fn mask64, xnor_transpose_fn transpose, int dtype, const void *x,
    int64_t length, int64_t rows, uint64_t *out, int64_t kw, int64_t c0, int64_t c1,
    uint64_t *buffer)
{
    int nan = 0;
    size_t size = xnor_itemsize(dtype);
    int64_t r0 = 64 * kw;
    int nrows = length - r0 < 64 ? (int)(length - r0) : 64;
    int64_t strips = (c1 - c0 + 63) / 64;
    int64_t n_words = (length + 63) / 64;
    const char *p = (const char *)x + ((size_t)r0 * (size_t)rows + (size_t)c0) * size;
    for (int r = 0; r < nrows; r++, p += (size_t)rows * size) {
        for (int64_t s = 0; s < strips; s++) {
            int64_t left = c1 - c0 - 64 * s;
            buffer[s * XNOR_STRIP_PAD + r] =
                mask64(dtype, p + (size_t)(64 * s) * size, left < 64 ? (int)left : 64, &nan);
        }
    }
    for (int64_t s = 0; s < strips; s++) {
        uint64_t *m = buffer + s * XNOR_STRIP_PAD;
        for (int r = nrows; r < 64; r++)
            m[r] = 0;
        transpose(m);
        int64_t cs = c0 + 64 * s;
        int ncols = c1 - cs < 64 ? (int)(c1 - cs) : 64;
        for (int c = 0; c < ncols; c++)
            out[(cs + c) * n_words + kw] = m[c];
    }
    return nan;
}

/* Write k - 2 s (first K block) or subtract 2 s (later blocks) for a tile. */
static inline void xnor_store_tile(const uint64_t *s, int lds, int32_t *c, int64_t ldc,
                                   int mr, int ncols, int64_t k, int first)
{
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < ncols; j++) {
            int32_t twice = (int32_t)(2 * s[r * lds + j]);
            c[r * ldc + j] = (first ? (int32_t)k : c[r * ldc + j]) - twice;
        }
}

#define XNOR_MASK_LOOP(T)                                                                    \
    const T *q = (const T *)p;                                                               \
    uint64_t m = 0;                                                                          \
    int bad = 0;                                                                             \
    for (int i = 0; i < n; i++) {                                                            \
        m |= (uint64_t)XNOR_SIGN_BIT(q[i]) << i;                                             \
        bad |= (q[i] != q[i]);                                                               \
    }                                                                                        \
    *nan |= bad;                                                                             \
    return m;

/* direction * z - threshold >= 0 for one element, wrapping in int32 as numpy. */
static inline int xnor_threshold_bit(int32_t z, int8_t direction, int32_t threshold)
{
    uint32_t v = (uint32_t)(int32_t)direction * (uint32_t)z - (uint32_t)threshold;
    return (int32_t)v >= 0;
}

#define XNOR_CAT2(a, b) a##_##b
#define XNOR_CAT(a, b) XNOR_CAT2(a, b)
#define XNOR_FN(name) XNOR_CAT(xnor_##name, XNOR_SFX)


#endif /* XNORCORE_CSRC_COMMON_H */
