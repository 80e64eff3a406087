"""Every CUDA source in kernels/ compiles for sm_80 and sm_90 (CPU only; needs nvcc).

Each source is compiled from a copy outside the package with the package's
kernels folder on the include path, as the GPU loader passes it to NVRTC, so a
source that includes a header missing from the package data fails here.

The GPU tests do not run in CI, so this is what keeps a syntax error in a kernel
from reaching main unseen.
"""

import importlib.resources
import shutil
import subprocess

import pytest

KERNELS = importlib.resources.files("xnorcore.kernels")
SOURCES = sorted(p.name for p in KERNELS.iterdir() if p.name.endswith(".cu"))
NVCC = shutil.which("nvcc")


def test_kernels_are_package_data():
    assert {"pack.cu", "xnor_gemm_mma.cu", "xnor_gemm_popc.cu"} <= set(SOURCES)
    assert KERNELS.joinpath("xnor_layout.h").is_file()


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", SOURCES)
def test_kernel_compiles(source, arch, tmp_path):
    src = tmp_path / source
    src.write_text(KERNELS.joinpath(source).read_text(encoding="utf-8"), encoding="utf-8")
    result = subprocess.run(
        [NVCC, f"-arch={arch}", "-cubin", "-std=c++17", f"-I{KERNELS}", "-o", str(tmp_path / "out.cubin"), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"nvcc failed for {source} ({arch}):\n{result.stderr}"
    assert (tmp_path / "out.cubin").stat().st_size > 0
