"""CPU kernels: every popcount variant, forcing a variant, threads, packing paths."""

import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

import xnorcore
from xnorcore import _bitpack, binary_matmul, pack_bits, unpack_bits
from xnorcore._backends import cpu as _cpu, gpu as _gpu

from conftest import matmul_ref, random_matrix, sign_ref

VARIANTS = _bitpack.available_variants()
INT_AND_FLOAT = [np.int8, np.int16, np.int32, np.int64, np.float32, np.float64]


@pytest.fixture(params=VARIANTS)
def variant(request):
    """Run the test with each popcount variant this CPU supports."""
    previous = _cpu.set_variant(request.param)
    yield request.param
    _cpu.set_variant(previous)


def test_variants_are_known_and_ordered():
    assert _bitpack.VARIANTS == ("generic", "scalar", "avx2", "avx512")
    assert "generic" in VARIANTS  # runs anywhere
    assert set(VARIANTS) <= set(_bitpack.VARIANTS)
    # The default is the fastest the CPU supports (unless the environment forces one).
    if not os.environ.get(_cpu.VARIANT_ENV):
        assert _cpu.get_variant() == VARIANTS[-1]


@pytest.mark.parametrize("shape", [(1, 1, 1), (8, 64, 24), (9, 65, 25), (63, 127, 129), (129, 1000, 65), (1000, 63, 7)])
def test_gemm_exact_every_variant(variant, rng, shape):
    m, k, n = shape
    a = random_matrix(rng, (m, k), special=0.05)
    b = random_matrix(rng, (k, n), special=0.05)
    np.testing.assert_array_equal(binary_matmul(a, b), matmul_ref(a, b))


def test_gemm_several_k_blocks_every_variant(variant, rng):
    # 300 words: three K blocks of 128 words, the last one partial.
    a = random_matrix(rng, (13, 300 * 64 - 5))
    b = random_matrix(rng, (300 * 64 - 5, 30))
    np.testing.assert_array_equal(binary_matmul(a, b), matmul_ref(a, b))


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 70), k=st.integers(1, 300), n=st.integers(1, 70), seed=st.integers(0, 2**32 - 1))
def test_gemm_random_shapes_agree_across_variants(m, k, n, seed):
    rng = np.random.default_rng(seed)
    a = random_matrix(rng, (m, k), special=0.1)
    b = random_matrix(rng, (k, n), special=0.1)
    expected = matmul_ref(a, b)
    previous = _cpu.get_variant()
    try:
        for name in VARIANTS:
            _cpu.set_variant(name)
            np.testing.assert_array_equal(binary_matmul(a, b), expected, err_msg=name)
    finally:
        _cpu.set_variant(previous)


@pytest.mark.parametrize("dtype", INT_AND_FLOAT)
@pytest.mark.parametrize("length", [1, 63, 64, 65, 200])
def test_pack_rows_and_cols_every_variant(variant, rng, dtype, length):
    x = random_matrix(rng, (length, 70), dtype, special=0.2)
    expected = sign_ref(x)
    for axis in (0, 1):
        np.testing.assert_array_equal(unpack_bits(pack_bits(x, axis=axis)), expected)


def test_pack_cols_matches_pack_rows_every_variant(variant, rng):
    # The direct column packer (C-order x, axis 0) against the row packer on
    # the transposed copy, over widths around the 64-column strips.
    for rows in (1, 63, 64, 65, 200, 4097):
        x = random_matrix(rng, (130, rows), special=0.1)
        by_cols, nan_cols = _bitpack.pack_cols(x)
        by_rows, nan_rows = _bitpack.pack_rows(np.ascontiguousarray(x.T))
        np.testing.assert_array_equal(by_cols, by_rows)
        assert not nan_cols and not nan_rows


@pytest.mark.parametrize("dtype", [np.int8, np.float32, np.float64])
@pytest.mark.parametrize("rows, length", [(2, 64), (3136, 64), (97, 64), (64, 128), (6, 4032), (8, 4096),
                                          (1, 64), (0, 64), (12, 192)])
def test_grouped_pack_rows_equals_the_row_kernel(variant, rng, dtype, rows, length):
    # Rows of whole words go through the row kernel a group of rows at a time.
    x = random_matrix(rng, (rows, length), dtype, special=0.2)
    words, nan = _cpu.pack_rows(x)
    expected, expected_nan = _bitpack.pack_rows(x)
    assert words.shape == expected.shape == (rows, length // 64)
    np.testing.assert_array_equal(words, expected)
    assert nan == expected_nan
    if rows and np.dtype(dtype).kind == "f":
        x[rows // 2, length - 1] = np.nan  # found in any row of a group
        assert _cpu.pack_rows(x)[1]


def test_pack_nan_detected_every_variant(variant):
    for dtype in (np.float32, np.float64):
        for index in [(0, 0), (63, 5), (64, 69), (99, 3)]:
            x = np.ones((100, 70), dtype=dtype)
            x[index] = np.nan
            assert _bitpack.pack_rows(x)[1]
            assert _bitpack.pack_cols(x)[1]
        assert not _bitpack.pack_rows(np.ones((100, 70), dtype=dtype))[1]


@pytest.mark.parametrize("dtype,nans", [
    (np.float32, [0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF]),
    (np.float64, [0x7FF8000000000000, 0xFFF8000000000000, 0x7FF0000000000001, 0xFFFFFFFFFFFFFFFF]),
])
def test_pack_rows_finds_every_nan_and_no_infinity_every_variant(variant, dtype, nans):
    # Quiet and signalling NaNs of either sign, the smallest and the largest
    # payloads, in the first, a middle and the last full word and in the tail;
    # infinities and the largest finite values are no NaN.
    bits = np.uint32 if dtype == np.float32 else np.uint64
    for length in (64, 200):
        finite = np.full((2, length), np.finfo(dtype).max, dtype=dtype)
        finite[1] = -np.inf
        finite[:, ::3] = np.inf
        words, nan = _bitpack.pack_rows(finite)
        assert not nan
        np.testing.assert_array_equal(unpack_bits(pack_bits(finite, axis=1)), sign_ref(finite))
        for position in sorted({0, 63, 64, 127, 130, length - 1} - {p for p in range(length, 200)}):
            for pattern in nans:
                x = finite.copy()
                x[1, position] = np.array(pattern, dtype=bits).view(dtype)
                assert _bitpack.pack_rows(x)[1], (length, position, hex(pattern))


@pytest.mark.parametrize("length", [64, 65, 127, 128, 200, 1000])
def test_pack_rows_at_every_alignment_every_variant(variant, rng, length):
    # float32 rows that start anywhere in a cache line (numpy gives 16 bytes),
    # or off the 4-byte grid: the same words, and a NaN in any word is found.
    raw = np.zeros(4 * (2 * length + 64) + 3, dtype=np.uint8)
    values = random_matrix(rng, (2, length), np.float32, special=0.2)
    for byte_offset in list(range(0, 64, 4)) + [1, 2, 7]:
        x = raw[byte_offset:byte_offset + values.nbytes].view(np.float32).reshape(values.shape)
        x[...] = values
        words, nan = _bitpack.pack_rows(x)
        assert not nan
        np.testing.assert_array_equal(words, _bitpack.pack_rows(values.copy())[0], err_msg=str(byte_offset))
        np.testing.assert_array_equal(unpack_bits(pack_bits(x, axis=1)), sign_ref(values))
        for position in (0, 15, 63, length - 1):
            x[...] = values
            x[1, position] = np.nan
            assert _bitpack.pack_rows(x)[1], (byte_offset, position)


def test_pack_padding_is_zero_every_variant(variant):
    for length in (1, 63, 65, 127, 129):
        words, _ = _bitpack.pack_rows(np.ones((3, length), dtype=np.float32))
        assert int(words[0, -1]) == (1 << (length % 64 or 64)) - 1
        words, _ = _bitpack.pack_cols(np.ones((length, 3), dtype=np.int16))
        assert int(words[0, -1]) == (1 << (length % 64 or 64)) - 1


@pytest.mark.parametrize("shape", [(0,), (1,), (5, 3), (2, 70000), (3, 0, 2)])
def test_split_words_nibbles_and_popcounts(rng, shape):
    words = rng.integers(0, 2**63, size=shape, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    split = _bitpack.split_words(words, n_threads=2)
    assert split.shape == shape[:-1] + (2 * shape[-1],) and split.dtype == np.uint64
    low, high = split[..., 0::2], split[..., 1::2]
    nibbles = np.uint64(0x0F0F0F0F0F0F0F0F)
    np.testing.assert_array_equal(low, words & nibbles)
    np.testing.assert_array_equal(high, (words >> np.uint64(4)) & nibbles)
    np.testing.assert_array_equal(low | (high << np.uint64(4)), words)
    # XOR and popcount commute with the split: what the split tiles rely on.
    def popcount(v):
        return np.unpackbits(v[..., None].view(np.uint8), axis=-1).sum(axis=-1, dtype=np.int64)

    other = rng.integers(0, 2**63, size=shape, dtype=np.uint64)
    counts = popcount(words ^ other)
    halves = popcount(split ^ _bitpack.split_words(other))
    np.testing.assert_array_equal(halves[..., 0::2] + halves[..., 1::2], counts)


def test_large_product_every_variant(variant, rng):
    # Large enough for several work items per thread and full micro-tiles.
    a = random_matrix(rng, (300, 1000))
    b = random_matrix(rng, (1000, 260))
    np.testing.assert_array_equal(binary_matmul(a, b), matmul_ref(a, b))


@pytest.mark.parametrize("backend", [_cpu, _gpu], ids=["cpu", "gpu"])
def test_backend_gemm_rejects_inconsistent_word_counts(backend):
    # Checked from the shapes alone, before any device work: runs everywhere.
    a = np.zeros((3, 2), dtype=np.uint64)
    with pytest.raises(ValueError, match=r"must both have ceil\(k / 64\) = 2 words per row"):
        backend.xnor_gemm(a, np.zeros((4, 3), dtype=np.uint64), 100)
    with pytest.raises(ValueError, match=r"ceil\(k / 64\) = 3 words per row, got a_words.shape=\(3, 2\)"):
        backend.xnor_gemm(a, np.zeros((4, 2), dtype=np.uint64), 150)


def test_backend_gemm_contract(rng):
    # The backend contract of _cpu (shared with _gpu): k - 2 popcount(a ^ b).
    a = rng.integers(0, 2**63, size=(5, 2), dtype=np.uint64)
    b = rng.integers(0, 2**63, size=(7, 2), dtype=np.uint64)
    a[:, 1] &= np.uint64(0xFF)  # k = 72: padding bits zero
    b[:, 1] &= np.uint64(0xFF)
    expected = np.array([[72 - 2 * sum(bin(int(x) ^ int(y)).count("1") for x, y in zip(ra, rb)) for rb in b] for ra in a])
    np.testing.assert_array_equal(_cpu.xnor_gemm(a, b, 72), expected)


# ----------------------------------------------------------------- threads


def test_one_and_several_threads_give_identical_results(variant, rng):
    a = random_matrix(rng, (517, 1300), special=0.05)
    b = random_matrix(rng, (1300, 389), special=0.05)
    expected = matmul_ref(a, b)
    results = [binary_matmul(a, b, n_threads=t) for t in (1, 2, 3)]
    for c in results:
        np.testing.assert_array_equal(c, expected)
    for t in (1, 2, 3):
        np.testing.assert_array_equal(pack_bits(b, axis=0, n_threads=t).words, pack_bits(b, axis=0).words)
        np.testing.assert_array_equal(pack_bits(a, axis=1, n_threads=t).words, pack_bits(a, axis=1).words)


def test_threadpoolctl_limit_is_honoured(rng):
    a = random_matrix(rng, (300, 700))
    b = random_matrix(rng, (700, 200))
    unlimited = binary_matmul(a, b)
    with threadpool_limits(limits=1, user_api="openmp"):
        assert _bitpack.max_threads() == 1
        assert xnorcore.get_config()["cpu"]["threads"] == 1
        limited = binary_matmul(a, b)
    np.testing.assert_array_equal(limited, unlimited)
    np.testing.assert_array_equal(limited, matmul_ref(a, b))


def _run(code, **env):
    # Run outside the source tree, so that "python -c" imports the installed
    # package (with its compiled extension) rather than ./xnorcore.
    full_env = dict(os.environ, **env)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env,
        timeout=120, cwd=tempfile.gettempdir(),
    )


def test_omp_num_threads_is_honoured():
    out = _run("import xnorcore; print(xnorcore.get_config()['cpu']['threads'])", OMP_NUM_THREADS="1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


# ---------------------------------------------------------- forcing a variant


# Each case starts an interpreter; the kernels of every variant are tested in
# process above, so two names suffice here: the most portable and the fastest.
@pytest.mark.parametrize("name", sorted({VARIANTS[0], VARIANTS[-1]}))
def test_environment_variable_forces_a_variant(name):
    code = (
        "import numpy as np, xnorcore\n"
        "from xnorcore._backends import cpu as _cpu\n"
        "a = np.arange(-50, 50).reshape(10, 10)\n"
        "assert (xnorcore.binary_matmul(a, a) == np.where(a >= 0, 1, -1) @ np.where(a >= 0, 1, -1)).all()\n"
        "print(_cpu.get_variant())\n"
    )
    out = _run(code, XNORCORE_POPCOUNT=name.upper())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == name


def test_environment_variable_unknown_name_is_a_clear_error():
    code = "import numpy as np, xnorcore\nxnorcore.binary_matmul(np.ones((2, 2)), np.ones((2, 2)))\n"
    out = _run(code, XNORCORE_POPCOUNT="sse9")
    assert out.returncode != 0
    assert "XNORCORE_POPCOUNT must be one of generic, scalar, avx2, avx512, got XNORCORE_POPCOUNT='sse9'" in out.stderr


def test_forcing_a_variant_the_cpu_lacks_is_a_clear_error():
    previous = _cpu.get_variant()
    best = VARIANTS[-1]
    _bitpack._hide_variants([best])  # pretend the CPU lacks the fastest one
    try:
        with pytest.raises(RuntimeError, match=f"popcount variant '{best}' is not supported by this CPU; available: "):
            _cpu.set_variant(best)
        assert _cpu.get_variant() == previous  # unchanged
        assert best not in xnorcore.get_config()["cpu"]["variants"]
    finally:
        _bitpack._hide_variants([])
    with pytest.raises(ValueError, match=r"popcount variant must be one of \('generic', 'scalar', 'avx2', 'avx512'\), got 'fast'"):
        _cpu.set_variant("fast")


@pytest.mark.skipif("avx512" in VARIANTS, reason="this CPU has AVX-512 VPOPCNTDQ")
def test_environment_variable_unsupported_variant_is_a_clear_error():
    missing = next(v for v in ("avx512", "avx2", "scalar") if v not in VARIANTS)
    out = _run("import numpy as np, xnorcore\nxnorcore.binary_matmul(np.ones((2, 2)), np.ones((2, 2)))\n",
               XNORCORE_POPCOUNT=missing)
    assert out.returncode != 0
    assert "does not support" in out.stderr


# ---------------------------------------------------------------- show_config


def test_show_config_reports_variant_threads_and_gpu(capsys):
    xnorcore.show_config()
    text = capsys.readouterr().out
    config = xnorcore.get_config()
    assert f"xnorcore {xnorcore.__version__}" in text
    assert f"numpy {np.__version__}" in text
    assert f"popcount {_cpu.get_variant()}" in text
    assert f"{config['cpu']['threads']} OpenMP threads" in text
    assert "GPU: " in text
    assert config["cpu"]["popcount"] == _cpu.get_variant()
    assert config["cpu"]["variants"] == VARIANTS
    assert isinstance(config["gpu"], dict)


def test_show_config_survives_a_broken_gpu_backend(monkeypatch, capsys):
    from xnorcore._backends import gpu as _gpu

    def broken():
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(_gpu, "config", broken)
    xnorcore.show_config()
    assert "GPU: unavailable (driver exploded)" in capsys.readouterr().out


@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (7, 63, 65), (9, 64, 24), (100, 130, 1000), (130, 1024, 129)])
def test_fused_gemm_threshold_pack_matches_reference(variant, m, k, n):
    """The fused binary layer equals sign(direction * (sign(a) @ sign(b)) - threshold)."""
    rng = np.random.default_rng(m * 1000 + n)
    a, b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
    direction = rng.integers(-1, 2, n).astype(np.int8)
    threshold = rng.integers(-k - 1, k + 2, n).astype(np.int32)
    threshold[: n // 3] = 0  # ties: a zero difference is +1
    words = _cpu.xnor_gemm_threshold_pack(
        pack_bits(a, axis=1).words, pack_bits(b, axis=0).words, k, direction, threshold, n_threads=2
    )
    expected = direction * matmul_ref(a, b) - threshold >= 0
    got = unpack_bits(xnorcore.PackedBits(words, (m, n), 1)) == 1
    np.testing.assert_array_equal(got, expected)


def test_fused_gemm_threshold_pack_rejects_mismatched_thresholds():
    a = pack_bits(np.ones((2, 70)), axis=1).words
    b = pack_bits(np.ones((70, 3)), axis=0).words
    with pytest.raises(ValueError, match="direction and threshold must have 3 entries"):
        _cpu.xnor_gemm_threshold_pack(a, b, 70, np.ones(2, np.int8), np.zeros(3, np.int32))


@pytest.mark.parametrize("rows, f, n", [(1, 1, 1), (3, 0, 5), (5, 7, 300), (70, 20, 257), (130, 784, 1024), (65, 33, 128)])
def test_input_sums_match_a_float64_product(variant, rows, f, n):
    """init + x @ w with zero inputs skipped: float32 rounding of the exact sums."""
    rng = np.random.default_rng(rows * 7 + n)
    x = rng.standard_normal((rows, f)).astype(np.float32)
    x[rng.random((rows, f)) < 0.7] = 0  # mostly zeros, as in image backgrounds
    w = rng.standard_normal((f, n)).astype(np.float32)
    init = rng.standard_normal(n).astype(np.float32)
    got, dense = _cpu.input_sums(x, _cpu.input_weights(w), init, n_threads=2)
    assert dense.size == 0
    expected = init.astype(np.float64) + x.astype(np.float64) @ w.astype(np.float64)
    assert got.dtype == np.float32 and got.shape == (rows, n)
    # Each float32 addition rounds by at most 2**-24 of the running sum.
    bound = 2.0**-22 * (f + 1) * (np.abs(init) + np.abs(x).astype(np.float64) @ np.abs(w))
    assert np.all(np.abs(got - expected) <= bound)


def test_input_sums_of_a_row_do_not_depend_on_its_batch(variant, rng):
    x = rng.standard_normal((150, 100)).astype(np.float32)
    x[rng.random(x.shape) < 0.5] = 0
    x[7] = 0  # a row of zeros gives init
    w_blocks = _cpu.input_weights(rng.standard_normal((100, 300)).astype(np.float32))
    init = rng.standard_normal(300).astype(np.float32)
    batch, _ = _cpu.input_sums(x, w_blocks, init, n_threads=2)
    np.testing.assert_array_equal(batch[7], init)
    for r in (0, 7, 63, 64, 149):
        np.testing.assert_array_equal(_cpu.input_sums(x[r:r + 1], w_blocks, init, n_threads=1)[0][0], batch[r])
    np.testing.assert_array_equal(_cpu.input_sums(x[::-1].copy(), w_blocks, init)[0][::-1], batch)


def test_input_sums_leave_dense_rows_to_the_caller(variant, rng):
    """Rows over max_density are listed and skipped; the others are exactly as without a limit."""
    x = rng.standard_normal((200, 50)).astype(np.float32)
    density = rng.random(200)
    x[rng.random(x.shape) >= density[:, None]] = 0
    w_blocks = _cpu.input_weights(rng.standard_normal((50, 130)).astype(np.float32))
    init = rng.standard_normal(130).astype(np.float32)
    full, none_dense = _cpu.input_sums(x, w_blocks, init)
    assert none_dense.size == 0
    part, dense = _cpu.input_sums(x, w_blocks, init, max_density=0.5)
    expected = np.flatnonzero(np.count_nonzero(x, axis=1) > 25)
    assert 20 < expected.size < 180
    np.testing.assert_array_equal(dense, expected)
    kept = np.setdiff1d(np.arange(200), dense)
    np.testing.assert_array_equal(part[kept], full[kept])


def test_input_sums_reject_weights_of_the_wrong_size():
    with pytest.raises(ValueError, match="w_blocks must hold 4 x 3 weights, got 10"):
        _cpu.input_sums(np.ones((2, 4), np.float32), np.ones(10, np.float32), np.zeros(3, np.float32))


@pytest.mark.parametrize("rows, k, n", [(1, 1, 1), (5, 70, 10), (130, 1024, 10), (3, 64, 16), (0, 5, 3), (9, 129, 2)])
def test_signed_sums_add_in_input_order(variant, rows, k, n):
    """The output layer on packed +-1 rows equals the same terms added one by one, bit for bit."""
    rng = np.random.default_rng(rows * 31 + k)
    s = np.where(rng.random((rows, k)) < 0.5, 1.0, -1.0)
    w = rng.standard_normal((k, n))
    words = pack_bits(s, axis=1).words
    expected = np.zeros((rows, n))
    for j in range(k):
        expected += s[:, j:j + 1] * w[j]
    got = _cpu.signed_sums(words, k, w, n_threads=2)
    np.testing.assert_array_equal(got, expected)
    if rows:
        np.testing.assert_array_equal(_cpu.signed_sums(words[-1:], k, w)[0], got[-1])


def test_signed_sums_reject_bad_shapes():
    words = np.zeros((2, 2), np.uint64)
    with pytest.raises(ValueError, match="at most 16 output units, got 17"):
        _cpu.signed_sums(words, 100, np.ones((100, 17)))
    with pytest.raises(ValueError, match="w must have k = 100 rows"):
        _cpu.signed_sums(words, 100, np.ones((99, 3)))


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(0, 40), min_size=1, max_size=3), seed=st.integers(0, 2**31 - 1))
def test_float32_signs_kernel_equals_the_array_expression(shape, seed):
    """The training loop's signs on the CPU: +1 for x >= 0 (-0.0 too), -1 below and for NaN."""
    from xnorcore.ops import _signs

    rng = np.random.RandomState(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    special = np.array([0.0, -0.0, np.nan, -np.nan, np.inf, -np.inf, 1e-45, -1e-45], dtype=np.float32)
    if x.size:
        x.reshape(-1)[rng.randint(0, x.size, min(x.size, 8))] = special[: min(x.size, 8)]
    got = _cpu.signs(x, np.float32)
    want = _signs(x, np.float32)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_array_equal(got, want)
    if x.ndim == 2 and x.shape[1] > 1:  # a strided view and another dtype take the array path
        np.testing.assert_array_equal(_cpu.signs(x[:, ::2], np.float32), _signs(x[:, ::2], np.float32))
    np.testing.assert_array_equal(_cpu.signs(x.astype(np.float64), np.float64), _signs(x.astype(np.float64), np.float64))
