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
