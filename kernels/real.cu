// The real-valued output layer of a binary network on packed +-1 inputs.
//
// signed_sums: words (rows, n_words) uint64 in the layout of xnor_layout.h, k
// bits per row, and real weights w (k, n_out) float64, C-contiguous ->
//
//     out[r, c] = sum, over j < k ascending, of s[r, j] * w[j, c], from 0.0, in double,
//
// with s = +1 for a set bit and -1 for a clear one: the order of the CPU
// kernels (xnorcore/csrc/real_layers.h).  The products are exact, so both give
// the same sums bit for bit and a sample's logits do not depend on its batch
// or its device.  One thread per output; threads of one row share its words.

#include "xnor_layout.h"

typedef xnor_word u64;

static constexpr int SIGNED_SUMS_THREADS = 128;

extern "C" __global__ void __launch_bounds__(SIGNED_SUMS_THREADS)
signed_sums(const u64* __restrict__ words, long long rows, long long n_words, long long k,
            const double* __restrict__ w, long long n_out, double* __restrict__ out)
{
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= rows * n_out)
        return;
    const long long r = t / n_out, c = t - r * n_out;
    const u64* row = words + r * n_words;
    double acc = 0.0;
    for (long long base = 0; base < k; base += 64) {
        const u64 word = row[base / 64];
        const int m = k - base < 64 ? (int)(k - base) : 64;
        const double* wj = w + base * n_out + c;
        for (int b = 0; b < m; ++b) {
            const double v = wj[(long long)b * n_out];
            acc += ((word >> b) & 1) ? v : -v;
        }
    }
    out[t] = acc;
}
