"""Packed binary CNN predict against the same architecture in PyTorch float32, side by side.

    python benchmarks/cnn_predict_bench.py [DATA_DIR] [--model PATH] [--rounds R] [--threads T]

The network is BNNClassifier's recommended CNN for 28x28 digits
(``conv_layers="auto"``: 5x5 conv 64 -> pool -> bn -> sign -> 5x5 conv 64x128
binary -> pool -> bn -> sign, then ``hidden_layer_sizes=(512,)`` binary and a
real output layer).  Timing does not depend on the weights, so without ``--model``
(a pickled fitted BNNClassifier of that shape) it is fitted for one epoch on
2,000 training images.  Each round times in turn ``predict`` of the 10,000
test images (on packed bits; the first block, convolution, pool and
threshold, in one float32 SIMD kernel)
and the PyTorch float32 model of the same layers (channels_last, eval mode,
``torch.sign`` as the activation, inference mode), at ``--threads`` threads
for both.  Rounds alternate so that load on a shared machine hits both alike;
the table gives each one's minimum and median over the rounds and their ratio.
Without DATA_DIR, random images of MNIST's shape stand in.  PyTorch is
optional: without it only xnorcore is timed.
"""

import argparse
import os
import pickle
import platform
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from xnorcore import BNNClassifier

try:
    import torch
except ImportError:  # PyTorch is only a baseline
    torch = None


def _data(data_dir):
    if data_dir is None:
        rng = np.random.default_rng(0)
        X = (rng.random((12000, 784)) < 0.2).astype(np.float32) * rng.random((12000, 784), dtype=np.float32)
        y = rng.integers(0, 10, 12000)
        return X[:2000], y[:2000], X[2000:], y[2000:]
    from xnorcore.datasets import load_mnist

    return load_mnist(data_dir)


def _torch_model(clf):
    """The fitted network's layers as a float32 PyTorch model (eval mode)."""
    nn = torch.nn
    net = clf.network_
    layers = []
    for block in net.features.blocks:
        conv = block.conv
        w = conv.effective_weight()  # HWIO, +-1 for binary layers
        kh, kw, c, o = w.shape
        m = nn.Conv2d(c, o, (kh, kw), padding="same", bias=False)
        m.weight.data = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
        layers.append(m)
        if block.pool is not None:
            layers.append(nn.MaxPool2d(2))
        bn = nn.BatchNorm2d(o, eps=block.bn.eps)
        _copy_bn(bn, block.bn)
        layers += [bn, _Sign()]
    layers.append(_FlattenNHWC())
    for block in net.head.blocks:
        d = block.dense
        w = d.effective_weight()
        m = nn.Linear(*w.shape, bias=d.bias is not None)
        m.weight.data = torch.from_numpy(np.ascontiguousarray(w.T))
        if d.bias is not None:
            m.bias.data = torch.from_numpy(d.bias.copy())
        layers.append(m)
        if block.bn is not None:
            bn = nn.BatchNorm1d(w.shape[1], eps=block.bn.eps)
            _copy_bn(bn, block.bn)
            layers.append(bn)
        if block.act is not None:
            layers.append(_Sign())
    return nn.Sequential(*layers).eval().to(memory_format=torch.channels_last)


def _copy_bn(dst, src):
    dst.weight.data = torch.from_numpy(src.gamma.copy())
    dst.bias.data = torch.from_numpy(src.beta.copy())
    dst.running_mean.data = torch.from_numpy(src.running_mean.copy())
    dst.running_var.data = torch.from_numpy(src.running_var.copy())


if torch is not None:
    class _Sign(torch.nn.Module):
        def forward(self, x):
            return torch.where(x >= 0, 1.0, -1.0)

    class _FlattenNHWC(torch.nn.Module):
        # The dense weights read features in NHWC order (channels fastest).
        def forward(self, x):
            return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", nargs="?")
    parser.add_argument("--model", help="pickled fitted BNNClassifier with image_shape=(28, 28, 1)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    X_train, y_train, X_test, y_test = _data(args.data_dir)
    if args.model:
        with open(args.model, "rb") as f:
            clf = pickle.load(f)
    else:
        clf = BNNClassifier(hidden_layer_sizes=(512,), image_shape=(28, 28, 1), conv_layers="auto",
                            max_iter=1, random_state=0, device="cpu").fit(X_train[:2000], y_train[:2000])
    X = np.ascontiguousarray(X_test[:10000], dtype=np.float32)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()}, "
          f"threads {args.threads}, {len(X)} images, conv_layers={clf.network_.conv_layers}")

    images = None
    model = None
    if torch is not None:
        torch.set_num_threads(args.threads)
        model = _torch_model(clf)
        rows = (X - clf.input_mean_) / clf.input_scale_
        images = torch.from_numpy(rows.reshape(-1, 28, 28, 1)).permute(0, 3, 1, 2)  # NCHW view of NHWC
        with torch.inference_mode():
            agree = (model(images).argmax(1).numpy() == clf._logits(X, packed=False).argmax(1)).mean()
        print(f"# PyTorch model agrees with the float path on {agree:.4f} of the predictions")

    times = {"xnorcore packed predict": [], "PyTorch float32": []}
    with threadpool_limits(limits=args.threads):
        clf.predict(X[:100])
        if model is not None:
            with torch.inference_mode():
                model(images[:100])
        for _ in range(args.rounds):
            t = time.perf_counter()
            clf.predict(X)
            times["xnorcore packed predict"].append(time.perf_counter() - t)
            if model is not None:
                with torch.inference_mode():
                    t = time.perf_counter()
                    model(images)
                    times["PyTorch float32"].append(time.perf_counter() - t)
    print("| contender | min s | median s | PyTorch / this (min) |")
    print("| --- | --- | --- | --- |")
    base = min(times["PyTorch float32"]) if times["PyTorch float32"] else None
    for name, ts in times.items():
        if not ts:
            continue
        ratio = f"{base / min(ts):.2f}x" if base else ""
        print(f"| {name} | {min(ts):.3f} | {statistics.median(ts):.3f} | {ratio} |")
    if args.data_dir is not None:
        print(f"# test accuracy (packed predict): {(clf.predict(X) == y_test[:10000]).mean():.4f}")


if __name__ == "__main__":
    main()
