"""Softmax and cross-entropy on numpy or cupy logits."""

import numpy as np

from .._array import get_array_module


def log_softmax(logits):
    """Row-wise log-softmax, stable for large logits."""
    xp = get_array_module(logits)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))


def softmax(logits):
    """Row-wise softmax."""
    xp = get_array_module(logits)
    return xp.exp(log_softmax(logits))


def softmax_cross_entropy(logits, y):
    """Mean cross-entropy of integer labels ``y`` and its gradient.

    Parameters
    ----------
    logits : ndarray of shape (n_samples, n_classes)
    y : ndarray of shape (n_samples,), integer class indices

    Returns
    -------
    loss : 0-d array
        Mean cross-entropy (left on the device to avoid a synchronisation).
    grad : ndarray of shape (n_samples, n_classes)
        Gradient of ``loss`` with respect to ``logits``.
    """
    xp = get_array_module(logits)
    n = logits.shape[0]
    logp = log_softmax(logits)
    rows = xp.arange(n)
    loss = -logp[rows, y].mean()
    grad = xp.exp(logp)
    grad[rows, y] -= 1
    grad *= np.float32(1.0 / n)
    return loss, grad
