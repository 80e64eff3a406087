/* The "avx2" variant (x86-64 with AVX2 and POPCNT): sign packing with vector
 * compares and movemask, the 4 x 8 GEMM and conv micro-kernels (the conv
 * ones, int32 sums and the fused threshold, on split words), and the
 * real-valued layers on 32-byte vectors. */
#ifndef XNORCORE_CSRC_AVX2_H
#define XNORCORE_CSRC_AVX2_H

#include "common.h"
#include "real_layers.h"
#include "scalar.h"

#if XNOR_X86

#define XNOR_AVX2_ATTR __attribute__((target("avx2,popcnt")))

XNOR_AVX2_ATTR static uint64_t xnor_mask64_avx2(int dtype, const void *p, int n, int *nan)
{
    if (n < 64 || dtype == XNOR_I16)
        return xnor_mask64_scalar(dtype, p, n, nan);
    uint64_t m = 0;
    switch (dtype) {
    case XNOR_I8: {
        const __m256i *q = (const __m256i *)p;
        uint32_t lo = (uint32_t)_mm256_movemask_epi8(_mm256_loadu_si256(q));
        uint32_t hi = (uint32_t)_mm256_movemask_epi8(_mm256_loadu_si256(q + 1));
        return ~(((uint64_t)hi << 32) | lo); /* sign bit set = negative */
    }
    case XNOR_I32: {
        const float *q = (const float *)p;
        for (int g = 0; g < 8; g++)
            m |= (uint64_t)(uint8_t)_mm256_movemask_ps(_mm256_loadu_ps(q + 8 * g)) << (8 * g);
        return ~m;
    }
    case XNOR_I64: {
        const double *q = (const double *)p;
        for (int g = 0; g < 16; g++)
            m |= (uint64_t)(_mm256_movemask_pd(_mm256_loadu_pd(q + 4 * g)) & 0xF) << (4 * g);
        return ~m;
    }
    case XNOR_F32: {
        const float *q = (const float *)p;
        const __m256 zero = _mm256_setzero_ps();
        int bad = 0;
        for (int g = 0; g < 8; g++) {
            __m256 x = _mm256_loadu_ps(q + 8 * g);
            m |= (uint64_t)(uint8_t)_mm256_movemask_ps(_mm256_cmp_ps(x, zero, _CMP_GE_OQ))
                 << (8 * g);
            bad |= _mm256_movemask_ps(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
        }
        *nan |= bad != 0;
        return m;
    }
    default: {
        const double *q = (const double *)p;
        const __m256d zero = _mm256_setzero_pd();
        int bad = 0;
        for (int g = 0; g < 16; g++) {
            __m256d x = _mm256_loadu_pd(q + 4 * g);
            m |= (uint64_t)(_mm256_movemask_pd(_mm256_cmp_pd(x, zero, _CMP_GE_OQ)) & 0xF)
                 << (4 * g);
            bad |= _mm256_movemask_pd(_mm256_cmp_pd(x, x, _CMP_UNORD_Q));
        }
        *nan |= bad != 0;
        return m;
    }
    }
}

/* The full words of a float32 row: eight loads, compares and movemasks a word,
 * and a NaN test that costs no compare.  (a + b + ... + h) * 0 is NaN where any
 * of the eight is, and 0 where all are finite and so is their sum; the sums
 * accumulate over the row.  Infinities and sums past FLT_MAX also give NaN:
 * then (rarely) the row is checked again exactly.  Returns the words done. */
XNOR_AVX2_ATTR static int64_t xnor_pack_words_f32_avx2(const float *q, int64_t length,
                                                       uint64_t *out, int *nan)
{
    const __m256 zero = _mm256_setzero_ps();
    __m256 acc = zero;
    const int64_t words = length / 64;
    for (int64_t w = 0; w < words; w++) {
        const float *p = q + 64 * w;
        __m256 v[8];
        uint64_t m = 0;
        for (int g = 0; g < 8; g++) {
            v[g] = _mm256_loadu_ps(p + 8 * g);
            m |= (uint64_t)(uint8_t)_mm256_movemask_ps(_mm256_cmp_ps(v[g], zero, _CMP_GE_OQ)) << (8 * g);
        }
        out[w] = m;
        __m256 sum = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(v[0], v[1]), _mm256_add_ps(v[2], v[3])),
                                   _mm256_add_ps(_mm256_add_ps(v[4], v[5]), _mm256_add_ps(v[6], v[7])));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(sum, zero));
    }
    if (_mm256_movemask_ps(_mm256_cmp_ps(acc, acc, _CMP_UNORD_Q))) {
        for (int64_t i = 0; i < 64 * words && !*nan; i++)
            *nan = q[i] != q[i];
    }
    return words;
}

XNOR_AVX2_ATTR static int xnor_pack_row_avx2(int dtype, const void *x, int64_t length,
                                             uint64_t *out)
{
    int nan = 0;
    /* float32: the full words first, the loop below the tail */
    const int64_t start = dtype == XNOR_F32 ? 64 * xnor_pack_words_f32_avx2((const float *)x, length, out, &nan) : 0;
    size_t step = 64 * xnor_itemsize(dtype);
    const char *p = (const char *)x + start * xnor_itemsize(dtype);
    for (int64_t w = start; w < length; w += 64, p += step) {
        int n = length - w < 64 ? (int)(length - w) : 64;
        out[w / 64] = xnor_mask64_avx2(dtype, p, n, &nan);
    }
    return nan;
}

XNOR_AVX2_ATTR static int xnor_pack_cols_band_avx2(int dtype, const void *x, int64_t length,
                                                   int64_t rows, uint64_t *out, int64_t kw,
                                                   int64_t c0, int64_t c1, uint64_t *buffer)
{
    return xnor_pack_cols_band_with(xnor_mask64_avx2, xnor_transpose64, dtype, x, length, rows,
                                    out, kw, c0, c1, buffer);
}

/* 4 rows x 8 columns (two ymm of 4 words).  AVX2 has no vector popcount:
 * count nibbles with a pshufb table (Mula's method) into byte counters, which
 * hold 31 words (31 x 8 < 256) before they are summed with psadbw. */
#define XNOR_AVX2_MR 4
#define XNOR_AVX2_NR 8

/* One 4-bit-table popcount step, and one row of A against two vectors of B
 * (the tile below); the same row on split words, the masks and shifts done
 * ahead (xnor_split_words). */
#define XNOR_NIB(acc, v)                                                                     \
    do {                                                                                     \
        __m256i lo_ = _mm256_and_si256((v), low4);                                           \
        __m256i hi_ = _mm256_and_si256(_mm256_srli_epi16((v), 4), low4);                     \
        acc = _mm256_add_epi8(acc, _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo_),            \
                                                   _mm256_shuffle_epi8(lut, hi_)));          \
    } while (0)
#define XNOR_AVX2_ROW(ar, s0, s1)                                                            \
    do {                                                                                     \
        __m256i x_ = _mm256_set1_epi64x((long long)ar[w]);                                   \
        XNOR_NIB(s0, _mm256_xor_si256(x_, b0));                                              \
        XNOR_NIB(s1, _mm256_xor_si256(x_, b1));                                              \
    } while (0)
#define XNOR_AVX2_SPLIT_ROW(ar, s0, s1)                                                      \
    do {                                                                                     \
        __m256i lo_ = _mm256_set1_epi64x((long long)ar[w]);                                  \
        __m256i hi_ = _mm256_set1_epi64x((long long)ar[w + 1]);                              \
        const __m256i *bv_ = (const __m256i *)b;                                             \
        s0 = _mm256_add_epi8(s0, _mm256_add_epi8(                                            \
            _mm256_shuffle_epi8(lut, _mm256_xor_si256(lo_, _mm256_loadu_si256(bv_))),        \
            _mm256_shuffle_epi8(lut, _mm256_xor_si256(hi_, _mm256_loadu_si256(bv_ + 2)))));  \
        s1 = _mm256_add_epi8(s1, _mm256_add_epi8(                                            \
            _mm256_shuffle_epi8(lut, _mm256_xor_si256(lo_, _mm256_loadu_si256(bv_ + 1))),    \
            _mm256_shuffle_epi8(lut, _mm256_xor_si256(hi_, _mm256_loadu_si256(bv_ + 3)))));  \
    } while (0)

/* The low 32 bits of the 64-bit lanes of lo and then of hi: the counts of 8 columns. */
__attribute__((always_inline)) XNOR_AVX2_ATTR static inline __m256i xnor_avx2_cols(__m256i lo, __m256i hi)
{
    __m256i mixed = _mm256_blend_epi32(lo, _mm256_slli_epi64(hi, 32), 0xAA);
    return _mm256_permutevar8x32_epi32(mixed, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
}

/* Row r of a tile from the counts of its 8 columns (t0: columns 0-3, t1: 4-7):
 * c = k - 2 t on the first K block, c - 2 t after it, ncols columns stored. */
__attribute__((always_inline)) XNOR_AVX2_ATTR static inline void xnor_avx2_store_row(
    __m256i t0, __m256i t1, int32_t *c, int ncols, __m256i base, __m256i keep, int first)
{
    __m256i twice = _mm256_slli_epi32(xnor_avx2_cols(t0, t1), 1);
    if (ncols == XNOR_AVX2_NR) {
        __m256i from = first ? base : _mm256_loadu_si256((const __m256i *)c);
        _mm256_storeu_si256((__m256i *)c, _mm256_sub_epi32(from, twice));
    } else {
        __m256i from = first ? base : _mm256_maskload_epi32(c, keep);
        _mm256_maskstore_epi32(c, keep, _mm256_sub_epi32(from, twice));
    }
}

/* The 64-bit counts of a 4 x 8 tile, written as k - 2 s (first) or minus 2 s
 * for the first mr rows and ncols columns. */
__attribute__((always_inline)) XNOR_AVX2_ATTR static inline void xnor_avx2_store(
    __m256i t00, __m256i t01, __m256i t10, __m256i t11, __m256i t20, __m256i t21, __m256i t30,
    __m256i t31, int32_t *c, int64_t ldc, int mr, int ncols, int64_t k, int first)
{
    const __m256i base = _mm256_set1_epi32((int32_t)k);
    const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(ncols), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    xnor_avx2_store_row(t00, t01, c, ncols, base, keep, first);
    if (mr > 1)
        xnor_avx2_store_row(t10, t11, c + ldc, ncols, base, keep, first);
    if (mr > 2)
        xnor_avx2_store_row(t20, t21, c + 2 * ldc, ncols, base, keep, first);
    if (mr > 3)
        xnor_avx2_store_row(t30, t31, c + 3 * ldc, ncols, base, keep, first);
}

/* Byte counters s into the 64-bit counts t (kept in memory: the tile loops
 * need every vector register), then cleared.  Called once per 31 words. */
__attribute__((noinline)) XNOR_AVX2_ATTR static void xnor_avx2_flush(
    __m256i *t, __m256i s00, __m256i s01, __m256i s10, __m256i s11, __m256i s20, __m256i s21,
    __m256i s30, __m256i s31)
{
    const __m256i zero = _mm256_setzero_si256();
    t[0] = _mm256_add_epi64(t[0], _mm256_sad_epu8(s00, zero));
    t[1] = _mm256_add_epi64(t[1], _mm256_sad_epu8(s01, zero));
    t[2] = _mm256_add_epi64(t[2], _mm256_sad_epu8(s10, zero));
    t[3] = _mm256_add_epi64(t[3], _mm256_sad_epu8(s11, zero));
    t[4] = _mm256_add_epi64(t[4], _mm256_sad_epu8(s20, zero));
    t[5] = _mm256_add_epi64(t[5], _mm256_sad_epu8(s21, zero));
    t[6] = _mm256_add_epi64(t[6], _mm256_sad_epu8(s30, zero));
    t[7] = _mm256_add_epi64(t[7], _mm256_sad_epu8(s31, zero));
}

/* The 64-bit counts u[2 r], u[2 r + 1] (columns 0-3, 4-7 of row r) of a tile
 * over `segments` runs of nw words: run i of row r at a[4 i + r] and the
 * panel's words in order, B read as b[w * 8 + jj] across runs (split: pairs
 * of split words, 16 panel words a pair).  The GEMM passes one run, the
 * convolution one per tap. */
__attribute__((always_inline)) XNOR_AVX2_ATTR static inline void xnor_avx2_counts(
    const uint64_t *const *a, int64_t segments, const uint64_t *panel, int64_t nw,
    const int split, __m256i *u)
{
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1,
                                         2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    const __m256i zero = _mm256_setzero_si256();
    __m256i s00 = zero, s01 = zero, s10 = zero, s11 = zero;
    __m256i s20 = zero, s21 = zero, s30 = zero, s31 = zero;
    __m256i t[8];
    int flushed = 0;
    int64_t left = 31; /* words until the byte counters could overflow */
    const uint64_t *b = panel;
#define XNOR_AVX2_SPLIT_STEP()                                                               \
    do {                                                                                     \
        XNOR_AVX2_SPLIT_ROW(a0, s00, s01);                                                   \
        XNOR_AVX2_SPLIT_ROW(a1, s10, s11);                                                   \
        XNOR_AVX2_SPLIT_ROW(a2, s20, s21);                                                   \
        XNOR_AVX2_SPLIT_ROW(a3, s30, s31);                                                   \
    } while (0)
    if (split && segments * (nw / 2) <= 31) {
        /* At most 31 words (C / groups up to 192 at 3x3): no flush, no count;
         * and one word a segment (up to 64) without the inner loop. */
        for (const uint64_t *const *at = a, *const *end = a + 4 * segments; at != end; at += 4) {
            const uint64_t *a0 = at[0], *a1 = at[1], *a2 = at[2], *a3 = at[3];
            if (nw == 2) {
                const int64_t w = 0;
                XNOR_AVX2_SPLIT_STEP();
                b += 2 * XNOR_AVX2_NR;
            } else {
                for (int64_t w = 0; w < nw; w += 2, b += 2 * XNOR_AVX2_NR)
                    XNOR_AVX2_SPLIT_STEP();
            }
        }
        segments = 0;
    }
    for (const uint64_t *const *at = a, *const *end = a + 4 * segments; at != end; at += 4) {
        const uint64_t *a0 = at[0], *a1 = at[1], *a2 = at[2], *a3 = at[3];
        for (int64_t w = 0; w < nw; w += 1 + split, b += XNOR_AVX2_NR * (1 + split)) {
            if (split) {
                XNOR_AVX2_SPLIT_STEP();
            } else {
                __m256i b0 = _mm256_loadu_si256((const __m256i *)b);
                __m256i b1 = _mm256_loadu_si256((const __m256i *)(b + 4));
                XNOR_AVX2_ROW(a0, s00, s01);
                XNOR_AVX2_ROW(a1, s10, s11);
                XNOR_AVX2_ROW(a2, s20, s21);
                XNOR_AVX2_ROW(a3, s30, s31);
            }
            if (--left == 0) {
                if (!flushed) {
                    for (int i = 0; i < 8; i++)
                        t[i] = zero;
                    flushed = 1;
                }
                xnor_avx2_flush(t, s00, s01, s10, s11, s20, s21, s30, s31);
                s00 = s01 = s10 = s11 = s20 = s21 = s30 = s31 = zero;
                left = 31;
            }
        }
    }
    u[0] = _mm256_sad_epu8(s00, zero), u[1] = _mm256_sad_epu8(s01, zero);
    u[2] = _mm256_sad_epu8(s10, zero), u[3] = _mm256_sad_epu8(s11, zero);
    u[4] = _mm256_sad_epu8(s20, zero), u[5] = _mm256_sad_epu8(s21, zero);
    u[6] = _mm256_sad_epu8(s30, zero), u[7] = _mm256_sad_epu8(s31, zero);
    if (flushed)
        for (int i = 0; i < 8; i++)
            u[i] = _mm256_add_epi64(u[i], t[i]);
}

XNOR_AVX2_ATTR static void xnor_ukernel_avx2(const uint64_t *const *a, const uint64_t *panel,
                                             int64_t nw, int32_t *c, int64_t ldc, int mr,
                                             int ncols, int64_t k, int first)
{
    __m256i u[8];
    xnor_avx2_counts(a, 1, panel, nw, 0, u);
    xnor_avx2_store(u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], c, ldc, mr, ncols, k, first);
}

/* The convolution tile: the 4 x 8 tile above over an indirection buffer of
 * `taps` segments, segment t of row r at a[4 t + r], on split words
 * (xnor_split_words; nw even): words 2 w and 2 w + 1 of a segment are the
 * low and high nibbles of its word w, and the panel holds 16 words for each
 * word w, columns 0-3 and 4-7 of the low nibbles, then of the high ones.
 * The XOR of split words is the split of the XOR, so the table lookups need
 * no masks or shifts: 6 vector operations per 4 words instead of 8. */
XNOR_AVX2_ATTR static void xnor_conv_ukernel_avx2(const uint64_t *const *a, int taps,
                                                  const uint64_t *panel, int64_t nw, int32_t *c,
                                                  int64_t ldc, int mr, int ncols, int64_t k)
{
    __m256i u[8];
    xnor_avx2_counts(a, taps, panel, nw, 1, u);
    xnor_avx2_store(u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], c, ldc, mr, ncols, k, 1);
}

/* The same tile with the threshold compared in registers (as the avx512
 * variant's conv_bits): bit col + jj of row r of the words bits (row stride
 * ldb) is or-ed with that of count > half[r][col + jj], flipped where bit jj
 * of flip is set.  No sum is stored. */
XNOR_AVX2_ATTR static void xnor_conv_bits_avx2(const uint64_t *const *a, int taps,
                                               const uint64_t *panel, int64_t nw, uint64_t *bits,
                                               int64_t ldb, int mr, int ncols,
                                               const int64_t *const *half, int64_t col,
                                               uint32_t flip)
{
    __m256i u[8];
    xnor_avx2_counts(a, taps, panel, nw, 1, u);
    const uint64_t keep = ncols >= XNOR_AVX2_NR ? 0xFF : (1u << ncols) - 1;
    const __m256i lane = _mm256_setr_epi64x(0, 1, 2, 3);
    const __m256i lo = _mm256_cmpgt_epi64(_mm256_set1_epi64x(ncols), lane);
    const __m256i hi = _mm256_cmpgt_epi64(_mm256_set1_epi64x(ncols - 4), lane);
    const int shift = (int)(col & 63);
    for (int r = 0; r < mr; r++) {
        const long long *h = (const long long *)(half[r] + col);
        __m256i h0 = _mm256_maskload_epi64(h, lo), h1 = _mm256_maskload_epi64(h + 4, hi);
        uint64_t m = (uint64_t)_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(u[2 * r], h0)))
                     | (uint64_t)_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(u[2 * r + 1], h1))) << 4;
        m = (m ^ flip) & keep;
        uint64_t *dst = bits + r * ldb + (col >> 6);
        dst[0] |= m << shift;
        if (shift + ncols > 64)
            dst[1] |= m >> (64 - shift);
    }
}
#undef XNOR_AVX2_ROW
#undef XNOR_AVX2_SPLIT_ROW
#undef XNOR_AVX2_SPLIT_STEP
#undef XNOR_NIB

/* Whole words with 8-lane vectors, the last partial word as the scalar variant. */
XNOR_AVX2_ATTR static void xnor_threshold_pack_avx2(const int32_t *z, const int8_t *direction,
                                                    const int32_t *threshold, int64_t n,
                                                    uint64_t *out)
{
    const __m256i minus1 = _mm256_set1_epi32(-1);
    int64_t w0 = 0;
    for (; w0 + 64 <= n; w0 += 64) {
        uint64_t m = 0;
        for (int g = 0; g < 8; g++) {
            int64_t j = w0 + 8 * g;
            __m256i d = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(direction + j)));
            __m256i v = _mm256_sub_epi32(
                _mm256_mullo_epi32(d, _mm256_loadu_si256((const __m256i *)(z + j))),
                _mm256_loadu_si256((const __m256i *)(threshold + j)));
            __m256i ge = _mm256_cmpgt_epi32(v, minus1);
            m |= (uint64_t)(uint8_t)_mm256_movemask_ps(_mm256_castsi256_ps(ge)) << (8 * g);
        }
        out[w0 / 64] = m;
    }
    if (w0 < n)
        xnor_threshold_pack_scalar(z + w0, direction + w0, threshold + w0, n - w0, out + w0 / 64);
}

XNOR_INPUT_SUMS(xnor_input_sums_avx2, __attribute__((target("avx2"))), 32)
XNOR_SIGNED_SUMS(xnor_signed_sums_avx2, __attribute__((target("avx2"))))
XNOR_REAL_POOL(xnor_real_pool_avx2, __attribute__((target("avx2"))), 32)
#endif /* XNOR_X86 */

#endif /* XNORCORE_CSRC_AVX2_H */
