/* XNOR-popcount kernels for xnorcore._bitpack: sign packing and the binary GEMM.
 *
 * Several variants are compiled into one object with per-function target
 * attributes, so the build needs no -march flag and the binary runs on any
 * x86-64 (or any other CPU, where only the generic variant exists).  The
 * variant is chosen at run time (see xnor_cpu_has) and reached through a
 * table of function pointers, as c-blosc's shuffle.c does.
 *
 * Layout (see xnorcore/ops.py): bit j of word w holds element 64 w + j, a set
 * bit is x >= 0 (+1), padding bits are 0.  The GEMM reads A as (M, W) words
 * and B as (N, W) words and writes C = k - 2 popcount(a ^ b) as int32.  B is
 * first copied into panels of NR columns interleaved word by word
 * (panel[w][jj]), so that one vector load brings the same word of NR columns
 * and a broadcast word of A is compared with all of them: no horizontal sums.
 */
#ifndef XNORCORE_XNOR_SIMD_H
#define XNORCORE_XNOR_SIMD_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* XNOR_NO_X86 builds only the portable variant, as on other CPUs (for tests). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(XNOR_NO_X86)
#define XNOR_X86 1
#include <cpuid.h>
#include <immintrin.h>
#else
#define XNOR_X86 0
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

/* One popcount variant.  Arguments: x, a, panel are inputs; out and c are
 * outputs (c is read too after the first K block); buffer is scratch. */
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
} xnor_kernels;

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
        m |= (uint64_t)(q[i] >= 0) << i;                                                     \
        bad |= (q[i] != q[i]);                                                               \
    }                                                                                        \
    *nan |= bad;                                                                             \
    return m;

#define XNOR_CAT2(a, b) a##_##b
#define XNOR_CAT(a, b) XNOR_CAT2(a, b)
#define XNOR_FN(name) XNOR_CAT(xnor_##name, XNOR_SFX)

/* ---------------------------------------------------------- generic, scalar */

#define XNOR_SFX generic
#define XNOR_ATTR
#include "_xnor_portable.h"
#undef XNOR_SFX
#undef XNOR_ATTR

#if XNOR_X86
#define XNOR_SFX scalar
#define XNOR_ATTR __attribute__((target("popcnt")))
#include "_xnor_portable.h"
#undef XNOR_SFX
#undef XNOR_ATTR
#endif

#if XNOR_X86
/* ------------------------------------------------------------------- AVX2 */

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

XNOR_AVX2_ATTR static int xnor_pack_row_avx2(int dtype, const void *x, int64_t length,
                                             uint64_t *out)
{
    int nan = 0;
    const char *p = (const char *)x;
    size_t step = 64 * xnor_itemsize(dtype);
    for (int64_t w = 0; w < length; w += 64, p += step) {
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

XNOR_AVX2_ATTR static void xnor_ukernel_avx2(const uint64_t *const *a, const uint64_t *panel,
                                             int64_t nw, int32_t *c, int64_t ldc, int mr,
                                             int ncols, int64_t k, int first)
{
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1,
                                         1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    const __m256i zero = _mm256_setzero_si256();
    __m256i t00 = zero, t01 = zero, t10 = zero, t11 = zero;
    __m256i t20 = zero, t21 = zero, t30 = zero, t31 = zero;
    const uint64_t *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3];
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
    for (int64_t w0 = 0; w0 < nw; w0 += 31) {
        int64_t w1 = nw - w0 < 31 ? nw : w0 + 31;
        __m256i s00 = zero, s01 = zero, s10 = zero, s11 = zero;
        __m256i s20 = zero, s21 = zero, s30 = zero, s31 = zero;
        for (int64_t w = w0; w < w1; w++) {
            __m256i b0 = _mm256_loadu_si256((const __m256i *)(panel + w * XNOR_AVX2_NR));
            __m256i b1 = _mm256_loadu_si256((const __m256i *)(panel + w * XNOR_AVX2_NR + 4));
            XNOR_AVX2_ROW(a0, s00, s01);
            XNOR_AVX2_ROW(a1, s10, s11);
            XNOR_AVX2_ROW(a2, s20, s21);
            XNOR_AVX2_ROW(a3, s30, s31);
        }
        t00 = _mm256_add_epi64(t00, _mm256_sad_epu8(s00, zero));
        t01 = _mm256_add_epi64(t01, _mm256_sad_epu8(s01, zero));
        t10 = _mm256_add_epi64(t10, _mm256_sad_epu8(s10, zero));
        t11 = _mm256_add_epi64(t11, _mm256_sad_epu8(s11, zero));
        t20 = _mm256_add_epi64(t20, _mm256_sad_epu8(s20, zero));
        t21 = _mm256_add_epi64(t21, _mm256_sad_epu8(s21, zero));
        t30 = _mm256_add_epi64(t30, _mm256_sad_epu8(s30, zero));
        t31 = _mm256_add_epi64(t31, _mm256_sad_epu8(s31, zero));
    }
#undef XNOR_AVX2_ROW
#undef XNOR_NIB
    uint64_t s[XNOR_AVX2_MR][XNOR_AVX2_NR];
    _mm256_storeu_si256((__m256i *)&s[0][0], t00);
    _mm256_storeu_si256((__m256i *)&s[0][4], t01);
    _mm256_storeu_si256((__m256i *)&s[1][0], t10);
    _mm256_storeu_si256((__m256i *)&s[1][4], t11);
    _mm256_storeu_si256((__m256i *)&s[2][0], t20);
    _mm256_storeu_si256((__m256i *)&s[2][4], t21);
    _mm256_storeu_si256((__m256i *)&s[3][0], t30);
    _mm256_storeu_si256((__m256i *)&s[3][4], t31);
    xnor_store_tile(&s[0][0], XNOR_AVX2_NR, c, ldc, mr, ncols, k, first);
}

/* ---------------------------------------------------------------- AVX-512 */

#define XNOR_AVX512_ATTR                                                                     \
    __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vpopcntdq,popcnt")))

static inline XNOR_AVX512_ATTR __mmask64 xnor_lanes64(int n)
{
    return n >= 64 ? ~(__mmask64)0 : n <= 0 ? 0 : (((__mmask64)1 << n) - 1);
}

/* 64 elements (n of them valid) -> one word, with masked loads for the tail
 * so that no byte past the row is read and padding bits stay 0. */
XNOR_AVX512_ATTR static inline uint64_t xnor_m64_f32_avx512(const float *p, int n, int *nan)
{
    uint64_t m = 0;
    __mmask16 bad = 0;
    const __m512 zero = _mm512_setzero_ps();
    for (int g = 0; g < 4; g++) {
        __mmask16 lanes = (__mmask16)xnor_lanes64(n - 16 * g);
        __m512 x = _mm512_maskz_loadu_ps(lanes, p + 16 * g);
        m |= (uint64_t)_mm512_mask_cmp_ps_mask(lanes, x, zero, _CMP_GE_OQ) << (16 * g);
        bad |= _mm512_mask_cmp_ps_mask(lanes, x, x, _CMP_UNORD_Q);
    }
    *nan |= bad != 0;
    return m;
}

XNOR_AVX512_ATTR static inline uint64_t xnor_m64_f64_avx512(const double *p, int n, int *nan)
{
    uint64_t m = 0;
    __mmask8 bad = 0;
    const __m512d zero = _mm512_setzero_pd();
    for (int g = 0; g < 8; g++) {
        __mmask8 lanes = (__mmask8)xnor_lanes64(n - 8 * g);
        __m512d x = _mm512_maskz_loadu_pd(lanes, p + 8 * g);
        m |= (uint64_t)_mm512_mask_cmp_pd_mask(lanes, x, zero, _CMP_GE_OQ) << (8 * g);
        bad |= _mm512_mask_cmp_pd_mask(lanes, x, x, _CMP_UNORD_Q);
    }
    *nan |= bad != 0;
    return m;
}

XNOR_AVX512_ATTR static inline uint64_t xnor_m64_i8_avx512(const int8_t *p, int n)
{
    __mmask64 lanes = xnor_lanes64(n);
    __m512i x = _mm512_maskz_loadu_epi8(lanes, p);
    return _mm512_mask_cmpge_epi8_mask(lanes, x, _mm512_setzero_si512());
}

XNOR_AVX512_ATTR static inline uint64_t xnor_m64_i16_avx512(const int16_t *p, int n)
{
    uint64_t m = 0;
    for (int g = 0; g < 2; g++) {
        __mmask32 lanes = (__mmask32)xnor_lanes64(n - 32 * g);
        __m512i x = _mm512_maskz_loadu_epi16(lanes, p + 32 * g);
        m |= (uint64_t)_mm512_mask_cmpge_epi16_mask(lanes, x, _mm512_setzero_si512()) << (32 * g);
    }
    return m;
}

XNOR_AVX512_ATTR static inline uint64_t xnor_m64_i32_avx512(const int32_t *p, int n)
{
    uint64_t m = 0;
    for (int g = 0; g < 4; g++) {
        __mmask16 lanes = (__mmask16)xnor_lanes64(n - 16 * g);
        __m512i x = _mm512_maskz_loadu_epi32(lanes, p + 16 * g);
        m |= (uint64_t)_mm512_mask_cmpge_epi32_mask(lanes, x, _mm512_setzero_si512()) << (16 * g);
    }
    return m;
}

XNOR_AVX512_ATTR static inline uint64_t xnor_m64_i64_avx512(const int64_t *p, int n)
{
    uint64_t m = 0;
    for (int g = 0; g < 8; g++) {
        __mmask8 lanes = (__mmask8)xnor_lanes64(n - 8 * g);
        __m512i x = _mm512_maskz_loadu_epi64(lanes, p + 8 * g);
        m |= (uint64_t)_mm512_mask_cmpge_epi64_mask(lanes, x, _mm512_setzero_si512()) << (8 * g);
    }
    return m;
}

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
        int64_t w = 0;                                                                       \
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

XNOR_AVX512_ATTR static int xnor_pack_row_avx512(int dtype, const void *x, int64_t length,
                                                 uint64_t *out)
{
    int nan = 0;
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

XNOR_AVX512_ATTR static void xnor_ukernel_avx512(const uint64_t *const *a,
                                                 const uint64_t *panel, int64_t nw,
                                                 int32_t *c, int64_t ldc, int mr, int ncols,
                                                 int64_t k, int first)
{
    const uint64_t *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3];
    const uint64_t *a4 = a[4], *a5 = a[5], *a6 = a[6], *a7 = a[7];
    __m512i s00, s01, s02, s10, s11, s12, s20, s21, s22, s30, s31, s32;
    __m512i s40, s41, s42, s50, s51, s52, s60, s61, s62, s70, s71, s72;
    s00 = s01 = s02 = s10 = s11 = s12 = s20 = s21 = s22 = s30 = s31 = s32 = _mm512_setzero_si512();
    s40 = s41 = s42 = s50 = s51 = s52 = s60 = s61 = s62 = s70 = s71 = s72 = s00;
#define XNOR_CNT(acc, x, b) acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_xor_si512(x, b)))
#define XNOR_512_ROW(ar, t0, t1, t2)                                                         \
    do {                                                                                     \
        __m512i x_ = _mm512_set1_epi64((long long)ar[w]);                                    \
        XNOR_CNT(t0, x_, b0);                                                                \
        XNOR_CNT(t1, x_, b1);                                                                \
        XNOR_CNT(t2, x_, b2);                                                                \
    } while (0)
    for (int64_t w = 0; w < nw; w++) {
        const uint64_t *b = panel + w * XNOR_AVX512_NR;
        __m512i b0 = _mm512_loadu_si512(b);
        __m512i b1 = _mm512_loadu_si512(b + 8);
        __m512i b2 = _mm512_loadu_si512(b + 16);
        XNOR_512_ROW(a0, s00, s01, s02);
        XNOR_512_ROW(a1, s10, s11, s12);
        XNOR_512_ROW(a2, s20, s21, s22);
        XNOR_512_ROW(a3, s30, s31, s32);
        XNOR_512_ROW(a4, s40, s41, s42);
        XNOR_512_ROW(a5, s50, s51, s52);
        XNOR_512_ROW(a6, s60, s61, s62);
        XNOR_512_ROW(a7, s70, s71, s72);
    }
#undef XNOR_512_ROW
#undef XNOR_CNT
    const __m256i kv = _mm256_set1_epi32((int32_t)k);
    __mmask8 lanes0 = (__mmask8)xnor_lanes64(ncols);
    __mmask8 lanes1 = (__mmask8)xnor_lanes64(ncols - 8);
    __mmask8 lanes2 = (__mmask8)xnor_lanes64(ncols - 16);
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
    XNOR_512_STORE(0, s00, s01, s02)
    XNOR_512_STORE(1, s10, s11, s12)
    XNOR_512_STORE(2, s20, s21, s22)
    XNOR_512_STORE(3, s30, s31, s32)
    XNOR_512_STORE(4, s40, s41, s42)
    XNOR_512_STORE(5, s50, s51, s52)
    XNOR_512_STORE(6, s60, s61, s62)
    XNOR_512_STORE(7, s70, s71, s72)
#undef XNOR_512_STORE
#undef XNOR_512_STORE1
}

/* ------------------------------------------------------------ CPU detection */

/* Whether the OS saves the register state given by `mask` (XCR0 bits) on a
 * context switch: a CPU may have AVX-512 that the kernel does not enable. */
static int xnor_os_saves(uint64_t mask)
{
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & bit_OSXSAVE))
        return 0;
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((((uint64_t)hi << 32) | lo) & mask) == mask;
}
#endif /* XNOR_X86 */

/* Whether this CPU (and OS) can run variant v. */
static int xnor_cpu_has(int v)
{
#if XNOR_X86
    __builtin_cpu_init();
    switch (v) {
    case XNOR_GENERIC: return 1;
    case XNOR_SCALAR: return __builtin_cpu_supports("popcnt") != 0;
    case XNOR_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt") &&
               xnor_os_saves(0x6); /* SSE and AVX state */
    case XNOR_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512vpopcntdq") && __builtin_cpu_supports("popcnt") &&
               xnor_os_saves(0xE6); /* plus opmask and the upper zmm state */
    default: return 0;
    }
#else
    return v == XNOR_GENERIC;
#endif
}

static const xnor_kernels xnor_variants[XNOR_N_VARIANTS] = {
    {"generic", 1, 8, xnor_ukernel_generic, xnor_pack_row_generic, xnor_pack_cols_band_generic},
#if XNOR_X86
    {"scalar", 1, 8, xnor_ukernel_scalar, xnor_pack_row_scalar, xnor_pack_cols_band_scalar},
    {"avx2", XNOR_AVX2_MR, XNOR_AVX2_NR, xnor_ukernel_avx2, xnor_pack_row_avx2,
     xnor_pack_cols_band_avx2},
    {"avx512", XNOR_AVX512_MR, XNOR_AVX512_NR, xnor_ukernel_avx512, xnor_pack_row_avx512,
     xnor_pack_cols_band_avx512},
#else
    {"scalar", 0, 0, NULL, NULL, NULL},
    {"avx2", 0, 0, NULL, NULL, NULL},
    {"avx512", 0, 0, NULL, NULL, NULL},
#endif
};

/* ------------------------------------------------------------- GEMM driver */

/* Copy columns [nr p, nr p + nr) of B (N, W) into panel p: panel[w][jj],
 * zero for columns past N so that edge tiles need no special loads. */
static void xnor_pack_panel(const uint64_t *b, int64_t n, int64_t n_words, int nr, int64_t p,
                            uint64_t *panels)
{
    uint64_t *dst = panels + p * n_words * nr;
    int64_t j0 = p * nr;
    for (int jj = 0; jj < nr; jj++) {
        if (j0 + jj < n) {
            const uint64_t *src = b + (j0 + jj) * n_words;
            for (int64_t w = 0; w < n_words; w++)
                dst[w * nr + jj] = src[w];
        } else {
            for (int64_t w = 0; w < n_words; w++)
                dst[w * nr + jj] = 0;
        }
    }
}

/* C rows [i0, i1) x panels [p0, p1): K blocks outermost, so that one panel
 * block stays in L1 while the row tiles of A pass under it. */
static void xnor_gemm_block(const xnor_kernels *kern, const uint64_t *a, int64_t n_words,
                            const uint64_t *panels, int32_t *c, int64_t n, int64_t k,
                            int64_t i0, int64_t i1, int64_t p0, int64_t p1)
{
    const int mr = kern->mr, nr = kern->nr;
    const uint64_t *rows[8];
    for (int64_t w0 = 0; w0 < n_words; w0 += XNOR_KC) {
        int64_t nw = n_words - w0 < XNOR_KC ? n_words - w0 : XNOR_KC;
        int first = w0 == 0;
        for (int64_t p = p0; p < p1; p++) {
            const uint64_t *panel = panels + (p * n_words + w0) * nr;
            int64_t j0 = p * nr;
            int ncols = n - j0 < nr ? (int)(n - j0) : nr;
            for (int64_t i = i0; i < i1; i += mr) {
                int rows_here = i1 - i < mr ? (int)(i1 - i) : mr;
                /* missing rows repeat row i: computed, never stored */
                for (int r = 0; r < mr; r++)
                    rows[r] = a + (i + (r < rows_here ? r : 0)) * n_words + w0;
                kern->ukernel(rows, panel, nw, c + i * n + j0, n, rows_here, ncols, k, first);
            }
        }
    }
}

#endif /* XNORCORE_XNOR_SIMD_H */
