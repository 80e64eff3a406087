"""The ``xnorcore`` command line: ``train``, ``bench`` and ``info``.

``xnorcore train`` accepts the flags of ``mnist_fc_bnn.py`` under their
underscored names (``--n_hidden``) and dashed (``--n-hidden``), prints the same
progress lines, and names ``--log_dir`` run folders the same way.  Errors a
user can fix (missing or corrupt data, an unwritable path, a bad flag value)
print one line on stderr and exit with status 2; ``--debug`` shows the
traceback instead.
"""

import argparse
import json
import math
import os
import pickle
import statistics
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main", "build_parser"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CLIError(Exception):
    """An error the user can fix; printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr (no usage block)."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# -- argument types: each names what was expected and what was given ----------


def _int_at_least(low, expected, high=None):
    """An argparse type: an integer in [``low``, ``high``], else an error saying ``expected``."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonnegative_int = _int_at_least(0, "an integer >= 0")
# numpy's RandomState, which scikit-learn seeds, takes seeds below 2**32.
_seed = _int_at_least(0, f"an integer from 0 to {2**32 - 1}", high=2**32 - 1)


def _float_checked(text, low_ok):
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not np.isfinite(value) or not low_ok(value):
        return None
    return value


def _positive_float(text):
    value = _float_checked(text, lambda v: v > 0)
    if value is None:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _nonnegative_float(text):
    value = _float_checked(text, lambda v: v >= 0)
    if value is None:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _layers(text):
    """``3`` (three hidden layers of --n_hidden units) or ``512,256`` (the widths)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected a number of hidden layers (e.g. 3) or comma-separated widths "
            f"(e.g. 512,256), all positive, got {text!r}"
        )
    if len(values) == 1:
        return ("count", values[0])
    return ("sizes", tuple(values))


def _sizes(text):
    try:
        values = [int(p) for p in text.replace(",", " ").split()]
    except ValueError:
        values = None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integer sizes such as 512,1024, got {text!r}")
    return values


def _add(parser, name, *more, **kwargs):
    """Add an option under its old underscore name and a dashed alias."""
    names = [name]
    dashed = name.replace("_", "-")
    if dashed != name:
        names.append(dashed)
    parser.add_argument(*names, *more, **kwargs)


def build_parser():
    """Return the argparse parser of the ``xnorcore`` command."""
    from ._version import __version__

    parser = _Parser(
        prog="xnorcore",
        description="Binary neural networks with exact XNOR-popcount matrix products.",
    )
    parser.add_argument("--version", action="version", version=f"xnorcore {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    # -- train ----------------------------------------------------------------
    tr = sub.add_parser(
        "train",
        help="train a fully connected (binary) network, or a CNN, on MNIST-format data or digits",
        description=(
            "Train a fully connected network with BNNClassifier and report test accuracy "
            "and speed. Flags also work under their mnist_fc_bnn.py names (--n_hidden as --n-hidden)."
        ),
        epilog=(
            "Without DATA_DIR it trains on scikit-learn's bundled 8x8 digits (1437 train, "
            "360 test images), so it needs no download. With --log_dir each run gets a folder "
            "LOG_DIR/{bin/xnor,bin/matmul,fp}/[conv_C-pool-.../]hid_N/[batch_norm/]bs_B/REG/RUN (conv_... "
            "names the conv layers of --conv; hid_N for three "
            "layers of N units, else the widths joined by '-'; RUN counts up from 1) holding "
            "TensorBoard event files (scalars train_loss, test_acc., ex/s; histograms of weights, "
            "binarized weights, activations and gradients), scalars.csv and args.json."
        ),
    )
    tr.add_argument(
        "data_dir", nargs="?", metavar="DATA_DIR",
        help="directory of MNIST-format IDX files (train-images-idx3-ubyte[.gz], "
        "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]); "
        "default: scikit-learn's digits",
    )
    _add(tr, "--log_dir", metavar="LOG_DIR", help="root folder for TensorBoard event files and scalars.csv (needs tensorboardX)")
    _add(tr, "--n_hidden", type=_positive_int, default=None, metavar="N", help="units per hidden layer (default 512)")
    _add(tr, "--layers", type=_layers, default=None, metavar="L",
         help="number of hidden layers of --n_hidden units (default 3, as the old network), "
         "or comma-separated widths such as 1024,512,256")
    _add(tr, "--reg", type=_nonnegative_float, default=0.0,
         help="L1 penalty on the weights (default 0)")
    _add(tr, "--lr", type=_positive_float, default=1e-3,
         help="Adam learning rate (default 1e-3)")
    _add(tr, "--batch_size", type=_positive_int, default=100, metavar="B", help="examples per step (default 100)")
    _add(tr, "--max_steps", type=_nonnegative_int, default=1000, metavar="STEPS",
         help="training steps (default 1000; 0 with --restore only evaluates)")
    _add(tr, "--eval_every_n", type=_positive_int, default=100, metavar="N",
         help="evaluate and print every N steps (default 100)")
    _add(tr, "--binary", action="store_true", help="binary (+1/-1) hidden weights and activations")
    _add(tr, "--xnor", action="store_true", help="with --binary, use the XNOR-popcount product (otherwise float matmul)")
    _add(tr, "--batch_norm", action="store_true", help="batch-normalize activations")
    _add(tr, "--conv", action="store_true",
         help="a CNN: the recommended conv layers for the image size (conv_layers='auto', "
         "for 28x28 digits 5x5 convolutions of 64 and 128 channels, each with a 2x2 max-pool) "
         "before the hidden layers; the images must be square with one channel")
    _add(tr, "--random_shift", type=_nonnegative_int, default=None, metavar="PIXELS",
         help="move each training image by up to PIXELS pixels along each axis (random_shift; "
         "default: 2 for 28x28 images with --conv, none otherwise; 0 turns it off)")
    _add(tr, "--device", choices=("cpu", "gpu", "auto"), default="cpu", help="where to train (default cpu)")
    _add(tr, "--seed", type=_seed, default=0, help="seed for weights and batch order (default 0)")
    _add(tr, "--save", metavar="PATH",
         help="save the trained estimator (an MLP, or a CNN with --conv) to PATH as a model file that holds "
         "no code (xnorcore.save_model), "
         "or as a pickle if PATH ends in .pkl; written atomically: a failed write keeps an existing file")
    _add(tr, "--restore", metavar="PATH",
         help="continue from an estimator saved with --save (a .pkl path is unpickled, which runs code "
         "from the file: a warning says so): it keeps its architecture "
         "(layers, conv layers, --binary, --xnor, --batch_norm) and trains with this command's --lr, "
         "--batch_size, --reg and --device")
    _add(tr, "--quiet", "-q", action="store_true", help="print only the final lines")
    _add(tr, "--debug", action="store_true", help="show a traceback on errors")
    tr.set_defaults(func=cmd_train, subparser=tr)

    # -- bench ----------------------------------------------------------------
    be = sub.add_parser(
        "bench",
        help="time binary_matmul against the float32 product (old matmul_bench.py)",
        description=(
            "Time binary_matmul of two N x N +1/-1 matrices against the float32 product "
            "(numpy on cpu, cuBLAS on gpu). Each size is checked for an exact match first; "
            "one warm-up call is dropped. Speedup = float time / binary time."
        ),
    )
    _add(be, "--device", choices=("cpu", "gpu"), default="cpu", help="cpu (numpy float32) or gpu (CuPy/cuBLAS float32)")
    _add(be, "--sizes", type=_sizes, default=None, metavar="N,N,...",
         help="matrix sizes (default 256,512,1024,2048 on cpu; 1024,2048,4096,8192 on gpu)")
    _add(be, "--runs", type=_positive_int, default=10, help="timed calls per size and method (default 10)")
    _add(be, "--threads", type=_positive_int, default=None,
         help="CPU threads for both products, at most the CPUs available (default: the libraries' defaults)")
    _add(be, "--prepacked", action="store_true", help="pack operands once outside the timed calls")
    _add(be, "--plot", metavar="FILE.png", help="draw speedup against N (needs matplotlib)")
    _add(be, "--debug", action="store_true", help="show a traceback on errors")
    be.set_defaults(func=cmd_bench, subparser=be)

    # -- info -----------------------------------------------------------------
    inf = sub.add_parser("info", help="versions, CPU features, popcount path, threads, GPU status",
                         description="Print versions, CPU features, the popcount path, threads and GPU status.")
    _add(inf, "--debug", action="store_true", help="show a traceback on errors")
    inf.set_defaults(func=cmd_info, subparser=inf)
    return parser


# -- train --------------------------------------------------------------------


def _hidden_layer_sizes(args):
    from ._runlog import DEFAULT_N_LAYERS

    n_hidden = args.n_hidden if args.n_hidden is not None else 512
    if args.layers is None:
        return (n_hidden,) * DEFAULT_N_LAYERS
    kind, value = args.layers
    if kind == "count":
        return (n_hidden,) * value
    if args.n_hidden is not None:
        raise CLIError("give either --n_hidden or --layers with widths, not both")
    return value


def _image_shape(n_features, flag="--conv"):
    """``(side, side, 1)`` for square single-channel images of ``n_features`` pixels (``flag`` asked for them)."""
    side = math.isqrt(n_features)
    if side * side != n_features:
        raise CLIError(f"{flag} needs square single-channel images, got {n_features} features per image")
    return (side, side, 1)


def _load_data(args):
    from .datasets import load_digits_split, load_mnist

    if args.data_dir is None:
        return load_digits_split(random_state=args.seed), "digits"
    return load_mnist(args.data_dir), str(args.data_dir)


def _check_writable_file(path, flag):
    """Fail before training, not after, if ``path`` cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise CLIError(f"{flag}: {path} is a directory, expected a file path")
    if path.exists() and not path.is_file():
        # Never replace a device or a FIFO (a write goes to a temporary file renamed over it).
        raise CLIError(f"{flag}: {path} exists and is not a regular file")
    parent = path.parent
    if not parent.is_dir():
        raise CLIError(f"{flag}: cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise CLIError(f"{flag}: cannot write {path}: permission denied on {parent}")


def _require_gpu():
    """Fail before loading data or creating a run folder if --device gpu cannot work."""
    from .bench import BenchError, _array_module

    try:
        _array_module("gpu")
    except BenchError as exc:
        raise CLIError(str(exc)) from None


def _is_pickle_path(path):
    return Path(path).suffix.lower() in (".pkl", ".pickle")


PICKLE_WARNING = ("a pickle runs code when it is loaded: restore only pickles you wrote yourself; "
                  "--save to a path not ending in .pkl writes a model file that holds no code")


def _restore(path, n_features):
    """The estimator in ``path``: a model file of :func:`xnorcore.save_model`, or a pickle (``.pkl``)."""
    from ._model_io import ModelFileError, load_model

    if not os.path.exists(path):
        raise CLIError(f"--restore: {path}: file not found")
    if _is_pickle_path(path):
        print(f"xnorcore: warning: --restore {path}: {PICKLE_WARNING}", file=sys.stderr, flush=True)
        try:
            with open(path, "rb") as f:
                clf = pickle.load(f)
        except FileNotFoundError:
            raise CLIError(f"--restore: {path}: file not found") from None
        except OSError as exc:
            raise CLIError(f"--restore: {path}: cannot be read ({exc.strerror or exc})") from None
        except Exception as exc:  # unpickling raises many types for a bad file
            raise CLIError(f"--restore: {path}: not a saved estimator ({type(exc).__name__}: {exc})") from None
    else:
        try:
            clf = load_model(path)
        except FileNotFoundError:
            raise CLIError(f"--restore: {path}: file not found") from None
        except ModelFileError as exc:
            raise CLIError(f"--restore: {exc}") from None
        except OSError as exc:
            raise CLIError(f"--restore: {path}: cannot be read ({exc.strerror or exc})") from None
    from .estimator import BNNClassifier

    if not isinstance(clf, BNNClassifier):
        raise CLIError(f"--restore: {path}: holds a {type(clf).__name__}, expected a BNNClassifier saved with --save")
    fitted = getattr(clf, "n_features_in_", None)
    if fitted is not None and fitted != n_features:
        raise CLIError(
            f"--restore: {path}: model was trained on {fitted} features but the data has {n_features}"
        )
    return clf


def _conv_layers(clf, n_features):
    """The normalized conv layers that ``clf`` has (or will have once fitted on ``n_features``)."""
    from .nn._convnet import conv_config

    network = getattr(clf, "network_", None)
    if network is not None:
        return getattr(network, "conv_layers", ())
    return conv_config(clf.image_shape, clf.conv_layers, n_features)[1]


def _batches(n_samples, batch_size, rng):
    """Endless batches of exactly ``batch_size`` indices from shuffled epochs."""
    order = np.empty(0, dtype=np.intp)
    while True:
        while order.size < batch_size:
            order = np.concatenate([order, rng.permutation(n_samples)])
        yield order[:batch_size]
        order = order[batch_size:]


def _histograms(clf):
    network = getattr(clf, "network_", None)
    get = getattr(network, "histograms", None)
    return get() if callable(get) else {}


class _Output:
    """Progress lines to stdout; a tqdm bar on stderr when it is a terminal."""

    def __init__(self, total, quiet):
        self.quiet = quiet
        self.bar = None
        if not quiet and total > 0 and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True, leave=False)

    def line(self, text, always=False):
        if self.quiet and not always:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def step(self, loss):
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def cmd_train(args):
    hidden = _hidden_layer_sizes(args)
    if args.restore is None and args.max_steps == 0:
        raise CLIError("--max_steps must be at least 1 unless --restore gives a trained model")
    if args.device == "gpu":
        _require_gpu()
    if args.save is not None:
        _check_writable_file(args.save, "--save")
    if args.log_dir is not None:
        from ._runlog import require_tensorboardx

        require_tensorboardx()

    (X_train, y_train, X_test, y_test), source = _load_data(args)
    classes = np.unique(np.concatenate([y_train, y_test]))

    if args.restore is not None:
        clf = _restore(args.restore, X_train.shape[1])
        hidden = tuple(getattr(clf, "hidden_layer_sizes", hidden))
        # The model keeps its architecture; how it trains from here on is
        # this command's business.
        clf.set_params(learning_rate_init=args.lr, batch_size=args.batch_size, reg=args.reg,
                       device=args.device, verbose=False)
        if args.random_shift is not None:
            clf.set_params(random_shift=args.random_shift)
    else:
        from .estimator import BNNClassifier

        conv = {}
        if args.conv:
            conv = dict(image_shape=_image_shape(X_train.shape[1]), conv_layers="auto")
        if args.random_shift:
            conv.setdefault("image_shape", _image_shape(X_train.shape[1], "--random_shift"))
        if args.random_shift is not None:
            conv["random_shift"] = args.random_shift
        clf = BNNClassifier(
            hidden_layer_sizes=hidden,
            **conv,
            binary=args.binary,
            xnor=args.xnor,
            batch_norm=args.batch_norm,
            learning_rate_init=args.lr,
            batch_size=args.batch_size,
            reg=args.reg,
            random_state=args.seed,
            device=args.device,
            verbose=False,
        )

    logger = None
    if args.log_dir is not None:
        from ._runlog import RunLogError, RunLogger, make_run_dir

        run_dir = make_run_dir(
            args.log_dir,
            binary=getattr(clf, "binary", args.binary),
            xnor=getattr(clf, "xnor", args.xnor),
            hidden_layer_sizes=hidden,
            batch_norm=getattr(clf, "batch_norm", args.batch_norm),
            batch_size=args.batch_size,
            reg=getattr(clf, "reg", args.reg),
            conv_layers=_conv_layers(clf, X_train.shape[1]),
        )
        logger = RunLogger(run_dir)
        settings = {k: v for k, v in vars(args).items() if k not in ("func", "subparser", "layers", "n_hidden")}
        settings.update(hidden_layer_sizes=list(hidden), data=source)
        try:
            (run_dir / "args.json").write_text(json.dumps(settings, indent=2, default=str) + "\n")
        except OSError as exc:
            logger.close()
            raise RunLogError(f"--log_dir: cannot write in {run_dir}: {exc.strerror or exc}") from None
        if not args.quiet:
            print(f"logging to {run_dir}", file=sys.stderr, flush=True)

    rng = np.random.default_rng(args.seed)
    batches = _batches(X_train.shape[0], args.batch_size, rng)
    # A restored model goes on counting steps where it stopped, so its
    # TensorBoard curves continue instead of starting over at 0.
    first_step = len(getattr(clf, "loss_curve_", [])) if args.restore is not None else 0
    out = _Output(args.max_steps, args.quiet)
    rates = []
    status = 0
    try:
        try:
            for step in range(first_step, first_step + args.max_steps):
                idx = next(batches)
                t0 = time.perf_counter()
                clf.partial_fit(X_train[idx], y_train[idx], classes=classes)
                rate = args.batch_size / max(time.perf_counter() - t0, 1e-12)
                rates.append(rate)
                loss = float(clf.loss_curve_[-1])
                out.step(loss)
                if logger is not None:
                    logger.scalar("train loss", loss, step)
                    logger.scalar("ex/s", rate, step)
                if step % args.eval_every_n == 0:
                    acc = float(clf.score(X_test, y_test))
                    out.line(f"step {step}, loss = {loss:.4f}, test accuracy {acc:.4f} ({rate:.1f} ex/s)")
                    if logger is not None:
                        logger.scalar("test acc.", acc, step)
                        logger.histograms(_histograms(clf), step)
        except KeyboardInterrupt:
            status = EXIT_INTERRUPTED
            out.close()
            print(f"interrupted after {len(rates)} steps", file=sys.stderr, flush=True)
        finally:
            out.close()
        if status == EXIT_INTERRUPTED and not hasattr(clf, "network_"):
            # Stopped inside the first step: there is no model to evaluate or save.
            return status

        acc = float(clf.score(X_test, y_test))
        last_step = first_step + len(rates) - 1
        if logger is not None and rates and last_step % args.eval_every_n != 0:
            logger.scalar("test acc.", acc, last_step)
    finally:
        # Flush the event files even when training fails part way.
        if logger is not None:
            logger.close()
    out.line(f"Final test accuracy {acc:.4f}", always=True)
    if rates:
        out.line(f"Avg ex/s = {statistics.fmean(rates):.1f}", always=True)
        out.line(f"Med ex/s = {statistics.median(rates):.1f}", always=True)
    if args.save is not None:
        from ._io import atomic_write
        from ._model_io import save_model

        # Atomic either way: a failed write (a full disk) leaves an earlier model intact.
        pickled = _is_pickle_path(args.save)
        try:
            if pickled:
                with atomic_write(args.save) as f:
                    pickle.dump(clf, f, protocol=pickle.HIGHEST_PROTOCOL)
            else:
                save_model(clf, args.save, training_state=True)
        except OSError as exc:
            raise CLIError(f"--save: cannot write {args.save}: {exc.strerror or exc}") from None
        except (TypeError, ValueError) as exc:  # a model that the model-file format cannot hold
            raise CLIError(f"--save: {args.save}: {exc}") from None
        if not args.quiet:
            note = f" (a pickle: {PICKLE_WARNING})" if pickled else ""
            print(f"saved model to {args.save}{note}", file=sys.stderr, flush=True)
    return status


# -- bench --------------------------------------------------------------------


def cmd_bench(args):
    from .bench import DEFAULT_SIZES, format_row, plot_speedup, run_bench, table_header

    if args.plot is not None:
        _check_writable_file(args.plot, "--plot")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CLIError("--plot needs matplotlib; install it with: pip install 'xnorcore[plot]'") from None
    sizes = args.sizes or list(DEFAULT_SIZES[args.device])
    if args.threads is not None:
        from ._threads import kernel_threads

        args.threads = kernel_threads(args.threads, "--threads")
    header_printed = []

    def progress(row):
        if not header_printed:
            print("\n".join(table_header(args.device)), flush=True)
            header_printed.append(True)
        print(format_row(row), flush=True)

    rows = run_bench(sizes, args.runs, device=args.device, n_threads=args.threads,
                     prepacked=args.prepacked, progress=progress)
    if args.plot is not None:
        detail = [args.device.upper()]
        if args.device == "cpu":
            detail.append(f"{args.threads} thread{'s' * (args.threads != 1)}" if args.threads else "default threads")
        detail.append("operands prepacked" if args.prepacked else "packing timed")
        baseline = "numpy float32" if args.device == "cpu" else "cuBLAS float32"
        plot_speedup(rows, args.plot, device=args.device,
                     title=f"binary_matmul vs {baseline} ({', '.join(detail)})")
        print(f"saved plot to {args.plot}", file=sys.stderr)
    return 0


# -- info ---------------------------------------------------------------------


def _version(*distributions):
    """Installed version of the first of ``distributions`` found, read from
    the package metadata without importing the package."""
    from importlib.metadata import PackageNotFoundError, version

    for name in distributions:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "not installed"


def _print_blas():
    """numpy's BLAS and its threads: the float baseline of ``xnorcore bench``."""
    try:
        from threadpoolctl import threadpool_info

        np.ones((2, 2), dtype=np.float32) @ np.ones((2, 2), dtype=np.float32)
        for pool in threadpool_info():
            if pool.get("user_api") == "blas":
                print(f"BLAS: {pool.get('internal_api')} {pool.get('version')}, "
                      f"{pool.get('num_threads')} threads ({pool.get('architecture', 'unknown')})")
                return
    except Exception:  # informational only; never fail `info` over it
        pass
    print("BLAS: unknown")


def cmd_info(args):
    from ._config import show_config

    show_config()
    _print_blas()
    print(f"scikit-learn {_version('scikit-learn')}")
    print("command line extras:")
    for name, extra in (("tensorboardX", "tensorboard"), ("matplotlib", "plot"), ("tqdm", None)):
        found = _version(name)
        hint = f" (pip install 'xnorcore[{extra}]')" if extra and found == "not installed" else ""
        print(f"  {name}: {found}{hint}")
    print(f"  dask: {_version('dask')}, distributed: {_version('distributed')}"
          + (" (pip install 'xnorcore[dask]')" if _version("distributed") == "not installed" else ""))
    return 0


# -- entry point ----------------------------------------------------------------


def _check_environment():
    """Refuse bad XNORCORE_* variables before any work, whatever the command."""
    from ._backends import cpu as _cpu, gpu as _gpu

    problem = _cpu.environment_error()
    if problem is not None:
        raise CLIError(problem)
    kernel = os.environ.get(_gpu.KERNEL_ENV, "").strip().lower()
    if kernel and kernel not in _gpu._KERNELS:
        raise CLIError(
            f"{_gpu.KERNEL_ENV} must be one of {', '.join(_gpu._KERNELS)} or unset, "
            f"got {_gpu.KERNEL_ENV}={kernel!r}"
        )


def main(argv=None):
    """Run the ``xnorcore`` command; return its exit status."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command is None:
        parser.error("a command is required: train, bench or info")
    if unknown:
        # Blame the subcommand, whose --help lists the flags it does take.
        args.subparser.error(f"unrecognized arguments: {' '.join(unknown)}")
    from ._runlog import RunLogError
    from .bench import BenchError
    from .datasets import DatasetError

    prog = f"xnorcore {args.command}"
    try:
        _check_environment()
        return args.func(args)
    except (CLIError, DatasetError, RunLogError, BenchError) as exc:
        if args.debug:
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, TypeError, RuntimeError) as exc:
        # Invalid estimator parameters and an unavailable GPU surface here.
        if args.debug:
            raise
        print(f"{prog}: error: {type(exc).__name__}: {exc} (rerun with --debug for a traceback)",
              file=sys.stderr)
        return EXIT_USAGE
    except MemoryError as exc:
        # A network or batch too large for this machine (--n_hidden 10**12).
        if args.debug:
            raise
        print(f"{prog}: error: out of memory ({exc}); use a smaller network (--n_hidden, --layers) "
              "or --batch_size", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
