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

/* First conv block of a CNN (xnor_real_pool_*): a real-valued, stride-1
 * convolution of float pixels, its 2x2 max-pool (stride 2) and the bias, for
 * one image:
 *
 * z[py, px, o] = max over (a, b) in {0, 1}^2 of s(2 py + a, 2 px + b, o), plus bias[o],
 * s(y, x, o) = sum, over (i, j, ch) ascending, of x[y + i, x + j, ch] * w[i, j, ch, o]
 *
 * with x the image already zero padded (rows of wp pixels of c floats; the
 * caller copies it into a buffer with its padding, so no tap needs a bounds
 * check) and w laid out (kh kw c, o_pad) with o_pad a multiple of the vector
 * width and zero columns past o.  The four sums of a pooled pixel are
 * accumulated side by side in registers, each in that fixed order, and only
 * their max is written: the full-resolution sums never reach memory.  As for
 * the input sums, one process uses one variant, so every caller (the float
 * and the packed inference paths) gets the same floats.  Passes of up to
 * XNOR_POOL_VECS(V) vectors of columns: 4 pixels x that many accumulators plus
 * the weights and 4 broadcasts stay within the register file. */
#define XNOR_POOL_VECS(VBYTES) ((VBYTES) == 64 ? 4 : 2)

#define XNOR_REAL_POOL(NAME, TARGET, VBYTES)                                                       \
    typedef float NAME##_vec __attribute__((vector_size(VBYTES), aligned(4)));                     \
    typedef int32_t NAME##_ivec __attribute__((vector_size(VBYTES), aligned(4)));                  \
    __attribute__((always_inline)) TARGET static inline NAME##_vec NAME##_max(NAME##_vec a,        \
                                                                              NAME##_vec b)        \
    {                                                                                              \
        NAME##_ivec m = a >= b;                                                                    \
        return (NAME##_vec)(((NAME##_ivec)a & m) | ((NAME##_ivec)b & ~m));                         \
    }                                                                                              \
    /* columns col .. col + nv V of one pooled pixel; p: its patch's top left */                  \
    __attribute__((always_inline)) TARGET static inline void NAME##_pass(                          \
        const float *p, int64_t row, int64_t c, int64_t taps_h, int64_t taps_w, const float *w,    \
        int64_t o, int64_t o_pad, int64_t col, const float *bias, float *z, const int nv)          \
    {                                                                                              \
        enum { V = (VBYTES) / 4, NV = XNOR_POOL_VECS(VBYTES) };                                    \
        NAME##_vec s0[NV], s1[NV], s2[NV], s3[NV];                                                 \
        _Pragma("GCC unroll 4") for (int v = 0; v < nv; v++) s0[v] = s1[v] = s2[v] = s3[v] =       \
            (NAME##_vec){0};                                                                       \
        const float *wr = w + col;                                                                 \
        for (int64_t i = 0; i < taps_h; i++) {                                                     \
            const float *pi = p + i * row;                                                         \
            for (int64_t jc = 0; jc < taps_w * c; jc++, wr += o_pad) {                             \
                const float x00 = pi[jc], x01 = pi[jc + c];                                        \
                const float x10 = pi[jc + row], x11 = pi[jc + row + c];                            \
                _Pragma("GCC unroll 4") for (int v = 0; v < nv; v++) {                             \
                    const NAME##_vec wv = *(const NAME##_vec *)(wr + v * V);                       \
                    s0[v] += x00 * wv;                                                             \
                    s1[v] += x01 * wv;                                                             \
                    s2[v] += x10 * wv;                                                             \
                    s3[v] += x11 * wv;                                                             \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        _Pragma("GCC unroll 4") for (int v = 0; v < nv; v++) {                                     \
            NAME##_vec m = NAME##_max(NAME##_max(NAME##_max(s0[v], s1[v]), s2[v]), s3[v]);         \
            if (bias != NULL)                                                                      \
                m += *(const NAME##_vec *)(bias + col + v * V);                                    \
            const int64_t c0 = col + v * V;                                                        \
            if (c0 + V <= o) {                                                                     \
                *(NAME##_vec *)(z + c0) = m;                                                       \
            } else {                                                                               \
                for (int64_t l = 0; c0 + l < o; l++)                                               \
                    z[c0 + l] = m[l];                                                              \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
    /* x: padded image (rows of wp pixels of c floats); z: (ph, pw, o) */                        \
    TARGET static void NAME(const float *x, int64_t wp, int64_t c, int64_t kh, int64_t kw,         \
                            int64_t ph, int64_t pw, const float *w, int64_t o, int64_t o_pad,      \
                            const float *bias, float *z)                                           \
    {                                                                                              \
        enum { V = (VBYTES) / 4, NV = XNOR_POOL_VECS(VBYTES) };                                    \
        const int64_t row = wp * c;                                                                \
        for (int64_t py = 0; py < ph; py++)                                                        \
            for (int64_t px = 0; px < pw; px++, z += o) {                                          \
                const float *p = x + 2 * py * row + 2 * px * c;                                    \
                for (int64_t col = 0; col < o_pad; col += NV * V) {                                \
                    const int64_t left = (o_pad - col) / V;                                        \
                    const int nv = left < NV ? (int)left : NV;                                     \
                    if (nv == NV) /* (constant counts: the accumulators stay in registers) */     \
                        NAME##_pass(p, row, c, kh, kw, w, o, o_pad, col, bias, z, NV);             \
                    else if (nv == 1)                                                              \
                        NAME##_pass(p, row, c, kh, kw, w, o, o_pad, col, bias, z, 1);              \
                    else if (nv == 2)                                                              \
                        NAME##_pass(p, row, c, kh, kw, w, o, o_pad, col, bias, z, NV > 2 ? 2 : 1); \
                    else                                                                           \
                        NAME##_pass(p, row, c, kh, kw, w, o, o_pad, col, bias, z, NV > 3 ? 3 : 1); \
                }                                                                                  \
            }                                                                                      \
    }

#endif /* XNORCORE_CSRC_REAL_LAYERS_H */
