"""IDX reading, MNIST directory loading and the digits split, on small synthetic files."""

import gzip
import struct

import numpy as np
import pytest

from xnorcore.datasets import DatasetError, load_digits_split, load_idx, load_mnist

_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(array):
    """Serialize ``array`` as an IDX file (big-endian header and payload)."""
    array = np.asarray(array)
    code = _CODES[array.dtype.type]
    header = struct.pack(">BBBB", 0, 0, code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path, array, gz=None):
    data = idx_bytes(array)
    if gz is None:
        gz = str(path).endswith(".gz")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_mnist(tmp_path, n_train=12, n_test=5, rows=4, cols=3, sep="-", gz=True, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images": rng.integers(0, 256, (n_train, rows, cols), dtype=np.uint8),
        "train-labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images": rng.integers(0, 256, (n_test, rows, cols), dtype=np.uint8),
        "t10k-labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    suffix = ".gz" if gz else ""
    for stem, array in arrays.items():
        kind = "idx3-ubyte" if array.ndim == 3 else "idx1-ubyte"
        write_idx(tmp_path / f"{stem}{sep}{kind}{suffix}", array, gz=gz)
    return arrays


@pytest.mark.parametrize("dtype", list(_CODES))
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4), (0, 28, 28)])
def test_load_idx_roundtrip(tmp_path, dtype, gz, shape):
    rng = np.random.default_rng(1)
    array = (rng.standard_normal(shape) * 100).astype(dtype)
    path = write_idx(tmp_path / "a.idx", array, gz=gz)
    got = load_idx(path)
    assert got.dtype == np.dtype(dtype)
    assert got.dtype.isnative
    assert got.shape == shape
    np.testing.assert_array_equal(got, array)


def test_load_idx_detects_gzip_by_content(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = write_idx(tmp_path / "no-suffix", array, gz=True)
    np.testing.assert_array_equal(load_idx(path), array)
    path = write_idx(tmp_path / "raw-but-named.gz", array, gz=False)
    np.testing.assert_array_equal(load_idx(path), array)


def test_load_idx_missing(tmp_path):
    with pytest.raises(DatasetError, match=r"nope\.idx: file not found"):
        load_idx(tmp_path / "nope.idx")


def test_load_idx_directory(tmp_path):
    with pytest.raises(DatasetError, match="is a directory"):
        load_idx(tmp_path)


@pytest.mark.parametrize("gz", [False, True])
def test_load_idx_truncated_payload(tmp_path, gz):
    data = idx_bytes(np.zeros((10, 4, 4), dtype=np.uint8))[:-7]
    path = tmp_path / "t.idx"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DatasetError, match=r"t\.idx: truncated: header shape \(10, 4, 4\) of uint8 needs 160 data bytes, found 153"):
        load_idx(path)


def test_load_idx_trailing_bytes(tmp_path):
    path = tmp_path / "t.idx"
    path.write_bytes(idx_bytes(np.zeros(3, dtype=np.int32)) + b"\0")
    with pytest.raises(DatasetError, match="has trailing bytes.*needs 12 data bytes, found 13"):
        load_idx(path)


def test_load_idx_truncated_header(tmp_path):
    path = tmp_path / "h.idx"
    path.write_bytes(idx_bytes(np.zeros((2, 2, 2), dtype=np.uint8))[:9])
    with pytest.raises(DatasetError, match="truncated IDX header, 3 dimensions need 16 bytes but the file has 9"):
        load_idx(path)
    path.write_bytes(b"\0\0")
    with pytest.raises(DatasetError, match="shorter than the 4-byte magic number"):
        load_idx(path)


def test_load_idx_truncated_gzip(tmp_path):
    path = tmp_path / "g.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((50, 8), dtype=np.uint8)))[:-12])
    with pytest.raises(DatasetError, match=r"g\.gz: corrupt or truncated gzip data"):
        load_idx(path)


def test_load_idx_bad_magic(tmp_path):
    path = tmp_path / "m.idx"
    path.write_bytes(b"PK\x03\x04" + bytes(20))
    with pytest.raises(DatasetError, match=r"m\.idx: not an IDX file, bad magic number 0x504b0304"):
        load_idx(path)


def test_load_idx_bad_type_code(tmp_path):
    path = tmp_path / "c.idx"
    path.write_bytes(bytes([0, 0, 0x0A, 1]) + struct.pack(">I", 0))
    with pytest.raises(DatasetError, match="unknown IDX type code 0x0A"):
        load_idx(path)


def test_load_idx_zero_dims(tmp_path):
    path = tmp_path / "z.idx"
    path.write_bytes(bytes([0, 0, 0x08, 0]))
    with pytest.raises(DatasetError, match="declares 0 dimensions"):
        load_idx(path)


@pytest.mark.parametrize("sep", ["-", "."])
@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist(tmp_path, sep, gz):
    arrays = make_mnist(tmp_path, sep=sep, gz=gz)
    X_train, y_train, X_test, y_test = load_mnist(tmp_path)
    assert X_train.shape == (12, 12) and X_test.shape == (5, 12)
    assert X_train.dtype == np.float32 and X_test.dtype == np.float32
    assert y_train.dtype == np.int64 and y_test.dtype == np.int64
    np.testing.assert_allclose(X_train, arrays["train-images"].reshape(12, -1) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(X_test, arrays["t10k-images"].reshape(5, -1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y_train, arrays["train-labels"])
    np.testing.assert_array_equal(y_test, arrays["t10k-labels"])
    assert 0.0 <= X_train.min() and X_train.max() <= 1.0


def test_load_mnist_accepts_str_and_mixed_spellings(tmp_path):
    make_mnist(tmp_path, sep="-", gz=True)
    # Replace one file by its raw, dotted spelling.
    data = gzip.decompress((tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "t10k-labels.idx1-ubyte").write_bytes(data)
    assert load_mnist(str(tmp_path))[3].shape == (5,)


def test_load_mnist_missing_file(tmp_path):
    make_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(
        DatasetError,
        match=r"missing train-labels-idx1-ubyte\[\.gz\] \(looked for train-labels-idx1-ubyte\.gz, "
        r"train-labels-idx1-ubyte, train-labels\.idx1-ubyte\.gz, train-labels\.idx1-ubyte\)",
    ) as info:
        load_mnist(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_load_mnist_missing_dir(tmp_path):
    with pytest.raises(DatasetError, match="data directory does not exist"):
        load_mnist(tmp_path / "absent")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="not a directory"):
        load_mnist(tmp_path / "file")


def test_load_mnist_count_mismatch(tmp_path):
    make_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(4, dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte\.gz has 5 images but .*t10k-labels-idx1-ubyte\.gz has 4 labels"):
        load_mnist(tmp_path)


def test_load_mnist_size_mismatch(tmp_path):
    make_mnist(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((5, 2, 2), dtype=np.uint8))
    with pytest.raises(DatasetError, match="has 12 pixels per image but .* has 4"):
        load_mnist(tmp_path)


def test_load_mnist_bad_label_shape(tmp_path):
    make_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros((12, 2), dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"expected 1-D labels, got shape \(12, 2\)"):
        load_mnist(tmp_path)


def test_load_mnist_truncated_file(tmp_path):
    make_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte: truncated"):
        load_mnist(tmp_path)


def test_load_digits_split():
    X_train, y_train, X_test, y_test = load_digits_split()
    assert X_train.shape == (1437, 64) and X_test.shape == (360, 64)
    assert X_train.dtype == np.float32 and y_train.dtype == np.int64
    assert X_train.min() == 0.0 and X_train.max() == 1.0
    # Stratified: every class is in the test set in proportion.
    counts = np.bincount(y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    again = load_digits_split()
    for a, b in zip((X_train, y_train, X_test, y_test), again):
        np.testing.assert_array_equal(a, b)
    other = load_digits_split(random_state=1)
    assert not np.array_equal(other[3], y_test)
