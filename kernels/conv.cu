// Binary convolution on the GPU as an implicit GEMM over packed channel words.
//
// Operands in the conv2d layout of xnor_layout.h: activations x (N, H, W, G, CW),
// each group's channels in CW words of their own; weights (O, KH, KW, CW), one
// row of KH * KW * CW words per output channel.  im2col_words lays the
// activations out as GEMM rows, (G, N * OH * OW, KH * KW * CW) words, taps in
// the padding reading the pad word of pad_value (+1: the valid channel bits
// set; -1 and 0: no bits set).  The GEMM kernels then compute
// XNOR_DOT over KH * KW * (C / G) bits exactly, since padding bits are clear in
// both operands.  Zero padding contributes 0, not -1: conv_zero_pad_fix adds
// back, for each output pixel and channel, the weight sums of the taps that
// fell in the padding (a tap read as all -1 contributed -sum(w)).
//
// Indices: the element counts fit in int64; one image's row count and the
// words per GEMM row fit in int32 (the Python side checks).

#include "xnor_layout.h"

typedef xnor_word u64;

static constexpr int CONV_THREADS = 256;

// Launch: block CONV_THREADS threads, any 1-D grid (the loop strides over words).
// Each row holds row_words >= KH * KW * CW words, the last ones zero (the GEMM
// kernels read rows of an even number of words).  A thread a word: a warp per
// row measured 1.4x slower with the short rows of 3x3 windows over 64 channels.
extern "C" __global__ void __launch_bounds__(CONV_THREADS)
im2col_words(const u64* __restrict__ x, const u64* __restrict__ pad, u64* __restrict__ cols,
             long long n, int h, int w, int oh, int ow, int kh, int kw, int sh, int sw, int dh, int dw,
             int pt, int pl, int groups, int cw, int row_words)
{
    const long long rows = n * oh * ow;
    const long long total = (long long)groups * rows * row_words;
    const int window = kh * kw * cw;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const long long q = e / row_words;  // (group, row)
        const int t = (int)(e - q * row_words);  // (tap, word)
        u64 v = 0;
        if (t < window) {
            const int c = t % cw, tap = t / cw;
            const int g = (int)(q / rows);
            const long long p = q - (long long)g * rows;
            const int ox = (int)(p % ow);
            const long long r = p / ow;
            const int oy = (int)(r % oh);
            const long long b = r / oh;
            const int y = oy * sh - pt + (tap / kw) * dh, xx = ox * sw - pl + (tap % kw) * dw;
            v = (y >= 0 && y < h && xx >= 0 && xx < w) ? x[(((b * h + y) * w + xx) * groups + g) * cw + c] : pad[c];
        }
        cols[e] = v;
    }
}

// The zero-padding correction of output pixel (oy, ox) for one channel: the sum
// of sums[tap * stride] over the taps of its window that fall in the padding.
__device__ __forceinline__ int padded_taps_sum(const int* __restrict__ sums, int stride, int oy, int ox, int h, int w,
                                               int kh, int kw, int sh, int sw, int dh, int dw, int pt, int pl)
{
    int fix = 0;
    for (int i = 0; i < kh; ++i) {
        const int y = oy * sh - pt + i * dh;
        const bool row_out = y < 0 || y >= h;
        for (int j = 0; j < kw; ++j) {
            const int xx = ox * sw - pl + j * dw;
            if (row_out || xx < 0 || xx >= w) fix += sums[(i * kw + j) * stride];
        }
    }
    return fix;
}

// Element e of a grid-stride loop over the listed rows (rows_of, output pixels)
// times `per_row` items each: the row's index r in the list, the item i, the
// pixel p and its output coordinates.
struct BorderItem {
    long long r, p;
    int i, oy, ox;
};

__device__ __forceinline__ BorderItem border_item(const long long* __restrict__ rows_of, long long e, int per_row,
                                                  int oh, int ow)
{
    BorderItem b;
    b.r = e / per_row;
    b.i = (int)(e - b.r * per_row);
    b.p = rows_of[b.r];
    b.ox = (int)(b.p % ow);
    b.oy = (int)((b.p / ow) % oh);
    return b;
}

// Launch: block CONV_THREADS threads, any 1-D grid.  For each listed row
// (output pixel p = rows_of[r], of n_rows) and channel o of z (int32, all rows,
// o_total channels): z += the sum over the taps of p in the padding of
// tap_sums[tap, o] = sum over channels of sign(w[tap, c, o]).
extern "C" __global__ void __launch_bounds__(CONV_THREADS)
conv_zero_pad_fix(int* __restrict__ z, const long long* __restrict__ rows_of, long long n_rows,
                  const int* __restrict__ tap_sums, int o_total, int oh, int ow, int h, int w, int kh, int kw,
                  int sh, int sw, int dh, int dw, int pt, int pl)
{
    const long long total = n_rows * o_total;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const BorderItem b = border_item(rows_of, e, o_total, oh, ow);
        z[b.p * o_total + b.i] +=
            padded_taps_sum(tap_sums + b.i, o_total, b.oy, b.ox, h, w, kh, kw, sh, sw, dh, dw, pt, pl);
    }
}

// Launch: block CONV_THREADS threads, any 1-D grid.  The fused layer's rows
// whose window reaches the zero padding: from their sums z (n_rows, o_total),
// as the GEMM gave them (padded taps read as -1), the bits of
// direction * (z + fix) - threshold >= 0 with conv_zero_pad_fix's fix, packed
// along o into row rows_of[r] of words (all rows, out_w words each).
extern "C" __global__ void __launch_bounds__(CONV_THREADS)
conv_border_threshold_pack(const int* __restrict__ z, const long long* __restrict__ rows_of, long long n_rows,
                           const int* __restrict__ tap_sums, const signed char* __restrict__ direction,
                           const int* __restrict__ threshold, u64* __restrict__ words, int o_total, int out_w,
                           int oh, int ow, int h, int w, int kh, int kw, int sh, int sw, int dh, int dw,
                           int pt, int pl)
{
    const long long total = n_rows * out_w;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const BorderItem b = border_item(rows_of, e, out_w, oh, ow);  // item: the output word
        u64 bits = 0;
        for (int bit = 0; bit < 64 && 64 * b.i + bit < o_total; ++bit) {
            const int o = 64 * b.i + bit;
            const int v = z[b.r * o_total + o] +
                          padded_taps_sum(tap_sums + o, o_total, b.oy, b.ox, h, w, kh, kw, sh, sw, dh, dw, pt, pl);
            // direction * v - threshold in int32 with wrap-around, as numpy and the CPU kernels
            bits |= (u64)((int)((unsigned)(int)direction[o] * (unsigned)v - (unsigned)threshold[o]) >= 0) << bit;
        }
        words[b.p * out_w + b.i] = bits;
    }
}

// Launch: block CONV_THREADS threads, any 1-D grid.  2x2 max-pool with stride 2
// (floor) of packed +-1 bits: words (N, OH, OW, OW_WORDS) -> (N, OH / 2, OW / 2,
// OW_WORDS), the OR of the four words (the max of +-1 values is +1 where any is).
extern "C" __global__ void __launch_bounds__(CONV_THREADS)
pool_words(const u64* __restrict__ in, u64* __restrict__ out, long long n, int oh, int ow, int words)
{
    const int ph = oh / 2, pw = ow / 2;
    const long long total = n * ph * pw * words;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const int c = (int)(e % words);
        long long q = e / words;
        const int x = (int)(q % pw);
        q /= pw;
        const int y = (int)(q % ph);
        const long long b = q / ph;
        const u64* top = in + ((b * oh + 2 * y) * ow + 2 * x) * words + c;
        const u64* bottom = top + (long long)ow * words;
        out[e] = top[0] | top[words] | bottom[0] | bottom[words];
    }
}
