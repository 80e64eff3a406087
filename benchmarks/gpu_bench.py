"""GPU benchmark: xnorcore.binary_matmul against cuBLAS through CuPy, same run.

Run on a machine with a CUDA GPU and CuPy::

    python benchmarks/gpu_bench.py [--sizes 1024 2048 4096 8192] [--json out.json]

Every figure is the median of CUDA-event timings after warm-up.  "API" rows time
one Python call (validation, allocation, launches; the events bracket the call,
so host overhead shows where it exceeds the GPU time).  "kernel" rows time the
GEMM kernel alone, launched back to back on preallocated buffers.  TOPS counts
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


def gemm_kernel_launcher(a_words, b_words, k, kernel, variant=None):
    """A closure that launches only the GEMM kernel of xnorcore on fixed buffers."""
    import cupy

    from xnorcore import _gpu

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
    return lambda: fn(grid, (threads,), args, shared_mem=smem)


def bench_shape(m, k, n, *, popc=True, check=True):
    """All rows of the table for one (M, K, N)."""
    import cupy

    from xnorcore import _gpu, binary_matmul, pack_bits

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
    del a16, b16

    pa, pb = pack_bits(a32, axis=1), pack_bits(b32, axis=0)
    os.environ[_gpu.KERNEL_ENV] = "mma"
    got = binary_matmul(pa, pb)
    add("xnor mma, packed operands", median_ms(lambda: binary_matmul(pa, pb)), "API")
    add("xnor mma, packed operands", back_to_back_ms(lambda: binary_matmul(pa, pb)), "API queued")
    add("xnor mma, packing included", median_ms(lambda: binary_matmul(a32, b32)), "API")
    for variant in ("medium", "small"):
        launch = gemm_kernel_launcher(pa.words, pb.words, k, "mma", variant)
        add(f"xnor mma GEMM kernel, {variant} tiles", back_to_back_ms(launch), "kernel")
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


def profile_host(size=1024, calls=2000):
    """Where the host time of binary_matmul goes for packed operands (cProfile)."""
    import cProfile
    import pstats

    import cupy

    from xnorcore import binary_matmul, pack_bits

    a = pack_bits(cupy.ones((size, size), dtype=np.float32), axis=1)
    b = pack_bits(cupy.ones((size, size), dtype=np.float32), axis=0)
    binary_matmul(a, b)
    cupy.cuda.Device().synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        binary_matmul(a, b)
    cupy.cuda.Device().synchronize()
    print(f"host+device time per packed call at N={size}: {(time.perf_counter() - t0) / calls * 1e6:.1f} us")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        binary_matmul(a, b)
    prof.disable()
    cupy.cuda.Device().synchronize()
    pstats.Stats(prof).sort_stats("tottime").print_stats(14)


def interleaved(size, rounds=4):
    """Kernel alone, API queued and API per call, alternated, to tell drift from overhead."""
    import cupy

    from xnorcore import _gpu, binary_matmul, pack_bits

    rs = cupy.random.RandomState(2)
    pa = pack_bits(rs.standard_normal((size, size), dtype=np.float32), axis=1)
    pb = pack_bits(rs.standard_normal((size, size), dtype=np.float32), axis=0)
    variant = _gpu._mma_variant(size, size)
    launch = gemm_kernel_launcher(pa.words, pb.words, size, "mma", variant)
    ops = 2.0 * size**3
    for r in range(rounds):
        k = back_to_back_ms(launch)
        q = back_to_back_ms(lambda: binary_matmul(pa, pb))
        c = median_ms(lambda: binary_matmul(pa, pb), max_repeat=20)
        print(f"round {r} N={size} {variant}: kernel {k:.4f} ms ({ops / k / 1e9:.0f} TOPS), "
              f"API queued {q:.4f} ms ({ops / q / 1e9:.0f}), API per call {c:.4f} ms ({ops / c / 1e9:.0f})", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--layer", type=int, nargs=3, default=[1024, 4096, 4096], metavar=("M", "K", "N"),
                        help="a BNN-layer shape: batch M, K inputs, N outputs")
    parser.add_argument("--json", help="write all rows to this JSON file")
    parser.add_argument("--profile", action="store_true", help="profile the host side of one small call")
    parser.add_argument("--interleave", type=int, metavar="N", help="only alternate kernel/API timings at N")
    args = parser.parse_args(argv)

    import cupy

    from xnorcore import _gpu

    info = _gpu.config()
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {info['device']}, cc {info['compute_capability']}, "
          f"{props['multiProcessorCount']} SMs, CuPy {cupy.__version__}, CUDA runtime "
          f"{cupy.cuda.runtime.runtimeGetVersion()}, Python {platform.python_version()}")
    if args.profile:
        profile_host()
    if args.interleave:
        interleaved(args.interleave)
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
