/* Portable kernels, included twice by _xnor_simd.h: once as the "generic"
 * variant (any CPU; __builtin_popcountll may become a library call) and once
 * as the "scalar" variant compiled for the POPCNT instruction.
 *
 * The includer defines XNOR_SFX (name suffix) and XNOR_ATTR (target attribute).
 */

#define XNOR_P_MR 2 /* rows of A per micro-tile */
#define XNOR_P_NR 4 /* columns of B per panel: 8 accumulators fit the 16 GPRs */

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
    return xnor_pack_cols_band_with(XNOR_FN(mask64), dtype, x, length, rows, out, kw, c0, c1,
                                    buffer);
}

/* C[i:i+mr, j:j+ncols] (row stride ldc) from rows a[0..1] and a panel of
 * XNOR_P_NR interleaved columns, over nw words. */
XNOR_ATTR static void XNOR_FN(ukernel)(const uint64_t *const *a, const uint64_t *panel,
                                       int64_t nw, int32_t *c, int64_t ldc, int mr,
                                       int ncols, int64_t k, int first)
{
    const uint64_t *a0 = a[0], *a1 = a[1];
    uint64_t s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
    for (int64_t w = 0; w < nw; w++) {
        const uint64_t *b = panel + w * XNOR_P_NR;
        uint64_t x0 = a0[w], x1 = a1[w];
        uint64_t b0 = b[0], b1 = b[1], b2 = b[2], b3 = b[3];
        s00 += (uint64_t)__builtin_popcountll(x0 ^ b0);
        s01 += (uint64_t)__builtin_popcountll(x0 ^ b1);
        s02 += (uint64_t)__builtin_popcountll(x0 ^ b2);
        s03 += (uint64_t)__builtin_popcountll(x0 ^ b3);
        s10 += (uint64_t)__builtin_popcountll(x1 ^ b0);
        s11 += (uint64_t)__builtin_popcountll(x1 ^ b1);
        s12 += (uint64_t)__builtin_popcountll(x1 ^ b2);
        s13 += (uint64_t)__builtin_popcountll(x1 ^ b3);
    }
    uint64_t s[XNOR_P_MR][XNOR_P_NR] = {{s00, s01, s02, s03}, {s10, s11, s12, s13}};
    xnor_store_tile(&s[0][0], XNOR_P_NR, c, ldc, mr, ncols, k, first);
}

#undef XNOR_P_MR
#undef XNOR_P_NR
