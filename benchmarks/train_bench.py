"""Accuracy and speed of BNNClassifier: training, packed prediction, GPU throughput.

Run from the repository root, for example::

    python benchmarks/train_bench.py digits
    python benchmarks/train_bench.py mnist-binary --data-dir ../shared/data/mnist
    python benchmarks/train_bench.py mnist-float
    python benchmarks/train_bench.py predict            # packed predict vs MLPClassifier.predict
    python benchmarks/train_bench.py throughput --device gpu   # examples/s, batch 512..8192
    python benchmarks/train_bench.py step --device gpu --repeat 6   # ms per step, XNOR vs float, alternating

Each task prints one JSON line per measurement (machine, date, settings, figures)
and never asserts anything: the figures go to benchmarks/RESULTS.md.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

# On a small shared machine, OpenMP threads (XNOR kernels) that spin while
# OpenBLAS threads (float GEMMs) work slow both down; let them sleep instead.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import numpy as np  # noqa: E402

from xnorcore import BNNClassifier  # noqa: E402
from xnorcore.datasets import load_digits_split, load_mnist  # noqa: E402
from xnorcore.nn import _graph  # noqa: E402
from xnorcore.nn._trainer import run_epoch  # noqa: E402

DEFAULT_MNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"

# Settings used for the MNIST figures (also the estimator's defaults).
MNIST_BINARY = dict(hidden_layer_sizes=(1024, 1024, 1024), binary=True)
MNIST_FLOAT = dict(hidden_layer_sizes=(1024, 1024, 1024), binary=False)
DIGITS_BINARY = dict(hidden_layer_sizes=(512, 512), binary=True, max_iter=20)


def _machine():
    info = {"python": platform.python_version(), "cpus": os.cpu_count(), "date": str(datetime.date.today())}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    except Exception:
        pass
    return info


def _emit(record):
    print(json.dumps(record, default=str), flush=True)


def _fit_and_score(name, params, X_train, y_train, X_test, y_test, args):
    clf = BNNClassifier(random_state=args.seed, device=args.device, verbose=args.verbose, **params)
    t0 = time.perf_counter()
    clf.fit(X_train, y_train)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    acc = clf.score(X_test, y_test)
    predict_s = time.perf_counter() - t0
    _emit({
        "task": name, "test_accuracy": round(acc, 4), "fit_seconds": round(fit_s, 1),
        "train_examples_per_s": round(clf.t_ / fit_s), "predict_seconds": round(predict_s, 3),
        "epochs": clf.n_iter_, "xnor": clf.xnor_, "device": clf.device_,
        "params": {k: v for k, v in clf.get_params().items() if k not in ("verbose",)},
        "summary": clf.summary(as_dict=True)["compression"] if clf.binary else None,
        "machine": _machine(),
    })
    return clf


def _mnist(args):
    return load_mnist(args.data_dir)


def task_digits(args):
    X_train, y_train, X_test, y_test = load_digits_split(random_state=0)
    _fit_and_score("digits-binary", DIGITS_BINARY, X_train, y_train, X_test, y_test, args)


def task_mnist_binary(args):
    X_train, y_train, X_test, y_test = _mnist(args)
    params = dict(MNIST_BINARY, **_overrides(args))
    clf = _fit_and_score("mnist-binary", params, X_train, y_train, X_test, y_test, args)
    if args.save:
        import pickle

        with open(args.save, "wb") as f:
            pickle.dump(clf, f)


def task_mnist_float(args):
    X_train, y_train, X_test, y_test = _mnist(args)
    params = dict(MNIST_FLOAT, **_overrides(args))
    _fit_and_score("mnist-float", params, X_train, y_train, X_test, y_test, args)


def _overrides(args):
    out = {}
    for key in ("max_iter", "batch_size", "learning_rate_init", "dropout", "xnor"):
        value = getattr(args, key)
        if value is not None:
            out[key] = value
    if args.hidden:
        out["hidden_layer_sizes"] = tuple(int(h) for h in args.hidden.split(","))
    return out


def _median_time(fn, repeat, warmup=0):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def task_predict(args):
    """Packed-binary predict vs MLPClassifier.predict (same layer sizes), side by side."""
    from sklearn.neural_network import MLPClassifier

    X_train, y_train, X_test, y_test = _mnist(args)
    hidden = tuple(int(h) for h in args.hidden.split(",")) if args.hidden else MNIST_BINARY["hidden_layer_sizes"]
    if args.load:
        import pickle

        with open(args.load, "rb") as f:
            clf = pickle.load(f)
        hidden = clf.network_.hidden_layer_sizes
    else:
        # Prediction speed does not depend on how well the weights are trained.
        clf = BNNClassifier(hidden_layer_sizes=hidden, max_iter=1, random_state=0, device="cpu")
        clf.fit(X_train[:5000], y_train[:5000])
    mlp = MLPClassifier(hidden_layer_sizes=hidden, max_iter=1, random_state=0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # MLPClassifier computes in the dtype it was fitted on: float32 here, or
        # float64 (its precision for float64 data) with --mlp-dtype float64.
        mlp.fit(X_train[:2000].astype(args.mlp_dtype), y_train[:2000])
    X = X_test
    X_mlp = X_test.astype(args.mlp_dtype)
    clf.predict(X[:100])
    mlp.predict(X_mlp[:100])
    rounds = {"packed": [], "float_path": [], "mlp": []}
    # Rounds interleave the three, so load changes hit all alike.  In a round,
    # each is called once untimed before its two timed calls: after a product,
    # OpenBLAS's idle threads spin for up to 2**28 cycles
    # (OPENBLAS_THREAD_TIMEOUT), and the first call after another predictor
    # would share the cores with them.
    for _ in range(args.repeat):
        rounds["packed"].append(_median_time(lambda: clf.predict(X), 2, warmup=1))
        rounds["float_path"].append(_median_time(lambda: clf._logits(X, packed=False), 2, warmup=1))
        rounds["mlp"].append(_median_time(lambda: mlp.predict(X_mlp), 2, warmup=1))
    med = {k: statistics.median(v) for k, v in rounds.items()}
    _emit({
        "task": "predict", "hidden_layer_sizes": hidden, "n_samples": len(X),
        "packed_samples_per_s": round(len(X) / med["packed"]),
        "float_path_samples_per_s": round(len(X) / med["float_path"]),
        "mlp_samples_per_s": round(len(X) / med["mlp"]),
        "speedup_vs_mlp": round(med["mlp"] / med["packed"], 2), "mlp_dtype": args.mlp_dtype,
        "repeat": args.repeat, "test_accuracy_packed": round(clf.score(X, y_test), 4),
        "machine": _machine(),
    })


def _warm_network(hidden, batch, device, X, y, **params):
    """``(network, optimizer, X, y)`` of a BNNClassifier fitted one epoch on 2 batches (kernels compiled,
    memory allocated), with ``X`` standardized and both on the network's device: the training loop can
    then be timed without input validation or host-to-device copies."""
    clf = BNNClassifier(hidden_layer_sizes=hidden, batch_size=batch, max_iter=1, random_state=0, device=device,
                        **params)
    clf.fit(X[:2 * batch], y[:2 * batch])
    xp = clf.network_.xp
    Xd = xp.asarray(((X - clf.input_mean_) / clf.input_scale_).astype(np.float32))
    return clf.network_, clf.optimizer_, Xd, xp.asarray(np.searchsorted(clf.classes_, y))


def task_throughput(args):
    """Training examples/s for binary with and without xnor, and float, per batch size."""
    X_train, y_train, _, _ = _mnist(args)
    n = min(len(X_train), args.n_samples)
    X, y = X_train[:n], y_train[:n]
    hidden = tuple(int(h) for h in args.hidden.split(",")) if args.hidden else MNIST_BINARY["hidden_layer_sizes"]
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    modes = [("binary-xnor", dict(binary=True, xnor=True)),
             ("binary-matmul", dict(binary=True, xnor=False)),
             ("float", dict(binary=False))]
    for batch in sizes:
        runs = {}
        for name, kw in modes:
            net, opt, Xd, yd = _warm_network(hidden, batch, args.device, X, y, **kw)
            runs[name] = (net, opt, Xd, yd, np.random.RandomState(0), net.xp.random.RandomState(0))
        best = dict.fromkeys(runs, 0.0)
        for r in range(args.repeat):  # the modes in turn, their order rotated each round
            names = [name for name, _ in modes]
            for name in names[r % len(names):] + names[:r % len(names)]:
                net, opt, Xd, yd, perm_rng, drop_rng = runs[name]
                _, seconds = run_epoch(net, opt, Xd, yd, batch_size=batch, lr=1e-3, reg=0.0, perm_rng=perm_rng,
                                       drop_rng=drop_rng, shuffle=True)
                best[name] = max(best[name], n / seconds)
        rates = {name: round(rate) for name, rate in best.items()}
        _emit({
            "task": "throughput", "batch_size": batch, "hidden_layer_sizes": hidden, "n_samples": n,
            "examples_per_s": rates, "xnor_vs_matmul": round(rates["binary-xnor"] / rates["binary-matmul"], 3),
            "device": args.device, "machine": _machine(),
        })


def _step_ms(net, opt, xb, yb, drop_rng, steps):
    """Median milliseconds of one training step: device time by CUDA events on the GPU (the step replayed
    as a CUDA graph, as training runs it, unless XNORCORE_GPU_GRAPHS=0), wall time on the CPU."""
    if _graph.enabled(xb):
        graphed = _graph.graphed_steps(net, opt, 0.0)
        step = lambda: graphed(xb, yb, 1e-3, drop_rng)  # noqa: E731
    else:
        step = lambda: net.train_step(xb, yb, opt, 1e-3, rng=drop_rng)  # noqa: E731
    if net.xp is np:
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e3
    from cupyx.profiler import benchmark

    return float(np.median(benchmark(step, n_repeat=steps, n_warmup=3).gpu_times[0]) * 1e3)


def task_step(args):
    """Milliseconds per training step, XNOR against float products, in alternating rounds (the same minibatch)."""
    X_train, y_train, _, _ = _mnist(args)
    hidden = tuple(int(h) for h in args.hidden.split(",")) if args.hidden else MNIST_BINARY["hidden_layer_sizes"]
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        nets = {}
        for xnor in (True, False):
            net, opt, Xd, yd = _warm_network(hidden, batch, args.device, X_train[:2 * batch], y_train[:2 * batch],
                                             binary=True, xnor=xnor)
            nets[xnor] = (net, opt, Xd[:batch], yd[:batch], net.xp.random.RandomState(0))
        times = {True: [], False: []}
        for r in range(args.repeat):
            for xnor in ((True, False) if r % 2 == 0 else (False, True)):
                times[xnor].append(_step_ms(*nets[xnor], steps=20))
        xnor_ms, float_ms = statistics.median(times[True]), statistics.median(times[False])
        _emit({
            "task": "step", "batch_size": batch, "hidden_layer_sizes": hidden, "rounds": args.repeat,
            "graphs": _graph.enabled(nets[True][2]),
            "step_ms": {"binary-xnor": round(xnor_ms, 3), "binary-matmul": round(float_ms, 3)},
            "xnor_speedup": round(float_ms / xnor_ms, 3), "device": args.device, "machine": _machine(),
        })


TASKS = {
    "digits": task_digits,
    "mnist-binary": task_mnist_binary,
    "mnist-float": task_mnist_float,
    "predict": task_predict,
    "throughput": task_throughput,
    "step": task_step,
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tasks", nargs="+", choices=sorted(TASKS))
    parser.add_argument("--data-dir", default=str(DEFAULT_MNIST), help="MNIST IDX directory")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "gpu"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", help="hidden layer sizes, e.g. 1024,1024,1024")
    parser.add_argument("--max-iter", dest="max_iter", type=int)
    parser.add_argument("--batch-size", dest="batch_size", type=int)
    parser.add_argument("--lr", dest="learning_rate_init", type=float)
    parser.add_argument("--dropout", type=float)
    parser.add_argument("--xnor", type=lambda s: {"true": True, "false": False, "auto": "auto"}[s.lower()])
    parser.add_argument("--batch-sizes", default="512,1024,2048,4096,8192")
    parser.add_argument("--n-samples", type=int, default=60000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--mlp-dtype", dest="mlp_dtype", default="float32", choices=["float32", "float64"],
                        help="dtype MLPClassifier is fitted and predicts in (predict task)")
    parser.add_argument("--save", help="pickle the MNIST binary model here")
    parser.add_argument("--load", help="use this pickled model for the predict task")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    for task in args.tasks:
        TASKS[task](args)


if __name__ == "__main__":
    sys.exit(main())
