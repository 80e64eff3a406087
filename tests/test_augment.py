"""Random shifts of training images (``BNNClassifier(random_shift=...)``)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits

from xnorcore import BNNClassifier
from xnorcore.nn._augment import RandomShift, check_shift, recommended_shift


def shift_ref(images, dy, dx):
    """Each image moved down by dy[i] and right by dx[i] pixels, zeros where nothing moved in."""
    out = np.zeros_like(images)
    n, h, w, _ = images.shape
    for i in range(n):
        for r in range(h):
            for c in range(w):
                sr, sc = r - dy[i], c - dx[i]
                if 0 <= sr < h and 0 <= sc < w:
                    out[i, r, c] = images[i, sr, sc]
    return out


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 4), h=st.integers(1, 7), w=st.integers(1, 7), c=st.integers(1, 3),
       max_shift=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_random_shift_moves_each_image_with_zeros_coming_in(n, h, w, c, max_shift, seed):
    rng = np.random.RandomState(seed)
    images = rng.randint(0, 17, (n, h, w, c)).astype(np.float32)
    # Eighths and a power-of-two scale: standardizing back and forth is exact.
    mean = (rng.randint(0, 64, h * w * c) / 8).astype(np.float32)
    scale = np.float32(4.0)
    rows = ((images.reshape(n, -1) - mean) / scale).astype(np.float32)
    out = RandomShift((h, w, c), max_shift, mean, scale)(rows, np.random.RandomState(seed))
    offsets = np.random.RandomState(seed).randint(0, 2 * max_shift + 1, size=(2, n))
    dy, dx = max_shift - offsets[0], max_shift - offsets[1]
    assert out.shape == rows.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out * scale + mean, shift_ref(images, dy, dx).reshape(n, -1))


def test_check_shift_resolves_auto_and_refuses_what_cannot_move():
    assert recommended_shift((28, 28, 1)) == 2 and recommended_shift((8, 8, 1)) == 0
    assert check_shift("auto", (28, 28, 1), conv=True) == 2
    assert check_shift("auto", (28, 28, 1), conv=False) == 0
    assert check_shift("auto", None, conv=True) == 0
    assert check_shift(0, None, conv=True) == 0
    assert check_shift(3, (8, 9, 1), conv=False) == 3
    with pytest.raises(ValueError, match="random_shift=2 moves images: give image_shape"):
        check_shift(2, None, conv=True)
    with pytest.raises(ValueError, match=r"random_shift=8 must be smaller .* \(8, 9, 1\)"):
        check_shift(8, (8, 9, 1), conv=False)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:400], y[:400]


def _fit(X, y, **params):
    return BNNClassifier(hidden_layer_sizes=(32,), max_iter=2, random_state=0, **params).fit(X, y)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_estimator_random_shift(digits):
    X, y = digits
    # "auto" leaves MLPs, and images too small to move, as they were.
    mlp = _fit(X, y)
    np.testing.assert_array_equal(mlp.predict_proba(X), _fit(X, y, random_shift=0).predict_proba(X))
    small = dict(image_shape=(8, 8, 1), conv_layers=(4,))
    np.testing.assert_array_equal(_fit(X, y, **small).predict_proba(X),
                                  _fit(X, y, random_shift=0, **small).predict_proba(X))
    # An explicit shift trains on moved images, MLPs included, and 4-D X gives the image shape.
    shifted = _fit(X, y, random_shift=1, image_shape=(8, 8, 1))
    assert not np.array_equal(shifted.predict_proba(X), mlp.predict_proba(X))
    images = _fit(X.reshape(-1, 8, 8, 1), y, random_shift=1)
    np.testing.assert_array_equal(images.predict_proba(X.reshape(-1, 8, 8, 1)), shifted.predict_proba(X))
    conv = _fit(X, y, random_shift=1, **small)
    assert not np.array_equal(conv.predict_proba(X), _fit(X, y, **small).predict_proba(X))
    # Training draws the shifts from random_state; prediction does not shift.
    np.testing.assert_array_equal(conv.predict_proba(X), _fit(X, y, random_shift=1, **small).predict_proba(X))
    np.testing.assert_array_equal(conv.predict_proba(X), conv.predict_proba(X))
    conv.partial_fit(X, y)
    with pytest.raises(ValueError, match="random_shift=1 moves images"):
        _fit(X, y, random_shift=1)
    with pytest.raises(ValueError, match="random_shift=8 must be smaller"):
        _fit(X, y, random_shift=8, image_shape=(8, 8, 1))
    with pytest.raises(ValueError, match="random_shift"):
        _fit(X, y, random_shift=-1)
