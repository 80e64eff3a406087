"""GPU benchmark: xnorcore.binary_matmul against cuBLAS through CuPy, same run.

Run on a machine with a CUDA GPU and CuPy::

    python benchmarks/gpu_bench.py [--sizes 1024 2048 4096 8192] [--json out.json]

Every figure is the median of CUDA-event timings after warm-up.  "API" rows time
one Python call (validation, allocation, launches; the events bracket the call,
so host overhead shows where it exceeds the GPU time).  "kernel" rows time the
GEMM kernel alone, launched back to back on preallocated buffers; "GPU time" rows
time calls queued behind a long kernel, so that host launch gaps drop out.  TOPS counts
2 operations per multiply-accumulate: 2 M N K / time.
"""

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import time

import numpy as np


def median_ms(fn, *, min_repeat=5, max_repeat=100, budget_s=1.0, warmup=3):
    """Median of per-call event timings of ``fn`` in milliseconds."""
    import cupy

    for _ in range(warmup):
        fn()
    cupy.cuda.Device().synchronize()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    t0 = time.perf_counter()
    while len(times) < max_repeat and (len(times) < min_repeat or time.perf_counter() - t0 < budget_s):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))
    return statistics.median(times)


def back_to_back_ms(fn, *, repeat=20, warmup=3):
    """Mean time of ``repeat`` calls of ``fn`` queued back to back (launch gaps hidden)."""
    import cupy

    for _ in range(warmup):
        fn()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    for _ in range(repeat):
        fn()
    end.record()
    end.synchronize()
    return cupy.cuda.get_elapsed_time(start, end) / repeat


def device_ms(fn, *, repeat=10, rounds=7):
    """GPU time of one call of ``fn``, without host launch gaps (median over rounds).

    A long elementwise kernel is queued first, so the calls queue up behind it
    and the events time them back to back on the device alone.
    """
    import cupy

    fn()
    busy = cupy.ones(2**26, dtype=np.float32)  # 256 MiB: about 0.2 ms a pass
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(rounds):
        busy *= 1.0
        busy *= 1.0
        start.record()
        for _ in range(repeat):
            fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) / repeat)
    return statistics.median(times)


def gemm_kernel_launcher(a_words, b_words, k, kernel, variant=None, function=True):
    """A closure that launches only the GEMM kernel of xnorcore on fixed buffers.

    It calls the ``cupy.cuda.Function`` that xnorcore keeps, or with
    ``function=False`` a ``cupy.RawKernel`` of the same kernel.
    """
    import cupy

    from xnorcore._backends import gpu as _gpu

    m, n = a_words.shape[0], b_words.shape[0]
    a_words, b_words = _gpu._even_width(a_words), _gpu._even_width(b_words)
    out = cupy.empty((m, n), dtype=np.int32)
    fn, bm, bn, threads, smem = _gpu._gemm_launch(kernel, variant)
    grid = (math.ceil(m / bm), math.ceil(n / bn))
    operands = (a_words, b_words)
    if variant == "medium":  # row popcounts computed once, outside the timing
        operands += (_gpu._row_popcounts(a_words, b_words),)
    elif variant == "small":  # fused popcounts; the counts argument is not read
        operands += (out,)
    args = operands + (out, np.int64(m), np.int64(n), np.int64(a_words.shape[1]), np.int64(k))
    if not function:
        fn = _gpu._module("xnor_gemm_mma" if kernel == "mma" else "xnor_gemm_popc").get_function(
            f"xnor_gemm_mma_{variant}" if kernel == "mma" else "xnor_gemm_popc")
        fn.max_dynamic_shared_size_bytes = smem
    return lambda: fn(grid, (threads,), args, shared_mem=smem)


def _plan_launcher(a_words, b_words, k):
    """A closure that launches the GEMM of xnorcore as xnor_gemm does, on fixed buffers."""
    import cupy

    from xnorcore._backends import gpu as _gpu

    m, n = a_words.shape[0], b_words.shape[0]
    out = cupy.empty((m, n), dtype=np.int32)
    launch = _gpu._plan(m, n, a_words.shape[1], k)
    if launch.variant is None:  # popc: no row popcounts
        return lambda: launch(a_words, b_words, out)
    counts = _gpu._row_popcounts(a_words, b_words) if launch.variant in ("medium", "wgmma") else out
    return lambda: launch(a_words, b_words, counts, out)


def bench_shape(m, k, n, *, popc=True, check=True):
    """All rows of the table for one (M, K, N)."""
    import cupy

    from xnorcore import binary_matmul, pack_bits
    from xnorcore._backends import gpu as _gpu

    ops = 2.0 * m * n * k
    rows = []

    def add(name, ms, mode):
        rows.append({"M": m, "K": k, "N": n, "what": name, "mode": mode, "ms": ms, "TOPS": ops / ms / 1e9})

    rs = cupy.random.RandomState(1)
    a32 = rs.standard_normal((m, k), dtype=np.float32)
    b32 = rs.standard_normal((k, n), dtype=np.float32)
    add("cuBLAS float32 (cupy @)", median_ms(lambda: a32 @ b32), "API")
    a16, b16 = a32.astype(np.float16), b32.astype(np.float16)
    add("cuBLAS float16 (cupy @)", median_ms(lambda: a16 @ b16), "API")
    add("cuBLAS float16 (cupy @)", back_to_back_ms(lambda: a16 @ b16), "API queued")
    add("cuBLAS float16 (cupy @)", device_ms(lambda: a16 @ b16), "GPU time")
    a16 = b16 = None  # free the float16 copies before the binary rows

    pa, pb = pack_bits(a32, axis=1), pack_bits(b32, axis=0)
    os.environ[_gpu.KERNEL_ENV] = "mma"
    got = binary_matmul(pa, pb)
    add("xnor mma, packed operands", median_ms(lambda: binary_matmul(pa, pb)), "API")
    add("xnor mma, packed operands", back_to_back_ms(lambda: binary_matmul(pa, pb)), "API queued")
    add("xnor mma, packing included", median_ms(lambda: binary_matmul(a32, b32)), "API")
    add("xnor pack a (rows) and b (columns)", device_ms(lambda: (_gpu.pack_rows(a32), _gpu.pack_cols(b32))),
        "GPU time")
    for variant in ("medium", "small"):
        launch = gemm_kernel_launcher(pa.words, pb.words, k, "mma", variant)
        add(f"xnor mma GEMM kernel, {variant} tiles", back_to_back_ms(launch), "kernel")
        add(f"xnor mma GEMM kernel, {variant} tiles", device_ms(launch), "GPU time")
    counts = lambda: _gpu._row_popcounts(_gpu._even_width(pa.words), _gpu._even_width(pb.words))  # noqa: E731
    add("xnor row popcount kernel", back_to_back_ms(counts), "kernel")
    if popc:
        os.environ[_gpu.KERNEL_ENV] = "popc"
        got_popc = binary_matmul(pa, pb)
        add("xnor popc, packed operands", median_ms(lambda: binary_matmul(pa, pb), max_repeat=20), "API")
        add("xnor popc GEMM kernel", back_to_back_ms(gemm_kernel_launcher(pa.words, pb.words, k, "popc"), repeat=5), "kernel")
        if check:
            assert bool((got_popc == got).all()), f"mma and popc kernels disagree at {(m, k, n)}"
        del got_popc
    os.environ.pop(_gpu.KERNEL_ENV, None)
    if check:
        # Exact reference on sampled rows: float64 sums of +-1 are exact.
        idx = cupy.arange(0, m, max(1, m // 64))
        ref = cupy.where(a32[idx] >= 0, 1.0, -1.0) @ cupy.where(b32 >= 0, 1.0, -1.0)
        assert bool((got[idx] == ref.astype(np.int32)).all()), f"wrong product at {(m, k, n)}"
    return rows


def square_operands(size, seed):
    """Random (size, size) operands: float32 a and b, their float16 copies, a and b packed."""
    import cupy

    from xnorcore import pack_bits

    rs = cupy.random.RandomState(seed)
    a32 = rs.standard_normal((size, size), dtype=np.float32)
    b32 = rs.standard_normal((size, size), dtype=np.float32)
    return a32, b32, a32.astype(np.float16), b32.astype(np.float16), pack_bits(a32, axis=1), pack_bits(b32, axis=0)


def host_us(fn, calls=3000):
    """Mean host time per call of ``fn`` in microseconds, calls queued without synchronizing."""
    import cupy

    for _ in range(50):
        fn()
    cupy.cuda.Device().synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - t0
    cupy.cuda.Device().synchronize()
    return elapsed / calls * 1e6


def profile_host(size=1024, calls=3000):
    """Where the host time of one packed binary_matmul call goes: layer by layer, then cProfile."""
    import cProfile
    import pstats

    import cupy

    from xnorcore import binary_matmul
    from xnorcore._backends import gpu as _gpu

    a32, b32, a16, b16, a, b = square_operands(size, seed=3)
    variant = _gpu._mma_variant(size, size)
    steps = [
        ("cupy.empty of the int32 result", lambda: cupy.empty((size, size), dtype=np.int32)),
        ("cupy.ndarray of the int32 result", lambda: cupy.ndarray((size, size), dtype=_gpu._INT32)),
        (f"GEMM kernel launch alone ({variant} tiles), cupy.RawKernel",
         gemm_kernel_launcher(a.words, b.words, size, "mma", variant, function=False)),
        ("same, cupy.cuda.Function", gemm_kernel_launcher(a.words, b.words, size, "mma", variant)),
        ("same, through the cached cuLaunchKernel", _plan_launcher(a.words, b.words, size)),
        ("_gpu.xnor_gemm (backend call)", lambda: _gpu.xnor_gemm(a.words, b.words, size)),
        ("binary_matmul, packed operands", lambda: binary_matmul(a, b)),
        ("binary_matmul, packing included", lambda: binary_matmul(a32, b32)),
        ("cuBLAS float16 (cupy @)", lambda: a16 @ b16),
    ]
    print(f"host time per call at N={size}, {calls} calls queued (mean):")
    for name, fn in steps:
        print(f"  {name:40s} {host_us(fn, calls):7.2f} us", flush=True)
    for name, operands in (("packed operands", (a, b)), ("packing included", (a32, b32))):
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(calls // 3):
            binary_matmul(*operands)
        prof.disable()
        cupy.cuda.Device().synchronize()
        print(f"cProfile of binary_matmul, {name}:")
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)


def interleaved(size, rounds=4, cublas=True):
    """cuBLAS float16 and the packed binary product, alternated round by round, same buffers.

    Each round times, one after the other: the GEMM kernel alone, then
    ``binary_matmul`` on packed operands and cuBLAS float16, each per
    synchronized call (median) and queued back to back, so drift between
    rounds shows.
    """
    from xnorcore import binary_matmul
    from xnorcore._backends import gpu as _gpu

    _, _, a16, b16, pa, pb = square_operands(size, seed=2)
    variant = _gpu._mma_variant(size, size)
    launch = gemm_kernel_launcher(pa.words, pb.words, size, "mma", variant)
    ops = 2.0 * size**3

    def tops(ms):
        return f"{ms * 1e3:7.1f} us ({ops / ms / 1e9:5.0f} TOPS)"

    for r in range(rounds):
        k = back_to_back_ms(launch)
        x_call = median_ms(lambda: binary_matmul(pa, pb), max_repeat=50)
        x_queued = back_to_back_ms(lambda: binary_matmul(pa, pb))
        line = f"round {r} N={size} ({variant} tiles): xnor kernel {tops(k)}, per call {tops(x_call)}, queued {tops(x_queued)}"
        if cublas:
            h_call = median_ms(lambda: a16 @ b16, max_repeat=50)
            h_queued = back_to_back_ms(lambda: a16 @ b16)
            line += (f"; cuBLAS fp16 per call {tops(h_call)}, queued {tops(h_queued)}; "
                     f"xnor vs fp16: {h_call / x_call:.2f}x per call, {h_queued / x_queued:.2f}x queued")
        print(line, flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--layer", type=int, nargs=3, default=[1024, 4096, 4096], metavar=("M", "K", "N"),
                        help="a BNN-layer shape: batch M, K inputs, N outputs")
    parser.add_argument("--alone", action="store_true", help="with --interleave: leave cuBLAS out (it heats the card)")
    parser.add_argument("--json", help="write all rows to this JSON file")
    parser.add_argument("--profile", action="store_true", help="profile the host side of one small call")
    parser.add_argument("--interleave", type=int, nargs="+", metavar="N",
                        help="only alternate cuBLAS float16 and binary_matmul timings at each N")
    args = parser.parse_args(argv)

    import cupy

    from xnorcore._backends import gpu as _gpu

    info = _gpu.config()
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {info['device']}, cc {info['compute_capability']}, "
          f"{props['multiProcessorCount']} SMs, CuPy {cupy.__version__}, CUDA runtime "
          f"{cupy.cuda.runtime.runtimeGetVersion()}, Python {platform.python_version()}")
    if args.profile:
        profile_host()
    if args.interleave:
        for size in args.interleave:
            interleaved(size, cublas=not args.alone)
        return
    shapes = [(s, s, s) for s in args.sizes] + [tuple(args.layer)]
    rows = []
    for m, k, n in shapes:
        rows += bench_shape(m, k, n)
        print(f"done {m}x{k}x{n}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": info, "rows": rows}, f, indent=1)

    print("\n| M x K x N | what | timed | ms | TOPS | vs fp32 | vs fp16 |")
    print("|---|---|---|---:|---:|---:|---:|")
    for m, k, n in shapes:
        mine = [r for r in rows if (r["M"], r["K"], r["N"]) == (m, k, n)]
        f32 = next(r["ms"] for r in mine if "float32" in r["what"])
        f16 = next(r["ms"] for r in mine if "float16" in r["what"] and r["mode"] == "API")
        for r in mine:
            print(f"| {m}x{k}x{n} | {r['what']} | {r['mode']} | {r['ms']:.4f} | {r['TOPS']:.1f} | "
                  f"{f32 / r['ms']:.2f}x | {f16 / r['ms']:.2f}x |")


if __name__ == "__main__":
    main()
