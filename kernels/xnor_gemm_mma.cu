// XNOR GEMM on the bit tensor cores (compute capability >= 8.0).
//
// C[i, j] = sum_k sign(a[i, k]) * sign(b[k, j]) from packed operands:
//   a_words (M, W) and b_words (N, W) in the layout of xnor_layout.h, W even.
// x.y = XNOR_DOT_AND(K, pa, pb, popcount(a AND b)) (xnor_layout.h),
// where pa = popcount(a_words[i]) and pb = popcount(b_words[j]), and
// popcount(a AND b) is what mma.sync ... .and.popc accumulates.  The AND form
// is used because the XOR form is emulated (several times slower) on Hopper.
// The row popcounts pa and pb come either from a separate kernel (counts, M + N
// int32: those of a, then those of b) or, in the FUSED kernels, from __popc on
// the fragments the warps load anyway, spread so that every warp does the same
// share.  Fusing saves a launch (host time, which dominates small products)
// but costs about a tenth of the kernel time on large ones.
//
// Tiling: a block computes BM x BN outputs with WARPS_M x WARPS_N warps; each
// warp owns a WM x WN sub-tile made of (WM / 16) x (WN / 8) m16n8k256 tiles.
// K advances STAGE_WORDS uint64 words (512 bits) per pipeline stage, loaded
// with cp.async into STAGES shared-memory buffers.
//
// Fragment layout.  In m16n8k256.b1 a thread (group g = lane / 4, t = lane % 4)
// holds A rows g and g + 8 at 32-bit k-chunks t and t + 4, and B column g at
// the same k-chunks.  The product does not depend on the order in which k is
// visited as long as A and B agree, so instead of chunks t and t + 4 the
// thread takes the 16 contiguous bytes (4 words w0..w3) at chunk position t of
// a 512-bit row slice: w0, w1 feed the first k256 step and w2, w3 the second.
// One 128-bit shared load then serves two mma steps, and the eight threads of
// each load phase read 128 contiguous bytes: no bank conflicts without padding.

#include "xnor_layout.h"
#include "xnor_mma.h"

static constexpr int STAGE_WORDS = 8;               // uint64 words of K per stage (512 bits)
static constexpr int ROW_CHUNKS = STAGE_WORDS / 2;  // 16-byte chunks per row per stage

// Load rows [row0, row0 + ROWS) x words [k0, k0 + STAGE_WORDS) of `words` into
// `tile` (ROWS * ROW_CHUNKS uint4, row-major), zero-filling outside the matrix.
template <int ROWS, int THREADS>
__device__ __forceinline__ void load_tile(uint4* tile, const u64* __restrict__ words,
                                          long long n_rows, long long n_words,
                                          long long row0, long long k0)
{
    static_assert((ROWS * ROW_CHUNKS) % THREADS == 0, "tile chunks must divide among threads");
#pragma unroll
    for (int i = 0; i < ROWS * ROW_CHUNKS / THREADS; ++i) {
        const int idx = threadIdx.x + i * THREADS;
        const int r = idx / ROW_CHUNKS;
        const int c = idx % ROW_CHUNKS;
        const long long row = row0 + r;
        const long long w = k0 + 2 * c;
        const bool ok = row < n_rows && w < n_words;
        const u64* src = ok ? words + row * n_words + w : words;
        cp_async16(tile + idx, src, ok ? 16 : 0);
    }
}

template <int BM, int BN, int WARPS_M, int WARPS_N, int STAGES, bool FUSED>
__device__ __forceinline__ void xnor_gemm_mma_body(
    const u64* __restrict__ a_words, const u64* __restrict__ b_words, const int* __restrict__ counts,
    int* __restrict__ out, long long m, long long n, long long n_words, long long k)
{
    constexpr int THREADS = WARPS_M * WARPS_N * 32;
    constexpr int WM = BM / WARPS_M;
    constexpr int WN = BN / WARPS_N;
    constexpr int MT = WM / 16;
    constexpr int NT = WN / 8;
    static_assert(WM % 16 == 0 && WN % 8 == 0, "warp tile must be whole mma tiles");

    extern __shared__ uint4 smem[];
    uint4* a_tiles = smem;                                // STAGES x BM x ROW_CHUNKS
    uint4* b_tiles = smem + STAGES * BM * ROW_CHUNKS;     // STAGES x BN x ROW_CHUNKS

    const long long row0 = (long long)blockIdx.x * BM;
    const long long col0 = (long long)blockIdx.y * BN;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int g = lane / 4;
    const int t = lane % 4;
    const int wm = warp / WARPS_N;
    const int wn = warp % WARPS_N;

    int acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0;
    // Partial row popcounts: A rows g and g + 8 of m-tile i (counted by the
    // warps with i % WARPS_N == wn) and B column g of n-tile j (counted by the
    // warps with j % WARPS_M == wm), over this thread's 16-byte chunks.
    int pop_a[MT][2];
    int pop_b[NT];
#pragma unroll
    for (int i = 0; i < MT; ++i) pop_a[i][0] = pop_a[i][1] = 0;
#pragma unroll
    for (int j = 0; j < NT; ++j) pop_b[j] = 0;

    const int k_tiles = (int)((n_words + STAGE_WORDS - 1) / STAGE_WORDS);

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < k_tiles) {
            load_tile<BM, THREADS>(a_tiles + s * BM * ROW_CHUNKS, a_words, m, n_words, row0,
                                   (long long)s * STAGE_WORDS);
            load_tile<BN, THREADS>(b_tiles + s * BN * ROW_CHUNKS, b_words, n, n_words, col0,
                                   (long long)s * STAGE_WORDS);
        }
        cp_async_commit();
    }

    for (int kt = 0; kt < k_tiles; ++kt) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        // The slot refilled here was read in iteration kt - 1, which every
        // thread has finished: it passed the barrier above.
        const int next = kt + STAGES - 1;
        if (next < k_tiles) {
            const int slot = next % STAGES;
            load_tile<BM, THREADS>(a_tiles + slot * BM * ROW_CHUNKS, a_words, m, n_words, row0,
                                   (long long)next * STAGE_WORDS);
            load_tile<BN, THREADS>(b_tiles + slot * BN * ROW_CHUNKS, b_words, n, n_words, col0,
                                   (long long)next * STAGE_WORDS);
        }
        cp_async_commit();

        const uint4* a_tile = a_tiles + (kt % STAGES) * BM * ROW_CHUNKS;
        const uint4* b_tile = b_tiles + (kt % STAGES) * BN * ROW_CHUNKS;
        uint4 bf[NT];
#pragma unroll
        for (int j = 0; j < NT; ++j) {
            bf[j] = b_tile[(wn * WN + j * 8 + g) * ROW_CHUNKS + t];
            if (FUSED && j % WARPS_M == wm) pop_b[j] += popc4(bf[j]);
        }
#pragma unroll
        for (int i = 0; i < MT; ++i) {
            const uint4 lo = a_tile[(wm * WM + i * 16 + g) * ROW_CHUNKS + t];
            const uint4 hi = a_tile[(wm * WM + i * 16 + g + 8) * ROW_CHUNKS + t];
            if (FUSED && i % WARPS_N == wn) {
                pop_a[i][0] += popc4(lo);
                pop_a[i][1] += popc4(hi);
            }
#pragma unroll
            for (int j = 0; j < NT; ++j) mma_and_popc(acc[i][j], lo.x, hi.x, lo.y, hi.y, bf[j].x, bf[j].y);
#pragma unroll
            for (int j = 0; j < NT; ++j) mma_and_popc(acc[i][j], lo.z, hi.z, lo.w, hi.w, bf[j].z, bf[j].w);
        }
    }
    cp_async_wait<0>();

    // The row popcounts of this tile go to shared memory, whose stage buffers
    // are free once every warp is here.
    __syncthreads();
    int* pop_rows = reinterpret_cast<int*>(smem);  // BM popcounts of A rows
    int* pop_cols = pop_rows + BM;                 // BN popcounts of B rows
    if constexpr (!FUSED) {
        for (int r = threadIdx.x; r < BM + BN; r += THREADS) {
            const long long row = r < BM ? row0 + r : col0 + (r - BM);
            const long long offset = r < BM ? 0 : m;
            pop_rows[r] = row < (r < BM ? m : n) ? counts[offset + row] : 0;
        }
    }
    if constexpr (FUSED) {
        // Sum over the four threads of a group (lanes 4g .. 4g + 3 hold the
        // four chunks of a row).
#pragma unroll
        for (int i = 0; i < MT; ++i) {
            if (i % WARPS_N != wn) continue;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                int c = pop_a[i][h];
                c += __shfl_xor_sync(0xffffffffu, c, 1);
                c += __shfl_xor_sync(0xffffffffu, c, 2);
                if (t == 0) pop_rows[wm * WM + i * 16 + g + 8 * h] = c;
            }
        }
#pragma unroll
        for (int j = 0; j < NT; ++j) {
            if (j % WARPS_M != wm) continue;
            int c = pop_b[j];
            c += __shfl_xor_sync(0xffffffffu, c, 1);
            c += __shfl_xor_sync(0xffffffffu, c, 2);
            if (t == 0) pop_cols[wn * WN + j * 8 + g] = c;
        }
    }
    __syncthreads();

    // Epilogue: accumulator r of tile (i, j) is row g (+8 for r >= 2), column 2t + r % 2.
    const bool pairs = (n % 2) == 0;  // then (row * n + even col) is 8-byte aligned
    int pbv[NT][2];
#pragma unroll
    for (int j = 0; j < NT; ++j) {
        const int c = wn * WN + j * 8 + 2 * t;
        pbv[j][0] = pop_cols[c];
        pbv[j][1] = pop_cols[c + 1];
    }
#pragma unroll
    for (int i = 0; i < MT; ++i) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const long long row = row0 + wm * WM + i * 16 + g + 8 * h;
            if (row >= m) continue;
            const int pa = pop_rows[wm * WM + i * 16 + g + 8 * h];
            int* out_row = out + row * n;
#pragma unroll
            for (int j = 0; j < NT; ++j) {
                const long long col = col0 + wn * WN + j * 8 + 2 * t;
                const int v0 = XNOR_DOT_AND((int)k, pa, pbv[j][0], acc[i][j][2 * h]);
                const int v1 = XNOR_DOT_AND((int)k, pa, pbv[j][1], acc[i][j][2 * h + 1]);
                if (pairs && col + 1 < n) {
                    *reinterpret_cast<int2*>(out_row + col) = make_int2(v0, v1);
                } else {
                    if (col < n) out_row[col] = v0;
                    if (col + 1 < n) out_row[col + 1] = v1;
                }
            }
        }
    }
}

// Launch: grid (ceil(m / BM), ceil(n / BN)), block WARPS_M * WARPS_N * 32 threads,
// dynamic shared memory STAGES * (BM + BN) * 64 bytes.  The loader picks the
// tile shape from the product's size.
#define XNORCORE_GEMM_MMA(NAME, P, MIN_BLOCKS, FUSED)                                              \
    extern "C" __global__ void __launch_bounds__(P##_WARPS_M * P##_WARPS_N * 32, MIN_BLOCKS)        \
    NAME(const u64* __restrict__ a_words, const u64* __restrict__ b_words,                          \
         const int* __restrict__ counts, int* __restrict__ out,                                     \
         long long m, long long n, long long n_words, long long k)                                  \
    {                                                                                               \
        xnor_gemm_mma_body<P##_BM, P##_BN, P##_WARPS_M, P##_WARPS_N, P##_STAGES, FUSED>(            \
            a_words, b_words, counts, out, m, n, n_words, k);                                       \
    }

// Large products: 4 warps of 64 x 64 outputs and two blocks per multiprocessor,
// so that one block's epilogue (writing its int32 outputs) overlaps the other's
// tensor-core work.  Row popcounts from the separate kernel.  (Blocks of
// 128 x 256 with 8 such warps fit only once per multiprocessor and ran slower.)
static constexpr int MEDIUM_BM = 128;
static constexpr int MEDIUM_BN = 128;
static constexpr int MEDIUM_WARPS_M = 2;
static constexpr int MEDIUM_WARPS_N = 2;
static constexpr int MEDIUM_STAGES = 4;
XNORCORE_GEMM_MMA(xnor_gemm_mma_medium, MEDIUM, 2, false)

// Small products: 4 warps of 32 x 64, three blocks per multiprocessor, enough
// blocks to reach every multiprocessor, popcounts fused (one launch).  The
// counts argument is not read.
static constexpr int SMALL_BM = 64;
static constexpr int SMALL_BN = 128;
static constexpr int SMALL_WARPS_M = 2;
static constexpr int SMALL_WARPS_N = 2;
static constexpr int SMALL_STAGES = 3;
XNORCORE_GEMM_MMA(xnor_gemm_mma_small, SMALL, 3, true)
