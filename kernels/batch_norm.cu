// Batch norm of a training step over the rows of z (rows, cols), per column, in
// three launches each way instead of a dozen array operations.
//
// column_sums_<T>: partial sums, in float64, of a and of a * b over a slice of rows
// per blockIdx.y: partial[split][0][j] = sum a[i, j], partial[split][1][j] =
// sum a[i, j] * b[i, j].  With b = a these are the moments of z (forward); with
// a = dy and b = xhat, the sums of the backward pass.
//
// batch_norm_stats: the partial sums of z folded into mean, variance (float64, then
// float32), 1 / sqrt(var + eps), and the running statistics updated in place in the
// float32 operations of BatchNorm's array path.
//
// batch_norm_grads: the partial sums of the backward pass folded into float32
// beta_grad = sum dy and gamma_grad = sum dy * xhat.

static constexpr int BN_COLS = 32;  // columns of a block (one warp's coalesced row segment)
static constexpr int BN_ROWS = 8;   // rows a block reads at once (blockDim.y)

// Launch: block (BN_COLS, BN_ROWS), grid (ceil(cols / BN_COLS), splits); each
// blockIdx.y sums rows [y * rows_per_split, (y + 1) * rows_per_split).
template <typename T>
__device__ __forceinline__ void column_sums(const T* __restrict__ a, const T* __restrict__ b, long long rows,
                                            long long cols, long long rows_per_split, double* __restrict__ partial)
{
    __shared__ double s1[BN_ROWS][BN_COLS];
    __shared__ double s2[BN_ROWS][BN_COLS];
    const long long j = (long long)blockIdx.x * BN_COLS + threadIdx.x;
    const long long start = (long long)blockIdx.y * rows_per_split;
    const long long stop = start + rows_per_split < rows ? start + rows_per_split : rows;
    double sum = 0.0, sum_ab = 0.0;
    if (j < cols) {
        for (long long i = start + threadIdx.y; i < stop; i += BN_ROWS) {
            const double va = (double)a[i * cols + j];
            sum += va;
            sum_ab += va * (double)b[i * cols + j];
        }
    }
    s1[threadIdx.y][threadIdx.x] = sum;
    s2[threadIdx.y][threadIdx.x] = sum_ab;
    __syncthreads();
    if (threadIdx.y == 0 && j < cols) {
#pragma unroll
        for (int r = 1; r < BN_ROWS; ++r) {
            sum += s1[r][threadIdx.x];
            sum_ab += s2[r][threadIdx.x];
        }
        double* out = partial + (long long)blockIdx.y * 2 * cols;
        out[j] = sum;
        out[cols + j] = sum_ab;
    }
}

extern "C" __global__ void __launch_bounds__(BN_COLS * BN_ROWS)
column_sums_float32(const float* __restrict__ a, const float* __restrict__ b, long long rows, long long cols,
                    long long rows_per_split, double* __restrict__ partial)
{
    column_sums<float>(a, b, rows, cols, rows_per_split, partial);
}

extern "C" __global__ void __launch_bounds__(BN_COLS * BN_ROWS)
column_sums_int32(const int* __restrict__ a, const int* __restrict__ b, long long rows, long long cols,
                  long long rows_per_split, double* __restrict__ partial)
{
    column_sums<int>(a, b, rows, cols, rows_per_split, partial);
}

__device__ __forceinline__ void fold_splits(const double* __restrict__ partial, int splits, long long cols,
                                            long long j, double& sum, double& sum_ab)
{
    sum = 0.0;
    sum_ab = 0.0;
    for (int s = 0; s < splits; ++s) {
        sum += partial[(long long)s * 2 * cols + j];
        sum_ab += partial[(long long)s * 2 * cols + cols + j];
    }
}

// Launch: one thread per column, any 1-D grid covering cols.  mean, var, inv_std:
// float32 (cols,) outputs; running_mean, running_var: updated in place as
// running = momentum * running + (1 - momentum) * batch (var unbiased by `unbias`).
extern "C" __global__ void
batch_norm_stats(const double* __restrict__ partial, int splits, long long rows, long long cols, float eps,
                 float momentum, float unbias, float* __restrict__ mean_out, float* __restrict__ var_out,
                 float* __restrict__ inv_std_out, float* __restrict__ running_mean,
                 float* __restrict__ running_var)
{
    const long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    double sum, sum_sq;
    fold_splits(partial, splits, cols, j, sum, sum_sq);
    const double m = sum / (double)rows;
    const double v = sum_sq / (double)rows - m * m;
    const float mean = (float)m;
    const float var = v > 0.0 ? (float)v : 0.0f;
    mean_out[j] = mean;
    var_out[j] = var;
    inv_std_out[j] = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, eps)));
    const float keep = __fsub_rn(1.0f, momentum);
    running_mean[j] = __fadd_rn(__fmul_rn(running_mean[j], momentum), __fmul_rn(keep, mean));
    running_var[j] = __fadd_rn(__fmul_rn(running_var[j], momentum), __fmul_rn(__fmul_rn(keep, var), unbias));
}

// Launch: as batch_norm_stats.  grads: float32 (2, cols): beta_grad, then gamma_grad.
extern "C" __global__ void
batch_norm_grads(const double* __restrict__ partial, int splits, long long cols, float* __restrict__ grads)
{
    const long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    double sum, sum_ab;
    fold_splits(partial, splits, cols, j, sum, sum_ab);
    grads[j] = (float)sum;
    grads[cols + j] = (float)sum_ab;
}
