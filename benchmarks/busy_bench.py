"""Small batches on a quiet and on a busy machine: xnorcore against MLPClassifier.

For each case, rounds alternate between a quiet machine and one with a
CPU-bound process beside the benchmark (``python -c "while True: pass"``,
started before and stopped after the round), and each round times every case
in turn, so that quiet and busy figures come from the same minutes.  Reported:
the median over rounds of each round's median time, and the busy/quiet ratio.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/busy_bench.py [--rounds 7]

``--env NAME=VALUE`` runs the measurement in a child process with that
environment (e.g. ``--env OMP_WAIT_POLICY=passive``) to compare settings.
Nothing here asserts a speed.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np

SIZES = (1, 10, 100, 450, 1797)
MATMUL_SHAPES = ((450, 256, 256), (100, 1024, 1024), (1000, 1024, 1024), (4096, 1024, 1024))


def _busy():
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _median_time(fn, min_seconds=0.05, max_reps=2000):
    fn()  # warm: first calls compile or fault in pages
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (time.perf_counter() - start < min_seconds or len(times) < 5):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _cases():
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    from xnorcore import BNNClassifier, binary_matmul, pack_bits

    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    with warnings.catch_warnings():  # 3 epochs are enough to time predict
        warnings.simplefilter("ignore", ConvergenceWarning)
        bnn = BNNClassifier((256, 256), max_iter=3, random_state=0, device="cpu").fit(X, y)
        mlp = MLPClassifier((256, 256), max_iter=3, random_state=0).fit(X, y)
    cases = {}
    for n in SIZES:
        rows = X[:n]
        cases[f"predict {n} rows, xnorcore 256x256"] = lambda rows=rows: bnn.predict(rows)
        cases[f"predict {n} rows, MLPClassifier 256x256"] = lambda rows=rows: mlp.predict(rows)
    rng = np.random.default_rng(0)
    for m, k, n in MATMUL_SHAPES:
        a = pack_bits(rng.standard_normal((m, k), dtype=np.float32), axis=1)
        b = pack_bits(rng.standard_normal((k, n), dtype=np.float32), axis=0)
        fa = rng.standard_normal((m, k), dtype=np.float32)
        fb = rng.standard_normal((k, n), dtype=np.float32)
        cases[f"binary_matmul {m}x{k}x{n} (packed)"] = lambda a=a, b=b: binary_matmul(a, b)
        cases[f"numpy float32 {m}x{k}x{n}"] = lambda fa=fa, fb=fb: fa @ fb
    return cases


def measure(rounds, only=None):
    cases = {name: fn for name, fn in _cases().items() if only is None or only in name}
    quiet = {name: [] for name in cases}
    busy = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            quiet[name].append(_median_time(fn))
        proc = _busy()
        try:
            time.sleep(0.2)
            for name, fn in cases.items():
                busy[name].append(_median_time(fn))
        finally:
            proc.kill()
            proc.wait()
    return {name: (statistics.median(quiet[name]), statistics.median(busy[name])) for name in cases}


def _fmt(seconds):
    return f"{seconds * 1e3:.3f} ms" if seconds < 0.1 else f"{seconds * 1e3:.1f} ms"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--only", metavar="TEXT", help="run only the cases whose name holds TEXT")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON (used with --env)")
    args = parser.parse_args(argv)
    if args.env:
        env = dict(os.environ)
        env.update(item.split("=", 1) for item in args.env)
        extra = [] if args.only is None else ["--only", args.only]
        out = subprocess.run([sys.executable, __file__, "--rounds", str(args.rounds), "--json", *extra], env=env,
                             check=True, capture_output=True, text=True).stdout
        results = {k: tuple(v) for k, v in json.loads(out).items()}
    else:
        results = measure(args.rounds, args.only)
    if args.json:
        print(json.dumps(results))
        return
    import xnorcore

    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"xnorcore {xnorcore.__version__}, env {' '.join(args.env) or '(defaults)'}")
    mlp = {name.split(",")[0]: results[name] for name in results if "MLPClassifier" in name}
    print("| case | quiet | busy | busy / quiet | quiet vs MLPClassifier |")
    print("|---|---:|---:|---:|---:|")
    for name, (q, b) in results.items():
        ref = mlp.get(name.split(",")[0]) if "xnorcore" in name else None
        vs = f"{q / ref[0]:.2f}x" if ref else ""
        print(f"| {name} | {_fmt(q)} | {_fmt(b)} | {b / q:.1f}x | {vs} |")


if __name__ == "__main__":
    main()
