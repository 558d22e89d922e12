"""Class labels of any kind (strings, pandas Categorical, R-style 1..C) and the codes 0..C-1 of the math.

The labels live in the expert (``bm.experts.Categorical(labels=...)``, learnt from the training
responses by the fits and by ``MoE.from_formula``), so that the model maps new responses the same way
and reports the labels as the ``class`` coords. They are stored in model specs, so they must be
strings, integers, floats or booleans. JAX arrays and int32 arrays are read as codes 0..C-1 (the form
the fits pass around), and so are numbers when the labels are strings.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

__all__ = ["encode", "is_codes", "learn", "normalize"]


def normalize(labels: Any, name: str = "labels") -> tuple:
    """Labels as a tuple of distinct JSON-safe scalars (numpy scalars become Python values)."""
    if isinstance(labels, (str, bytes)) or not hasattr(labels, "__iter__"):
        raise ValueError(f"`{name}` must be a sequence of class labels, got {labels!r}")
    out = []
    for v in labels:
        v = v.item() if isinstance(v, np.generic) else v
        if not isinstance(v, (str, int, float, bool)):
            raise ValueError(f"`{name}` must hold strings, integers, floats or booleans (they are stored "
                             f"in the model spec), got {v!r} of type {type(v).__name__}")
        out.append(v)
    if len(set(out)) != len(out):
        raise ValueError(f"`{name}` has repeated labels: {out}")
    return tuple(out)


def _values(y: Any) -> np.ndarray:
    if hasattr(y, "to_numpy"):
        y = y.to_numpy()
    arr = np.asarray(y)
    return arr[:, 0] if arr.ndim == 2 and arr.shape[1] == 1 else arr


def _categories(y: Any) -> list | None:
    """The categories of a pandas Categorical (or a Series of that dtype), else None."""
    cat = getattr(y, "cat", None)
    if cat is not None and hasattr(cat, "categories"):
        return list(cat.categories)
    cats = getattr(y, "categories", None)
    return list(cats) if cats is not None and hasattr(y, "codes") else None


def learn(y: Any, n_classes: int, name: str = "y") -> tuple | None:
    """The labels of responses ``y`` for ``n_classes`` classes, or None when ``y`` already holds the
    codes 0..C-1 (numbers in that range). A pandas Categorical gives its categories in order; other
    labels are sorted (strings alphabetically, numbers by value, e.g. R-style 1..C)."""
    cats = _categories(y)
    if cats is not None:
        if len(cats) != n_classes:
            raise ValueError(f"`{name}` is categorical with {len(cats)} categories {cats[:10]} but the "
                             f"expert has n_classes = {n_classes}")
        return normalize(cats, name)
    arr = _values(y)
    if arr.ndim != 1:
        return None  # the shape is reported by the validation
    if arr.dtype.kind in "iub":
        if arr.size == 0 or (arr.min() >= 0 and arr.max() < n_classes):
            return None
    elif arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            return None  # reported by the validation
        if np.all(arr == np.round(arr)) and (arr.size == 0 or (arr.min() >= 0 and arr.max() < n_classes)):
            return None
    seen = list(dict.fromkeys(v.item() if isinstance(v, np.generic) else v for v in arr.tolist()))
    try:
        seen = sorted(seen)
    except TypeError:
        seen = sorted(seen, key=str)
    if len(seen) != n_classes:
        raise ValueError(f"`{name}` holds {len(seen)} distinct labels {seen[:10]}, not class codes "
                         f"0..{n_classes - 1}, and the expert has n_classes = {n_classes}: give all the "
                         "labels in order, e.g. bm.experts.Categorical(labels=[...])")
    return normalize(seen, name)


def is_codes(y: Any, labels: tuple) -> bool:
    """Whether ``y`` holds codes 0..C-1 rather than labels: JAX arrays and int32 arrays (the form the
    fits pass around internally), and numbers when the labels are not numbers (e.g. strings)."""
    if isinstance(y, jax.Array):
        return True
    arr = np.asarray(y) if isinstance(y, np.ndarray) else None
    if arr is not None and arr.dtype == np.int32:
        return True
    numeric_labels = any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in labels)
    if numeric_labels or _categories(y) is not None:
        return False
    return _values(y).dtype.kind in "iuf"


def encode(y: Any, labels: tuple, name: str = "y") -> Any:
    """Codes 0..C-1 of the labels ``y`` (the position of each in ``labels``); an unknown label is a
    ``ValueError`` naming ``name``. Codes (see :func:`is_codes`) are returned as they are."""
    import pandas as pd  # noqa: PLC0415

    if is_codes(y, labels):
        return y
    arr = _values(y)
    if arr.ndim != 1:
        return arr  # the shape is reported by the validation
    codes = pd.Index(list(labels), dtype=object).get_indexer(pd.Index(arr.tolist(), dtype=object))
    if np.any(codes < 0):
        bad = list(dict.fromkeys(arr[codes < 0].tolist()))
        raise ValueError(f"`{name}` has label(s) {bad[:5]} that are not among the model's classes "
                         f"{list(labels)}")
    return codes.astype(np.int32)
