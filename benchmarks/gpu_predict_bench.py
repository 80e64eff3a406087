"""GPU packed predict against the same network's float16 forward pass in cuBLAS (CuPy), same run.

Run on a machine with a CUDA GPU and CuPy::

    python benchmarks/gpu_predict_bench.py [--batch 65536] [--widths 1024 4096]

For each width, a binary MLP of 3 hidden layers of that width on 784 inputs
(the MNIST shape) is fitted for one epoch on random rows with
``device="gpu"`` (its speed does not depend on what it learned), then timed:

- ``predict``: ``BNNClassifier.predict`` of ``batch`` float32 rows held on the
  host (the rows are copied to the device in blocks), and of the same rows
  already on the device (a cupy array: nothing but the labels is copied);
- ``float16 forward``: the same layers in float16 on cupy arrays, batch norm
  folded into a scale and shift, sign, and the output layer, from rows already
  on the device, and the same with the host-to-device copy of the rows.

Times are the median of synchronized calls (CUDA events for the float16 rows,
host time for ``predict``, which ends with its result on the host).
"""

import argparse
import datetime
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gpu_bench import median_ms  # noqa: E402


def host_ms(fn, repeat=15):
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def float16_forward(network):
    """A closure: the network's inference forward in float16 on cupy rows."""
    import cupy

    layers = []
    for block in network.blocks:
        d, bn = block.dense, block.bn
        w = cupy.asarray(d.effective_weight(), dtype=cupy.float16)
        if bn is not None:
            scale32 = cupy.asarray(bn.gamma) / cupy.sqrt(cupy.asarray(bn.running_var) + bn.eps)
            shift32 = cupy.asarray(bn.beta) - scale32 * cupy.asarray(bn.running_mean)
            scale, shift = scale32.astype(cupy.float16), shift32.astype(cupy.float16)
        else:
            scale = shift = None
        layers.append((w, scale, shift))

    def forward(x16):
        h = x16
        for i, (w, scale, shift) in enumerate(layers):
            h = h @ w
            if scale is not None:
                h = h * scale + shift
            if i < len(layers) - 1:
                h = cupy.where(h >= 0, cupy.float16(1), cupy.float16(-1))
        return h

    return forward


def main():
    import cupy

    from xnorcore import BNNClassifier
    from xnorcore._backends import gpu as _gpu

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=65536)
    parser.add_argument("--widths", type=int, nargs="*", default=[1024, 4096])
    args = parser.parse_args()
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {_gpu.config().get('device')}, "
          f"CuPy {cupy.__version__}, GEMM kernel {_gpu.config().get('kernel')}, batch {args.batch}")
    rng = np.random.default_rng(0)
    x_fit = rng.random((4096, 784), dtype=np.float32)
    y_fit = rng.integers(0, 10, 4096)
    x = rng.random((args.batch, 784), dtype=np.float32)
    print("| model | predict (host rows) | predict (device rows) | float16 forward (device rows) | "
          "float16 + copy of the rows | float16 / predict (device rows) | (float16 + copy) / predict (host rows) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for width in args.widths:
        clf = BNNClassifier(hidden_layer_sizes=(width,) * 3, device="gpu", max_iter=1, random_state=0)
        clf.fit(x_fit, y_fit)
        predict = host_ms(lambda: clf.predict(x))
        x_device = cupy.asarray(x)
        predict_device = host_ms(lambda: clf.predict(x_device))
        forward = float16_forward(clf.network_)
        x16 = cupy.asarray(x, dtype=cupy.float16)
        f16 = median_ms(lambda: forward(x16))
        f16_copy = median_ms(lambda: forward(cupy.asarray(x).astype(cupy.float16)))
        print(f"| 3 x {width} | {predict:.2f} ms | {predict_device:.2f} ms | {f16:.2f} ms | {f16_copy:.2f} ms | "
              f"{f16 / predict_device:.2f}x | {f16_copy / predict:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
