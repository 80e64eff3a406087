"""BNNClassifier: training, packed inference, persistence, scikit-learn integration, errors."""

import io
import pickle
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from xnorcore import BNNClassifier
from xnorcore._backends.gpu import unavailable_reason

SMALL = dict(hidden_layer_sizes=(64, 64), max_iter=8, batch_size=64, random_state=0, device="cpu")


def _gpu_available():
    return unavailable_reason() is None


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X[:900], y[:900], test_size=0.3, random_state=0)


@pytest.fixture(scope="module")
def fitted(digits):
    X_train, X_test, y_train, y_test = digits
    return BNNClassifier(**SMALL).fit(X_train, y_train)


def test_fit_predict_digits(digits, fitted):
    X_train, X_test, y_train, y_test = digits
    assert fitted.score(X_test, y_test) > 0.85
    assert fitted.n_iter_ == 8 and len(fitted.loss_curve_) == 8
    assert fitted.loss_curve_[-1] < fitted.loss_curve_[0]
    assert fitted.t_ == 8 * len(X_train)
    assert fitted.n_features_in_ == 64
    np.testing.assert_array_equal(fitted.classes_, np.arange(10))
    proba = fitted.predict_proba(X_test)
    assert proba.shape == (len(X_test), 10)
    np.testing.assert_allclose(proba.sum(1), 1)
    np.testing.assert_allclose(np.log(proba), fitted.predict_log_proba(X_test), rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(fitted.classes_[proba.argmax(1)], fitted.predict(X_test))
    assert fitted.decision_function(X_test).shape == (len(X_test), 10)


def test_default_constructor_is_a_binary_network():
    clf = BNNClassifier()
    assert clf.binary is True
    assert clf.hidden_layer_sizes == (1024, 1024, 1024)


@pytest.mark.parametrize("conv", [(), (8, "pool", (12, 2), 16)])
def test_xnor_and_float_training_give_identical_models(digits, conv):
    X_train, X_test, y_train, _ = digits
    kw = dict(SMALL, dropout=0.2, binarize_last=True, max_iter=3, conv_layers=conv)
    if conv:
        kw.update(image_shape=(8, 8, 1), random_shift=1)
    a = BNNClassifier(xnor=False, **kw).fit(X_train, y_train)
    b = BNNClassifier(xnor=True, **kw).fit(X_train, y_train)
    assert (a.xnor_, b.xnor_) == (False, True)
    assert a.loss_curve_ == b.loss_curve_
    np.testing.assert_array_equal(a.predict_proba(X_test), b.predict_proba(X_test))
    np.testing.assert_array_equal(a.predict(X_test), b.predict(X_test))


def test_auto_xnor_follows_the_backend_per_layer_kind(digits):
    from xnorcore._backends import cpu

    X_train, _, y_train, _ = digits
    clf = BNNClassifier(**dict(SMALL, max_iter=1, conv_layers=(8, "pool"), image_shape=(8, 8, 1))).fit(X_train, y_train)
    assert clf.xnor_ is cpu.prefers_xnor_training is True
    assert all(b.dense.xnor for b in clf.network_.blocks)
    assert all(b.conv.xnor == cpu.prefers_xnor_conv_training for b in clf.network_.features.blocks)
    clf.set_params(xnor=False, warm_start=True).fit(X_train, y_train)  # continued with float products
    assert not any(b.conv.xnor for b in clf.network_.features.blocks) and clf.xnor_ is False


def test_predict_uses_packed_path_equal_to_float_path(digits, fitted):
    from xnorcore import PackedBits

    X_test = digits[1]
    fitted.predict(X_test[:1])
    assert all(isinstance(layer.weight, PackedBits) for layer in fitted._inference.layers[1:-1])
    np.testing.assert_array_equal(fitted._logits(X_test, packed=True), fitted._logits(X_test, packed=False))


def test_a_samples_scores_do_not_depend_on_its_batch(digits, fitted):
    """The packed path's first layer folds in standardization and skips zero pixels, row by row."""
    X_test = digits[1]
    assert (X_test == 0).mean() > 0.3  # digits have blank pixels: the skipping matters here
    scores = fitted.decision_function(X_test)
    for i in (0, 5, len(X_test) - 1):
        np.testing.assert_array_equal(fitted.decision_function(X_test[i:i + 1]), scores[i:i + 1])
    np.testing.assert_array_equal(fitted.decision_function(X_test[::-1])[::-1], scores)


def test_dense_inputs_take_the_blas_first_layer_with_equal_paths(digits, fitted):
    """Rows with few zeros go through BLAS instead of the zero-skipping kernel; both paths still agree."""
    from xnorcore._backends import cpu as _cpu
    from xnorcore._backends.cpu import SPARSE_INPUT_DENSITY as _SPARSE_INPUT_DENSITY

    X_test = digits[1] + 0.5  # no zero pixels left
    net = fitted.network_
    prepared = _cpu.prepare_input_layer(net.blocks[0].dense.effective_weight(), fitted.input_mean_,
                                        fitted.input_scale_)
    sums = _cpu.input_layer(X_test, prepared)
    w_blocks, init = prepared[1:]
    _, dense = _cpu.input_sums(X_test.astype(np.float32), w_blocks, init, max_density=_SPARSE_INPUT_DENSITY)
    assert dense.size == len(X_test)  # every row went through BLAS
    standardized = (X_test - fitted.input_mean_) / fitted.input_scale_
    np.testing.assert_allclose(sums, standardized @ net.blocks[0].dense.effective_weight(), rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(fitted._logits(X_test, packed=True), fitted._logits(X_test, packed=False))


def test_real_valued_network(digits):
    X_train, X_test, y_train, y_test = digits
    clf = BNNClassifier(binary=False, **SMALL).fit(X_train, y_train)
    assert clf.score(X_test, y_test) > 0.9
    assert clf.xnor_ is False
    assert not any(b.dense.binary_weights for b in clf.network_.blocks)


def test_binary_classification_with_string_labels_and_pandas():
    pd = pytest.importorskip("pandas")
    rng = np.random.RandomState(0)
    X = rng.randn(300, 5)
    y = np.where(X[:, 0] + X[:, 1] > 0, "yes", "no")
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(5)])
    clf = BNNClassifier(hidden_layer_sizes=(32,), max_iter=20, batch_size=32, random_state=0).fit(df, pd.Series(y))
    np.testing.assert_array_equal(clf.classes_, ["no", "yes"])
    np.testing.assert_array_equal(clf.feature_names_in_, df.columns)
    assert clf.score(df, y) > 0.9
    d = clf.decision_function(df)
    assert d.shape == (300,)
    np.testing.assert_array_equal(clf.predict(df), np.where(d > 0, "yes", "no"))


def test_partial_fit_steps_and_state(digits):
    X_train, _, y_train, _ = digits
    clf = BNNClassifier(**dict(SMALL, batch_size=50))
    with pytest.raises(ValueError, match="classes must be passed on the first call to partial_fit"):
        clf.partial_fit(X_train[:50], y_train[:50])
    assert not hasattr(clf, "network_")
    clf.partial_fit(X_train[:50], y_train[:50], classes=np.arange(10))
    assert clf.optimizer_.t == 1
    for i in range(1, 5):
        clf.partial_fit(X_train[50 * i:50 * (i + 1)], y_train[50 * i:50 * (i + 1)])
    assert clf.optimizer_.t == 5  # one Adam step per batch-sized call
    assert len(clf.loss_curve_) == 5 and clf.n_iter_ == 5 and clf.t_ == 250
    clf.partial_fit(X_train[:120], y_train[:120])
    assert clf.optimizer_.t == 8  # 120 samples in batches of 50
    with pytest.raises(ValueError, match="is not the same as on the first call"):
        clf.partial_fit(X_train[:50], y_train[:50], classes=np.arange(5))
    with pytest.raises(ValueError, match="not in classes_"):
        clf.partial_fit(X_train[:3], np.array([1, 2, 99]))
    with pytest.raises(ValueError, match="features"):
        clf.partial_fit(X_train[:50, :10], y_train[:50])
    assert clf.optimizer_.t == 8
    assert "dense1/weight_grad" in clf.network_.histograms()


def test_partial_fit_matches_fit_for_one_epoch(digits):
    X_train, X_test, y_train, _ = digits
    kw = dict(SMALL, max_iter=1, shuffle=False, lr_schedule="constant")
    a = BNNClassifier(**kw).fit(X_train, y_train)
    b = BNNClassifier(**kw).partial_fit(X_train, y_train, classes=np.unique(y_train))
    assert a.loss_curve_ == b.loss_curve_
    np.testing.assert_array_equal(a.predict_proba(X_test), b.predict_proba(X_test))


def test_histograms_after_fit(fitted):
    h = fitted.network_.histograms()
    for key in ("dense1/weight", "dense2/weight_binary", "dense1/activation", "dense1/weight_grad",
                "dense3/weight", "dense3/weight_grad"):
        assert key in h, key
        assert isinstance(h[key], np.ndarray)
    assert set(np.unique(h["dense2/weight_binary"])) <= {-1.0, 1.0}
    assert np.abs(h["dense2/weight"]).max() <= 1.0


def test_pickle_round_trip_and_summary(digits, fitted):
    X_test = digits[1]
    blob = pickle.dumps(fitted)
    clone_ = pickle.loads(blob)
    np.testing.assert_array_equal(clone_.predict_proba(X_test), fitted.predict_proba(X_test))
    info = fitted.summary(as_dict=True)
    rows = {r["layer"]: r for r in info["layers"]}
    assert rows["dense2"]["binary"] and not rows["dense1"]["binary"]
    # 64x64 binary weights: 64 words of 8 bytes + 5 bytes per unit vs float32 weights + batch norm.
    assert rows["dense2"]["packed_bytes"] == 64 * 8 + 64 * 5
    assert rows["dense2"]["float32_bytes"] == 4 * (64 * 64 + 4 * 64)
    assert rows["dense2"]["compression"] > 5
    assert abs(len(blob) - info["packed_bytes"] - info["training_state_bytes"]) < 40_000
    text = fitted.summary()
    assert "dense2" in text and "binary" in text and "x" in text

    small = pickle.loads(blob).drop_training_state()
    blob_small = pickle.dumps(small)
    assert info["packed_bytes"] < len(blob_small) < info["packed_bytes"] + 20_000
    np.testing.assert_array_equal(small.predict_proba(X_test), fitted.predict_proba(X_test))
    reloaded = pickle.loads(blob_small)
    assert reloaded.network_.blocks[1].dense.weight is None
    np.testing.assert_array_equal(reloaded.predict_proba(X_test), fitted.predict_proba(X_test))
    np.testing.assert_array_equal(reloaded._logits(X_test, packed=False), fitted._logits(X_test, packed=False))
    with pytest.raises(ValueError, match="training state was dropped"):
        small.partial_fit(X_test, small.predict(X_test))


def test_large_binary_layers_compress_about_30x():
    rng = np.random.RandomState(0)
    X = rng.randn(40, 8)
    y = rng.randint(0, 2, 40)
    clf = BNNClassifier(hidden_layer_sizes=(1024, 1024), max_iter=1, random_state=0, device="cpu").fit(X, y)
    row = clf.summary(as_dict=True)["layers"][1]
    assert row["shape"] == (1024, 1024)
    assert 28 < row["compression"] < 32


def test_sklearn_tools(digits):
    X_train, _, y_train, _ = digits
    pipe = make_pipeline(StandardScaler(), BNNClassifier(**SMALL))
    assert cross_val_score(pipe, X_train, y_train, cv=3).mean() > 0.8
    search = GridSearchCV(BNNClassifier(**dict(SMALL, max_iter=3)),
                          {"hidden_layer_sizes": [(16,), (64,)]}, cv=2, n_jobs=2)
    search.fit(X_train, y_train)
    assert search.best_params_["hidden_layer_sizes"] in [(16,), (64,)]
    c = clone(BNNClassifier(**SMALL))
    assert c.get_params() == BNNClassifier(**SMALL).get_params()
    assert not hasattr(c, "network_")


def test_verbose_reports_each_epoch(digits, capsys):
    X_train, _, y_train, _ = digits
    BNNClassifier(**dict(SMALL, max_iter=2, verbose=True, early_stopping=True)).fit(X_train, y_train)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("Iteration")]
    assert len(lines) == 2
    assert all("loss = " in l and "validation score = " in l and "examples/s" in l for l in lines)


def test_early_stopping_keeps_best(digits):
    X_train, _, y_train, _ = digits
    clf = BNNClassifier(**dict(SMALL, max_iter=30, early_stopping=True, n_iter_no_change=2,
                               tol=0.5)).fit(X_train, y_train)
    assert clf.n_iter_ == 3  # the tolerance cannot be met
    assert len(clf.validation_scores_) == 3
    assert clf.best_validation_score_ == max(clf.validation_scores_)


def test_warm_start_continues(digits):
    X_train, _, y_train, _ = digits
    clf = BNNClassifier(**dict(SMALL, max_iter=2, warm_start=True)).fit(X_train, y_train)
    steps = clf.optimizer_.t
    clf.fit(X_train, y_train)
    assert clf.n_iter_ == 4 and len(clf.loss_curve_) == 4
    assert clf.optimizer_.t == 2 * steps


def test_same_random_state_same_model(digits):
    X_train, X_test, y_train, _ = digits
    a = BNNClassifier(**dict(SMALL, max_iter=2, dropout=0.1)).fit(X_train, y_train)
    b = BNNClassifier(**dict(SMALL, max_iter=2, dropout=0.1)).fit(X_train, y_train)
    np.testing.assert_array_equal(a.predict_proba(X_test), b.predict_proba(X_test))


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_rejected(digits, fitted, bad):
    X_train, X_test, y_train, _ = digits
    X = X_train.copy()
    X[3, 5] = bad
    with pytest.raises(ValueError, match="NaN|infinity"):
        BNNClassifier(**SMALL).fit(X, y_train)
    X = X_test.copy()
    X[0, 0] = bad
    with pytest.raises(ValueError, match="NaN|infinity"):
        fitted.predict(X)


def test_wrong_number_of_features(digits, fitted):
    with pytest.raises(ValueError, match="X has 10 features, but BNNClassifier is expecting 64 features"):
        fitted.predict(digits[1][:, :10])


def test_single_class_is_rejected():
    X = np.random.RandomState(0).randn(20, 3)
    with pytest.raises(ValueError, match="at least 2 classes in y, got 1 class: 'a'"):
        BNNClassifier(**SMALL).fit(X, ["a"] * 20)
    with pytest.raises(ValueError, match="at least 2 classes in classes"):
        BNNClassifier(**SMALL).partial_fit(X, [1] * 20, classes=[1])


def test_sparse_input_is_rejected_clearly(digits):
    X_train, _, y_train, _ = digits
    with pytest.raises(TypeError, match="Sparse data was passed.*dense data is required"):
        BNNClassifier(**SMALL).fit(sp.csr_matrix(X_train), y_train)


def test_regression_target_is_rejected():
    X = np.random.RandomState(0).randn(20, 3)
    with pytest.raises(ValueError, match="Unknown label type"):
        BNNClassifier(**SMALL).fit(X, np.linspace(0, 1, 20))


@pytest.mark.skipif(_gpu_available(), reason="a GPU is available here")
def test_gpu_device_without_gpu_is_a_clear_error(digits):
    X_train, _, y_train, _ = digits
    clf = BNNClassifier(**dict(SMALL, device="gpu"))
    with pytest.raises(RuntimeError, match=r"device='gpu' (needs CuPy|but no CUDA device)"):
        clf.fit(X_train, y_train)
    assert not hasattr(clf, "network_")


@pytest.mark.parametrize(
    "params, match",
    [
        ({"hidden_layer_sizes": (0,)}, "hidden_layer_sizes must be a tuple of positive integers"),
        ({"hidden_layer_sizes": "big"}, "'hidden_layer_sizes' parameter of BNNClassifier must be an array-like"),
        ({"dropout": 1.0},
         r"'dropout' parameter of BNNClassifier must be a str among \{'auto'\} or a float in the range \[0.0, 1.0\)"),
        ({"dropout": "half"}, r"'dropout' parameter of BNNClassifier must be a str among \{'auto'\}"),
        ({"backward_dtype": "float16"}, r"'backward_dtype' parameter of BNNClassifier must be a str among"),
        ({"input_dropout": -0.1}, r"'input_dropout' parameter of BNNClassifier must be a float in the range \[0.0, 1.0\)"),
        ({"label_smoothing": 1.0}, r"'label_smoothing' parameter of BNNClassifier must be a str among \{'auto'\} "
                                   r"or a float in the range \[0.0, 1.0\)"),
        ({"label_smoothing": "some"}, r"'label_smoothing' parameter of BNNClassifier must be a str among \{'auto'\}"),
        ({"batch_size": 0}, r"'batch_size' parameter of BNNClassifier must be an int in the range \[1, inf\). Got 0"),
        ({"max_iter": 2.5}, r"'max_iter' parameter of BNNClassifier must be a str among \{'auto'\} or an int in the "
                            r"range \[1, inf\)"),
        ({"max_iter": "many"}, r"'max_iter' parameter of BNNClassifier must be a str among \{'auto'\}"),
        ({"learning_rate_init": -1}, "'learning_rate_init' parameter of BNNClassifier must be a float in the range"),
        ({"xnor": "yes"}, r"'xnor' parameter of BNNClassifier must be a str among \{'auto'\} or an instance of 'bool'"),
        ({"device": "tpu"}, "'device' parameter of BNNClassifier must be a str among"),
        ({"lr_schedule": "step"}, "'lr_schedule' parameter of BNNClassifier must be a str among"),
        ({"binary": "no"}, "'binary' parameter of BNNClassifier must be an instance of 'bool'"),
        ({"validation_fraction": 1.0, "early_stopping": True}, "'validation_fraction' parameter of BNNClassifier must be"),
    ],
)
def test_bad_parameters(params, match):
    X = np.random.RandomState(0).randn(20, 3)
    y = np.arange(20) % 2
    clf = BNNClassifier(**{**SMALL, **params})
    with pytest.raises(ValueError, match=match):
        clf.fit(X, y)
    assert not hasattr(clf, "network_")


def test_failed_fit_leaves_previous_model_untouched(digits, monkeypatch):
    X_train, X_test, y_train, _ = digits
    clf = BNNClassifier(**dict(SMALL, max_iter=2)).fit(X_train, y_train)
    before = clf.predict_proba(X_test)
    net = clf.network_
    X_bad = X_train.copy()
    X_bad[0, 0] = np.nan
    with pytest.raises(ValueError):
        clf.fit(X_bad, y_train)
    assert clf.network_ is net
    np.testing.assert_array_equal(clf.predict_proba(X_test), before)

    # An error in the middle of training (here: the loss blowing up) changes nothing either.
    from xnorcore.nn import Network

    calls = {"n": 0}
    original = Network.train_step

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise FloatingPointError("boom")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Network, "train_step", failing)
    fresh = BNNClassifier(**SMALL)
    with pytest.raises(FloatingPointError):
        fresh.fit(X_train, y_train)
    with pytest.raises(NotFittedError):
        fresh.predict(X_test)
    clf.set_params(warm_start=True)
    calls["n"] = 0
    with pytest.raises(FloatingPointError):
        clf.fit(X_train, y_train)
    assert clf.network_ is net and clf.n_iter_ == 2
    np.testing.assert_array_equal(clf.predict_proba(X_test), before)


def test_unfitted_errors():
    clf = BNNClassifier()
    with pytest.raises(NotFittedError):
        clf.predict(np.zeros((1, 3)))
    with pytest.raises(NotFittedError):
        clf.summary()


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_available(), reason="needs CuPy and a CUDA device")
def test_gpu_fit_predicts_identically_on_cpu(digits):
    X_train, X_test, y_train, _ = digits
    clf = BNNClassifier(**dict(SMALL, device="gpu")).fit(X_train, y_train)
    assert clf.device_ == "gpu"
    on_gpu = clf.predict_proba(X_test)
    loaded = pickle.loads(pickle.dumps(clf))
    assert loaded.network_.xp is np
    np.testing.assert_array_equal(loaded.predict(X_test), clf.predict(X_test))
    np.testing.assert_allclose(loaded.predict_proba(X_test), on_gpu, rtol=1e-6, atol=1e-9)
    buf = io.BytesIO()
    pickle.dump(clf, buf)
    assert all(isinstance(v, np.ndarray) for v in pickle.loads(buf.getvalue()).network_.histograms().values())


# -- sample_weight and convergence ----------------------------------------------


def _fit_quiet(clf, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return clf.fit(*args, **kwargs)


def test_sample_weight_of_ones_is_the_unweighted_fit(digits):
    X_train, X_test, y_train, y_test = digits
    plain = _fit_quiet(BNNClassifier(**SMALL), X_train, y_train)
    ones = _fit_quiet(BNNClassifier(**SMALL), X_train, y_train, sample_weight=np.ones(len(y_train)))
    assert ones.loss_curve_ == plain.loss_curve_
    np.testing.assert_array_equal(ones.predict_proba(X_test), plain.predict_proba(X_test))
    # A common scale changes nothing either: the loss is a weighted mean.
    quarter = _fit_quiet(BNNClassifier(**SMALL), X_train, y_train, sample_weight=np.full(len(y_train), 0.25))
    np.testing.assert_array_equal(quarter.predict_proba(X_test), plain.predict_proba(X_test))
    a, b = BNNClassifier(**SMALL), BNNClassifier(**SMALL)
    for start in range(0, len(X_train), 100):
        rows = slice(start, start + 100)
        a.partial_fit(X_train[rows], y_train[rows], classes=np.arange(10))
        b.partial_fit(X_train[rows], y_train[rows], classes=np.arange(10), sample_weight=np.ones(len(y_train[rows])))
    assert a.loss_curve_ == b.loss_curve_
    np.testing.assert_array_equal(a.predict_proba(X_test), b.predict_proba(X_test))


# One full batch, no batch norm, no dropout: weights and repeated samples differ only in rounding.
FULL_BATCH = dict(SMALL, batch_norm=False, batch_size=10_000, shuffle=False, input_dropout=0.0)


@pytest.mark.parametrize("binary", [True, False])
def test_zero_weights_remove_and_integer_weights_repeat_samples(digits, binary):
    # In float32 a weight of 3 and three copies of a sample sum the same gradients, up to
    # the order of float32 additions.  (bfloat16 backward products round each copy's
    # gradient to 8 bits, and binary training amplifies such differences.)
    X_train, X_test, y_train, y_test = digits
    rng = np.random.default_rng(0)
    weights = rng.integers(0, 4, size=len(y_train))
    params = dict(FULL_BATCH, binary=binary, backward_dtype="float32")
    weighted = _fit_quiet(BNNClassifier(**params), X_train, y_train, sample_weight=weights)
    repeated = _fit_quiet(BNNClassifier(**params), X_train.repeat(weights, axis=0), y_train.repeat(weights))
    np.testing.assert_allclose(weighted.loss_curve_, repeated.loss_curve_, rtol=1e-4)
    agree = (weighted.predict(X_test) == repeated.predict(X_test)).mean()
    assert agree > 0.97, agree
    # The unweighted fit is a different model.
    plain = _fit_quiet(BNNClassifier(**params), X_train, y_train)
    assert not np.allclose(plain.loss_curve_, weighted.loss_curve_, rtol=1e-2)


def test_sample_weight_shifts_predictions_toward_heavy_classes(digits):
    X_train, X_test, y_train, y_test = digits
    weights = np.where(y_train == 3, 20.0, 1.0)
    plain = _fit_quiet(BNNClassifier(**SMALL), X_train, y_train)
    heavy = _fit_quiet(BNNClassifier(**SMALL), X_train, y_train, sample_weight=weights)
    assert (heavy.predict(X_test) == 3).sum() > (plain.predict(X_test) == 3).sum()
    assert heavy.score(X_test, y_test, sample_weight=(y_test == 3)) >= plain.score(X_test, y_test, sample_weight=(y_test == 3))


def test_sample_weight_with_early_stopping(digits):
    X_train, X_test, y_train, y_test = digits
    weights = np.linspace(0.5, 2.0, len(y_train))
    clf = _fit_quiet(BNNClassifier(**dict(SMALL, early_stopping=True, max_iter=5)), X_train, y_train,
                     sample_weight=weights)
    assert len(clf.validation_scores_) == clf.n_iter_ and clf.score(X_test, y_test) > 0.7


@pytest.mark.parametrize("weights, match", [
    (lambda n: -np.ones(n), "Negative values in data passed to `sample_weight`"),
    (lambda n: np.full(n, np.nan), "Input sample_weight contains NaN"),
    (lambda n: np.ones(n + 1), r"sample_weight.shape == \(\d+,\), expected \(\d+,\)"),
    (lambda n: np.zeros(n), "Sample weights must contain at least one non-zero number"),
])
def test_bad_sample_weight_is_rejected(digits, weights, match):
    X_train, X_test, y_train, y_test = digits
    for call in (lambda clf, w: clf.fit(X_train, y_train, sample_weight=w),
                 lambda clf, w: clf.partial_fit(X_train, y_train, classes=np.arange(10), sample_weight=w)):
        clf = BNNClassifier(**SMALL)
        with pytest.raises(ValueError, match=match):
            call(clf, weights(len(y_train)))
        assert not hasattr(clf, "network_")


def test_sample_weight_leaving_one_class_is_rejected(digits):
    X_train, X_test, y_train, y_test = digits
    with pytest.raises(ValueError, match="needs at least 2 classes in y with positive sample_weight, got 1 class: 4"):
        BNNClassifier(**SMALL).fit(X_train, y_train, sample_weight=(y_train == 4).astype(float))


def test_convergence_warning_when_max_iter_cuts_training_short(digits):
    X_train, X_test, y_train, y_test = digits
    with pytest.warns(ConvergenceWarning, match=r"stopped at max_iter=3 epochs while the training loss "
                                                r"was still improving by more than tol=0.0001"):
        BNNClassifier(**dict(SMALL, max_iter=3)).fit(X_train, y_train)
    with pytest.warns(ConvergenceWarning, match="while the validation score was still improving"):
        BNNClassifier(**dict(SMALL, max_iter=1, early_stopping=True)).fit(X_train, y_train)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        # A loss that stopped improving by more than tol: converged, as far as tol goes.
        clf = BNNClassifier(**dict(SMALL, max_iter=3, tol=100.0)).fit(X_train, y_train)
        assert clf.n_iter_ == 3
        # Stopped by n_iter_no_change before max_iter.
        # (the first epoch improves on nothing; two more without improvement stop it)
        clf = BNNClassifier(**dict(SMALL, max_iter=50, tol=100.0, n_iter_no_change=2)).fit(X_train, y_train)
        assert clf.n_iter_ == 3
        # partial_fit runs one pass by design.
        BNNClassifier(**SMALL).partial_fit(X_train, y_train, classes=np.arange(10))
