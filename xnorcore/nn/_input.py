"""The input of a network: a power-of-two scale for data far from scale 1, then standardization.

Training and prediction both pass raw rows through :func:`model_input`; the
statistics of :func:`input_stats` are computed once, at the first fit.
"""

import math

import numpy as np

from .._array import get_array_module

__all__ = ["input_exponent", "input_stats", "model_input"]

_F32 = np.float32

#: Data whose largest magnitude lies outside [2**-_MAX_EXPONENT, 2**_MAX_EXPONENT]
#: is scaled by a power of two first (see input_exponent_).
_MAX_EXPONENT = 40
#: Rows per chunk of the float64 passes over X.
_CHUNK_ROWS = 8192


def input_exponent(X):
    """``k`` such that ``X * 2**k`` has its largest magnitude near 1, or 0 for data of ordinary scale.

    float32 training and the first layer of prediction (which folds the
    standardization into the weights) then neither overflow nor underflow,
    whatever the units of X.  A power of two scales exactly.
    """
    if X.size == 0:
        return 0
    largest = float(np.max(np.abs(X)))
    if largest == 0 or 2.0**-_MAX_EXPONENT <= largest <= 2.0**_MAX_EXPONENT:
        return 0
    return -math.frexp(largest)[1]


def model_input(X, exponent):
    """Validated X (float32 or float64, numpy or cupy) scaled by ``2**exponent`` as the float32 rows
    the network takes."""
    xp = get_array_module(X)
    if exponent:
        X = xp.ldexp(X, exponent)
    if X.dtype == np.float64 and X.size:
        largest = float(xp.max(xp.abs(X)))
        if largest > float(np.finfo(_F32).max):
            raise ValueError(
                f"X has values up to {largest / 2.0**exponent:.3g} in magnitude, beyond the float32 "
                "range in which this model computes; it was fitted on data of much smaller scale"
            )
    return xp.asarray(X, dtype=_F32)


def input_stats(X, sample_weight=None):
    """(per-feature mean float32, one global scale) of the training rows, for ``(X - mean) / scale``."""
    # Per-feature centring but one global scale: a per-feature scale blows
    # up features that happen to be constant in the first batch of
    # partial_fit (MNIST border pixels).  Sums run in float64 over chunks
    # of rows, so that neither the squares of large values nor those of
    # small ones leave the range (X is already scaled near 1).  Weighted as
    # the loss is, so that a sample of weight 0 changes nothing.
    if sample_weight is None:
        mean = X.mean(axis=0, dtype=np.float64)
        count = X.size
    else:
        weights = np.asarray(sample_weight, dtype=np.float64)
        if not weights.sum() > 0:
            raise ValueError("sample_weight must have a positive sum, got all zeros")
        mean = np.zeros(X.shape[1])
        for start in range(0, X.shape[0], _CHUNK_ROWS):
            rows = slice(start, start + _CHUNK_ROWS)
            mean += weights[rows] @ X[rows].astype(np.float64)
        mean /= weights.sum()
        count = weights.sum() * X.shape[1]
    total = 0.0
    for start in range(0, X.shape[0], _CHUNK_ROWS):
        rows = slice(start, start + _CHUNK_ROWS)
        squares = np.square(X[rows] - mean, dtype=np.float64)
        total += float(squares.sum() if sample_weight is None else weights[rows] @ squares.sum(axis=1))
    scale = math.sqrt(total / max(count, 1))
    largest = float(np.max(np.abs(X))) if X.size else 0.0
    # Constant data: rounding noise only, nothing to scale by.
    if not math.isfinite(scale) or scale <= 1e-12 * largest or scale == 0:
        scale = 1.0
    return mean.astype(_F32), _F32(scale)
