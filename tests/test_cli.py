"""The ``xnorcore`` command line, run as a subprocess the way a user runs it."""

import gzip
import os
import pickle
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xnorcore._backends.gpu import unavailable_reason
from xnorcore._runlog import next_run_dir, read_csv, run_subdir
from xnorcore.cli import build_parser

STEP_LINE = re.compile(r"^step (\d+), loss = \d+\.\d{4}, test accuracy [01]\.\d{4} \(\d+\.\d ex/s\)$")
FINAL_LINES = [
    re.compile(r"^Final test accuracy [01]\.\d{4}$"),
    re.compile(r"^Avg ex/s = \d+\.\d$"),
    re.compile(r"^Med ex/s = \d+\.\d$"),
]

# A small, fast network for tests that only check plumbing.
TINY = ["--layers", "16,16", "--batch_size", "20", "--reg", "0"]


# `python -m` puts the working directory first on sys.path; run from here, not
# from the repository root, so that the installed (compiled) package is the one
# imported, as for a user.
_CWD = Path(__file__).resolve().parent


def xnorcore(*args, env=None, cwd=_CWD, timeout=180):
    """Run ``python -m xnorcore ARGS`` and return the CompletedProcess."""
    full_env = dict(os.environ)
    full_env.pop("PYTHONSTARTUP", None)
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "xnorcore", *map(str, args)],
        capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout,
    )


def assert_one_line_error(proc, *fragments):
    """Exit status 2, exactly one line on stderr holding every fragment, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def idx_bytes(array):
    code = {np.uint8: 0x08}[array.dtype.type]
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def make_mnist(directory, n_train=120, n_test=40, side=6, gz=True, sep="-"):
    """A learnable MNIST-format set: class c lights up pixel block c."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def split(n):
        y = rng.integers(0, 10, n).astype(np.uint8)
        X = rng.integers(0, 60, (n, side, side)).astype(np.uint8)
        flat = X.reshape(n, -1)
        for i, c in enumerate(y):
            flat[i, 3 * c : 3 * c + 3] = 255
        return X, y

    (Xtr, ytr), (Xte, yte) = split(n_train), split(n_test)
    suffix = ".gz" if gz else ""
    for stem, kind, array in (("train-images", "idx3-ubyte", Xtr), ("train-labels", "idx1-ubyte", ytr),
                              ("t10k-images", "idx3-ubyte", Xte), ("t10k-labels", "idx1-ubyte", yte)):
        data = idx_bytes(array)
        (directory / f"{stem}{sep}{kind}{suffix}").write_bytes(gzip.compress(data) if gz else data)
    return directory


def check_train_output(stdout, max_steps, eval_every_n, first_step=0):
    lines = stdout.strip().splitlines()
    steps = [int(STEP_LINE.match(line).group(1)) for line in lines[:-3]]
    expected = [s for s in range(first_step, first_step + max_steps) if s % eval_every_n == 0]
    assert steps == expected, lines
    for pattern, line in zip(FINAL_LINES, lines[-3:]):
        assert pattern.match(line), line
    return float(lines[-3].split()[-1])


# -- parsing (in process: fast) ------------------------------------------------


@pytest.mark.parametrize(
    "old, dashed",
    [("--n_hidden", "--n-hidden"), ("--batch_size", "--batch-size"), ("--max_steps", "--max-steps"),
     ("--eval_every_n", "--eval-every-n"), ("--log_dir", "--log-dir")],
)
def test_old_and_dashed_flag_names(old, dashed):
    parser = build_parser()
    a = parser.parse_args(["train", old, "7"])
    b = parser.parse_args(["train", dashed, "7"])
    dest = old.lstrip("-")
    assert getattr(a, dest) == getattr(b, dest) == (7 if dest != "log_dir" else "7")


def test_old_readme_command_parses():
    args = build_parser().parse_args(
        "train /path/to/mnist/ --log_dir /scratch/logs --batch_size 1024 --n_hidden 1024 "
        "--reg 0 --batch_norm --lr 0.00001 --binary".split()
    )
    assert (args.data_dir, args.log_dir, args.batch_size, args.n_hidden) == ("/path/to/mnist/", "/scratch/logs", 1024, 1024)
    assert (args.reg, args.lr, args.batch_norm, args.binary, args.xnor) == (0.0, 1e-5, True, True, False)


def test_defaults_match_old_script():
    args = build_parser().parse_args(["train"])
    assert (args.batch_size, args.max_steps, args.eval_every_n) == (100, 1000, 100)
    # The one deliberate change: no L1 penalty by default (it hurts binary nets).
    assert args.reg == 0.0
    assert args.data_dir is None and args.log_dir is None and not args.binary


def test_layers_forms():
    parser = build_parser()
    assert parser.parse_args(["train", "--layers", "2"]).layers == ("count", 2)
    assert parser.parse_args(["train", "--layers", "64,32"]).layers == ("sizes", (64, 32))


# -- run directories -------------------------------------------------------------


def test_run_subdir_matches_old_readme():
    assert run_subdir(binary=True, xnor=False, hidden_layer_sizes=(1024,) * 3, batch_norm=True,
                      batch_size=1024, reg=0.0) == Path("bin/matmul/hid_1024/batch_norm/bs_1024/0.0")
    assert run_subdir(binary=False, xnor=False, hidden_layer_sizes=(1024,) * 3, batch_norm=False,
                      batch_size=1024, reg=0) == Path("fp/hid_1024/bs_1024/0.0")
    assert run_subdir(binary=True, xnor=True, hidden_layer_sizes=(512,) * 3, batch_norm=False,
                      batch_size=100, reg=1e-4) == Path("bin/xnor/hid_512/bs_100/0.0001")
    # xnor without binary is ignored, as in the old script.
    assert run_subdir(binary=False, xnor=True, hidden_layer_sizes=(64, 32), batch_norm=False,
                      batch_size=10, reg=0.5) == Path("fp/hid_64-32/bs_10/0.5")


def test_run_subdir_names_conv_layers():
    from xnorcore.nn._convnet import normalize_conv_layers

    conv = normalize_conv_layers((32, "pool", 64, "pool"))
    assert run_subdir(binary=True, xnor=True, hidden_layer_sizes=(512,), batch_norm=False, batch_size=100,
                      reg=0.0, conv_layers=conv) == Path("bin/xnor/conv_32-pool-64-pool/hid_512/bs_100/0.0")
    conv = normalize_conv_layers((8, (16, (3, 5))))
    assert run_subdir(binary=False, xnor=False, hidden_layer_sizes=(64,), batch_norm=True, batch_size=10,
                      reg=0.0, conv_layers=conv) == Path("fp/conv_8-16k3x5/hid_64/batch_norm/bs_10/0.0")


def test_conv_needs_square_images():
    from xnorcore.cli import CLIError, _image_shape

    assert _image_shape(784) == (28, 28, 1)
    with pytest.raises(CLIError, match="--conv needs square single-channel images, got 50 features"):
        _image_shape(50)


def test_train_conv_digits_names_its_run_folder(tmp_path):
    pytest.importorskip("tensorboardX")
    logs = tmp_path / "logs"
    proc = xnorcore("train", "--conv", "--binary", "--layers", "1", "--n_hidden", "16", "--batch_size", "50",
                    "--max_steps", "4",
                    "--eval_every_n", "2", "--log_dir", logs)
    assert proc.returncode == 0, proc.stderr
    check_train_output(proc.stdout, 4, 2)
    # Digits are 8x8: the recommended CNN is one 64-channel 5x5 convolution and a pool.
    assert (logs / "bin" / "matmul" / "conv_64k5x5-pool" / "hid_16" / "bs_50" / "0.0" / "1").is_dir()


def test_train_random_shift_flag(tmp_path):
    pytest.importorskip("tensorboardX")
    common = ("--binary", "--layers", "1", "--n_hidden", "16", "--batch_size", "50", "--max_steps", "2",
              "--eval_every_n", "2", "--log_dir", tmp_path / "logs")
    # Digits are 8x8 images: a shift of 1 trains an MLP on moved digits, one of 8 cannot move them.
    proc = xnorcore("train", "--random_shift", "1", *common)
    assert proc.returncode == 0, proc.stderr
    check_train_output(proc.stdout, 2, 2)
    proc = xnorcore("train", "--random_shift", "8", *common)
    assert proc.returncode != 0
    assert "random_shift=8 must be smaller than the height and the width" in proc.stderr
    proc = xnorcore("train", "--random_shift", "-1", *common)
    assert proc.returncode != 0 and "--random_shift" in proc.stderr


def test_next_run_dir(tmp_path):
    assert next_run_dir(tmp_path / "absent") == tmp_path / "absent" / "1"
    assert next_run_dir(tmp_path) == tmp_path / "1"
    for name in ("1", "2", "7", "notes", "08x"):
        (tmp_path / name).mkdir()
    (tmp_path / "9").write_text("a file, not a run")
    assert next_run_dir(tmp_path) == tmp_path / "8"


# -- errors: one line, exit status 2 ---------------------------------------------


def test_no_command():
    assert_one_line_error(xnorcore(), "a command is required")


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["train", "--batch_size", "0"], ["--batch_size", "expected a positive integer, got '0'"]),
        (["train", "--n_hidden", "x"], ["--n_hidden", "expected a positive integer, got 'x'"]),
        (["train", "--lr", "-1"], ["--lr", "expected a positive number, got '-1'"]),
        (["train", "--reg", "nan"], ["--reg", "expected a number >= 0, got 'nan'"]),
        (["train", "--max_steps", "-5"], ["--max_steps", "expected an integer >= 0"]),
        (["train", "--layers", "3,x"], ["--layers", "got '3,x'"]),
        (["train", "--device", "tpu"], ["--device", "invalid choice: 'tpu'"]),
        (["train", "--bogus"], ["xnorcore train", "unrecognized arguments: --bogus"]),
        (["train", "--max_steps", "0"], ["--max_steps must be at least 1"]),
        (["train", "--n_hidden", "8", "--layers", "4,4"], ["either --n_hidden or --layers"]),
        (["bench", "--sizes", "0"], ["--sizes", "got '0'"]),
        (["bench", "--runs", "two"], ["--runs", "got 'two'"]),
        (["frobnicate"], ["invalid choice: 'frobnicate'"]),
    ],
)
def test_bad_flags(args, fragments):
    assert_one_line_error(xnorcore(*args), *fragments)


def test_missing_data_dir(tmp_path):
    assert_one_line_error(xnorcore("train", tmp_path / "nowhere"), str(tmp_path / "nowhere"), "does not exist")


def test_data_dir_missing_file(tmp_path):
    make_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    assert_one_line_error(xnorcore("train", tmp_path), str(tmp_path), "missing t10k-images-idx3-ubyte[.gz]")


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx(tmp_path, gz):
    make_mnist(tmp_path, gz=gz)
    name = "train-labels-idx1-ubyte" + (".gz" if gz else "")
    path = tmp_path / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    what = "corrupt or truncated gzip data" if gz else "truncated"
    assert_one_line_error(xnorcore("train", tmp_path, *TINY), str(path), what)


def test_bad_magic_idx(tmp_path):
    make_mnist(tmp_path, gz=False)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"\x08\x01" + path.read_bytes()[2:])
    assert_one_line_error(xnorcore("train", tmp_path, *TINY), str(path), "bad magic number")


def test_unwritable_log_dir(tmp_path):
    # Without tensorboardX the run stops earlier, at the missing extra.
    pytest.importorskip("tensorboardX")
    # Under a regular file, so it fails even for root (CI runs as root).
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_one_line_error(
        xnorcore("train", "--log_dir", blocker / "logs", "--max_steps", "1", *TINY),
        "--log_dir", str(blocker / "logs"),
    )


def test_unwritable_save(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = xnorcore("train", "--save", blocker / "model.pkl", "--max_steps", "1", *TINY)
    assert_one_line_error(proc, "--save", "does not exist")


PICKLE_WARNING = "a pickle runs code when it is loaded"


def assert_pickle_warning_then_error(proc, path, *fragments):
    """Exit status 2: the warning that unpickling runs code, then one error line holding every fragment."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith(f"xnorcore: warning: --restore {path}: {PICKLE_WARNING}"), lines[0]
    for fragment in fragments:
        assert fragment in lines[1], (fragment, lines[1])


def test_restore_bad_file(tmp_path):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a pickle")
    assert_pickle_warning_then_error(xnorcore("train", "--restore", bad, "--max_steps", "1"), bad,
                                     "--restore", str(bad), "not a saved estimator")
    other = tmp_path / "other.pkl"
    other.write_bytes(pickle.dumps({"a": 1}))
    assert_pickle_warning_then_error(xnorcore("train", "--restore", other, "--max_steps", "1"), other,
                                     "holds a dict, expected a BNNClassifier")
    assert_one_line_error(xnorcore("train", "--restore", tmp_path / "none.pkl"), "file not found")
    assert_one_line_error(xnorcore("train", "--restore", tmp_path / "none.xnor"), "file not found")


def test_restore_bad_model_file_runs_no_code(tmp_path):
    # A pickle under another name is refused unread: nothing in it runs.
    marker = tmp_path / "ran"
    evil = tmp_path / "model.xnor"
    evil.write_bytes(pickle.dumps(_Touch(str(marker))))
    proc = xnorcore("train", "--restore", evil, "--max_steps", "1")
    assert_one_line_error(proc, f"--restore: {evil}: is a pickle, not an xnorcore model file")
    assert not marker.exists()
    noise = tmp_path / "noise.xnor"
    noise.write_bytes(b"PK\x03\x04 truncated")
    assert_one_line_error(xnorcore("train", "--restore", noise, "--max_steps", "1"),
                          f"--restore: {noise}: not an xnorcore model file")


class _Touch:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _shadow_module(tmp_path, name):
    """A directory that makes ``import name`` fail, for PYTHONPATH."""
    shadow = tmp_path / "shadow" / name
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(f"raise ImportError('No module named {name}')\n")
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path / "shadow"), os.environ.get("PYTHONPATH", "")])}


def test_log_dir_without_tensorboardx(tmp_path):
    env = _shadow_module(tmp_path, "tensorboardX")
    proc = xnorcore("train", "--log_dir", tmp_path / "logs", "--max_steps", "1", *TINY, env=env)
    assert_one_line_error(proc, "needs tensorboardX", "pip install 'xnorcore[tensorboard]'")
    assert not (tmp_path / "logs").exists()


# -- training ---------------------------------------------------------------------


def test_train_digits_learns():
    """The README's command on a smaller budget: digits, piped output, real accuracy."""
    proc = xnorcore("train", "--max_steps", "150", "--eval_every_n", "50", "--layers", "64,64", "--batch_size", "50")
    assert proc.returncode == 0, proc.stderr
    acc = check_train_output(proc.stdout, 150, 50)
    assert acc > 0.85, proc.stdout
    # Piped: no progress bar, nothing on stderr.
    assert proc.stderr == ""


@pytest.mark.parametrize("flags", [["--binary"], ["--binary", "--xnor", "--batch_norm"]])
def test_train_mnist_dir_binary(tmp_path, flags):
    data = make_mnist(tmp_path / "data", sep=".", gz=False)
    proc = xnorcore("train", data, *TINY, *flags, "--max_steps", "30", "--eval_every_n", "10")
    assert proc.returncode == 0, proc.stderr
    check_train_output(proc.stdout, 30, 10)


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_progress_bar_on_terminal():
    """stderr on a terminal gets a tqdm bar; stdout (piped) still gets the plain lines."""
    import fcntl
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "xnorcore", "train", *TINY, "--max_steps", "40", "--eval_every_n", "20"],
        stdout=subprocess.PIPE, stderr=slave, cwd=_CWD,
    )
    os.close(slave)
    terminal = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO once the child has closed the terminal
            break
        if not chunk:
            break
        terminal += chunk
    stdout = proc.stdout.read().decode()
    assert proc.wait(timeout=120) == 0
    os.close(master)
    assert re.search(rb"\d+/40 \[", terminal), terminal[:300]
    check_train_output(stdout, 40, 20)


def test_quiet(tmp_path):
    proc = xnorcore("train", *TINY, "--max_steps", "5", "--eval_every_n", "1", "--quiet")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3
    for pattern, line in zip(FINAL_LINES, lines):
        assert pattern.match(line), line


def test_log_dir_counter_events_and_csv(tmp_path):
    pytest.importorskip("tensorboardX")
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = tmp_path / "logs"
    args = ["train", "--log_dir", logs, "--layers", "3", "--n_hidden", "12", "--batch_size", "25",
            "--reg", "0", "--binary", "--xnor", "--max_steps", "6", "--eval_every_n", "3"]
    first = xnorcore(*args)
    assert first.returncode == 0, first.stderr
    second = xnorcore(*args)
    assert second.returncode == 0, second.stderr
    base = logs / "bin" / "xnor" / "hid_12" / "bs_25" / "0.0"
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]
    assert f"logging to {base / '2'}" in second.stderr

    run = base / "2"
    scalars = read_csv(run / "scalars.csv")
    # Tags as TensorBoard stores them: "train loss" -> "train_loss".
    assert [s for s, _ in scalars["train_loss"]] == list(range(6))
    assert [s for s, _ in scalars["ex/s"]] == list(range(6))
    # Evaluations at steps 0 and 3, then the final accuracy at the last step.
    assert [s for s, _ in scalars["test_acc."]] == [0, 3, 5]

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    assert set(tags["scalars"]) == {"train_loss", "test_acc.", "ex/s"}
    for tag, rows in scalars.items():
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [s for s, _ in rows]
        # Event files hold float32.
        np.testing.assert_array_equal(np.float32([e.value for e in events]), np.float32([v for _, v in rows]))
    # The final line printed is the last test accuracy logged.
    final = float(second.stdout.strip().splitlines()[-3].split()[-1])
    assert round(scalars["test_acc."][-1][1], 4) == final

    hist_tags = tags["histograms"]
    assert hist_tags, "no histograms were written"
    for tag in hist_tags:
        assert [h.step for h in acc.Histograms(tag)] == [0, 3]


@pytest.mark.parametrize("suffix", [".xnor", ".pkl"])
def test_save_and_restore(tmp_path, suffix):
    from xnorcore import load_model

    model = tmp_path / f"model{suffix}"
    proc = xnorcore("train", *TINY, "--max_steps", "40", "--eval_every_n", "20", "--save", model)
    assert proc.returncode == 0, proc.stderr
    acc = check_train_output(proc.stdout, 40, 20)
    assert model.is_file()
    saved_line = proc.stderr.strip().splitlines()[-1]
    if suffix == ".pkl":
        assert saved_line.startswith(f"saved model to {model} (a pickle: {PICKLE_WARNING}")
    else:
        assert saved_line == f"saved model to {model}"

    # --max_steps 0 only evaluates the restored model: the same accuracy.
    again = xnorcore("train", "--restore", model, "--max_steps", "0")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines() == [f"Final test accuracy {acc:.4f}"]
    assert (PICKLE_WARNING in again.stderr) == (suffix == ".pkl")

    # Continuing training updates the model and saves it again; steps go on from 40.
    more = xnorcore("train", *TINY, "--restore", model, "--max_steps", "20", "--eval_every_n", "10", "--save", model)
    assert more.returncode == 0, more.stderr
    check_train_output(more.stdout, 20, 10, first_step=40)
    if suffix == ".pkl":
        with open(model, "rb") as f:
            clf = pickle.load(f)
    else:
        clf = load_model(model)
    assert len(clf.loss_curve_) == 60


def test_save_and_restore_a_cnn(tmp_path, capsys):
    from xnorcore import cli, load_model

    model = tmp_path / "cnn.xnor"
    tiny = ["--layers", "1", "--n_hidden", "16", "--batch_size", "20", "--reg", "0", "--quiet"]
    assert cli.main(["train", "--conv", *tiny, "--max_steps", "3", "--save", str(model)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    acc = float(lines[0].split()[-1])
    clf = load_model(model)
    assert clf.network_.conv_layers == (("conv", 64, (5, 5)), ("pool",))  # recommended for 8x8 digits
    assert clf.image_shape_ == (8, 8, 1) and clf.optimizer_ is not None and len(clf.loss_curve_) == 3

    # --max_steps 0 only evaluates the restored CNN: the same accuracy.
    assert cli.main(["train", "--restore", str(model), "--max_steps", "0"]) == 0
    assert capsys.readouterr().out.strip().splitlines() == [f"Final test accuracy {acc:.4f}"]

    # Training goes on from the saved state, and the CNN is saved again.
    assert cli.main(["train", *tiny, "--restore", str(model), "--max_steps", "2", "--save", str(model)]) == 0
    more = load_model(model)
    assert more.network_.conv_layers == clf.network_.conv_layers
    assert more.loss_curve_[:3] == clf.loss_curve_ and len(more.loss_curve_) == 5
    assert more.optimizer_.t == clf.optimizer_.t + 2


def test_restore_feature_mismatch(tmp_path):
    model = tmp_path / "model.xnor"
    assert xnorcore("train", *TINY, "--max_steps", "2", "--save", model).returncode == 0
    data = make_mnist(tmp_path / "data")
    proc = xnorcore("train", data, "--restore", model, "--max_steps", "1")
    assert_one_line_error(proc, "trained on 64 features but the data has 36")


# -- bench and info ------------------------------------------------------------------


def test_bench_table_and_plot(tmp_path):
    png = tmp_path / "speedup.png"
    proc = xnorcore("bench", "--sizes", "8,65", "--runs", "2", "--threads", "1", "--plot", png)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("| N | Runs | binary_matmul Avg (s) | binary_matmul Std (s) | numpy float32 Avg (s)")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [r[:2] for r in rows] == [["8", "2"], ["65", "2"]]
    for r in rows:
        b_avg, b_std, f_avg, f_std, speedup, speedup_med = map(float, r[2:])
        assert b_avg > 0 and f_avg > 0 and b_std >= 0 and f_std >= 0 and speedup_med > 0
        assert speedup == pytest.approx(f_avg / b_avg, rel=0.02, abs=0.006)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_prepacked():
    proc = xnorcore("bench", "--sizes", "130", "--runs", "1", "--prepacked")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("| 130 | 1 |")


def test_bench_plot_without_matplotlib(tmp_path):
    env = _shadow_module(tmp_path, "matplotlib")
    proc = xnorcore("bench", "--sizes", "8", "--runs", "1", "--plot", tmp_path / "x.png", env=env)
    assert_one_line_error(proc, "--plot needs matplotlib", "pip install 'xnorcore[plot]'")


def _skip_if_gpu():
    if unavailable_reason() is None:
        pytest.skip("a GPU is present")


@pytest.mark.parametrize("command", [["bench", "--sizes", "8", "--runs", "1"], ["train", "--max_steps", "1"]])
def test_gpu_unavailable(tmp_path, command):
    _skip_if_gpu()
    extra = ["--log_dir", tmp_path / "logs"] if command[0] == "train" else []
    proc = xnorcore(*command, "--device", "gpu", *extra)
    line = assert_one_line_error(proc, "--device gpu")
    assert "xnorcore[gpu]" in line or "no" in line.lower()
    # Nothing was created for a run that could not start.
    assert not (tmp_path / "logs").exists()


def test_info():
    proc = xnorcore("info")
    assert proc.returncode == 0, proc.stderr
    import xnorcore as xc

    assert xc.__version__ in proc.stdout
    assert "numpy" in proc.stdout and "tensorboardX" in proc.stdout


def test_console_script_entry_point():
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="console_scripts") if ep.name == "xnorcore"]
    assert eps and eps[0].value == "xnorcore.cli:main"
