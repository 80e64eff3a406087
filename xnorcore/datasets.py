"""Datasets for the command line and examples: IDX files (MNIST) and scikit-learn digits.

Nothing here downloads anything.  :func:`load_mnist` reads a directory of IDX
files (MNIST or any MNIST-format set such as Fashion-MNIST), gzipped or raw;
:func:`load_digits_split` uses the 8x8 digits bundled with scikit-learn, so a
first run needs no data at all.

All loaders return ``(X_train, y_train, X_test, y_test)`` with ``X`` a float32
array of shape ``(n_samples, n_features)`` scaled to ``[0, 1]`` and ``y`` an
int64 array of shape ``(n_samples,)``.
"""

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

__all__ = ["DatasetError", "load_idx", "load_mnist", "load_digits_split"]


class DatasetError(ValueError):
    """A dataset file is missing, truncated or not in the expected format.

    The message names the file (or directory) and what is wrong with it.
    """


# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"

# Payloads are read in chunks of this size, so a header that claims more data
# than the file holds costs no memory beyond what is really there.
_CHUNK = 1 << 22


def _open(path):
    """Open ``path`` for reading: a gzip stream if its content is gzip, else the raw file."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: is a directory, expected an IDX file") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    # Decide by content, not by name: a renamed .gz or an unpacked file
    # keeping its .gz suffix still loads.
    magic = f.read(2)
    f.seek(0)
    if magic == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=f, mode="rb"), f, True
    return f, f, False


def _read(stream, n, path, compressed):
    """Up to ``n`` bytes of ``stream``, fewer only at its end."""
    parts = []
    while n > 0:
        try:
            chunk = stream.read(min(n, _CHUNK))
        except (EOFError, OSError, zlib.error) as exc:
            if compressed:
                raise DatasetError(f"{path}: corrupt or truncated gzip data ({exc})") from None
            raise DatasetError(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
        if not chunk:
            break
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _count_rest(stream, path):
    """Bytes left in a gzip stream, read and dropped chunk by chunk."""
    n = 0
    while True:
        chunk = _read(stream, _CHUNK, path, True)
        if not chunk:
            return n
        n += len(chunk)


def load_idx(path):
    """Read one IDX file (the MNIST file format), gzipped or raw.

    Parameters
    ----------
    path : str or path-like
        The file.  Gzip compression is detected from the content, not the name.

    Returns
    -------
    data : ndarray
        Array of the shape stored in the header, in native byte order, with the
        dtype given by the header's type code (uint8, int8, int16, int32,
        float32 or float64).  A header with a zero dimension gives an empty
        array; :func:`load_mnist` refuses files without images.

    Raises
    ------
    DatasetError
        If the file is missing, unreadable, not gzip-decodable, has a bad magic
        number or type code, a header whose size does not fit in memory
        addresses, or its payload is shorter or longer than its header says.
        The message names the file and what is wrong.  Memory use is bounded
        by the data really present, whatever the header claims.
    TypeError
        If ``path`` is not a str or path-like.

    Examples
    --------
    >>> from xnorcore.datasets import load_idx
    >>> images = load_idx("mnist/train-images-idx3-ubyte.gz")  # doctest: +SKIP
    >>> images.shape, images.dtype  # doctest: +SKIP
    ((60000, 28, 28), dtype('uint8'))
    """
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"path must be a str or path-like, got {type(path).__name__}") from None
    stream, raw_file, compressed = _open(path)
    try:
        return _load_idx(stream, raw_file, path, compressed)
    finally:
        stream.close()
        raw_file.close()


def _load_idx(stream, raw_file, path, compressed):
    head = _read(stream, 4, path, compressed)
    if len(head) < 4:
        raise DatasetError(
            f"{path}: truncated IDX file, {len(head)} bytes is shorter than the 4-byte magic number"
        )
    if head[0] != 0 or head[1] != 0:
        raise DatasetError(
            f"{path}: not an IDX file, bad magic number 0x{head.hex()} "
            "(expected two zero bytes, a type code and the number of dimensions)"
        )
    code, ndim = head[2], head[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise DatasetError(f"{path}: unknown IDX type code 0x{code:02X} (expected one of {known})")
    if ndim == 0:
        raise DatasetError(f"{path}: IDX header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    dims = _read(stream, 4 * ndim, path, compressed)
    if len(dims) < 4 * ndim:
        raise DatasetError(
            f"{path}: truncated IDX header, {ndim} dimensions need {header_len} bytes "
            f"but the file has {4 + len(dims)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(dims, dtype=">u4"))
    dtype = _IDX_DTYPES[code]
    # Python integers: the product of up to 255 dimensions of 2**32 - 1 does
    # not wrap around as a fixed-width product would.
    expected = math.prod(shape) * dtype.itemsize
    addressable = math.prod(d for d in shape if d) * dtype.itemsize
    if addressable > np.iinfo(np.intp).max:
        raise DatasetError(
            f"{path}: IDX header shape {shape} of {dtype.name} is too large: "
            f"{addressable} bytes do not fit in memory addresses (a corrupt header)"
        )
    if compressed:
        payload = _read(stream, expected, path, compressed)
        found = len(payload) + _count_rest(stream, path)
    else:
        found = os.fstat(raw_file.fileno()).st_size - header_len
        # Compared before reading: a header claiming more than the file holds
        # costs nothing.
        if found == expected:
            payload = _read(stream, expected, path, compressed)
            found = len(payload)  # less if the file shrank meanwhile
    if found != expected:
        what = "truncated" if found < expected else "has trailing bytes"
        raise DatasetError(
            f"{path}: {what}: header shape {shape} of {dtype.name} needs {expected} data bytes, "
            f"found {found}"
        )
    array = np.frombuffer(payload, dtype=dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


# Each MNIST file under the names it is distributed with: the canonical
# "train-images-idx3-ubyte" and the dotted "train-images.idx3-ubyte" that some
# mirrors and unpackers produce.
_MNIST_STEMS = {
    "train_images": ("train-images", "idx3-ubyte"),
    "train_labels": ("train-labels", "idx1-ubyte"),
    "test_images": ("t10k-images", "idx3-ubyte"),
    "test_labels": ("t10k-labels", "idx1-ubyte"),
}


def _candidates(stem, kind):
    names = []
    for sep in ("-", "."):
        base = f"{stem}{sep}{kind}"
        names += [base + ".gz", base]
    return names


def _find_mnist_file(data_dir, key):
    stem, kind = _MNIST_STEMS[key]
    names = _candidates(stem, kind)
    for name in names:
        if (data_dir / name).is_file():
            return data_dir / name
    raise DatasetError(
        f"{data_dir}: missing {stem}-{kind}[.gz] (looked for {', '.join(names)})"
    )


def _images_to_features(images, path):
    if images.ndim < 2:
        raise DatasetError(
            f"{path}: expected images with at least 2 dimensions (count, rows[, cols]), "
            f"got shape {images.shape}"
        )
    if images.shape[0] == 0:
        raise DatasetError(f"{path}: holds 0 images (header shape {images.shape})")
    if math.prod(images.shape[1:]) == 0:
        raise DatasetError(f"{path}: images have 0 pixels (header shape {images.shape})")
    if images.dtype == np.uint8:
        return images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255.0)
    # Non-byte IDX images: rescale the observed range to [0, 1], in float64
    # so that float64 values beyond the float32 range still scale correctly.
    X = images.reshape(images.shape[0], -1).astype(np.float64)
    if images.dtype.kind == "f":
        if np.isnan(X).any():
            raise DatasetError(f"{path}: image data contains NaN")
        if np.isinf(X).any():
            raise DatasetError(f"{path}: image data contains infinite values (inf or -inf)")
    lo, hi = float(X.min()), float(X.max())
    if not math.isfinite(hi - lo):
        # The range itself overflows float64: scale by halves.
        X, lo, hi = X / 2, lo / 2, hi / 2
    X -= lo
    if hi > lo:
        X /= hi - lo
    return X.astype(np.float32)


def _labels(labels, path):
    if labels.ndim != 1:
        raise DatasetError(f"{path}: expected 1-D labels, got shape {labels.shape}")
    if labels.dtype.kind == "f":
        raise DatasetError(f"{path}: expected integer labels, got {labels.dtype.name}")
    if labels.shape[0] == 0:
        raise DatasetError(f"{path}: holds 0 labels")
    return labels.astype(np.int64)


def load_mnist(data_dir):
    """Load MNIST (or any MNIST-format set) from a directory of IDX files.

    Parameters
    ----------
    data_dir : str or path-like
        Directory holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each gzipped
        (``.gz``) or raw, with a dash or a dot before ``idx``
        (``train-images.idx3-ubyte`` also works).

    Returns
    -------
    X_train : ndarray of shape (n_train, rows * cols), float32 in [0, 1]
    y_train : ndarray of shape (n_train,), int64
    X_test : ndarray of shape (n_test, rows * cols), float32 in [0, 1]
    y_test : ndarray of shape (n_test,), int64

    Raises
    ------
    DatasetError
        If ``data_dir`` is not a directory, a file is missing or corrupt, holds
        no images or labels, has NaN or infinite pixel values, or the image
        and label counts or the train and test image sizes differ.

    Examples
    --------
    >>> from xnorcore.datasets import load_mnist
    >>> X_train, y_train, X_test, y_test = load_mnist("mnist/")  # doctest: +SKIP
    >>> X_train.shape, X_test.shape  # doctest: +SKIP
    ((60000, 784), (10000, 784))
    """
    data_dir = Path(os.fspath(data_dir))
    if not data_dir.exists():
        raise DatasetError(f"{data_dir}: data directory does not exist")
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir}: not a directory (expected a directory of IDX files)")
    paths = {key: _find_mnist_file(data_dir, key) for key in _MNIST_STEMS}
    out = []
    for split in ("train", "test"):
        img_path, lab_path = paths[f"{split}_images"], paths[f"{split}_labels"]
        X = _images_to_features(load_idx(img_path), img_path)
        y = _labels(load_idx(lab_path), lab_path)
        if X.shape[0] != y.shape[0]:
            raise DatasetError(
                f"{img_path} has {X.shape[0]} images but {lab_path} has {y.shape[0]} labels"
            )
        out += [X, y]
    if out[0].shape[1] != out[2].shape[1]:
        raise DatasetError(
            f"{paths['train_images']} has {out[0].shape[1]} pixels per image but "
            f"{paths['test_images']} has {out[2].shape[1]}"
        )
    return tuple(out)


def load_digits_split(random_state=0, test_size=0.2):
    """scikit-learn's bundled 8x8 digits, scaled to [0, 1], split train/test.

    The split is stratified by class and fixed by ``random_state``, so the
    same call always gives the same sets.

    Parameters
    ----------
    random_state : int, default=0
        Seed of the split.
    test_size : float, default=0.2
        Fraction of the 1797 images held out for testing.

    Returns
    -------
    X_train : ndarray of shape (n_train, 64), float32 in [0, 1]
    y_train : ndarray of shape (n_train,), int64
    X_test : ndarray of shape (n_test, 64), float32 in [0, 1]
    y_test : ndarray of shape (n_test,), int64

    Examples
    --------
    >>> from xnorcore.datasets import load_digits_split
    >>> X_train, y_train, X_test, y_test = load_digits_split()
    >>> X_train.shape, X_test.shape
    ((1437, 64), (360, 64))
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=test_size, stratify=y, random_state=random_state
    )
    return X_train, y_train, X_test, y_test
