"""GPU backend (CuPy); see xnorcore._cpu for the backend contract."""


def require():
    """Raise a clear RuntimeError if the GPU backend cannot run here."""
    try:
        import cupy  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "backend='gpu' needs CuPy, which is not installed; install it with "
            "pip install 'xnorcore[gpu]'"
        ) from None
    raise RuntimeError("the GPU backend is not available yet")
