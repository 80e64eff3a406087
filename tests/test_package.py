"""Package conventions: import errors, the version, quick --help and info, the
bench plot, the README's snippets."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import xnorcore

# The folder that holds the imported xnorcore package (a checkout or site-packages).
_ROOT = Path(xnorcore.__file__).resolve().parent.parent
_README = Path(__file__).resolve().parent.parent / "README.md"


def _python(code, *, path=_ROOT, cwd=None, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(path))
    env.pop("PYTHONSTARTUP", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=cwd or path, timeout=timeout)


def test_import_without_the_compiled_extension_says_so(tmp_path):
    package = tmp_path / "xnorcore"
    shutil.copytree(Path(xnorcore.__file__).parent, package,
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    proc = _python("import xnorcore", path=tmp_path)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: xnorcore's compiled extension is not built"), proc.stderr
    assert "pip install ." in last and "circular import" not in proc.stderr


def test_import_with_a_broken_extension_says_so(tmp_path):
    package = tmp_path / "xnorcore"
    shutil.copytree(Path(xnorcore.__file__).parent, package,
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    (package / "_bitpack.py").write_text("raise ImportError('libgomp.so.1: cannot open shared object file')\n")
    proc = _python("import xnorcore", path=tmp_path)
    last = proc.stderr.strip().splitlines()[-1]
    assert "compiled extension xnorcore._bitpack is present but cannot be loaded" in last, proc.stderr
    assert "libgomp.so.1" in last


def test_version_is_defined_once():
    from importlib.metadata import PackageNotFoundError, version

    from xnorcore import _version

    assert xnorcore.__version__ is _version.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", xnorcore.__version__)
    pyproject = _README.parent / "pyproject.toml"
    if pyproject.exists() and sys.version_info >= (3, 11):  # a source checkout
        import tomllib

        config = tomllib.loads(pyproject.read_text())
        assert "version" not in config["project"] and "version" in config["project"]["dynamic"]
        assert config["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "xnorcore._version.__version__"}
    try:
        installed = version("xnorcore")
    except PackageNotFoundError:
        return
    if Path(xnorcore.__file__).resolve().is_relative_to(Path(sys.prefix).resolve()):
        assert installed == xnorcore.__version__


_MODULES_AFTER = """
import sys
from xnorcore.cli import main
try:
    status = main({argv!r})
except SystemExit as exc:
    status = exc.code
print("STATUS", status)
print("LOADED", " ".join(sorted({{m.partition('.')[0] for m in sys.modules}})))
"""


def _loaded_after(argv):
    proc = _python(_MODULES_AFTER.format(argv=argv))
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith(("STATUS", "LOADED")))
    assert lines["STATUS"] in ("0", "None"), proc.stdout
    return set(lines["LOADED"].split())


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["bench", "--help"], ["--version"]])
def test_help_imports_no_scikit_learn(argv):
    loaded = _loaded_after(argv)
    assert "xnorcore" in loaded
    assert not loaded & {"sklearn", "scipy", "matplotlib", "tensorboardX", "dask"}


def test_info_reads_versions_without_importing_the_extras():
    loaded = _loaded_after(["info"])
    assert not loaded & {"matplotlib", "tensorboardX", "dask", "distributed"}


def test_bench_plot_title_fits_the_figure(tmp_path):
    pytest.importorskip("matplotlib", reason="needs matplotlib")
    import matplotlib.image

    from xnorcore.bench import plot_speedup

    rows = [dict(n=n, speedup=s, float_med=s, binary_med=1.0) for n, s in [(256, 2.0), (1024, 9.0), (4096, 17.0)]]
    titles = ["binary_matmul vs numpy float32 (CPU, 12 threads, operands prepacked)",
              "binary_matmul vs cuBLAS float32 (GPU, packing timed, with a long description that goes on)",
              "binary_matmul_of_a_name_without_any_spaces_in_it_that_goes_on_and_on_and_on",
              None]
    for i, title in enumerate(titles):
        path = tmp_path / f"{i}.png"
        plot_speedup(rows, path, title=title)
        # A title cut off by the edge of the picture leaves ink on the edge.
        ink = (matplotlib.image.imread(path)[..., :3] < 0.9).any(axis=-1)
        edges = {"top": ink[:2], "bottom": ink[-2:], "left": ink[:, :2], "right": ink[:, -2:]}
        assert not any(e.any() for e in edges.values()), (title, {k: int(e.sum()) for k, e in edges.items()})


def _readme_block(heading):
    """The first python block under the README section ``heading``."""
    text = _README.read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


_FAKE_CUPY = """
# Stands in for CuPy so that the snippet runs on the CPU: only its names are checked.
import numpy
asarray = asnumpy = numpy.asarray
"""


@pytest.mark.skipif(not _README.exists(), reason="needs the source checkout's README.md")
def test_readme_gpu_snippet_defines_every_name(tmp_path):
    (tmp_path / "cupy.py").write_text(_FAKE_CUPY)
    code = _readme_block("The GPU")
    proc = _python(code, path=os.pathsep.join([str(tmp_path), str(_ROOT)]), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not _README.exists(), reason="needs the source checkout's README.md")
def test_readme_gpu_snippet_runs_on_the_gpu():
    from xnorcore._backends.gpu import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    proc = _python(_readme_block("The GPU"))
    assert proc.returncode == 0, proc.stderr
