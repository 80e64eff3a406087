/* The real-valued layers of a binary network at inference: code templates that
 * each instruction set's file instantiates (generic.h, avx2.h, avx512.h).
 *
 * First layer (xnor_input_sums_*):
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
#ifndef XNORCORE_CSRC_REAL_LAYERS_H
#define XNORCORE_CSRC_REAL_LAYERS_H

#include "common.h"

/* Columns per block of w.  The caller stores w block by block: the block of
 * columns c0 .. c0 + bw (bw = min(XNOR_IN_BLOCK, n - c0)) at w + c0 * f, row j
 * of it at w + c0 * f + j * bw.  A block is contiguous (784 x 128 floats for
 * MNIST, 392 KiB) and stays in L2.  (Read in place from an (F, N) array with
 * rows 4 KiB apart, a block's lines fall into a few cache sets and thrash:
 * that ran 1.3x slower.) */
#define XNOR_IN_BLOCK 128

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

/* Output layer (xnor_signed_sums_*): for packed +-1 inputs (words, n_words per
 * row, k bits) and real weights w of XNOR_OUT_WIDTH columns (padded),
 *
 * out[r, c] = sum, over j < k ascending, of s[r, j] * w[j, c], from 0.0, in double,
 *
 * with s = +1 for a set bit and -1 for a clear one.  The products are exact,
 * so every variant (FMA or not) gives the same sums, and a sample's logits
 * do not depend on its batch.  Four rows at a time hide the latency of the
 * additions, each row's own chain of k of them. */
#define XNOR_OUT_WIDTH 16

#define XNOR_SIGNED_SUMS(NAME, TARGET)                                                             \
    TARGET static void NAME(const uint64_t *words, int64_t n_words, int64_t rows, int64_t k,      \
                            const double *w, double *out)                                          \
    {                                                                                              \
        static const double sign_of[2] = {-1.0, 1.0};                                              \
        enum { R = 4, C = XNOR_OUT_WIDTH };                                                        \
        for (int64_t r0 = 0; r0 < rows; r0 += R) {                                                 \
            const int nr = rows - r0 < R ? (int)(rows - r0) : R;                                   \
            double acc[R][C] = {{0.0}};                                                            \
            for (int64_t j = 0; j < k; ++j) {                                                      \
                const double *wj = w + j * C;                                                      \
                double s[R];                                                                       \
                for (int i = 0; i < R; ++i) {                                                      \
                    const int64_t row = r0 + (i < nr ? i : 0);                                     \
                    s[i] = sign_of[(words[row * n_words + (j >> 6)] >> (j & 63)) & 1];             \
                }                                                                                  \
                _Pragma("GCC unroll 4") for (int i = 0; i < R; ++i)                                \
                    _Pragma("GCC unroll 16") for (int c = 0; c < C; ++c) acc[i][c] += s[i] * wj[c]; \
            }                                                                                      \
            for (int i = 0; i < nr; ++i)                                                           \
                for (int c = 0; c < C; ++c) out[(r0 + i) * C + c] = acc[i][c];                     \
        }                                                                                          \
    }

#endif /* XNORCORE_CSRC_REAL_LAYERS_H */
