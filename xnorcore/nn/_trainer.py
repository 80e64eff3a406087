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


def run_epoch(net, opt, X, y, *, batch_size, lr, reg, perm_rng, drop_rng, shuffle, progress=None):
    """One pass over (X, y) on their device; returns (mean loss, seconds).

    ``progress``, a description, shows a progress bar on a terminal.
    """
    xp = get_array_module(X)
    n = X.shape[0]
    batch_size = min(batch_size, n)
    order = xp.asarray(perm_rng.permutation(n)) if shuffle else None
    bar = None
    if progress is not None and sys.stderr.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=progress, unit="ex", leave=False, file=sys.stderr)
    t0 = time.perf_counter()
    total = 0.0
    for start in range(0, n, batch_size):
        if order is None:
            xb, yb = X[start:start + batch_size], y[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]
            xb, yb = X[idx], y[idx]
        loss = net.train_step(xb, yb, opt, lr, reg=reg, rng=drop_rng)
        total = total + loss * xb.shape[0]
        if bar is not None:
            bar.update(xb.shape[0])
    total = float(total) / n
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    return total, seconds


def validation_split(X, y, fraction, rng):
    """``(X_fit, X_val, y_fit, y_val)`` for early stopping, stratified where every class has two samples."""
    stratify = y if np.bincount(y).min() >= 2 else None
    X_fit, X_val, y_fit, y_val = train_test_split(X, y, test_size=fraction, random_state=rng, stratify=stratify)
    if len(X_fit) == 0 or len(X_val) == 0:
        raise ValueError(
            f"early_stopping needs samples on both sides of the validation split, got "
            f"n_samples={len(X)} and validation_fraction={fraction}"
        )
    return X_fit, X_val, y_fit, y_val


def accuracy(net, X, y):
    """Fraction of rows of X (on the network's device) whose predicted class index is y (numpy)."""
    pred = to_numpy(net.forward(X, training=False).argmax(axis=1))
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
    """

    def __init__(self, loss_curve=(), n_iter=0, t=0, validation=False):
        self.loss_curve = list(loss_curve)
        self.n_iter = int(n_iter)
        self.t = int(t)
        self.validation_scores = [] if validation else None
        self.best_validation_score = -np.inf


def train(net, opt, X, y, history, *, epochs, batch_size, learning_rate_init, lr_schedule, reg, shuffle,
          rng, validation=None, tol=0.0, n_iter_no_change=None, verbose=False):
    """Train ``net`` for up to ``epochs`` epochs; returns the network to keep.

    ``X`` and ``y`` are on the network's device.  ``validation``, an
    ``(X_val, y_val)`` pair (X on the device, y numpy), turns on early
    stopping on its accuracy: training stops once it has not improved by
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
    for epoch in range(epochs):
        lr = learning_rate(lr_schedule, learning_rate_init, epoch, epochs)
        loss, seconds = run_epoch(
            net, opt, X, y, batch_size=batch_size, lr=lr, reg=reg, perm_rng=rng, drop_rng=drop_rng,
            shuffle=shuffle, progress=f"epoch {history.n_iter + 1}" if verbose else None,
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
    return best_net if best_net is not None else net
