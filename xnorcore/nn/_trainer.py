"""The training loop: epochs of minibatch steps, learning-rate schedules and early stopping.

Everything here runs on the arrays' device (numpy or cupy): the data are
copied there once, and only the per-epoch loss comes back to the host.
"""

import copy
import math
import sys
import time

import numpy as np
from sklearn.model_selection import train_test_split

from .._array import get_array_module, to_numpy

__all__ = ["LR_SCHEDULES", "learning_rate", "run_epoch", "train", "TrainingHistory", "validation_split"]

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
              sample_weight=None):
    """One pass over (X, y) on their device; returns (mean loss, seconds).

    ``progress``, a description, shows a progress bar on a terminal.
    ``sample_weight`` (numpy float64, one per row) makes the loss of each
    minibatch, and of the epoch, the weighted mean; a minibatch whose weights
    are all zero makes no step.  The weights' sums are taken on the host, so
    that the device is not waited for.  With batch norm, a last batch of one
    sample joins the batch before it: batch statistics of one sample are zero
    variance, and the step would train on nothing but the batch norm's offsets.
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
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if order is None:
            idx = host_idx = slice(start, stop)
        else:
            idx, host_idx = order[start:stop], perm[start:stop]
        xb, yb = X[idx], y[idx]
        if weights is None:
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
          rng, validation=None, tol=0.0, n_iter_no_change=None, verbose=False, sample_weight=None):
    """Train ``net`` for up to ``epochs`` epochs; returns the network to keep.

    ``X`` and ``y`` are on the network's device; ``sample_weight`` (numpy,
    optional) weights each sample's loss, see :func:`run_epoch`.
    ``validation``, an ``(X_val, y_val)`` or ``(X_val, y_val, w_val)`` tuple
    (X on the device, the others numpy), turns on early stopping on its
    (weighted) accuracy: training stops once it has not improved by
    ``tol`` for ``n_iter_no_change`` epochs, and the best network is returned.
    Without it, training stops when the loss has not improved by ``tol`` for
    ``n_iter_no_change`` epochs.  ``history`` (a :class:`TrainingHistory`)
    is updated in place.

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
    for epoch in range(epochs):
        lr = learning_rate(lr_schedule, learning_rate_init, epoch, epochs)
        loss, seconds = run_epoch(
            net, opt, X, y, batch_size=batch_size, lr=lr, reg=reg, perm_rng=rng, drop_rng=drop_rng,
            shuffle=shuffle, progress=f"epoch {history.n_iter + 1}" if verbose else None,
            sample_weight=sample_weight,
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
    return best_net if best_net is not None else net
