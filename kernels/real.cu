// The real-valued output layer of a binary network on packed +-1 inputs.
//
// signed_sums_<columns>: words (rows, n_words) uint64 in the layout of xnor_layout.h, k
// bits per row, and real weights w (k, n_out) float64, C-contiguous ->
//
//     out[r, c] = sum, over j < k ascending, of s[r, j] * w[j, c], from 0.0, in double,
//
// with s = +1 for a set bit and -1 for a clear one: the order of the CPU
// kernels (xnorcore/csrc/real_layers.h).  The products are exact, so both give
// the same sums bit for bit and a sample's logits do not depend on its batch
// or its device.
//
// split_bf16x3: the real first layer's input for the tensor cores.  Raw rows x
// (rows, k) float32, standardized as the array path does it, v = (x - mean[c]) /
// scale in float32, then split into three bfloat16 parts whose sum is v:
//
//     b1 = bf16(v), b2 = bf16(v - b1), b3 = bf16(v - b1 - b2)   (round to nearest even)
//
// Each difference is exact in float32 and holds fewer bits than the one before:
// v has 24 significant bits, v - b1 at most 16 and v - b1 - b2 at most 8, which
// bfloat16 holds, so b1 + b2 + b3 = v exactly for |v| >= 2^-103, where every part is
// a normal number (below, CuPy's flush to zero leaves v within 2^-126).  Where v
// would round past the largest bfloat16, b1 is v truncated instead.  out (rows,
// blocks * kp) holds them in blocks kp >= k wide, zeros past k: a product of out
// with stacked bfloat16 parts of the weights, in float32 accumulation, is then
// v @ w with float32 products (see split_bf16x3 below).

#include "xnor_layout.h"

typedef xnor_word u64;

static constexpr int SIGNED_SUMS_THREADS = 128;
// Outputs per thread: the sums of one row for up to this many columns at once.
static constexpr int SIGNED_SUMS_COLUMNS = 16;

// Launch: block SIGNED_SUMS_THREADS threads, grid (ceil(rows / SIGNED_SUMS_THREADS),
// ceil(n_out / COLUMNS)); COLUMNS = min(n_out, SIGNED_SUMS_COLUMNS) picks the kernel.
// A thread adds the terms of one row to its COLUMNS sums, one bit at a time: the
// sign of a bit is found once for all of them, the weights of 64 bits come from
// shared memory (every thread reads the same address), and the sums are
// independent chains.  fma(+-1, v, acc) rounds acc +- v, exactly the addition.
template <int COLUMNS>
__device__ __forceinline__ void signed_sums_tile(const u64* __restrict__ words, long long rows, long long n_words,
                                                 long long k, const double* __restrict__ w, long long n_out,
                                                 double* __restrict__ out)
{
    __shared__ double tile[64][COLUMNS];
    const long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long c0 = (long long)blockIdx.y * COLUMNS;
    double acc[COLUMNS];
#pragma unroll
    for (int c = 0; c < COLUMNS; ++c)
        acc[c] = 0.0;
    for (long long base = 0; base < k; base += 64) {
        const int m = k - base < 64 ? (int)(k - base) : 64;
        __syncthreads();  // the tile of the last word is read
        for (int i = threadIdx.x; i < 64 * COLUMNS; i += blockDim.x) {
            const int b = i / COLUMNS, c = i - b * COLUMNS;
            tile[b][c] = b < m && c0 + c < n_out ? w[(base + b) * n_out + c0 + c] : 0.0;
        }
        __syncthreads();
        const u64 word = r < rows ? words[r * n_words + base / 64] : 0;
        for (int b = 0; b < m; ++b) {
            const double sign = (word >> b) & 1 ? 1.0 : -1.0;
#pragma unroll
            for (int c = 0; c < COLUMNS; ++c)
                acc[c] = fma(sign, tile[b][c], acc[c]);
        }
    }
    if (r < rows) {
#pragma unroll
        for (int c = 0; c < COLUMNS; ++c)
            if (c0 + c < n_out)
                out[r * n_out + c0 + c] = acc[c];
    }
}

#define XNORCORE_SIGNED_SUMS(COLUMNS)                                                                \
    extern "C" __global__ void __launch_bounds__(SIGNED_SUMS_THREADS)                              \
    signed_sums_##COLUMNS(const u64* __restrict__ words, long long rows, long long n_words, long long k, \
                          const double* __restrict__ w, long long n_out, double* __restrict__ out)  \
    {                                                                                              \
        signed_sums_tile<COLUMNS>(words, rows, n_words, k, w, n_out, out);                         \
    }

XNORCORE_SIGNED_SUMS(1)
XNORCORE_SIGNED_SUMS(2)
XNORCORE_SIGNED_SUMS(3)
XNORCORE_SIGNED_SUMS(4)
XNORCORE_SIGNED_SUMS(5)
XNORCORE_SIGNED_SUMS(6)
XNORCORE_SIGNED_SUMS(7)
XNORCORE_SIGNED_SUMS(8)
XNORCORE_SIGNED_SUMS(9)
XNORCORE_SIGNED_SUMS(10)
XNORCORE_SIGNED_SUMS(11)
XNORCORE_SIGNED_SUMS(12)
XNORCORE_SIGNED_SUMS(13)
XNORCORE_SIGNED_SUMS(14)
XNORCORE_SIGNED_SUMS(15)
XNORCORE_SIGNED_SUMS(16)

static constexpr int SPLIT_THREADS = 128;
// Columns a thread splits: its stores are 8 bytes wide (kp is a multiple of 8).
static constexpr int SPLIT_COLUMNS = 4;

// Launch: block SPLIT_THREADS threads, grid (min(rows, 2^31 - 1)); a block splits whole rows.
// blocks = 3 writes [b1 | b2 | b3]; blocks = 6 writes [b1 | b2 | b3 | b1 | b2 | b1], the
// row operand of the six products of a split with real weights' parts.
extern "C" __global__ void __launch_bounds__(SPLIT_THREADS)
split_bf16x3(const float* __restrict__ x, long long rows, long long k, const float* __restrict__ mean,
             const float* __restrict__ scale, long long kp, int blocks, unsigned short* __restrict__ out)
{
    // Rows of whole float4s from a 16-byte aligned start load four values at once.
    const bool vector = k % SPLIT_COLUMNS == 0 && (reinterpret_cast<unsigned long long>(x) & 15) == 0;
    const float s = *scale;
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* xr = x + r * k;
        unsigned short* o = out + r * blocks * kp;
        for (long long c0 = (long long)threadIdx.x * SPLIT_COLUMNS; c0 < kp; c0 += (long long)blockDim.x * SPLIT_COLUMNS) {
            float v[SPLIT_COLUMNS];
            if (vector && c0 < k) {
                const float4 q = *reinterpret_cast<const float4*>(xr + c0);
                v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
            } else {
#pragma unroll
                for (int i = 0; i < SPLIT_COLUMNS; ++i)
                    v[i] = c0 + i < k ? xr[c0 + i] : 0.0f;
            }
            unsigned short part[3][SPLIT_COLUMNS];
#pragma unroll
            for (int i = 0; i < SPLIT_COLUMNS; ++i) {
                float rest = c0 + i < k ? __fdiv_rn(__fsub_rn(v[i], mean[c0 + i]), s) : 0.0f;
#pragma unroll
                for (int p = 0; p < 3; ++p) {
                    const unsigned u = __float_as_uint(rest);
                    unsigned rounded = u + 0x7fffu + ((u >> 16) & 1u);  // to nearest even at bit 16
                    if ((rounded & 0x7f800000u) == 0x7f800000u)  // rest is finite: it rounded up to infinity
                        rounded = u;
                    part[p][i] = (unsigned short)(rounded >> 16);
                    rest = __fsub_rn(rest, __uint_as_float((unsigned)part[p][i] << 16));
                }
            }
            const int order[6] = {0, 1, 2, 0, 1, 0};
#pragma unroll
            for (int b = 0; b < 6; ++b) {
                if (b < blocks) {
                    const unsigned short* q = part[order[b]];
                    *reinterpret_cast<ushort4*>(o + b * kp + c0) = make_ushort4(q[0], q[1], q[2], q[3]);
                }
            }
        }
    }
}
