"""GPU binary convolution against cuDNN (PyTorch conv2d, channels_last), same run.

Run on a machine with a CUDA GPU, CuPy and (for the baseline) PyTorch::

    python benchmarks/gpu_conv_bench.py [--batch 256] [--rounds 2] [--layers 0 1]

The layers are ResNet-18's: its 3x3 stride-1 "same" layers (56x56x64,
28x28x128, 14x14x256, 7x7x512 to the same channels) and its downsampling
layers (3x3 stride 2, and 1x1 stride 2 without padding).  xnorcore runs on
packed operands (activations packed along C, weights a ``ConvWeights``), with
int32 sums and with the fused output (threshold, sign and packing along O);
PyTorch runs float16 in channels_last.  Each figure is the mean of calls
queued back to back, timed with CUDA events, in alternating rounds (host time
included where it exceeds the GPU's); the "device" columns time xnorcore's
calls queued behind a long kernel, so that host time is hidden (the GPU's own
time, an upper bound).  TOPS counts 2 operations per multiply-accumulate.  PyTorch's CUDA build has no
int8 convolution to compare with (its quantized convolutions run on the CPU).
"""

import argparse
import datetime
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gpu_bench import back_to_back_ms, device_ms  # noqa: E402

LAYERS = [  # (H, C, O, kernel, stride, padding)
    (56, 64, 64, 3, 1, "same"),
    (28, 128, 128, 3, 1, "same"),
    (14, 256, 256, 3, 1, "same"),
    (7, 512, 512, 3, 1, "same"),
    (56, 64, 128, 3, 2, 1),
    (28, 128, 256, 3, 2, 1),
    (14, 256, 512, 3, 2, 1),
    (56, 64, 128, 1, 2, 0),
    (28, 128, 256, 1, 2, 0),
    (14, 256, 512, 1, 2, 0),
]


def torch_ms(fn, repeat=20, warmup=3):
    import torch

    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeat):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / repeat


def main():
    import cupy

    from xnorcore import binary_conv2d, binary_conv2d_threshold_pack, pack_bits, pack_conv_weights
    from xnorcore._backends import gpu as _gpu

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--layers", type=int, nargs="+", default=None,
                        help="indices of the layers to time (default all)")
    parser.add_argument("--explicit", action="store_true",
                        help="time the explicit path (GEMM rows, then a GEMM kernel) instead of the implicit GEMM")
    parser.add_argument("--gather", action="store_true",
                        help="run every implicit GEMM as the gather kernel, not the halo kernel where it fits")
    args = parser.parse_args()
    from xnorcore._backends import gpu_conv

    gpu_conv._IMPLICIT = not args.explicit
    gpu_conv._HALO = not args.gather
    try:
        import torch
    except ImportError:
        torch = None
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {smi}, CuPy {cupy.__version__}, "
          f"torch {getattr(torch, '__version__', 'absent')}, GEMM kernel {_gpu.config().get('kernel')}, "
          f"{'explicit path' if args.explicit else 'implicit GEMM, gather kernel' if args.gather else 'implicit GEMM'}, "
          f"batch {args.batch}")
    print("| layer | xnorcore int32 | xnorcore fused | cuDNN fp16 | int32 / fp16 | fused / fp16 | int32 device | "
          "fused device | device int32 / fp16 | device fused / fp16 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rs = cupy.random.RandomState(0)
    layers = LAYERS if args.layers is None else [LAYERS[i] for i in args.layers]
    for h, c, o, k, stride, padding in layers:
        x = rs.standard_normal((args.batch, h, h, c), dtype=np.float32)
        w = rs.standard_normal((k, k, c, o), dtype=np.float32)
        px = pack_bits(x, axis=3)
        cw = pack_conv_weights(w)
        direction = np.ones(o, dtype=np.int8)
        threshold = np.zeros(o, dtype=np.int32)
        plain = lambda: binary_conv2d(px, cw, stride=stride, padding=padding)  # noqa: E731
        fused = lambda: binary_conv2d_threshold_pack(px, cw, direction, threshold, stride=stride, padding=padding)  # noqa: E731
        oh = plain().shape[1]
        macs = args.batch * oh * oh * o * k * k * c
        if torch is not None:
            tx = torch.as_tensor(x, device="cuda").permute(0, 3, 1, 2).to(torch.float16).contiguous(
                memory_format=torch.channels_last)
            tw = torch.as_tensor(w, device="cuda").permute(3, 2, 0, 1).to(torch.float16).contiguous(
                memory_format=torch.channels_last)
            pad = k // 2 if padding == "same" else padding
            torch.backends.cudnn.benchmark = True
            with torch.inference_mode():
                baseline = lambda: torch.nn.functional.conv2d(tx, tw, stride=stride, padding=pad)  # noqa: E731
                assert tuple(baseline().shape) == (args.batch, o, oh, oh)
        results = {"int32": [], "fused": [], "fp16": [], "int32 device": [], "fused device": []}
        for _ in range(args.rounds):  # alternate: the card's clocks drift with its temperature
            results["int32"].append(back_to_back_ms(plain))
            results["fused"].append(back_to_back_ms(fused))
            results["int32 device"].append(device_ms(plain))
            results["fused device"].append(device_ms(fused))
            if torch is not None:
                with torch.inference_mode():
                    results["fp16"].append(torch_ms(baseline))
        best = {key: min(v) if v else float("nan") for key, v in results.items()}

        def cell(ms):
            return f"{ms * 1e3:.1f} us ({2 * macs / ms / 1e9:.0f} TOPS)"

        name = f"{h}x{h}x{c} -> {o}, {k}x{k} s{stride}"
        print(f"| {name} | {cell(best['int32'])} | {cell(best['fused'])} | {cell(best['fp16'])} | "
              f"{best['fp16'] / best['int32']:.2f}x | {best['fp16'] / best['fused']:.2f}x | "
              f"{best['int32 device'] * 1e3:.1f} us | {best['fused device'] * 1e3:.1f} us | "
              f"{best['fp16'] / best['int32 device']:.2f}x | {best['fp16'] / best['fused device']:.2f}x |", flush=True)
        x = w = px = cw = None  # free the device buffers before the next layer
        cupy.get_default_memory_pool().free_all_blocks()


if __name__ == "__main__":
    main()
