"""Array helpers shared by every module: which library an array belongs to, and copies to the host.

The rest of xnorcore asks these questions only through this module, so that
numpy and cupy arrays (and :class:`~xnorcore.PackedBits` holding either) are
told apart in one way everywhere.
"""

import numpy as np

__all__ = ["get_array_module", "is_cupy", "is_dask", "reject_masked", "to_numpy", "to_module"]

# PackedBits is defined in xnorcore.ops, which imports this module: it is
# recognised by its module name instead of an import cycle.
_PACKED_MODULE = __name__.rpartition(".")[0] + ".ops"


def is_cupy(x):
    """Whether ``x`` is a cupy array, or a PackedBits whose words are one."""
    if type(x) is np.ndarray:
        return False
    if type(x).__module__ == _PACKED_MODULE:
        x = x.words
    return type(x).__module__.partition(".")[0] == "cupy"


def is_dask(x):
    """Whether ``x`` is a dask array, or a PackedBits whose words are one
    (told by module name: dask is imported only by those who use it)."""
    if type(x).__module__ == _PACKED_MODULE:
        x = x.words
    return type(x).__module__.partition(".")[0] == "dask"


def get_array_module(*arrays):
    """Return ``cupy`` if any of ``arrays`` is a cupy array (or PackedBits on the GPU), else ``numpy``."""
    for x in arrays:
        if is_cupy(x):
            import cupy

            return cupy
    return np


def to_numpy(a):
    """``a`` on the host: cupy arrays are copied, PackedBits get numpy words, anything else is returned as is."""
    if a is None or isinstance(a, np.ndarray):
        return a
    if type(a).__module__ == _PACKED_MODULE:
        return type(a)._trusted(to_numpy(a.words), a.shape, a.axis)
    if is_cupy(a):
        return a.get()
    return a


def to_module(a, xp):
    """``a`` (an array or PackedBits) with its data in ``xp`` (numpy or cupy)."""
    if xp is np:
        return to_numpy(a)
    if type(a).__module__ == _PACKED_MODULE:
        return type(a)._trusted(to_module(a.words, xp), a.shape, a.axis)
    if isinstance(a, np.ndarray):
        return xp.asarray(a)
    return a


def reject_masked(value, name):
    """Refuse a numpy masked array: kernels would read the data hidden under its mask."""
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(
            f"{name} must not be a masked array (numpy.ma): the data hidden under its mask "
            f"would be used; fill or drop the masked entries first, e.g. {name}.filled(0)"
        )
