"""Adam optimizer working in place on numpy or cupy parameters."""

import numpy as np

from .._array import get_array_module, to_module, to_numpy
from .._backends import backend_for


def _fused(*arrays):
    """Whether the arrays can take the backend's fused kernel: float32, C-contiguous, one shape."""
    shape = arrays[0].shape
    return all(a.dtype == np.float32 and a.flags.c_contiguous and a.shape == shape for a in arrays)


def adam_arrays(p, g, m, v, b1, b2, eps, step, clip):
    """One Adam step in place in array operations (any dtypes and layouts): what the fused kernels compute."""
    xp = get_array_module(p)
    # In place with one scratch array: the update is memory bound.
    buf = xp.multiply(g, np.float32(1 - b1))
    m *= np.float32(b1)
    m += buf
    xp.multiply(g, g, out=buf)
    buf *= np.float32(1 - b2)
    v *= np.float32(b2)
    v += buf
    xp.sqrt(v, out=buf)
    buf += np.float32(eps)
    xp.divide(m, buf, out=buf)
    buf *= np.float32(step)
    p -= buf
    if clip:
        xp.clip(p, -1, 1, out=p)


class Adam:
    """Adam (Kingma and Ba, 2015) with in-place updates.

    Parameters
    ----------
    beta1, beta2, eps : float
        The usual Adam constants.

    Notes
    -----
    The moments are kept per parameter name, so the state survives as long as
    the network's layer names do (``partial_fit`` calls share one optimizer).
    Latent binary weights are clipped to [-1, 1] after each step: beyond that
    range the straight-through estimator would cancel their gradient for good.
    """

    def __init__(self, beta1=0.9, beta2=0.999, eps=1e-8):
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.t = 0
        self.m = {}
        self.v = {}

    def step(self, params, lr):
        """Apply one update.

        Parameters
        ----------
        params : list of (name, param, grad, clip)
            ``clip`` tells whether ``param`` is a latent binary weight.
        lr : float
            Learning rate of this step.
        """
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        # Bias correction folded into the step size.
        step = lr * np.sqrt(1 - b2**self.t) / (1 - b1**self.t)
        for name, p, g, clip in params:
            xp = get_array_module(p)
            if name not in self.m:
                self.m[name] = xp.zeros_like(p)
                self.v[name] = xp.zeros_like(p)
            m, v = self.m[name], self.v[name]
            if _fused(p, g, m, v):
                # One pass over memory (one kernel on the GPU) instead of ten; on
                # one CPU thread: OpenBLAS's threads still spin after the products
                # of the step, and a second thread would wait for a core (as
                # Dense.forward explains).
                backend_for(p).adam_update(p, g, m, v, b1, b2, self.eps, step, clip, 1)
                continue
            adam_arrays(p, g, m, v, b1, b2, self.eps, step, clip)

    def to(self, xp):
        """Move the moments to ``xp`` (numpy or cupy), in place; returns self."""
        self.m = {k: to_module(a, xp) for k, a in self.m.items()}
        self.v = {k: to_module(a, xp) for k, a in self.v.items()}
        return self

    def __getstate__(self):
        # Stored as numpy so that a model trained on a GPU loads anywhere.
        state = dict(self.__dict__)
        state["m"] = {k: to_numpy(a) for k, a in self.m.items()}
        state["v"] = {k: to_numpy(a) for k, a in self.v.items()}
        return state

    def nbytes(self):
        return sum(a.nbytes for a in self.m.values()) + sum(a.nbytes for a in self.v.values())
