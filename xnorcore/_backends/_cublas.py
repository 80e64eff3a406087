"""Float32 matrix products on cuBLAS, called directly (ctypes), for training on the GPU.

CuPy refuses any cuBLAS call while a stream is being captured into a CUDA
graph, although cuBLAS supports capture (given a workspace of its own, so that
it allocates nothing while it is captured).  Training's products therefore go
through :func:`matmul`, in captured and uncaptured steps alike, so that both
compute the same numbers.  The library is the one CuPy has loaded.
"""

import ctypes
import threading

import numpy as np

#: Workspace per handle: what cuBLAS recommends for Hopper.
_WORKSPACE_BYTES = 32 << 20
_OP_N, _OP_T = 0, 1

_lock = threading.Lock()
_lib = None
_handles = {}  # (device, thread) -> (handle, workspace array)


def _library():
    global _lib
    if _lib is None:
        import cupy

        major = cupy.cuda.runtime.runtimeGetVersion() // 1000
        errors = []
        for name in (f"libcublas.so.{major}", "libcublas.so"):
            try:
                lib = ctypes.CDLL(name)
                break
            except OSError as exc:
                errors.append(str(exc))
        else:
            raise RuntimeError(f"cannot load cuBLAS for training's products: {'; '.join(errors)}")
        for fn, args in (
            ("cublasCreate_v2", [ctypes.POINTER(ctypes.c_void_p)]),
            ("cublasSetStream_v2", [ctypes.c_void_p, ctypes.c_void_p]),
            ("cublasSetWorkspace_v2", [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]),
            ("cublasSgemm_v2", [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                                ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]),
        ):
            getattr(lib, fn).argtypes = args
            getattr(lib, fn).restype = ctypes.c_int
        _lib = lib
    return _lib


def _check(status, what):
    if status != 0:
        raise RuntimeError(f"cuBLAS {what} failed with status {status}")


def _handle():
    """This thread's cuBLAS handle on the current device, with its workspace."""
    import cupy

    key = (cupy.cuda.runtime.getDevice(), threading.get_ident())
    entry = _handles.get(key)
    if entry is None:
        with _lock:
            lib = _library()
            handle = ctypes.c_void_p()
            _check(lib.cublasCreate_v2(ctypes.byref(handle)), "handle creation")
            workspace = cupy.empty(_WORKSPACE_BYTES, dtype=np.uint8)
            _check(lib.cublasSetWorkspace_v2(handle, ctypes.c_void_p(workspace.data.ptr), _WORKSPACE_BYTES),
                   "workspace")
            entry = _handles[key] = (handle, workspace)
    return entry[0]


_ONE = ctypes.c_float(1.0)
_ZERO = ctypes.c_float(0.0)


def _layout(x):
    """(transposed?, leading dimension) of a 2-D float32 array as cuBLAS reads it (column major), or None."""
    rows, cols = x.shape
    s0, s1 = x.strides
    if s1 == 4 and (s0 == 4 * cols or rows == 1):
        return _OP_N, max(cols, 1)  # C order: column major of x.T
    if s0 == 4 and (s1 == 4 * rows or cols == 1):
        return _OP_T, max(rows, 1)  # F order (a transposed C-contiguous array): column major of x
    return None


def matmul(a, b):
    """``a @ b`` of 2-D float32 cupy arrays, each C- or F-contiguous, as a new C-contiguous array."""
    import cupy

    if a.dtype != np.float32 or b.dtype != np.float32 or a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul takes 2-D float32 operands of matching inner size, got {a.dtype} {a.shape} "
                         f"and {b.dtype} {b.shape}")
    layout_a, layout_b = _layout(a), _layout(b)
    if layout_a is None:
        a, layout_a = cupy.ascontiguousarray(a), (_OP_N, max(a.shape[1], 1))
    if layout_b is None:
        b, layout_b = cupy.ascontiguousarray(b), (_OP_N, max(b.shape[1], 1))
    (m, k), n = a.shape, b.shape[1]
    out = cupy.empty((m, n), dtype=np.float32)
    if out.size == 0:
        return out
    if k == 0:
        out.fill(0)
        return out
    lib, handle = _library(), _handle()
    _check(lib.cublasSetStream_v2(handle, ctypes.c_void_p(cupy.cuda.get_current_stream().ptr)), "set stream")
    # Row-major out = a @ b is column-major out.T = b.T @ a.T.
    _check(lib.cublasSgemm_v2(handle, layout_b[0], layout_a[0], n, m, k, ctypes.byref(_ONE),
                              ctypes.c_void_p(b.data.ptr), layout_b[1], ctypes.c_void_p(a.data.ptr), layout_a[1],
                              ctypes.byref(_ZERO), ctypes.c_void_p(out.data.ptr), n), "sgemm")
    return out
