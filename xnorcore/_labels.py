"""Class labels of a classifier: the classes to fit, their checks and the labels' encoding as indices."""

import numpy as np
from sklearn.utils.validation import column_or_1d

__all__ = ["check_classes", "encode_labels", "fit_classes"]


def check_classes(classes, name):
    """Refuse fewer than two classes, naming where they come from (``name``: "y", "classes", ...)."""
    if len(classes) < 2:
        raise ValueError(
            f"BNNClassifier needs at least 2 classes in {name}, got 1 class: {np.asarray(classes).tolist()[0]!r}"
            if len(classes) == 1
            else f"BNNClassifier needs at least 2 classes in {name}, got none"
        )


def fit_classes(y, classes=None, fitted=None):
    """The sorted classes of a fit: those of ``y``, or all of ``classes`` where given.

    ``fitted``, the classes of a fitted model that training continues, are
    kept; ``classes`` must then name the same ones.
    """
    if fitted is not None:
        if classes is not None and not np.array_equal(np.unique(classes), fitted):
            raise ValueError(
                f"classes={np.unique(classes).tolist()} is not the same as on the first call "
                f"to partial_fit, classes_={fitted.tolist()}"
            )
        return fitted
    if classes is not None:
        classes = column_or_1d(np.asarray(classes))
        if classes.dtype.kind == "f" and np.isnan(classes).any():
            raise ValueError(f"classes must not contain NaN, got classes={classes.tolist()}")
        if classes.dtype.kind not in "biufUSO":
            raise ValueError(f"classes must be labels (numbers or strings), got dtype={classes.dtype}")
    try:
        all_classes = np.unique(y if classes is None else classes)
    except TypeError:
        raise ValueError(
            f"classes must be labels of one sortable type, got classes={classes.tolist()}"
        ) from None
    check_classes(all_classes, "y" if classes is None else "classes")
    return all_classes


def encode_labels(y, classes):
    """Indices into the sorted ``classes`` of the labels ``y`` (int64); unknown labels raise ValueError."""
    unknown = ~np.isin(y, classes)
    if unknown.any():
        raise ValueError(
            f"y contains labels not in classes_: {np.unique(y[unknown])[:10].tolist()}; "
            f"classes_={classes.tolist()}"
        )
    return np.searchsorted(classes, y).astype(np.int64)
