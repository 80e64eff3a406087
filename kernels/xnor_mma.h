/* Helpers of the kernels built on mma.sync m16n8k256 b1 (compute capability >= 8.0):
 * cp.async copies into shared memory and the AND + popcount tensor-core product.
 * Included by xnor_gemm_mma.cu and conv_mma.cu, after xnor_layout.h. */
#ifndef XNORCORE_XNOR_MMA_H
#define XNORCORE_XNOR_MMA_H

typedef unsigned int u32;
typedef xnor_word u64;

__device__ __forceinline__ u32 smem_addr(const void* p)
{
    u32 r;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
    return r;
}

// Copy 16 bytes global -> shared; src_bytes = 0 writes zeros (out-of-range rows or K).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
}

// Copy 8 bytes global -> shared through L1 (.ca: neighbouring windows read the
// same words); src_bytes = 0 writes zeros.
__device__ __forceinline__ void cp_async8(void* dst, const void* src, int src_bytes)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n"
                 :: "r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
}

__device__ __forceinline__ void cp_async_commit()
{
    asm volatile("cp.async.commit_group;\n" ::);
}

template <int N>
__device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" :: "n"(N));
}

__device__ __forceinline__ int popc4(uint4 v)
{
    return __popc(v.x) + __popc(v.y) + __popc(v.z) + __popc(v.w);
}

__device__ __forceinline__ void mma_and_popc(int* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1)
{
    asm volatile(
        "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

#endif /* XNORCORE_XNOR_MMA_H */
