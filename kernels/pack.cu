// Sign packing and row popcounts.
//
// pack_rows_<dtype>: x (rows, length) C-contiguous -> words (rows, n_words) uint64
// in the layout of xnor_layout.h (padding bits 0).  One warp builds one
// word from two ballots over 32 consecutive elements each, so loads are
// coalesced.  A NaN sets *has_nan (its bit is 0, but the caller raises).
//
// pack_cols_<dtype>: the same for x packed along its first axis (no transposed copy).
// sign_pack_rows_float32 and sign_pack_cols_float32 also write the signs as float32.
//
// threshold_pack_float32: the signs of direction[j] * z[r, j] - threshold[j] for float32
// sums z (rows, length), packed as pack_rows packs x (the hidden layer after a real first
// layer: batch norm and sign folded into one comparison per unit).
//
// row_popcounts: popcount of every row of two word arrays, one warp per row
// (the row popcounts that the mma GEMM kernel needs).

#include "xnor_layout.h"
#include "xnor_fused.h"

typedef xnor_word u64;

static constexpr int PACK_THREADS = 256;
static constexpr int POPCOUNT_THREADS = 256;

// The value whose sign pack_rows packs: the element itself ...
struct Identity {
    template <typename T>
    __device__ __forceinline__ T operator()(T v, long long) const { return v; }
};

// ... or the folded batch norm of a unit, in the float32 operations of the array
// path (z * direction, then - threshold; no contraction into one rounding).
struct Threshold {
    const signed char* __restrict__ direction;
    const float* __restrict__ threshold;
    __device__ __forceinline__ float operator()(float z, long long j) const
    {
        return __fsub_rn(__fmul_rn(z, (float)direction[j]), threshold[j]);
    }
};

// Words a warp builds per step of its loop: their loads are issued together, so
// that enough bytes are in flight to keep the memory busy.
static constexpr int PACK_WORDS_PER_WARP = 4;

// With `signs`, each element's sign is also written there as +-1.0f (x's layout).
template <typename T, typename Value = Identity>
__device__ __forceinline__ void pack_rows(const T* __restrict__ x, long long rows, long long length,
                                          long long n_words, u64* __restrict__ words,
                                          int* __restrict__ has_nan, Value value = Value(),
                                          float* __restrict__ signs = nullptr)
{
    const int lane = threadIdx.x % 32;
    const long long warps = (long long)gridDim.x * (blockDim.x / 32);
    // A task: PACK_WORDS_PER_WARP consecutive words of the (rows, n_words) result, which
    // may span rows (short rows: a conv's channels), with one division a task.
    const long long total = rows * n_words;
    bool nan_seen = false;
    for (long long task = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
         task * PACK_WORDS_PER_WARP < total; task += warps) {
        const long long first = task * PACK_WORDS_PER_WARP;
        long long r = first / n_words, w = first - r * n_words;
        bool bits[PACK_WORDS_PER_WARP][2];
#pragma unroll
        for (int u = 0; u < PACK_WORDS_PER_WARP; ++u) {
            const bool inside = first + u < total;
            const T* row = x + r * length;
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const long long j = w * 64 + 32 * half + lane;
                bits[u][half] = false;
                if (inside && j < length) {
                    const T v = value(row[j], j);
                    bits[u][half] = XNOR_SIGN_BIT(v);
                    nan_seen |= v != v;
                    if (signs) signs[r * length + j] = bits[u][half] ? 1.0f : -1.0f;
                }
            }
            if (++w == n_words) {
                w = 0;
                ++r;
            }
        }
#pragma unroll
        for (int u = 0; u < PACK_WORDS_PER_WARP; ++u) {
            const unsigned lo_bits = __ballot_sync(0xffffffffu, bits[u][0]);
            const unsigned hi_bits = __ballot_sync(0xffffffffu, bits[u][1]);
            if (lane == 0 && first + u < total) words[first + u] = (u64)lo_bits | ((u64)hi_bits << 32);
        }
    }
    if (__any_sync(0xffffffffu, nan_seen) && lane == 0) atomicOr(has_nan, 1);
}

// Launch: block PACK_THREADS threads, any grid (the loop strides over tasks;
// ceil(rows * n_words / PACK_WORDS_PER_WARP) / (PACK_THREADS / 32) blocks give each warp one).
#define XNORCORE_PACK_ROWS(NAME, T)                                                                  \
    extern "C" __global__ void __launch_bounds__(PACK_THREADS)                                       \
    NAME(const T* __restrict__ x, long long rows, long long length, long long n_words,               \
         u64* __restrict__ words, int* __restrict__ has_nan)                                         \
    {                                                                                                \
        pack_rows<T>(x, rows, length, n_words, words, has_nan);                                      \
    }

XNORCORE_PACK_ROWS(pack_rows_int8, signed char)
XNORCORE_PACK_ROWS(pack_rows_int16, short)
XNORCORE_PACK_ROWS(pack_rows_int32, int)
XNORCORE_PACK_ROWS(pack_rows_int64, long long)
XNORCORE_PACK_ROWS(pack_rows_float32, float)
XNORCORE_PACK_ROWS(pack_rows_float64, double)

// Launch: as pack_rows; direction and threshold hold `length` values.
extern "C" __global__ void __launch_bounds__(PACK_THREADS)
threshold_pack_float32(const float* __restrict__ z, long long rows, long long length, long long n_words,
                       const signed char* __restrict__ direction, const float* __restrict__ threshold,
                       u64* __restrict__ words, int* __restrict__ has_nan)
{
    pack_rows<float>(z, rows, length, n_words, words, has_nan, Threshold{direction, threshold});
}

// sign_pack_rows_float32: pack_rows_float32 that also writes sign(x) as float32 +-1 to
// `signs` (rows, length): a sign activation of training, as floats for the float
// products around it and as the words of the next layer's XNOR product, in one pass.
// Launch: as pack_rows.
extern "C" __global__ void __launch_bounds__(PACK_THREADS)
sign_pack_rows_float32(const float* __restrict__ x, long long rows, long long length, long long n_words,
                       u64* __restrict__ words, int* __restrict__ has_nan, float* __restrict__ signs)
{
    pack_rows<float>(x, rows, length, n_words, words, has_nan, Identity(), signs);
}

// pack_cols_<dtype>: x (length, cols) C-contiguous packed along its first axis
// -> words (cols, n_words), the layout of pack_rows applied to x.T without
// copying the transpose.  A thread builds word w of column c; the threads of a
// warp take consecutive columns, so each row read is coalesced.
// With `signs`, each element's sign is also written there as +-1.0f (x's layout).
template <typename T>
__device__ __forceinline__ void pack_cols(const T* __restrict__ x, long long length, long long cols,
                                          long long n_words, u64* __restrict__ words,
                                          int* __restrict__ has_nan, float* __restrict__ signs = nullptr)
{
    const long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    bool nan_seen = false;
    for (long long w = blockIdx.y; w < n_words; w += gridDim.y) {
        const long long j0 = w * 64;
        const int count = length - j0 < 64 ? (int)(length - j0) : 64;
        const T* p = x + j0 * cols + c;
        u64 bits = 0;
#pragma unroll 8
        for (int i = 0; i < count; ++i) {
            const T v = p[i * cols];
            const bool bit = XNOR_SIGN_BIT(v);
            bits |= (u64)bit << i;
            nan_seen |= v != v;
            if (signs) signs[(j0 + i) * cols + c] = bit ? 1.0f : -1.0f;
        }
        words[c * n_words + w] = bits;
    }
    if (nan_seen) atomicOr(has_nan, 1);
}

// Launch: block PACK_THREADS threads, grid (ceil(cols / PACK_THREADS), any y <= n_words).
#define XNORCORE_PACK_COLS(NAME, T)                                                                  \
    extern "C" __global__ void __launch_bounds__(PACK_THREADS)                                       \
    NAME(const T* __restrict__ x, long long length, long long cols, long long n_words,               \
         u64* __restrict__ words, int* __restrict__ has_nan)                                         \
    {                                                                                                \
        pack_cols<T>(x, length, cols, n_words, words, has_nan);                                      \
    }

XNORCORE_PACK_COLS(pack_cols_int8, signed char)
XNORCORE_PACK_COLS(pack_cols_int16, short)
XNORCORE_PACK_COLS(pack_cols_int32, int)
XNORCORE_PACK_COLS(pack_cols_int64, long long)
XNORCORE_PACK_COLS(pack_cols_float32, float)
XNORCORE_PACK_COLS(pack_cols_float64, double)

// sign_pack_cols_float32: pack_cols_float32 that also writes sign(x) as float32 +-1 to
// `signs` (length, cols): the binary weights of a training step, as the forward
// product's words and the backward pass's floats, in one read of the latent weights.
// Launch: as pack_cols.
extern "C" __global__ void __launch_bounds__(PACK_THREADS)
sign_pack_cols_float32(const float* __restrict__ x, long long length, long long cols, long long n_words,
                       u64* __restrict__ words, int* __restrict__ has_nan, float* __restrict__ signs)
{
    pack_cols<float>(x, length, cols, n_words, words, has_nan, signs);
}

// Launch: block POPCOUNT_THREADS threads, any grid (the loop strides over rows).
// Both operands of a product in one launch: counts holds the a_rows counts of a,
// then the b_rows counts of b.
extern "C" __global__ void __launch_bounds__(POPCOUNT_THREADS)
row_popcounts(const u64* __restrict__ a, long long a_rows, const u64* __restrict__ b, long long b_rows,
              long long n_words, int* __restrict__ counts)
{
    const int lane = threadIdx.x % 32;
    const long long warps = (long long)gridDim.x * (blockDim.x / 32);
    for (long long r = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; r < a_rows + b_rows;
         r += warps) {
        const u64* row = r < a_rows ? a + r * n_words : b + (r - a_rows) * n_words;
        int c = 0;
        for (long long w = lane; w < n_words; w += 32) c += __popcll(row[w]);
#pragma unroll
        for (int off = 16; off > 0; off /= 2) c += __shfl_xor_sync(0xffffffffu, c, off);
        if (lane == 0) counts[r] = c;
    }
}

// Launch: block POPCOUNT_THREADS threads, any grid (the loop strides over columns).
// The column tests of the fused wgmma layer (xnor_gemm_wgmma.cu, PACK): with
// pb = b_counts[j] and v = K - 2 pa + 4 popcount(a AND b) - 2 pb, the layer's bit
// direction * v - threshold >= 0 (in int32, fused_test of xnor_fused.h) is
// lo <= K - 2 pa + 4 popcount(a AND b) <= hi, for 3 K < 2**31 (the Python side
// checks).  Columns from n to padded never pass.
extern "C" __global__ void __launch_bounds__(POPCOUNT_THREADS)
column_bounds(const int* __restrict__ b_counts, const signed char* __restrict__ direction,
              const int* __restrict__ threshold, long long n, long long padded, int2* __restrict__ bounds)
{
    const int lowest = -0x7fffffff - 1, highest = 0x7fffffff;
    for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < padded;
         j += (long long)gridDim.x * blockDim.x) {
        int2 b = make_int2(highest, lowest);  // empty
        if (j < n) {
            long long at;
            bool flip;
            fused_test(direction[j], threshold[j], at, flip);
            at += 2LL * b_counts[j];  // v >= at is K - 2 pa + 4 popcount(a AND b) >= at + 2 pb
            b = flip ? make_int2(lowest, clamp_int32(at - 1)) : make_int2(clamp_int32(at), highest);
        }
        bounds[j] = b;
    }
}
