"""Thread counts chosen by the size of the work: small calls run on one thread, results never change."""

import numpy as np
import pytest

from xnorcore import binary_matmul, pack_bits
from xnorcore._backends import cpu
from xnorcore._threads import kernel_threads

from conftest import matmul_ref


def test_small_work_runs_on_one_thread():
    assert cpu.threads_for(0) == 1
    assert cpu.threads_for(cpu.MIN_THREAD_WORK_NS - 1) == 1
    assert cpu.threads_for(2 * cpu.MIN_THREAD_WORK_NS - 1) == 1


def test_large_work_gets_the_threads_openmp_allows():
    limit = kernel_threads(None)
    assert cpu.threads_for(2 * cpu.MIN_THREAD_WORK_NS) == min(2, limit)
    assert cpu.threads_for(10**6 * cpu.MIN_THREAD_WORK_NS) == limit


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_an_explicit_count_is_used_whatever_the_work(n_threads):
    assert cpu.threads_for(0, n_threads) == kernel_threads(n_threads)
    assert cpu.threads_for(10**9, n_threads) == kernel_threads(n_threads)


@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (450, 256, 256), (63, 1000, 65), (1500, 1024, 1100)])
def test_products_are_exact_on_any_thread_count(rng, m, k, n):
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    expected = matmul_ref(a, b)
    pa, pb = pack_bits(a, axis=1), pack_bits(b, axis=0)
    for n_threads in (None, 1, 2):
        np.testing.assert_array_equal(binary_matmul(pa, pb, n_threads=n_threads), expected)


def test_conv_kernels_take_their_thread_count_from_the_same_rule(monkeypatch, rng):
    # binary_conv2d, its fused output and the real first block ask
    # work_threads, the rule of every other kernel, with a work estimate.
    from xnorcore import binary_conv2d, binary_conv2d_threshold_pack
    from xnorcore._backends import cpu_conv
    from xnorcore._threads import work_threads

    calls = []

    def recording(n_threads, work_ns=None):
        calls.append((n_threads, work_ns))
        return work_threads(n_threads, work_ns)

    monkeypatch.setattr(cpu_conv, "work_threads", recording)
    x = rng.standard_normal((1, 6, 6, 64)).astype(np.float32)
    w = rng.standard_normal((3, 3, 64, 8)).astype(np.float32)
    binary_conv2d(x, w, padding="same")
    binary_conv2d_threshold_pack(x, w, np.ones(8, np.int8), np.zeros(8, np.int32), padding="same", n_threads=2)
    cpu.real_conv2d_pool(x[..., :1], w[:, :, :1], None, ((1, 1), (1, 1)))
    assert [n for n, _ in calls] == [None, 2, None]
    assert all(work is not None and 0 < work < cpu.MIN_THREAD_WORK_NS for _, work in calls)
    # so the small calls without an explicit count run on one thread
    assert work_threads(None, calls[0][1]) == 1
