"""BNNClassifier with conv layers (image_shape, conv_layers) and the packed CNN."""

import pickle
import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import InvalidParameterError

from xnorcore import BNNClassifier
from xnorcore.nn import ConvNetwork, Network, recommended_conv_layers
from xnorcore.nn._convnet import normalize_conv_layers


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X.astype(np.float32), y


def _cnn(**kw):
    params = dict(hidden_layer_sizes=(32,), image_shape=(8, 8, 1), conv_layers=(8, "pool", 16),
                  max_iter=6, batch_size=100, random_state=0, device="cpu")
    params.update(kw)
    return BNNClassifier(**params)


@pytest.fixture(scope="module")
def fitted(digits):
    X, y = digits
    return _cnn().fit(X, y)


def test_cnn_learns_and_its_packed_logits_equal_the_float_path(fitted, digits):
    X, y = digits
    assert isinstance(fitted.network_, ConvNetwork)
    assert fitted.score(X, y) > 0.8
    packed = fitted._logits(X)
    floats = fitted._logits(X, packed=False)
    np.testing.assert_array_equal(packed, floats)
    np.testing.assert_array_equal(fitted.predict(X), fitted.classes_[floats.argmax(axis=1)])


def test_four_d_input_is_the_same_as_rows(fitted, digits):
    X, y = digits
    images = X.reshape(-1, 8, 8, 1)
    np.testing.assert_array_equal(fitted.decision_function(images), fitted.decision_function(X))
    # image_shape may come from 4-D X alone.
    a = _cnn(image_shape=None).fit(images, y)
    b = _cnn().fit(X, y)
    assert a.image_shape_ == (8, 8, 1)
    np.testing.assert_array_equal(a.decision_function(X), b.decision_function(images))


def test_pickled_and_dropped_models_predict_the_same(fitted, digits):
    X, _ = digits
    expected = fitted.decision_function(X)
    loaded = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(loaded.decision_function(X), expected)
    dropped = pickle.loads(pickle.dumps(fitted)).drop_training_state()
    np.testing.assert_array_equal(dropped.decision_function(X), expected)
    np.testing.assert_array_equal(dropped._logits(X, packed=False), expected)
    assert len(pickle.dumps(dropped)) < len(pickle.dumps(fitted)) / 3


def test_summary_lists_conv_layers_with_packed_sizes(fitted):
    info = fitted.summary(as_dict=True)
    rows = info["layers"]
    assert [r["layer"] for r in rows] == ["conv1", "conv2", "dense1", "dense2"]
    conv1, conv2 = rows[0], rows[1]
    assert conv1["shape"] == (3, 3, 1, 8) and not conv1["binary"]
    assert conv2["shape"] == (3, 3, 8, 16) and conv2["binary"]
    # 3 * 3 * 16 rows of one 64-bit word, and a threshold and a direction per channel.
    assert conv2["packed_bytes"] == 8 * 3 * 3 * 16 + 5 * 16
    assert conv2["float32_bytes"] == 4 * (3 * 3 * 8 * 16 + 4 * 16)
    # The flattened 4x4x16 conv output feeds a binary dense layer.
    assert rows[2]["shape"] == (256, 32) and rows[2]["binary"]
    text = fitted.summary()
    assert "3x3x8x16" in text and "conv1" in text


def test_histograms_include_conv_layers(fitted, digits):
    X, y = digits
    clf = _cnn(max_iter=1).fit(X[:200], y[:200])
    hist = clf.network_.histograms()
    assert hist["conv2/weight"].shape == (3, 3, 8, 16)
    np.testing.assert_array_equal(np.abs(hist["conv2/weight_binary"]), 1)
    assert hist["conv2/weight_grad"].shape == (3, 3, 8, 16)
    assert set(np.unique(hist["conv2/activation"])) <= {-1.0, 1.0}
    assert "dense1/weight" in hist


def test_auto_picks_the_recommended_cnn(digits):
    X, y = digits
    clf = _cnn(conv_layers="auto", max_iter=1).fit(X, y)
    assert clf.network_.conv_layers == normalize_conv_layers(recommended_conv_layers((8, 8, 1)))
    assert recommended_conv_layers((28, 28, 1)) == ((64, 5), "pool", (128, 5), "pool")
    assert recommended_conv_layers((32, 32, 3)) == ((64, 5), "pool", (128, 5), "pool", (256, 5), "pool")
    assert recommended_conv_layers((3, 3, 1)) == ((64, 5),)


def test_real_valued_cnn_trains_on_the_float_path(digits):
    X, y = digits
    clf = _cnn(binary=False).fit(X, y)
    assert clf.score(X, y) > 0.8
    assert clf._inference is None
    assert not any(r["binary"] for r in clf.summary(as_dict=True)["layers"])


def test_auto_max_iter_is_fewer_epochs_for_a_cnn(digits):
    from xnorcore.estimator import AUTO_EPOCHS_CNN, AUTO_EPOCHS_MLP

    X, y = digits
    assert BNNClassifier().max_iter == "auto" and AUTO_EPOCHS_CNN < AUTO_EPOCHS_MLP
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        cnn = _cnn(max_iter="auto", hidden_layer_sizes=(8,), conv_layers=(4,)).fit(X[:200], y[:200])
        mlp = BNNClassifier((8,), random_state=0, device="cpu").fit(X[:200], y[:200])
    assert (cnn.n_iter_, mlp.n_iter_) == (AUTO_EPOCHS_CNN, AUTO_EPOCHS_MLP)
    assert len(mlp.loss_curve_) == AUTO_EPOCHS_MLP


def test_auto_label_smoothing_smooths_a_cnn_only(digits):
    from xnorcore.estimator import AUTO_LABEL_SMOOTHING_CNN, AUTO_LABEL_SMOOTHING_MLP

    X, y = digits
    assert BNNClassifier().label_smoothing == "auto"
    assert (AUTO_LABEL_SMOOTHING_CNN, AUTO_LABEL_SMOOTHING_MLP) == (0.1, 0.0)
    cnn = _cnn(max_iter=1).fit(X[:300], y[:300])
    assert cnn.network_.label_smoothing == AUTO_LABEL_SMOOTHING_CNN
    explicit = _cnn(max_iter=1, label_smoothing=AUTO_LABEL_SMOOTHING_CNN).fit(X[:300], y[:300])
    np.testing.assert_array_equal(cnn.predict_proba(X[:50]), explicit.predict_proba(X[:50]))
    plain = _cnn(max_iter=1, label_smoothing=0.0).fit(X[:300], y[:300])
    assert plain.network_.label_smoothing == 0.0
    # The same steps from the same start, against other targets: other weights.
    assert plain.loss_curve_[0] != cnn.loss_curve_[0]
    assert not np.array_equal(plain.predict_proba(X[:50]), cnn.predict_proba(X[:50]))
    mlp = BNNClassifier((8,), max_iter=1, random_state=0, device="cpu").fit(X[:300], y[:300])
    mlp0 = BNNClassifier((8,), max_iter=1, random_state=0, device="cpu", label_smoothing=0.0).fit(X[:300], y[:300])
    assert mlp.network_.label_smoothing == AUTO_LABEL_SMOOTHING_MLP
    np.testing.assert_array_equal(mlp.predict_proba(X[:50]), mlp0.predict_proba(X[:50]))


def test_a_continued_network_trains_with_the_current_label_smoothing(digits):
    X, y = digits
    clf = _cnn(max_iter=1, label_smoothing=0.2).fit(X[:300], y[:300])
    clf.set_params(label_smoothing=0.0).partial_fit(X[:300], y[:300])
    assert clf.network_.label_smoothing == 0.0


def test_input_dropout_leaves_a_cnn_alone(digits):
    X, y = digits
    a = _cnn(max_iter=1, input_dropout=0.0).fit(X[:300], y[:300])
    b = _cnn(max_iter=1, input_dropout=0.9).fit(X[:300], y[:300])
    np.testing.assert_array_equal(a.predict_proba(X[:50]), b.predict_proba(X[:50]))
    # The dense layers after the conv ones take dropout="auto"'s 0.2 for a CNN, whatever input_dropout says.
    assert all(blk.dense.dropout == 0.2 for blk in b.network_.head.blocks)
    c = _cnn(max_iter=1, dropout=0.0).fit(X[:300], y[:300])
    assert all(blk.dense.dropout == 0.0 for blk in c.network_.head.blocks)


def test_partial_fit_and_warm_start_with_conv_layers(digits):
    X, y = digits
    clf = _cnn()
    for _ in range(2):
        clf.partial_fit(X[:300], y[:300], classes=np.unique(y))
    assert clf.n_iter_ == 2
    clf.set_params(warm_start=True, max_iter=1).fit(X[:300], y[:300])
    assert clf.n_iter_ == 3
    with pytest.raises(ValueError, match="warm_start=True needs the same image_shape and conv_layers"):
        clf.set_params(conv_layers=(8,)).fit(X[:300], y[:300])


def test_default_estimator_has_no_conv_layers(digits):
    X, y = digits
    clf = BNNClassifier(hidden_layer_sizes=(16,), max_iter=1, random_state=0, device="cpu").fit(X, y)
    assert type(clf.network_) is Network
    assert clf.image_shape_ is None


def test_rows_without_image_shape_are_one_pixel_high_images(digits):
    X, y = digits
    clf = _cnn(image_shape=None, conv_layers=(4, (4, (1, 5))), max_iter=1).fit(X, y)
    assert clf.image_shape_ == (1, 64, 1)
    assert clf.network_.features.blocks[1].conv.shape == (1, 5, 4, 4)


@pytest.mark.parametrize("params,match", [
    (dict(image_shape=(8, 4, 1)), r"image_shape=\(8, 4, 1\) holds 32 values, but X has n_features=64"),
    (dict(image_shape=(8, 8)), "image_shape must be a tuple"),
    (dict(image_shape=(8, 0, 1)), "image_shape must be a tuple"),
    (dict(image_shape=(8.0, 8, 1)), "image_shape must be a tuple"),
    (dict(conv_layers=(8, 0)), "conv_layers items must be"),
    (dict(conv_layers=(8, "max")), "conv_layers items must be"),
    (dict(conv_layers=((8, (3, 3, 3)),)), "conv_layers items must be"),
    (dict(conv_layers=(True,)), "conv_layers items must be"),
    (dict(conv_layers=([8, 3, 3],)), r"conv_layers items must be .* got \(8, 3, 3\)"),
    (dict(conv_layers=(8, "pool", "pool", "pool", "pool")), r"pools an 1x1 image"),
])
def test_bad_conv_configuration_names_the_parameter(digits, params, match):
    X, y = digits
    with pytest.raises(ValueError, match=match):
        _cnn(**params).fit(X, y)


@pytest.mark.parametrize("value", ["pool", 8])
def test_conv_layers_constraint(digits, value):
    X, y = digits
    with pytest.raises(InvalidParameterError, match="conv_layers"):
        _cnn(conv_layers=value).fit(X, y)


def test_images_of_another_shape_are_rejected(fitted, digits):
    X, y = digits
    with pytest.raises(ValueError, match=r"X holds images of shape \(4, 16, 1\)"):
        fitted.predict(X.reshape(-1, 4, 16, 1))
    with pytest.raises(ValueError, match=r"X holds images of shape \(4, 16, 1\), but image_shape"):
        _cnn().fit(X.reshape(-1, 4, 16, 1), y)


@pytest.mark.parametrize("image_shape", [(0, 5, 1), (5, 5), (5, 5, 1.5), "28x28"])
def test_recommended_conv_layers_names_a_bad_image_shape(image_shape):
    with pytest.raises(ValueError, match=r"image_shape must be a tuple \(height, width, channels\) of positive ints"):
        recommended_conv_layers(image_shape)


def test_conv_layers_items_may_be_lists():
    """As a JSON or YAML configuration gives them: the same network as with tuples."""
    assert normalize_conv_layers([[8, 5], "pool", [16, [3, 5]], 4]) == normalize_conv_layers(
        ((8, 5), "pool", (16, (3, 5)), 4))


@pytest.mark.parametrize("conv_layers", [("pool",), ("pool", "pool"), ("pool", 8)])
def test_pools_on_the_pixels_predict_as_the_float_path(digits, conv_layers):
    """Pools before any convolution pool the pixels; the packed path takes the signs that the
    float path's first dense layer reads (a network of pools alone once failed to predict)."""
    X, y = digits
    clf = _cnn(conv_layers=conv_layers, max_iter=2).fit(X, y)
    np.testing.assert_array_equal(clf._logits(X), clf._logits(X, packed=False))
