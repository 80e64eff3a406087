"""The backward products of binary CNN training: float32 BLAS (numpy) against the bfloat16 kernel.

Run from the repository root, for example::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bf16_bench.py --rounds 5

Each product is a backward product with a +-1 operand, at batch 100: the weight
gradient ``cols.T @ dz`` and the patch gradient ``dz @ w.T`` of a 5x5 convolution of
64 -> 128 channels on 14x14 images, and the two products of a dense layer of
6272 -> 1024.  Each round times both ways at 1 and at 2 threads (BLAS limited with
threadpoolctl), in alternating order; prints the best time of each and the ratio,
one JSON line per product, and asserts nothing: the figures go to
benchmarks/RESULTS.md.  Needs a CPU with AVX512-BF16.
"""

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from xnorcore import _train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conv_bench import _best  # noqa: E402

PRODUCTS = {
    # name: (m, k, n, transpose a) of a @ b, where a is (k, m).T when transposed
    "conv 5x5 64->128 weight grad": (1600, 19600, 128, True),
    "conv 5x5 64->128 patch grad": (19600, 128, 1600, False),
    "dense 6272->1024 weight grad": (6272, 100, 1024, True),
    "dense 6272->1024 input grad": (100, 1024, 6272, False),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if not _train.bf16_supported():
        raise SystemExit("this CPU has no AVX512-BF16")
    rng = np.random.default_rng(0)
    print(json.dumps({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
                      "load": os.getloadavg()}))
    for name, (m, k, n, transposed) in PRODUCTS.items():
        signs = np.where(rng.random((k, m) if transposed else (m, k)) < 0.5, -1, 1).astype(np.float32)
        a = signs.T if transposed else signs
        b = rng.standard_normal((k, n)).astype(np.float32)
        out = np.empty((m, n), dtype=np.float32)
        times = {}
        for r in range(args.rounds):
            for threads in (1, 2):
                order = ("blas", "bf16") if r % 2 == 0 else ("bf16", "blas")
                for way in order:
                    if way == "blas":
                        with threadpool_limits(threads, user_api="blas"):
                            t = _best(lambda: np.matmul(a, b, out=out), args.repeat)
                    else:
                        t = _best(lambda: _train.bf16_matmul(a, b, out, threads), args.repeat)
                    key = f"{way} {threads}t"
                    times[key] = min(times.get(key, t), t)
        gflops = {key: round(2 * m * n * k / t / 1e9, 1) for key, t in times.items()}
        print(json.dumps({
            "product": name, "m": m, "k": k, "n": n,
            "ms": {key: round(t * 1e3, 3) for key, t in times.items()}, "GFLOP/s": gflops,
            "bf16 speedup": {f"{t}t": round(times[f"blas {t}t"] / times[f"bf16 {t}t"], 2) for t in (1, 2)},
        }), flush=True)


if __name__ == "__main__":
    main()
