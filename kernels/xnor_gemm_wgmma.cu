// XNOR GEMM on Hopper's warpgroup tensor cores (sm_90a: wgmma ... .b1.b1.and.popc).
//
// Same product and operands as xnor_gemm_mma.cu: a_words (M, W) and b_words
// (N, W) in the layout of xnor_layout.h, W even; C[i, j] is XNOR_DOT_AND
// (K - 2 (pa + pb) + 4 popcount(a AND b)) with the row popcounts pa, pb from the row_popcounts kernel
// (counts: M + N int32, those of a, then those of b).  b1 wgmma has only the
// AND form.
//
// Structure (one persistent block per multiprocessor, 288 threads):
// - warp 8 is the producer: one lane issues TMA copies (cp.async.bulk.tensor)
//   of BM x 1024-bit slices of a and BN x 1024-bit slices of b into a ring of
//   STAGES shared-memory stages, each completing on its "full" mbarrier; the
//   tensor maps zero-fill rows past M or N and words past W, so the kernel
//   needs no edge cases in its main loop;
// - warps 0-3 and 4-7 are two consumer warpgroups issuing wgmma m64nNk256 on
//   the stages and releasing each through its "empty" mbarrier once the
//   tensor cores have read it.
// Two schedules share the code:
// - COOPERATIVE (128 x 256 tiles): both warpgroups work on one tile, 64 rows
//   each, so the b slice is read once for 128 rows; the epilogue (int32 stores
//   straight from the accumulators) overlaps only the producer's prefetch of
//   the next tile.
// - PINGPONG (128 x 128 tiles): the warpgroups take alternate tiles of the
//   block's sequence.  The ring is filled in tile order, so one warpgroup's
//   main loop runs while the other stores its finished tile.  Where the rows of
//   the result are whole 16-byte units (n % 4 == 0), xnor_gemm_wgmma_ping_tma
//   stores the sums through TMA instead (TMA_STORE below), with one stage fewer.
// The loader uses PINGPONG; COOPERATIVE stays for comparison (both are tested).
// Inner tiles store without per-element bounds tests: the bounds-tested path
// compiles to a branch per element and made the epilogue the bottleneck.
// Tiles are visited in groups of GROUP_M tile rows so that the blocks running
// at one time share their a and b slices in L2.
//
// Shared-memory layout: each stage holds the a rows then the b rows, 128 bytes
// (1024 bits of K) per row, in the 128-byte swizzle that TMA writes
// (CU_TENSOR_MAP_SWIZZLE_128B) and wgmma reads (descriptor layout type 1):
// 16-byte chunk c of row r sits at chunk c ^ (r % 8), 8-row groups 1024 bytes
// apart.  A k256 step is 32 bytes of a row, so the four steps of a stage start
// 0, 32, 64 and 96 bytes into the (1024-byte aligned) stage.

#include "xnor_layout.h"

typedef unsigned int u32;
typedef xnor_word u64;

// CUtensorMap: 128 opaque bytes built on the host by cuTensorMapEncodeTiled.
struct alignas(64) TensorMap {
    u64 opaque[16];
};

static constexpr int WG_STAGE_WORDS = 16;   // uint64 words of K per stage and row (1024 bits)
static constexpr int WG_ROW_BYTES = 128;    // bytes per row and stage: one swizzle span
static constexpr int WG_THREADS = 288;      // two consumer warpgroups and one producer warp
static constexpr int WG_GROUP_M = 8;        // tile rows per rasterization group
static constexpr int WG_STAGING_BYTES = 32768;  // TMA-store staging per warpgroup: 64 rows x 128 int32
static constexpr int WG_STORE_BOX_ROWS = 64;    // rows of a TMA store box of 128 bytes (32 int32) a row

__device__ __forceinline__ u32 smem_u32(const void* p)
{
    return (u32)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void mbar_init(u32 bar, u32 count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" :: "r"(bar), "r"(count) : "memory");
}

__device__ __forceinline__ void mbar_expect_tx(u32 bar, u32 bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" :: "r"(bar), "r"(bytes) : "memory");
}

__device__ __forceinline__ void mbar_arrive(u32 bar)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" :: "r"(bar) : "memory");
}

__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity)
{
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "WAIT:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
        "@!p bra WAIT;\n"
        "}\n" :: "r"(bar), "r"(parity) : "memory");
}

__device__ __forceinline__ void tma_load_2d(u32 dst, const TensorMap* map, int word, int row, u32 bar)
{
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
        " [%0], [%1, {%2, %3}], [%4];\n"
        :: "r"(dst), "l"(map), "r"(word), "r"(row), "r"(bar) : "memory");
}

// TMA store of a (box columns x box rows) box from shared memory, in the bulk group of the issuing thread.
__device__ __forceinline__ void tma_store_2d(const TensorMap* map, u32 src, int col, int row)
{
    asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%1, %2}], [%3];\n"
                 :: "l"(map), "r"(col), "r"(row), "r"(src) : "memory");
}

__device__ __forceinline__ void bulk_commit()
{
    asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}

// Until the issuing thread's bulk stores have read their shared memory (READ), or have completed.
template <bool READ>
__device__ __forceinline__ void bulk_wait_all()
{
    if (READ)
        asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
    else
        asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
}

// Barrier `id` among the `threads` threads (whole warps) that name it.
__device__ __forceinline__ void named_barrier(int id, int threads)
{
    asm volatile("bar.sync %0, %1;\n" :: "r"(id), "r"(threads) : "memory");
}

__device__ __forceinline__ void st_shared_v2(u32 addr, int x, int y)
{
    asm volatile("st.shared.v2.b32 [%0], {%1, %2};\n" :: "r"(addr), "r"(x), "r"(y) : "memory");
}

// wgmma shared-memory descriptor: K-major, 128-byte swizzle, 8-row groups 1024 bytes apart.
__device__ __forceinline__ u64 smem_desc(u32 addr)
{
    return (u64)((addr & 0x3FFFF) >> 4) | ((u64)1 << 16) | ((u64)(1024 >> 4) << 32) | ((u64)1 << 62);
}

__device__ __forceinline__ void wgmma_fence()
{
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

__device__ __forceinline__ void wgmma_commit()
{
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

template <int N>
__device__ __forceinline__ void wgmma_wait()
{
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" :: "n"(N) : "memory");
}

// Keeps the compiler from moving accumulator accesses across wgmma issue and wait.
template <int R>
__device__ __forceinline__ void fence_regs(int (&d)[R])
{
#pragma unroll
    for (int i = 0; i < R; ++i) asm volatile("" : "+r"(d[i]) :: "memory");
}

// The accumulators of a wgmma as read-write asm operands, 8 and 64 at a time.
#define XNOR_ACC8(d, i)                                                                             \
    "+r"(d[i]), "+r"(d[i + 1]), "+r"(d[i + 2]), "+r"(d[i + 3]), "+r"(d[i + 4]), "+r"(d[i + 5]),  \
        "+r"(d[i + 6]), "+r"(d[i + 7])
#define XNOR_ACC64(d, i)                                                                            \
    XNOR_ACC8(d, i), XNOR_ACC8(d, i + 8), XNOR_ACC8(d, i + 16), XNOR_ACC8(d, i + 24), XNOR_ACC8(d, i + 32), \
        XNOR_ACC8(d, i + 40), XNOR_ACC8(d, i + 48), XNOR_ACC8(d, i + 56)

__device__ __forceinline__ void wgmma_n256(int (&d)[128], u64 desc_a, u64 desc_b, int scale_d)
{
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k256.s32.b1.b1.and.popc "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, %128, %129, p;\n}\n"
        : XNOR_ACC64(d, 0), XNOR_ACC64(d, 64)
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

__device__ __forceinline__ void wgmma_n128(int (&d)[64], u64 desc_a, u64 desc_b, int scale_d)
{
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k256.s32.b1.b1.and.popc "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p;\n}\n"
        : XNOR_ACC64(d, 0)
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}


template <int BN>
struct Wgmma;
template <>
struct Wgmma<256> {
    static __device__ __forceinline__ void run(int (&d)[128], u64 a, u64 b, int s) { wgmma_n256(d, a, b, s); }
};
template <>
struct Wgmma<128> {
    static __device__ __forceinline__ void run(int (&d)[64], u64 a, u64 b, int s) { wgmma_n128(d, a, b, s); }
};

__device__ __forceinline__ void tile_coords(int tile, int tiles_m, int tiles_n, int& tm, int& tn)
{
    const int per_group = WG_GROUP_M * tiles_n;
    const int first = (tile / per_group) * WG_GROUP_M;
    const int rows = min(WG_GROUP_M, tiles_m - first);
    const int local = tile % per_group;
    tm = first + local % rows;
    tn = local / rows;
}

// MT m64 blocks of BN columns per consumer warpgroup: 128 accumulators per thread either way.
// PACK: the fused binary layer.  Instead of the int32 sums, out_words (m, out_w)
// receives bit j of row i set where lo <= K - 2 pa_i + 4 popcount(a_i AND b_j) <= hi
// for (lo, hi) = bounds[j], packed along n in the layout of xnor_layout.h; bounds
// holds a whole number of tiles of columns, and those past n never pass
// (pack.cu's column_bounds makes them from a threshold and direction per column).
// TMA_STORE (PINGPONG int32 only): each warpgroup writes its sums into its own
// 32 KB of shared memory, one m64 block at a time (four boxes of 64 rows x 32 int32
// columns in the 128-byte swizzle), and one thread stores them to out through
// map_c, the (n, m) int32 tensor map of out; the store proceeds while the
// warpgroup goes on to its next tile, and TMA clips it at the edges of out.
template <int BM, int BN, int STAGES, bool PINGPONG, bool PACK, bool TMA_STORE = false>
__device__ __forceinline__ void xnor_gemm_wgmma_body(
    const TensorMap& map_a, const TensorMap& map_b, const int* __restrict__ counts, int* __restrict__ out,
    long long m, long long n, long long n_words, long long k,
    const int2* __restrict__ bounds, u64* __restrict__ out_words, long long out_w,
    const TensorMap* map_c = nullptr)
{
#if !defined(__CUDA_ARCH_FEAT_SM90_ALL)
    // Built for another target (the CPU-side compile test builds every file for
    // sm_80 and sm_90): the loader launches this kernel on 9.0 alone, from sm_90a code.
    __trap();
#else
    constexpr int MT = PINGPONG ? BM / 64 : BM / 128;  // m64 blocks per consumer
    constexpr int A_BYTES = BM * WG_ROW_BYTES;
    constexpr int STAGE_BYTES = (BM + BN) * WG_ROW_BYTES;
    constexpr int ACC = BN / 2;
    constexpr int CONSUMER_WARPS = PINGPONG ? 4 : 8;  // arrivals that free a stage
    static_assert(MT >= 1 && ACC * MT <= 128, "tile too large for the accumulators");
    static_assert(!TMA_STORE || (PINGPONG && !PACK && BN == 128), "TMA stores: int32 ping tiles of 128 columns");
    constexpr int STAGING_BYTES = TMA_STORE ? WG_STAGING_BYTES : 0;  // per consumer warpgroup

    extern __shared__ unsigned char smem_raw[];
    const u32 base = (smem_u32(smem_raw) + 1023) & ~1023u;
    const u32 staging0 = base + STAGES * STAGE_BYTES;  // 1024-byte aligned, as the swizzle needs
    const u32 full0 = staging0 + 2 * STAGING_BYTES + (TMA_STORE ? 2 * BN * 4 : 0);  // STAGES full barriers, STAGES empty ones, 2 order ones
    const u32 empty0 = full0 + 8 * STAGES;
    const u32 order0 = empty0 + 8 * STAGES;

    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(full0 + 8 * s, 1);
            mbar_init(empty0 + 8 * s, CONSUMER_WARPS);
        }
        mbar_init(order0, 4);  // one arrival per warp of the warpgroup
        mbar_init(order0 + 8, 4);
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    const int tiles_m = (int)((m + BM - 1) / BM);
    const int tiles_n = (int)((n + BN - 1) / BN);
    const int tiles = tiles_m * tiles_n;
    const int k_tiles = (int)((n_words + WG_STAGE_WORDS - 1) / WG_STAGE_WORDS);

    if (warp == 8) {
        if (lane == 0) {
            asm volatile("prefetch.tensormap [%0];\n" :: "l"(&map_a) : "memory");
            asm volatile("prefetch.tensormap [%0];\n" :: "l"(&map_b) : "memory");
            u32 it = 0;
            for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
                int tm, tn;
                tile_coords(tile, tiles_m, tiles_n, tm, tn);
                for (int kt = 0; kt < k_tiles; ++kt, ++it) {
                    const u32 s = it % STAGES;
                    mbar_wait(empty0 + 8 * s, ((it / STAGES) & 1) ^ 1);
                    const u32 full = full0 + 8 * s;
                    mbar_expect_tx(full, STAGE_BYTES);
                    const u32 dst = base + s * STAGE_BYTES;
                    tma_load_2d(dst, &map_a, kt * WG_STAGE_WORDS, tm * BM, full);
                    tma_load_2d(dst + A_BYTES, &map_b, kt * WG_STAGE_WORDS, tn * BN, full);
                }
            }
        }
        return;
    }

    const int wg = warp / 4;         // consumer warpgroup
    const int wq = warp % 4;         // warp within it: rows 16 wq .. 16 wq + 15 of each m64 block
    const int g = lane / 4;
    const int t = lane % 4;
    int acc[MT][ACC];
    u32 it = 0;
    int local = 0;  // index of the tile in this block's sequence
    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x, ++local) {
        if (PINGPONG && local % 2 != wg) continue;
        if (PINGPONG) {
            it = (u32)local * (u32)k_tiles;
            // A full barrier's parity names its phase only while the waiter is at
            // most one phase ahead.  This warpgroup skipped the other's stages, so
            // it waits until the other has seen the last stage of the tile before
            // this one, whose phases precede every stage this tile will use.
            // Every warp of the other warpgroup arrives: the warps of one group
            // drift apart by up to a stage, and with one arrival per group a
            // lagging warp could find the order barrier itself two phases on.
            if (local > 0) mbar_wait(order0 + 8 * (1 - wg), ((local - 1) / 2) & 1);
        }
        int tm, tn;
        tile_coords(tile, tiles_m, tiles_n, tm, tn);
        // Row offset of this warpgroup's first m64 block inside the stage's a rows.
        const u32 a_off = PINGPONG ? 0 : wg * 64 * WG_ROW_BYTES;
        for (int kt = 0; kt < k_tiles; ++kt, ++it) {
            const u32 s = it % STAGES;
            mbar_wait(full0 + 8 * s, (it / STAGES) & 1);
            if (PINGPONG && kt == k_tiles - 1 && lane == 0) mbar_arrive(order0 + 8 * wg);
            const u32 stage = base + s * STAGE_BYTES;
#pragma unroll
            for (int i = 0; i < MT; ++i) fence_regs(acc[i]);
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
                for (int i = 0; i < MT; ++i) {
                    const u64 da = smem_desc(stage + a_off + i * 64 * WG_ROW_BYTES + 32 * kk);
                    const u64 db = smem_desc(stage + A_BYTES + 32 * kk);
                    Wgmma<BN>::run(acc[i], da, db, (kt > 0 || kk > 0) ? 1 : 0);
                }
            }
            wgmma_commit();
#pragma unroll
            for (int i = 0; i < MT; ++i) fence_regs(acc[i]);
            if (kt > 0) {
                // The previous stage's products are done: its tensor-core reads are over.
                wgmma_wait<1>();
                if (lane == 0) mbar_arrive(empty0 + 8 * ((it - 1) % STAGES));
            }
        }
        wgmma_wait<0>();
#pragma unroll
        for (int i = 0; i < MT; ++i) fence_regs(acc[i]);
        if (lane == 0) mbar_arrive(empty0 + 8 * ((it - 1) % STAGES));

        // Epilogue, straight from the accumulators: value 4 j + r of m64 block i
        // is row 16 wq + g (+8 for r >= 2), column 8 j + 2 t + r % 2.
        const bool pairs = (n % 2) == 0;  // then (row * n + even col) is 8-byte aligned
        const int* pb = counts + m;
        const long long row0 = (long long)tm * BM + (a_off / WG_ROW_BYTES);
        const long long col0 = (long long)tn * BN + 2 * t;
        if constexpr (TMA_STORE) {
            // Row r of an m64 block, column c of the tile: box c / 32, 16-byte chunk (c % 32) / 4
            // of the box's row r, swizzled to chunk ^ (r % 8) = chunk ^ g.  Rows and columns past
            // m and n read clamped popcounts; TMA does not store them.
            // The tile's column terms -2 pb go to shared memory first, one per thread (read from
            // there, the 32 a thread needs take no registers across the loads' latency).
            const u32 staging = staging0 + wg * STAGING_BYTES;
            const u32 col_terms = staging0 + 2 * STAGING_BYTES + wg * BN * 4;
            {
                const long long col = (long long)tn * BN + threadIdx.x % 128;
                asm volatile("st.shared.b32 [%0], %1;\n" :: "r"(col_terms + 4 * (threadIdx.x % 128)),
                             "r"(col < n ? -2 * __ldg(pb + col) : 0) : "memory");
            }
#pragma unroll
            for (int i = 0; i < MT; ++i) {
                if (wq == 0 && lane == 0) bulk_wait_all<true>();  // the previous block's stores have read it
                named_barrier(1 + wg, 128);  // (i = 0: also the column terms written)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int r = 16 * wq + g + 8 * h;
                    const long long row = row0 + 64 * i + r;
                    const int base_v = (int)k - 2 * __ldg(counts + min(row, m - 1));
                    const u32 row_addr = staging + r * WG_ROW_BYTES + 8 * (t % 2);
#pragma unroll
                    for (int j = 0; j < BN / 8; ++j) {
                        int c0, c1;
                        asm volatile("ld.shared.v2.b32 {%0, %1}, [%2];\n" : "=r"(c0), "=r"(c1)
                                     : "r"(col_terms + 4 * (8 * j + 2 * t)));
                        const int v0 = base_v + c0 + 4 * acc[i][4 * j + 2 * h];
                        const int v1 = base_v + c1 + 4 * acc[i][4 * j + 2 * h + 1];
                        const int chunk = 2 * (j % 4) + t / 2;
                        st_shared_v2(row_addr + (j / 4) * (64 * WG_ROW_BYTES) + ((chunk ^ g) << 4), v0, v1);
                    }
                }
                asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // visible to TMA
                named_barrier(1 + wg, 128);
                if (wq == 0 && lane == 0) {
#pragma unroll
                    for (int q = 0; q < BN / 32; ++q)  // boxes of 32 columns
                        tma_store_2d(map_c, staging + q * (WG_STORE_BOX_ROWS * WG_ROW_BYTES), tn * BN + 32 * q,
                                     (int)(row0 + 64 * i));
                    bulk_commit();
                }
            }
            continue;
        }
        if (PACK) {
            // The 64 columns of a word are spread over the four lanes of a quad
            // (8 groups of 8 columns, 2 per lane): each lane sets its bits, an OR
            // across the quad gathers the word, and lane w stores word w.
            constexpr int WORDS = BN / 64;
            static_assert(WORDS >= 1 && WORDS <= 4, "one stored word per lane");
            const long long word0 = (long long)tn * WORDS;
            const int4* col_bounds = reinterpret_cast<const int4*>(bounds + col0);  // 2 columns each
            int base_v[MT][2];
            u64 bits[MT][2][WORDS];
#pragma unroll
            for (int i = 0; i < MT; ++i) {
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const long long row = row0 + 64 * i + 16 * wq + g + 8 * h;
                    base_v[i][h] = (int)k - 2 * __ldg(counts + min(row, m - 1));
#pragma unroll
                    for (int w = 0; w < WORDS; ++w) bits[i][h][w] = 0;
                }
            }
            // Column pairs outermost: each pair's bounds are loaded once for all rows.
#pragma unroll
            for (int j = 0; j < BN / 8; ++j) {
                const int4 b = __ldg(col_bounds + 4 * j);
                const int shift = 8 * (j % 8) + 2 * t;
#pragma unroll
                for (int i = 0; i < MT; ++i) {
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const int v0 = base_v[i][h] + 4 * acc[i][4 * j + 2 * h];
                        const int v1 = base_v[i][h] + 4 * acc[i][4 * j + 2 * h + 1];
                        bits[i][h][j / 8] |= ((u64)(v0 >= b.x && v0 <= b.y) << shift)
                                           | ((u64)(v1 >= b.z && v1 <= b.w) << (shift + 1));
                    }
                }
            }
#pragma unroll
            for (int i = 0; i < MT; ++i) {
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    u64 mine = 0;
#pragma unroll
                    for (int w = 0; w < WORDS; ++w) {
                        u64 word = bits[i][h][w];
                        word |= __shfl_xor_sync(0xffffffffu, word, 1);
                        word |= __shfl_xor_sync(0xffffffffu, word, 2);
                        if (w == t) mine = word;
                    }
                    const long long row = row0 + 64 * i + 16 * wq + g + 8 * h;
                    if (row < m && t < WORDS && word0 + t < out_w) out_words[row * out_w + word0 + t] = mine;
                }
            }
            continue;
        }
        if (pairs && (long long)(tm + 1) * BM <= m && (long long)(tn + 1) * BN <= n) {
            // Inner tile: no bounds to test, so no branch per element.
#pragma unroll
            for (int i = 0; i < MT; ++i) {
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const long long row = row0 + 64 * i + 16 * wq + g + 8 * h;
                    const int base_v = (int)k - 2 * __ldg(counts + row);
                    int* out_row = out + row * n + col0;
                    const int* pb_row = pb + col0;
#pragma unroll
                    for (int j = 0; j < BN / 8; ++j) {
                        const int v0 = base_v - 2 * __ldg(pb_row + 8 * j) + 4 * acc[i][4 * j + 2 * h];
                        const int v1 = base_v - 2 * __ldg(pb_row + 8 * j + 1) + 4 * acc[i][4 * j + 2 * h + 1];
                        __stcs(reinterpret_cast<int2*>(out_row + 8 * j), make_int2(v0, v1));
                    }
                }
            }
            continue;
        }
#pragma unroll
        for (int i = 0; i < MT; ++i) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const long long row = (long long)tm * BM + (a_off / WG_ROW_BYTES) + 64 * i + 16 * wq + g + 8 * h;
                if (row >= m) continue;
                const int base_v = (int)k - 2 * __ldg(counts + row);
                int* out_row = out + row * n;
#pragma unroll
                for (int j = 0; j < BN / 8; ++j) {
                    const long long col = (long long)tn * BN + 8 * j + 2 * t;
                    if (pairs && col + 1 < n) {
                        const int v0 = base_v - 2 * __ldg(pb + col) + 4 * acc[i][4 * j + 2 * h];
                        const int v1 = base_v - 2 * __ldg(pb + col + 1) + 4 * acc[i][4 * j + 2 * h + 1];
                        __stcs(reinterpret_cast<int2*>(out_row + col), make_int2(v0, v1));
                    } else {
                        if (col < n) out_row[col] = base_v - 2 * __ldg(pb + col) + 4 * acc[i][4 * j + 2 * h];
                        if (col + 1 < n)
                            out_row[col + 1] = base_v - 2 * __ldg(pb + col + 1) + 4 * acc[i][4 * j + 2 * h + 1];
                    }
                }
            }
        }
    }
    if (TMA_STORE && wq == 0 && lane == 0) bulk_wait_all<false>();  // the block's stores are done
#endif
}

// Launch: grid min(tiles, multiprocessors), block WG_THREADS threads, dynamic
// shared memory 1024 + STAGES * ((BM + BN) * 128 + 16) + 16 bytes; map_a and map_b
// describe a_words and b_words as (W, rows) uint64 with (16, BM) and (16, BN)
// boxes and 128-byte swizzle.  The _pack kernels take out_words (m, out_w)
// instead of out, and the bounds of every column (BN-column tiles of them).
#define XNORCORE_GEMM_WGMMA(NAME, PACK_NAME, P, PINGPONG)                                                    \
    extern "C" __global__ void __launch_bounds__(WG_THREADS, 1)                                     \
    NAME(const __grid_constant__ TensorMap map_a, const __grid_constant__ TensorMap map_b,         \
         const int* __restrict__ counts, int* __restrict__ out,                                     \
         long long m, long long n, long long n_words, long long k)                                  \
    {                                                                                               \
        xnor_gemm_wgmma_body<P##_BM, P##_BN, P##_STAGES, PINGPONG, false>(                          \
            map_a, map_b, counts, out, m, n, n_words, k, nullptr, nullptr, 0);                     \
    }                                                                                               \
    extern "C" __global__ void __launch_bounds__(WG_THREADS, 1)                                     \
    PACK_NAME(const __grid_constant__ TensorMap map_a, const __grid_constant__ TensorMap map_b,    \
                const int* __restrict__ counts, u64* __restrict__ out_words,                        \
                long long m, long long n, long long n_words, long long k,                           \
                const int2* __restrict__ bounds, long long out_w)                                   \
    {                                                                                               \
        xnor_gemm_wgmma_body<P##_BM, P##_BN, P##_STAGES, PINGPONG, true>(                           \
            map_a, map_b, counts, nullptr, m, n, n_words, k, bounds, out_words, out_w);            \
    }

static constexpr int COOP_BM = 128;
static constexpr int COOP_BN = 256;
static constexpr int COOP_STAGES = 4;
XNORCORE_GEMM_WGMMA(xnor_gemm_wgmma_coop, xnor_gemm_wgmma_coop_pack, COOP, false)

static constexpr int PING_BM = 128;
static constexpr int PING_BN = 128;
static constexpr int PING_STAGES = 6;
XNORCORE_GEMM_WGMMA(xnor_gemm_wgmma_ping, xnor_gemm_wgmma_ping_pack, PING, true)

// Ping with the int32 sums stored by TMA (TMA_STORE above): out has a whole number of
// 16-byte rows (n % 4 == 0), map_c describes it as (n, m) int32 with (32, 64) boxes and
// 128-byte swizzle; dynamic shared memory 1024 + PING_TMA_STAGES * ((BM + BN) * 128 + 16)
// + 16 + 2 * (WG_STAGING_BYTES + 512) bytes (one stage fewer than ping, for the staging).
static constexpr int PING_TMA_STAGES = 5;
extern "C" __global__ void __launch_bounds__(WG_THREADS, 1)
xnor_gemm_wgmma_ping_tma(const __grid_constant__ TensorMap map_a, const __grid_constant__ TensorMap map_b,
                         const __grid_constant__ TensorMap map_c, const int* __restrict__ counts,
                         int* __restrict__ out, long long m, long long n, long long n_words, long long k)
{
    xnor_gemm_wgmma_body<PING_BM, PING_BN, PING_TMA_STAGES, true, false, true>(
        map_a, map_b, counts, out, m, n, n_words, k, nullptr, nullptr, 0, &map_c);
}
