/* The one dispatch table: a row per instruction set, a column per kernel.
 *
 * xnor_variants[v] holds every kernel of variant v (the codes XNOR_GENERIC ..
 * XNOR_AVX512 of common.h, in order of preference); detect.h says which rows
 * this CPU can run.  Adding an instruction set means one file like avx2.h
 * and one row here (and its code in common.h and detect.h).  On a CPU other
 * than x86-64 only the generic row is filled.
 */
#ifndef XNORCORE_CSRC_DISPATCH_H
#define XNORCORE_CSRC_DISPATCH_H

#include "common.h"
#include "detect.h"
#include "generic.h"
#include "scalar.h"
#include "avx2.h"
#include "avx512.h"
#include "gemm.h"
#include "conv.h"

static const xnor_kernels xnor_variants[XNOR_N_VARIANTS] = {
    {"generic", 1, 8, xnor_ukernel_generic, xnor_pack_row_generic, xnor_pack_cols_band_generic,
     xnor_input_sums_generic, xnor_signed_sums_generic, xnor_conv_ukernel_generic,
     xnor_threshold_pack_generic, NULL, xnor_real_pool_generic, 4, NULL, 0},
#if XNOR_X86
    {"scalar", 1, 8, xnor_ukernel_scalar, xnor_pack_row_scalar, xnor_pack_cols_band_scalar,
     xnor_input_sums_generic, xnor_signed_sums_generic, xnor_conv_ukernel_scalar,
     xnor_threshold_pack_scalar, NULL, xnor_real_pool_generic, 4, NULL, 0},
    {"avx2", XNOR_AVX2_MR, XNOR_AVX2_NR, xnor_ukernel_avx2, xnor_pack_row_avx2,
     xnor_pack_cols_band_avx2, xnor_input_sums_avx2, xnor_signed_sums_avx2,
     xnor_conv_ukernel_avx2, xnor_threshold_pack_avx2, NULL, xnor_real_pool_avx2, 8,
     xnor_conv_bits_avx2, 1},
    {"avx512", XNOR_AVX512_MR, XNOR_AVX512_NR, xnor_ukernel_avx512, xnor_pack_row_avx512,
     xnor_pack_cols_band_avx512, xnor_input_sums_avx512, xnor_signed_sums_avx512,
     xnor_conv_ukernel_avx512, xnor_threshold_pack_avx512, xnor_threshold_pack_rows_avx512,
     xnor_real_pool_avx512, 16, xnor_conv_bits_avx512, 0},
#else
    {"scalar", 0, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, NULL},
    {"avx2", 0, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, NULL},
    {"avx512", 0, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, NULL},
#endif
};

#endif /* XNORCORE_CSRC_DISPATCH_H */
