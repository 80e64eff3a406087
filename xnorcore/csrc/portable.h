/* Portable kernels in plain C, a template included twice: by generic.h as the
 * "generic" variant (any CPU; __builtin_popcountll may become a library call)
 * and by scalar.h as the "scalar" variant compiled for the POPCNT instruction.
 *
 * The includer defines XNOR_SFX (name suffix) and XNOR_ATTR (target attribute).
 * No include guard: each inclusion defines a new set of functions.
 */

#define XNOR_P_MR 1 /* rows of A per micro-tile */
#define XNOR_P_NR 8 /* columns of B per panel */

XNOR_ATTR static uint64_t XNOR_FN(mask64)(int dtype, const void *p, int n, int *nan)
{
    switch (dtype) {
    case XNOR_I8:  { XNOR_MASK_LOOP(int8_t);  }
    case XNOR_I16: { XNOR_MASK_LOOP(int16_t); }
    case XNOR_I32: { XNOR_MASK_LOOP(int32_t); }
    case XNOR_I64: { XNOR_MASK_LOOP(int64_t); }
    case XNOR_F32: { XNOR_MASK_LOOP(float);   }
    default:       { XNOR_MASK_LOOP(double);  }
    }
}

XNOR_ATTR static int XNOR_FN(pack_row)(int dtype, const void *x, int64_t length, uint64_t *out)
{
    int nan = 0;
    const char *p = (const char *)x;
    size_t step = 64 * xnor_itemsize(dtype);
    for (int64_t w = 0; w < length; w += 64, p += step) {
        int n = length - w < 64 ? (int)(length - w) : 64;
        out[w / 64] = XNOR_FN(mask64)(dtype, p, n, &nan);
    }
    return nan;
}

XNOR_ATTR static int XNOR_FN(pack_cols_band)(int dtype, const void *x, int64_t length,
                                             int64_t rows, uint64_t *out, int64_t kw,
                                             int64_t c0, int64_t c1, uint64_t *buffer)
{
    return xnor_pack_cols_band_with(XNOR_FN(mask64), xnor_transpose64, dtype, x, length, rows,
                                    out, kw, c0, c1, buffer);
}

/* C[i, j:j+ncols] from one row of A and a panel of XNOR_P_NR interleaved
 * columns, over nw words.  One row by eight columns keeps the accumulators,
 * the word of A and the pointers in the 15 usable general registers (a 2 x 4
 * tile spilled accumulators to the stack); the words of B are memory operands
 * of the XORs. */
XNOR_ATTR static void XNOR_FN(ukernel)(const uint64_t *const *a, const uint64_t *panel,
                                       int64_t nw, int32_t *c, int64_t ldc, int mr,
                                       int ncols, int64_t k, int first)
{
    const uint64_t *a0 = a[0];
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
    const uint64_t *b = panel;
    for (int64_t w = 0; w < nw; w++, b += XNOR_P_NR) {
        uint64_t x = a0[w];
        s0 += (uint64_t)__builtin_popcountll(x ^ b[0]);
        s1 += (uint64_t)__builtin_popcountll(x ^ b[1]);
        s2 += (uint64_t)__builtin_popcountll(x ^ b[2]);
        s3 += (uint64_t)__builtin_popcountll(x ^ b[3]);
        s4 += (uint64_t)__builtin_popcountll(x ^ b[4]);
        s5 += (uint64_t)__builtin_popcountll(x ^ b[5]);
        s6 += (uint64_t)__builtin_popcountll(x ^ b[6]);
        s7 += (uint64_t)__builtin_popcountll(x ^ b[7]);
    }
    uint64_t s[XNOR_P_NR] = {s0, s1, s2, s3, s4, s5, s6, s7};
    (void)mr; /* always 1 */
    xnor_store_tile(s, XNOR_P_NR, c, ldc, 1, ncols, k, first);
}

/* The convolution tile: the GEMM tile above over an indirection buffer of
 * `taps` segments (one row, so a[t] is segment t). */
XNOR_ATTR static void XNOR_FN(conv_ukernel)(const uint64_t *const *a, int taps,
                                            const uint64_t *panel, int64_t nw, int32_t *c,
                                            int64_t ldc, int mr, int ncols, int64_t k)
{
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
    const uint64_t *b = panel;
    for (int t = 0; t < taps; t++) {
        const uint64_t *a0 = a[t];
        for (int64_t w = 0; w < nw; w++, b += XNOR_P_NR) {
            uint64_t x = a0[w];
            s0 += (uint64_t)__builtin_popcountll(x ^ b[0]);
            s1 += (uint64_t)__builtin_popcountll(x ^ b[1]);
            s2 += (uint64_t)__builtin_popcountll(x ^ b[2]);
            s3 += (uint64_t)__builtin_popcountll(x ^ b[3]);
            s4 += (uint64_t)__builtin_popcountll(x ^ b[4]);
            s5 += (uint64_t)__builtin_popcountll(x ^ b[5]);
            s6 += (uint64_t)__builtin_popcountll(x ^ b[6]);
            s7 += (uint64_t)__builtin_popcountll(x ^ b[7]);
        }
    }
    uint64_t s[XNOR_P_NR] = {s0, s1, s2, s3, s4, s5, s6, s7};
    (void)mr; /* always 1 */
    xnor_store_tile(s, XNOR_P_NR, c, ldc, 1, ncols, k, 1);
}

XNOR_ATTR static void XNOR_FN(threshold_pack)(const int32_t *z, const int8_t *direction,
                                              const int32_t *threshold, int64_t n, uint64_t *out)
{
    for (int64_t w0 = 0; w0 < n; w0 += 64) {
        int len = n - w0 < 64 ? (int)(n - w0) : 64;
        uint64_t m = 0;
        for (int i = 0; i < len; i++)
            m |= (uint64_t)xnor_threshold_bit(z[w0 + i], direction[w0 + i], threshold[w0 + i]) << i;
        out[w0 / 64] = m;
    }
}

#undef XNOR_P_MR
#undef XNOR_P_NR
