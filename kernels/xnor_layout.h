/* The bit layout of every packed array in xnorcore, for the C and CUDA kernels.
 *
 * Included by the CPU kernels (xnorcore/csrc/) and by every CUDA source in kernels/,
 * which NVRTC compiles with -I naming this folder.  Only macros and one
 * typedef, so that it needs no system header under NVRTC, C or C++.  The
 * Python statement of the same layout is the docstring of xnorcore.ops.
 *
 *   word      uint64 (xnor_word), little-endian, XNOR_WORD_BITS = 64 bits
 *   order     element j of the packed axis is bit j % 64 (bit 0 = least
 *             significant) of word j / 64; the packed axis becomes the last
 *             axis of the word array, of XNOR_N_WORDS(length) words
 *   sign      a set bit is +1, a clear bit -1; x >= 0 is +1, so sign(0) =
 *             sign(-0.0) = +1 (XNOR_SIGN_BIT); NaN is rejected by the caller
 *   padding   bits at positions >= length in the last word are 0, in both
 *             operands of a product, so they cancel in XOR (0 ^ 0 = 0) and
 *             in AND (0 & 0 = 0) and never change a result
 *   dot       of two rows of k elements, from the popcounts of their words:
 *               XNOR_DOT_XOR(k, popcount(a ^ b))
 *                 = k - 2 popcount(a ^ b)
 *               XNOR_DOT_AND(k, popcount(a), popcount(b), popcount(a & b))
 *                 = k - 2 (popcount(a) + popcount(b)) + 4 popcount(a & b)
 *   matmul    a (M, K) packed along K: words (M, W); b (K, N) packed along K:
 *             words (N, W), one row of words per column; W = XNOR_N_WORDS(K)
 *   conv2d    activations NHWC packed along C: words (N, H, W, XNOR_N_WORDS(C)),
 *             each pixel's channels a whole number of words; weights HWIO
 *             (KH, KW, C / groups, O) packed along their input channels:
 *             words (KH, KW, O, XNOR_N_WORDS(C / groups)).  With groups > 1
 *             and C / groups not a multiple of 64, each group's channels are
 *             packed into words of their own: (N, H, W, groups, words per group).
 */
#ifndef XNORCORE_XNOR_LAYOUT_H
#define XNORCORE_XNOR_LAYOUT_H

typedef unsigned long long xnor_word;

#define XNOR_WORD_BITS 64
#define XNOR_N_WORDS(length) (((length) + XNOR_WORD_BITS - 1) / XNOR_WORD_BITS)

/* 1 for +1 (v >= 0, so that sign(0) = +1), 0 for -1. */
#define XNOR_SIGN_BIT(v) ((v) >= 0)

#define XNOR_DOT_XOR(k, pc_xor) ((k) - 2 * (pc_xor))
#define XNOR_DOT_AND(k, pc_a, pc_b, pc_and) ((k) - 2 * ((pc_a) + (pc_b)) + 4 * (pc_and))

#endif /* XNORCORE_XNOR_LAYOUT_H */
