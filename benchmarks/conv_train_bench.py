"""Training speed of the binary CNN: XNOR products (binary_conv2d, binary_matmul) against float ones.

Run from the repository root, for example::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/conv_train_bench.py
    python benchmarks/conv_train_bench.py --device gpu --batch-sizes 256,1024

After a short warm-up fit of each mode (the GPU kernels compile at their first
call), each round fits ``--epochs`` epochs (one by default) on ``--n-samples`` MNIST images (from ``--data-dir``,
else scikit-learn's digits upscaled to 28x28) with ``xnor=True``, ``xnor=False``
and ``xnor="auto"``, in rotating order; all give the same model (checked
here), so only the time differs.  Prints one JSON line per batch size (examples/s
of each, median over the rounds, and their ratio) and asserts nothing: the
figures go to benchmarks/RESULTS.md.
"""

import argparse
import datetime
import json
import os
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

from xnorcore import BNNClassifier
from xnorcore.datasets import load_mnist

DEFAULT_MNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"


def _images(data_dir, n):
    if Path(data_dir).is_dir():
        X, y = load_mnist(data_dir)[:2]
        return X[:n], y[:n]
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = np.kron(X.reshape(-1, 8, 8), np.ones((4, 4)))[:, 2:30, 2:30].reshape(len(X), -1)
    reps = -(-n // len(X))
    return np.tile(X, (reps, 1))[:n], np.tile(y, reps)[:n]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_MNIST))
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--conv", default="auto", help='conv_layers as Python, e.g. "(32, \'pool\', 64, \'pool\')"')
    parser.add_argument("--hidden", default="1024,1024,1024")
    parser.add_argument("--batch-sizes", default="200")
    parser.add_argument("--n-samples", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1, help="epochs a fit; examples/s counts them all")
    args = parser.parse_args()
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    X, y = _images(args.data_dir, args.n_samples)
    conv = args.conv if args.conv == "auto" else eval(args.conv)  # noqa: S307 (a benchmark's own flag)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    warnings.simplefilter("ignore")
    modes = (True, False, "auto")

    def model(mode, batch):
        return BNNClassifier(hidden, image_shape=(28, 28, 1), conv_layers=conv, max_iter=args.epochs,
                             n_iter_no_change=args.epochs + 1,  # every epoch runs: none stops the fit early
                             batch_size=batch, xnor=mode, device=args.device, random_state=0)

    for batch in (int(b) for b in args.batch_sizes.split(",")):
        for mode in modes:  # warm-up: the GPU kernels compile at their first call, outside the rounds
            model(mode, batch).fit(X[: 4 * batch], y[: 4 * batch])
        times = {mode: [] for mode in modes}
        proba = {}
        for r in range(args.rounds):
            for mode in modes[r % 3:] + modes[:r % 3]:  # the order rotated each round
                clf = model(mode, batch)
                t = time.perf_counter()
                clf.fit(X, y)
                times[mode].append(time.perf_counter() - t)
                proba[mode] = clf.predict_proba(X[:256])
        seconds = {mode: statistics.median(t) for mode, t in times.items()}
        examples = args.epochs * len(X)
        print(json.dumps({
            "date": str(datetime.date.today()), "cpus": os.cpu_count(), "device": args.device,
            "conv_layers": str(conv), "hidden": hidden, "batch_size": batch, "n_samples": len(X),
            "epochs": args.epochs, "xnor_examples_per_s": round(examples / seconds[True]),
            "float_examples_per_s": round(examples / seconds[False]), "auto_examples_per_s": round(examples / seconds["auto"]),
            "xnor_speedup": round(seconds[False] / seconds[True], 3),
            "auto_speedup": round(seconds[False] / seconds["auto"], 3),
            "same_model": bool(np.array_equal(proba[True], proba[False]) and np.array_equal(proba[True], proba["auto"])),
            "load": os.getloadavg()[0],
        }), flush=True)


if __name__ == "__main__":
    main()
