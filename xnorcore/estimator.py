"""BNNClassifier: a scikit-learn classifier backed by a binary neural network."""

import copy
import math
import numbers
import sys
import time

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, check_random_state, column_or_1d, validate_data

from .nn import Adam, Network
from .nn._loss import log_softmax
from .nn._network import _to_numpy
from .ops import get_array_module

__all__ = ["BNNClassifier"]

_F32 = np.float32
#: Rows per block in predict: the intermediates of a 1024-unit layer stay near 16 MB.
_PREDICT_ROWS = 4096


def _gpu_module(required):
    """Return cupy if a CUDA device can be used, else None (or raise if ``required``)."""
    try:
        import cupy
    except ImportError:
        if required:
            raise RuntimeError(
                "device='gpu' needs CuPy, which is not installed; install it with "
                "pip install 'xnorcore[gpu]', or use device='cpu'"
            ) from None
        return None
    try:
        n_devices = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA driver missing or broken
        if required:
            raise RuntimeError(
                f"device='gpu' but no CUDA device could be used ({exc}); use device='cpu'"
            ) from None
        return None
    if n_devices < 1:
        if required:
            raise RuntimeError("device='gpu' but no CUDA device was found; use device='cpu'")
        return None
    return cupy


def _gpu_xnor_available():
    try:
        from . import _gpu

        _gpu.require()
    except Exception:
        return False
    return True


def _cpu_xnor_fast():
    """Whether the CPU backend is the compiled kernel (not a pure numpy fallback)."""
    try:
        from . import _cpu

        return _cpu.config().get("popcount", "numpy") != "numpy"
    except Exception:
        return False


def _check_int(value, name, low, allow_none=False):
    if allow_none and value is None:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {name}={value!r}")
    return int(value)


def _check_float(value, name, low, high, low_open=False, high_open=False):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lb = "(" if low_open else "["
        rb = ")" if high_open else "]"
        raise ValueError(f"{name} must be a real number in {lb}{low}, {high}{rb}, got {name}={value!r}")
    return float(value)


def _check_choice(value, name, choices):
    if not any(value is c or (type(value) is type(c) and value == c) for c in choices):
        raise ValueError(f"{name} must be one of {choices}, got {name}={value!r}")
    return value


class BNNClassifier(ClassifierMixin, BaseEstimator):
    """Classifier built on a binary neural network (BinaryNet-style MLP).

    Hidden layers have binary (+1/-1) weights and activations: the first layer
    reads the real-valued input, the output layer gives real-valued logits.
    Training keeps real "latent" weights in [-1, 1], binarizes them with sign
    (``sign(0) = +1``) in the forward pass and trains them through the
    straight-through estimator (the gradient of sign is 1 where ``|x| <= 1``,
    0 elsewhere), with batch norm, dropout, Adam and softmax cross-entropy.

    After fitting, binary layers are stored bit-packed and :meth:`predict`
    runs on packed bits: one XNOR-popcount product per layer, with batch norm
    and sign folded into one integer threshold per unit.

    Parameters
    ----------
    hidden_layer_sizes : tuple of int, default=(1024, 1024, 1024)
        Width of each hidden layer.
    binary : bool, default=True
        Binary hidden weights and activations.  ``False`` trains a real-valued
        network (ReLU, batch norm) with the same code, for comparison.
    xnor : {"auto", True, False}, default="auto"
        Compute binary x binary products in training with
        :func:`xnorcore.binary_matmul` (XNOR and popcount) instead of a float
        matrix product.  The two give identical results; "auto" uses XNOR on the
        CPU when the compiled kernel is available and the float product on the
        GPU, whichever trained faster in benchmarks/train_bench.py.  Prediction
        of a binary network always runs on packed bits.
    batch_norm : bool, default=True
        Batch normalization after each hidden dense layer.
    binarize_first : bool, default=False
        Binarize the weights of the first layer too (its input stays real).
    binarize_last : bool, default=False
        Binarize the weights of the output layer too (followed by batch norm).
    learning_rate_init : float, default=0.003
        Adam's initial step size.
    lr_schedule : {"cosine", "exponential", "constant"}, default="cosine"
        How the step size decays over the ``max_iter`` epochs of :meth:`fit`,
        down to ``learning_rate_init / 100`` at the last epoch.
        :meth:`partial_fit` always uses ``learning_rate_init``.
    batch_size : int, default=200
        Minibatch size (capped at the number of training samples).
    max_iter : int, default=20
        Number of epochs of :meth:`fit`.
    reg : float, default=0.0
        L1 penalty on all weights.
    dropout : float, default=0.0
        Dropout probability on the input of every layer after the first.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the data, stop when its accuracy
        has not improved by ``tol`` for ``n_iter_no_change`` epochs, and keep
        the best weights.
    validation_fraction : float, default=0.1
        Fraction of the training data held out for early stopping.
    n_iter_no_change : int, default=10
        Epochs without improvement before stopping.
    tol : float, default=1e-4
        Minimum improvement of the validation score (early stopping) or of
        the training loss (otherwise).
    shuffle : bool, default=True
        Shuffle the samples each epoch.
    random_state : int, RandomState instance or None, default=None
        Seed for weight initialization, shuffling, dropout and the validation
        split.
    device : {"auto", "cpu", "gpu"}, default="auto"
        Where to train: "auto" uses a CUDA GPU through CuPy if one is usable.
        The fitted model predicts on the CPU once pickled and loaded.
    verbose : bool, default=False
        Print the loss, validation score and examples/s after each epoch (and
        show a progress bar when attached to a terminal).
    warm_start : bool, default=False
        Continue training the previous network on the next :meth:`fit`.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Feature names, when X has string column names.
    network_ : xnorcore.nn.Network
        The trained network (``network_.histograms()`` gives weights,
        binarized weights, activations and gradients per layer).
    optimizer_ : xnorcore.nn.Adam
        Optimizer state, kept for :meth:`partial_fit` and ``warm_start``.
    loss_curve_ : list of float
        Mean training loss of each epoch (or :meth:`partial_fit` call).
    n_iter_ : int
        Number of epochs run.
    t_ : int
        Number of training samples seen.
    validation_scores_ : list of float or None
        Validation accuracy per epoch (``early_stopping=True`` only).
    best_validation_score_ : float or None
        Best validation accuracy (``early_stopping=True`` only).
    best_loss_ : float
        Lowest training loss of an epoch.
    device_ : str
        "cpu" or "gpu": where the model was trained.
    xnor_ : bool
        Whether XNOR products were used in training.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from xnorcore import BNNClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = BNNClassifier(hidden_layer_sizes=(256,), max_iter=5, random_state=0).fit(X, y)
    >>> clf.score(X, y) > 0.9
    True
    """

    def __init__(
        self,
        hidden_layer_sizes=(1024, 1024, 1024),
        *,
        binary=True,
        xnor="auto",
        batch_norm=True,
        binarize_first=False,
        binarize_last=False,
        learning_rate_init=0.003,
        lr_schedule="cosine",
        batch_size=200,
        max_iter=20,
        reg=0.0,
        dropout=0.0,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=10,
        tol=1e-4,
        shuffle=True,
        random_state=None,
        device="auto",
        verbose=False,
        warm_start=False,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.binary = binary
        self.xnor = xnor
        self.batch_norm = batch_norm
        self.binarize_first = binarize_first
        self.binarize_last = binarize_last
        self.learning_rate_init = learning_rate_init
        self.lr_schedule = lr_schedule
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.reg = reg
        self.dropout = dropout
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.shuffle = shuffle
        self.random_state = random_state
        self.device = device
        self.verbose = verbose
        self.warm_start = warm_start

    # ------------------------------------------------------------ validation
    def _check_params(self):
        """Validate the hyper-parameters and return them normalized."""
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, numbers.Integral) and not isinstance(sizes, bool):
            sizes = (sizes,)
        try:
            sizes = tuple(sizes)
        except TypeError:
            raise ValueError(
                f"hidden_layer_sizes must be a tuple of positive integers, got "
                f"hidden_layer_sizes={self.hidden_layer_sizes!r}"
            ) from None
        if not all(isinstance(h, numbers.Integral) and not isinstance(h, bool) and h >= 1 for h in sizes):
            raise ValueError(
                f"hidden_layer_sizes must be a tuple of positive integers, got "
                f"hidden_layer_sizes={self.hidden_layer_sizes!r}"
            )
        for name in ("binary", "batch_norm", "binarize_first", "binarize_last", "early_stopping",
                     "shuffle", "verbose", "warm_start"):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {name}={value!r}")
        _check_choice(self.xnor, "xnor", ("auto", True, False))
        _check_choice(self.device, "device", ("auto", "cpu", "gpu"))
        _check_choice(self.lr_schedule, "lr_schedule", ("cosine", "exponential", "constant"))
        return {
            "hidden_layer_sizes": tuple(int(h) for h in sizes),
            "learning_rate_init": _check_float(self.learning_rate_init, "learning_rate_init", 0, np.inf,
                                               low_open=True, high_open=True),
            "batch_size": _check_int(self.batch_size, "batch_size", 1),
            "max_iter": _check_int(self.max_iter, "max_iter", 1),
            "reg": _check_float(self.reg, "reg", 0, np.inf, high_open=True),
            "dropout": _check_float(self.dropout, "dropout", 0, 1, high_open=True),
            "validation_fraction": _check_float(self.validation_fraction, "validation_fraction", 0, 1,
                                                low_open=True, high_open=True),
            "n_iter_no_change": _check_int(self.n_iter_no_change, "n_iter_no_change", 1),
            "tol": _check_float(self.tol, "tol", 0, np.inf, high_open=True),
        }

    def _resolve_device(self):
        if self.device == "cpu":
            return np
        cupy = _gpu_module(required=self.device == "gpu")
        return cupy if cupy is not None else np

    def _resolve_xnor(self, xp):
        if not self.binary:
            return False
        on_gpu = xp is not np
        if self.xnor == "auto":
            # Training's float backward passes dominate; on an H100 the XNOR
            # forward trained at 0.81-0.87x the speed of cuBLAS (2026-11-25), on
            # the 2-core CPU 1.1x faster than OpenBLAS (benchmarks/RESULTS.md).
            return False if on_gpu else _cpu_xnor_fast()
        if self.xnor and on_gpu and not _gpu_xnor_available():
            from . import _gpu

            _gpu.require()  # raises with the reason
        return bool(self.xnor)

    def _validate_X(self, X, reset):
        X = validate_data(self, X, reset=reset, dtype=(np.float32, np.float64),
                          ensure_min_samples=1)
        return np.asarray(X, dtype=_F32)

    def _validate_Xy(self, X, y, reset):
        X, y = validate_data(self, X, y, reset=reset, dtype=(np.float32, np.float64),
                             y_numeric=False, multi_output=False)
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        return np.asarray(X, dtype=_F32), y

    @staticmethod
    def _check_classes(classes, name):
        if len(classes) < 2:
            raise ValueError(
                f"BNNClassifier needs at least 2 classes in {name}, got 1 class: {np.asarray(classes).tolist()[0]!r}"
                if len(classes) == 1
                else f"BNNClassifier needs at least 2 classes in {name}, got none"
            )

    def _encode(self, y, classes):
        unknown = ~np.isin(y, classes)
        if unknown.any():
            raise ValueError(
                f"y contains labels not in classes_: {np.unique(y[unknown])[:10].tolist()}; "
                f"classes_={classes.tolist()}"
            )
        return np.searchsorted(classes, y).astype(np.int64)

    # ------------------------------------------------------------ training
    def _new_network(self, n_features, n_classes, params, xnor, rng, xp):
        return Network(
            n_features, n_classes, params["hidden_layer_sizes"], binary=self.binary,
            batch_norm=self.batch_norm, dropout=params["dropout"],
            binarize_first=self.binarize_first, binarize_last=self.binarize_last,
            xnor=xnor, random_state=rng, xp=xp,
        )

    def _standardize(self, X, mean, scale):
        return (X - mean) / scale

    @staticmethod
    def _input_stats(X):
        # Per-feature centring but one global scale: a per-feature scale blows
        # up features that happen to be constant in the first batch of
        # partial_fit (MNIST border pixels).
        mean = X.mean(axis=0, dtype=np.float64).astype(_F32)
        scale = float(np.sqrt(((X - mean) ** 2).mean(dtype=np.float64)))
        if not np.isfinite(scale) or scale <= 1e-12:
            scale = 1.0
        return mean, _F32(scale)

    def _lr(self, params, epoch):
        lr0 = params["learning_rate_init"]
        n = params["max_iter"]
        lr_min = lr0 / 100
        frac = epoch / max(n - 1, 1)
        if self.lr_schedule == "cosine":
            return lr_min + 0.5 * (lr0 - lr_min) * (1 + math.cos(math.pi * frac))
        if self.lr_schedule == "exponential":
            return lr0 * (lr_min / lr0) ** frac
        return lr0

    def _run_epoch(self, net, opt, Xd, yd, batch_size, lr, reg, perm_rng, drop_rng, shuffle, desc):
        """One pass over (Xd, yd) on their device; returns (mean loss, seconds)."""
        xp = get_array_module(Xd)
        n = Xd.shape[0]
        batch_size = min(batch_size, n)
        if shuffle:
            order = xp.asarray(perm_rng.permutation(n))
        else:
            order = None
        starts = range(0, n, batch_size)
        bar = None
        if self.verbose and sys.stderr.isatty():
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc=desc, unit="ex", leave=False, file=sys.stderr)
        t0 = time.perf_counter()
        total = 0.0
        for start in starts:
            if order is None:
                xb, yb = Xd[start:start + batch_size], yd[start:start + batch_size]
            else:
                idx = order[start:start + batch_size]
                xb, yb = Xd[idx], yd[idx]
            loss = net.train_step(xb, yb, opt, lr, reg=reg, rng=drop_rng)
            total = total + loss * xb.shape[0]
            if bar is not None:
                bar.update(xb.shape[0])
        total = float(total) / n
        seconds = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        return total, seconds

    def _score_device(self, net, Xd, y_idx):
        logits = net.forward(Xd, training=False)
        pred = _to_numpy(logits.argmax(axis=1))
        return float((pred == y_idx).mean())

    def fit(self, X, y):
        """Train the network on (X, y) for up to ``max_iter`` epochs.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data (dense; NaN and inf are rejected).
        y : array-like of shape (n_samples,)
            Class labels (at least two classes; any hashable labels).

        Returns
        -------
        self : BNNClassifier
            The fitted estimator.

        Raises
        ------
        ValueError
            On NaN/inf or sparse X, a single class, or bad hyper-parameters.
        RuntimeError
            If ``device="gpu"`` and CuPy or a CUDA device is missing.
        """
        params = self._check_params()
        warm = self.warm_start and hasattr(self, "network_")
        if warm and self.network_.hidden_layer_sizes != params["hidden_layer_sizes"]:
            raise ValueError(
                "warm_start=True needs the same hidden_layer_sizes as the fitted network, got "
                f"{params['hidden_layer_sizes']} and {self.network_.hidden_layer_sizes}"
            )
        if warm and self.optimizer_ is None:
            raise ValueError("warm_start=True cannot continue a model whose training state was dropped")
        X, y = self._validate_Xy(X, y, reset=not warm)
        xp = self._resolve_device()
        xnor = self._resolve_xnor(xp)
        rng = check_random_state(self.random_state)
        if warm:
            classes = self.classes_
            y_idx = self._encode(y, classes)
            mean, scale = self.input_mean_, self.input_scale_
            net = copy.deepcopy(self.network_).to(xp)
            opt = copy.deepcopy(self.optimizer_).to(xp)
            loss_curve = list(self.loss_curve_)
            n_iter, t = self.n_iter_, self.t_
        else:
            classes = np.unique(y)
            self._check_classes(classes, "y")
            y_idx = self._encode(y, classes)
            mean, scale = self._input_stats(X)
            net = self._new_network(X.shape[1], len(classes), params, xnor, rng, xp)
            opt = Adam()
            loss_curve, n_iter, t = [], 0, 0
        net.set_xnor(xnor)

        X_val = y_val = None
        X_fit, y_fit = X, y_idx
        if self.early_stopping:
            stratify = y_idx if np.bincount(y_idx).min() >= 2 else None
            X_fit, X_val, y_fit, y_val = train_test_split(
                X, y_idx, test_size=params["validation_fraction"], random_state=rng, stratify=stratify
            )
            if len(X_fit) == 0 or len(X_val) == 0:
                raise ValueError(
                    f"early_stopping needs samples on both sides of the validation split, got "
                    f"n_samples={len(X)} and validation_fraction={params['validation_fraction']}"
                )
        Xd = xp.asarray(self._standardize(X_fit, mean, scale))
        yd = xp.asarray(y_fit)
        Xv = xp.asarray(self._standardize(X_val, mean, scale)) if X_val is not None else None
        drop_rng = xp.random.RandomState(rng.randint(2**31 - 1))

        validation_scores = [] if self.early_stopping else None
        best_score = -np.inf
        best_loss = np.inf
        best_net = None
        no_improvement = 0
        for epoch in range(params["max_iter"]):
            lr = self._lr(params, epoch)
            loss, seconds = self._run_epoch(
                net, opt, Xd, yd, params["batch_size"], lr, params["reg"], rng, drop_rng,
                self.shuffle, desc=f"epoch {n_iter + 1}",
            )
            if not np.isfinite(loss):
                raise FloatingPointError(
                    f"the training loss became {loss} at epoch {n_iter + 1}; lower "
                    f"learning_rate_init (got {params['learning_rate_init']})"
                )
            n_iter += 1
            t += len(Xd)
            loss_curve.append(loss)
            message = f"Iteration {n_iter}, loss = {loss:.6f}"
            if self.early_stopping:
                score = self._score_device(net, Xv, y_val)
                validation_scores.append(score)
                message += f", validation score = {score:.4f}"
                if score > best_score + params["tol"]:
                    no_improvement = 0
                else:
                    no_improvement += 1
                if score > best_score:
                    best_score = score
                    best_net = copy.deepcopy(net)
            else:
                if loss > best_loss - params["tol"]:
                    no_improvement += 1
                else:
                    no_improvement = 0
            best_loss = min(best_loss, loss)
            if self.verbose:
                print(f"{message}, {len(Xd) / seconds:.0f} examples/s, lr = {lr:.2e}", flush=True)
            if no_improvement >= params["n_iter_no_change"]:
                if self.verbose:
                    print(f"No improvement for {no_improvement} epochs; stopping.", flush=True)
                break
        if best_net is not None:
            net = best_net
        if net.binary:
            net.pack()

        # Everything succeeded: only now does the estimator change.
        self.classes_ = classes
        self.input_mean_, self.input_scale_ = mean, scale
        self.network_ = net
        self.optimizer_ = opt
        self.loss_curve_ = loss_curve
        self.best_loss_ = float(min(loss_curve))
        self.n_iter_ = n_iter
        self.t_ = t
        self.validation_scores_ = validation_scores
        self.best_validation_score_ = float(best_score) if self.early_stopping else None
        self.device_ = "cpu" if xp is np else "gpu"
        self.xnor_ = xnor
        self._random_state = rng
        return self

    def partial_fit(self, X, y, classes=None):
        """One pass over (X, y) in minibatches of ``batch_size``.

        With ``len(X) == batch_size`` this is exactly one Adam step.  The
        optimizer state persists between calls; the step size is
        ``learning_rate_init`` (no schedule).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
        classes : array-like of shape (n_classes,), default=None
            All the classes that will ever appear; required on the first call.

        Returns
        -------
        self : BNNClassifier
        """
        first = not hasattr(self, "network_")
        if first and classes is None:
            raise ValueError(
                "classes must be passed on the first call to partial_fit "
                "(all the labels that will ever appear in y)"
            )
        params = self._check_params()
        if not first and self.optimizer_ is None:
            raise ValueError("partial_fit cannot continue a model whose training state was dropped")
        X, y = self._validate_Xy(X, y, reset=first)
        if first:
            all_classes = np.unique(column_or_1d(np.asarray(classes)))
            self._check_classes(all_classes, "classes")
        else:
            all_classes = self.classes_
            if classes is not None and not np.array_equal(np.unique(classes), self.classes_):
                raise ValueError(
                    f"classes={np.unique(classes).tolist()} is not the same as on the first call "
                    f"to partial_fit, classes_={self.classes_.tolist()}"
                )
        y_idx = self._encode(y, all_classes)
        xp = self._resolve_device()
        xnor = self._resolve_xnor(xp)
        if first:
            rng = check_random_state(self.random_state)
            mean, scale = self._input_stats(X)
            net = self._new_network(X.shape[1], len(all_classes), params, xnor, rng, xp)
            opt = Adam()
            loss_curve, best_loss, n_iter, t = [], np.inf, 0, 0
        else:
            net = self.network_.to(xp)
            opt = self.optimizer_.to(xp)
            rng = self._random_state
            mean, scale = self.input_mean_, self.input_scale_
            loss_curve, best_loss = self.loss_curve_, self.best_loss_
            n_iter, t = self.n_iter_, self.t_
        net.set_xnor(xnor)
        Xd = xp.asarray(self._standardize(X, mean, scale))
        yd = xp.asarray(y_idx)
        drop_rng = xp.random.RandomState(rng.randint(2**31 - 1))
        loss, seconds = self._run_epoch(
            net, opt, Xd, yd, params["batch_size"], params["learning_rate_init"], params["reg"],
            rng, drop_rng, self.shuffle, desc="partial_fit",
        )
        # Packing waits for the next predict: a training loop calling
        # partial_fit once per batch would otherwise pack every step.
        if first:
            self.classes_ = all_classes
            self.input_mean_, self.input_scale_ = mean, scale
            self.validation_scores_ = None
            self.best_validation_score_ = None
            self._random_state = rng
        self.network_ = net
        self.optimizer_ = opt
        self.loss_curve_ = loss_curve + [loss]
        self.best_loss_ = float(min(best_loss, loss))
        self.n_iter_ = n_iter + 1
        self.t_ = t + len(Xd)
        self.device_ = "cpu" if xp is np else "gpu"
        self.xnor_ = xnor
        if self.verbose:
            print(f"Iteration {self.n_iter_}, loss = {loss:.6f}, "
                  f"{len(Xd) / max(seconds, 1e-9):.0f} examples/s", flush=True)
        return self

    # ------------------------------------------------------------ inference
    def _logits(self, X, packed=None):
        check_is_fitted(self, "network_")
        X = self._validate_X(X, reset=False)
        net = self.network_
        xp = net.xp
        if packed is None:
            packed = net.binary
        forward = net.forward_packed if packed else (
            lambda x, first_sums=None: net.forward(x, training=False, first_sums=first_sums))
        # Blocks of rows keep each layer's intermediates in cache and reuse
        # their buffers instead of faulting in fresh pages for the whole batch.
        blocks = []
        for start in range(0, max(X.shape[0], 1), _PREDICT_ROWS):
            rows = X[start:start + _PREDICT_ROWS]
            # On the CPU, a binary network's first layer takes the raw rows,
            # standardization folded in, and skips zero inputs.
            sums = net.input_sums(rows, self.input_mean_, self.input_scale_)
            if sums is not None:
                out = forward(None, first_sums=sums)
            else:
                out = forward(xp.asarray(self._standardize(rows, self.input_mean_, self.input_scale_)))
            blocks.append(_to_numpy(out).astype(np.float64))
        return np.concatenate(blocks)

    def decision_function(self, X):
        """Logits of the network.

        Returns
        -------
        scores : ndarray of shape (n_samples, n_classes), or (n_samples,) for two classes
            For two classes, the logit of ``classes_[1]`` minus that of ``classes_[0]``.
        """
        logits = self._logits(X)
        if logits.shape[1] == 2:
            return logits[:, 1] - logits[:, 0]
        return logits

    def predict_log_proba(self, X):
        """Log of :meth:`predict_proba`, computed stably."""
        return log_softmax(self._logits(X))

    def predict_proba(self, X):
        """Class probabilities (softmax of the logits).

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
        """
        return np.exp(self.predict_log_proba(X))

    def predict(self, X):
        """Predicted class labels, computed on packed bits for a binary network.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        y : ndarray of shape (n_samples,)
        """
        check_is_fitted(self, "network_")
        return self.classes_[self._logits(X).argmax(axis=1)]

    # ------------------------------------------------------------ inspection
    def drop_training_state(self):
        """Forget the latent weights and optimizer state, keeping packed weights.

        The model still predicts identically, pickles to about the size
        :meth:`summary` reports as packed, but can no longer be trained.

        Returns
        -------
        self : BNNClassifier
        """
        check_is_fitted(self, "network_")
        self.network_ = copy.deepcopy(self.network_).drop_training_state()
        self.optimizer_ = None
        return self

    def summary(self, as_dict=False):
        """Parameter memory per layer: bit-packed inference form vs float32.

        Parameters
        ----------
        as_dict : bool, default=False
            Return the figures as a dict instead of a printable table.

        Returns
        -------
        summary : str or dict
            The dict has ``layers`` (rows with ``layer``, ``shape``, ``binary``,
            ``n_params``, ``float32_bytes``, ``packed_bytes``, ``compression``),
            ``packed_bytes``, ``float32_bytes``, ``compression`` (totals) and
            ``training_state_bytes`` (latent weights and Adam moments, which a
            pickle also holds until :meth:`drop_training_state`).
        """
        check_is_fitted(self, "network_")
        rows = self.network_.memory_rows()
        for row in rows:
            row["compression"] = row["float32_bytes"] / row["packed_bytes"]
        packed = sum(r["packed_bytes"] for r in rows) + self.input_mean_.nbytes
        floats = sum(r["float32_bytes"] for r in rows) + self.input_mean_.nbytes
        state = self.network_.training_state_nbytes()
        if self.optimizer_ is not None:
            state += self.optimizer_.nbytes()
        info = {
            "layers": rows,
            "packed_bytes": packed,
            "float32_bytes": floats,
            "compression": floats / packed,
            "training_state_bytes": state,
        }
        if as_dict:
            return info
        lines = [f"{'layer':<8} {'shape':>14} {'kind':>6} {'params':>10} {'float32':>12} {'packed':>12} {'ratio':>7}"]
        for r in rows:
            shape = f"{r['shape'][0]}x{r['shape'][1]}"
            kind = "binary" if r["binary"] else "real"
            lines.append(
                f"{r['layer']:<8} {shape:>14} {kind:>6} {r['n_params']:>10,} "
                f"{_fmt_bytes(r['float32_bytes']):>12} {_fmt_bytes(r['packed_bytes']):>12} "
                f"{r['compression']:>6.1f}x"
            )
        lines.append(
            f"{'total':<8} {'':>14} {'':>6} {sum(r['n_params'] for r in rows):>10,} "
            f"{_fmt_bytes(floats):>12} {_fmt_bytes(packed):>12} {floats / packed:>6.1f}x"
        )
        lines.append(
            f"training state (latent weights, Adam moments): {_fmt_bytes(state)}"
            + ("" if state == 0 else "; drop_training_state() removes it")
        )
        return "\n".join(lines)


def _fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
