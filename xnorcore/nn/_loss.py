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

    Raises
    ------
    ValueError
        Where ``logits`` is not a 2-D float array of one row and one class at
        least, ``y`` does not hold one class index in ``[0, n_classes)`` per
        row, ``sample_weight`` does not hold one weight per row, ``weight_sum``
        is not positive or ``label_smoothing`` is not in [0, 1).  (Checking
        ``y``'s values reads them: on cupy arrays that waits for the device;
        training calls the loss unchecked.)

    Returns
    -------
    loss : 0-d array
        Mean cross-entropy (left on the device to avoid a synchronisation).
    grad : ndarray of shape (n_samples, n_classes)
        Gradient of ``loss`` with respect to ``logits``.
    """
    if getattr(logits, "ndim", None) != 2 or logits.dtype.kind != "f":
        raise ValueError(f"logits must be a 2-D float array (n_samples, n_classes), got "
                         f"{getattr(logits, 'shape', type(logits).__name__)} of {getattr(logits, 'dtype', None)}")
    n, k = logits.shape
    if n == 0 or k == 0:
        raise ValueError(f"logits must have at least one row and one class, got shape {logits.shape}")
    if getattr(y, "shape", None) != (n,) or y.dtype.kind not in "iu":
        raise ValueError(f"y must be an integer array of shape ({n},), one class index per row of logits, got "
                         f"{getattr(y, 'shape', type(y).__name__)} of {getattr(y, 'dtype', None)}")
    if not (0 <= int(y.min()) and int(y.max()) < k):
        raise ValueError(f"y must hold class indices in [0, {k}), got values from {int(y.min())} to {int(y.max())}")
    if sample_weight is not None:
        if getattr(sample_weight, "shape", None) != (n,):
            raise ValueError(f"sample_weight must have shape ({n},), got {getattr(sample_weight, 'shape', None)}")
        if weight_sum is None or not weight_sum > 0:
            raise ValueError(f"weight_sum must be the positive sum of sample_weight, got weight_sum={weight_sum!r}")
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got label_smoothing={label_smoothing!r}")
    return cross_entropy(logits, y, sample_weight, weight_sum, label_smoothing)


def cross_entropy(logits, y, sample_weight=None, weight_sum=None, label_smoothing=0.0):
    """:func:`softmax_cross_entropy` without its checks, for the training loop
    (whose labels were checked once, when they entered :meth:`fit`)."""
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
