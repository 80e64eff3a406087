"""BNNClassifier: a scikit-learn classifier backed by a binary neural network."""

import copy
import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, check_random_state, column_or_1d
from sklearn.utils.validation import validate_data

from . import _summary
from ._array import get_array_module, is_cupy, reject_masked, to_numpy
from ._backends import for_device
from ._labels import check_classes, encode_labels, fit_classes
from .nn import Adam
from .nn._convnet import ConvNetwork, PackedConvModel, check_image_shape, check_same_conv, conv_config, image_rows
from .nn._augment import check_shift
from .nn._input import input_exponent, input_stats, model_input
from .nn._inference import PackedModel, float_decision_function
from .nn._loss import log_softmax
from .nn._trainer import LR_SCHEDULES, TrainingHistory, build_network, check_continuable, resume_training
from .nn._trainer import train_standardized

__all__ = ["BNNClassifier"]


#: Epochs of ``max_iter="auto"`` for an MLP and a CNN, chosen on MNIST within
#: the time of a 2-core CPU (benchmarks/RESULTS.md).
AUTO_EPOCHS_MLP = 30
AUTO_EPOCHS_CNN = 10
#: ``dropout="auto"`` for an MLP (whose input_dropout regularizes it) and a CNN,
#: chosen with the recommended CNN on MNIST (benchmarks/RESULTS.md).
AUTO_DROPOUT_MLP = 0.0
AUTO_DROPOUT_CNN = 0.2
#: ``label_smoothing="auto"`` for an MLP and a CNN: on MNIST, 0.1 raised the
#: recommended CNN's test accuracy at each of six seeds (benchmarks/RESULTS.md).
AUTO_LABEL_SMOOTHING_MLP = 0.0
AUTO_LABEL_SMOOTHING_CNN = 0.1


class BNNClassifier(ClassifierMixin, BaseEstimator):
    """Classifier built on a binary neural network (BinaryNet-style MLP).

    Hidden layers have binary (+1/-1) weights and activations: the first layer
    reads the real-valued input, the output layer gives real-valued logits.
    Training keeps real "latent" weights in [-1, 1], binarizes them with sign
    (``sign(0) = +1``) in the forward pass and trains them through the
    straight-through estimator (the gradient of sign is 1 where ``|x| <= 1``,
    0 elsewhere), with batch norm, dropout, Adam and softmax cross-entropy.

    After fitting, :meth:`predict` runs a binary network on packed bits (an
    :class:`xnorcore.nn.PackedModel`): one XNOR-popcount product per layer,
    with batch norm and sign folded into one integer threshold per unit.

    Parameters
    ----------
    hidden_layer_sizes : tuple of int, default=(1024, 1024, 1024)
        Width of each hidden (dense) layer.
    image_shape : tuple (height, width, channels) or None, default=None
        Shape of the images that the rows of X hold, pixels in NHWC order
        (channels fastest): a row of X is ``image.reshape(-1)``.  4-D X of
        shape ``(n_samples, height, width, channels)`` is accepted as well,
        and gives ``image_shape`` when it is None.  Without either, a row is
        taken as a 1-pixel-high image of ``n_features`` pixels and one
        channel (the conv layers then convolve along the features).
    conv_layers : sequence or "auto", default=()
        Convolutional layers before the dense ones.  Items are an int ``c``
        (a 3x3 convolution with stride 1, "same" zero padding and ``c``
        output channels, then batch norm and sign, or ReLU in a real-valued
        network), ``"pool"`` (a 2x2 max-pool with stride 2; right after a
        convolution it pools the sums, before batch norm and sign) or a tuple
        ``(c, k)``: the convolution with a ``k x k`` (or, for ``k`` a pair,
        ``kh x kw``) kernel.  The first convolution reads the real-valued
        pixels and has real weights; later ones have binary weights.
        ``"auto"`` is the recommended CNN for the image size, see
        :func:`xnorcore.nn.recommended_conv_layers` (``((64, 5), "pool",
        (128, 5), "pool")`` for 28x28 images).  The flattened output of the last one
        feeds the ``hidden_layer_sizes`` dense layers, which are then all
        binary (``binarize_first`` does not apply).
    random_shift : int or "auto", default="auto"
        Augment the training images: every minibatch of :meth:`fit` and
        :meth:`partial_fit` moves each image by a random whole number of
        pixels, up to ``random_shift`` along each axis (drawn from
        ``random_state``), the uncovered border set to 0 in the units of X.
        Prediction sees the images as they are.  ``"auto"`` is a 14th of
        the shorter side (2 pixels for 28x28 images) for networks with conv
        layers on images given by ``image_shape`` or 4-D X, and 0 (no
        augmentation) otherwise; an int needs ``image_shape`` or 4-D X, MLPs
        included.
    binary : bool, default=True
        Binary hidden weights and activations.  ``False`` trains a real-valued
        network (ReLU, batch norm) with the same code, for comparison.
    xnor : {"auto", True, False}, default="auto"
        Compute binary x binary products in training with
        :func:`xnorcore.binary_matmul` and the binary convolutions with
        :func:`xnorcore.binary_conv2d` (XNOR and popcount) instead of float
        products.  The two give identical results; "auto" uses XNOR on the
        CPU, and on the GPU in the dense layers but not in the conv layers:
        whichever trained faster in benchmarks/train_bench.py and
        benchmarks/conv_train_bench.py.
        Prediction of a binary network always runs on packed bits.
    backward_dtype : {"auto", "float32", "bfloat16"}, default="auto"
        How training's backward pass computes the products that have a +-1
        operand (the signs of a binary layer's input or weights): in float32,
        or from operands rounded to bfloat16 with float32 sums, which keeps
        the +-1 exact and rounds the gradient to 8 significant bits (as mixed
        precision training does).  "auto" takes bfloat16 on CPUs with
        AVX512-BF16, where it runs at twice the float32 rate, and float32
        elsewhere; "bfloat16" works on any CPU (without AVX512-BF16 it is
        no faster) and not on the GPU.  No effect with ``binary=False``.
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
        Minibatch size (capped at the number of training samples).  Batch
        norm needs at least 2 samples per batch: with batch norm,
        ``batch_size=1`` (or a single training sample) raises ValueError, and
        a last batch of one sample in an epoch joins the batch before it.
    max_iter : int or "auto", default="auto"
        Number of epochs of :meth:`fit`.  ``"auto"``: 30 for an MLP and 10
        with ``conv_layers``: on MNIST the binary MLP still gains from 20 to
        30 epochs, and the recommended CNN (with dropout) is as accurate after
        10 epochs as after 15 (``benchmarks/RESULTS.md``).
    reg : float, default=0.0
        L1 penalty on all weights.
    dropout : float in [0, 1) or "auto", default="auto"
        Dropout probability on the input of every layer after the first.
        ``"auto"``: 0.2 with ``conv_layers`` (the recommended CNN was chosen
        on MNIST with it), 0 for an MLP, which ``input_dropout`` regularizes
        instead.  A continued network (``warm_start``,
        :meth:`partial_fit`) trains with the current value.
    input_dropout : float, default=0.2
        Dropout probability on the input features of the first dense layer
        (BinaryNet's input dropout), which regularizes a binary MLP most;
        a continued network trains with the current value.  Ignored with
        ``conv_layers``, whose images ``random_shift`` augments instead.
    label_smoothing : float in [0, 1) or "auto", default="auto"
        Train against targets of ``1 - label_smoothing`` on the label and
        ``label_smoothing / n_classes`` on every class, as the
        ``label_smoothing`` of Keras' and PyTorch's cross-entropy losses.
        ``"auto"``: 0.1 with ``conv_layers``, 0 for an MLP (on MNIST it
        raises the recommended CNN's accuracy by about 0.1%;
        ``benchmarks/RESULTS.md``).  ``loss_curve_`` records the smoothed
        loss.  A continued network trains with the current value.
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
        Continue training the previous network on the next :meth:`fit`.  Its
        architecture stays: a changed ``hidden_layer_sizes``, ``binary``,
        ``batch_norm``, ``binarize_first`` or ``binarize_last`` raises
        ValueError (as it does for :meth:`partial_fit`).

    Notes
    -----
    A :meth:`fit` or :meth:`partial_fit` that raises (bad data, a NaN loss,
    KeyboardInterrupt) leaves the estimator exactly as it was.  Inputs of any
    scale train alike: data whose largest magnitude is far from 1 (below
    ``2**-40`` or above ``2**40``, such as features in units of 1e-20 or
    float64 values beyond the float32 range) are first multiplied by a power
    of two, ``2**input_exponent_``, which is exact.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.
    n_features_in_ : int
        Number of features seen during fit.
    input_mean_ : ndarray of shape (n_features_in_,)
        Per-feature mean of the (scaled) training input, subtracted before the network.
    input_scale_ : float
        Standard deviation of the (scaled) training input over all features, divided by.
    input_exponent_ : int
        Power of two the input is multiplied by before standardization (0 for
        data of ordinary scale).
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Feature names, when X has string column names.
    network_ : xnorcore.nn.Network or xnorcore.nn.ConvNetwork
        The trained network (``network_.histograms()`` gives weights,
        binarized weights, activations and gradients per layer); a
        ConvNetwork when there are conv layers.
    image_shape_ : tuple of int or None
        ``(height, width, channels)`` of the images, when there are conv layers.
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
        Whether XNOR products were used in training (in the dense layers;
        the conv layers follow ``xnor``, "auto" choosing per device).

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from xnorcore import BNNClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = BNNClassifier(hidden_layer_sizes=(256,), max_iter=5, random_state=0).fit(X, y)
    >>> clf.score(X, y) > 0.9
    True
    """

    _parameter_constraints = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "image_shape": [None, "array-like"],
        "conv_layers": [StrOptions({"auto"}), "array-like"],
        "random_shift": [StrOptions({"auto"}), Interval(Integral, 0, None, closed="left")],
        "binary": ["boolean"],
        "xnor": [StrOptions({"auto"}), "boolean"],
        "backward_dtype": [StrOptions({"auto", "float32", "bfloat16"})],
        "batch_norm": ["boolean"],
        "binarize_first": ["boolean"],
        "binarize_last": ["boolean"],
        "learning_rate_init": [Interval(Real, 0, np.inf, closed="neither")],
        "lr_schedule": [StrOptions(set(LR_SCHEDULES))],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_iter": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "reg": [Interval(Real, 0, np.inf, closed="left")],
        "dropout": [StrOptions({"auto"}), Interval(Real, 0, 1, closed="left")],
        "input_dropout": [Interval(Real, 0, 1, closed="left")],
        "label_smoothing": [StrOptions({"auto"}), Interval(Real, 0, 1, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, np.inf, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "device": [StrOptions({"auto", "cpu", "gpu"})],
        "verbose": ["boolean"],
        "warm_start": ["boolean"],
    }

    def __init__(
        self,
        hidden_layer_sizes=(1024, 1024, 1024),
        *,
        image_shape=None,
        conv_layers=(),
        random_shift="auto",
        binary=True,
        xnor="auto",
        backward_dtype="auto",
        batch_norm=True,
        binarize_first=False,
        binarize_last=False,
        learning_rate_init=0.003,
        lr_schedule="cosine",
        batch_size=200,
        max_iter="auto",
        reg=0.0,
        dropout="auto",
        input_dropout=0.2,
        label_smoothing="auto",
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
        self.image_shape = image_shape
        self.conv_layers = conv_layers
        self.random_shift = random_shift
        self.binary = binary
        self.xnor = xnor
        self.backward_dtype = backward_dtype
        self.batch_norm = batch_norm
        self.binarize_first = binarize_first
        self.binarize_last = binarize_last
        self.learning_rate_init = learning_rate_init
        self.lr_schedule = lr_schedule
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.reg = reg
        self.dropout = dropout
        self.input_dropout = input_dropout
        self.label_smoothing = label_smoothing
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.shuffle = shuffle
        self.random_state = random_state
        self.device = device
        self.verbose = verbose
        self.warm_start = warm_start

    # ------------------------------------------------------------ training
    def _hidden_layer_sizes(self):
        sizes = self.hidden_layer_sizes
        sizes = (sizes,) if isinstance(sizes, Integral) else tuple(sizes)
        if not all(isinstance(h, Integral) and not isinstance(h, bool) and h >= 1 for h in sizes):
            raise ValueError(
                f"hidden_layer_sizes must be a tuple of positive integers, got "
                f"hidden_layer_sizes={self.hidden_layer_sizes!r}"
            )
        return tuple(int(h) for h in sizes)

    def _label_smoothing(self, conv_layers):
        """``label_smoothing``, or what ``"auto"`` picks for this network."""
        if self.label_smoothing == "auto":
            return AUTO_LABEL_SMOOTHING_CNN if conv_layers else AUTO_LABEL_SMOOTHING_MLP
        return float(self.label_smoothing)

    def _dropout(self, conv_layers):
        """``dropout``, or what ``"auto"`` picks for this network."""
        if self.dropout == "auto":
            return AUTO_DROPOUT_CNN if conv_layers else AUTO_DROPOUT_MLP
        return float(self.dropout)

    def _max_iter(self, conv_layers):
        """The epochs of :meth:`fit`: ``max_iter``, or what ``"auto"`` picks for this network."""
        if self.max_iter == "auto":
            return AUTO_EPOCHS_CNN if conv_layers else AUTO_EPOCHS_MLP
        return int(self.max_iter)

    def _fit(self, X, y, incremental, classes=None, sample_weight=None):
        """Everything behind :meth:`fit` (``incremental=False``) and :meth:`partial_fit`.

        ``fit`` trains ``max_iter`` epochs with the schedule (continuing the
        fitted network with ``warm_start``); ``partial_fit`` one epoch at
        ``learning_rate_init``, always continuing.  A call that fails (bad
        data, a NaN loss, Ctrl-C) leaves the estimator exactly as it was:
        ``fit`` trains a copy, and ``partial_fit``, which trains the fitted
        network in place, puts back a checkpoint of it.
        """
        saved = dict(self.__dict__)
        checkpoint = None
        try:
            for name, value in (("X", X), ("y", y), ("classes", classes)):
                reject_masked(value, name)
            fitted = hasattr(self, "network_")
            if incremental and not fitted and classes is None:
                raise ValueError(
                    "classes must be passed on the first call to partial_fit "
                    "(all the labels that will ever appear in y)"
                )
            sizes = self._hidden_layer_sizes()
            X, x_image_shape = image_rows(X)
            resume = fitted and (incremental or self.warm_start)
            if resume:
                binary = bool(self.binary)
                check_continuable(
                    self.network_, self.optimizer_, "partial_fit" if incremental else "warm_start=True",
                    hidden_layer_sizes=sizes, binary=binary, batch_norm=bool(self.batch_norm),
                    binarize_first=bool(self.binarize_first) and binary,
                    binarize_last=bool(self.binarize_last) and binary,
                )
            X, y = validate_data(self, X, y, reset=not resume, dtype=(np.float32, np.float64),
                                 y_numeric=False, multi_output=False)
            y = column_or_1d(y, warn=True)
            check_classification_targets(y)
            if sample_weight is not None:
                sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
            image_shape, conv_layers = conv_config(self.image_shape, self.conv_layers, X.shape[1], x_image_shape)
            # The images the rows hold (None for rows that are no images).
            images = x_image_shape if self.image_shape is None else check_image_shape(self.image_shape)
            max_shift = check_shift(self.random_shift, images, bool(conv_layers))
            if resume and not incremental:
                check_same_conv(self.network_, image_shape, conv_layers)
            all_classes = fit_classes(y, classes, self.classes_ if resume else None)
            if sample_weight is not None and not incremental:
                check_classes(np.unique(y[sample_weight > 0]), "y with positive sample_weight")
            y_idx = encode_labels(y, all_classes)
            xp, backend = for_device(self.device)
            if self.xnor == "auto":
                xnor, conv_xnor = backend.prefers_xnor_training, backend.prefers_xnor_conv_training
            else:
                xnor = conv_xnor = bool(self.xnor)
            xnor, conv_xnor = self.binary and xnor, self.binary and conv_xnor
            backward_dtype = self.backward_dtype
            if backward_dtype == "auto":
                backward_dtype = "bfloat16" if backend.prefers_bf16_backward else "float32"

            exponent = getattr(self, "input_exponent_", 0) if resume else input_exponent(X)
            X = model_input(X, exponent)
            if resume:
                rng = self._random_state if incremental else check_random_state(self.random_state)
                mean, scale = self.input_mean_, self.input_scale_
                net, opt, checkpoint = resume_training(self.network_, self.optimizer_, xp, rng=rng,
                                                       dropout=self._dropout(conv_layers),
                                                       input_dropout=self.input_dropout,
                                                       in_place=incremental)
                history = TrainingHistory(self.loss_curve_, self.n_iter_, self.t_)
            else:
                rng = check_random_state(self.random_state)
                mean, scale = input_stats(X, sample_weight)
                net = build_network(
                    X.shape[1], len(all_classes), sizes, image_shape, conv_layers, binary=self.binary,
                    batch_norm=self.batch_norm, dropout=self._dropout(conv_layers),
                    input_dropout=self.input_dropout,
                    binarize_first=self.binarize_first,
                    binarize_last=self.binarize_last, xnor=xnor, random_state=rng, xp=xp,
                )
                opt, history = Adam(), TrainingHistory()
            net.set_xnor(xnor, conv_xnor)
            net.set_backward_dtype(backward_dtype)
            net.label_smoothing = self._label_smoothing(conv_layers)
            early_stopping = self.early_stopping and not incremental
            max_iter = self._max_iter(conv_layers)
            net = train_standardized(
                net, opt, X, y_idx, history, mean=mean, scale=scale, sample_weight=sample_weight,
                shift=(images, max_shift),
                validation_fraction=self.validation_fraction if early_stopping else None,
                epochs=1 if incremental else max_iter, batch_size=self.batch_size,
                learning_rate_init=self.learning_rate_init,
                lr_schedule="constant" if incremental else self.lr_schedule, reg=self.reg, shuffle=self.shuffle,
                rng=rng, tol=self.tol, n_iter_no_change=None if incremental else self.n_iter_no_change,
                verbose=self.verbose,
            )
            if history.improving and not incremental:
                # As MLPClassifier: the last epoch still improved by more than tol.
                what = "validation score" if early_stopping else "training loss"
                warnings.warn(
                    f"BNNClassifier stopped at max_iter={max_iter} epochs while the {what} "
                    f"was still improving by more than tol={self.tol}; a larger max_iter may "
                    "give a better model",
                    ConvergenceWarning,
                    stacklevel=4,  # the caller of fit, past _fit, fit and _fit_context
                )
        except BaseException:
            if checkpoint is not None:
                saved["network_"], saved["optimizer_"] = checkpoint.restore()
            self.__dict__.clear()
            self.__dict__.update(saved)
            raise

        # Everything succeeded: only now does the estimator change.
        if not resume:
            self.classes_ = all_classes
            self.input_mean_, self.input_scale_ = mean, scale
            self.input_exponent_ = exponent
            self.image_shape_ = image_shape
        self._random_state = rng
        if not incremental or not resume:
            self.validation_scores_ = history.validation_scores
            self.best_validation_score_ = float(history.best_validation_score) if early_stopping else None
        self.network_ = net
        self.optimizer_ = opt
        self.loss_curve_ = history.loss_curve
        self.best_loss_ = float(min(history.loss_curve))
        self.n_iter_ = history.n_iter
        self.t_ = history.t
        self.device_ = backend.NAME
        self.xnor_ = xnor
        # A training loop calling partial_fit once per batch would compile
        # the packed model every step: it waits for the next predict.
        self._inference = None if incremental else self._compile()
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Train the network on (X, y) for up to ``max_iter`` epochs.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data (dense; NaN and inf are rejected).
        y : array-like of shape (n_samples,)
            Class labels (at least two classes; any hashable labels).
        sample_weight : array-like of shape (n_samples,), default=None
            Weight of each sample's loss: each minibatch minimizes the
            weighted mean of its samples' cross-entropy, as scikit-learn's
            ``MLPClassifier`` does; the input standardization and the early
            stopping score are weighted too, batch norm's statistics are not.
            Non-negative, finite, not all zero; at least two classes need
            positive weight.

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

        Warns
        -----
        ConvergenceWarning
            If training stops at ``max_iter`` while the training loss (the
            validation score with ``early_stopping``) was still improving by
            more than ``tol`` in the last epoch.
        """
        return self._fit(X, y, incremental=False, sample_weight=sample_weight)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, classes=None, sample_weight=None):
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
        sample_weight : array-like of shape (n_samples,), default=None
            Weight of each sample's loss, as in :meth:`fit`.

        Returns
        -------
        self : BNNClassifier
        """
        return self._fit(X, y, incremental=True, classes=classes, sample_weight=sample_weight)

    # ------------------------------------------------------------ inference
    def _compile(self):
        """The packed inference model of a binary network (None for a real-valued one)."""
        if not self.network_.binary:
            return None
        compiler = PackedConvModel if isinstance(self.network_, ConvNetwork) else PackedModel
        return compiler.from_network(self.network_, self.input_mean_, self.input_scale_)

    def _logits(self, X, packed=None, host=True):
        """float64 logits of X, as a numpy array; with ``host=False`` on the model's device
        (so the logits of cupy rows that a GPU-trained MLP predicts stay there)."""
        check_is_fitted(self, "network_")
        if packed is None:
            packed = self.network_.binary
        on_device = is_cupy(X) and packed and self.network_.xp is not np and not isinstance(self.network_, ConvNetwork)
        if on_device:
            X = self._device_rows(X)  # a GPU-trained MLP predicts cupy rows where they are
        else:
            reject_masked(X, "X")
            X, _ = image_rows(to_numpy(X), getattr(self.network_, "image_shape", None))
            X = validate_data(self, X, reset=False, dtype=(np.float32, np.float64), ensure_min_samples=1)
            X = model_input(X, getattr(self, "input_exponent_", 0))
        if not packed:
            return float_decision_function(self.network_, X, self.input_mean_, self.input_scale_)
        if getattr(self, "_inference", None) is None:
            self._inference = self._compile()
        return self._inference.decision_function(X, host=host)

    def _device_rows(self, X):
        """cupy ``X`` checked as :meth:`_logits` checks host rows, as float32 rows on the device."""
        X, _ = image_rows(X, getattr(self.network_, "image_shape", None))
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (n_samples, n_features), got a cupy array of shape {X.shape}")
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but BNNClassifier is expecting "
                             f"{self.n_features_in_} features as input.")
        if X.shape[0] < 1:
            raise ValueError(f"Found array with 0 sample(s) (shape={X.shape}) while a minimum of 1 is required.")
        if X.dtype.kind not in "biuf":
            raise ValueError(f"X must hold real numbers, got a cupy array of dtype {X.dtype}")
        if X.dtype.kind != "f" or X.dtype == np.float16:
            X = X.astype(np.float32)
        if not bool(get_array_module(X).isfinite(X).all()):
            raise ValueError("Input X contains NaN or infinity.")
        return model_input(X, getattr(self, "input_exponent_", 0))

    def __getstate__(self):
        # The packed model is derived from network_; it is rebuilt after loading.
        state = dict(super().__getstate__())  # (it can be the live __dict__)
        state.pop("_inference", None)
        return state

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
            Rows, or 4-D images for a CNN.  A binary MLP trained on the GPU
            also takes a cupy array, and predicts it on the device (only
            the result comes back); other models copy cupy rows to the host.

        Returns
        -------
        y : ndarray of shape (n_samples,)
        """
        check_is_fitted(self, "network_")
        # (The argmax of device logits runs there: only the indices come back.)
        return self.classes_[to_numpy(self._logits(X, host=False).argmax(axis=1))]

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
        info = _summary.memory_summary(self.network_, self.input_mean_, self.optimizer_)
        return info if as_dict else _summary.format_summary(info)
