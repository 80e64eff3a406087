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


def softmax_cross_entropy(logits, y, sample_weight=None, weight_sum=None, label_smoothing=0.0):
    """Mean cross-entropy of integer labels ``y`` and its gradient.

    Parameters
    ----------
    logits : ndarray of shape (n_samples, n_classes)
    y : ndarray of shape (n_samples,), integer class indices
    sample_weight : ndarray of shape (n_samples,), optional
        Weight of each sample's loss (float32, on the logits' device); the loss
        is then the weighted mean ``sum(w * loss) / weight_sum``.
    weight_sum : float, optional
        ``sample_weight.sum()``, computed on the host (so that the device need
        not be waited for); must be positive.
    label_smoothing : float in [0, 1), default=0.0
        The target of a sample is ``1 - label_smoothing`` on its label plus
        ``label_smoothing / n_classes`` on every class (Szegedy et al., 2016),
        as ``label_smoothing`` in Keras' and PyTorch's cross-entropy losses.

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
    grad = xp.exp(logp)
    if label_smoothing:
        uniform = label_smoothing / logits.shape[1]
        grad -= logp.dtype.type(uniform)
        grad[rows, y] -= logp.dtype.type(1 - label_smoothing)
        losses = -(1 - label_smoothing) * logp[rows, y] - uniform * logp.sum(axis=1)
    else:
        grad[rows, y] -= 1
        losses = -logp[rows, y]
    if sample_weight is None:
        loss = losses.mean()
        grad *= np.float32(1.0 / n)
    else:
        # Weights of ones give the unweighted loss and gradient bit for bit:
        # the same sum divided by the same count, the same scale 1 / n.
        loss = (losses * sample_weight).sum() / weight_sum
        grad *= (sample_weight * np.float32(1.0 / weight_sum))[:, None]
    return loss, grad
