"""The wgmma GEMM kernel on a Hopper GPU: build check, exactness, timings against mma and cuBLAS.

Run on a machine with a compute capability 9.0 GPU and CuPy::

    python benchmarks/wgmma_bench.py check              # exactness over many shapes, each variant
    python benchmarks/wgmma_bench.py time [--sizes ...]  # kernel and per-call timings, cuBLAS in the same run
    python benchmarks/wgmma_bench.py sweep              # stage counts and raster groups, at N=8192 and 4096

Timings are CUDA events after warm-up, on random operands: "kernel" launches the GEMM
kernel alone back to back on fixed buffers (row popcounts computed once outside);
"per call" is the median of synchronized ``binary_matmul`` calls on packed operands;
"queued" is the mean of 20 calls queued back to back.  TOPS = 2 M N K / time.
"""

import argparse
import datetime
import os
import re
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gpu_bench import back_to_back_ms, median_ms  # noqa: E402

#: Schedules; "ping" stores its int32 sums through TMA where n % 4 == 0, "ping-direct"
#: from the registers, as before TMA stores.
VARIANTS = ("coop", "ping", "ping-direct")


def use_variant(variant):
    """Make ``variant`` of VARIANTS the schedule that plans pick; returns the schedule's name."""
    from xnorcore._backends import gpu as _gpu

    schedule, _, direct = variant.partition("-")
    _gpu._WGMMA_VARIANT = schedule
    _gpu._WGMMA_TMA_STORE = not direct
    return schedule


def banner():
    import cupy

    from xnorcore._backends import gpu as _gpu

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw",
                          "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {props['name'].decode()}, "
          f"{props['multiProcessorCount']} SMs, CuPy {cupy.__version__}, runtime {cupy.cuda.runtime.runtimeGetVersion()}, "
          f"nvidia-smi: {smi}; kernel choice {_gpu.config().get('kernel')}", flush=True)


def reference(a32, b32):
    """Exact sign(a) @ sign(b): float32 sums of +-1 are exact below 2**24."""
    import cupy

    sa = cupy.where(a32 >= 0, 1.0, -1.0).astype(np.float32)
    sb = cupy.where(b32 >= 0, 1.0, -1.0).astype(np.float32)
    return (sa @ sb).astype(np.int32)


def check(shapes=None):
    import cupy

    from xnorcore import binary_matmul, pack_bits
    from xnorcore._backends import gpu as _gpu

    shapes = shapes or [
        (1, 1, 1), (1, 63, 1), (2, 64, 3), (63, 65, 64), (64, 127, 65), (65, 128, 127), (127, 129, 128),
        (128, 1000, 129), (129, 511, 257), (3, 1000, 1000), (1000, 64, 3), (257, 513, 255), (200, 2049, 300),
        (129, 1025, 257), (300, 2100, 530), (17, 64, 1000), (1100, 4161, 2309), (256, 1024, 256),
        (1031, 3000, 777), (2048, 1023, 2049), (4096, 4096, 4096), (1024, 4096, 4096), (8192, 8192, 8192),
    ]
    rs = cupy.random.RandomState(5)
    failures = 0
    os.environ[_gpu.KERNEL_ENV] = "wgmma"
    default = _gpu._WGMMA_VARIANT
    for m, k, n in shapes:
        a32 = rs.standard_normal((m, k), dtype=np.float32)
        b32 = rs.standard_normal((k, n), dtype=np.float32)
        want = reference(a32, b32)
        pa, pb = pack_bits(a32, axis=1), pack_bits(b32, axis=0)
        for variant in VARIANTS:
            use_variant(variant)
            cupy.full((m, n), -(2**31), dtype=np.int32)  # a freed block of sentinels where the result may land
            got = binary_matmul(pa, pb)
            cupy.cuda.Device().synchronize()
            bad = int((got != want).sum())
            failures += bad > 0
            print(f"check {variant:4s} {m}x{k}x{n}: {'ok' if bad == 0 else f'{bad} WRONG of {m * n}'}", flush=True)
            if bad and m * n <= 64:
                print("  got ", cupy.asnumpy(got).ravel()[:16], "\n  want", cupy.asnumpy(want).ravel()[:16])
    os.environ.pop(_gpu.KERNEL_ENV)
    use_variant(default)
    print(f"check: {failures} failures", flush=True)
    return failures


def wgmma_kernel(pa, pb, k, variant, function=None, stages=None, pack=False):
    """A closure launching the wgmma kernel alone on fixed buffers, and its output.
    With ``pack``, the fused layer's kernel (direction +1, threshold 0: the signs of the sums).
    ``function`` and ``stages``: a kernel compiled with other constants."""
    import cupy

    from xnorcore._backends import gpu as _gpu

    a, b = _gpu._even_width(pa.words), _gpu._even_width(pb.words)
    m, n, width = a.shape[0], b.shape[0], a.shape[1]
    variant = use_variant(variant if function is None else variant + "-direct")  # recompiled: the plain kernel
    plan = _gpu._wgmma_plan(m, n, width, k, pack=pack, variant=variant)
    if function is not None:
        prefix = variant.upper()
        bm, bn = _gpu._constant("xnor_gemm_wgmma", f"{prefix}_BM"), _gpu._constant("xnor_gemm_wgmma", f"{prefix}_BN")
        plan.function = function
        plan.smem = 1024 + stages * ((bm + bn) * 128 + 16) + 16
    if pack:
        counts = _gpu._row_popcounts(a, b)
        padded = -(-n // plan.bn) * plan.bn
        bounds = cupy.empty((padded, 2), dtype=np.int32)
        threads = _gpu._constant("pack", "POPCOUNT_THREADS")
        _gpu._function("pack", "column_bounds")(
            _gpu._grid_1d(padded, threads), (threads,),
            (counts[m:], cupy.ones(n, dtype=np.int8), cupy.zeros(n, dtype=np.int32), np.int64(n), np.int64(padded), bounds))
        out = cupy.empty((m, -(-n // 64)), dtype=np.uint64)
        return (lambda: plan(a, b, counts, out, bounds)), out
    counts = _gpu._row_popcounts(a, b)
    out = cupy.empty((m, n), dtype=np.int32)
    return (lambda: plan(a, b, counts, out)), out


def time_sizes(sizes, layer=(1024, 4096, 4096)):
    import cupy

    from gpu_bench import gemm_kernel_launcher
    from xnorcore import binary_matmul, pack_bits
    from xnorcore._backends import gpu as _gpu

    default = _gpu._WGMMA_VARIANT  # what the automatic choice runs
    rows = []
    for m, k, n in [(s, s, s) for s in sizes] + ([tuple(layer)] if layer else []):
        ops = 2.0 * m * n * k
        rs = cupy.random.RandomState(1)
        a32 = rs.standard_normal((m, k), dtype=np.float32)
        b32 = rs.standard_normal((k, n), dtype=np.float32)
        a16, b16 = a32.astype(np.float16), b32.astype(np.float16)
        pa, pb = pack_bits(a32, axis=1), pack_bits(b32, axis=0)
        del a32, b32
        res = {}
        for variant in VARIANTS:
            launch, _ = wgmma_kernel(pa, pb, k, variant)
            res[f"wgmma {variant} kernel"] = back_to_back_ms(launch)
            if variant != "ping-direct":  # (the same fused kernel as ping)
                launch, _ = wgmma_kernel(pa, pb, k, variant, pack=True)
                res[f"wgmma {variant} fused layer kernel"] = back_to_back_ms(launch)
        use_variant(default)
        ones, zeros = cupy.ones(n, dtype=np.int8), cupy.zeros(n, dtype=np.int32)
        layer = lambda: _gpu.xnor_gemm_threshold_pack(pa.words, pb.words, k, ones, zeros)  # noqa: E731
        res["fused layer per call"] = median_ms(layer, min_repeat=30, max_repeat=30)
        res["fused layer queued"] = back_to_back_ms(layer)
        res["mma medium kernel"] = back_to_back_ms(gemm_kernel_launcher(pa.words, pb.words, k, "mma", "medium"))
        for r in range(2):  # alternate rounds: cuBLAS heats the card
            res[f"cuBLAS fp16 per call r{r}"] = median_ms(lambda: a16 @ b16, min_repeat=30, max_repeat=30)
            res[f"cuBLAS fp16 queued r{r}"] = back_to_back_ms(lambda: a16 @ b16)
            for forced in ("wgmma", "mma", None):
                if forced:
                    os.environ[_gpu.KERNEL_ENV] = forced
                else:
                    os.environ.pop(_gpu.KERNEL_ENV, None)
                for variant in VARIANTS if forced == "wgmma" else (default,):
                    use_variant(variant)
                    name = f"binary_matmul {forced or 'auto'}{' ' + variant if forced == 'wgmma' else ''}"
                    res[f"{name} per call r{r}"] = median_ms(lambda: binary_matmul(pa, pb), min_repeat=30, max_repeat=30)
                    res[f"{name} queued r{r}"] = back_to_back_ms(lambda: binary_matmul(pa, pb))
            os.environ.pop(_gpu.KERNEL_ENV, None)
        use_variant(default)
        for name, ms in res.items():
            rows.append((f"{m}x{k}x{n}", name, ms, ops / ms / 1e9))
            print(f"| {m}x{k}x{n} | {name} | {ms * 1e3:.1f} us | {ops / ms / 1e9:.0f} TOPS |", flush=True)
        a16 = b16 = pa = pb = None  # free the device buffers before the next size
        cupy.get_default_memory_pool().free_all_blocks()
    return rows


def sweep(sizes=(8192,), configs=None, rounds=3):
    """Recompile with other stage counts and raster groups; time each, int32 and fused
    (exactness checked), the configurations alternating in each of ``rounds``."""
    import cupy

    from xnorcore import pack_bits
    from xnorcore._backends import gpu as _gpu

    src = _gpu._source("xnor_gemm_wgmma")
    options = _gpu._compile_options("xnor_gemm_wgmma")
    configs = configs or [("coop", 4, 8), ("coop", 3, 8), ("coop", 4, 16), ("ping", 6, 8), ("ping", 4, 8),
                          ("ping", 6, 16)]
    for size in sizes:
        rs = cupy.random.RandomState(2)
        a32 = rs.standard_normal((size, size), dtype=np.float32)
        b32 = rs.standard_normal((size, size), dtype=np.float32)
        want = reference(a32, b32)
        want_bits = pack_bits(want.astype(np.float32), axis=1).words  # the fused kernel's signs, as bits
        pa, pb = pack_bits(a32, axis=1), pack_bits(b32, axis=0)
        del a32, b32
        ops = 2.0 * size**3
        runs = []
        for variant, stages, group in configs:
            prefix = variant.upper()
            text = re.sub(rf"{prefix}_STAGES = \d+", f"{prefix}_STAGES = {stages}", src)
            text = re.sub(r"WG_GROUP_M = \d+", f"WG_GROUP_M = {group}", text)
            module = cupy.RawModule(code=text, options=options)
            bm, bn = _gpu._constant("xnor_gemm_wgmma", f"{prefix}_BM"), _gpu._constant("xnor_gemm_wgmma", f"{prefix}_BN")
            for pack in (False, True):
                fn = module.get_function(f"xnor_gemm_wgmma_{variant}" + ("_pack" if pack else ""))
                fn.max_dynamic_shared_size_bytes = 1024 + stages * ((bm + bn) * 128 + 16) + 16
                launch, out = wgmma_kernel(pa, pb, size, variant, function=fn.kernel, stages=stages, pack=pack)
                launch()
                ok = bool((out == (want_bits if pack else want)).all())
                name = f"{variant}{' fused' if pack else ''} stages={stages} group={group}"
                runs.append((name, launch, ok, []))
        for _ in range(rounds):
            for name, launch, ok, ms in runs:
                ms.append(back_to_back_ms(launch))
        for name, launch, ok, ms in runs:
            print(f"| sweep {size} | {name} | {' / '.join(f'{x * 1e3:.1f}' for x in ms)} us | "
                  f"{ops / min(ms) / 1e9:.0f} TOPS | {'exact' if ok else 'WRONG'} |", flush=True)
        del pa, pb, want, want_bits, runs
        cupy.get_default_memory_pool().free_all_blocks()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["check", "time", "sweep"])
    parser.add_argument("--sizes", type=int, nargs="*", default=[8192, 4096, 2048, 1024])
    args = parser.parse_args()
    banner()
    if args.what == "check":
        sys.exit(1 if check() else 0)
    if args.what == "time":
        time_sizes(args.sizes)
    if args.what == "sweep":
        sweep(args.sizes)


if __name__ == "__main__":
    main()
