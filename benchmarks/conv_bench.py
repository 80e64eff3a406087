"""Binary conv2d against PyTorch float32 conv2d (channels_last), side by side.

    python benchmarks/conv_bench.py [--rounds R] [--repeat K]

For each layer (batch 1, 3x3, "same") and thread count, one round times in
turn: PyTorch float32 ``conv2d`` on channels_last tensors, ``binary_conv2d`` on
packed input and weights (int32 output) and ``binary_conv2d_threshold_pack``
(the fused packed output), each with the weights as ``pack_conv_weights``
gives them (a layer of a packed model: panels prepared once) and as
``pack_bits(w, axis=2)`` (prepared on every call), ``binary_matmul`` on prepacked operands of the same GEMM
size, ``pack_bits`` of the float32 NHWC input, and both convs on that float input
(their packing cost is the difference to the same conv on packed input, as a share of
it; in brackets the median of the rounds' own shares).  Rounds alternate the
contenders so that load on a shared machine hits all of them alike; the table
gives each one's minimum over the rounds, the ratios of the minima to PyTorch's
and, in brackets, the median over the rounds of the ratio within a round.  PyTorch
is optional: without it the ratio columns are empty.
"""

import argparse
import os
import platform
import time

import numpy as np

from xnorcore import binary_conv2d, binary_conv2d_threshold_pack, binary_matmul, pack_bits

try:
    from xnorcore import pack_conv_weights
except ImportError:  # an older xnorcore, for before/after figures
    pack_conv_weights = None
from xnorcore._backends import cpu as _cpu

try:
    import torch
except ImportError:  # PyTorch is only a baseline
    torch = None

LAYERS = [(1, 56, 64, 64), (1, 14, 256, 256), (64, 14, 256, 256)]  # (N, H = W, C, O)


def _best(fn, repeat):
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _contenders(n, hw, c, o, nt, rng):
    x = rng.standard_normal((n, hw, hw, c), dtype=np.float32)
    w = rng.standard_normal((3, 3, c, o), dtype=np.float32)
    xp, wp = pack_bits(x, axis=-1), pack_bits(w, axis=2)
    direction = rng.choice(np.array([-1, 1], dtype=np.int8), o)
    threshold = rng.integers(-20, 20, o).astype(np.int32)
    a = pack_bits(rng.standard_normal((n * hw * hw, 9 * c), dtype=np.float32), axis=1)
    b = pack_bits(rng.standard_normal((9 * c, o), dtype=np.float32), axis=0)
    fns = {}
    if torch is not None:
        xt = torch.from_numpy(x).permute(0, 3, 1, 2)  # NHWC memory: channels_last
        wt = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1))).to(memory_format=torch.channels_last)

        def torch_conv():
            torch.set_num_threads(nt)
            with torch.no_grad():
                torch.nn.functional.conv2d(xt, wt, padding=1)

        fns["torch fp32"] = torch_conv
    # The ratio columns use the prepared weights where there are any.
    wl = pack_conv_weights(wp) if pack_conv_weights is not None else wp
    fns["conv int32"] = lambda: binary_conv2d(xp, wl, padding="same", n_threads=nt)
    fns["conv fused"] = lambda: binary_conv2d_threshold_pack(
        xp, wl, direction, threshold, padding="same", n_threads=nt
    )
    if pack_conv_weights is not None:
        fns["int32, w PackedBits"] = lambda: binary_conv2d(xp, wp, padding="same", n_threads=nt)
        fns["fused, w PackedBits"] = lambda: binary_conv2d_threshold_pack(
            xp, wp, direction, threshold, padding="same", n_threads=nt
        )
    fns["conv float x"] = lambda: binary_conv2d(x, wl, padding="same", n_threads=nt)
    fns["fused float x"] = lambda: binary_conv2d_threshold_pack(
        x, wl, direction, threshold, padding="same", n_threads=nt
    )
    fns["matmul"] = lambda: binary_matmul(a, b, n_threads=nt)
    fns["pack x"] = lambda: pack_bits(x, axis=-1, n_threads=nt)
    return fns


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--layers", type=int, nargs="+", default=list(range(len(LAYERS))),
                        help="indices into LAYERS")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    import xnorcore

    print(f"# xnorcore {os.path.dirname(xnorcore.__file__)}")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, popcount {_cpu.get_variant()}, "
          f"torch {torch.__version__ if torch else 'absent'}, load {os.getloadavg()[0]:.2f}, {time.strftime('%Y-%m-%d %H:%M')}")
    rows = []
    for n, hw, c, o in [LAYERS[i] for i in args.layers]:
        for nt in args.threads:
            fns = _contenders(n, hw, c, o, nt, rng)
            repeat = max(3, args.repeat // n)
            rounds = {k: [] for k in fns}
            for _ in range(args.rounds):
                for k, fn in fns.items():
                    rounds[k].append(_best(fn, repeat))
            rows.append((f"{n}x{hw}x{hw}x{c}->{o}", nt, rounds))
    names = list(rows[0][2])
    print("| layer | threads | " + " | ".join(f"{k} ms" for k in names)
          + " | torch / int32 (median) | torch / fused (median) | pack / int32 | packing in conv / int32 (median)"
          + " | packing in fused / fused (median) |")
    print("|---|---|" + "---|" * (len(names) + 5))
    for layer, nt, rounds in rows:
        best = {k: min(v) for k, v in rounds.items()}
        t = rounds.get("torch fp32")

        def ratio(k):
            # best over best, and the median of the per-round ratios (same load)
            if not t:
                return ""
            return f"{min(t) / best[k]:.1f}x ({np.median(np.divide(t, rounds[k])):.1f}x)"

        def packing(on_float, packed):
            # what the float input adds, best over best and the median of the rounds' own shares
            share = np.subtract(rounds[on_float], rounds[packed]) / np.asarray(rounds[packed])
            return f"{(best[on_float] - best[packed]) / best[packed]:.0%} ({np.median(share):.0%})"

        print(f"| {layer} | {nt} | " + " | ".join(f"{best[k] * 1e3:.3f}" for k in names)
              + f" | {ratio('conv int32')} | {ratio('conv fused')} | {best['pack x'] / best['conv int32']:.0%}"
              + f" | {packing('conv float x', 'conv int32')} | {packing('fused float x', 'conv fused')} |")
    print(f"# load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
