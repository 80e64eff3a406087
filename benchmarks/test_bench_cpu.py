"""CPU benchmarks: binary_matmul against numpy float32 matmul, side by side.

Run with ``pytest benchmarks --benchmark-only`` (a few minutes on 2 cores);
``pytest`` alone collects only ``tests/``.  Each group holds the numpy float32
baseline and the xnorcore products for one shape, so ratios come from one run
on one machine.  ``extra_info`` records TOPS (2 operations per multiply-
accumulate), the popcount variant, the OpenMP threads and the BLAS kernel that
numpy used (OpenBLAS picks it from the CPU unless OPENBLAS_CORETYPE is set).

Summarize a saved run (``--benchmark-json=out.json``) with
``python benchmarks/test_bench_cpu.py out.json``.
"""

import json
import os
import sys
import time

import numpy as np
import pytest

from xnorcore import binary_matmul, pack_bits
from xnorcore._backends import cpu as _cpu

SQUARE = [512, 1024, 2048, 4096]
BNN_LAYER = (256, 4096, 4096)  # batch x inputs x outputs of a dense binary layer


def _rounds(m, k, n):
    # Enough rounds for a stable minimum, few enough that the largest numpy
    # products keep the whole run within minutes on 2 cores.
    work = m * k * n
    return 3 if work >= 4096**3 else 5 if work >= 2048**3 else 10 if work >= 1024**3 else 30


def _blas_info():
    try:
        from threadpoolctl import threadpool_info

        blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        return {
            "blas": ", ".join(f"{i.get('internal_api')} {i.get('architecture')} x{i.get('num_threads')}" for i in blas),
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
            "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE"),
        }
    except Exception as exc:  # threadpoolctl is optional for the benchmarks
        return {"blas": f"unknown ({exc})"}


def _run(benchmark, fn, shape, **info):
    m, k, n = shape
    benchmark.extra_info.update(shape=f"{m}x{k}x{n}", **info)
    benchmark.pedantic(fn, rounds=_rounds(m, k, n), iterations=1, warmup_rounds=1)
    best = benchmark.stats.stats.min
    benchmark.extra_info["TOPS"] = round(2.0 * m * k * n / best / 1e12, 3)


def _operands(shape, seed=0):
    m, k, n = shape
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32))


@pytest.fixture
def variant(request):
    """Force a popcount variant for one benchmark, restoring the default after."""
    name = getattr(request, "param", None) or _cpu.get_variant()
    if name not in _cpu.config()["variants"]:
        pytest.skip(f"this CPU lacks the {name} popcount variant")
    previous = _cpu.set_variant(name)
    yield name
    _cpu.set_variant(previous)


SHAPES = [(n, n, n) for n in SQUARE] + [BNN_LAYER]
IDS = [f"{m}x{k}x{n}" for m, k, n in SHAPES]


# The headline comparisons run first: on a shared machine, a run started in a
# quiet moment gives them its quietest seconds.


@pytest.mark.parametrize("variant", [None, "scalar"], indirect=True, ids=["best", "scalar"])
def test_side_by_side_4096(benchmark, variant):
    # numpy and binary_matmul alternate within each round, so that a change of
    # machine load between the groups above cannot tilt the ratio.
    shape = (4096, 4096, 4096)
    a, b = _operands(shape)
    times = {"numpy": [], "binary": []}

    def pair():
        for name, fn in (("numpy", lambda: a @ b), ("binary", lambda: binary_matmul(a, b))):
            # OpenBLAS workers spin for about 0.1 s after a call (libgomp's for
            # less); without a pause they would take a core from the next call.
            time.sleep(0.3)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    benchmark.group = "side by side 4096x4096x4096"
    benchmark.extra_info.update(shape="4096x4096x4096 pair", kind="numpy then binary_matmul, alternating", variant=variant)
    benchmark.pedantic(pair, rounds=3, iterations=1, warmup_rounds=1)
    best_numpy, best_binary = min(times["numpy"][1:]), min(times["binary"][1:])
    benchmark.extra_info.update(
        numpy_ms=round(best_numpy * 1e3, 2),
        binary_ms=round(best_binary * 1e3, 2),
        ratio=round(best_numpy / best_binary, 2),
        TOPS=round(2.0 * 4096**3 / best_binary / 1e12, 3),
    )


@pytest.mark.parametrize("axis", [1, 0], ids=["rows", "columns"])
def test_pack_float32_4096(benchmark, variant, axis):
    # axis=1 is how a is packed (rows), axis=0 how b is packed (columns).
    x, _ = _operands((4096, 4096, 4096))
    benchmark.group = "pack 4096x4096 float32"
    benchmark.extra_info.update(kind=f"pack_bits(axis={axis})", variant=variant)
    benchmark.pedantic(lambda: pack_bits(x, axis=axis), rounds=10, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_numpy_float32(benchmark, shape):
    a, b = _operands(shape)
    benchmark.group = f"matmul {benchmark.name.split('[')[1][:-1]}"
    _run(benchmark, lambda: a @ b, shape, kind="numpy float32", **_blas_info())


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_binary_matmul(benchmark, variant, shape):
    a, b = _operands(shape)
    benchmark.group = f"matmul {benchmark.name.split('[')[1][:-1]}"
    _run(benchmark, lambda: binary_matmul(a, b), shape, kind="binary_matmul (packing included)",
         variant=variant, threads=_cpu.config()["threads"])


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_binary_matmul_prepacked(benchmark, variant, shape):
    a, b = _operands(shape)
    pa, pb = pack_bits(a, axis=1), pack_bits(b, axis=0)
    benchmark.group = f"matmul {benchmark.name.split('[')[1][:-1]}"
    _run(benchmark, lambda: binary_matmul(pa, pb), shape, kind="binary_matmul (both prepacked)",
         variant=variant, threads=_cpu.config()["threads"])


def test_binary_matmul_prepacked_weights(benchmark, variant):
    # The inference case: weights packed once, activations packed per call.
    a, b = _operands(BNN_LAYER)
    pb = pack_bits(b, axis=0)
    benchmark.group = "matmul 256x4096x4096"
    _run(benchmark, lambda: binary_matmul(a, pb), BNN_LAYER, kind="binary_matmul (weights prepacked)",
         variant=variant, threads=_cpu.config()["threads"])


@pytest.mark.parametrize("variant", ["scalar", "avx2"], indirect=True)
def test_binary_matmul_forced_variant(benchmark, variant):
    shape = (4096, 4096, 4096)
    a, b = _operands(shape)
    benchmark.group = "matmul 4096x4096x4096"
    _run(benchmark, lambda: binary_matmul(a, b), shape, kind=f"binary_matmul forced {variant}",
         variant=variant, threads=_cpu.config()["threads"])


def _summarize(path):
    """Print a markdown table (time, ratio to numpy float32, TOPS) from a JSON run."""
    with open(path) as f:
        run = json.load(f)
    rows, baseline = [], {}
    for bench in run["benchmarks"]:
        info, best = bench["extra_info"], bench["stats"]["min"]
        if "ratio" in info:  # the alternating pair, summarized below the table
            continue
        if info.get("kind") == "numpy float32":
            baseline[info["shape"]] = best
        rows.append((bench["group"], info.get("shape", ""), info.get("kind", bench["name"]), info.get("variant", ""), best, info.get("TOPS")))
    print("| shape | what | variant | best time | vs numpy float32 | TOPS |")
    print("|---|---|---|---:|---:|---:|")
    for group, shape, kind, variant, best, tops in rows:
        ratio = f"{baseline[shape] / best:.1f}x" if shape in baseline else ""
        tops = f"{tops:.2f}" if tops is not None else ""
        label = shape or group.replace("pack ", "")
        print(f"| {label} | {kind} | {variant} | {best * 1e3:.2f} ms | {ratio} | {tops} |")
    for bench in run["benchmarks"]:
        info = bench["extra_info"]
        if "ratio" in info:
            print(f"\nalternating rounds, {info['shape']}, {info['variant']}: numpy float32 {info['numpy_ms']} ms, "
                  f"binary_matmul {info['binary_ms']} ms: {info['ratio']}x, {info['TOPS']} TOPS")
    machine = run.get("machine_info", {})
    print(f"\nmachine: {machine.get('cpu', {}).get('brand_raw', '?')}, {machine.get('cpu', {}).get('count', '?')} CPUs; date {run.get('datetime', '?')}")


if __name__ == "__main__":
    _summarize(sys.argv[1])
