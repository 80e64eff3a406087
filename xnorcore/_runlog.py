"""Run directories, TensorBoard event files and a CSV of scalars for ``xnorcore train``.

The run directory is named from the training arguments as ``mnist_fc_bnn.py``
names it, so its log trees and these runs sit side by side::

    LOG_DIR/bin/xnor/hid_512/batch_norm/bs_100/0.0001/3
    LOG_DIR/fp/hid_1024/bs_1024/0.0/1

The last component is a run counter: 1 for a new path, else one more than the
largest integer-named subfolder already there.
"""

import contextlib
import csv
import os
import re
import time
from pathlib import Path

import numpy as np

from ._array import to_numpy

__all__ = ["RunLogError", "run_subdir", "next_run_dir", "RunLogger", "DEFAULT_N_LAYERS"]

#: Hidden layers of the old script's network (fc1, fc2, fc3 before the output).
DEFAULT_N_LAYERS = 3

CSV_NAME = "scalars.csv"

# TensorBoard's rule for tag names (TensorFlow and tensorboardX alike): other
# characters become "_", so the old project's "train loss" showed as
# "train_loss".  The CSV uses the same names as the event files.
_INVALID_TAG_CHARS = re.compile(r"[^-/\w.]")


def tag_name(tag):
    """The name under which TensorBoard stores the scalar or histogram ``tag``."""
    return _INVALID_TAG_CHARS.sub("_", tag)


class RunLogError(RuntimeError):
    """The run directory or its files cannot be created or written."""


def _hidden_name(hidden_layer_sizes):
    sizes = [int(s) for s in hidden_layer_sizes]
    if len(sizes) == DEFAULT_N_LAYERS and len(set(sizes)) == 1:
        return f"hid_{sizes[0]}"
    # Any other architecture spells out every width so that different
    # networks never share a run folder.
    return "hid_" + "-".join(str(s) for s in sizes)


def _conv_name(conv_layers):
    parts = []
    for item in conv_layers:
        if item[0] == "pool":
            parts.append("pool")
        else:
            _, channels, (kh, kw) = item
            parts.append(str(channels) if (kh, kw) == (3, 3) else f"{channels}k{kh}x{kw}")
    return "conv_" + "-".join(parts)


def run_subdir(*, binary, xnor, hidden_layer_sizes, batch_norm, batch_size, reg, conv_layers=()):
    """Relative run path (without the counter) for these training arguments.

    Parameters
    ----------
    binary, xnor, batch_norm : bool
        The training flags.  ``xnor`` only matters when ``binary`` is set.
    hidden_layer_sizes : sequence of int
        Hidden widths.  Three equal widths ``N`` (the old network) give
        ``hid_N``; anything else gives ``hid_`` followed by the widths joined
        with ``-``.
    batch_size : int
    reg : float
        Written as Python prints a float (``0.0``, ``0.0001``), as the old
        script did.
    conv_layers : sequence of tuples, default=()
        Normalized conv layers (``xnorcore.nn._convnet.normalize_conv_layers``)
        of a CNN: a folder ``conv_32-pool-64-pool`` (channels of 3x3
        convolutions, ``CkKHxKW`` for other kernels) before the hidden widths.

    Returns
    -------
    path : pathlib.PurePath
    """
    parts = ["bin", "xnor" if xnor else "matmul"] if binary else ["fp"]
    if conv_layers:
        parts.append(_conv_name(conv_layers))
    parts.append(_hidden_name(hidden_layer_sizes))
    if batch_norm:
        parts.append("batch_norm")
    parts += [f"bs_{int(batch_size)}", str(float(reg))]
    return Path(*parts)


def next_run_dir(base):
    """``base / str(k)`` where ``k`` is 1 + the largest integer subfolder of ``base`` (1 if none)."""
    base = Path(base)
    existing = []
    if base.is_dir():
        for child in base.iterdir():
            if child.is_dir() and child.name.isdigit():
                existing.append(int(child.name))
    return base / str(max(existing, default=0) + 1)


def make_run_dir(log_dir, **args):
    """Create and return a new, numbered run directory under ``log_dir``.

    Raises
    ------
    RunLogError
        If the directory cannot be created (for example because part of the
        path is a regular file, or permission is denied).
    """
    base = Path(log_dir) / run_subdir(**args)
    # A concurrent run may take the same number between the listing and mkdir;
    # retry with the next one rather than share a folder.
    for _ in range(100):
        run_dir = next_run_dir(base)
        try:
            run_dir.mkdir(parents=True, exist_ok=False)
            return run_dir
        except FileExistsError:
            if not run_dir.is_dir():
                raise RunLogError(f"--log_dir: cannot create {run_dir}: a file of that name exists") from None
        except OSError as exc:
            raise RunLogError(
                f"--log_dir: cannot create run directory {run_dir}: {exc.strerror or exc}"
            ) from None
    raise RunLogError(f"--log_dir: cannot find a free run number under {base}")


def require_tensorboardx():
    """Import tensorboardX's SummaryWriter or raise a RunLogError saying how to install it."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise RunLogError(
            "--log_dir writes TensorBoard event files and needs tensorboardX; "
            "install it with: pip install 'xnorcore[tensorboard]'"
        ) from None
    return SummaryWriter


def _tensorflow_bins():
    # TensorBoard's default histogram buckets (as tensorboardX's SummaryWriter uses).
    v, buckets = 1e-12, []
    while v < 1e20:
        buckets.append(v)
        v *= 1.1
    return [-b for b in reversed(buckets)] + [0] + buckets


_TF_BINS = _tensorflow_bins()


class _EventFile:
    """A TensorBoard event file written in the calling thread.

    tensorboardX's SummaryWriter writes from a background thread: when a write
    fails there (a full disk), the thread dies and the next flush or close
    waits for it forever.  Written here, a failure is an OSError where the
    event is added, flushed or closed.
    """

    def __init__(self, run_dir):
        from tensorboardX.event_file_writer import EventsWriter

        self._file = EventsWriter(os.path.join(os.fspath(run_dir), "events"))

    def add(self, summary, step):
        from tensorboardX.proto import event_pb2

        self._file.write_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

    def close(self):
        self._file.close()


class RunLogger:
    """Write scalars to TensorBoard event files and ``scalars.csv``, histograms to TensorBoard.

    Parameters
    ----------
    run_dir : path-like
        Existing run directory (from :func:`make_run_dir`).

    Raises
    ------
    RunLogError
        From any method, when a file in ``run_dir`` cannot be written (a full
        disk, a removed folder); the message names the folder.  After a
        failure, :meth:`close` releases the files without raising again.

    Notes
    -----
    ``scalars.csv`` has one row per value, ``step,tag,value``, with the tags
    exactly as the event files store them ("train loss" is stored as
    "train_loss", "test acc." as "test_acc.", as TensorBoard always did), so
    either can be read back and compared.
    """

    def __init__(self, run_dir):
        require_tensorboardx()
        self.run_dir = Path(run_dir)
        self._failed = False
        self._csv_file = self._events = None
        with self._writing():
            self._csv_file = open(self.run_dir / CSV_NAME, "w", newline="")
            self._events = _EventFile(self.run_dir)
            self._csv = csv.writer(self._csv_file)
            self._csv.writerow(["step", "tag", "value"])

    @contextlib.contextmanager
    def _writing(self):
        if self._failed:
            raise RunLogError(f"--log_dir: {self.run_dir}: an earlier write failed")
        try:
            yield
        except OSError as exc:
            self._failed = True
            self._release()
            raise RunLogError(f"--log_dir: cannot write in {self.run_dir}: {exc.strerror or exc}") from None

    def scalar(self, tag, value, step):
        from tensorboardX.summary import scalar

        value = float(value)
        tag = tag_name(tag)
        with self._writing():
            self._events.add(scalar(tag, value), step)
            # repr keeps every digit, so the CSV is exact where the event file
            # stores float32.
            self._csv.writerow([int(step), tag, repr(value)])

    def histograms(self, arrays, step):
        """Add one histogram per named array; empty or non-finite arrays are skipped."""
        from tensorboardX.summary import histogram

        for name, values in arrays.items():
            values = np.asarray(to_numpy(values), dtype=np.float64).ravel()
            if values.size == 0 or not np.all(np.isfinite(values)):
                continue
            with self._writing():
                self._events.add(histogram(tag_name(name), values, _TF_BINS), step)

    def _release(self):
        """Close whatever is open, ignoring errors: the first one was reported."""
        for f in (self._events, self._csv_file):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        self._events = self._csv_file = None

    def close(self):
        if self._failed or self._events is None:
            self._release()
            return
        with self._writing():
            events, csv_file = self._events, self._csv_file
            self._events = self._csv_file = None
            try:
                events.close()
            finally:
                csv_file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_csv(path):
    """Read ``scalars.csv`` into ``{tag: [(step, value), ...]}``."""
    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["tag"], []).append((int(row["step"]), float(row["value"])))
    return out
