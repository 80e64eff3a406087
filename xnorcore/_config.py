"""Build and run-time configuration: :func:`show_config` and :func:`get_config`."""

import platform

import numpy as np

__all__ = ["get_config", "show_config"]


def _gpu_config():
    from ._backends import gpu

    try:
        return dict(gpu.config())
    except Exception as exc:  # config() should report problems itself; show_config never raises them
        return {"unavailable": str(exc)}


def get_config():
    """Describe this installation of xnorcore.

    Returns
    -------
    config : dict
        ``version``, ``python``, ``numpy``, ``machine``, ``cpu`` (the popcount
        variant in use, the variants this CPU supports, the OpenMP thread
        limit) and ``gpu`` (what ``xnorcore._backends.gpu.config()`` reports, with an
        ``unavailable`` reason where the GPU backend cannot run).

    Examples
    --------
    >>> from xnorcore import get_config
    >>> sorted(get_config())
    ['cpu', 'gpu', 'machine', 'numpy', 'python', 'version']
    """
    from . import __version__
    from ._backends import cpu

    return {
        "version": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpu": cpu.config(),
        "gpu": _gpu_config(),
    }


def show_config():
    """Print the version, popcount path, threads and GPU status of xnorcore.

    The popcount variant is chosen at import from the CPU ("avx512" for
    AVX-512 VPOPCNTDQ, "avx2", "scalar" for the POPCNT instruction, "generic"
    otherwise) and can be forced with the environment variable
    ``XNORCORE_POPCOUNT``.  Threads follow ``OMP_NUM_THREADS`` and threadpoolctl.

    Examples
    --------
    >>> import xnorcore
    >>> xnorcore.show_config()  # doctest: +SKIP
    xnorcore 0.1.0 (python 3.11.7, numpy 2.4.0, x86_64)
    CPU: popcount avx512 (available: generic, scalar, avx2, avx512), 2 OpenMP threads
    GPU: unavailable (backend='gpu' needs CuPy, ...)
    """
    config = get_config()
    cpu, gpu = config["cpu"], config["gpu"]
    print(
        f"xnorcore {config['version']} (python {config['python']}, "
        f"numpy {config['numpy']}, {config['machine']})"
    )
    if cpu.get("unavailable"):
        print(f"CPU: unavailable ({cpu['unavailable']})")
    else:
        print(
            f"CPU: popcount {cpu['popcount']} (available: {', '.join(cpu['variants'])}), "
            f"{cpu['threads']} OpenMP threads"
        )
    if gpu.get("unavailable"):
        print(f"GPU: unavailable ({gpu['unavailable']})")
    else:
        details = ", ".join(f"{key} {value}" for key, value in gpu.items() if value is not None)
        print(f"GPU: {details}")
