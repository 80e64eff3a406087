/* The binary GEMM driver over any row of the dispatch table: B copied into
 * panels of nr columns interleaved word by word (panel[w][jj]), so that one
 * vector load brings the same word of nr columns and a broadcast word of A is
 * compared with all of them (no horizontal sums), and C computed in K blocks
 * of XNOR_KC words.  The product is C = XNOR_DOT_XOR(k, popcount(a ^ b)) as
 * int32 for A (M, W) and B (N, W) words (xnor_layout.h). */
#ifndef XNORCORE_CSRC_GEMM_H
#define XNORCORE_CSRC_GEMM_H

#include "common.h"


/* Copy columns [nr p, nr p + nr) of B (N, W) into panel p: panel[w][jj],
 * zero for columns past N so that edge tiles need no special loads. */
XNOR_MAYBE_UNUSED static void xnor_pack_panel(const uint64_t *b, int64_t n, int64_t n_words, int nr, int64_t p,
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
XNOR_MAYBE_UNUSED static void xnor_gemm_block(const xnor_kernels *kern, const uint64_t *a, int64_t n_words,
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

#endif /* XNORCORE_CSRC_GEMM_H */
