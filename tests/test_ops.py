"""Public API: sign, pack_bits, unpack_bits, PackedBits and binary_matmul on the CPU."""

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xnorcore import PackedBits, binary_matmul, pack_bits, sign, unpack_bits
from xnorcore.ops import WORD_BITS

from conftest import matmul_ref, random_matrix, sign_ref

SIZES = [1, 63, 64, 65, 127, 128, 129, 1000]
ALL_DTYPES = [
    np.float16, np.float32, np.float64,
    np.int8, np.int16, np.int32, np.int64,
    np.uint8, np.uint16, np.uint32, np.uint64, np.bool_,
]


# ---------------------------------------------------------------- sign


def test_sign_zero_and_negative_zero_are_plus_one():
    x = np.array([-2.0, -0.0, 0.0, 3.0, np.inf, -np.inf])
    s = sign(x)
    assert s.dtype == np.float64
    np.testing.assert_array_equal(s, [-1, 1, 1, 1, 1, -1])


@pytest.mark.parametrize("dtype", [np.int8, np.int64, np.uint8, np.bool_])
def test_sign_of_integers_is_int8(dtype):
    x = np.array([0, 1, 2], dtype=dtype)
    s = sign(x)
    assert s.dtype == np.int8
    np.testing.assert_array_equal(s, [1, 1, 1])


def test_sign_nan_is_an_error():
    with pytest.raises(ValueError, match="x must not contain NaN"):
        sign(np.array([1.0, np.nan]))


# ------------------------------------------------------------- bit layout


def test_layout_bit_order_and_set_bit_is_plus_one():
    # Element j is bit j % 64 of word j // 64; +1 is a set bit.
    x = -np.ones(130)
    x[[0, 3, 64, 129]] = 1.0
    words = pack_bits(x).words
    assert words.dtype == np.uint64
    assert words.shape == (3,)
    assert words.tolist() == [(1 << 0) | (1 << 3), 1 << 0, 1 << 1]


def test_layout_padding_bits_are_zero():
    # All +1: the words hold exactly `length` set bits, none in the padding.
    for length in SIZES:
        words = pack_bits(np.ones(length, dtype=np.float32)).words
        assert words.shape == (-(-length // WORD_BITS),)
        last = int(words[-1])
        used = length - WORD_BITS * (len(words) - 1)
        assert last == (1 << used) - 1
        assert all(int(w) == 2**64 - 1 for w in words[:-1])


def test_layout_zero_and_negative_zero_pack_as_plus_one():
    words = pack_bits(np.array([0.0, -0.0, -1e-300, np.inf, -np.inf])).words
    assert words.tolist() == [0b01011]


def test_layout_packed_axis_becomes_last(rng):
    x = rng.standard_normal((3, 70, 5))
    p = pack_bits(x, axis=1)
    assert p.words.shape == (3, 5, 2)
    assert p.shape == (3, 70, 5) and p.axis == 1 and p.length == 70
    # Column (i, :, j) of x is row (i, j) of the words.
    np.testing.assert_array_equal(p.words[2, 4], pack_bits(x[2, :, 4]).words)


@pytest.mark.parametrize("shape", [(5,), (3, 7), (64, 3), (2, 65, 3), (4, 2, 129)])
def test_pack_unpack_round_trip_every_axis(rng, shape):
    x = random_matrix(rng, shape, np.float64, special=0.2)
    for axis in range(-len(shape), len(shape)):
        p = pack_bits(x, axis=axis)
        out = unpack_bits(p)
        assert out.shape == x.shape and out.dtype == np.int8
        np.testing.assert_array_equal(out, sign_ref(x))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_pack_every_dtype(rng, dtype):
    x = random_matrix(rng, (7, 131), dtype, special=0.1)
    for axis in (0, 1):
        np.testing.assert_array_equal(unpack_bits(pack_bits(x, axis=axis)), sign_ref(x))


def test_pack_zero_size_axes():
    p = pack_bits(np.zeros((0, 5)), axis=1)
    assert p.words.shape == (0, 1)
    p = pack_bits(np.zeros((5, 0)), axis=1)
    assert p.words.shape == (5, 0)
    assert unpack_bits(p).shape == (5, 0)
    p = pack_bits(np.zeros((0, 5)), axis=0)
    assert p.words.shape == (5, 0)
    assert unpack_bits(p).shape == (0, 5)


def test_packed_bits_pickle_round_trip(rng):
    p = pack_bits(rng.standard_normal((9, 100)), axis=0)
    q = pickle.loads(pickle.dumps(p))
    assert isinstance(q, PackedBits)
    assert q.shape == p.shape and q.axis == p.axis
    np.testing.assert_array_equal(q.words, p.words)
    np.testing.assert_array_equal(binary_matmul(np.ones((2, 9)), q), binary_matmul(np.ones((2, 9)), p))


# ------------------------------------------------------------ binary_matmul


@pytest.mark.parametrize("m", SIZES)
@pytest.mark.parametrize("k", SIZES)
def test_matmul_exact_on_edge_sizes(rng, m, k):
    n = {1: 129, 63: 64, 64: 1, 65: 1000, 127: 63, 128: 127, 129: 65, 1000: 128}[m]
    a = random_matrix(rng, (m, k), np.float32, special=0.05)
    b = random_matrix(rng, (k, n), np.float32, special=0.05)
    c = binary_matmul(a, b)
    assert c.dtype == np.int32 and c.shape == (m, n)
    np.testing.assert_array_equal(c, matmul_ref(a, b))


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(1, 150),
    k=st.integers(1, 400),
    n=st.integers(1, 150),
    dtype=st.sampled_from(ALL_DTYPES),
    special=st.sampled_from([0.0, 0.3]),
    seed=st.integers(0, 2**32 - 1),
)
def test_matmul_exact_random_shapes(m, k, n, dtype, special, seed):
    rng = np.random.default_rng(seed)
    a = random_matrix(rng, (m, k), dtype, special)
    b = random_matrix(rng, (k, n), dtype, special)
    np.testing.assert_array_equal(binary_matmul(a, b), matmul_ref(a, b))


def test_matmul_large_k_uses_several_cache_blocks(rng):
    # K = 20000 bits = 313 words: more than one K block of the kernel.
    a = random_matrix(rng, (37, 20000))
    b = random_matrix(rng, (20000, 29))
    np.testing.assert_array_equal(binary_matmul(a, b), matmul_ref(a, b))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_matmul_every_dtype(rng, dtype):
    a = random_matrix(rng, (33, 100), dtype, special=0.1)
    b = random_matrix(rng, (100, 17), dtype, special=0.1)
    np.testing.assert_array_equal(binary_matmul(a, b), matmul_ref(a, b))


def test_matmul_mixed_dtypes(rng):
    a = random_matrix(rng, (20, 70), np.int16)
    b = random_matrix(rng, (70, 9), np.float64, special=0.2)
    np.testing.assert_array_equal(binary_matmul(a, b), matmul_ref(a, b))


def test_matmul_all_zeros_and_negative_zeros():
    a = np.zeros((5, 70))
    b = np.full((70, 3), -0.0)
    np.testing.assert_array_equal(binary_matmul(a, b), np.full((5, 3), 70))


def test_matmul_infinities():
    a = np.array([[np.inf, -np.inf, 1.0]])
    b = np.array([[-np.inf], [-np.inf], [np.inf]])
    np.testing.assert_array_equal(binary_matmul(a, b), [[1]])  # -1 + 1 + 1


@pytest.mark.parametrize("order", ["C", "F"])
def test_matmul_memory_orders_and_strides(rng, order):
    a = np.array(random_matrix(rng, (90, 260), special=0.1), order=order)
    b = np.array(random_matrix(rng, (260, 70), special=0.1), order=order)
    expected = matmul_ref(a, b)
    np.testing.assert_array_equal(binary_matmul(a, b), expected)
    # Non-contiguous views: every other row/column, and a transposed view.
    a2, b2 = a[::2, ::3], b[::3, 1::2]
    np.testing.assert_array_equal(binary_matmul(a2, b2), matmul_ref(a2, b2))
    np.testing.assert_array_equal(binary_matmul(b.T, a.T), expected.T)


def test_matmul_lists_are_accepted():
    np.testing.assert_array_equal(binary_matmul([[1, -1]], [[-1], [-1]]), [[0]])


@pytest.mark.parametrize("packed", ["a", "b", "both"])
def test_matmul_prepacked_operands(rng, packed):
    a = random_matrix(rng, (65, 129), special=0.1)
    b = random_matrix(rng, (129, 63), special=0.1)
    pa = pack_bits(a, axis=1) if packed in ("a", "both") else a
    pb = pack_bits(b, axis=0) if packed in ("b", "both") else b
    np.testing.assert_array_equal(binary_matmul(pa, pb), matmul_ref(a, b))


@pytest.mark.parametrize("shape", [(0, 5, 3), (4, 0, 3), (4, 5, 0), (0, 0, 0)])
def test_matmul_zero_size_dims(shape):
    m, k, n = shape
    c = binary_matmul(np.ones((m, k)), np.ones((k, n)))
    assert c.shape == (m, n) and c.dtype == np.int32
    np.testing.assert_array_equal(c, np.ones((m, k)) @ np.ones((k, n)))


def test_matmul_result_is_a_fresh_int32_array(rng):
    a = random_matrix(rng, (8, 8))
    c = binary_matmul(a, a)
    assert c.flags.c_contiguous and c.flags.writeable and c.dtype == np.int32


# ------------------------------------------------------------- bad input


def test_error_ndim():
    with pytest.raises(ValueError, match=r"a must be 2-D, got a.ndim=1 \(a.shape=\(3,\)\)"):
        binary_matmul(np.ones(3), np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"b must be 2-D, got b.ndim=3"):
        binary_matmul(np.ones((2, 3)), np.ones((3, 2, 1)))


def test_error_ndim_of_packed_operand():
    with pytest.raises(ValueError, match=r"a must be 2-D, got a PackedBits of shape \(2, 3, 4\)"):
        binary_matmul(pack_bits(np.ones((2, 3, 4)), axis=1), np.ones((3, 2)))


def test_error_inner_dimensions_show_both_shapes():
    with pytest.raises(
        ValueError,
        match=r"a and b must have matching inner dimensions, got a.shape=\(3, 5\) and b.shape=\(4, 2\)",
    ):
        binary_matmul(np.ones((3, 5)), np.ones((4, 2)))


def test_error_packed_length_disagrees():
    pa = pack_bits(np.ones((3, 100)), axis=1)
    with pytest.raises(ValueError, match=r"a.shape=\(3, 100\) and b.shape=\(120, 2\)"):
        binary_matmul(pa, np.ones((120, 2)))
    pb = pack_bits(np.ones((64, 2)), axis=0)
    with pytest.raises(ValueError, match=r"a.shape=\(3, 100\) and b.shape=\(64, 2\)"):
        binary_matmul(pa, pb)


def test_error_packed_words_disagree_with_recorded_length():
    with pytest.raises(ValueError, match=r"words.shape=\(3, 1\) disagrees with the recorded shape=\(3, 100\)"):
        PackedBits(np.zeros((3, 1), dtype=np.uint64), (3, 100), 1)
    pa = pack_bits(np.ones((3, 100)), axis=1)
    with pytest.raises(AttributeError, match="PackedBits is immutable: cannot set 'words'"):
        pa.words = np.zeros((3, 1), dtype=np.uint64)
    # Tampered past the immutability: binary_matmul still checks the words.
    object.__setattr__(pa, "_words", np.zeros((3, 1), dtype=np.uint64))
    with pytest.raises(ValueError, match="a has 1 words per row but its recorded length 100 needs 2"):
        binary_matmul(pa, np.ones((100, 2)))


def test_error_packed_along_wrong_axis():
    with pytest.raises(ValueError, match=r"a must be packed along axis=1 \(the inner dimension\), got a PackedBits packed along axis=0"):
        binary_matmul(pack_bits(np.ones((3, 4)), axis=0), np.ones((4, 2)))
    with pytest.raises(ValueError, match="b must be packed along axis=0"):
        binary_matmul(np.ones((3, 4)), pack_bits(np.ones((4, 2)), axis=1))


def test_error_packed_words_dtype():
    with pytest.raises(TypeError, match="words must be a uint64 array, got int64"):
        PackedBits(np.zeros((3, 2), dtype=np.int64), (3, 100), 1)


@pytest.mark.parametrize("operand", ["a", "b"])
def test_error_nan(operand):
    a, b = np.ones((3, 70)), np.ones((70, 2))
    (a if operand == "a" else b)[1, 1] = np.nan
    with pytest.raises(ValueError, match=f"{operand} must not contain NaN"):
        binary_matmul(a, b)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_error_nan_every_float_dtype_and_position(dtype):
    # A NaN in a full word, in a tail word and in a column-packed operand.
    for index in [(0, 0), (2, 63), (2, 64), (4, 69)]:
        x = np.ones((5, 70), dtype=dtype)
        x[index] = np.nan
        with pytest.raises(ValueError, match="x must not contain NaN"):
            pack_bits(x, axis=1)
        with pytest.raises(ValueError, match="x must not contain NaN"):
            pack_bits(x, axis=0)


@pytest.mark.parametrize(
    "bad, kind",
    [
        (np.ones((2, 2), dtype=np.complex128), "complex128"),
        (np.array([[1, "x"], [2, 3]], dtype=object), "object"),
        (np.array([["a", "b"], ["c", "d"]]), "<U1"),
    ],
)
def test_error_dtypes(bad, kind):
    with pytest.raises(TypeError, match=f"a must have a boolean, integer or real floating dtype, got dtype={kind}"):
        binary_matmul(bad, np.ones((2, 2)))
    with pytest.raises(TypeError, match=f"b must have a boolean, integer or real floating dtype, got dtype={kind}"):
        binary_matmul(np.ones((2, 2)), bad)
    with pytest.raises(TypeError, match="x must have a boolean, integer or real floating dtype"):
        pack_bits(bad)


def test_error_inner_dimension_too_large_for_int32():
    # Words that take no memory: the check comes before any packing or product.
    k = 2**31
    words = np.broadcast_to(np.uint64(0), (1, k // 64))
    pa, pb = PackedBits(words, (1, k), 1), PackedBits(words, (k, 1), 0)
    with pytest.raises(ValueError, match=r"the inner dimension must be at most 2147483647 for an int32 result"):
        binary_matmul(pa, pb)


def test_error_unknown_backend():
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'cpu', 'gpu'\), got backend='tpu'"):
        binary_matmul(np.ones((2, 2)), np.ones((2, 2)), backend="tpu")


@pytest.mark.parametrize("n_threads", [0, -1, 1.5, "2", True])
def test_error_n_threads(n_threads):
    with pytest.raises(ValueError, match="n_threads must be None or a positive integer"):
        binary_matmul(np.ones((2, 2)), np.ones((2, 2)), n_threads=n_threads)


def test_error_pack_bits_axis_and_ndim():
    with pytest.raises(ValueError, match="x must have at least one dimension, got a 0-d array"):
        pack_bits(np.float64(1.0))
    with pytest.raises(ValueError, match="axis=2 is out of bounds for an array of ndim=2"):
        pack_bits(np.ones((2, 3)), axis=2)
    with pytest.raises(TypeError, match="axis must be an integer, got axis=1.0"):
        pack_bits(np.ones((2, 3)), axis=1.0)


def test_error_unpack_bits_needs_packed_bits():
    with pytest.raises(TypeError, match="packed must be a PackedBits, got ndarray"):
        unpack_bits(np.zeros(3, dtype=np.uint64))


def test_backend_cpu_explicit(rng):
    a = random_matrix(rng, (10, 70))
    np.testing.assert_array_equal(binary_matmul(a, a.T, backend="cpu"), matmul_ref(a, a.T))


def test_error_gpu_backend_without_cupy(monkeypatch):
    import sys

    from xnorcore._backends import gpu as _gpu

    monkeypatch.setitem(sys.modules, "cupy", None)  # "import cupy" raises ImportError
    monkeypatch.setattr(_gpu, "_cupy_module", None)  # forget a CuPy imported before
    with pytest.raises(RuntimeError, match="(?i)cupy"):
        binary_matmul(np.ones((2, 2)), np.ones((2, 2)), backend="gpu")
