"""Adam optimizer working in place on numpy or cupy parameters."""

import numpy as np

from .._array import get_array_module, to_module, to_numpy
from .._backends import backend_for
from .._threads import training_threads


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

    def next_step_size(self, lr):
        """Advance the step count; returns the step size of that step, the bias correction folded into ``lr``."""
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        return lr * np.sqrt(1 - b2**self.t) / (1 - b1**self.t)

    def init_state(self, params):
        """Create the moments of ``params`` (as :meth:`step` takes them) that have none yet, as zeros."""
        for name, p, _, _ in params:
            if name not in self.m:
                xp = get_array_module(p)
                self.m[name] = xp.zeros_like(p)
                self.v[name] = xp.zeros_like(p)

    def step(self, params, lr, step_size=None):
        """Apply one update.

        Parameters
        ----------
        params : list of (name, param, grad, clip)
            ``clip`` tells whether ``param`` is a latent binary weight.
        lr : float
            Learning rate of this step.
        step_size : cupy array of one float32, optional
            Where the GPU kernels read the step size when they run, instead of
            taking the one of ``lr`` now: what a captured CUDA graph of the step
            needs (:mod:`xnorcore.nn._graph` sets it, and the step count, before
            each replay).  Every parameter must then take the fused kernel.
        """
        step = self.next_step_size(lr) if step_size is None else step_size
        self.init_state(params)
        for name, p, g, clip in params:
            m, v = self.m[name], self.v[name]
            if _fused(p, g, m, v):
                # One pass over memory (one kernel on the GPU) instead of ten, on
                # the training step's CPU threads (as Dense.forward explains).
                backend_for(p).adam_update(p, g, m, v, self.beta1, self.beta2, self.eps, step, clip,
                                          training_threads(p.size))
                continue
            if step_size is not None:
                raise ValueError(f"step_size needs float32 C-contiguous parameters and gradients; {name} is not")
            adam_arrays(p, g, m, v, self.beta1, self.beta2, self.eps, step, clip)

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
