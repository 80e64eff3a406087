"""Hostile input against the public API, the estimator, the datasets and the command line.

Every case asserts the exact outcome: an error of the right type whose message
names the argument, flag, variable or file and what is wrong, or a result
checked exactly against a plain numpy reference.  Never a crash, a hang, a
traceback or a silently wrong answer.
"""

import errno
import gzip
import os
import pickle
import re
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from xnorcore import BNNClassifier, PackedBits, binary_matmul, cli, pack_bits, sign, unpack_bits
from xnorcore._backends import cpu as _cpu
from xnorcore._io import atomic_write
from xnorcore._threads import available_cpus, kernel_threads
from xnorcore.datasets import DatasetError, load_idx, load_mnist
from xnorcore.nn import Network

from conftest import matmul_ref, sign_ref

_TESTS = Path(__file__).resolve().parent

# A small, fast network for command-line plumbing.
TINY = ["--layers", "8,8", "--batch_size", "20", "--reg", "0", "--quiet"]


def run_python(code, env=None, timeout=120):
    """Run ``code`` in a fresh interpreter (from tests/, as test_cli does)."""
    full_env = dict(os.environ)
    full_env.pop("PYTHONSTARTUP", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full_env, cwd=_TESTS, timeout=timeout)


def assert_one_line_error(proc_or_pair, *fragments, status=2):
    """Exit status ``status``, one line on stderr holding every fragment, no traceback."""
    returncode, stderr = proc_or_pair
    assert returncode == status, (returncode, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def proc_result(proc):
    return proc.returncode, proc.stderr


def main_result(capsys, argv):
    """Run the CLI in this process: (status, stderr)."""
    status = cli.main([str(a) for a in argv])
    return status, capsys.readouterr().err


# ================================================================== PackedBits


def _words(*shape):
    return np.zeros(shape, dtype=np.uint64)


@pytest.mark.parametrize("length", [1, 2, 63, 65, 127, 1000])
def test_packedbits_rejects_set_padding_bits(length):
    words = _words(3, -(-length // 64))
    words[1, -1] = np.uint64(1) << np.uint64(length % 64)  # the first padding bit
    with pytest.raises(ValueError, match=rf"words has padding bits set: bits {length % 64}\.\.63 of the last word must be 0 for length={length}"):
        PackedBits(words, (3, length), 1)


@pytest.mark.parametrize("length", [64, 128])
def test_packedbits_without_padding_accepts_every_bit(length):
    words = np.full((2, length // 64), 2**64 - 1, dtype=np.uint64)
    p = PackedBits(words, (2, length), 1)
    np.testing.assert_array_equal(unpack_bits(p), np.ones((2, length), dtype=np.int8))


def test_packedbits_highest_padding_bit_only():
    words = _words(1, 1)
    words[0, 0] = np.uint64(1) << np.uint64(63)
    with pytest.raises(ValueError, match="padding bits set: bits 5..63"):
        PackedBits(words, (1, 5), 1)


@pytest.mark.parametrize("shape, axis", [((1, -3), 1), ((-1, 4), 1), ((-2,), 0), ((3, -64), 0)])
def test_packedbits_rejects_negative_shape(shape, axis):
    with pytest.raises(ValueError, match=re.escape(f"shape must not have negative entries, got shape={shape}")):
        PackedBits(_words(1, 1), shape, axis)


@pytest.mark.parametrize("shape", [(2.0, 3), ("2", 3), (None,)])
def test_packedbits_rejects_non_integer_shape(shape):
    with pytest.raises(TypeError, match="shape must be a tuple of integers"):
        PackedBits(_words(2, 1), shape, 1)


@pytest.mark.parametrize("axis, exc, match", [
    (2, ValueError, r"axis must be in range\(2\), got axis=2"),
    (-1, ValueError, r"axis must be in range\(2\), got axis=-1"),
    (1.0, TypeError, "axis must be an integer, got axis=1.0"),
    ("1", TypeError, "axis must be an integer, got axis='1'"),
])
def test_packedbits_rejects_bad_axis(axis, exc, match):
    with pytest.raises(exc, match=match):
        PackedBits(_words(2, 1), (2, 5), axis)


@pytest.mark.parametrize("words, match", [
    (np.zeros((2, 1), dtype=np.int64), "words must be a uint64 array, got int64"),
    (np.zeros((2, 1), dtype=np.float64), "words must be a uint64 array, got float64"),
    (np.zeros((2, 1), dtype=">u8"), r"words must be a uint64 array, got >u8 \(native byte order needed\)"),
    ([[0], [0]], "words must be a uint64 array \\(numpy or cupy\\), got list"),
    (np.ma.zeros((2, 1), dtype=np.uint64), "words must be a uint64 array \\(numpy or cupy\\), got MaskedArray"),
])
def test_packedbits_rejects_bad_words(words, match):
    with pytest.raises(TypeError, match=match):
        PackedBits(words, (2, 5), 1)


@pytest.mark.parametrize("words_shape, shape, axis", [((2, 2), (2, 5), 1), ((2,), (2, 5), 1), ((5, 1), (2, 5), 1),
                                                      ((2, 0), (2, 5), 1), ((2, 1), (2, 0), 1)])
def test_packedbits_rejects_words_shape_mismatch(words_shape, shape, axis):
    with pytest.raises(ValueError, match=re.escape(f"words.shape={words_shape} disagrees with the recorded shape={shape}")):
        PackedBits(_words(*words_shape), shape, axis)


@pytest.mark.parametrize("name", ["words", "shape", "axis", "length", "other"])
def test_packedbits_attributes_cannot_be_assigned(name):
    p = pack_bits(np.ones((2, 70)), axis=1)
    with pytest.raises(AttributeError, match=f"PackedBits is immutable: cannot set '{name}'"):
        setattr(p, name, (2, 100))
    assert p.shape == (2, 70) and p.axis == 1


def test_packedbits_attributes_cannot_be_deleted():
    p = pack_bits(np.ones((2, 70)), axis=1)
    with pytest.raises(AttributeError, match="PackedBits is immutable: cannot delete 'words'"):
        del p.words


def test_packedbits_words_are_read_only():
    p = pack_bits(np.ones((2, 70)), axis=1)
    with pytest.raises(ValueError, match="read-only"):
        p.words[0, 0] = 0
    with pytest.raises(ValueError, match="read-only"):
        p.words[...] |= np.uint64(2**63)
    np.testing.assert_array_equal(binary_matmul(p, np.ones((70, 1))), np.full((2, 1), 70))


def test_packedbits_from_user_words_are_a_read_only_view():
    words = np.zeros((1, 1), dtype=np.uint64)
    p = PackedBits(words, (1, 3), 1)
    assert not p.words.flags.writeable
    assert words.flags.writeable  # the caller's array is left as it was


def test_packedbits_pickle_round_trip_stays_immutable():
    p = pack_bits(np.array([[1.0, -1.0, 2.0]]), axis=1)
    q = pickle.loads(pickle.dumps(p))
    np.testing.assert_array_equal(q.words, p.words)
    assert (q.shape, q.axis) == (p.shape, p.axis)
    assert not q.words.flags.writeable
    with pytest.raises(AttributeError, match="immutable"):
        q.shape = (1, 4)


def test_packedbits_forged_pickle_with_padding_is_rejected():
    p = pack_bits(np.array([[1.0, -1.0, 2.0]]), axis=1)
    forged = pickle.dumps(p).replace(struct.pack("<Q", 5), struct.pack("<Q", 5 | 1 << 40))
    assert forged != pickle.dumps(p)
    with pytest.raises(ValueError, match="words has padding bits set"):
        pickle.loads(forged)


def test_packedbits_setstate_rejects_a_foreign_state():
    p = PackedBits.__new__(PackedBits)
    with pytest.raises(ValueError, match="not the state of a PackedBits"):
        p.__setstate__({"words": _words(1, 1)})


# ================================================================ unpack_bits


@pytest.mark.parametrize("dtype", [bool, np.bool_, "?", np.uint8, np.uint64, "u2", complex, np.complex64,
                                   "U3", "S2", object, "M8[s]", "m8[s]"])
def test_unpack_bits_rejects_dtypes_that_do_not_hold_minus_one(dtype):
    with pytest.raises(TypeError, match=r"dtype must be a signed integer or real floating dtype .*got dtype="):
        unpack_bits(pack_bits(np.array([1.0, -1.0])), dtype=dtype)


@pytest.mark.parametrize("dtype", ["bogus", None, 3.5, [("a", "i4")]])
def test_unpack_bits_rejects_unknown_dtypes(dtype):
    with pytest.raises(TypeError, match="dtype must be a signed integer or real floating dtype"):
        unpack_bits(pack_bits(np.array([1.0, -1.0])), dtype=dtype)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64,
                                   np.longdouble, ">i4", ">f8"])
def test_unpack_bits_real_dtypes_are_exact(rng, dtype):
    x = rng.standard_normal((5, 77))
    got = unpack_bits(pack_bits(x, axis=1), dtype=dtype)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got.astype(np.int64), sign_ref(x))


def test_unpack_bits_rejects_non_packedbits():
    with pytest.raises(TypeError, match="packed must be a PackedBits, got ndarray"):
        unpack_bits(np.zeros((1, 1), dtype=np.uint64))


# ================================================== dtypes: byte order, long double


@pytest.mark.parametrize("dtype", [">f4", ">f8", ">i2", ">i4", ">i8", ">u4", ">f2"])
def test_big_endian_inputs_give_exact_results(rng, dtype):
    a = (rng.standard_normal((7, 130)) * 100).astype(dtype)
    b = (rng.standard_normal((130, 9)) * 100).astype(dtype)
    np.testing.assert_array_equal(binary_matmul(a, b), matmul_ref(a, b))
    np.testing.assert_array_equal(pack_bits(a, axis=1).words, pack_bits(a.astype(a.dtype.newbyteorder("=")), axis=1).words)
    np.testing.assert_array_equal(sign(a), sign_ref(a))


def test_big_endian_nan_is_still_found():
    a = np.array([[1.0, np.nan]], dtype=">f8")
    with pytest.raises(ValueError, match="a must not contain NaN"):
        binary_matmul(a, np.ones((2, 1)))


@pytest.mark.skipif(np.finfo(np.longdouble).eps >= np.finfo(np.float64).eps, reason="long double is float64 here")
def test_longdouble_keeps_signs_float64_would_lose():
    # -1e-4000 underflows to -0.0 in float64 (sign +1), 1e4000 overflows to inf.
    x = np.array([[np.longdouble("-1e-4000"), np.longdouble("1e-4000"), np.longdouble("-1e4000"),
                   np.longdouble("1e4000"), np.longdouble(0), -np.longdouble(0)]])
    want = np.array([[-1, 1, -1, 1, 1, 1]], dtype=np.int8)
    np.testing.assert_array_equal(unpack_bits(pack_bits(x)), want)
    np.testing.assert_array_equal(sign(x), want)
    np.testing.assert_array_equal(binary_matmul(x, x.T), [[6]])


def test_longdouble_products_are_exact(rng):
    a = rng.standard_normal((6, 100)).astype(np.longdouble)
    b = rng.standard_normal((100, 5)).astype(np.longdouble)
    np.testing.assert_array_equal(binary_matmul(a, b), matmul_ref(a, b))
    np.testing.assert_array_equal(binary_matmul(a, pack_bits(b, axis=0)), matmul_ref(a, b))


def test_longdouble_nan_is_an_error():
    x = np.array([[1.0, np.nan]], dtype=np.longdouble)
    with pytest.raises(ValueError, match="x must not contain NaN"):
        pack_bits(x)
    with pytest.raises(ValueError, match="b must not contain NaN"):
        binary_matmul(np.ones((1, 2)), x.T)


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128, object, "U2", "M8[s]"])
def test_non_real_inputs_name_the_argument(dtype):
    b = np.zeros((2, 2), dtype=dtype)
    with pytest.raises(TypeError, match=r"b must have a boolean, integer or real floating dtype, got dtype="):
        binary_matmul(np.ones((2, 2)), b)


# ================================================ masked, sparse and ragged input


@pytest.mark.parametrize("name", ["a", "b"])
def test_masked_operands_are_rejected(name):
    m = np.ma.array(np.ones((2, 2)), mask=[[True, False], [False, False]])
    args = {"a": np.ones((2, 2)), "b": np.ones((2, 2))}
    args[name] = m
    with pytest.raises(TypeError, match=rf"{name} must not be a masked array \(numpy.ma\).*{name}\.filled\(0\)"):
        binary_matmul(args["a"], args["b"])


def test_masked_arrays_are_rejected_by_sign_and_pack_bits():
    m = np.ma.array([1.0, -1.0], mask=[True, False])
    for fn in (sign, pack_bits):
        with pytest.raises(TypeError, match=r"x must not be a masked array"):
            fn(m)


def test_masked_array_without_mask_is_still_refused():
    # A mask can be set later on the same object; refuse the type, not the mask.
    with pytest.raises(TypeError, match="x must not be a masked array"):
        pack_bits(np.ma.array([1.0, -1.0]))


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "lil"])
@pytest.mark.parametrize("name", ["a", "b"])
def test_sparse_operands_say_which_and_why(fmt, name):
    sparse = pytest.importorskip("scipy.sparse")
    m = sparse.random(3, 3, density=0.5, format=fmt, random_state=0)
    args = {"a": np.ones((3, 3)), "b": np.ones((3, 3))}
    args[name] = m
    with pytest.raises(TypeError, match=rf"{name} must be a dense array, got a sparse \w+: sign maps 0 to \+1.*{name}\.toarray\(\)"):
        binary_matmul(args["a"], args["b"])


def test_sparse_result_of_toarray_is_exact():
    sparse = pytest.importorskip("scipy.sparse")
    m = sparse.random(4, 6, density=0.3, format="csr", random_state=1)
    np.testing.assert_array_equal(binary_matmul(m.toarray(), m.toarray().T), matmul_ref(m.toarray(), m.toarray().T))


@pytest.mark.parametrize("ragged", [[[1.0, 2.0], [3.0]], [[1.0], [2.0, 3.0], [4.0]], [[[1.0]], [1.0, 2.0]]])
@pytest.mark.parametrize("name", ["a", "b"])
def test_ragged_operands_say_which_and_why(ragged, name):
    args = {"a": np.ones((2, 2)), "b": np.ones((2, 2))}
    args[name] = ragged
    with pytest.raises(ValueError, match=rf"{name} must be a rectangular array, got nested sequences of different lengths \(ragged\)"):
        binary_matmul(args["a"], args["b"])


def test_ragged_input_to_pack_bits():
    with pytest.raises(ValueError, match=r"x must be a rectangular array"):
        pack_bits([[1, 2, 3], [4]])


def test_nested_lists_that_are_rectangular_work():
    a = [[1, -2, 0], [-1, -1, 3]]
    b = [[1], [-1], [0]]
    np.testing.assert_array_equal(binary_matmul(a, b), matmul_ref(a, b))


# ==================================================================== threads


HUGE_THREADS = [10**6, 2**31 - 1, 2**31, 2**40, 2**63 - 1, 2**100, np.int64(2**40), np.uint64(2**63)]


@pytest.mark.parametrize("n_threads", HUGE_THREADS)
def test_huge_thread_counts_are_clamped_matmul(rng, n_threads):
    a = rng.standard_normal((300, 257)).astype(np.float32)
    b = rng.standard_normal((257, 190)).astype(np.float32)
    np.testing.assert_array_equal(binary_matmul(a, b, n_threads=n_threads), matmul_ref(a, b))


@pytest.mark.parametrize("n_threads", [10**6, 2**31 - 1, 2**40])
def test_huge_thread_counts_are_clamped_pack_bits(rng, n_threads):
    x = rng.standard_normal((400, 300))
    for axis in (0, 1):
        np.testing.assert_array_equal(pack_bits(x, axis=axis, n_threads=n_threads).words,
                                      pack_bits(x, axis=axis, n_threads=1).words)


def test_huge_thread_counts_reach_the_low_level_kernels_clamped(rng):
    a = pack_bits(rng.standard_normal((70, 130)), axis=1)
    b = pack_bits(rng.standard_normal((130, 40)), axis=0)
    want = _cpu.xnor_gemm(a.words, b.words, 130, n_threads=1)
    np.testing.assert_array_equal(_cpu.xnor_gemm(a.words, b.words, 130, n_threads=2**40), want)
    words, _ = _cpu.pack_rows(np.ascontiguousarray(rng.standard_normal((9, 70))), n_threads=10**6)
    assert words.shape == (9, 2)


@pytest.mark.parametrize("n_threads", [0, -1, -(2**40), True, False, 2.5, 2.0, "2", [2], np.float64(4)])
@pytest.mark.parametrize("fn", ["binary_matmul", "pack_bits"])
def test_bad_thread_counts_name_n_threads(fn, n_threads):
    with pytest.raises(ValueError, match=re.escape(f"n_threads must be None or a positive integer, got n_threads={n_threads!r}")):
        if fn == "binary_matmul":
            binary_matmul(np.ones((2, 2)), np.ones((2, 2)), n_threads=n_threads)
        else:
            pack_bits(np.ones((2, 2)), n_threads=n_threads)


def test_kernel_threads_rule():
    cpus = available_cpus()
    assert kernel_threads(1) == 1
    assert kernel_threads(10**9) == cpus
    assert 1 <= kernel_threads(None) <= cpus
    with pytest.raises(ValueError, match="--threads must be None or a positive integer, got --threads=0"):
        kernel_threads(0, "--threads")


def test_omp_num_threads_huge_is_clamped():
    after = textwrap.dedent("""
        import numpy as np, xnorcore
        from xnorcore._threads import available_cpus
        rng = np.random.default_rng(0)
        a, b = rng.standard_normal((400, 300)), rng.standard_normal((300, 350))
        want = np.where(a >= 0, 1, -1) @ np.where(b >= 0, 1, -1)
        assert (xnorcore.binary_matmul(a, b) == want).all()
        threads = xnorcore.get_config()["cpu"]["threads"]
        assert 1 <= threads <= available_cpus(), threads
        print("ok")
    """)
    # `xnorcore bench` checks its products exactly before timing them.
    setup = "import contextlib, io\nout = io.StringIO()\n"
    proc = run_python(_RUN_CASES + setup + "with contextlib.redirect_stdout(out):\n"
                      "    case(['bench', '--threads', '100000', '--sizes', '256', '--runs', '1'])\n"
                      "print(out.getvalue(), end='')\n" + after, env={"OMP_NUM_THREADS": "100000"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert re.match(r"\| 256 \| 1 \| ", lines[-3]), proc.stdout
    assert lines[-2:] == ['[0, ""]', "ok"], proc.stdout


def test_threadpoolctl_limit_huge_is_clamped(rng):
    from threadpoolctl import threadpool_limits

    a = rng.standard_normal((200, 200))
    with threadpool_limits(limits=100000, user_api="openmp"):
        np.testing.assert_array_equal(binary_matmul(a, a), matmul_ref(a, a))


# ============================================================ datasets: IDX files


_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
          np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def idx_header(code, shape):
    return bytes([0, 0, code, len(shape)]) + b"".join(struct.pack(">I", d) for d in shape)


def idx_bytes(array):
    array = np.asarray(array)
    return idx_header(_CODES[array.dtype], array.shape) + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path, data, gz=False):
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_mnist(tmp_path, n_train=6, n_test=4, images=None, gz=False):
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 4, 4), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 4, 4), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    files.update(images or {})
    for name, array in files.items():
        data = array if isinstance(array, bytes) else idx_bytes(array)
        write(tmp_path / (name + (".gz" if gz else "")), data, gz=gz)
    return tmp_path


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("which", ["train-images-idx3-ubyte", "t10k-images-idx3-ubyte"])
def test_mnist_with_zero_images(tmp_path, gz, which):
    labels = which.replace("images-idx3", "labels-idx1")
    make_mnist(tmp_path, gz=gz, images={which: np.zeros((0, 4, 4), np.uint8), labels: np.zeros(0, np.uint8)})
    path = tmp_path / (which + (".gz" if gz else ""))
    with pytest.raises(DatasetError, match=re.escape(f"{path}: holds 0 images")):
        load_mnist(tmp_path)


def test_mnist_with_zero_labels(tmp_path):
    make_mnist(tmp_path, images={"train-labels-idx1-ubyte": np.zeros(0, np.uint8)})
    # The images are read first and are fine; the labels file is named.
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path / 'train-labels-idx1-ubyte'}: holds 0 labels")):
        load_mnist(tmp_path)


def test_mnist_with_zero_pixels(tmp_path):
    make_mnist(tmp_path, images={"train-images-idx3-ubyte": np.zeros((6, 0, 4), np.uint8)})
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path / 'train-images-idx3-ubyte'}: images have 0 pixels")):
        load_mnist(tmp_path)


def test_empty_idx_array_loads_as_empty(tmp_path):
    path = write(tmp_path / "e", idx_bytes(np.zeros((0, 28, 28), np.uint8)))
    got = load_idx(path)
    assert got.shape == (0, 28, 28) and got.dtype == np.uint8


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("shape", [(2**32 - 1,) * 4, (2**32 - 1,) * 2, (0, 2**32 - 1, 2**32 - 1, 2**32 - 1),
                                   (2**32 - 1,) * 255])
def test_idx_header_whose_size_overflows(tmp_path, gz, shape):
    path = write(tmp_path / "huge", idx_header(0x08, shape) + b"\0" * 16, gz=gz)
    with pytest.raises(DatasetError, match=re.escape(f"{path}: IDX header shape {shape} of uint8 is too large")):
        load_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_header_claiming_more_than_the_file_holds(tmp_path, gz):
    shape = (2**31, 2**30)  # 2**61 bytes: addressable, but not there
    path = write(tmp_path / "big", idx_header(0x08, shape) + b"\1" * 10, gz=gz)
    with pytest.raises(DatasetError, match=re.escape(f"{path}: truncated: header shape {shape} of uint8 needs {2**61} data bytes, found 10")):
        load_idx(path)


def test_idx_size_of_wide_dtype_does_not_wrap(tmp_path):
    # 2**31 * 2**31 * 8 bytes = 2**65 wraps to 0 in 64-bit arithmetic.
    shape = (2**31, 2**31)
    path = write(tmp_path / "wrap", idx_header(0x0E, shape))
    with pytest.raises(DatasetError, match=re.escape(f"{path}: IDX header shape {shape} of float64 is too large")):
        load_idx(path)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad, what", [(np.nan, "contains NaN"), (np.inf, "contains infinite values"),
                                       (-np.inf, "contains infinite values")])
def test_mnist_non_finite_float_pixels_name_the_file(tmp_path, dtype, bad, what):
    images = np.random.default_rng(1).random((6, 4, 4)).astype(dtype)
    images[3, 2, 1] = bad
    make_mnist(tmp_path, images={"train-images-idx3-ubyte": images})
    path = tmp_path / "train-images-idx3-ubyte"
    with pytest.raises(DatasetError, match=re.escape(f"{path}: image data {what}")) as info:
        load_mnist(tmp_path)
    if bad != bad:
        return
    assert "NaN" not in str(info.value)  # inf is not NaN


def test_mnist_float64_pixels_beyond_float32_range_scale_exactly(tmp_path):
    images = np.zeros((6, 2, 2))
    images[0] = [[-1e300, 0.0], [1e300, 5e299]]
    images[1:] = 1e300
    make_mnist(tmp_path, images={"train-images-idx3-ubyte": images, "t10k-images-idx3-ubyte": images[:4]})
    X_train = load_mnist(tmp_path)[0]
    assert np.isfinite(X_train).all()
    np.testing.assert_array_equal(X_train[0], np.float32([0.0, 0.5, 1.0, 0.75]))
    np.testing.assert_array_equal(X_train[1:], 1.0)


def test_mnist_float64_pixels_whose_range_overflows(tmp_path):
    images = np.full((6, 1, 2), 0.0)
    images[0, 0] = [-1.5e308, 1.5e308]
    make_mnist(tmp_path, images={"train-images-idx3-ubyte": images, "t10k-images-idx3-ubyte": images[:4]})
    np.testing.assert_array_equal(load_mnist(tmp_path)[0][0], np.float32([0.0, 1.0]))


def test_mnist_int16_images_scale_exactly(tmp_path):
    images = np.zeros((6, 1, 3), np.int16)
    images[0, 0] = [-300, 100, 500]
    make_mnist(tmp_path, images={"train-images-idx3-ubyte": images, "t10k-images-idx3-ubyte": images[:4]})
    np.testing.assert_array_equal(load_mnist(tmp_path)[0][0], np.float32([0.0, 0.5, 1.0]))


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", list(_CODES))
@pytest.mark.parametrize("cut", [1, "half", "all"])
def test_truncated_idx_payload(tmp_path, gz, dtype, cut):
    data = idx_bytes(np.arange(24).astype(dtype).reshape(2, 3, 4))
    payload = len(data) - 16
    keep = {1: payload - 1, "half": payload // 2, "all": 0}[cut]
    path = write(tmp_path / "t", data[:16 + keep], gz=gz)
    with pytest.raises(DatasetError, match=re.escape(f"{path}: truncated: header shape (2, 3, 4) of {np.dtype(dtype).name} needs {payload} data bytes, found {keep}")):
        load_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_trailing_bytes(tmp_path, gz):
    path = write(tmp_path / "t", idx_bytes(np.arange(6, dtype=np.uint8)) + b"xyz", gz=gz)
    with pytest.raises(DatasetError, match=re.escape(f"{path}: has trailing bytes: header shape (6,) of uint8 needs 6 data bytes, found 9")):
        load_idx(path)


@pytest.mark.parametrize("data, match", [
    (b"", "truncated IDX file, 0 bytes is shorter than the 4-byte magic number"),
    (b"\0\0", "truncated IDX file, 2 bytes is shorter"),
    (b"\0\0\x08\x03\0\0\0\x02", "truncated IDX header, 3 dimensions need 16 bytes but the file has 8"),
    (b"\x01\0\x08\x01\0\0\0\x01\0", "not an IDX file, bad magic number 0x01000801"),
    (b"\0\0\x0a\x01\0\0\0\x01\0", "unknown IDX type code 0x0A"),
    (b"\0\0\x08\x00", "IDX header declares 0 dimensions"),
    (b"PK\x03\x04 a zip file", "not an IDX file, bad magic number 0x504b0304"),
])
@pytest.mark.parametrize("gz", [False, True])
def test_forged_idx_headers(tmp_path, data, match, gz):
    path = write(tmp_path / "f", data, gz=gz)
    with pytest.raises(DatasetError, match=re.escape(f"{path}: {match}")):
        load_idx(path)


@pytest.mark.parametrize("junk", [b"\x1f\x8b", b"\x1f\x8b\x08\0garbage", gzip.compress(idx_bytes(np.arange(50, dtype=np.uint8)))[:-9]])
def test_corrupt_gzip_names_the_file(tmp_path, junk):
    path = write(tmp_path / "c.gz", junk)
    with pytest.raises(DatasetError, match=re.escape(f"{path}: corrupt or truncated gzip data")):
        load_idx(path)


def test_gzip_bomb_header_mismatch_costs_no_memory(tmp_path):
    # 16 MiB of zeros compress to a few KiB; the header claims 10 bytes.
    data = idx_header(0x08, (10,)) + bytes(16 << 20)
    path = write(tmp_path / "bomb.gz", data, gz=True)
    with pytest.raises(DatasetError, match=re.escape(f"{path}: has trailing bytes: header shape (10,) of uint8 needs 10 data bytes, found {(16 << 20)}")):
        load_idx(path)


@pytest.mark.parametrize("path", [None, 3, 2.5, ["a"]])
def test_load_idx_path_type(path):
    with pytest.raises(TypeError, match=f"path must be a str or path-like, got {type(path).__name__}"):
        load_idx(path)


def test_load_idx_directory_and_missing(tmp_path):
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path}: is a directory, expected an IDX file")):
        load_idx(tmp_path)
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path / 'no'}: file not found")):
        load_idx(tmp_path / "no")


def test_mnist_float_labels_and_wrong_label_rank(tmp_path):
    make_mnist(tmp_path, images={"train-labels-idx1-ubyte": np.zeros(6, np.float32)})
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte: expected integer labels, got float32"):
        load_mnist(tmp_path)
    make_mnist(tmp_path, images={"train-labels-idx1-ubyte": np.zeros((6, 1), np.uint8)})
    with pytest.raises(DatasetError, match=re.escape("train-labels-idx1-ubyte: expected 1-D labels, got shape (6, 1)")):
        load_mnist(tmp_path)


def test_mnist_one_dimensional_images(tmp_path):
    make_mnist(tmp_path, images={"t10k-images-idx3-ubyte": np.zeros(4, np.uint8)})
    with pytest.raises(DatasetError, match=re.escape("t10k-images-idx3-ubyte: expected images with at least 2 dimensions")):
        load_mnist(tmp_path)


def test_mnist_count_and_size_mismatches(tmp_path):
    make_mnist(tmp_path, images={"train-labels-idx1-ubyte": np.zeros(5, np.uint8)})
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path / 'train-images-idx3-ubyte'} has 6 images but {tmp_path / 'train-labels-idx1-ubyte'} has 5 labels")):
        load_mnist(tmp_path)
    make_mnist(tmp_path, images={"t10k-images-idx3-ubyte": np.zeros((4, 5, 5), np.uint8)})
    with pytest.raises(DatasetError, match="has 16 pixels per image but .*t10k-images-idx3-ubyte has 25"):
        load_mnist(tmp_path)


def test_mnist_data_dir_is_a_file(tmp_path):
    f = write(tmp_path / "file", b"")
    with pytest.raises(DatasetError, match=re.escape(f"{f}: not a directory")):
        load_mnist(f)


# ============================================================= command line


# Several command lines run in one fresh interpreter (an environment
# variable is read once, at import): each prints [status, stderr] as JSON.
_RUN_CASES = """
import contextlib, io, json, sys
from xnorcore.cli import main
def case(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            status = main([str(a) for a in argv])
        except SystemExit as exc:
            status = exc.code
    print(json.dumps([status, err.getvalue()]), flush=True)
"""


def run_cases(setup, cases, after="", env=None, timeout=180):
    """Run CLI ``cases`` after ``setup`` code in one subprocess; return [(status, stderr)] and the rest of stdout."""
    code = _RUN_CASES + setup + "".join(f"case({argv!r})\n" for argv in cases) + after
    proc = run_python(code, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    import json

    lines = proc.stdout.splitlines()
    return [tuple(json.loads(line)) for line in lines[:len(cases)]], lines[len(cases):]


_ENV_COMMANDS = [["info"], ["train", "--max_steps", "1"], ["bench", "--sizes", "64"]]


@pytest.fixture(scope="module")
def bogus_popcount_runs():
    after = textwrap.dedent("""
        import numpy as np, xnorcore
        try:
            xnorcore.binary_matmul(np.ones((2, 2)), np.ones((2, 2)))
        except ValueError as exc:
            print("first use:", exc)
    """)
    return run_cases("", _ENV_COMMANDS, after=after, env={"XNORCORE_POPCOUNT": "bogus"})


@pytest.mark.parametrize("index", range(len(_ENV_COMMANDS)))
def test_bogus_popcount_variable_is_one_line(bogus_popcount_runs, index):
    line = assert_one_line_error(bogus_popcount_runs[0][index],
                                 "XNORCORE_POPCOUNT must be one of generic, scalar, avx2, avx512",
                                 "got XNORCORE_POPCOUNT='bogus'")
    assert line.startswith(f"xnorcore {_ENV_COMMANDS[index][0]}: error: ")


def test_import_with_bogus_popcount_variable_fails_at_first_use(bogus_popcount_runs):
    # `import xnorcore` works (the command line could start); the first kernel call says what is wrong.
    assert bogus_popcount_runs[1] == [
        "first use: XNORCORE_POPCOUNT must be one of generic, scalar, avx2, avx512, got XNORCORE_POPCOUNT='bogus'"]


@pytest.fixture(scope="module")
def bogus_gpu_kernel_runs():
    return run_cases("", _ENV_COMMANDS[:2], env={"XNORCORE_GPU_KERNEL": "bogus"})[0]


@pytest.mark.parametrize("index", range(2))
def test_bogus_gpu_kernel_variable_is_one_line(bogus_gpu_kernel_runs, index):
    assert_one_line_error(bogus_gpu_kernel_runs[index],
                          "XNORCORE_GPU_KERNEL must be one of wgmma, mma, popc or unset", "got XNORCORE_GPU_KERNEL='bogus'")


def test_bogus_popcount_variable_through_python_m():
    proc = subprocess.run([sys.executable, "-m", "xnorcore", "info"], capture_output=True, text=True,
                          env={**os.environ, "XNORCORE_POPCOUNT": "sse9"}, cwd=_TESTS, timeout=120)
    assert_one_line_error(proc_result(proc), "XNORCORE_POPCOUNT must be one of")


@pytest.mark.parametrize("value", ["99999999999", "4294967296", "-1", "1.5", "seven"])
def test_bad_seed_names_the_flag(capsys, value):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--seed", value])
    assert exc.value.code == 2
    assert_one_line_error((2, capsys.readouterr().err), "argument --seed: expected an integer from 0 to 4294967295",
                          f"got '{value}'")


def test_largest_seed_is_accepted():
    assert cli.build_parser().parse_args(["train", "--seed", "4294967295"]).seed == 2**32 - 1


@pytest.mark.parametrize("value", ["0", "-4", "2.5", "many"])
def test_bad_bench_threads_names_the_flag(capsys, value):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--threads", value])
    assert exc.value.code == 2
    assert_one_line_error((2, capsys.readouterr().err), "argument --threads: expected a positive integer", f"got '{value}'")


def test_bench_with_huge_thread_count_is_clamped(capsys):
    assert cli.main(["bench", "--threads", "100000", "--sizes", "200", "--runs", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\| 200 \| 1 \|", out, re.M), out


# Runs whose event files fail to write as on a full disk: the writer's file
# raises ENOSPC from its n-th write on; and a scalars file that is /dev/full,
# so that the kernel itself reports ENOSPC.  All in one interpreter, under a
# timeout, so that a hang fails the test.
_FULL_DISK = """
import errno
from tensorboardX import record_writer
from xnorcore import _runlog
calls = [0]
fail_after = [None]
original = record_writer.RecordWriter.write
def write(self, data):
    calls[0] += 1
    if fail_after[0] is not None and calls[0] > fail_after[0]:
        raise OSError(errno.ENOSPC, "No space left on device")
    return original(self, data)
record_writer.RecordWriter.write = write
def full_after(n):
    calls[0], fail_after[0] = 0, n
"""

_FULL_DISK_AFTER = [0, 1, 5, None]


@pytest.fixture(scope="module")
def full_disk_runs(tmp_path_factory):
    pytest.importorskip("tensorboardX")
    logs = tmp_path_factory.mktemp("full") / "logs"
    argv = ["train", "--log_dir", str(logs), "--max_steps", "4", "--eval_every_n", "2", *TINY]
    code = ""
    for after in _FULL_DISK_AFTER:
        if after is None:  # the CSV on /dev/full
            code += "full_after(None)\n_runlog.CSV_NAME = '/dev/full'\n"
        else:
            code += f"full_after({after})\n"
        code += f"case({argv!r})\n"
    proc = run_python(_RUN_CASES + _FULL_DISK + code, timeout=180)
    assert proc.returncode == 0, proc.stderr
    import json

    return logs, [tuple(json.loads(line)) for line in proc.stdout.splitlines()]


@pytest.mark.parametrize("index", range(len(_FULL_DISK_AFTER)))
def test_log_dir_on_full_disk_does_not_hang(full_disk_runs, index):
    if _FULL_DISK_AFTER[index] is None and not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    logs, runs = full_disk_runs
    assert_one_line_error(runs[index], "--log_dir: cannot write in", str(logs), "No space left on device")


def test_log_dir_args_json_failure_names_the_folder(tmp_path, monkeypatch, capsys):
    pytest.importorskip("tensorboardX")
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name == "args.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    status, err = main_result(capsys, ["train", "--log_dir", tmp_path / "logs", "--max_steps", "1", *TINY])
    assert_one_line_error((status, err), "--log_dir: cannot write in", str(tmp_path / "logs"), "No space left on device")


def test_run_logger_after_a_failure_closes_quietly(tmp_path):
    pytest.importorskip("tensorboardX")
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    import csv

    from xnorcore._runlog import RunLogError, RunLogger

    logger = RunLogger(tmp_path)
    logger._csv_file.close()
    logger._csv_file = open("/dev/full", "w", buffering=1)  # every line is written at once: ENOSPC
    logger._csv = csv.writer(logger._csv_file)
    with pytest.raises(RunLogError, match=re.escape(f"--log_dir: cannot write in {tmp_path}: No space left on device")):
        logger.scalar("loss", 1.0, 0)
    with pytest.raises(RunLogError, match="an earlier write failed"):
        logger.scalar("loss", 1.0, 0)
    logger.close()
    logger.close()


def _fail_pickle_midway(monkeypatch):
    def dump(obj, f, protocol=None):
        f.write(b"half a model")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cli.pickle, "dump", dump)


def test_save_over_an_existing_model_is_atomic(tmp_path, monkeypatch, capsys):
    model = tmp_path / "model.pkl"
    model.write_bytes(b"the old model")
    _fail_pickle_midway(monkeypatch)
    status, err = main_result(capsys, ["train", "--save", model, "--max_steps", "1", *TINY])
    assert_one_line_error((status, err), f"--save: cannot write {model}: No space left on device")
    assert model.read_bytes() == b"the old model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pkl"]


def test_save_replaces_an_existing_model_and_keeps_its_mode(tmp_path, capsys):
    model = tmp_path / "model.pkl"
    model.write_bytes(b"the old model")
    model.chmod(0o640)
    assert cli.main(["train", "--save", str(model), "--max_steps", "1", *TINY]) == 0
    clf = pickle.loads(model.read_bytes())
    assert type(clf).__name__ == "BNNClassifier" and clf.n_features_in_ == 64
    assert model.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pkl"]


def test_save_to_a_fifo_is_refused(tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    status, err = main_result(capsys, ["train", "--save", fifo, "--max_steps", "1", *TINY])
    assert_one_line_error((status, err), f"--save: {fifo} exists and is not a regular file")
    assert fifo.is_fifo()


@pytest.mark.parametrize("exc", [OSError(errno.EIO, "I/O error"), KeyboardInterrupt(), RuntimeError("bug")])
def test_atomic_write_keeps_the_old_file_on_any_failure(tmp_path, exc):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    with pytest.raises(type(exc)):
        with atomic_write(path) as f:
            f.write(b"new, part")
            raise exc
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_atomic_write_new_file(tmp_path):
    with atomic_write(tmp_path / "g") as f:
        f.write(b"data")
    assert (tmp_path / "g").read_bytes() == b"data"
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "g").stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_write_names_a_missing_folder(tmp_path):
    target = tmp_path / "no" / "m.xnor"
    with pytest.raises(FileNotFoundError, match=f"{target}: the folder {target.parent} does not exist"):
        with atomic_write(target):
            pass
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_refuses_non_regular_targets(tmp_path):
    os.mkfifo(tmp_path / "p")
    with pytest.raises(OSError, match="exists and is not a regular file"):
        with atomic_write(tmp_path / "p"):
            pass
    assert (tmp_path / "p").is_fifo()


# Ctrl-C inside the first training step: a real SIGINT to the process while
# partial_fit runs for the first time.
_SIGINT_FIRST_STEP = """
import os, signal, sys
# As from a shell: Ctrl-C raises KeyboardInterrupt even where the test runner
# handed down an ignored SIGINT.
signal.signal(signal.SIGINT, signal.default_int_handler)
from xnorcore.estimator import BNNClassifier
original = BNNClassifier.partial_fit
def partial_fit(self, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    return original(self, *args, **kwargs)
BNNClassifier.partial_fit = partial_fit
from xnorcore.cli import main
sys.exit(main({argv!r}))
"""


def test_ctrl_c_during_the_first_step_exits_130(tmp_path):
    save = tmp_path / "model.pkl"
    argv = ["train", "--max_steps", "5", "--save", str(save), *TINY]
    proc = run_python(_SIGINT_FIRST_STEP.format(argv=argv))
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip().splitlines() == ["interrupted after 0 steps"]
    assert not save.exists()


def test_ctrl_c_during_later_steps_exits_130_with_a_model(tmp_path):
    argv = [sys.executable, "-m", "xnorcore", "train", "--max_steps", "100000", "--eval_every_n", "1",
            "--layers", "8,8", "--batch_size", "20"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=_TESTS,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"},
                            # As from a shell, even where the runner ignores SIGINT.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = proc.stdout.readline()
        assert first.startswith("step 0, loss = "), first
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert re.search(r"^Final test accuracy [01]\.\d{4}$", out, re.M)
    assert re.match(r"interrupted after \d+ steps$", err.strip())


# ================================================================= estimator


TINY_CLF = dict(hidden_layer_sizes=(16,), max_iter=2, batch_size=50, random_state=0, device="cpu")


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:1400], y[:1400], X[1400:], y[1400:]


@pytest.fixture(scope="module")
def small(digits):
    X, y = digits[0], digits[1]
    return X[:300], y[:300]


def fitted_clf(small, **params):
    return BNNClassifier(**dict(TINY_CLF, **params)).fit(*small)


def frozen(clf):
    """Everything a fitted estimator holds, as bytes: equal bytes, equal estimator."""
    return pickle.dumps(clf, protocol=pickle.HIGHEST_PROTOCOL)


@pytest.mark.parametrize("scale, dtype", [(1e-20, np.float32), (1e20, np.float32), (1e30, np.float32),
                                          (1e300, np.float64), (1e-300, np.float64), (2.0**60, np.float64)])
def test_features_of_any_scale_train_as_well_as_unscaled(digits, scale, dtype):
    X_train, y_train, X_test, y_test = digits
    params = dict(TINY_CLF, hidden_layer_sizes=(64,), max_iter=3, batch_size=200)
    base = BNNClassifier(**params).fit(X_train, y_train).score(X_test, y_test)
    clf = BNNClassifier(**params).fit((X_train * scale).astype(dtype), y_train)
    assert clf.input_exponent_ != 0
    assert np.isfinite(clf.input_mean_).all() and np.isfinite(clf.input_scale_)
    scaled = clf.score((X_test * scale).astype(dtype), y_test)
    assert base > 0.5
    assert abs(scaled - base) <= 0.02, (scaled, base)


def test_ordinary_scale_needs_no_prescale(small):
    assert fitted_clf(small).input_exponent_ == 0


def test_predict_beyond_the_float32_range_of_the_model(small, digits):
    clf = fitted_clf(small)
    with pytest.raises(ValueError, match=r"X has values up to 1.6e\+301 in magnitude, beyond the float32 range"):
        clf.predict(digits[2][:5] * 1e300)


def test_batch_size_one_with_batch_norm_names_batch_size(small):
    with pytest.raises(ValueError, match=r"batch norm needs at least 2 samples per batch, got batch_size=1"):
        BNNClassifier(**dict(TINY_CLF, batch_size=1)).fit(*small)


def test_partial_fit_of_one_sample_with_batch_norm(small):
    X, y = small
    with pytest.raises(ValueError, match=r"batch norm needs at least 2 samples per batch, got 1 training sample"):
        BNNClassifier(**TINY_CLF).partial_fit(X[:1], y[:1], classes=np.arange(10))


def test_batch_size_one_without_batch_norm_trains(small):
    X, y = small
    clf = BNNClassifier(**dict(TINY_CLF, batch_size=1, batch_norm=False, max_iter=1)).fit(X[:40], y[:40])
    assert clf.n_iter_ == 1 and clf.t_ == 40 and np.isfinite(clf.loss_curve_[0])


@pytest.mark.parametrize("batch_norm, sizes", [(True, [20, 21]), (False, [20, 20, 1])])
def test_last_batch_of_one_sample_joins_the_one_before_with_batch_norm(small, monkeypatch, batch_norm, sizes):
    X, y = small
    seen = []
    original = Network.train_step

    def train_step(self, x, *args, **kwargs):
        seen.append(x.shape[0])
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(Network, "train_step", train_step)
    clf = BNNClassifier(**dict(TINY_CLF, batch_size=20, max_iter=1, batch_norm=batch_norm)).fit(X[:41], y[:41])
    assert seen == sizes
    assert clf.t_ == 41


def _failures(X, y):
    nan = X.copy()
    nan[3, 5] = np.nan
    inf = X.copy()
    inf[0, 0] = np.inf
    return {
        "one class": ((X, np.zeros(len(y))), {}, ValueError, "at least 2 classes in y, got 1 class"),
        "NaN in X": ((nan, y), {}, ValueError, "Input X contains NaN"),
        "inf in X": ((inf, y), {}, ValueError, "Input X contains infinity"),
        "masked X": ((np.ma.array(X), y), {}, TypeError, "X must not be a masked array"),
        "masked y": ((X, np.ma.array(y)), {}, TypeError, "y must not be a masked array"),
        "continuous y": ((X, np.linspace(0, 1, len(y))), {}, ValueError, "Unknown label type"),
        "batch_size=1": ((X, y), {"batch_size": 1}, ValueError, "batch_size=1"),
        "bad parameter": ((X, y), {"batch_size": 0}, ValueError, "batch_size"),
        "random_state=-1": ((X, y), {"random_state": -1}, ValueError, "random_state"),
        "validation_fraction": ((X, y), {"early_stopping": True, "validation_fraction": 0.9999},
                                ValueError, "validation_fraction=0.9999"),
        "NaN loss": ((X, y), {"binary": False, "learning_rate_init": 1e30, "max_iter": 3},
                     FloatingPointError, "the training loss became nan"),
    }


_FAILURE_NAMES = list(_failures(np.zeros((8, 8)), np.zeros(8)))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("case", _FAILURE_NAMES)
def test_failed_fit_leaves_the_estimator_exactly_as_it_was(small, digits, case):
    X, y = small
    clf = fitted_clf(small)
    before, predictions = frozen(clf), clf.predict(digits[2])
    args, params, exc, match = _failures(X, y)[case]
    clf.set_params(**params)
    with pytest.raises(exc, match=match):
        clf.fit(*args)
    clf.set_params(**{k: TINY_CLF.get(k, BNNClassifier().get_params()[k]) for k in params})
    assert frozen(clf) == before
    np.testing.assert_array_equal(clf.predict(digits[2]), predictions)


def test_failed_fit_after_a_dataframe_fit_keeps_feature_names(small, digits):
    pd = pytest.importorskip("pandas")
    X, y = small
    columns = [f"px{i}" for i in range(X.shape[1])]
    clf = BNNClassifier(**TINY_CLF).fit(pd.DataFrame(X, columns=columns), y)
    before = frozen(clf)
    other = pd.DataFrame(X[:, :20], columns=[f"q{i}" for i in range(20)])
    other.iloc[0, 0] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        clf.fit(other, y)
    assert frozen(clf) == before
    assert clf.n_features_in_ == 64 and list(clf.feature_names_in_) == columns
    np.testing.assert_array_equal(clf.predict(pd.DataFrame(digits[2], columns=columns)),
                                  BNNClassifier(**TINY_CLF).fit(pd.DataFrame(X, columns=columns), y)
                                  .predict(pd.DataFrame(digits[2], columns=columns)))


def test_interrupted_fit_leaves_the_estimator_exactly_as_it_was(small, monkeypatch):
    clf = fitted_clf(small)
    before = frozen(clf)
    calls = [0]
    original = Network.train_step

    def train_step(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Network, "train_step", train_step)
    clf.set_params(warm_start=True)
    with pytest.raises(KeyboardInterrupt):
        clf.fit(*small)
    clf.set_params(warm_start=False)
    assert frozen(clf) == before


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_partial_fit_raises_on_a_nan_loss_and_keeps_the_model(small, digits):
    X, y = small
    clf = BNNClassifier(**dict(TINY_CLF, binary=False, learning_rate_init=1e30))
    clf.partial_fit(X[:50], y[:50], classes=np.arange(10))
    before, predictions = frozen(clf), clf.predict(digits[2])
    with pytest.raises(FloatingPointError, match="the training loss became nan"):
        for _ in range(5):
            clf.partial_fit(X, y)
            before, predictions = frozen(clf), clf.predict(digits[2])
    assert frozen(clf) == before
    np.testing.assert_array_equal(clf.predict(digits[2]), predictions)


def test_partial_fit_interrupted_mid_call_keeps_the_model(small, monkeypatch):
    X, y = small
    clf = BNNClassifier(**TINY_CLF).partial_fit(X, y, classes=np.arange(10))
    before = frozen(clf)
    calls = [0]
    original = Network.train_step

    def train_step(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 4:  # after three of the six steps of this call
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Network, "train_step", train_step)
    with pytest.raises(KeyboardInterrupt):
        clf.partial_fit(X, y)
    assert frozen(clf) == before
    monkeypatch.undo()
    # and it trains on from there exactly as an uninterrupted copy does
    twin = pickle.loads(before)
    np.testing.assert_array_equal(clf.partial_fit(X, y).predict(X), twin.partial_fit(X, y).predict(X))


@pytest.mark.parametrize("classes, match", [
    ([0, 1, np.nan], r"classes must not contain NaN"),
    (np.array([0.0, np.nan, 2.0]), r"classes must not contain NaN"),
    ([0, None, 2], r"classes must be labels of one sortable type"),
    ([1], r"needs at least 2 classes in classes, got 1 class"),
    ([], r"needs at least 2 classes in classes, got none"),
])
def test_bad_classes_for_partial_fit(small, classes, match):
    X, y = small
    clf = BNNClassifier(**TINY_CLF)
    with pytest.raises(ValueError, match=match):
        clf.partial_fit(X[:20], np.zeros(20, dtype=int), classes=classes)
    assert not hasattr(clf, "n_features_in_") and not hasattr(clf, "network_")


def test_masked_classes_are_refused(small):
    X, y = small
    with pytest.raises(TypeError, match="classes must not be a masked array"):
        BNNClassifier(**TINY_CLF).partial_fit(X[:20], y[:20], classes=np.ma.array(np.arange(10)))


@pytest.mark.parametrize("method", ["predict", "predict_proba", "decision_function", "score"])
def test_masked_X_is_refused_by_every_prediction(small, method):
    X, y = small
    clf = fitted_clf(small)
    args = (np.ma.array(X[:5], mask=np.zeros_like(X[:5], dtype=bool)),) + ((y[:5],) if method == "score" else ())
    with pytest.raises(TypeError, match="X must not be a masked array"):
        getattr(clf, method)(*args)


@pytest.mark.parametrize("change, fitted_value", [
    ({"binary": False}, True), ({"batch_norm": False}, True), ({"binarize_first": True}, False),
    ({"binarize_last": True}, False), ({"hidden_layer_sizes": (8,)}, (16,)),
])
@pytest.mark.parametrize("how", ["warm_start", "partial_fit"])
def test_continuing_with_a_changed_architecture_is_refused(small, change, fitted_value, how):
    X, y = small
    clf = fitted_clf(small)
    before = frozen(clf)
    (name, value), = change.items()
    clf.set_params(**change)
    what = "warm_start=True" if how == "warm_start" else "partial_fit"
    with pytest.raises(ValueError, match=re.escape(
            f"{what} continues the fitted network, whose architecture cannot change: "
            f"{name}={value!r} but the network has {name}={fitted_value!r}")):
        if how == "warm_start":
            clf.set_params(warm_start=True).fit(X, y)
        else:
            clf.partial_fit(X, y)
    clf.set_params(**{name: fitted_value}, warm_start=False)
    assert frozen(clf) == before


@pytest.mark.parametrize("how", ["warm_start", "partial_fit"])
def test_continuing_with_a_changed_dropout_trains_with_it(small, how):
    X, y = small
    clf = fitted_clf(small, hidden_layer_sizes=(16, 16)).set_params(dropout=0.25, input_dropout=0.1)
    if how == "warm_start":
        clf.set_params(warm_start=True).fit(X, y)
    else:
        clf.partial_fit(X, y)
    assert [b.dense.dropout for b in clf.network_.blocks] == [0.1, 0.25, 0.25]


@pytest.mark.parametrize("random_state", [-1, 2**32, "seed", 1.5])
def test_bad_random_state_names_it(small, random_state):
    with pytest.raises(ValueError, match="random_state"):
        BNNClassifier(**dict(TINY_CLF, random_state=random_state)).fit(*small)


@pytest.mark.parametrize("fraction", [0.99, 0.999999])
def test_validation_fraction_close_to_one_names_it(small, fraction):
    X, y = small
    with pytest.raises(ValueError, match=rf"n_samples=50 and validation_fraction={fraction}") as info:
        BNNClassifier(**dict(TINY_CLF, early_stopping=True, validation_fraction=fraction)).fit(X[:50], y[:50])
    assert "test_size" not in str(info.value)


def test_validation_split_too_small_to_stratify_still_trains(small):
    X, y = small
    clf = BNNClassifier(**dict(TINY_CLF, early_stopping=True, validation_fraction=0.1)).fit(X[:30], y[:30])
    assert len(clf.validation_scores_) == clf.n_iter_ == 2


@pytest.mark.parametrize("dtype", [">f8", ">f4", ">i4", np.longdouble, np.int8, np.float16])
def test_estimator_dtypes_predict_like_float64(small, digits, dtype):
    clf = fitted_clf(small)
    X_test = digits[2]
    np.testing.assert_array_equal(clf.predict(X_test.astype(dtype)), clf.predict(X_test))


def test_big_endian_training_data_give_the_same_model(small, digits):
    X, y = small
    a = fitted_clf(small)
    b = BNNClassifier(**TINY_CLF).fit(X.astype(">f8"), y)
    np.testing.assert_array_equal(a.predict(digits[2]), b.predict(digits[2]))


def test_cli_batch_size_one_with_batch_norm(capsys):
    status, err = main_result(capsys, ["train", "--batch_norm", "--batch_size", "1", "--max_steps", "1",
                                       "--layers", "8,8", "--quiet"])
    assert_one_line_error((status, err), "batch norm needs at least 2 samples per batch", "batch_size=1")


@pytest.mark.parametrize("argv, fragment", [
    (["--lr", "nan"], "argument --lr: expected a positive number, got 'nan'"),
    (["--lr", "inf"], "argument --lr: expected a positive number, got 'inf'"),
    (["--lr=-1e-3"], "argument --lr: expected a positive number, got '-1e-3'"),
    (["--reg", "nan"], "argument --reg: expected a number >= 0, got 'nan'"),
    (["--eval_every_n", "0"], "argument --eval_every_n/--eval-every-n: expected a positive integer, got '0'"),
    (["--layers", "3,0"], "argument --layers: expected a number of hidden layers"),
    (["--layers", ","], "argument --layers: expected a number of hidden layers"),
    (["--max_steps", "-1"], "argument --max_steps/--max-steps: expected an integer >= 0, got '-1'"),
    (["--batch_size", "0"], "argument --batch_size/--batch-size: expected a positive integer, got '0'"),
    (["--n_hidden", "1e3"], "argument --n_hidden/--n-hidden: expected a positive integer, got '1e3'"),
])
def test_bad_train_flags_name_the_flag(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", *argv])
    assert exc.value.code == 2
    assert_one_line_error((2, capsys.readouterr().err), fragment)


def test_network_too_large_for_memory_is_one_line(capsys):
    status, err = main_result(capsys, ["train", "--n_hidden", str(10**12), "--max_steps", "1", "--quiet"])
    assert_one_line_error((status, err), "out of memory (Unable to allocate", "use a smaller network")
