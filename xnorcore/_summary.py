"""The memory summary of a fitted network (``BNNClassifier.summary``): packed inference form vs float32."""

from .nn import Sign
from .ops import n_words

__all__ = ["memory_rows", "memory_summary", "format_summary"]


def memory_rows(network):
    """Per-layer parameter memory of the inference model, packed vs float32.

    Returns
    -------
    rows : list of dict
        Keys ``layer``, ``shape``, ``binary``, ``n_params``, ``float32_bytes``
        (every parameter as float32) and ``packed_bytes`` (binary weights as
        bits, real weights as float32, and for layers followed by sign one
        4-byte threshold and one int8 direction per unit in place of bias
        and batch norm).
    """
    # A CNN lists its conv blocks first (HWIO shapes), then its dense layers.
    features = getattr(network, "features", None)
    rows = features.memory_rows() if features is not None else []
    for block in network.blocks:
        d = block.dense
        n_in, n_out = d.shape
        n_params = n_in * n_out
        extra = 0  # per-unit float parameters kept in both forms
        if d.bias is not None:
            extra += n_out
        if block.bn is not None:
            extra += 4 * n_out  # gamma, beta, running mean, running variance
        float_bytes = 4 * (n_params + extra)
        per_unit = 5 * n_out if isinstance(block.act, Sign) else 4 * extra
        if d.binary_weights:
            packed = 8 * n_out * n_words(n_in) + per_unit
        else:
            packed = 4 * n_params + per_unit
        rows.append({
            "layer": d.name, "shape": (n_in, n_out), "binary": d.binary_weights,
            "n_params": n_params + extra, "float32_bytes": float_bytes,
            "packed_bytes": packed,
        })
    return rows


def memory_summary(network, input_mean, optimizer):
    """The figures of :meth:`BNNClassifier.summary` as a dict (see there)."""
    rows = memory_rows(network)
    for row in rows:
        row["compression"] = row["float32_bytes"] / row["packed_bytes"]
    packed = sum(r["packed_bytes"] for r in rows) + input_mean.nbytes
    floats = sum(r["float32_bytes"] for r in rows) + input_mean.nbytes
    state = network.training_state_nbytes()
    if optimizer is not None:
        state += optimizer.nbytes()
    return {
        "layers": rows,
        "packed_bytes": packed,
        "float32_bytes": floats,
        "compression": floats / packed,
        "training_state_bytes": state,
    }


def format_summary(info):
    """The printable table of a :func:`memory_summary` dict."""
    rows = info["layers"]
    floats, packed, state = info["float32_bytes"], info["packed_bytes"], info["training_state_bytes"]
    lines = [f"{'layer':<8} {'shape':>14} {'kind':>6} {'params':>10} {'float32':>12} {'packed':>12} {'ratio':>7}"]
    for r in rows:
        shape = "x".join(str(d) for d in r["shape"])
        kind = "binary" if r["binary"] else "real"
        lines.append(
            f"{r['layer']:<8} {shape:>14} {kind:>6} {r['n_params']:>10,} "
            f"{_fmt_bytes(r['float32_bytes']):>12} {_fmt_bytes(r['packed_bytes']):>12} "
            f"{r['compression']:>6.1f}x"
        )
    lines.append(
        f"{'total':<8} {'':>14} {'':>6} {sum(r['n_params'] for r in rows):>10,} "
        f"{_fmt_bytes(floats):>12} {_fmt_bytes(packed):>12} {floats / packed:>6.1f}x"
    )
    lines.append(
        f"training state (latent weights, Adam moments): {_fmt_bytes(state)}"
        + ("" if state == 0 else "; drop_training_state() removes it")
    )
    return "\n".join(lines)


def _fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
