"""How many CPU threads a kernel runs on: one rule for every kernel.

Every thread count that reaches an OpenMP kernel goes through
:func:`kernel_threads`.  A count is never larger than the number of CPUs this
process may run on: OpenMP starts one thread per requested thread, and a
count such as ``10**6`` (or ``OMP_NUM_THREADS=100000``) exhausts the stacks of
the process and crashes it, while more threads than CPUs cannot go faster.
"""

import contextlib
import contextvars
import numbers
import os

__all__ = ["MIN_THREAD_WORK_NS", "available_cpus", "check_n_threads", "kernel_threads", "training_thread_count",
           "training_threads", "work_threads"]

#: A kernel called with ``n_threads=None`` runs on more than one thread only
#: when each thread gets at least this much work (nanoseconds on one core, as
#: estimated from the kernel's size), as OpenBLAS runs small products on one
#: thread.  Starting and joining threads costs microseconds on a quiet machine,
#: but on a busy one a thread may wait a whole scheduler time slice for a core,
#: and the call waits for its share: small calls on several threads then take
#: many times longer than on one (benchmarks/RESULTS.md).
MIN_THREAD_WORK_NS = 1_000_000


def available_cpus():
    """Number of CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def check_n_threads(n_threads, name="n_threads"):
    """Validate a thread count given by a user: None, or an integer >= 1.

    Returns None or the count as a Python int (not yet clamped).

    Raises
    ------
    ValueError
        If ``n_threads`` is not None and not an integer >= 1 (booleans, floats
        and strings included), naming ``name``.
    """
    if n_threads is None:
        return None
    if type(n_threads) is int and n_threads >= 1:  # the common case, without the ABC check
        return n_threads
    if not isinstance(n_threads, numbers.Integral) or isinstance(n_threads, bool) or n_threads < 1:
        raise ValueError(f"{name} must be None or a positive integer, got {name}={n_threads!r}")
    return int(n_threads)


def kernel_threads(n_threads, name="n_threads"):
    """The number of threads a CPU kernel runs on for the request ``n_threads``.

    ``None`` means OpenMP's current limit (``OMP_NUM_THREADS``, threadpoolctl).
    Either way the result is between 1 and :func:`available_cpus`.
    """
    n = check_n_threads(n_threads, name)
    if n is None:
        from . import _bitpack

        n = _bitpack.max_threads()
    return 1 if n <= 1 else min(n, available_cpus())


def work_threads(n_threads, work_ns=None):
    """The thread count of a kernel call with an estimated ``work_ns`` of work (ns on one core).

    ``n_threads=None`` with an estimate gives one thread per
    :data:`MIN_THREAD_WORK_NS` of work, from 1 up to :func:`kernel_threads`'s
    limit; an explicit ``n_threads`` (or no estimate) is
    :func:`kernel_threads`'s count.  Every CPU kernel, GEMM and conv alike,
    takes its count from here.
    """
    limit = kernel_threads(n_threads)
    if n_threads is None and work_ns is not None:
        return max(1, min(limit, int(work_ns // MIN_THREAD_WORK_NS)))
    return limit


_training_threads = contextvars.ContextVar("xnorcore_training_threads", default=1)


#: A kernel of a training step runs on one thread below this many elements
#: (about a millisecond of work), for the reason of MIN_THREAD_WORK_NS.
MIN_TRAINING_THREAD_ELEMENTS = 1 << 20


def training_threads(elements=None):
    """The thread count of a CPU kernel inside a training step over ``elements`` values:
    1, unless :func:`training_thread_count` set another for the fit that runs it and
    the kernel has at least :data:`MIN_TRAINING_THREAD_ELEMENTS` of them."""
    if elements is not None and elements < MIN_TRAINING_THREAD_ELEMENTS:
        return 1
    return _training_threads.get()


@contextlib.contextmanager
def training_thread_count(n):
    """Within this context (of this thread), training steps run their CPU kernels on ``n`` threads."""
    token = _training_threads.set(kernel_threads(n))
    try:
        yield
    finally:
        _training_threads.reset(token)
