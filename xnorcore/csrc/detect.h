/* CPU detection: which variants of the dispatch table this CPU and OS can run.
 * CPUID says what the CPU has; XCR0 (xgetbv) says which register state the OS
 * saves on a context switch, without which the instructions must not be used. */
#ifndef XNORCORE_CSRC_DETECT_H
#define XNORCORE_CSRC_DETECT_H

#include "common.h"

#if XNOR_X86

/* Whether the OS saves the register state given by `mask` (XCR0 bits) on a
 * context switch: a CPU may have AVX-512 that the kernel does not enable. */
static int xnor_os_saves(uint64_t mask)
{
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & bit_OSXSAVE))
        return 0;
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((((uint64_t)hi << 32) | lo) & mask) == mask;
}
#endif /* XNOR_X86 */

/* Whether this CPU (and OS) can run variant v. */
XNOR_MAYBE_UNUSED static int xnor_cpu_has(int v)
{
#if XNOR_X86
    __builtin_cpu_init();
    switch (v) {
    case XNOR_GENERIC: return 1;
    case XNOR_SCALAR: return __builtin_cpu_supports("popcnt") != 0;
    case XNOR_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt") &&
               xnor_os_saves(0x6); /* SSE and AVX state */
    case XNOR_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512vpopcntdq") && __builtin_cpu_supports("popcnt") &&
               xnor_os_saves(0xE6); /* plus opmask and the upper zmm state */
    default: return 0;
    }
#else
    return v == XNOR_GENERIC;
#endif
}

#endif /* XNORCORE_CSRC_DETECT_H */
