/* Float32 products from bfloat16 operands (AVX512-BF16), for the backward pass
 * of training.
 *
 * C[m, n] = A[m, k] @ B[k, n]: both operands are rounded to bfloat16 (round to
 * nearest even; zeros and subnormals become zeros of their sign, as the
 * instruction does) and the products of pairs along k are summed in float32 by
 * VDPBF16PS, which does twice the multiply-adds a cycle of float32 FMA.  In a
 * binary network every large product of the backward pass has one operand of
 * -1, 0 and +1 (the signs of activations or of weights), which bfloat16 holds
 * exactly: only the gradient is rounded, to 8 significant bits.
 *
 * A's element (i, p) is at a[i * ars + p * acs] and B's (p, j) at
 * b[p * brs + j * bcs] (any strides, so transposed views need no copy); C is
 * row-major with row stride ldc.  The layout is that of BLIS: A is packed in
 * panels of MR rows and B in panels of NR columns, a pair of k values to a
 * 32-bit word (the low half the even k); a panel of B (KC pairs x NR columns)
 * is reused by the MR-row panels of a block of A held in L2.  Each thread
 * computes its own columns (or rows) of C with its own buffers, so the threads
 * never wait for each other.
 */
#ifndef XNORCORE_CSRC_BF16_GEMM_H
#define XNORCORE_CSRC_BF16_GEMM_H

#include <stdlib.h>

#include "common.h"
#include "detect.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef XNOR_BF_KC
#define XNOR_BF_KC 256 /* pairs of k a block */
#endif
#ifndef XNOR_BF_MC
#define XNOR_BF_MC 192 /* rows of a block of A */
#endif
#ifndef XNOR_BF_NC
#define XNOR_BF_NC 384 /* columns of a block of B */
#endif
enum {
    XNOR_BF_MR = 8,  /* rows of a tile of C */
    XNOR_BF_NR = 48, /* columns of a tile: three vectors of 16 sums */
};

/* The rounding of VCVTNEPS2BF16, one value at a time (the edges of blocks). */
static inline uint32_t xnor_bf16_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7f800000u) == 0)
        return (u >> 16) & 0x8000u;
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (u >> 16) | 0x40u;
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

#if XNOR_X86

#define XNOR_BF_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

/* Whether this CPU (and OS) runs xnor_bf16_gemm. */
static int xnor_bf16_supported(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16") &&
           xnor_os_saves(0xE6);
}

/* Rows r of 16 floats at src + r * stride (r < 8) as 8 pair words each,
 * transposed: out[q] holds pair q of rows 0..7. */
XNOR_BF_TARGET static inline void xnor_bf_pairs8x8(const float *src, int64_t stride, __m256i out[8])
{
    __m256i r[8], t[8], u[8];
    for (int i = 0; i < 8; ++i)
        r[i] = (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + i * stride));
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_unpacklo_epi64(t[i], t[i + 2]);
        u[i + 1] = _mm256_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm256_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm256_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int i = 0; i < 4; ++i) {
        out[i] = _mm256_permute2x128_si256(u[i], u[i + 4], 0x20);
        out[i + 4] = _mm256_permute2x128_si256(u[i], u[i + 4], 0x31);
    }
}

/* Sixteen pair words from two rows of 16 floats (x0 the even k): lane c holds
 * (x0[c], x1[c]). */
XNOR_BF_TARGET static inline __m512i xnor_bf_interleave16(__m512 x0, __m512 x1)
{
    __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(x0));
    __m512i hi = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(x1));
    return _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));
}

/* One pair word of a strided operand: elements (2q, 2q + 1) along k of line
 * `line` (a row of A, a column of B); zero past the ends. */
static inline uint32_t xnor_bf_pair(const float *x, int64_t line_stride, int64_t k_stride, int64_t line,
                                    int64_t lines, int64_t q, int64_t k)
{
    if (line >= lines)
        return 0;
    const float *p = x + line * line_stride + 2 * q * k_stride;
    uint32_t lo = 2 * q < k ? xnor_bf16_bits(p[0]) : 0;
    uint32_t hi = 2 * q + 1 < k ? xnor_bf16_bits(p[k_stride]) : 0;
    return lo | hi << 16;
}

/* Packs lines l0 .. l0 + nl (rows of A, or columns of B) and pairs q0 .. q0 + kq
 * into panels of W lines: word (q, l) of panel P at dst + P * W * kq + q * W + l.
 * Lines past `lines` and pairs past k are zeros.  `line_stride` and `k_stride`
 * are the strides of the operand along its lines and along k. */
XNOR_BF_TARGET static void xnor_bf_pack(const float *x, int64_t line_stride, int64_t k_stride, int64_t lines,
                                        int64_t k, int64_t l0, int64_t nl, int64_t q0, int64_t kq, int W,
                                        uint32_t *dst)
{
    for (int64_t base = 0; base < nl; base += W) {
        uint32_t *panel = dst + base * kq;
        const int64_t first = l0 + base;
        const int full_lines = first + W <= lines;
        int64_t q = 0;
        if (full_lines && line_stride == 1) {
            /* The lines are adjacent floats: 16 lines of two k values at a time. */
            for (; q < kq && 2 * (q0 + q) + 1 < k; ++q) {
                const float *p = x + first + 2 * (q0 + q) * k_stride;
                for (int c = 0; c + 16 <= W; c += 16)
                    _mm512_storeu_si512(panel + q * W + c,
                                        xnor_bf_interleave16(_mm512_loadu_ps(p + c), _mm512_loadu_ps(p + k_stride + c)));
                for (int c = W / 16 * 16; c < W; c += 8) {
                    __m128i lo = (__m128i)_mm256_cvtneps_pbh(_mm256_loadu_ps(p + c));
                    __m128i hi = (__m128i)_mm256_cvtneps_pbh(_mm256_loadu_ps(p + k_stride + c));
                    _mm_storeu_si128((__m128i *)(panel + q * W + c), _mm_unpacklo_epi16(lo, hi));
                    _mm_storeu_si128((__m128i *)(panel + q * W + c + 4), _mm_unpackhi_epi16(lo, hi));
                }
            }
        } else if (full_lines && k_stride == 1) {
            /* Each line's k values are adjacent: 8 lines x 8 pairs, transposed. */
            for (; q + 8 <= kq && 2 * (q0 + q) + 16 <= k; q += 8) {
                for (int c = 0; c < W; c += 8) {
                    __m256i out[8];
                    xnor_bf_pairs8x8(x + (first + c) * line_stride + 2 * (q0 + q), line_stride, out);
                    for (int i = 0; i < 8; ++i)
                        _mm256_storeu_si256((__m256i *)(panel + (q + i) * W + c), out[i]);
                }
            }
        }
        for (; q < kq; ++q)
            for (int c = 0; c < W; ++c)
                panel[q * W + c] = xnor_bf_pair(x, line_stride, k_stride, first + c, lines, q0 + q, k);
    }
}

/* A tile of C (mr <= MR rows, nr <= NR columns) from a panel of A and one of
 * B over kq pairs: written, or added to what C holds (`accumulate`). */
XNOR_BF_TARGET static void xnor_bf_ukernel(int64_t kq, const uint32_t *a, const uint32_t *b, float *c,
                                           int64_t ldc, int mr, int nr, int accumulate)
{
    __m512 acc[XNOR_BF_MR][3];
    for (int r = 0; r < XNOR_BF_MR; ++r)
        for (int j = 0; j < 3; ++j)
            acc[r][j] = _mm512_setzero_ps();
    for (int64_t q = 0; q < kq; ++q) {
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b);
        const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + 16);
        const __m512bh b2 = (__m512bh)_mm512_loadu_si512(b + 32);
#pragma GCC unroll 8
        for (int r = 0; r < XNOR_BF_MR; ++r) {
            const __m512bh ar = (__m512bh)_mm512_set1_epi32((int)a[r]);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], ar, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], ar, b1);
            acc[r][2] = _mm512_dpbf16_ps(acc[r][2], ar, b2);
        }
        a += XNOR_BF_MR;
        b += XNOR_BF_NR;
    }
    if (mr == XNOR_BF_MR && nr == XNOR_BF_NR) {
        for (int r = 0; r < XNOR_BF_MR; ++r)
            for (int j = 0; j < 3; ++j) {
                float *p = c + r * ldc + 16 * j;
                _mm512_storeu_ps(p, accumulate ? _mm512_add_ps(_mm512_loadu_ps(p), acc[r][j]) : acc[r][j]);
            }
        return;
    }
    for (int r = 0; r < mr; ++r)
        for (int j = 0; j < 3; ++j) {
            const int cols = nr - 16 * j;
            if (cols <= 0)
                break;
            const __mmask16 mask = cols >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << cols) - 1);
            float *p = c + r * ldc + 16 * j;
            __m512 v = acc[r][j];
            if (accumulate)
                v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, p), v);
            _mm512_mask_storeu_ps(p, mask, v);
        }
}

/* Rows i0 .. i1 and columns j0 .. j1 of C, one thread, its own buffers. */
XNOR_BF_TARGET static void xnor_bf_block(int64_t k, const float *a, int64_t ars, int64_t acs, int64_t m,
                                         const float *b, int64_t brs, int64_t bcs, int64_t n, float *c,
                                         int64_t ldc, int64_t i0, int64_t i1, int64_t j0, int64_t j1,
                                         uint32_t *abuf, uint32_t *bbuf)
{
    const int64_t kq_all = (k + 1) / 2;
    for (int64_t jc = j0; jc < j1; jc += XNOR_BF_NC) {
        const int64_t nc = j1 - jc < XNOR_BF_NC ? j1 - jc : XNOR_BF_NC;
        for (int64_t pc = 0; pc < kq_all; pc += XNOR_BF_KC) {
            const int64_t kq = kq_all - pc < XNOR_BF_KC ? kq_all - pc : XNOR_BF_KC;
            xnor_bf_pack(b, bcs, brs, n, k, jc, nc, pc, kq, XNOR_BF_NR, bbuf);
            for (int64_t ic = i0; ic < i1; ic += XNOR_BF_MC) {
                const int64_t mc = i1 - ic < XNOR_BF_MC ? i1 - ic : XNOR_BF_MC;
                xnor_bf_pack(a, ars, acs, m, k, ic, mc, pc, kq, XNOR_BF_MR, abuf);
                for (int64_t jr = 0; jr < nc; jr += XNOR_BF_NR) {
                    const int nr = nc - jr < XNOR_BF_NR ? (int)(nc - jr) : XNOR_BF_NR;
                    for (int64_t ir = 0; ir < mc; ir += XNOR_BF_MR) {
                        const int mr = mc - ir < XNOR_BF_MR ? (int)(mc - ir) : XNOR_BF_MR;
                        xnor_bf_ukernel(kq, abuf + ir * kq, bbuf + jr * kq, c + (ic + ir) * ldc + jc + jr, ldc,
                                        mr, nr, pc > 0);
                    }
                }
            }
        }
    }
}

/* C = A @ B as the header says.  Returns 0, -1 where the CPU lacks AVX512-BF16,
 * -2 where a buffer could not be allocated (C is then incomplete). */
static int xnor_bf16_gemm(int64_t m, int64_t n, int64_t k, const float *a, int64_t ars, int64_t acs,
                          const float *b, int64_t brs, int64_t bcs, float *c, int64_t ldc, int n_threads)
{
    if (!xnor_bf16_supported())
        return -1;
    if (m <= 0 || n <= 0)
        return 0;
    if (k <= 0) {
        for (int64_t i = 0; i < m; ++i)
            memset(c + i * ldc, 0, (size_t)n * sizeof(float));
        return 0;
    }
    /* Split C along whichever of its sides has more tiles. */
    const int64_t col_tiles = (n + XNOR_BF_NR - 1) / XNOR_BF_NR, row_tiles = (m + XNOR_BF_MR - 1) / XNOR_BF_MR;
    const int by_cols = col_tiles >= row_tiles || col_tiles >= 2 * (int64_t)n_threads;
    const int64_t tiles = by_cols ? col_tiles : row_tiles;
    if (n_threads < 1)
        n_threads = 1;
    if ((int64_t)n_threads > tiles)
        n_threads = (int)tiles;
    int failed = 0;
#pragma omp parallel num_threads(n_threads) reduction(| : failed)
    {
        int t = 0, nt = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        const int64_t lo = tiles * t / nt, hi = tiles * (t + 1) / nt;
        const int64_t w = by_cols ? XNOR_BF_NR : XNOR_BF_MR;
        const int64_t start = lo * w, end = hi * w < (by_cols ? n : m) ? hi * w : (by_cols ? n : m);
        uint32_t *abuf = aligned_alloc(64, (size_t)XNOR_BF_MC * XNOR_BF_KC * sizeof(uint32_t));
        uint32_t *bbuf = aligned_alloc(64, (size_t)XNOR_BF_NC * XNOR_BF_KC * sizeof(uint32_t));
        if (abuf == NULL || bbuf == NULL)
            failed = 1;
        else if (start < end) {
            if (by_cols)
                xnor_bf_block(k, a, ars, acs, m, b, brs, bcs, n, c, ldc, 0, m, start, end, abuf, bbuf);
            else
                xnor_bf_block(k, a, ars, acs, m, b, brs, bcs, n, c, ldc, start, end, 0, n, abuf, bbuf);
        }
        free(abuf);
        free(bbuf);
    }
    return failed ? -2 : 0;
}

#else /* not x86-64 */

static int xnor_bf16_supported(void) { return 0; }

static int xnor_bf16_gemm(int64_t m, int64_t n, int64_t k, const float *a, int64_t ars, int64_t acs,
                          const float *b, int64_t brs, int64_t bcs, float *c, int64_t ldc, int n_threads)
{
    (void)m, (void)n, (void)k, (void)a, (void)ars, (void)acs, (void)b, (void)brs, (void)bcs, (void)c,
        (void)ldc, (void)n_threads;
    return -1;
}

#endif /* XNOR_X86 */

#endif /* XNORCORE_CSRC_BF16_GEMM_H */
