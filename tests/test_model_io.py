"""save_model / load_model: exact round trips, and a loader that refuses every broken or forged file."""

import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest
from sklearn.datasets import load_digits

import xnorcore
from xnorcore import BNNClassifier, ModelFileError, load_model, save_model
from xnorcore._backends import gpu as _gpu
from xnorcore._model_io import FORMAT_VERSION, METADATA, MODEL_KINDS

# Models trained for one or two epochs: short on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

REASON = _gpu.unavailable_reason()
needs_gpu = pytest.mark.skipif(REASON is not None, reason=f"GPU tests need CuPy and a CUDA device: {REASON}")

CONFIGS = {
    "binary": dict(),
    "float": dict(binary=False),
    "binary-ends-no-bn": dict(binarize_first=True, binarize_last=True, batch_norm=False),
    "dropout-early-stopping": dict(dropout=0.2, early_stopping=True, n_iter_no_change=2),
}
# Digits as 8x8 images; conv2 is binary, with 4 input channels (bits 4..63 of its packed words are padding).
CNN_BASE = dict(hidden_layer_sizes=(16,), image_shape=(8, 8, 1), conv_layers=(4, "pool", (8, (3, 2))))
CNN_CONFIGS = {
    "binary": dict(),
    "float": dict(binary=False),
    "pool-after-pool": dict(conv_layers=(4, "pool", "pool")),
    "no-hidden-layer": dict(hidden_layer_sizes=(), conv_layers=(4, 5, "pool")),
    "binarize-last-no-bn-dropout-early-stopping": dict(batch_norm=False, binarize_last=True, dropout=0.2,
                                                       early_stopping=True, n_iter_no_change=2),
}


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:600], y[:600]


def _fit(X, y, **kw):
    params = dict(hidden_layer_sizes=(48, 65), max_iter=2, batch_size=100, random_state=0, device="cpu")
    params.update(kw)
    return BNNClassifier(**params).fit(X, y)


@pytest.fixture(scope="module")
def model(digits):
    return _fit(*digits)


def _saved(model, path, **kw):
    save_model(model, path, **kw)
    return path


@pytest.fixture
def saved(model, tmp_path):
    return _saved(model, tmp_path / "model.xnor")


def _same_fitted(a, b, X):
    np.testing.assert_array_equal(a.decision_function(X), b.decision_function(X))
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    np.testing.assert_array_equal(a.classes_, b.classes_)
    assert a.classes_.dtype == b.classes_.dtype
    assert a.n_features_in_ == b.n_features_in_
    assert a.get_params() == b.get_params()
    assert a.loss_curve_ == b.loss_curve_ and a.n_iter_ == b.n_iter_ and a.t_ == b.t_
    assert a.best_loss_ == b.best_loss_
    assert a.validation_scores_ == b.validation_scores_
    assert a.best_validation_score_ == b.best_validation_score_
    assert a.device_ == b.device_ and a.xnor_ == b.xnor_
    np.testing.assert_array_equal(a.input_mean_, b.input_mean_)
    assert a.input_scale_ == b.input_scale_


def _fit_kind(kind, config, X, y, **kw):
    """``(estimator, check)``: an MLP or CNN of that config, and the function that checks a copy of it."""
    if kind == "cnn":
        return _fit(X, y, **{**CNN_BASE, **CNN_CONFIGS[config], **kw}), _same_cnn
    return _fit(X, y, **CONFIGS[config], **kw), _same_fitted


# ---------------------------------------------------------------- round trips
@pytest.mark.parametrize("kind, config",
                         [("mlp", c) for c in sorted(CONFIGS)] + [("cnn", c) for c in sorted(CNN_CONFIGS)])
@pytest.mark.parametrize("training_state", [True, False])
def test_round_trip_predicts_identically(digits, tmp_path, kind, config, training_state):
    X, y = digits
    clf, same = _fit_kind(kind, config, X, y)
    path = tmp_path / "m.xnor"
    save_model(clf, path, training_state=training_state)
    assert _meta(path)["model_kind"] == kind
    loaded = load_model(path)
    same(clf, loaded, X)
    if kind == "cnn":  # 4-d images predict as their rows do
        np.testing.assert_array_equal(loaded.decision_function(X.reshape(-1, 8, 8, 1)), clf.decision_function(X))
    assert (loaded.optimizer_ is not None) == training_state
    assert loaded.network_.has_training_state == (training_state or not clf.binary)  # (a real net drops nothing)
    assert loaded.summary(as_dict=True)["packed_bytes"] == clf.summary(as_dict=True)["packed_bytes"]
    bytes_ = [m.summary(as_dict=True)["training_state_bytes"] for m in (clf, loaded)]
    assert bytes_[1] == (bytes_[0] if training_state else 0)
    if not training_state:
        with pytest.raises(ValueError, match="training state was dropped"):
            loaded.partial_fit(X[:100], y[:100])


@pytest.mark.parametrize("labels", ["str", "object-str", "float", "bool", "negative-int"])
def test_labels_round_trip(digits, tmp_path, labels):
    X, y = digits
    y = {
        "str": np.array([f"digit {d}" for d in y]),
        "object-str": np.array([f"d{d}" for d in y], dtype=object),
        "float": y.astype(np.float64) * 2 - 3,
        "bool": y > 4,
        "negative-int": y.astype(np.int16) - 5,
    }[labels]
    clf = _fit(X, y, hidden_layer_sizes=(32,), max_iter=1)
    save_model(clf, tmp_path / "m.xnor")
    _same_fitted(clf, load_model(tmp_path / "m.xnor"), X)


def test_feature_names_from_a_dataframe(digits, tmp_path):
    pd = pytest.importorskip("pandas")
    X, y = digits
    df = pd.DataFrame(X, columns=[f"pixel_{i}" for i in range(X.shape[1])])
    clf = _fit(df, y, hidden_layer_sizes=(32,), max_iter=1)
    save_model(clf, tmp_path / "m.xnor")
    loaded = load_model(tmp_path / "m.xnor")
    np.testing.assert_array_equal(loaded.feature_names_in_, clf.feature_names_in_)
    np.testing.assert_array_equal(loaded.decision_function(df), clf.decision_function(df))
    with pytest.raises(ValueError, match="feature names"):
        loaded.predict(df.rename(columns={"pixel_0": "other"}))


def test_scaled_input_round_trip(digits, tmp_path):
    X, y = digits
    clf = _fit(X * 1e-20, y, hidden_layer_sizes=(32,), max_iter=1)
    save_model(clf, tmp_path / "m.xnor")
    loaded = load_model(tmp_path / "m.xnor")
    assert loaded.input_exponent_ == clf.input_exponent_ != 0
    np.testing.assert_array_equal(loaded.decision_function(X * 1e-20), clf.decision_function(X * 1e-20))


@pytest.mark.parametrize("kind, config", [("mlp", "binary"), ("mlp", "float"), ("cnn", "binary"), ("cnn", "float"),
                                          ("cnn", "pool-after-pool")])
def test_partial_fit_after_load_equals_partial_fit_on_the_original(digits, tmp_path, kind, config):
    X, y = digits
    original, same = _fit_kind(kind, config, X, y, dropout=0.1)
    save_model(original, tmp_path / "m.xnor")
    loaded = load_model(tmp_path / "m.xnor")
    for start in (0, 200, 400):
        original.partial_fit(X[start:start + 200], y[start:start + 200])
        loaded.partial_fit(X[start:start + 200], y[start:start + 200])
    same(original, loaded, X)
    assert sorted(loaded.optimizer_.m) == sorted(original.optimizer_.m)
    assert ("conv1/weight" in original.optimizer_.m) == (kind == "cnn")
    for name, m in original.optimizer_.m.items():
        np.testing.assert_array_equal(m, loaded.optimizer_.m[name])
        np.testing.assert_array_equal(original.optimizer_.v[name], loaded.optimizer_.v[name])
    for name, a in original.network_.histograms().items():
        if not name.endswith(("/activation", "/weight_grad")):
            np.testing.assert_array_equal(a, loaded.network_.histograms()[name])
    # and fit with warm_start continues both alike
    original.set_params(warm_start=True, max_iter=1).fit(X, y)
    loaded.set_params(warm_start=True, max_iter=1).fit(X, y)
    same(original, loaded, X)


def test_save_changes_nothing_and_loads_from_pathlike_and_str(model, digits, tmp_path):
    X, _ = digits
    before = model.decision_function(X)
    save_model(model, str(tmp_path / "a.xnor"), training_state=False)
    assert model.optimizer_ is not None and model.network_.has_training_state
    np.testing.assert_array_equal(model.decision_function(X), before)
    np.testing.assert_array_equal(load_model(str(tmp_path / "a.xnor")).decision_function(X), before)


def test_file_is_a_zip_of_json_and_npy(saved):
    with zipfile.ZipFile(saved) as zf:
        names = zf.namelist()
        meta = json.loads(zf.read(METADATA))
    assert names[0] == METADATA
    assert all(n == METADATA or (n.startswith("arrays/") and n.endswith(".npy")) for n in names)
    assert meta["format"] == "xnorcore-model" and meta["format_version"] == FORMAT_VERSION
    assert meta["xnorcore_version"] == xnorcore.__version__
    assert meta["model_kind"] == "mlp" and meta["training_state"] is True
    assert sorted(meta["arrays"]) == sorted(n[len("arrays/"):-len(".npy")] for n in names[1:])
    # numpy reads every array without pickles
    with np.load(saved, allow_pickle=False) as npz:
        for key in npz.files:
            if key.endswith(".npy") or key.startswith("arrays/"):
                assert npz[key].dtype != object


def test_dropped_training_state_saves_packed_bits(model, tmp_path):
    dropped = _clone_dropped(model)
    save_model(dropped, tmp_path / "m.xnor", training_state=False)
    meta = _meta(tmp_path / "m.xnor")
    assert meta["arrays"]["network/dense2/weight_bits"] == {"dtype": "<u8", "shape": [65, 1]}
    assert "network/dense2/weight" not in meta["arrays"]
    assert meta["optimizer"] is None and meta["random_state"] is None
    with pytest.raises(ValueError, match="training state was dropped.*training_state=False"):
        save_model(dropped, tmp_path / "n.xnor", training_state=True)


def _clone_dropped(model):
    return pickle.loads(pickle.dumps(model)).drop_training_state()


# ---------------------------------------------------------------- saving: bad arguments, atomic writes
def test_save_refuses_what_is_not_a_fitted_model(tmp_path):
    with pytest.raises(TypeError, match="estimator must be a BNNClassifier, got dict"):
        save_model({}, tmp_path / "m.xnor")
    with pytest.raises(ValueError, match="estimator must be fitted"):
        save_model(BNNClassifier(), tmp_path / "m.xnor")


def test_save_refuses_bad_training_state(model, tmp_path):
    with pytest.raises(TypeError, match="training_state must be True or False, got training_state='yes'"):
        save_model(model, tmp_path / "m.xnor", training_state="yes")


def test_save_refuses_labels_that_are_objects(model, tmp_path):
    forged = pickle.loads(pickle.dumps(model))
    forged.classes_ = np.array([object()] * len(model.classes_), dtype=object)
    with pytest.raises(TypeError, match="classes_ can be saved only as numbers or strings"):
        save_model(forged, tmp_path / "m.xnor")
    assert not os.listdir(tmp_path)


def test_failed_save_keeps_the_old_file(model, tmp_path, monkeypatch):
    path = tmp_path / "m.xnor"
    save_model(model, path)
    before = path.read_bytes()

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "writestr", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_model(model, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.xnor"]  # no temporary file left behind


def test_save_over_a_folder_is_refused(model, tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(OSError, match="exists and is not a regular file"):
        save_model(model, tmp_path / "dir")


# ---------------------------------------------------------------- skops
SKOPS_TRUSTED = [
    "xnorcore.estimator.BNNClassifier",
    "xnorcore.nn._network.Network",
    "xnorcore.nn._network._Block",
    "xnorcore.nn._layers.Dense",
    "xnorcore.nn._layers.BatchNorm",
    "xnorcore.nn._layers.Sign",
    "xnorcore.nn._layers.ReLU",
    "xnorcore.nn._optim.Adam",
    "xnorcore.ops.PackedBits",
]
SKOPS_TRUSTED_CONV = [  # the types that a CNN adds
    "xnorcore.nn._convnet.ConvNetwork",
    "xnorcore.nn._convnet.ConvFeatures",
    "xnorcore.nn._convnet.ConvBlock",
    "xnorcore.nn._conv.Conv2D",
    "xnorcore.nn._conv.ChannelBatchNorm",
    "xnorcore.nn._conv.MaxPool2D",
    "xnorcore.nn._conv.Flatten",
]
SKOPS_TRUSTED += SKOPS_TRUSTED_CONV


@pytest.mark.parametrize("config", ["binary", "float", "dropped", "conv", "conv-float", "conv-dropped"])
def test_skops_round_trip(digits, tmp_path, config):
    sio = pytest.importorskip("skops.io")
    X, y = digits
    # The conv layers have a real first convolution, a binary one and a pool after a pool.
    conv = dict(image_shape=(8, 8, 1), conv_layers=(4, "pool", (8, (3, 2)), "pool", "pool"))
    clf = _fit(X, y, hidden_layer_sizes=(32, 65), max_iter=1, binary="float" not in config,
               **(conv if config.startswith("conv") else {}))
    if config.endswith("dropped"):
        clf.drop_training_state()
    path = tmp_path / "m.skops"
    sio.dump(clf, path)
    untrusted = sio.get_untrusted_types(file=path)
    assert set(untrusted) <= set(SKOPS_TRUSTED)  # the README lists these
    assert (set(SKOPS_TRUSTED_CONV) <= set(untrusted)) == config.startswith("conv")
    with pytest.raises(Exception, match="[Uu]ntrusted"):
        sio.load(path)
    loaded = sio.load(path, trusted=SKOPS_TRUSTED)
    _same_fitted(clf, loaded, X)
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))


def test_readme_lists_the_skops_types():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8").read()
    for name in SKOPS_TRUSTED:
        assert name in readme


# ---------------------------------------------------------------- GPU-trained models
@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("training_state", [True, False])
def test_gpu_trained_model_loads_on_cpu(digits, tmp_path, kind, training_state):
    X, y = digits
    clf = _fit(X, y, device="gpu", **(CNN_BASE if kind == "cnn" else {}))
    assert clf.device_ == "gpu"
    save_model(clf, tmp_path / "m.xnor", training_state=training_state)
    assert _meta(tmp_path / "m.xnor")["model_kind"] == kind
    loaded = load_model(tmp_path / "m.xnor")
    assert isinstance(loaded.input_mean_, np.ndarray)
    assert all(isinstance(a, np.ndarray) for a in loaded.network_.histograms().values())
    _same_fitted(clf, loaded, X)
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))


# ---------------------------------------------------------------- hostile files
def _meta(path):
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read(METADATA))


def _rewrite(src, dst, *, meta=None, members=None, drop=(), add=None):
    """Copy the model file ``src`` to ``dst``, changing its metadata or members."""
    with zipfile.ZipFile(src) as zf:
        contents = {info.filename: zf.read(info) for info in zf.infolist()}
    m = json.loads(contents[METADATA])
    if meta is not None:
        meta(m)
    contents[METADATA] = json.dumps(m).encode()
    for name, data in (members or {}).items():
        contents[name] = data
    for name in drop:
        del contents[name]
    with zipfile.ZipFile(dst, "w") as zf:
        for name, data in contents.items():
            zf.writestr(name, data)
        for name, data in (add or {}).items():
            zf.writestr(name, data)
    return dst


def _npy(a):
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=True)
    return buf.getvalue()


def _replace_array(src, dst, key, array, *also):
    """Copy the model file ``src`` to ``dst`` with the array ``key`` replaced by ``array``, recorded
    consistently: the metadata gives it (and the arrays ``also``) the new shape."""
    def forge(m):
        for name in (key, *also):
            m["arrays"][name]["shape"] = list(array.shape)
    return _rewrite(src, dst, meta=forge, members={f"arrays/{key}.npy": _npy(array)})


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model file"):
        load_model(tmp_path / "absent.xnor")


def test_folder(tmp_path):
    with pytest.raises(ModelFileError, match="is a folder, not a model file"):
        load_model(tmp_path)


@pytest.mark.parametrize("file", ["saved", "cnn_saved"])
@pytest.mark.parametrize("size", [0, 1, 10, 100, 1000, 3000, -200, -22, -1])
def test_truncated_file(request, tmp_path, file, size):
    data = request.getfixturevalue(file).read_bytes()
    cut = data[:size] if size >= 0 else data[:size]
    path = tmp_path / "cut.xnor"
    path.write_bytes(cut)
    with pytest.raises(ModelFileError, match=r"cut\.xnor: .*(not a zip archive|truncated|cannot be read)"):
        load_model(path)


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes(tmp_path, seed):
    path = tmp_path / "noise.xnor"
    path.write_bytes(np.random.default_rng(seed).bytes(5000))
    with pytest.raises(ModelFileError, match=r"noise\.xnor: (not an xnorcore model file|is a pickle)"):
        load_model(path)


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_a_pickle_is_refused_unread(model, tmp_path, protocol, monkeypatch):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(_Boom(), protocol=protocol))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
    with pytest.raises(ModelFileError, match=r"model\.pkl: is a pickle, not an xnorcore model file: load_model "
                                             r"never unpickles"):
        load_model(path)


def test_a_pickled_estimator_is_refused(model, tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(model))
    with pytest.raises(ModelFileError, match="is a pickle"):
        load_model(path)


def test_zip_with_a_pickle_member(saved, tmp_path):
    path = _rewrite(saved, tmp_path / "f.xnor", add={"payload.pkl": pickle.dumps(_Boom())})
    with pytest.raises(ModelFileError, match=r"f\.xnor: member 'payload\.pkl' is not listed in the metadata"):
        load_model(path)


def test_object_array_member_listed_as_object(saved, tmp_path):
    def forge(m):
        m["arrays"]["input_mean"] = {"dtype": "|O", "shape": [64]}
    path = _rewrite(saved, tmp_path / "f.xnor", meta=forge,
                    members={"arrays/input_mean.npy": _npy(np.array([_Boom()] * 64, dtype=object))})
    with pytest.raises(ModelFileError, match=r"f\.xnor: array 'input_mean' is recorded as .*needs dtype <f4"):
        load_model(path)


def test_object_array_member_behind_honest_metadata(saved, tmp_path):
    path = _rewrite(saved, tmp_path / "f.xnor",
                    members={"arrays/input_mean.npy": _npy(np.array([_Boom()] * 64, dtype=object))})
    with pytest.raises(ModelFileError, match=r"member arrays/input_mean\.npy has dtype \|O, expected <f4"):
        load_model(path)


@pytest.mark.parametrize("file, member, array, message", [
    ("saved", "arrays/input_mean.npy", np.zeros(64, np.float64), r"has dtype <f8, expected <f4"),
    ("saved", "arrays/input_mean.npy", np.zeros(63, np.float32), r"has shape \(63,\), expected \(64,\)"),
    ("saved", "arrays/input_mean.npy", np.zeros((64, 1), np.float32), r"has shape \(64, 1\), expected \(64,\)"),
    ("saved", "arrays/network/dense1/weight.npy", np.zeros((64, 48), np.float64), r"has dtype <f8, expected <f4"),
    ("saved", "arrays/network/dense2/weight.npy", np.zeros((48, 64), np.float32),
     r"has shape \(48, 64\), expected \(48, 65\)"),
    ("saved", "arrays/network/dense2/weight.npy", np.zeros((48, 65), ">f4"), r"has dtype >f4, expected <f4"),
    ("saved", "arrays/network/bn1/gamma.npy", np.zeros(48, np.int32), r"has dtype <i4, expected <f4"),
    ("saved", "arrays/random_state/keys.npy", np.zeros(624, np.int64), r"has dtype <i8, expected <u4"),
    ("cnn_packed", "arrays/network/conv1/weight.npy", np.zeros((3, 3, 1, 4), np.float64),
     r"has dtype <f8, expected <f4"),
    ("cnn_packed", "arrays/network/conv1/weight.npy", np.zeros((3, 3, 4), np.float32),
     r"has shape \(3, 3, 4\), expected \(3, 3, 1, 4\)"),
    ("cnn_packed", "arrays/network/conv2/weight_bits.npy", np.zeros((3, 2, 8, 2), np.uint64),
     r"has shape \(3, 2, 8, 2\), expected \(3, 2, 8, 1\)"),
    ("cnn_packed", "arrays/network/conv2/weight_bits.npy", np.zeros((3, 2, 4, 8), np.uint64),
     r"has shape \(3, 2, 4, 8\), expected \(3, 2, 8, 1\)"),
    ("cnn_packed", "arrays/network/conv2/weight_bits.npy", np.zeros((3, 2, 8, 1), np.int64),
     r"has dtype <i8, expected <u8"),
    ("cnn_packed", "arrays/network/conv_bn1/gamma.npy", np.zeros(5, np.float32), r"has shape \(5,\), expected \(4,\)"),
])
def test_member_of_wrong_dtype_or_shape(request, tmp_path, file, member, array, message):
    path = _rewrite(request.getfixturevalue(file), tmp_path / "f.xnor", members={member: _npy(array)})
    with pytest.raises(ModelFileError, match=r"f\.xnor: member " + member.replace(".", r"\.") + " " + message):
        load_model(path)


def test_metadata_shapes_that_disagree_with_the_architecture(saved, tmp_path):
    def forge(m):
        m["arrays"]["network/dense2/weight"]["shape"] = [48, 64]
    path = _rewrite(saved, tmp_path / "f.xnor", meta=forge)
    with pytest.raises(ModelFileError, match=r"array 'network/dense2/weight' is recorded as .*shape \[48, 65\]"):
        load_model(path)


def test_mismatched_layer_chain(saved, tmp_path):
    def forge(m):
        m["architecture"]["hidden_layer_sizes"] = [48, 64]
    path = _rewrite(saved, tmp_path / "f.xnor", meta=forge)
    with pytest.raises(ModelFileError, match=r"array 'network/dense2/weight' is recorded as .*architecture needs "
                                             r"dtype <f4 and shape \[48, 64\]"):
        load_model(path)


def test_mismatched_layer_chain_with_consistent_arrays(saved, tmp_path):
    # hidden (48, 65): dense2 replaced by a (48, 64) array, everything recorded consistently
    path = _replace_array(saved, tmp_path / "f.xnor", "network/dense2/weight", np.zeros((48, 64), np.float32),
                          "adam/m/dense2/weight")
    with pytest.raises(ModelFileError, match=r"network/dense2/weight.*architecture needs.*\[48, 65\]"):
        load_model(path)


def test_more_layers_than_the_architecture(saved, tmp_path):
    def forge(m):
        m["arrays"]["network/dense9/weight"] = {"dtype": "<f4", "shape": [2, 2]}
    path = _rewrite(saved, tmp_path / "f.xnor", meta=forge,
                    add={"arrays/network/dense9/weight.npy": _npy(np.zeros((2, 2), np.float32))})
    with pytest.raises(ModelFileError, match=r"array 'network/dense9/weight' is not part of a mlp model"):
        load_model(path)


@pytest.mark.parametrize("file, member", [
    ("saved", "arrays/input_mean.npy"), ("saved", "arrays/network/dense3/bias.npy"),
    ("saved", "arrays/adam/v/dense1/weight.npy"), ("cnn_saved", "arrays/network/conv2/weight.npy"),
    ("cnn_saved", "arrays/adam/m/conv1/weight.npy"), ("cnn_saved", "arrays/network/conv_bn1/running_mean.npy"),
])
def test_missing_member(request, tmp_path, file, member):
    path = _rewrite(request.getfixturevalue(file), tmp_path / "f.xnor", drop=[member])
    key = member[len("arrays/"):-len(".npy")]
    with pytest.raises(ModelFileError, match=rf"array '{key}' is listed in the metadata but the member .* is missing"):
        load_model(path)


def test_missing_member_and_listing(saved, tmp_path):
    def forge(m):
        del m["arrays"]["network/bn1/gamma"]
    path = _rewrite(saved, tmp_path / "f.xnor", meta=forge, drop=["arrays/network/bn1/gamma.npy"])
    with pytest.raises(ModelFileError, match=r"array 'network/bn1/gamma', which the architecture needs, is not"):
        load_model(path)


def test_missing_metadata(saved, tmp_path):
    with zipfile.ZipFile(saved) as src, zipfile.ZipFile(tmp_path / "f.xnor", "w") as dst:
        for info in src.infolist():
            if info.filename != METADATA:
                dst.writestr(info.filename, src.read(info))
    with pytest.raises(ModelFileError, match=r"not an xnorcore model file: it has no metadata\.json member"):
        load_model(tmp_path / "f.xnor")


def test_an_npz_of_arrays_is_not_a_model(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros(3))
    with pytest.raises(ModelFileError, match=r"a\.npz: not an xnorcore model file: it has no metadata\.json"):
        load_model(tmp_path / "a.npz")


@pytest.mark.parametrize("file", ["saved", "cnn_saved"])
@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 99])
def test_version_too_new(request, tmp_path, file, version):
    def forge(m):
        m["format_version"] = version
        m["xnorcore_version"] = "9.0"
    path = _rewrite(request.getfixturevalue(file), tmp_path / "f.xnor", meta=forge)
    with pytest.raises(ModelFileError, match=rf"f\.xnor: was written in format version {version} \(by xnorcore "
                                             rf"'9\.0'\); this xnorcore reads versions up to {FORMAT_VERSION}: "
                                             r"upgrade xnorcore"):
        load_model(path)


@pytest.mark.parametrize("key, value, message", [
    ("format", "other", r"not an xnorcore model file: format is 'other'"),
    ("format_version", "1", r"metadata 'format_version' must be int, got '1'"),
    ("format_version", 0, r"format_version must be at least 1, got 0"),
    ("format_version", True, r"metadata 'format_version' must be int, got True"),
    ("estimator", "MLPClassifier", r"holds a 'MLPClassifier', expected a BNNClassifier"),
    ("model_kind", "transformer", r"unknown model kind 'transformer': this xnorcore loads \['cnn', 'mlp'\]"),
    ("training_state", "yes", r"metadata 'training_state' must be bool"),
    ("arrays", [], r"metadata 'arrays' must be dict"),
    ("params", None, r"metadata 'params' must be dict"),
    ("inference", None, r"the inference metadata disagrees"),
])
def test_forged_metadata(saved, tmp_path, key, value, message):
    def forge(m):
        m[key] = value
    path = _rewrite(saved, tmp_path / "f.xnor", meta=forge)
    with pytest.raises(ModelFileError, match=r"f\.xnor: " + message):
        load_model(path)


@pytest.mark.parametrize("section, key, value, message", [
    ("fitted", "n_features_in_", 63, r"n_features_in_=63 but the network reads 64 features"),
    ("fitted", "classes_", {"dtype": "<i8", "values": [0, 1]}, r"classes_ has 2 labels but the network has 10"),
    ("fitted", "classes_", {"dtype": "|O", "values": [[1], 2]}, r"classes_ of dtype object must hold only"),
    ("fitted", "classes_", {"dtype": "<i8", "values": ["a"] * 10}, r"classes_: values do not match dtype int64"),
    ("fitted", "classes_", {"dtype": "<i1", "values": list(range(1000, 1010))}, r"classes_: values do not fit"),
    ("fitted", "classes_", {"dtype": "<M8[s]", "values": list(range(10))}, r"classes_ must be numbers or strings"),
    ("fitted", "classes_", {"dtype": "nonsense", "values": list(range(10))}, r"classes_ has an unknown dtype"),
    ("fitted", "classes_", [1, 2], r"metadata 'fitted\.classes_' must be dict, got \[1, 2\]"),
    ("fitted", "feature_names_in_", ["a"], r"feature_names_in_ must be 64 strings"),
    ("fitted", "input_scale_", -1.0, r"input_scale_ must be positive"),
    ("fitted", "input_scale_", "1", r"metadata 'fitted\.input_scale_' must be float"),
    ("fitted", "device_", "tpu", r"device_ must be 'cpu' or 'gpu', got 'tpu'"),
    ("fitted", "loss_curve_", [1.0, "x"], r"metadata 'fitted\.loss_curve_' must be a list of finite numbers"),
    ("fitted", "n_iter_", -1, r"n_iter_ and t_ must be non-negative"),
    ("fitted", "xnor_", 1, r"metadata 'fitted\.xnor_' must be bool, got 1"),
    ("architecture", "n_features", 0, r"architecture is not a network"),
    ("architecture", "hidden_layer_sizes", [48, -1], r"architecture is not a network"),
    ("architecture", "dropout", 1.5, r"architecture dropout must be in \[0, 1\)"),
    ("architecture", "input_dropout", 1.0, r"architecture input_dropout must be in \[0, 1\), got 1\.0"),
    ("architecture", "input_dropout", "0.2", r"metadata 'architecture\.input_dropout' must be float"),
    ("params", "max_iter", 0, r"params are not valid BNNClassifier parameters: .*max_iter"),
    ("params", "evil", 1, r"params has unknown parameters \['evil'\]"),
    ("optimizer", "t", "1", r"metadata 'optimizer\.t' must be int"),
    ("random_state", "pos", 5000, r"random_state has pos=5000"),
])
def test_forged_values(saved, tmp_path, section, key, value, message):
    def forge(m):
        m[section][key] = value
    path = _rewrite(saved, tmp_path / "f.xnor", meta=forge)
    with pytest.raises(ModelFileError, match=r"f\.xnor: " + message):
        load_model(path)


def test_files_without_input_dropout_load(saved, tmp_path):
    """Files written before input_dropout record it neither as a parameter nor in the architecture."""
    def forge(m):
        assert m["architecture"]["input_dropout"] == m["params"]["input_dropout"] == 0.2
        del m["architecture"]["input_dropout"], m["params"]["input_dropout"]
    clf = load_model(_rewrite(saved, tmp_path / "f.xnor", meta=forge))
    assert clf.network_.blocks[0].dense.dropout == 0.0
    assert clf.get_params()["input_dropout"] == BNNClassifier().input_dropout
    np.testing.assert_array_equal(clf.predict_proba(np.zeros((2, clf.n_features_in_))),
                                  load_model(saved).predict_proba(np.zeros((2, clf.n_features_in_))))


def test_forged_batch_norm_layers(saved, tmp_path):
    def forge(m):
        m["layers"]["bn1"]["eps"] = 0
    with pytest.raises(ModelFileError, match=r"layer bn1: eps must be > 0"):
        load_model(_rewrite(saved, tmp_path / "f.xnor", meta=forge))

    def drop(m):
        del m["layers"]["bn2"]
    with pytest.raises(ModelFileError, match=r"metadata layers lists \['bn1'\], but .* are \['bn1', 'bn2'\]"):
        load_model(_rewrite(saved, tmp_path / "g.xnor", meta=drop))


@pytest.mark.parametrize("file, member, value, message", [
    ("saved", "arrays/network/dense1/weight.npy", np.nan,
     r"array 'network/dense1/weight' holds NaN or infinite values"),
    ("saved", "arrays/input_mean.npy", np.inf, r"array 'input_mean' holds NaN or infinite values"),
    ("saved", "arrays/network/bn1/running_var.npy", -1.0, r"a batch-norm running_var is negative"),
    ("saved", "arrays/adam/v/dense1/weight.npy", -1.0, r"an Adam second moment \(adam/v\) is negative"),
    ("cnn_saved", "arrays/network/conv1/weight.npy", np.nan,
     r"array 'network/conv1/weight' holds NaN or infinite values"),
    ("cnn_saved", "arrays/network/conv_bn2/running_var.npy", -1.0, r"a batch-norm running_var is negative"),
    ("cnn_saved", "arrays/adam/v/conv2/weight.npy", -1.0, r"an Adam second moment \(adam/v\) is negative"),
])
def test_forged_array_values(request, tmp_path, file, member, value, message):
    saved = request.getfixturevalue(file)
    with zipfile.ZipFile(saved) as zf:
        a = np.load(io.BytesIO(zf.read(member)))
    a = a.copy()
    a.flat[0] = value
    path = _rewrite(saved, tmp_path / "f.xnor", members={member: _npy(a)})
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


def test_padding_bits_of_packed_weights(model, tmp_path):
    path = tmp_path / "m.xnor"
    save_model(model, path, training_state=False)
    with zipfile.ZipFile(path) as zf:
        words = np.load(io.BytesIO(zf.read("arrays/network/dense2/weight_bits.npy"))).copy()
    words[0, -1] |= np.uint64(1) << np.uint64(63)  # 48 inputs: bits 48..63 are padding
    forged = _rewrite(path, tmp_path / "f.xnor", members={"arrays/network/dense2/weight_bits.npy": _npy(words)})
    with pytest.raises(ModelFileError, match=r"array 'network/dense2/weight_bits': words has padding bits set"):
        load_model(forged)


def test_packed_words_of_wrong_count(model, tmp_path):
    path = tmp_path / "m.xnor"
    save_model(model, path, training_state=False)
    forged = _replace_array(path, tmp_path / "f.xnor", "network/dense2/weight_bits", np.zeros((65, 2), np.uint64))
    with pytest.raises(ModelFileError, match=r"weight_bits' is recorded as .*shape \[65, 1\]"):
        load_model(forged)


def test_truncated_member_data(saved, tmp_path):
    with zipfile.ZipFile(saved) as zf:
        data = zf.read("arrays/network/dense1/weight.npy")
    path = _rewrite(saved, tmp_path / "f.xnor", members={"arrays/network/dense1/weight.npy": data[:-4]})
    with pytest.raises(ModelFileError, match=r"member arrays/network/dense1/weight\.npy is truncated"):
        load_model(path)


def test_trailing_member_data(saved, tmp_path):
    with zipfile.ZipFile(saved) as zf:
        data = zf.read("arrays/input_mean.npy")
    path = _rewrite(saved, tmp_path / "f.xnor", members={"arrays/input_mean.npy": data + b"\0" * 8})
    with pytest.raises(ModelFileError, match=r"member arrays/input_mean\.npy has data after its array"):
        load_model(path)


def test_member_that_is_not_npy(saved, tmp_path):
    path = _rewrite(saved, tmp_path / "f.xnor", members={"arrays/input_mean.npy": b"hello world, not an array"})
    with pytest.raises(ModelFileError, match=r"member arrays/input_mean\.npy is not a \.npy array"):
        load_model(path)


def test_corrupt_member_fails_its_checksum(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    with zipfile.ZipFile(saved) as zf:
        info = zf.getinfo("arrays/network/dense1/weight.npy")
    # flip one byte inside the stored (uncompressed) data of the member
    offset = info.header_offset + 30 + len(info.filename) + len(info.extra) + 200
    data[offset] ^= 0xFF
    path = tmp_path / "f.xnor"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=r"member arrays/network/dense1/weight\.npy cannot be read "
                                             r"\(BadZipFile: Bad CRC-32"):
        load_model(path)


@pytest.mark.parametrize("text, message", [
    (b"not json", r"metadata\.json is not valid JSON"),
    (b"[1, 2]", r"metadata\.json must be a JSON object, got list"),
    (b'{"format": NaN}', r"metadata\.json is not valid JSON \(NaN is not a number in JSON\)"),
    (b"\xff\xfe", r"metadata\.json is not valid JSON"),
    (b"[" * 100000, r"metadata\.json is not valid JSON"),
])
def test_bad_metadata_text(saved, tmp_path, text, message):
    with zipfile.ZipFile(saved) as src, zipfile.ZipFile(tmp_path / "f.xnor", "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, text if info.filename == METADATA else src.read(info))
    with pytest.raises(ModelFileError, match=message):
        load_model(tmp_path / "f.xnor")


def test_duplicate_members(saved, tmp_path):
    with zipfile.ZipFile(saved) as zf:
        data = zf.read("arrays/input_mean.npy")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        path = _rewrite(saved, tmp_path / "f.xnor", add={"arrays/input_mean.npy": data})
    with pytest.raises(ModelFileError, match=r"the archive has duplicate member names"):
        load_model(path)


def test_model_kinds_registry():
    assert set(MODEL_KINDS) == {"mlp", "cnn"}


# ---------------------------------------------------------------- the command line
CLI_TINY = ["--layers", "8,8", "--batch_size", "20", "--reg", "0", "--quiet", "--max_steps", "2"]


def test_cli_save_writes_a_model_file_and_a_failed_save_keeps_the_old_one(tmp_path, monkeypatch, capsys):
    from xnorcore import cli

    path = tmp_path / "model.xnor"
    assert cli.main(["train", "--save", str(path), *CLI_TINY]) == 0
    loaded = load_model(path)
    assert loaded.optimizer_ is not None and len(loaded.loss_curve_) == 2
    before = path.read_bytes()

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "writestr", full_disk)
    capsys.readouterr()
    assert cli.main(["train", "--restore", str(path), "--save", str(path), *CLI_TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"xnorcore train: error: --save: cannot write {path}: No space left on device"]
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.xnor"]


def test_cli_restore_of_a_forged_model_file_is_one_line(saved, tmp_path, capsys):
    from xnorcore import cli

    def forge(m):
        m["format_version"] = FORMAT_VERSION + 1
    path = _rewrite(saved, tmp_path / "f.xnor", meta=forge)
    assert cli.main(["train", "--restore", str(path), *CLI_TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"xnorcore train: error: --restore: {path}: was written in format version "
                             f"{FORMAT_VERSION + 1}")


# ---------------------------------------------------------------- CNNs
@pytest.fixture(scope="module")
def cnn(digits):
    return _fit(*digits, **CNN_BASE)


@pytest.fixture
def cnn_saved(cnn, tmp_path):
    return _saved(cnn, tmp_path / "cnn.xnor")


@pytest.fixture
def cnn_packed(cnn, tmp_path):
    """The CNN saved without training state: binary conv weights as packed words."""
    return _saved(cnn, tmp_path / "cnn-packed.xnor", training_state=False)


def _same_cnn(a, b, X):
    _same_fitted(a, b, X)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    assert type(b.network_) is type(a.network_)
    assert b.image_shape_ == a.image_shape_ == (8, 8, 1)
    assert b.network_.conv_layers == a.network_.conv_layers
    summaries = [{k: v for k, v in m.summary(as_dict=True).items() if k != "training_state_bytes"} for m in (a, b)]
    assert summaries[0] == summaries[1]


def test_cnn_file_layout(cnn, cnn_packed, cnn_saved):
    meta = _meta(cnn_packed)
    assert meta["model_kind"] == "cnn" and meta["training_state"] is False
    assert meta["architecture"] == {
        "image_shape": [8, 8, 1], "conv_layers": [["conv", 4, [3, 3]], ["pool"], ["conv", 8, [3, 2]]],
        "n_outputs": 10, "hidden_layer_sizes": [16], "binary": True, "batch_norm": True, "dropout": 0.2,
        "binarize_last": False,
    }
    arrays = meta["arrays"]
    assert arrays["network/conv1/weight"] == {"dtype": "<f4", "shape": [3, 3, 1, 4]}  # the real first layer
    assert arrays["network/conv2/weight_bits"] == {"dtype": "<u8", "shape": [3, 2, 8, 1]}  # HWO, words of C
    assert arrays["network/conv_bn2/running_var"] == {"dtype": "<f4", "shape": [8]}
    assert arrays["network/dense1/weight_bits"] == {"dtype": "<u8", "shape": [16, 2]}  # 4 * 4 * 8 inputs
    assert "network/conv2/weight" not in arrays and not any(k.startswith("adam/") for k in arrays)
    conv = meta["inference"]["conv"]
    assert [(c["kernel"], c["stride"], c["padding"], c["pool"]) for c in conv] == [
        ([3, 3], 1, [[1, 1], [1, 1]], 2), ([3, 2], 1, [[1, 1], [0, 1]], None)]
    # the packed words are sign(W) packed along the input channels
    with zipfile.ZipFile(cnn_packed) as zf:
        words = np.load(io.BytesIO(zf.read("arrays/network/conv2/weight_bits.npy")))
    np.testing.assert_array_equal(words, xnorcore.pack_bits(cnn.network_.features.blocks[1].conv.weight, axis=2).words)
    full = _meta(cnn_saved)["arrays"]
    assert full["network/conv2/weight"] == {"dtype": "<f4", "shape": [3, 2, 4, 8]}
    assert full["adam/m/conv2/weight"] == full["adam/v/conv2/weight"] == {"dtype": "<f4", "shape": [3, 2, 4, 8]}


def test_cnn_save_changes_nothing(cnn, digits, tmp_path):
    X, _ = digits
    before = cnn.decision_function(X)
    save_model(cnn, tmp_path / "a.xnor", training_state=False)
    assert cnn.optimizer_ is not None and cnn.network_.has_training_state
    assert cnn.network_.features.blocks[1].conv.weight is not None
    np.testing.assert_array_equal(cnn.decision_function(X), before)


def test_cnn_with_dropped_training_state(cnn, digits, tmp_path):
    X, _ = digits
    dropped = _clone_dropped(cnn)
    save_model(dropped, tmp_path / "m.xnor", training_state=False)
    _same_cnn(dropped, load_model(tmp_path / "m.xnor"), X)
    with pytest.raises(ValueError, match="training state was dropped.*training_state=False"):
        save_model(dropped, tmp_path / "n.xnor")


def test_cnn_of_images_given_as_4d_x(digits, tmp_path):
    X, y = digits
    clf = _fit(X.reshape(-1, 8, 8, 1), y, hidden_layer_sizes=(16,), conv_layers=(4, "pool"))
    save_model(clf, tmp_path / "m.xnor")
    loaded = load_model(tmp_path / "m.xnor")
    assert loaded.image_shape_ == (8, 8, 1) and loaded.image_shape is None
    np.testing.assert_array_equal(loaded.predict_proba(X.reshape(-1, 8, 8, 1)), clf.predict_proba(X))
    with pytest.raises(ValueError, match=r"X holds images of shape \(4, 16, 1\), but the model was fitted on "
                                         r"images of shape \(8, 8, 1\)"):
        loaded.predict(X.reshape(-1, 4, 16, 1))


def _architecture_forge(**changes):
    def forge(m):
        m["architecture"].update(changes)
    return forge


@pytest.mark.parametrize("changes, message", [
    (dict(conv_layers=[["conv", 0, [3, 3]], ["pool"]]),
     r"architecture conv_layers\[0\] must be \[\"pool\"\] or \[\"conv\", channels, \[kernel_height, "
     r"kernel_width\]\] of positive ints, got \['conv', 0, \[3, 3\]\]"),
    (dict(conv_layers=[["conv", 4, [3, 3]], ["dense", 4]]), r"architecture conv_layers\[1\] must be .*'dense'"),
    (dict(conv_layers=[["conv", 4, [3]]]), r"architecture conv_layers\[0\] must be .*got \['conv', 4, \[3\]\]"),
    (dict(conv_layers=[["conv", 4, [3, 3], 1]]),
     r"architecture conv_layers\[0\] must be .*got \['conv', 4, \[3, 3\], 1\]$"),
    (dict(conv_layers=[["conv", True, [3, 3]]]),
     r"architecture conv_layers\[0\] must be .*got \['conv', True, \[3, 3\]\]$"),
    (dict(conv_layers=[["conv", 4, [3, 3.5]]]),
     r"architecture conv_layers\[0\] must be .*got \['conv', 4, \[3, 3\.5\]\]$"),
    (dict(conv_layers=["pool"]), r"architecture conv_layers\[0\] must be .*got 'pool'"),
    (dict(conv_layers=[]), r"architecture conv_layers is empty: a cnn has conv layers"),
    (dict(conv_layers="auto"), r"metadata 'architecture\.conv_layers' must be list, got 'auto'"),
    (dict(conv_layers=[["conv", 4, [3, 3]], ["pool"], ["pool"], ["pool"], ["pool"]]),
     r"architecture is not a network: conv_layers=.* pools an 1x1 image"),
    (dict(image_shape=[8, 8]), r"architecture image_shape must be \[height, width, channels\] of positive ints, "
                               r"got \[8, 8\]"),
    (dict(image_shape=[8, 0, 1]), r"architecture image_shape must be \[height, width, channels\] of positive ints, "
                                  r"got \[8, 0, 1\]$"),
    (dict(image_shape=[8, 8, 2]), r"n_features_in_=64 but the network reads 128 features"),
    (dict(image_shape=[4, 16, 1]), r"the inference metadata disagrees with the packed model these arrays make "
                                   r"\(inference\.image_shape: the file records \[8, 8, 1\], the arrays make "
                                   r"\[4, 16, 1\]\)"),
    # a channel count that does not chain into the next layer
    (dict(conv_layers=[["conv", 5, [3, 3]], ["pool"], ["conv", 8, [3, 2]]]),
     r"array 'network/conv1/weight' is recorded as .*architecture needs dtype <f4 and shape \[3, 3, 1, 5\]"),
    (dict(conv_layers=[["conv", 4, [3, 3]], ["pool"], ["conv", 8, [2, 3]]]),
     r"array 'network/conv2/weight' is recorded as .*needs dtype <f4 and shape \[2, 3, 4, 8\]"),
    # without the pool, the dense layer would read 8 * 8 * 8 features
    (dict(conv_layers=[["conv", 4, [3, 3]], ["conv", 8, [3, 2]]]),
     r"array 'network/dense1/weight' is recorded as .*needs dtype <f4 and shape \[512, 16\]"),
    # the pool moved behind conv2: every shape is the same, the packed model is not
    (dict(conv_layers=[["conv", 4, [3, 3]], ["conv", 8, [3, 2]], ["pool"]]),
     r"the inference metadata disagrees with the packed model these arrays make \(inference\.conv\[0\]\.pool: "
     r"the file records 2, the arrays make None\)"),
    (dict(conv_layers=[["conv", 10 ** 6, [3, 3]], ["pool"], ["conv", 8, [3, 2]]]),
     # 9 * 10**6 + 3 * 2 * 10**6 * 8 conv weights, 4 * 4 * 8 * 16 + 16 * 10 dense ones
     r"architecture needs 57002208 weights, more than the file can hold \(\d+ at most\)"),
    # 4 * 4 * 8 * 10**9 + 10**9 * 10 dense weights, 3 * 3 * 4 + 3 * 2 * 4 * 8 conv ones
    (dict(hidden_layer_sizes=[10 ** 9]), r"architecture needs 138000000228 weights, more than the file can hold"),
    (dict(n_outputs=1), r"architecture is not a network: n_outputs=1"),
    (dict(dropout=-0.5), r"architecture dropout must be in \[0, 1\), got -0\.5"),
    (dict(binary="yes"), r"metadata 'architecture\.binary' must be bool"),
])
def test_cnn_forged_architecture(cnn_saved, tmp_path, changes, message):
    path = _rewrite(cnn_saved, tmp_path / "f.xnor", meta=_architecture_forge(**changes))
    with pytest.raises(ModelFileError, match=r"f\.xnor: " + message):
        load_model(path)


def test_cnn_kind_with_the_architecture_of_an_mlp(cnn_saved, saved, tmp_path):
    def forge(m):
        m["model_kind"] = "mlp"
    with pytest.raises(ModelFileError, match=r"f\.xnor: metadata has no 'architecture\.n_features'$"):
        load_model(_rewrite(cnn_saved, tmp_path / "f.xnor", meta=forge))

    def as_cnn(m):
        m["model_kind"] = "cnn"
    with pytest.raises(ModelFileError, match=r"g\.xnor: metadata has no 'architecture\.image_shape'"):
        load_model(_rewrite(saved, tmp_path / "g.xnor", meta=as_cnn))


@pytest.mark.parametrize("key, value, message", [
    ("stride", 2, r"inference\.conv\[1\]\.stride: the file records 2, the arrays make 1"),
    ("padding", [[0, 0], [0, 0]], r"inference\.conv\[1\]\.padding: the file records \[\[0, 0\], \[0, 0\]\], the "
                                  r"arrays make \[\[1, 1\], \[0, 1\]\]"),
    ("pool", 2, r"inference\.conv\[1\]\.pool: the file records 2, the arrays make None"),
    ("in_channels", 5, r"inference\.conv\[1\]\.in_channels: the file records 5, the arrays make 4"),
    ("binary_weights", False, r"inference\.conv\[1\]\.binary_weights: the file records False"),
])
def test_cnn_forged_inference_metadata(cnn_saved, tmp_path, key, value, message):
    def forge(m):
        m["inference"]["conv"][1][key] = value
    path = _rewrite(cnn_saved, tmp_path / "f.xnor", meta=forge)
    with pytest.raises(ModelFileError, match=r"f\.xnor: the inference metadata disagrees with the packed model "
                                             r"these arrays make \(" + message):
        load_model(path)


def test_cnn_consistent_arrays_of_another_channel_count(cnn_saved, tmp_path):
    # conv2 recorded and stored with 5 input channels, but conv1 makes 4
    def forge(m):
        for key in ("network/conv2/weight", "adam/m/conv2/weight", "adam/v/conv2/weight"):
            m["arrays"][key]["shape"] = [3, 2, 5, 8]
    five = _npy(np.zeros((3, 2, 5, 8), np.float32))
    path = _rewrite(cnn_saved, tmp_path / "f.xnor", meta=forge, members={
        "arrays/network/conv2/weight.npy": five, "arrays/adam/m/conv2/weight.npy": five,
        "arrays/adam/v/conv2/weight.npy": five})
    with pytest.raises(ModelFileError, match=r"f\.xnor: array 'network/conv2/weight' is recorded as .*architecture "
                                             r"needs dtype <f4 and shape \[3, 2, 4, 8\]"):
        load_model(path)


def test_cnn_padding_bits_of_packed_conv_weights(cnn_packed, tmp_path):
    with zipfile.ZipFile(cnn_packed) as zf:
        words = np.load(io.BytesIO(zf.read("arrays/network/conv2/weight_bits.npy"))).copy()
    words[2, 1, 7, 0] |= np.uint64(1) << np.uint64(4)  # 4 input channels: bits 4..63 are padding
    path = _rewrite(cnn_packed, tmp_path / "f.xnor", members={"arrays/network/conv2/weight_bits.npy": _npy(words)})
    with pytest.raises(ModelFileError, match=r"f\.xnor: array 'network/conv2/weight_bits': words has padding bits "
                                             r"set: bits 4\.\.63 of the last word must be 0 for length=4 "
                                             r"\(shape=\(3, 2, 4, 8\), axis=2\)"):
        load_model(path)


def test_cnn_forged_batch_norm_layers(cnn_saved, tmp_path):
    def drop(m):
        del m["layers"]["conv_bn1"]
    with pytest.raises(ModelFileError, match=r"metadata layers lists \['bn1', 'conv_bn2'\], but the network's "
                                             r"batch-norm layers are \['bn1', 'conv_bn1', 'conv_bn2'\]"):
        load_model(_rewrite(cnn_saved, tmp_path / "f.xnor", meta=drop))


def test_cnn_array_of_a_layer_it_has_not(cnn_saved, tmp_path):
    def forge(m):
        m["arrays"]["network/conv3/weight"] = {"dtype": "<f4", "shape": [3, 3, 8, 8]}
    path = _rewrite(cnn_saved, tmp_path / "f.xnor", meta=forge,
                    add={"arrays/network/conv3/weight.npy": _npy(np.zeros((3, 3, 8, 8), np.float32))})
    with pytest.raises(ModelFileError, match=r"array 'network/conv3/weight' is not part of a cnn model with this "
                                             r"architecture \(training_state=True\)"):
        load_model(path)
