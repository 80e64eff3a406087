"""``xnorcore bench``: binary_matmul against the float32 product, as the old matmul_bench.py.

For each size N, two N x N matrices of +1/-1 (``sign(randn)`` with seeds 1 and 2,
as the old benchmark) are multiplied ``runs + 1`` times by :func:`binary_matmul`
and by the float32 product of the same library (numpy's BLAS on the CPU, cuBLAS
through CuPy on the GPU).  Each call is timed with a wall clock, GPU calls until
the device has finished; the first call of each is dropped as warm-up.  The
speedup is the float time divided by the binary time, so above 1 means
binary_matmul is faster.
"""

import statistics
import textwrap
import time

import numpy as np

__all__ = ["DEFAULT_SIZES", "BenchError", "run_bench", "format_table", "plot_speedup"]

DEFAULT_SIZES = {"cpu": (256, 512, 1024, 2048), "gpu": (1024, 2048, 4096, 8192)}


class BenchError(RuntimeError):
    """The benchmark cannot run as asked (no GPU, missing matplotlib, wrong result)."""


def _timer(xp):
    if xp is np:
        return time.perf_counter

    def synced():
        xp.cuda.Device().synchronize()
        return time.perf_counter()

    return synced


def _time_calls(fn, runs, clock):
    times = []
    for _ in range(runs + 1):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return times[1:]


def _array_module(device):
    if device == "cpu":
        return np
    from ._backends import gpu

    try:
        return gpu.require("--device gpu")
    except RuntimeError as exc:
        raise BenchError(str(exc)) from None


def run_bench(sizes, runs, *, device="cpu", n_threads=None, prepacked=False, progress=None):
    """Time binary_matmul and the float32 product for square sizes.

    Parameters
    ----------
    sizes : sequence of int
        Matrix sizes N (products of two N x N matrices).
    runs : int
        Timed calls per size and method (one more warm-up call is dropped).
    device : {"cpu", "gpu"}, default="cpu"
    n_threads : int, optional
        CPU threads for both binary_matmul and the BLAS (via threadpoolctl),
        at most the CPUs this process may use; by default the libraries' own
        defaults.
    prepacked : bool, default=False
        Pack both operands once, outside the timed calls.  By default each
        binary_matmul call packs its float operands, as the old XNOR op did.
    progress : callable, optional
        Called with each result row as it is measured.

    Returns
    -------
    rows : list of dict
        One per size with keys ``n``, ``runs``, ``binary_avg``, ``binary_std``,
        ``binary_med``, ``float_avg``, ``float_std``, ``float_med`` (seconds)
        and ``speedup`` (``float_avg / binary_avg``).  The printed table also
        gives the ratio of medians, which a busy machine disturbs less.

    Raises
    ------
    BenchError
        If the GPU is asked for and unavailable, or binary_matmul disagrees
        with the float product (which would make the timing meaningless).
    """
    from threadpoolctl import threadpool_limits

    from ._threads import kernel_threads
    from .ops import binary_matmul, pack_bits

    if n_threads is not None:
        # The same count for both products, so the comparison stays fair.
        n_threads = kernel_threads(n_threads)
    xp = _array_module(device)
    clock = _timer(xp)
    rows = []
    for n in sizes:
        a = xp.asarray(np.where(np.random.default_rng(1).standard_normal((n, n)) >= 0, 1, -1).astype(np.float32))
        b = xp.asarray(np.where(np.random.default_rng(2).standard_normal((n, n)) >= 0, 1, -1).astype(np.float32))
        if prepacked:
            pa, pb = pack_bits(a, axis=1, n_threads=n_threads), pack_bits(b, axis=0, n_threads=n_threads)
        else:
            pa, pb = a, b
        with threadpool_limits(limits=n_threads):
            got = binary_matmul(pa, pb, n_threads=n_threads)
            want = a @ b
            # +-1 products of N < 2**24 terms are exact in float32.
            if not bool((got == want.astype(np.int32)).all()):
                raise BenchError(f"binary_matmul disagrees with the float32 product for N={n}")
            del got, want
            t_bin = _time_calls(lambda: binary_matmul(pa, pb, n_threads=n_threads), runs, clock)
            t_flt = _time_calls(lambda: a @ b, runs, clock)
        row = {
            "n": n,
            "runs": runs,
            "binary_avg": statistics.fmean(t_bin),
            "binary_std": statistics.pstdev(t_bin),
            "binary_med": statistics.median(t_bin),
            "float_avg": statistics.fmean(t_flt),
            "float_std": statistics.pstdev(t_flt),
            "float_med": statistics.median(t_flt),
        }
        row["speedup"] = row["float_avg"] / row["binary_avg"]
        rows.append(row)
        if progress is not None:
            progress(row)
    return rows


def table_header(device):
    base = "numpy float32" if device == "cpu" else "cuBLAS float32"
    return [
        f"| N | Runs | binary_matmul Avg (s) | binary_matmul Std (s) | {base} Avg (s) | {base} Std (s) "
        "| Speedup (avg) | Speedup (med) |",
        "|------|:----|:--------|:--------|:--------|:--------|:-------:|:-------:|",
    ]


def _seconds(t):
    # Five decimals as the old table, unless that would round small sizes to 0.
    return f"{t:.5f}" if t >= 1e-3 or t == 0 else f"{t:.3g}"


def format_row(row):
    cells = [row["n"], row["runs"]] + [
        _seconds(row[k]) for k in ("binary_avg", "binary_std", "float_avg", "float_std")
    ] + [f"{row['speedup']:.2f}", f"{row['float_med'] / row['binary_med']:.2f}"]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def format_table(rows, device="cpu"):
    """Markdown table in the old benchmark's columns, plus the ratio of medians."""
    return "\n".join(table_header(device) + [format_row(r) for r in rows])


#: Characters per title line that fit the 6-inch-wide figure at matplotlib's
#: default title size.
_TITLE_WIDTH = 50


def _wrap_title(title):
    """The parenthesized details on a line of their own, long lines wrapped,
    so that the title fits the figure."""
    head, sep, details = title.partition(" (")
    lines = [head] + ([sep.strip() + details] if sep else [])
    return "\n".join(textwrap.fill(line, _TITLE_WIDTH) for line in lines)


def plot_speedup(rows, path, *, device="cpu", title=None):
    """Draw speedup (float time / binary time) against N and save it to ``path``.

    Raises
    ------
    BenchError
        If matplotlib is not installed, or the file cannot be written.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BenchError(
            "--plot needs matplotlib; install it with: pip install 'xnorcore[plot]'"
        ) from None
    ns = [r["n"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    ax.plot(ns, [r["speedup"] for r in rows], "o-", label="avg time ratio")
    ax.plot(ns, [r["float_med"] / r["binary_med"] for r in rows], "s--", alpha=0.7, label="median time ratio")
    ax.axhline(1.0, color="gray", lw=1, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("N (N x N times N x N)")
    baseline = "numpy float32" if device == "cpu" else "cuBLAS float32"
    ax.set_ylabel(f"speedup over {baseline}")
    ax.set_ylim(bottom=0)
    ax.set_title(_wrap_title(title or f"binary_matmul vs {baseline} ({device.upper()})"))
    ax.legend()
    try:
        fig.savefig(path, dpi=120)
    except OSError as exc:
        raise BenchError(f"--plot: cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
