"""Training steps on the GPU replayed as CUDA graphs.

A training step of the binary MLP launches about a hundred small kernels, and
at the batch sizes of training CuPy's host-side work per launch takes longer
than the kernels themselves (benchmarks/RESULTS.md).  :class:`GraphedSteps`
therefore runs the first full minibatch of a fit as it is (which compiles the
kernels and creates the optimizer's moments), captures the second one as a CUDA
graph, and replays that graph for every later minibatch of the same size: one
launch per step, the minibatch's augmentation (random shifts) included.

What changes from one step to the next lives in device buffers that the
graph reads: the minibatch (copied into place), the draws of dropout and shifts
(drawn from the same RandomState, in the same order, as an uncaptured step
draws them) and Adam's step size (the learning rate and the bias correction).
A replayed step therefore computes what the uncaptured one computes.  Arrays
that the capture allocates come from a memory pool of their own, which nothing
else allocates from, so the addresses baked into the graph stay valid as long
as it lives; the step thus holds a step's worth of device memory for itself,
until the fit ends (:func:`~xnorcore.nn._trainer.train` releases it).

A step that cannot be captured (one that waits for the device, as the XNOR
conv layers do when they lay out their weights on the host) runs uncaptured,
as every step does on the CPU, with sample weights, and for a minibatch of
another size (an epoch's last).  ``XNORCORE_GPU_GRAPHS=0`` turns graphs off.
"""

import os
import weakref

import numpy as np

from .._array import is_cupy

__all__ = ["ENV", "GraphedSteps", "enabled", "graphed_steps", "release"]

#: Environment variable: "0" runs every step uncaptured.
ENV = "XNORCORE_GPU_GRAPHS"

_F32 = np.float32


def enabled(X):
    """Whether training steps on ``X``'s device are replayed as graphs: cupy arrays, unless ``XNORCORE_GPU_GRAPHS=0``."""
    return is_cupy(X) and os.environ.get(ENV, "1") != "0"


class _DrawnRandom:
    """Stands in for the RandomState of dropout and shifts while a step is captured: each
    draw becomes a buffer that :meth:`refill` fills, by the same call on the real one, before
    every replay."""

    def __init__(self, xp):
        self._xp = xp
        # The buffers are the graph's inputs, written before it runs: they must not share memory
        # with what the graph writes, as they would if they came from the capture's pool (which
        # hands a capture the memory of its earlier temporaries).
        self._pool = xp.cuda.MemoryPool()
        self._draws = []  # (buffer, method name, args)

    def _draw(self, size, dtype, name, *args):
        with self._xp.cuda.using_allocator(self._pool.malloc):
            buf = self._xp.empty(size, dtype=dtype)
        self._draws.append((buf, name, args))
        return buf

    def random_sample(self, size=None, dtype=float):
        return self._draw(size, dtype, "random_sample", size, dtype)

    def randint(self, low, high=None, size=None, dtype="l"):
        return self._draw(size, dtype, "randint", low, high, size, dtype)

    def refill(self, rng):
        for buf, name, args in self._draws:
            self._xp.copyto(buf, getattr(rng, name)(*args))


def _signature(net, opt, reg):
    """What a captured step depends on besides its buffers: the addresses of every array it
    updates in place and the constants it was captured with.  Where any changed (a network
    moved, restored or continued with another dropout or label smoothing), the graph is captured again."""
    arrays = []
    for name, p, _, _ in net.params():
        arrays += [p, opt.m.get(name), opt.v.get(name)]
    flags = []
    for layer in net.layers():
        arrays += [getattr(layer, "running_mean", None), getattr(layer, "running_var", None)]
        flags.append((type(layer).__name__, getattr(layer, "dropout", None), getattr(layer, "xnor", None)))
    flags.append(("label_smoothing", float(net.label_smoothing)))
    pointers = tuple(None if a is None else a.data.ptr for a in arrays)
    return pointers, tuple(flags), float(reg), (opt.beta1, opt.beta2, opt.eps)


class GraphedSteps:
    """The training steps of one network and optimizer on the GPU (see the module's docstring).

    Call it as :meth:`Network.train_step` is called, without sample weights.
    """

    def __init__(self, net, opt, reg, augment=None):
        self._net = weakref.ref(net)  # (the cache below keys on the network)
        self.opt, self.reg, self.augment = opt, float(reg), augment
        self.signature = None  # taken when the graph is captured
        self.graph = None
        self.failed = False  # the step could not be captured: every step runs uncaptured
        self._warm = False
        self._shape = None

    def matches(self, net, opt, reg, augment=None):
        """Whether this object may go on serving ``net``, ``opt``, ``reg`` and ``augment`` as they are now."""
        if net is not self._net() or opt is not self.opt or float(reg) != self.reg or augment is not self.augment:
            return False
        return self.signature is None or self.signature == _signature(net, opt, reg)

    def __call__(self, xb, yb, lr, rng):
        """One step on the minibatch ``(xb, yb)``, augmented first (drawing from ``rng``) where
        this was made with ``augment``; returns its loss (a device scalar that the next replay
        overwrites: use it before the next call)."""
        if (self.graph is not None and xb.shape == self._shape and xb.dtype == self._x.dtype
                and yb.dtype == self._y.dtype):
            return self._replay(xb, yb, lr, rng)
        if self._warm and self.graph is None and not self.failed:
            try:
                self._capture(xb, yb)
            except Exception:  # noqa: BLE001 - whatever stops the capture, the step runs uncaptured
                self.failed = True
                self.graph = self._pool = self._random = None
            else:
                return self._replay(xb, yb, lr, rng)
        self._warm = True
        if self.augment is not None:
            xb = self.augment(xb, rng)
        return self._net().train_step(xb, yb, self.opt, lr, reg=self.reg, rng=rng)

    def _capture(self, xb, yb):
        import cupy

        net, opt = self._net(), self.opt
        self._x, self._y = xb.copy(), yb.copy()
        self._step_size = cupy.zeros(1, dtype=_F32)
        self._random = _DrawnRandom(cupy)
        self._pool = cupy.cuda.MemoryPool()
        stream = cupy.cuda.Stream(non_blocking=True)
        t = opt.t
        try:
            with stream, cupy.cuda.using_allocator(self._pool.malloc):
                stream.begin_capture()
                try:
                    x = self._x if self.augment is None else self.augment(self._x, self._random)
                    loss = net.train_step(x, self._y, opt, 0.0, reg=self.reg, rng=self._random,
                                          step_size=self._step_size)
                finally:
                    graph = stream.end_capture()
        finally:
            opt.t = t  # nothing ran: the replay takes the step
        graph.upload()
        self.graph, self._loss, self._shape = graph, loss, xb.shape
        self.signature = _signature(net, opt, self.reg)

    def _replay(self, xb, yb, lr, rng):
        import cupy

        cupy.copyto(self._x, xb)
        cupy.copyto(self._y, yb)
        self._random.refill(rng)
        self._step_size.set(np.array([self.opt.next_step_size(lr)], dtype=_F32))
        self.graph.launch()
        return self._loss


_steps = weakref.WeakKeyDictionary()  # network -> its GraphedSteps


def release(net):
    """Drop the graph of ``net``'s steps, if any, and the device memory it holds."""
    _steps.pop(net, None)


def graphed_steps(net, opt, reg, augment=None):
    """The :class:`GraphedSteps` of ``net``, kept from the last epoch where it still fits."""
    steps = _steps.get(net)
    if steps is None or not steps.matches(net, opt, reg, augment):
        _steps.pop(net, None)  # the old graph's memory goes before a new one is taken
        steps = _steps[net] = GraphedSteps(net, opt, reg, augment)
    return steps
