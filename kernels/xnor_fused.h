// The fused binary layer's test on the GPU, shared by its kernels (device code only).
//
// A fused layer sets bit o where direction[o] * z - threshold[o] >= 0, computed in
// int32 with wrap-around, as numpy's int32 arithmetic and the CPU kernels do (so a
// threshold near the ends of int32 gives the same bits on every backend).  For
// sums |z| < 2**30 that test is one compare against a 64-bit bound, negated or
// not: on [-2**30, 2**30] the set of z that pass is empty, everything, or the z
// above (or below) one value, because it is an interval of 2**31 values modulo
// 2**32, longer than the range.

#ifndef XNORCORE_XNOR_FUSED_H
#define XNORCORE_XNOR_FUSED_H

// Sets at and flip so that, for |z| < 2**30, the bit is (z >= at) != flip.
__device__ __forceinline__ void fused_test(int direction, int threshold, long long& at, bool& flip)
{
    const long long r = 1LL << 30, half = 1LL << 31, t = threshold;
    if (direction == 0) {  // the bit of 0 - threshold, whatever z
        at = (int)(0u - (unsigned)threshold) >= 0 ? -2 * half : 2 * half;
        flip = false;
        return;
    }
    // For +z: z - t wraps to >= 0 where t <= z < t + 2**31 or z < t - 2**31.
    long long c = t;
    bool f = false;
    if (t >= 0 && t - half >= -r) {  // only z < t - 2**31 is in range
        c = t - half;
        f = true;
    } else if (t < 0 && t + half <= r) {  // every z is >= t: z < t + 2**31
        c = t + half;
        f = true;
    }
    if (direction > 0) {
        at = c;
        flip = f;
    } else {  // -z >= c, that is not z >= 1 - c
        at = 1 - c;
        flip = !f;
    }
}

// int32 nearest to v (the bounds of sums that stay within int32 clamp exactly).
__device__ __forceinline__ int clamp_int32(long long v)
{
    return (int)(v < -0x80000000LL ? -0x80000000LL : v > 0x7fffffffLL ? 0x7fffffffLL : v);
}

#endif  // XNORCORE_XNOR_FUSED_H
