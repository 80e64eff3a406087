// XNOR GEMM on the CUDA cores with __popc: the path for GPUs without bit
// tensor cores (compute capability < 8.0), and a reference for the fast path.
//
// C[i, j] = XNOR_DOT_XOR(k, popcount(a_words[i] XOR b_words[j])) with a_words
// (M, W), b_words (N, W) in the layout of xnor_layout.h, read as pairs of 32-bit words
// (little-endian, so 32-bit word 2w is the low half of uint64 word w; the
// order does not matter as long as both operands agree).
//
// Tiling: a block computes BM x BN outputs with THREADS threads, each thread
// TM x TN of them (two TM/2 x TN/2 quadrants 64 apart, so that shared loads are
// 16-byte vectors).  K advances STAGE_U32 32-bit words per stage; the next
// stage is fetched into registers while the current one is computed.

#include "xnor_layout.h"

typedef unsigned int u32;
typedef xnor_word u64;

static constexpr int BM = 128;
static constexpr int BN = 128;
static constexpr int TM = 8;
static constexpr int TN = 8;
static constexpr int THREADS = 256;
static constexpr int STAGE_U32 = 16;                    // 32-bit words of K per stage (512 bits)
static constexpr int ROW_CHUNKS = STAGE_U32 / 4;        // 16-byte chunks per row per stage
static constexpr int PAD = 4;                           // keeps uint4 alignment, spreads banks
static constexpr int LDS = BM + PAD;                    // shared row stride (in u32), BM == BN

static_assert(BM == BN, "one shared stride serves both operands");
static_assert(THREADS == (BM / TM) * (BN / TN), "one thread per TM x TN outputs");
static_assert(BM * ROW_CHUNKS % THREADS == 0, "tile chunks must divide among threads");

static constexpr int CHUNKS_PER_THREAD = BM * ROW_CHUNKS / THREADS;

// Read this thread's chunks of rows [row0, row0 + BM) x u32 words [k0, k0 + STAGE_U32).
// Chunk idx covers row idx % BM, so a warp reads 32 different rows and later
// writes 32 consecutive shared words (no bank conflicts on the transposed store).
__device__ __forceinline__ void fetch(uint4 (&regs)[CHUNKS_PER_THREAD], const u32* __restrict__ words,
                                      long long n_rows, long long n_u32, long long row0, long long k0)
{
#pragma unroll
    for (int i = 0; i < CHUNKS_PER_THREAD; ++i) {
        const int idx = threadIdx.x + i * THREADS;
        const long long row = row0 + idx % BM;
        const long long w = k0 + 4 * (idx / BM);
        uint4 v = make_uint4(0, 0, 0, 0);
        if (row < n_rows) {
            const u32* p = words + row * n_u32 + w;
            // n_u32 is even and w is a multiple of 4, so a chunk is whole, half or empty.
            if (w + 4 <= n_u32) {
                v = *reinterpret_cast<const uint4*>(p);
            } else if (w + 2 <= n_u32) {
                const uint2 h = *reinterpret_cast<const uint2*>(p);
                v.x = h.x;
                v.y = h.y;
            }
        }
        regs[i] = v;
    }
}

// Store the fetched chunks transposed: tile[k][row].
__device__ __forceinline__ void store(u32* tile, const uint4 (&regs)[CHUNKS_PER_THREAD])
{
#pragma unroll
    for (int i = 0; i < CHUNKS_PER_THREAD; ++i) {
        const int idx = threadIdx.x + i * THREADS;
        const int r = idx % BM;
        const int k = 4 * (idx / BM);
        tile[(k + 0) * LDS + r] = regs[i].x;
        tile[(k + 1) * LDS + r] = regs[i].y;
        tile[(k + 2) * LDS + r] = regs[i].z;
        tile[(k + 3) * LDS + r] = regs[i].w;
    }
}

// Launch: grid (ceil(m / BM), ceil(n / BN)), block THREADS threads, no dynamic shared memory.
// n_words (uint64 words per row) must be even; the caller pads odd widths.
extern "C" __global__ void __launch_bounds__(THREADS)
xnor_gemm_popc(const u64* __restrict__ a_words, const u64* __restrict__ b_words,
               int* __restrict__ out, long long m, long long n, long long n_words, long long k)
{
    __shared__ __align__(16) u32 a_tile[2][STAGE_U32 * LDS];
    __shared__ __align__(16) u32 b_tile[2][STAGE_U32 * LDS];

    const u32* a32 = reinterpret_cast<const u32*>(a_words);
    const u32* b32 = reinterpret_cast<const u32*>(b_words);
    const long long n_u32 = 2 * n_words;
    const long long row0 = (long long)blockIdx.x * BM;
    const long long col0 = (long long)blockIdx.y * BN;
    const int ty = threadIdx.x / (BN / TN);
    const int tx = threadIdx.x % (BN / TN);

    int acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0;

    const int k_tiles = (int)((n_u32 + STAGE_U32 - 1) / STAGE_U32);
    uint4 a_regs[CHUNKS_PER_THREAD], b_regs[CHUNKS_PER_THREAD];
    fetch(a_regs, a32, m, n_u32, row0, 0);
    fetch(b_regs, b32, n, n_u32, col0, 0);
    store(a_tile[0], a_regs);
    store(b_tile[0], b_regs);
    __syncthreads();

    for (int kt = 0; kt < k_tiles; ++kt) {
        const int cur = kt % 2;
        const bool more = kt + 1 < k_tiles;
        if (more) {
            fetch(a_regs, a32, m, n_u32, row0, (long long)(kt + 1) * STAGE_U32);
            fetch(b_regs, b32, n, n_u32, col0, (long long)(kt + 1) * STAGE_U32);
        }
#pragma unroll
        for (int kk = 0; kk < STAGE_U32; ++kk) {
            const u32* ar = a_tile[cur] + kk * LDS;
            const u32* br = b_tile[cur] + kk * LDS;
            const uint4 a0 = *reinterpret_cast<const uint4*>(ar + ty * (TM / 2));
            const uint4 a1 = *reinterpret_cast<const uint4*>(ar + BM / 2 + ty * (TM / 2));
            const uint4 b0 = *reinterpret_cast<const uint4*>(br + tx * (TN / 2));
            const uint4 b1 = *reinterpret_cast<const uint4*>(br + BN / 2 + tx * (TN / 2));
            const u32 av[TM] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
            const u32 bv[TN] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] += __popc(av[i] ^ bv[j]);
        }
        if (more) {
            // Writing the other buffer is safe: its last readers finished
            // before the barrier at the end of the previous iteration.
            store(a_tile[cur ^ 1], a_regs);
            store(b_tile[cur ^ 1], b_regs);
        }
        __syncthreads();
    }

    const bool quads = (n % 4) == 0;  // then (row * n + col), col % 4 == 0, is 16-byte aligned
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const long long row = row0 + (i < TM / 2 ? ty * (TM / 2) + i : BM / 2 + ty * (TM / 2) + i - TM / 2);
        if (row >= m) continue;
        int* out_row = out + row * n;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const long long col = col0 + h * (BN / 2) + tx * (TN / 2);
            int v[TN / 2];
#pragma unroll
            for (int j = 0; j < TN / 2; ++j) v[j] = XNOR_DOT_XOR((int)k, acc[i][h * (TN / 2) + j]);
            if (quads && col + 3 < n) {
                *reinterpret_cast<int4*>(out_row + col) = make_int4(v[0], v[1], v[2], v[3]);
            } else {
#pragma unroll
                for (int j = 0; j < TN / 2; ++j)
                    if (col + j < n) out_row[col + j] = v[j];
            }
        }
    }
}
