/* The "avx512" variant (x86-64 with AVX-512 F, BW, DQ, VL and VPOPCNTDQ):
 * sign packing with masked loads and compares, a vector 64 x 64 bit transpose,
 * the 8 x 24 GEMM micro-kernel on vpopcntq, and the real-valued layers on
 * 64-byte vectors (AVX-512F). */
#ifndef XNORCORE_CSRC_AVX512_H
#define XNORCORE_CSRC_AVX512_H

#include "common.h"
#include "real_layers.h"

#if XNOR_X86

#define XNOR_AVX512_ATTR                                                                     \
    __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vpopcntdq,popcnt")))

static inline XNOR_AVX512_ATTR __mmask64 xnor_lanes64(int n)
{
    return n >= 64 ? ~(__mmask64)0 : n <= 0 ? 0 : (((__mmask64)1 << n) - 1);
}

/* 64 elements (n of them valid) -> one word, with masked loads for the tail
 * so that no byte past the row is read and padding bits stay 0. */
#define XNOR_M64_FLOAT_512(SFX, T, L, MASK, VEC, PS)                                         \
    XNOR_AVX512_ATTR static inline uint64_t xnor_m64_##SFX##_avx512(const T *p, int n,       \
                                                                    int *nan)                \
    {                                                                                        \
        uint64_t m = 0;                                                                      \
        MASK bad = 0;                                                                        \
        const VEC zero = _mm512_setzero_##PS();                                              \
        for (int g = 0; g < 64 / (L); g++) {                                                 \
            MASK lanes = (MASK)xnor_lanes64(n - (L) * g);                                    \
            VEC x = _mm512_maskz_loadu_##PS(lanes, p + (L) * g);                             \
            m |= (uint64_t)_mm512_mask_cmp_##PS##_mask(lanes, x, zero, _CMP_GE_OQ) << ((L) * g); \
            bad |= _mm512_mask_cmp_##PS##_mask(lanes, x, x, _CMP_UNORD_Q);                   \
        }                                                                                    \
        *nan |= bad != 0;                                                                    \
        return m;                                                                            \
    }
XNOR_M64_FLOAT_512(f32, float, 16, __mmask16, __m512, ps)
XNOR_M64_FLOAT_512(f64, double, 8, __mmask8, __m512d, pd)
#undef XNOR_M64_FLOAT_512

XNOR_AVX512_ATTR static inline uint64_t xnor_m64_i8_avx512(const int8_t *p, int n)
{
    __mmask64 lanes = xnor_lanes64(n);
    __m512i x = _mm512_maskz_loadu_epi8(lanes, p);
    return _mm512_mask_cmpge_epi8_mask(lanes, x, _mm512_setzero_si512());
}

/* The wider integers: 64 / L groups of L lanes of BITS bits. */
#define XNOR_M64_INT_512(BITS, L, MASK)                                                      \
    XNOR_AVX512_ATTR static inline uint64_t xnor_m64_i##BITS##_avx512(const int##BITS##_t *p, \
                                                                      int n)                 \
    {                                                                                        \
        uint64_t m = 0;                                                                      \
        for (int g = 0; g < 64 / (L); g++) {                                                 \
            MASK lanes = (MASK)xnor_lanes64(n - (L) * g);                                    \
            __m512i x = _mm512_maskz_loadu_epi##BITS(lanes, p + (L) * g);                    \
            m |= (uint64_t)_mm512_mask_cmpge_epi##BITS##_mask(lanes, x, _mm512_setzero_si512()) \
                 << ((L) * g);                                                               \
        }                                                                                    \
        return m;                                                                            \
    }
XNOR_M64_INT_512(16, 32, __mmask32)
XNOR_M64_INT_512(32, 16, __mmask16)
XNOR_M64_INT_512(64, 8, __mmask8)
#undef XNOR_M64_INT_512

XNOR_AVX512_ATTR static uint64_t xnor_mask64_avx512(int dtype, const void *p, int n, int *nan)
{
    switch (dtype) {
    case XNOR_I8: return xnor_m64_i8_avx512((const int8_t *)p, n);
    case XNOR_I16: return xnor_m64_i16_avx512((const int16_t *)p, n);
    case XNOR_I32: return xnor_m64_i32_avx512((const int32_t *)p, n);
    case XNOR_I64: return xnor_m64_i64_avx512((const int64_t *)p, n);
    case XNOR_F32: return xnor_m64_f32_avx512((const float *)p, n, nan);
    default: return xnor_m64_f64_avx512((const double *)p, n, nan);
    }
}

/* xnor_transpose64 on eight zmm registers (lane l of register i is a[8 i + l]):
 * the swaps across 32, 16 and 8 rows pair registers, those across 4, 2 and 1
 * rows pair lanes through a permute.  About 260 vector ops instead of 1300
 * scalar ones: column packing would otherwise spend most of its time here. */
XNOR_AVX512_ATTR static void xnor_transpose64_avx512(uint64_t a[64])
{
    __m512i v[8];
    for (int i = 0; i < 8; i++)
        v[i] = _mm512_loadu_si512(a + 8 * i);
    static const uint64_t masks[6] = {0x00000000FFFFFFFFULL, 0x0000FFFF0000FFFFULL,
                                      0x00FF00FF00FF00FFULL, 0x0F0F0F0F0F0F0F0FULL,
                                      0x3333333333333333ULL, 0x5555555555555555ULL};
    for (int stage = 0; stage < 3; stage++) {
        int j = 32 >> stage, d = j / 8;
        __m512i m = _mm512_set1_epi64((long long)masks[stage]);
        __m512i sh = _mm512_set1_epi64(j);
        for (int i = 0; i < 8; i++) {
            if (i & d)
                continue;
            __m512i t = _mm512_and_si512(_mm512_xor_si512(_mm512_srlv_epi64(v[i], sh), v[i + d]), m);
            v[i] = _mm512_xor_si512(v[i], _mm512_sllv_epi64(t, sh));
            v[i + d] = _mm512_xor_si512(v[i + d], t);
        }
    }
    for (int stage = 3; stage < 6; stage++) {
        int j = 32 >> stage; /* 4, 2, 1: partner lane l ^ j */
        __m512i m = _mm512_set1_epi64((long long)masks[stage]);
        __m512i sh = _mm512_set1_epi64(j);
        __m512i partner = _mm512_set_epi64(7 ^ j, 6 ^ j, 5 ^ j, 4 ^ j, 3 ^ j, 2 ^ j, 1 ^ j, 0 ^ j);
        /* lanes whose index has bit j clear hold the upper row of their pair */
        __mmask8 low = (__mmask8)(j == 4 ? 0x0F : j == 2 ? 0x33 : 0x55);
        for (int i = 0; i < 8; i++) {
            __m512i p = _mm512_permutexvar_epi64(partner, v[i]);
            __m512i hi = _mm512_mask_blend_epi64(low, p, v[i]);  /* a[k]     */
            __m512i lo = _mm512_mask_blend_epi64(low, v[i], p);  /* a[k | j] */
            __m512i t = _mm512_and_si512(_mm512_xor_si512(_mm512_srlv_epi64(hi, sh), lo), m);
            __m512i upd = _mm512_mask_blend_epi64(low, t, _mm512_sllv_epi64(t, sh));
            v[i] = _mm512_xor_si512(v[i], upd);
        }
    }
    for (int i = 0; i < 8; i++)
        _mm512_storeu_si512(a + 8 * i, v[i]);
}

/* One loop per dtype so that the full words compile to straight-line code. */
#define XNOR_PACK_ROW_512(T, CALL)                                                           \
    {                                                                                        \
        const T *q = (const T *)x;                                                           \
        int64_t w = start;                                                                   \
        for (; w + 64 <= length; w += 64) {                                                  \
            const T *p = q + w;                                                              \
            int n = 64;                                                                      \
            out[w / 64] = CALL;                                                              \
        }                                                                                    \
        if (w < length) {                                                                    \
            const T *p = q + w;                                                              \
            int n = (int)(length - w);                                                       \
            out[w / 64] = CALL;                                                              \
        }                                                                                    \
        return nan;                                                                          \
    }

/* The full words of a float32 row, from aligned 64-byte vectors: numpy gives
 * 16-byte alignment, and a load across two cache lines costs twice as much.
 * Vector j starts k floats before element 16 j of the row (k = the row's
 * offset within its cache line), so word w is the 80 compare bits of vectors
 * 4 w to 4 w + 4 shifted right by k; vector 4 w + 4 carries over to the next
 * word.  Masked loads read no element outside the row.  The NaN test costs no
 * compare: (a + b + c + d) * 0 is NaN where any of the four is, and 0 where
 * all are finite and so is their sum; the sums accumulate over the row.
 * Infinities and sums past FLT_MAX also give NaN: then (rarely) the row is
 * checked again exactly.  Returns the words done (none off the 4-byte grid). */
XNOR_AVX512_ATTR static int64_t xnor_pack_words_f32_avx512(const float *q, int64_t length,
                                                           uint64_t *out, int *nan)
{
    const int64_t words = length / 64;
    const uintptr_t address = (uintptr_t)q;
    if (words == 0 || address % 4)
        return 0; /* no full word, or not even float-aligned (rare): the general loop takes the row */
    const __m512 zero = _mm512_setzero_ps();
    __m512 acc = zero;
    const int k = (int)(address % 64 / 4);
    const float *base = q - k;
    /* vector 0: the k floats before the row masked off */
    __m512 e = _mm512_maskz_load_ps((__mmask16)(0xFFFFu << k), base);
    uint64_t carry = _mm512_cmp_ps_mask(e, zero, _CMP_GE_OQ);
    acc = _mm512_add_ps(acc, _mm512_mul_ps(e, zero));
    for (int64_t w = 0; w < words; w++) {
        const float *p = base + 64 * w;
        __m512 b = _mm512_load_ps(p + 16), c = _mm512_load_ps(p + 32), d = _mm512_load_ps(p + 48);
        /* vector 4 w + 4 holds floats 64 w + 64 - k to 64 w + 79 - k of the row */
        int64_t left = length - (64 * w + 64 - k);
        __m512 f = left >= 16 ? _mm512_load_ps(p + 64)
                              : _mm512_maskz_load_ps((__mmask16)((1u << left) - 1), p + 64);
        uint64_t next = _mm512_cmp_ps_mask(f, zero, _CMP_GE_OQ);
        uint64_t lo = carry | (uint64_t)_mm512_cmp_ps_mask(b, zero, _CMP_GE_OQ) << 16
                      | (uint64_t)_mm512_cmp_ps_mask(c, zero, _CMP_GE_OQ) << 32
                      | (uint64_t)_mm512_cmp_ps_mask(d, zero, _CMP_GE_OQ) << 48;
        out[w] = lo >> k | next << (63 - k) << 1; /* k = 0: no bit of next */
        acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_add_ps(_mm512_add_ps(b, c), _mm512_add_ps(d, f)), zero));
        carry = next;
    }
    if (_mm512_cmp_ps_mask(acc, acc, _CMP_UNORD_Q)) {
        for (int64_t v = 0; v < length && !*nan; v += 16) {
            __m512 x = _mm512_maskz_loadu_ps((__mmask16)xnor_lanes64((int)(length - v < 16 ? length - v : 16)), q + v);
            *nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q) != 0;
        }
    }
    return words;
}

XNOR_AVX512_ATTR static int xnor_pack_row_avx512(int dtype, const void *x, int64_t length,
                                                 uint64_t *out)
{
    int nan = 0;
    /* float32: the full words first, the loop below the tail */
    const int64_t start = dtype == XNOR_F32 ? 64 * xnor_pack_words_f32_avx512((const float *)x, length, out, &nan) : 0;
    switch (dtype) {
    case XNOR_I8: XNOR_PACK_ROW_512(int8_t, xnor_m64_i8_avx512(p, n))
    case XNOR_I16: XNOR_PACK_ROW_512(int16_t, xnor_m64_i16_avx512(p, n))
    case XNOR_I32: XNOR_PACK_ROW_512(int32_t, xnor_m64_i32_avx512(p, n))
    case XNOR_I64: XNOR_PACK_ROW_512(int64_t, xnor_m64_i64_avx512(p, n))
    case XNOR_F32: XNOR_PACK_ROW_512(float, xnor_m64_f32_avx512(p, n, &nan))
    default: XNOR_PACK_ROW_512(double, xnor_m64_f64_avx512(p, n, &nan))
    }
}
#undef XNOR_PACK_ROW_512

XNOR_AVX512_ATTR static int xnor_pack_cols_band_avx512(int dtype, const void *x,
                                                        int64_t length, int64_t rows,
                                                       uint64_t *out, int64_t kw, int64_t c0,
                                                       int64_t c1, uint64_t *buffer)
{
    return xnor_pack_cols_band_with(xnor_mask64_avx512, xnor_transpose64_avx512, dtype, x,
                                    length, rows, out, kw, c0, c1, buffer);
}

/* 8 rows x 24 columns: 24 zmm accumulators of 64-bit counts, 3 zmm of B and
 * one broadcast word of A in flight (28 of 32 registers); 11 loads feed 72
 * vector ops.  Three ops per 512 bits (xor, popcount, add) is the floor: a
 * carry-save (Harley-Seal) sum trades popcounts for as many ternary-logic ops.
 * On Zen 4 this runs at about 1.5 cycles per 512-bit step, 1.2 T bit-MAC/s on
 * one core with L1-resident data. */
#define XNOR_AVX512_MR 8
#define XNOR_AVX512_NR 24

/* One row of A against up to three vectors of B (vecs of them), and the store
 * of a row of the tile: k - 2 s (first) or minus 2 s, masked to ncols.  Shared
 * by the GEMM and conv tiles below. */
#define XNOR_CNT(acc, x, b) acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_xor_si512(x, b)))
#define XNOR_512_ROW(ar, t0, t1, t2)                                                         \
    do {                                                                                     \
        __m512i x_ = _mm512_set1_epi64((long long)ar[w]);                                    \
        XNOR_CNT(t0, x_, b0);                                                                \
        if (vecs > 1)                                                                        \
            XNOR_CNT(t1, x_, b1);                                                            \
        if (vecs > 2)                                                                        \
            XNOR_CNT(t2, x_, b2);                                                            \
    } while (0)
#define XNOR_512_STORE1(r, s, g, lanes)                                                      \
    do {                                                                                     \
        int32_t *dst_ = c + (r) * ldc + 8 * (g);                                             \
        __m256i cnt_ = _mm512_cvtepi64_epi32(s);                                             \
        __m256i base_ = first ? kv : _mm256_maskz_loadu_epi32(lanes, dst_);                  \
        _mm256_mask_storeu_epi32(dst_, lanes, _mm256_sub_epi32(base_, _mm256_add_epi32(cnt_, cnt_))); \
    } while (0)
#define XNOR_512_STORE(r, t0, t1, t2)                                                        \
    if ((r) < mr) {                                                                          \
        XNOR_512_STORE1(r, t0, 0, lanes0);                                                   \
        XNOR_512_STORE1(r, t1, 1, lanes1);                                                   \
        XNOR_512_STORE1(r, t2, 2, lanes2);                                                   \
    }

/* The 24 accumulators of a tile, all its rows for one word, and all its stores. */
#define XNOR_512_ACCUMULATORS()                                                              \
    __m512i s00, s01, s02, s10, s11, s12, s20, s21, s22, s30, s31, s32;                      \
    __m512i s40, s41, s42, s50, s51, s52, s60, s61, s62, s70, s71, s72;                      \
    s00 = s01 = s02 = s10 = s11 = s12 = s20 = s21 = s22 = s30 = s31 = s32 =                  \
        _mm512_setzero_si512();                                                              \
    s40 = s41 = s42 = s50 = s51 = s52 = s60 = s61 = s62 = s70 = s71 = s72 = s00
#define XNOR_512_ROWS()                                                                      \
    do {                                                                                     \
        XNOR_512_ROW(a0, s00, s01, s02);                                                     \
        XNOR_512_ROW(a1, s10, s11, s12);                                                     \
        XNOR_512_ROW(a2, s20, s21, s22);                                                     \
        XNOR_512_ROW(a3, s30, s31, s32);                                                     \
        XNOR_512_ROW(a4, s40, s41, s42);                                                     \
        XNOR_512_ROW(a5, s50, s51, s52);                                                     \
        XNOR_512_ROW(a6, s60, s61, s62);                                                     \
        XNOR_512_ROW(a7, s70, s71, s72);                                                     \
    } while (0)
#define XNOR_512_STORES()                                                                    \
    do {                                                                                     \
        const __m256i kv = _mm256_set1_epi32((int32_t)k);                                    \
        __mmask8 lanes0 = (__mmask8)xnor_lanes64(ncols);                                     \
        __mmask8 lanes1 = (__mmask8)xnor_lanes64(ncols - 8);                                 \
        __mmask8 lanes2 = (__mmask8)xnor_lanes64(ncols - 16);                                \
        XNOR_512_STORE(0, s00, s01, s02)                                                     \
        XNOR_512_STORE(1, s10, s11, s12)                                                     \
        XNOR_512_STORE(2, s20, s21, s22)                                                     \
        XNOR_512_STORE(3, s30, s31, s32)                                                     \
        XNOR_512_STORE(4, s40, s41, s42)                                                     \
        XNOR_512_STORE(5, s50, s51, s52)                                                     \
        XNOR_512_STORE(6, s60, s61, s62)                                                     \
        XNOR_512_STORE(7, s70, s71, s72)                                                     \
    } while (0)

XNOR_AVX512_ATTR static void xnor_ukernel_avx512(const uint64_t *const *a,
                                                 const uint64_t *panel, int64_t nw,
                                                 int32_t *c, int64_t ldc, int mr, int ncols,
                                                 int64_t k, int first)
{
    const int vecs = 3;
    const uint64_t *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3];
    const uint64_t *a4 = a[4], *a5 = a[5], *a6 = a[6], *a7 = a[7];
    XNOR_512_ACCUMULATORS();
    for (int64_t w = 0; w < nw; w++) {
        const uint64_t *b = panel + w * XNOR_AVX512_NR;
        __m512i b0 = _mm512_loadu_si512(b);
        __m512i b1 = _mm512_loadu_si512(b + 8);
        __m512i b2 = _mm512_loadu_si512(b + 16);
        XNOR_512_ROWS();
    }
    XNOR_512_STORES();
}

/* The convolution tile: the 8 x 24 tile above over an indirection buffer of
 * `taps` segments, segment t of row r at a[8 t + r], summed in registers
 * across all segments (no store between them).  `vecs` (a constant once
 * inlined) is how many of the three 8-column groups are computed: a last
 * panel of at most 16 or 8 columns (O = 64 gives 24 + 24 + 16) skips the
 * others instead of counting padding. */
#define XNOR_512_CONV_SUMS()                                                                 \
    do {                                                                                     \
        const uint64_t *b = panel;                                                           \
        for (int tap = 0; tap < taps; tap++) {                                               \
            const uint64_t *const *at = a + 8 * tap;                                         \
            const uint64_t *a0 = at[0], *a1 = at[1], *a2 = at[2], *a3 = at[3];               \
            const uint64_t *a4 = at[4], *a5 = at[5], *a6 = at[6], *a7 = at[7];               \
            for (int64_t w = 0; w < nw; w++, b += XNOR_AVX512_NR) {                          \
                __m512i b0 = _mm512_loadu_si512(b);                                          \
                __m512i b1 = vecs > 1 ? _mm512_loadu_si512(b + 8) : b0;                      \
                __m512i b2 = vecs > 2 ? _mm512_loadu_si512(b + 16) : b0;                     \
                XNOR_512_ROWS();                                                             \
            }                                                                                \
        }                                                                                    \
    } while (0)

__attribute__((always_inline)) XNOR_AVX512_ATTR static inline void xnor_conv_tile_avx512(
    const uint64_t *const *a, int taps, const uint64_t *panel, int64_t nw, int32_t *c,
    int64_t ldc, int mr, int ncols, int64_t k, const int vecs)
{
    const int first = 1;
    XNOR_512_ACCUMULATORS();
    XNOR_512_CONV_SUMS();
    XNOR_512_STORES();
}

/* The same tile with the threshold compared in registers: bit col + jj of
 * row r of the words bits (row stride ldb) is or-ed with that of count >
 * half[r][col + jj], flipped where bit jj of flip is set: the caller's
 * bounds of the folded batch norm, one row of them per tile row (the
 * zero-padding corrections of a row with padded taps are in its bounds).
 * No sum is stored. */
#define XNOR_512_BITS(s, r, g)                                                               \
    ((uint32_t)_mm512_cmpgt_epi64_mask(s, _mm512_maskz_loadu_epi64(lanes##g, half[r] + col + 8 * (g))) \
     << (8 * (g)))
#define XNOR_512_BITROW(r, t0, t1, t2)                                                       \
    if ((r) < mr) {                                                                          \
        uint64_t m_ = ((XNOR_512_BITS(t0, r, 0) | (vecs > 1 ? XNOR_512_BITS(t1, r, 1) : 0) | \
                        (vecs > 2 ? XNOR_512_BITS(t2, r, 2) : 0)) ^ flip) & keep;            \
        uint64_t *dst_ = bits + (r) * ldb + (col >> 6);                                      \
        dst_[0] |= m_ << shift;                                                              \
        if (shift + ncols > 64)                                                              \
            dst_[1] |= m_ >> (64 - shift);                                                   \
    }
__attribute__((always_inline)) XNOR_AVX512_ATTR static inline void xnor_conv_bits_tile_avx512(
    const uint64_t *const *a, int taps, const uint64_t *panel, int64_t nw, uint64_t *bits,
    int64_t ldb, int mr, int ncols, const int64_t *const *half, int64_t col, uint32_t flip,
    const int vecs)
{
    XNOR_512_ACCUMULATORS();
    XNOR_512_CONV_SUMS();
    const uint32_t keep = ncols >= 32 ? ~0u : (1u << ncols) - 1;
    const int shift = (int)(col & 63);
    const __mmask8 lanes0 = (__mmask8)xnor_lanes64(ncols);
    const __mmask8 lanes1 = (__mmask8)xnor_lanes64(ncols - 8);
    const __mmask8 lanes2 = (__mmask8)xnor_lanes64(ncols - 16);
    XNOR_512_BITROW(0, s00, s01, s02);
    XNOR_512_BITROW(1, s10, s11, s12);
    XNOR_512_BITROW(2, s20, s21, s22);
    XNOR_512_BITROW(3, s30, s31, s32);
    XNOR_512_BITROW(4, s40, s41, s42);
    XNOR_512_BITROW(5, s50, s51, s52);
    XNOR_512_BITROW(6, s60, s61, s62);
    XNOR_512_BITROW(7, s70, s71, s72);
}
#undef XNOR_512_BITROW
#undef XNOR_512_BITS
#undef XNOR_512_CONV_SUMS
#undef XNOR_512_STORES
#undef XNOR_512_ROWS
#undef XNOR_512_ACCUMULATORS
#undef XNOR_512_STORE
#undef XNOR_512_STORE1
#undef XNOR_512_ROW
#undef XNOR_CNT

/* 16 lanes at a time, masked loads for the last word (nothing read past n). */
XNOR_AVX512_ATTR static void xnor_threshold_pack_avx512(const int32_t *z, const int8_t *direction,
                                                        const int32_t *threshold, int64_t n,
                                                        uint64_t *out)
{
    const __m512i zero = _mm512_setzero_si512();
    for (int64_t w0 = 0; w0 < n; w0 += 64) {
        int len = n - w0 < 64 ? (int)(n - w0) : 64;
        uint64_t m = 0;
        for (int g = 0; g < 4; g++) {
            int64_t j = w0 + 16 * g;
            __mmask16 lanes = (__mmask16)xnor_lanes64(len - 16 * g);
            /* direction * z without a multiply: z where 1, 0 - z where -1
             * (the same wrap-around), 0 where 0 */
            __m128i d = _mm_maskz_loadu_epi8(lanes, direction + j);
            __mmask16 nonzero = _mm_mask_test_epi8_mask(lanes, d, d);
            __mmask16 negative = _mm_mask_cmplt_epi8_mask(lanes, d, _mm_setzero_si128());
            __m512i dz = _mm512_maskz_loadu_epi32(nonzero, z + j);
            dz = _mm512_mask_sub_epi32(dz, negative, zero, dz);
            __m512i v = _mm512_sub_epi32(dz, _mm512_maskz_loadu_epi32(lanes, threshold + j));
            m |= (uint64_t)_mm512_mask_cmpge_epi32_mask(lanes, v, zero) << (16 * g);
        }
        out[w0 / 64] = m;
    }
}

/* The same over rows: the direction masks and thresholds of each 64
 * channels are loaded once and kept in registers for all rows, leaving per
 * 16 sums a load, two subtractions and a compare. */
XNOR_AVX512_ATTR static void xnor_threshold_pack_rows_avx512(const int32_t *z, int64_t ldz,
                                                             const int8_t *direction,
                                                             const int32_t *threshold, int64_t n,
                                                             int64_t rows, uint64_t *out,
                                                             int64_t ldo)
{
    const __m512i zero = _mm512_setzero_si512();
    for (int64_t w0 = 0; w0 < n; w0 += 64) {
        int len = n - w0 < 64 ? (int)(n - w0) : 64;
        __mmask16 lanes[4], nonzero[4], negative[4];
        __m512i t[4];
        for (int g = 0; g < 4; g++) {
            int64_t j = w0 + 16 * g;
            lanes[g] = (__mmask16)xnor_lanes64(len - 16 * g);
            __m128i d = _mm_maskz_loadu_epi8(lanes[g], direction + j);
            nonzero[g] = _mm_mask_test_epi8_mask(lanes[g], d, d);
            negative[g] = _mm_mask_cmplt_epi8_mask(lanes[g], d, _mm_setzero_si128());
            t[g] = _mm512_maskz_loadu_epi32(lanes[g], threshold + j);
        }
        const int32_t *zr = z + w0;
        uint64_t *o = out + w0 / 64;
        for (int64_t r = 0; r < rows; r++, zr += ldz, o += ldo) {
            uint64_t m = 0;
            for (int g = 0; g < 4; g++) {
                /* as threshold_pack: z where 1, 0 - z where -1, 0 where 0 */
                __m512i dz = _mm512_maskz_loadu_epi32(nonzero[g], zr + 16 * g);
                dz = _mm512_mask_sub_epi32(dz, negative[g], zero, dz);
                __m512i v = _mm512_sub_epi32(dz, t[g]);
                m |= (uint64_t)_mm512_mask_cmpge_epi32_mask(lanes[g], v, zero) << (16 * g);
            }
            *o = m;
        }
    }
}

XNOR_AVX512_ATTR static void xnor_conv_ukernel_avx512(const uint64_t *const *a, int taps,
                                                      const uint64_t *panel, int64_t nw,
                                                      int32_t *c, int64_t ldc, int mr,
                                                      int ncols, int64_t k)
{
    if (ncols > 16)
        xnor_conv_tile_avx512(a, taps, panel, nw, c, ldc, mr, ncols, k, 3);
    else if (ncols > 8)
        xnor_conv_tile_avx512(a, taps, panel, nw, c, ldc, mr, ncols, k, 2);
    else
        xnor_conv_tile_avx512(a, taps, panel, nw, c, ldc, mr, ncols, k, 1);
}

XNOR_AVX512_ATTR static void xnor_conv_bits_avx512(const uint64_t *const *a, int taps,
                                                   const uint64_t *panel, int64_t nw,
                                                   uint64_t *bits, int64_t ldb, int mr, int ncols,
                                                   const int64_t *const *half, int64_t col,
                                                   uint32_t flip)
{
    if (ncols > 16)
        xnor_conv_bits_tile_avx512(a, taps, panel, nw, bits, ldb, mr, ncols, half, col, flip, 3);
    else if (ncols > 8)
        xnor_conv_bits_tile_avx512(a, taps, panel, nw, bits, ldb, mr, ncols, half, col, flip, 2);
    else
        xnor_conv_bits_tile_avx512(a, taps, panel, nw, bits, ldb, mr, ncols, half, col, flip, 1);
}

XNOR_INPUT_SUMS(xnor_input_sums_avx512, __attribute__((target("avx512f"))), 64)
XNOR_SIGNED_SUMS(xnor_signed_sums_avx512, __attribute__((target("avx512f"))))
XNOR_REAL_POOL(xnor_real_pool_avx512, __attribute__((target("avx512f"))), 64)
#endif /* XNOR_X86 */

#endif /* XNORCORE_CSRC_AVX512_H */
