"""pytest-benchmark: binary_matmul on the GPU against cuBLAS (cupy @), same session.

Run with ``pytest benchmarks/test_bench_gpu.py`` on a machine with CuPy and a
CUDA device; elsewhere every benchmark skips.  Each timed call ends with a
device synchronization, so the figures are wall-clock per call, host overhead
included.  ``benchmarks/gpu_bench.py`` gives CUDA-event figures and the table
in RESULTS.md.  No speed is asserted here.
"""

import numpy as np
import pytest

from xnorcore._backends.gpu import unavailable_reason

REASON = unavailable_reason()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(REASON is not None, reason=f"GPU benchmarks need CuPy and a CUDA device: {REASON}"),
]

SIZES = [1024, 4096]


@pytest.fixture(scope="module", params=SIZES, ids=lambda n: f"N={n}")
def operands(request):
    import cupy

    n = request.param
    rs = cupy.random.RandomState(0)
    return rs.standard_normal((n, n), dtype=np.float32), rs.standard_normal((n, n), dtype=np.float32)


def _synced(fn):
    import cupy

    def run():
        out = fn()
        cupy.cuda.Device().synchronize()
        return out

    return run


@pytest.mark.parametrize("kernel", ["mma", "popc"])
def test_binary_matmul_packed(benchmark, operands, kernel, monkeypatch):
    from xnorcore import binary_matmul, pack_bits
    from xnorcore._backends import gpu as _gpu

    monkeypatch.setenv(_gpu.KERNEL_ENV, kernel)
    a, b = operands
    pa, pb = pack_bits(a, axis=1), pack_bits(b, axis=0)
    benchmark(_synced(lambda: binary_matmul(pa, pb)))


def test_binary_matmul_packing_included(benchmark, operands):
    from xnorcore import binary_matmul

    a, b = operands
    benchmark(_synced(lambda: binary_matmul(a, b)))


def test_cublas_float32(benchmark, operands):
    a, b = operands
    benchmark(_synced(lambda: a @ b))


def test_cublas_float16(benchmark, operands):
    a, b = (x.astype(np.float16) for x in operands)
    benchmark(_synced(lambda: a @ b))
