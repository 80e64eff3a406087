"""Every CUDA source in kernels/ compiles for sm_80 and sm_90, the Hopper one for sm_90a too
(CPU only; needs nvcc).

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
    assert {"conv.cu", "conv_mma.cu", "pack.cu", "real.cu", "xnor_gemm_mma.cu", "xnor_gemm_popc.cu",
            "xnor_gemm_wgmma.cu"} <= set(SOURCES)
    assert KERNELS.joinpath("xnor_layout.h").is_file() and KERNELS.joinpath("xnor_mma.h").is_file()


# wgmma exists only in the arch-specific sm_90a target, spelled with -gencode
# (the -arch=sm_90a shorthand of some nvcc versions also runs a plain sm_90 pass).
TARGETS = {"sm_80": "-arch=sm_80", "sm_90": "-arch=sm_90", "sm_90a": "-gencode=arch=compute_90a,code=sm_90a"}
CASES = [(source, arch) for source in SOURCES for arch in ("sm_80", "sm_90")] + [("xnor_gemm_wgmma.cu", "sm_90a")]


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize(("source", "arch"), CASES)
def test_kernel_compiles(source, arch, tmp_path):
    src = tmp_path / source
    src.write_text(KERNELS.joinpath(source).read_text(encoding="utf-8"), encoding="utf-8")
    result = subprocess.run(
        [NVCC, TARGETS[arch], "-cubin", "-std=c++17", f"-I{KERNELS}", "-o", str(tmp_path / "out.cubin"), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"nvcc failed for {source} ({arch}):\n{result.stderr}"
    assert (tmp_path / "out.cubin").stat().st_size > 0
