/* The real-valued first layer of a binary network at inference, for xnorcore._bitpack.
 *
 * z[r, :] = init + sum, over j ascending with x[r, j] != 0, of x[r, j] * w[j, :]
 *
 * The rows come as lists of their nonzero inputs (idx, val, with row r at
 * start[r] .. start[r + 1]), so a zero input costs nothing: most pixels of a
 * handwritten digit are background, and a product that skips them does a
 * fifth of the work of a dense GEMM on MNIST.  Each row's sums are added in
 * one fixed order that depends on that row alone, so a sample gets the same
 * sums in any batch, and the packed and the float inference paths, which
 * both call this, agree exactly.
 *
 * The columns go in passes of up to 16 vectors held in registers, while one
 * block of w stays in L2 for every row of the caller's chunk.  The
 * variants are the same C code with GCC vector types of 16, 32 and 64 bytes,
 * compiled for the baseline, AVX2 and AVX-512F; each rounds in its own way
 * (AVX-512F contracts to FMA), but one process uses one variant.
 */
#ifndef XNORCORE_INPUT_SUMS_H
#define XNORCORE_INPUT_SUMS_H

#include <stdint.h>

/* Columns per block of w.  The caller stores w block by block: the block of
 * columns c0 .. c0 + bw (bw = min(XNOR_IN_BLOCK, n - c0)) at w + c0 * f, row j
 * of it at w + c0 * f + j * bw.  A block is contiguous (784 x 128 floats for
 * MNIST, 392 KiB) and stays in L2.  (Read in place from an (F, N) array with
 * rows 4 KiB apart, a block's lines fall into a few cache sets and thrash:
 * that ran 1.3x slower.) */
#define XNOR_IN_BLOCK 128

typedef void (*xnor_input_sums_fn)(const int32_t *idx, const float *val, const int64_t *start,
                                   int64_t rows, const float *w, int64_t f, int64_t n,
                                   const float *init, float *z, int64_t z_stride);

#define XNOR_INPUT_SUMS(NAME, TARGET, VBYTES)                                                      \
    typedef float NAME##_vec __attribute__((vector_size(VBYTES), aligned(4)));                     \
    TARGET static void NAME(const int32_t *idx, const float *val, const int64_t *start,          \
                            int64_t rows, const float *w, int64_t f, int64_t n, const float *init, \
                            float *z, int64_t z_stride)                                            \
    {                                                                                              \
        enum { V = (VBYTES) / 4, ACC = XNOR_IN_BLOCK / V < 16 ? XNOR_IN_BLOCK / V : 16, PASS = ACC * V };                                     \
        for (int64_t c0 = 0; c0 < n; c0 += XNOR_IN_BLOCK) {                                        \
            const int64_t bw = n - c0 < XNOR_IN_BLOCK ? n - c0 : XNOR_IN_BLOCK;                    \
            const float *wb = w + c0 * f;                                                          \
            int64_t c = 0;                                                                         \
            for (; c + PASS <= bw; c += PASS) {                                                    \
                for (int64_t r = 0; r < rows; ++r) {                                               \
                    NAME##_vec acc[ACC];                                                           \
                    _Pragma("GCC unroll 16") for (int t = 0; t < ACC; ++t)                         \
                        acc[t] = *(const NAME##_vec *)(init + c0 + c + t * V);                     \
                    for (int64_t p = start[r]; p < start[r + 1]; ++p) {                            \
                        const float *wr = wb + (int64_t)idx[p] * bw + c;                           \
                        const float v = val[p];                                                    \
                        _Pragma("GCC unroll 16") for (int t = 0; t < ACC; ++t)                     \
                            acc[t] += v * *(const NAME##_vec *)(wr + t * V);                       \
                    }                                                                              \
                    float *zr = z + r * z_stride + c0 + c;                                         \
                    _Pragma("GCC unroll 16") for (int t = 0; t < ACC; ++t)                         \
                        *(NAME##_vec *)(zr + t * V) = acc[t];                                      \
                }                                                                                  \
            }                                                                                      \
            for (; c < bw; ++c) { /* columns past the last full pass, one at a time */            \
                for (int64_t r = 0; r < rows; ++r) {                                               \
                    float acc = init[c0 + c];                                                      \
                    for (int64_t p = start[r]; p < start[r + 1]; ++p)                              \
                        acc += val[p] * wb[(int64_t)idx[p] * bw + c];                              \
                    z[r * z_stride + c0 + c] = acc;                                                \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(XNOR_NO_X86)
XNOR_INPUT_SUMS(xnor_input_sums_base, , 16)
XNOR_INPUT_SUMS(xnor_input_sums_avx2, __attribute__((target("avx2"))), 32)
XNOR_INPUT_SUMS(xnor_input_sums_avx512, __attribute__((target("avx512f"))), 64)

/* Indexed like xnor_variants: generic, scalar, avx2, avx512. */
static const xnor_input_sums_fn xnor_input_sums_variants[4] = {
    xnor_input_sums_base, xnor_input_sums_base, xnor_input_sums_avx2, xnor_input_sums_avx512,
};
#else
XNOR_INPUT_SUMS(xnor_input_sums_base, , 16)

static const xnor_input_sums_fn xnor_input_sums_variants[4] = {
    xnor_input_sums_base, xnor_input_sums_base, xnor_input_sums_base, xnor_input_sums_base,
};
#endif

#endif /* XNORCORE_INPUT_SUMS_H */
