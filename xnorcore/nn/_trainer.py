"""The training loop: epochs of minibatch steps, learning-rate schedules and early stopping.

Everything here runs on the arrays' device (numpy or cupy): the data are
copied there once, and only the per-epoch loss comes back to the host.  The
network that a fit trains is either new (:func:`build_network`) or the fitted
one continued (:func:`check_continuable`, :func:`resume_training`, with a
:class:`Checkpoint` that undoes a failed step in place).
"""

import copy
import math
import sys
import time

import numpy as np
from sklearn.model_selection import train_test_split

from .._array import get_array_module, to_numpy
from .._backends import backend_for
from . import _graph
from ._augment import RandomShift
from ._conv import release_workspaces
from ._convnet import ConvNetwork
from ._network import Network

__all__ = ["LR_SCHEDULES", "Checkpoint", "TrainingHistory", "build_network", "check_continuable", "learning_rate",
           "resume_training", "run_epoch", "train", "train_standardized", "validation_split"]

LR_SCHEDULES = ("cosine", "exponential", "constant")


def learning_rate(schedule, lr0, epoch, n_epochs):
    """Step size of ``epoch`` (0-based) of ``n_epochs``: decays to ``lr0 / 100`` at the last epoch."""
    lr_min = lr0 / 100
    frac = epoch / max(n_epochs - 1, 1)
    if schedule == "cosine":
        return lr_min + 0.5 * (lr0 - lr_min) * (1 + math.cos(math.pi * frac))
    if schedule == "exponential":
        return lr0 * (lr_min / lr0) ** frac
    return lr0


def run_epoch(net, opt, X, y, *, batch_size, lr, reg, perm_rng, drop_rng, shuffle, progress=None,
              sample_weight=None, augment=None):
    """One pass over (X, y) on their device; returns (mean loss, seconds).

    ``progress``, a description, shows a progress bar on a terminal.
    ``sample_weight`` (numpy float64, one per row) makes the loss of each
    minibatch, and of the epoch, the weighted mean; a minibatch whose weights
    are all zero makes no step.  The weights' sums are taken on the host, so
    that the device is not waited for.  With batch norm, a last batch of one
    sample joins the batch before it: batch statistics of one sample are zero
    variance, and the step would train on nothing but the batch norm's offsets.
    ``augment`` (a :class:`~xnorcore.nn._augment.RandomShift`) transforms
    each minibatch, drawing from ``drop_rng``.  On the GPU, the unweighted
    steps of full minibatches replay a CUDA graph (:mod:`xnorcore.nn._graph`).
    """
    xp = get_array_module(X)
    n = X.shape[0]
    batch_size = min(batch_size, n)
    perm = perm_rng.permutation(n) if shuffle else None
    order = xp.asarray(perm) if shuffle else None
    weights = None if sample_weight is None else xp.asarray(sample_weight.astype(np.float32))
    bar = None
    if progress is not None and sys.stderr.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=progress, unit="ex", leave=False, file=sys.stderr)
    t0 = time.perf_counter()
    total = 0.0
    total_weight = 0.0
    bounds = list(range(0, n, batch_size)) + [n]
    if (net.batch_norm or net.binarize_last) and len(bounds) > 2 and n - bounds[-2] == 1:
        del bounds[-2]
    graphed = _graph.graphed_steps(net, opt, reg, augment) if _graph.enabled(X) and weights is None else None
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if order is None:
            idx = host_idx = slice(start, stop)
        else:
            idx, host_idx = order[start:stop], perm[start:stop]
        xb, yb = X[idx], y[idx]
        replay = graphed is not None and xb.shape[0] == batch_size  # (the graph augments the batch itself)
        if augment is not None and not replay:
            xb = augment(xb, drop_rng)
        if replay:
            weight = batch_size
            loss = graphed(xb, yb, lr, drop_rng)
        elif weights is None:
            weight = xb.shape[0]
            loss = net.train_step(xb, yb, opt, lr, reg=reg, rng=drop_rng)
        else:
            weight = float(sample_weight[host_idx].sum())
            if weight == 0:
                continue
            loss = net.train_step(xb, yb, opt, lr, reg=reg, rng=drop_rng,
                                  sample_weight=weights[idx], weight_sum=weight)
        total = total + loss * weight
        total_weight += weight
        if bar is not None:
            bar.update(xb.shape[0])
    total = float(total) / total_weight
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    return total, seconds


def validation_split(X, y, fraction, rng, sample_weight=None):
    """``(X_fit, X_val, y_fit, y_val, w_fit, w_val)`` for early stopping, stratified
    where every class fits both sides (the weights None without ``sample_weight``)."""
    n = len(X)
    n_val = math.ceil(fraction * n)
    if n_val < 1 or n - n_val < 1:
        raise ValueError(
            f"early_stopping needs samples on both sides of the validation split, got "
            f"n_samples={n} and validation_fraction={fraction} "
            f"({n - n_val} to train on, {n_val} to validate)"
        )
    counts = np.bincount(y)
    counts = counts[counts > 0]
    # train_test_split stratifies only with 2 samples of every class and room
    # for every class on both sides.
    stratified = counts.min() >= 2 and min(n_val, n - n_val) >= len(counts)
    arrays = (X, y) if sample_weight is None else (X, y, sample_weight)
    split = train_test_split(*arrays, test_size=n_val, random_state=rng, stratify=y if stratified else None)
    X_fit, X_val, y_fit, y_val = split[:4]
    w_fit, w_val = split[4:] if sample_weight is not None else (None, None)
    if w_fit is not None and not w_fit.any():
        raise ValueError(
            "early_stopping left only samples of zero sample_weight for training; "
            "use another random_state or validation_fraction"
        )
    return X_fit, X_val, y_fit, y_val, w_fit, w_val


def accuracy(net, X, y, sample_weight=None):
    """Fraction (weighted by ``sample_weight`` where given and not all zero) of
    rows of X (on the network's device) whose predicted class index is y (numpy)."""
    pred = to_numpy(net.forward(X, training=False).argmax(axis=1))
    if sample_weight is not None and sample_weight.sum() > 0:
        return float(np.average(pred == y, weights=sample_weight))
    return float((pred == y).mean())


class TrainingHistory:
    """What :func:`train` adds to: the counters and curves an estimator reports.

    Attributes
    ----------
    loss_curve : list of float
    n_iter : int
        Epochs run.
    t : int
        Training samples seen.
    validation_scores : list of float or None
    best_validation_score : float
    improving : bool
        Whether the last epoch of :func:`train` still improved the loss (the
        validation score with early stopping) by more than ``tol``, and the
        epochs ran out before ``n_iter_no_change`` stopped it: not converged.
    """

    def __init__(self, loss_curve=(), n_iter=0, t=0, validation=False):
        self.loss_curve = list(loss_curve)
        self.n_iter = int(n_iter)
        self.t = int(t)
        self.validation_scores = [] if validation else None
        self.best_validation_score = -np.inf
        self.improving = False


def train(net, opt, X, y, history, *, epochs, batch_size, learning_rate_init, lr_schedule, reg, shuffle,
          rng, validation=None, tol=0.0, n_iter_no_change=None, verbose=False, sample_weight=None, augment=None):
    """Train ``net`` for up to ``epochs`` epochs; returns the network to keep.

    ``X`` and ``y`` are on the network's device; ``sample_weight`` (numpy,
    optional) weights each sample's loss, see :func:`run_epoch`.
    ``validation``, an ``(X_val, y_val)`` or ``(X_val, y_val, w_val)`` tuple
    (X on the device, the others numpy), turns on early stopping on its
    (weighted) accuracy: training stops once it has not improved by
    ``tol`` for ``n_iter_no_change`` epochs, and the best network is returned.
    Without it, training stops when the loss has not improved by ``tol`` for
    ``n_iter_no_change`` epochs.  ``augment`` transforms the training
    minibatches (see :func:`run_epoch`).  ``history`` (a
    :class:`TrainingHistory`) is updated in place.

    Raises
    ------
    FloatingPointError
        If the loss becomes NaN or infinite.
    """
    xp = get_array_module(X)
    drop_rng = xp.random.RandomState(rng.randint(2**31 - 1))
    best_loss = np.inf
    best_net = None
    no_improvement = 0
    history.improving = False
    try:
        for epoch in range(epochs):
            lr = learning_rate(lr_schedule, learning_rate_init, epoch, epochs)
            loss, seconds = run_epoch(
                net, opt, X, y, batch_size=batch_size, lr=lr, reg=reg, perm_rng=rng, drop_rng=drop_rng,
                shuffle=shuffle, progress=f"epoch {history.n_iter + 1}" if verbose else None,
                sample_weight=sample_weight, augment=augment,
            )
            if not np.isfinite(loss):
                raise FloatingPointError(
                    f"the training loss became {loss} at epoch {history.n_iter + 1}; lower "
                    f"learning_rate_init (got {learning_rate_init})"
                )
            history.n_iter += 1
            history.t += len(X)
            history.loss_curve.append(loss)
            message = f"Iteration {history.n_iter}, loss = {loss:.6f}"
            if validation is not None:
                score = accuracy(net, *validation)
                history.validation_scores.append(score)
                message += f", validation score = {score:.4f}"
                no_improvement = 0 if score > history.best_validation_score + tol else no_improvement + 1
                if score > history.best_validation_score:
                    history.best_validation_score = score
                    best_net = copy.deepcopy(net)
            else:
                no_improvement = no_improvement + 1 if loss > best_loss - tol else 0
            best_loss = min(best_loss, loss)
            if verbose:
                print(f"{message}, {len(X) / max(seconds, 1e-9):.0f} examples/s, lr = {lr:.2e}", flush=True)
            if n_iter_no_change is not None and no_improvement >= n_iter_no_change:
                if verbose:
                    print(f"No improvement for {no_improvement} epochs; stopping.", flush=True)
                break
        else:
            history.improving = epochs > 0 and no_improvement == 0
    finally:
        _graph.release(net)  # a trained network keeps no graph (nor device memory for one), even after an error
        release_workspaces()  # nor the buffers of its CPU steps
    return best_net if best_net is not None else net


def train_standardized(net, opt, X, y, history, *, mean, scale, batch_size, rng, validation_fraction=None,
                       sample_weight=None, shift=None, **kwargs):
    """:func:`train` on host rows ``X``, standardized as ``(X - mean) / scale`` and copied to the network's device.

    ``validation_fraction`` holds that fraction of the samples out for early
    stopping (:func:`validation_split`, drawn from ``rng``).  ``shift``, an
    ``(image_shape, max_shift)`` pair, moves the training images at random
    (:class:`~xnorcore.nn._augment.RandomShift`; None or a max_shift of 0
    for none).  ``kwargs`` go to :func:`train`.  Returns the network to keep.

    Raises
    ------
    ValueError
        If batch norm would see batches of fewer than 2 samples.
    """
    xp = net.xp
    X_fit, y_fit, w_fit, validation = X, y, sample_weight, None
    if validation_fraction is not None:
        X_fit, X_val, y_fit, y_val, w_fit, w_val = validation_split(X, y, validation_fraction, rng, sample_weight)
        validation = (xp.asarray((X_val - mean) / scale), y_val, w_val)
        history.validation_scores = []
    if (net.batch_norm or net.binarize_last) and min(batch_size, len(X_fit)) < 2:
        raise ValueError(
            "batch norm needs at least 2 samples per batch, got "
            + (f"batch_size={batch_size}" if batch_size < 2 else f"{len(X_fit)} training sample")
            + "; use batch_size >= 2, or batch_norm=False"
            + ("" if batch_size < 2 else " (or pass more samples)")
        )
    augment = None
    if shift is not None and shift[1] > 0:
        augment = RandomShift(shift[0], shift[1], xp.asarray(mean), scale)
    X_fit = xp.asarray((X_fit - mean) / scale)
    bf16 = any(getattr(layer, "bf16_backward", False) for layer in net.layers())
    with backend_for(X_fit).training_context(bf16):
        return train(net, opt, X_fit, xp.asarray(y_fit), history, batch_size=batch_size,
                     rng=rng, validation=validation, sample_weight=w_fit, augment=augment, **kwargs)


def build_network(n_features, n_outputs, hidden_layer_sizes, image_shape=None, conv_layers=(), *,
                  binarize_first=False, input_dropout=0.0, **kwargs):
    """A new :class:`ConvNetwork` where there are ``conv_layers``, else a :class:`Network`.

    ``kwargs`` (``binary``, ``batch_norm``, ``dropout``, ``binarize_last``,
    ``xnor``, ``random_state``, ``xp``) go to either; ``binarize_first`` and
    ``input_dropout`` apply to a :class:`Network` only (after conv layers the
    first dense layer is binary like any other, and images are augmented by
    shifts instead).
    """
    if conv_layers:
        return ConvNetwork(image_shape, conv_layers, n_outputs, hidden_layer_sizes, **kwargs)
    return Network(n_features, n_outputs, hidden_layer_sizes, binarize_first=binarize_first,
                   input_dropout=input_dropout, **kwargs)


def check_continuable(net, opt, what, **architecture):
    """Refuse to continue ``net`` without its optimizer state, or with another architecture.

    ``what`` names the request in the message ("partial_fit", "warm_start=True");
    ``architecture`` maps attributes of ``net`` that define it
    (``hidden_layer_sizes``, ``binary``, ...) to the values asked for now.
    """
    if opt is None:
        raise ValueError(f"{what} cannot continue a model whose training state was dropped")
    changed = [f"{name}={new!r} but the network has {name}={getattr(net, name)!r}"
               for name, new in architecture.items() if new != getattr(net, name)]
    if changed:
        raise ValueError(
            f"{what} continues the fitted network, whose architecture cannot change: "
            f"{'; '.join(changed)}; set the parameters back, or fit a new network "
            f"(warm_start=False)"
        )


class Checkpoint:
    """A host copy of a network, its optimizer and a random state, to put back after a failed step."""

    def __init__(self, net, opt, rng):
        self.xp = net.xp
        self.state = copy.deepcopy((net, opt))
        self.rng, self.rng_state = rng, rng.get_state()

    def restore(self):
        """``(network, optimizer)`` as they were, on their device; the random state is set back in place.

        The gradients of the last step, which only histograms show, are not kept.
        """
        net, opt = self.state
        self.rng.set_state(self.rng_state)
        return net.to(self.xp), opt.to(self.xp)


def resume_training(net, opt, xp, *, rng, dropout, input_dropout=0.0, in_place):
    """``(net, opt, checkpoint)``: a fitted network and its optimizer, to continue training on ``xp``.

    With ``in_place`` (a training loop that calls once per batch) they are
    the fitted objects themselves, and ``checkpoint`` (a :class:`Checkpoint`
    of them and of ``rng``) is what puts them back after a failure; otherwise
    they are copies, the fitted ones stay intact, and ``checkpoint`` is None.
    Dropout is how training runs, not part of the network: a continued
    network trains with ``dropout`` (and ``input_dropout`` on the real
    features that a :class:`Network` without conv layers reads).
    """
    checkpoint = Checkpoint(net, opt, rng) if in_place else None
    if not in_place:
        net, opt = copy.deepcopy(net), copy.deepcopy(opt)
    net, opt = net.to(xp), opt.to(xp)
    for block in net.blocks[1:]:
        block.dense.dropout = float(dropout)
    if isinstance(net, Network) and not net.conv_input:
        net.blocks[0].dense.dropout = float(input_dropout)
    return net, opt, checkpoint
