// Binary convolution as an implicit GEMM on the bit tensor cores
// (mma.sync m16n8k256 b1 AND + popcount, compute capability >= 8.0).
//
// One launch per layer, groups = 1.  Operands in the conv2d layout of
// xnor_layout.h: activations x (N, H, W, CW) packed along C, and the weights
// as GEMM rows w_rows (O, row_words): the KH * KW * CW words of each output
// channel's window (tap-major, then channel words), then zeros up to an even
// row_words.  GEMM row p is output pixel p = (b * OH + oy) * OW + ox; its k
// words are gathered from x straight into shared memory (no im2col array):
// word q of the window is channel word q % CW of tap q / CW, read from the
// input pixel under that tap, or, where the tap falls in the padding, written
// as the pad word of pad_mode (+1: pad[q % CW], the valid channel bits set;
// 0 and -1: zeros, the padding bits of a -1).  The host lists the window
// words once (taps: (row offset, column offset, word offset from the window's
// origin, channel word) per word, to a whole number of stages; past the
// window (CONV_MMA_PAST, 0, 0, -1)), so the gather divides nothing.
//
// The block counts the popcounts of the rows it gathers (from the fragments
// its warps load anyway); the weights' are in the epilogue's table.  Then
// z = XNOR_DOT_AND(k, pa, pb, popcount(a AND b)) over k = KH * KW * C bits is
// the convolution with -1 padding (padding bits are clear in both operands).
// For zero padding (pad_mode 0) an output pixel whose window reaches the padding
// needs the sum of sign(w[tap, c, o]) over the taps and channels in the padding
// added: the host groups output rows (and columns) by the set of kernel rows
// (columns) that fall outside the image, y_class[oy] (x_class[ox]), so that a
// pixel's border class is y_class * x_classes + x_class, 0 inside the image (and
// for the other pad modes).  conv_class_table folds those sums and the weights'
// popcounts (and for the fused layer the thresholds) into one table per class
// and output channel, which the block copies to shared memory.  Two epilogues:
// int32 sums (N * OH * OW, O), u + table[class, o] with u = 4 popcount(a AND b)
// + k - 2 popcount(a), staged a warp's 16 x 64 tile at a time in shared memory so
// that each store writes two whole output rows in 16-byte vectors; or the fused
// layer, the bits of direction[o] * z - threshold[o] >= 0 (in int32, see
// xnor_fused.h), tested as u >= table[class, o] (one compare; the bits of some
// channels flipped a word at a time), packed along O into (N * OH * OW,
// ceil(O / 64)) words.
//
// Tiling: a block computes BM = 128 pixels x BN = 64 * WARPS_N channels with
// CONV_MMA_WARPS_M x WARPS_N warps of 32 x 64 outputs each (2 x 8 m16n8k256
// tiles): a warp's 64 columns are one output word of the fused layer.  K
// advances KSTEP words a stage (4: 256 bits, one mma step; 8: two), through
// CONV_MMA_STAGES cp.async buffers; the loader takes KSTEP 4 for fused layers
// of small windows, which it rounds up less (a 3x3 window over 64 channels is
// 9 words: 12, not 16).
// Fragment layout as in xnor_gemm_mma.cu: thread (g, t) reads the row slice's
// t-th quarter (KSTEP * 2 bytes) of rows g and g + 8, and column g of B.
//
// Indices: element offsets are 64-bit; pixel coordinates, window words,
// output channels and one image's words fit in int32 (the Python side checks).
//
// Two main loops share the set-up of the table and the epilogue: the gather
// kernel above (conv_mma_*), and the halo kernel (conv_halo_*, int32 sums of
// layers whose input rows and weights fit in shared memory; see conv_halo_body).

#include "xnor_layout.h"
#include "xnor_mma.h"
#include "xnor_fused.h"

static constexpr int CONV_MMA_BM = 128;
static constexpr int CONV_MMA_WARPS_M = 4;
static constexpr int CONV_MMA_STAGES = 3;
// Blocks per multiprocessor asked of the compiler for one warp along O (half for two), by both
// kernels: 16 warps a multiprocessor at 128 registers a thread (6 made the halo kernel spill).
static constexpr int CONV_MMA_BLOCKS = 4;
// Row pitch (ints) of the int32 epilogue's staging tiles, 16 x 64 per warp after the row terms:
// 72 spreads both access patterns over all banks.  (BM + 4 * WARPS_N * 16 * 72) * 4 bytes fit in
// the stage buffers of the int32 kernels (KSTEP 8).
static constexpr int CONV_MMA_STAGE_LD = 72;
// The origin of a row past the last pixel, and the row offset of a tap past the
// window: no tap of the first and no row of the second reads an input word
// (images have fewer than 2**29 rows and columns; the Python side checks).
static constexpr int CONV_MMA_NO_ROW = -(1 << 29);
static constexpr int CONV_MMA_PAST = 1073741824;  // 2**30
static_assert(CONV_MMA_PAST + CONV_MMA_NO_ROW >= (1 << 29), "a row past the last pixel reads nothing past the window");

template <int KSTEP>
struct Fragment;  // a thread's quarter of a KSTEP-word row slice
template <>
struct Fragment<4> {
    typedef uint2 type;
};
template <>
struct Fragment<8> {
    typedef uint4 type;
};

__device__ __forceinline__ int popc_fragment(uint2 v) { return __popc(v.x) + __popc(v.y); }
__device__ __forceinline__ int popc_fragment(uint4 v) { return popc4(v); }

__device__ __forceinline__ void mma_fragment(int* c, uint2 lo, uint2 hi, uint2 b)
{
    mma_and_popc(c, lo.x, hi.x, lo.y, hi.y, b.x, b.y);
}

__device__ __forceinline__ void mma_fragment(int* c, uint4 lo, uint4 hi, uint4 b)
{
    mma_and_popc(c, lo.x, hi.x, lo.y, hi.y, b.x, b.y);
    mma_and_popc(c, lo.z, hi.z, lo.w, hi.w, b.z, b.w);
}

struct ConvShape {
    long long m, o, row_words, k, out_words;
    int h, w, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl, cw, pad_mode, x_classes, classes;
};

// Output pixel `row` as (image b, oy, ox); 32-bit divisions (several times
// cheaper than 64-bit ones) when every row index fits.
__device__ __forceinline__ long long pixel_of(long long row, const ConvShape& s, int& oy, int& ox)
{
    if (s.m <= 0x7fffffffLL) {
        const unsigned r = (unsigned)row, q = r / (unsigned)s.ow, b = q / (unsigned)s.oh;
        ox = (int)(r - q * (unsigned)s.ow);
        oy = (int)(q - b * (unsigned)s.oh);
        return b;
    }
    const long long q = row / s.ow, b = q / s.oh;
    ox = (int)(row - q * s.ow);
    oy = (int)(q - b * s.oh);
    return b;
}

// The epilogue's table, (classes, o_pad) int32 entries for o_pad = o rounded up to whole blocks
// of columns: for int32 sums the term -2 popcount(w[o]) + fix[class, o]; for the fused layer a
// bound b such that the layer's bit (fused_test in xnor_fused.h) is (u >= b) XOR flip[o], where
// z = u - 2 popcount(w[o]) + fix[class, o] (past the last channel a bound no u reaches, flip 0).
// The fused layer's flips follow, one 64-bit word per 64 columns (o_pad / 64 words, bit j of
// word q for column 64 q + j).  fix is border_fix[class, o] for classes > 0 with has_fix, else
// 0; direction and threshold are read with pack only.  |z| <= k and |u| <= 3 k < 2**31 (the
// Python side checks), so clamping the bounds to int32 is exact.
extern "C" __global__ void __launch_bounds__(256)
conv_class_table(const int* __restrict__ w_counts, const int* __restrict__ border_fix,
                 const signed char* __restrict__ direction, const int* __restrict__ threshold,
                 void* __restrict__ table, long long o, long long o_pad, long long classes, int has_fix, int pack)
{
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < classes * o_pad;
         idx += (long long)gridDim.x * blockDim.x) {
        const long long c = idx / o_pad, col = idx % o_pad;
        const bool ok = col < o;
        const long long term = (ok ? -2LL * w_counts[col] : 0) + (ok && c > 0 && has_fix ? border_fix[c * o + col] : 0);
        if (!pack) {
            reinterpret_cast<int*>(table)[idx] = (int)term;
            continue;
        }
        int b = 0x7fffffff;  // no u reaches it: a clear bit
        if (ok) {
            long long at;
            bool flip;
            fused_test(direction[col], threshold[col], at, flip);
            b = clamp_int32(at - term);  // z >= at is u >= at - term
        }
        reinterpret_cast<int*>(table)[idx] = b;
    }
    if (!pack) return;
    u64* flips = reinterpret_cast<u64*>(reinterpret_cast<int*>(table) + classes * o_pad);
    for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; q < o_pad / 64; q += (long long)gridDim.x * blockDim.x) {
        u64 bits = 0;
        for (int j = 0; j < 64 && q * 64 + j < o; ++j) {
            long long at;
            bool flip;
            fused_test(direction[q * 64 + j], threshold[q * 64 + j], at, flip);
            bits |= (u64)flip << j;
        }
        flips[q] = bits;
    }
}

// The block's BN columns of the epilogue's table (conv_class_table), class by class, into tab
// (cp.async: the caller waits).  o_pad = gridDim.y * BN.
template <int BN, int THREADS>
__device__ __forceinline__ void copy_table_columns(int* tab, const void* __restrict__ table, const int classes,
                                                   const long long col0)
{
    constexpr int CHUNKS = BN * 4 / 16;  // 16-byte copies per class
    const long long o_pad = (long long)gridDim.y * BN;
    for (int idx = threadIdx.x; idx < classes * CHUNKS; idx += THREADS) {
        const int c = idx / CHUNKS, chunk = idx % CHUNKS;
        cp_async16(reinterpret_cast<uint4*>(tab + c * BN) + chunk,
                   reinterpret_cast<const uint4*>(reinterpret_cast<const int*>(table) + c * o_pad + col0) + chunk, 16);
    }
}

// The epilogue of both conv kernels: the accumulators of a block's BM x BN tile, the row
// popcounts its warps counted, and each row's border class (row_class) give int32 sums or the
// fused layer's words.  scratch: shared memory free for the row terms (BM ints) and, for int32
// sums, the warps' staging tiles (WARPS_M * WARPS_N * 16 * CONV_MMA_STAGE_LD ints) after them;
// the caller has synchronized the block after its last read of it.
template <int WARPS_N, bool PACK, int MT>
__device__ __forceinline__ void conv_mma_epilogue(int (&acc)[MT][8][4], const int (&pop_a)[MT][2], int* scratch,
                                                  const int* row_class, const int* tab, const u64 flip, void* out,
                                                  const ConvShape& s, const long long row0, const long long col0)
{
    constexpr int BM = CONV_MMA_BM;
    constexpr int WARPS_M = CONV_MMA_WARPS_M;
    constexpr int WM = BM / WARPS_M;
    constexpr int BN = 64 * WARPS_N;
    constexpr int NT = 8;
    static_assert(WM / 16 == MT, "a warp's m-tiles");
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int g = lane / 4;
    const int t = lane % 4;
    const int wm = warp / WARPS_N;
    const int wn = warp % WARPS_N;
    int* row_term = scratch;  // k - 2 popcount(row) for the BM rows
#pragma unroll
    for (int i = 0; i < MT; ++i) {
        if (i % WARPS_N != wn) continue;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            int c = pop_a[i][h];
            c += __shfl_xor_sync(0xffffffffu, c, 1);
            c += __shfl_xor_sync(0xffffffffu, c, 2);
            if (t == 0) row_term[wm * WM + i * 16 + g + 8 * h] = (int)s.k - 2 * c;
        }
    }
    __syncthreads();

    // Accumulator r of tile (i, j): row g (+ 8 for r >= 2), column j * 8 + 2 t + r % 2 of the warp's 64.
    // u = 4 acc + k - 2 popcount(row); the row's class picks its row of the table.
    const long long warp_col = col0 + wn * 64;
    int rterm[MT][2];
    const int* rtab[MT][2];  // the table's entry for the row's class at the thread's first column
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int local = wm * WM + i * 16 + g + 8 * h;
            rterm[i][h] = row_term[local];
            rtab[i][h] = tab + row_class[local] * BN + wn * 64 + 2 * t;
        }

    if constexpr (PACK) {
        unsigned bits[MT][2][2] = {};  // (tile, row half, columns 0-31 / 32-63), at positions j % 4 * 8 + e
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
                for (int j = 0; j < NT; ++j) {
                    const int2 b = *reinterpret_cast<const int2*>(rtab[i][h] + j * 8);  // columns 2 t, 2 t + 1
                    const int u0 = 4 * acc[i][j][2 * h] + rterm[i][h], u1 = 4 * acc[i][j][2 * h + 1] + rterm[i][h];
                    if (u0 >= b.x) bits[i][h][j / 4] |= 1u << (j % 4 * 8);
                    if (u1 >= b.y) bits[i][h][j / 4] |= 1u << (j % 4 * 8 + 1);
                }
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                unsigned lo = bits[i][h][0] << (2 * t), hi = bits[i][h][1] << (2 * t);
                lo |= __shfl_xor_sync(0xffffffffu, lo, 1);
                hi |= __shfl_xor_sync(0xffffffffu, hi, 1);
                lo |= __shfl_xor_sync(0xffffffffu, lo, 2);
                hi |= __shfl_xor_sync(0xffffffffu, hi, 2);
                const long long row = row0 + wm * WM + i * 16 + g + 8 * h;
                if (t == 0 && row < s.m && warp_col < s.o)
                    reinterpret_cast<u64*>(out)[row * s.out_words + warp_col / 64] = (((u64)hi << 32) | lo) ^ flip;
            }
        return;
    } else if (s.o % 4 == 0 && warp_col + 64 <= s.o) {
        // The warp's 64 columns, whole rows of 16-byte vectors: each 16 x 64 tile goes through
        // the warp's own slice of the scratch (rows of 72 ints: neither the pair
        // writes nor the vector reads conflict), then two output rows of 256 bytes a store.
        int* stage = row_term + BM + warp * (16 * CONV_MMA_STAGE_LD);
#pragma unroll
        for (int i = 0; i < MT; ++i) {
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
                for (int j = 0; j < NT; ++j) {
                    const int2 c2 = *reinterpret_cast<const int2*>(rtab[i][h] + j * 8);
                    *reinterpret_cast<int2*>(stage + (g + 8 * h) * CONV_MMA_STAGE_LD + j * 8 + 2 * t) =
                        make_int2(4 * acc[i][j][2 * h] + rterm[i][h] + c2.x, 4 * acc[i][j][2 * h + 1] + rterm[i][h] + c2.y);
                }
            __syncwarp();
#pragma unroll
            for (int p = 0; p < 8; ++p) {
                const int r = 2 * p + lane / 16;
                const long long row = row0 + wm * WM + i * 16 + r;
                const int4 v = *reinterpret_cast<const int4*>(stage + r * CONV_MMA_STAGE_LD + lane % 16 * 4);
                if (row < s.m) *reinterpret_cast<int4*>(reinterpret_cast<int*>(out) + row * s.o + warp_col + lane % 16 * 4) = v;
            }
            __syncwarp();
        }
    } else {
        const bool whole = s.o % 2 == 0 && warp_col + 64 <= s.o;  // the warp's 64 columns, in pairs
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const long long row = row0 + wm * WM + i * 16 + g + 8 * h;
                if (row >= s.m) continue;
                int* out_row = reinterpret_cast<int*>(out) + row * s.o + warp_col + 2 * t;
#pragma unroll
                for (int j = 0; j < NT; ++j) {
                    const int2 c2 = *reinterpret_cast<const int2*>(rtab[i][h] + j * 8);
                    const int v0 = 4 * acc[i][j][2 * h] + rterm[i][h] + c2.x;
                    const int v1 = 4 * acc[i][j][2 * h + 1] + rterm[i][h] + c2.y;
                    if (whole) {
                        *reinterpret_cast<int2*>(out_row + j * 8) = make_int2(v0, v1);
                    } else {
                        // columns past the last channel, or an odd number of channels
                        const long long col = warp_col + j * 8 + 2 * t;
                        if (col < s.o) out_row[j * 8] = v0;
                        if (col + 1 < s.o) out_row[j * 8 + 1] = v1;
                    }
                }
            }
    }
}

template <int KSTEP, int WARPS_N, bool PACK>
__device__ __forceinline__ void conv_mma_body(
    const u64* __restrict__ x, const u64* __restrict__ w_rows, const void* __restrict__ table,
    const u64* __restrict__ pad, void* __restrict__ out, const int4* __restrict__ taps,
    const int* __restrict__ y_class, const int* __restrict__ x_class, const ConvShape s)
{
    constexpr int BM = CONV_MMA_BM;
    constexpr int WARPS_M = CONV_MMA_WARPS_M;
    constexpr int STAGES = CONV_MMA_STAGES;
    constexpr int BN = 64 * WARPS_N;
    constexpr int THREADS = WARPS_M * WARPS_N * 32;
    constexpr int WM = BM / WARPS_M;
    constexpr int MT = WM / 16;
    constexpr int NT = 8;  // 64 columns a warp
    constexpr int ROW_STEP = THREADS / KSTEP;  // a thread gathers word (tid % KSTEP) of rows tid / KSTEP + i * ROW_STEP
    constexpr int A_ROWS = BM / ROW_STEP;
    constexpr int B_CHUNKS = BN * KSTEP / 2 / THREADS;  // 16-byte weight chunks a thread loads a stage
    static_assert(THREADS % KSTEP == 0 && BM % ROW_STEP == 0 && B_CHUNKS >= 1 && BN * KSTEP / 2 % THREADS == 0,
                  "tile loads must divide among threads");
    static_assert(PACK || (BM + WARPS_M * WARPS_N * 16 * CONV_MMA_STAGE_LD) * 4 <= STAGES * (BM + BN) * KSTEP * 8,
                  "the int32 epilogue's staging tiles fit in the stage buffers");
    typedef typename Fragment<KSTEP>::type frag;

    extern __shared__ uint4 smem[];
    u64* a_tiles = reinterpret_cast<u64*>(smem);  // STAGES x BM x KSTEP words
    u64* b_tiles = a_tiles + STAGES * BM * KSTEP;  // STAGES x BN x KSTEP words
    // Per row of the block: its window origin's word offset in x (negative where the origin lies
    // in the padding; only taps inside the image are read) and coordinates (y0, x0).
    long long* row_origin = reinterpret_cast<long long*>(b_tiles + STAGES * BN * KSTEP);
    int2* row_yx = reinterpret_cast<int2*>(row_origin + BM);
    int* row_class = reinterpret_cast<int*>(row_yx + BM);  // zero padding: the row's border class, 0 inside
    // The block's columns of the epilogue's table (conv_class_table), class by class: the fused
    // layer's bounds, or the sums' terms.  Copied with the first stage.
    int* tab = row_class + BM;

    const long long row0 = (long long)blockIdx.x * BM;
    const long long col0 = (long long)blockIdx.y * BN;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int g = lane / 4;
    const int t = lane % 4;
    const int wm = warp / WARPS_N;
    const int wn = warp % WARPS_N;

    const int a_word = threadIdx.x % KSTEP;
    const int k_tiles = (int)((s.row_words + KSTEP - 1) / KSTEP);
    // The taps of the first stages, read before the block's set-up so that their latency overlaps it.
    int4 first_taps[STAGES - 1];
#pragma unroll
    for (int st = 0; st < STAGES - 1; ++st) first_taps[st] = st < k_tiles ? taps[st * KSTEP + a_word] : make_int4(0, 0, 0, 0);

    // The fused layer's flips of the warp's 64 columns (see conv_class_table), read early too.
    u64 flip = 0;
    if constexpr (PACK) {
        const long long o_pad = (long long)gridDim.y * BN;
        flip = reinterpret_cast<const u64*>(reinterpret_cast<const int*>(table) + s.classes * o_pad)[(col0 + wn * 64) / 64];
    }

    // The row's border classes, loaded here and stored for the epilogue after the main loop
    // (nothing before it reads them, so the loads' latency hides behind it).
    int y_cls = 0, x_cls = 0;
    if (threadIdx.x < BM) {
        const long long row = row0 + threadIdx.x;
        int2 yx = make_int2(CONV_MMA_NO_ROW, CONV_MMA_NO_ROW);
        long long origin = 0;
        if (row < s.m) {
            int oy, ox;
            const long long b = pixel_of(row, s, oy, ox);
            yx = make_int2(oy * s.sh - s.pt, ox * s.sw - s.pl);
            origin = (b * s.h * s.w + (long long)yx.x * s.w + yx.y) * s.cw;
            if (s.pad_mode == 0) {
                y_cls = y_class[oy];
                x_cls = x_class[ox];
            }
        }
        row_yx[threadIdx.x] = yx;
        row_origin[threadIdx.x] = origin;
    }
    copy_table_columns<BN, THREADS>(tab, table, s.classes, col0);
    __syncthreads();

    // Window word q: (row offset, column offset, word offset from the origin, channel word); past the
    // window (CONV_MMA_PAST, 0, 0, -1), a row offset no origin brings inside the image.
    auto load_stage = [&](int slot, int kt, const int4 tap) {
        u64* a_tile = a_tiles + slot * BM * KSTEP;
        if (s.pad_mode == 1 && tap.w >= 0) {  // taps in the padding read the pad word
#pragma unroll
            for (int i = 0; i < A_ROWS; ++i) {
                const int r = threadIdx.x / KSTEP + i * ROW_STEP;
                const int2 yx = row_yx[r];
                const bool inside = (unsigned)(yx.x + tap.x) < (unsigned)s.h && (unsigned)(yx.y + tap.y) < (unsigned)s.w;
                cp_async8(a_tile + r * KSTEP + a_word, inside ? x + (row_origin[r] + tap.z) : pad + tap.w, 8);
            }
        } else {  // taps in the padding and past the window are zeros
#pragma unroll
            for (int i = 0; i < A_ROWS; ++i) {
                const int r = threadIdx.x / KSTEP + i * ROW_STEP;
                const int2 yx = row_yx[r];
                const bool inside = (unsigned)(yx.x + tap.x) < (unsigned)s.h && (unsigned)(yx.y + tap.y) < (unsigned)s.w;
                cp_async8(a_tile + r * KSTEP + a_word, inside ? x + (row_origin[r] + tap.z) : x, inside ? 8 : 0);
            }
        }
        uint4* b_tile = reinterpret_cast<uint4*>(b_tiles + slot * BN * KSTEP);
#pragma unroll
        for (int i = 0; i < B_CHUNKS; ++i) {
            const int idx = threadIdx.x + i * THREADS;
            const long long col = col0 + idx / (KSTEP / 2);
            const long long word = (long long)kt * KSTEP + 2 * (idx % (KSTEP / 2));
            const bool ok = col < s.o && word < s.row_words;
            cp_async16(b_tile + idx, ok ? w_rows + col * s.row_words + word : w_rows, ok ? 16 : 0);
        }
    };

    int acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0;
    int pop_a[MT][2];  // rows g and g + 8 of m-tile i, counted by the warps with i % WARPS_N == wn
#pragma unroll
    for (int i = 0; i < MT; ++i) pop_a[i][0] = pop_a[i][1] = 0;

#pragma unroll
    for (int st = 0; st < STAGES - 1; ++st) {
        if (st < k_tiles) load_stage(st, st, first_taps[st]);
        cp_async_commit();
    }
    int slot = 0;
    for (int kt = 0; kt < k_tiles; ++kt) {
        const int next = kt + STAGES - 1;
        const int4 tap = next < k_tiles ? taps[next * KSTEP + a_word] : make_int4(0, 0, 0, 0);  // before the wait
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        // The slot refilled here was read in iteration kt - 1, finished by every thread (the barrier above).
        if (next < k_tiles) load_stage(slot == 0 ? STAGES - 1 : slot - 1, next, tap);
        cp_async_commit();

        const frag* a_tile = reinterpret_cast<const frag*>(a_tiles + slot * BM * KSTEP);
        const frag* b_tile = reinterpret_cast<const frag*>(b_tiles + slot * BN * KSTEP);
        frag lo[MT], hi[MT];
#pragma unroll
        for (int i = 0; i < MT; ++i) {
            lo[i] = a_tile[(wm * WM + i * 16 + g) * 4 + t];
            hi[i] = a_tile[(wm * WM + i * 16 + g + 8) * 4 + t];
            if (i % WARPS_N == wn) {
                pop_a[i][0] += popc_fragment(lo[i]);
                pop_a[i][1] += popc_fragment(hi[i]);
            }
        }
#pragma unroll
        for (int j = 0; j < NT; ++j) {
            const frag b = b_tile[(wn * 64 + j * 8 + g) * 4 + t];
#pragma unroll
            for (int i = 0; i < MT; ++i) mma_fragment(acc[i][j], lo[i], hi[i], b);
        }
        slot = slot == STAGES - 1 ? 0 : slot + 1;
    }
    if (threadIdx.x < BM) row_class[threadIdx.x] = y_cls * s.x_classes + x_cls;  // 0 inside, and for pad modes +-1
    cp_async_wait<0>();
    __syncthreads();  // the stage buffers are free, the row classes stored

    conv_mma_epilogue<WARPS_N, PACK, MT>(acc, pop_a, reinterpret_cast<int*>(smem), row_class, tab, flip, out, s, row0, col0);
}

// The halo kernel: the same tiles and int32 sums (for the fused layer the gather kernel measured as
// fast or faster: benchmarks/RESULTS.md), for layers whose input rows fit in shared memory, in
// persistent blocks.  A tile of BM pixels spans `lines` output rows (its first and last may be
// partial); for each of them and each kernel row dy the block copies the input row under that
// kernel row, oy * sh - pt + dy * dh, as one line of wp = (ow - 1) * sw + (kw - 1) * dw + 1
// pixels starting at column -pl (the pad word where the row or column is in the padding).  Window
// word q of pixel (line j, ox) is then at a sum of two offsets: ((j * KH) * wp + ox * sw) * CW for
// the pixel and (dy * wp + dx * dw) * CW + q % CW for the word (tap_off, -1 past the window: a
// zero word), so the main loop has no barrier, no bounds test and no gather.  A block loads its
// BN weight rows (pitch rwp words, rwp % 8 == 4: a warp's B fragments spread over all banks) and
// its table once, then takes the tiles blockIdx.x, + gridDim.x, ...: the lines of the next tile
// are copied (a second buffer) while the block computes and stores the current one.  Shared
// memory: the epilogue's scratch (`scratch` words), the weights, two buffers of halo_words
// (lines * kh * wp * cw, rounded up to even) words, then tap_off, the pixel offsets and border
// classes of both buffers, and the table.  KSTEP 4: each k step is one mma step.  The layer has
// fewer than 2**30 output pixels.
template <int WARPS_N>
__device__ __forceinline__ void conv_halo_body(
    const u64* __restrict__ x, const u64* __restrict__ w_rows, const void* __restrict__ table,
    const u64* __restrict__ pad, void* __restrict__ out, const int* __restrict__ y_class,
    const int* __restrict__ x_class, const ConvShape s, const int lines, const int wp, const int rwp, const int scratch)
{
    constexpr int BM = CONV_MMA_BM;
    constexpr int WARPS_M = CONV_MMA_WARPS_M;
    constexpr int BN = 64 * WARPS_N;
    constexpr int THREADS = WARPS_M * WARPS_N * 32;
    constexpr int WARPS = WARPS_M * WARPS_N;
    constexpr int WM = BM / WARPS_M;
    constexpr int MT = WM / 16;
    constexpr int NT = 8;

    extern __shared__ uint4 smem[];
    const int line_words = wp * s.cw;
    const int halo_words = (lines * s.kh * line_words + 1) / 2 * 2;
    u64* w_tile = reinterpret_cast<u64*>(smem) + scratch;  // BN rows of rwp words
    u64* halos = w_tile + BN * rwp;  // two buffers of halo_words
    int* tap_off = reinterpret_cast<int*>(halos + 2 * halo_words);  // rwp entries
    int* pix_offs = tap_off + rwp;  // two buffers of BM entries
    int* row_classes = pix_offs + 2 * BM;  // two buffers of BM: zero padding: the row's border class, 0 inside
    int* tab = row_classes + 2 * BM;  // the block's columns of the epilogue's table, class by class

    const long long col0 = (long long)blockIdx.y * BN;
    const unsigned out_rows = (unsigned)(s.m / s.ow);  // N * OH
    const unsigned tiles = (unsigned)((s.m + BM - 1) / BM);
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int g = lane / 4;
    const int t = lane % 4;
    const int wm = warp / WARPS_N;
    const int wn = warp % WARPS_N;
    const int k_tiles = (int)((s.row_words + 3) / 4);
    const int window = s.kh * s.kw * s.cw;

    copy_table_columns<BN, THREADS>(tab, table, s.classes, col0);
    // The weights: k_tiles * 4 words of each of the block's columns (zeros past row_words and o).
    {
        const int chunks = k_tiles * 2;  // 16-byte chunks a row
        for (int idx = threadIdx.x; idx < BN * chunks; idx += THREADS) {
            const int col = idx / chunks, word = idx % chunks * 2;
            const bool ok = col0 + col < s.o && word < s.row_words;  // row_words is even
            cp_async16(reinterpret_cast<uint4*>(w_tile + col * rwp + word),
                       ok ? w_rows + (col0 + col) * s.row_words + word : w_rows, ok ? 16 : 0);
        }
    }
    for (int q = threadIdx.x; q < rwp; q += THREADS) {
        int off = -1;
        if (q < window) {
            const int tap = q / s.cw, dy = tap / s.kw, dx = tap - dy * s.kw;
            off = (dy * wp + dx * s.dw) * s.cw + (q - tap * s.cw);
        }
        tap_off[q] = off;
    }

    // Copies tile `tile`'s lines into buffer `buf` and writes its pixels' offsets; returns the
    // border class of the thread's pixel (threads < BM), loaded now and stored by the caller.
    // Pixel and row indices are 32-bit (m < 2**30: the Python side checks), as divisions by the
    // layer's sizes are much of a tile's instructions.
    auto load_tile = [&](const unsigned tile, const int buf) {
        const unsigned row0 = tile * BM, line0 = row0 / (unsigned)s.ow;  // the output row of the tile's first pixel
        u64* halo = halos + buf * halo_words;
        for (int line = warp; line < lines * s.kh; line += WARPS) {  // a warp a line
            const int j = line / s.kh, dy = line - j * s.kh;
            const unsigned out_row = line0 + j;
            unsigned b = 0;
            int iy = -1;
            if (out_row < out_rows) {
                b = out_row / (unsigned)s.oh;
                iy = (int)(out_row - b * (unsigned)s.oh) * s.sh - s.pt + dy * s.dh;
            }
            const bool row_inside = (unsigned)iy < (unsigned)s.h;
            const u64* src = x + (((long long)b * s.h + (row_inside ? iy : 0)) * s.w - s.pl) * s.cw;  // word e of the line
            u64* dst = halo + line * line_words;
            const int first = s.pl * s.cw, last = first + s.w * s.cw;  // the line's words inside the image
            for (int e = lane; e < line_words; e += 32) {
                if (row_inside && e >= first && e < last)
                    cp_async8(dst + e, src + e, 8);
                else if (s.pad_mode == 1 && out_row < out_rows)
                    cp_async8(dst + e, pad + e % s.cw, 8);
                else
                    cp_async8(dst + e, x, 0);
            }
        }
        int cls = 0;
        if (threadIdx.x < BM) {
            const unsigned row = row0 + threadIdx.x;
            int off = 0;
            if (row < s.m) {
                const unsigned out_row = row / (unsigned)s.ow;
                const int ox = (int)(row - out_row * (unsigned)s.ow);
                off = ((int)(out_row - line0) * s.kh * wp + ox * s.sw) * s.cw;
                if (s.pad_mode == 0) cls = y_class[out_row % (unsigned)s.oh] * s.x_classes + x_class[ox];
            }
            pix_offs[buf * BM + threadIdx.x] = off;
        }
        return cls;
    };

    unsigned tile = blockIdx.x;
    int cls = load_tile(tile, 0);
    cp_async_commit();
    if (threadIdx.x < BM) row_classes[threadIdx.x] = cls;
    for (int buf = 0; tile < tiles; tile += gridDim.x, buf ^= 1) {
        const unsigned next = tile + gridDim.x;
        cls = 0;
        if (next < tiles) cls = load_tile(next, buf ^ 1);  // into the buffer the last tile read
        cp_async_commit();
        cp_async_wait<1>();  // this tile's lines (and, first, the weights and table) are in
        __syncthreads();

        int acc[MT][NT][4];
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
                for (int r = 0; r < 4; ++r) acc[i][j][r] = 0;
        int pop_a[MT][2];  // rows g and g + 8 of m-tile i, counted by the warps with i % WARPS_N == wn
        int a_off[MT][2];
        const int* pix_off = pix_offs + buf * BM;
#pragma unroll
        for (int i = 0; i < MT; ++i) {
            pop_a[i][0] = pop_a[i][1] = 0;
            a_off[i][0] = pix_off[wm * WM + i * 16 + g];
            a_off[i][1] = pix_off[wm * WM + i * 16 + g + 8];
        }
        const uint2* a_words = reinterpret_cast<const uint2*>(halos + buf * halo_words);
        const uint2* b_words = reinterpret_cast<const uint2*>(w_tile) + (wn * 64 + g) * rwp + t;
#pragma unroll 2
        for (int kt = 0; kt < k_tiles; ++kt) {
            const int off = tap_off[kt * 4 + t];
            uint2 lo[MT], hi[MT];
#pragma unroll
            for (int i = 0; i < MT; ++i) {
                lo[i] = off >= 0 ? a_words[a_off[i][0] + off] : make_uint2(0, 0);
                hi[i] = off >= 0 ? a_words[a_off[i][1] + off] : make_uint2(0, 0);
                if (i % WARPS_N == wn) {
                    pop_a[i][0] += popc_fragment(lo[i]);
                    pop_a[i][1] += popc_fragment(hi[i]);
                }
            }
#pragma unroll
            for (int j = 0; j < NT; ++j) {
                const uint2 b = b_words[j * 8 * rwp + kt * 4];
#pragma unroll
                for (int i = 0; i < MT; ++i) mma_fragment(acc[i][j], lo[i], hi[i], b);
            }
        }
        // The next tile's classes, loaded behind this tile's products; the epilogue's barrier orders
        // them before their reads, and this tile's reads of the lines before the next copies.
        if (threadIdx.x < BM) row_classes[(buf ^ 1) * BM + threadIdx.x] = cls;
        conv_mma_epilogue<WARPS_N, false, MT>(acc, pop_a, reinterpret_cast<int*>(smem), row_classes + buf * BM, tab,
                                              0, out, s, (long long)tile * BM, col0);
    }
    cp_async_wait<0>();
}

// Launch: grid (ceil(m / CONV_MMA_BM), ceil(o / (64 * WARPS_N))), block
// CONV_MMA_WARPS_M * WARPS_N * 32 threads, dynamic shared memory
// CONV_MMA_STAGES * (CONV_MMA_BM + 64 * WARPS_N) * KSTEP * 8 + CONV_MMA_BM * 20 +
// classes * 64 * WARPS_N * 4 bytes.  Every product term u = z + 2 popcount(weights)
// must fit in int32: 3 k < 2**31.  Every argument is 8 bytes (the loader fills one argument
// block); out is int32 sums, or for the _pack kernels words; table is conv_class_table's, with
// o_pad = gridDim.y * 64 * WARPS_N; taps holds ceil(row_words / KSTEP) * KSTEP entries.
#define XNORCORE_CONV_MMA(NAME, KSTEP, WARPS_N, PACK)                                                           \
    extern "C" __global__ void __launch_bounds__(CONV_MMA_WARPS_M * WARPS_N * 32, CONV_MMA_BLOCKS / WARPS_N)    \
    NAME(const u64* __restrict__ x, const u64* __restrict__ w_rows, const void* __restrict__ table,             \
         const u64* __restrict__ pad, void* __restrict__ out, const int4* __restrict__ taps,                    \
         const int* __restrict__ y_class, const int* __restrict__ x_class, long long m, long long o,             \
         long long row_words, long long k, long long h, long long w, long long oh, long long ow, long long kh,   \
         long long kw, long long sh, long long sw, long long dh, long long dw, long long pt, long long pl,       \
         long long cw, long long pad_mode, long long x_classes, long long classes)                             \
    {                                                                                                          \
        const ConvShape s = {m, o, row_words, k, (o + 63) / 64, (int)h, (int)w, (int)oh, (int)ow, (int)kh,     \
                             (int)kw, (int)sh, (int)sw, (int)dh, (int)dw, (int)pt, (int)pl, (int)cw,            \
                             (int)pad_mode, (int)x_classes, (int)classes};                                      \
        conv_mma_body<KSTEP, WARPS_N, PACK>(x, w_rows, table, pad, out, taps, y_class, x_class, s);            \
    }

XNORCORE_CONV_MMA(conv_mma_k8_n1, 8, 1, false)
XNORCORE_CONV_MMA(conv_mma_k8_n2, 8, 2, false)
XNORCORE_CONV_MMA(conv_mma_k4_n1_pack, 4, 1, true)
XNORCORE_CONV_MMA(conv_mma_k4_n2_pack, 4, 2, true)
XNORCORE_CONV_MMA(conv_mma_k8_n1_pack, 8, 1, true)
XNORCORE_CONV_MMA(conv_mma_k8_n2_pack, 8, 2, true)

// Launch of the halo kernels: grid (blocks, ceil(o / (64 * WARPS_N))) for any number of blocks
// up to ceil(m / CONV_MMA_BM), block as above; dynamic shared memory (scratch + 64 * WARPS_N *
// rwp + 2 * halo_words) * 8 + (rwp + 4 * CONV_MMA_BM + classes * 64 * WARPS_N) * 4 bytes, where
// scratch holds the epilogue's row terms (CONV_MMA_BM ints) and for int32 sums its staging tiles
// (CONV_MMA_WARPS_M * WARPS_N * 16 * CONV_MMA_STAGE_LD ints), in words, and halo_words =
// lines * kh * wp * cw rounded up to even.  Arguments as above without taps, then lines, wp,
// rwp and scratch.
#define XNORCORE_CONV_HALO(NAME, WARPS_N)                                                                      \
    extern "C" __global__ void __launch_bounds__(CONV_MMA_WARPS_M * WARPS_N * 32, CONV_MMA_BLOCKS / WARPS_N)    \
    NAME(const u64* __restrict__ x, const u64* __restrict__ w_rows, const void* __restrict__ table,             \
         const u64* __restrict__ pad, void* __restrict__ out, const int* __restrict__ y_class,                   \
         const int* __restrict__ x_class, long long m, long long o, long long row_words, long long k,            \
         long long h, long long w, long long oh, long long ow, long long kh, long long kw, long long sh,         \
         long long sw, long long dh, long long dw, long long pt, long long pl, long long cw, long long pad_mode, \
         long long x_classes, long long classes, long long lines, long long wp, long long rwp, long long scratch) \
    {                                                                                                          \
        const ConvShape s = {m, o, row_words, k, (o + 63) / 64, (int)h, (int)w, (int)oh, (int)ow, (int)kh,     \
                             (int)kw, (int)sh, (int)sw, (int)dh, (int)dw, (int)pt, (int)pl, (int)cw,            \
                             (int)pad_mode, (int)x_classes, (int)classes};                                      \
        conv_halo_body<WARPS_N>(x, w_rows, table, pad, out, y_class, x_class, s, (int)lines, (int)wp,           \
                                (int)rwp, (int)scratch);                                                        \
    }

XNORCORE_CONV_HALO(conv_halo_n1, 1)
XNORCORE_CONV_HALO(conv_halo_n2, 2)
