"""Input checks shared by the public entry points.

Every check runs on concrete (numpy) data before anything is traced or compiled, and raises a
``ValueError`` whose message names the offending argument.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

__all__ = ["align_xy", "as_x", "as_y", "as_y_labels", "as_y_real", "check_bool", "check_columns",
           "check_positive_int", "check_real", "column_names", "is_traced"]


def is_traced(a: Any) -> bool:
    """True when ``a`` is a JAX tracer (inside jit/grad/vmap): such values cannot be checked."""
    return isinstance(a, jax.core.Tracer)


def column_names(x: Any) -> list[str] | None:
    """Column names of a pandas DataFrame (or the name of a Series), else None."""
    cols = getattr(x, "columns", None)
    if cols is not None:
        return [str(c) for c in cols]
    name = getattr(x, "name", None)
    if name is not None and hasattr(x, "to_numpy"):
        return [str(name)]
    return None


def check_columns(x: Any, expected: list[str] | tuple[str, ...] | None, name: str = "x") -> Any:
    """New inputs against the training columns: a DataFrame ``x`` must have the training column names
    (reordered to the training order when they come in another order); missing or unknown columns are
    a ``ValueError`` naming them. Arrays, and fits without names (``expected`` None), pass as they are.

    :param x: the new inputs (a DataFrame, a Series or an array).
    :param expected: the training inputs' column names, or None.
    :param name: the argument's name for messages.
    """
    names = column_names(x)
    if names is None or expected is None:
        return x
    expected = [str(c) for c in expected]
    if names == expected:
        return x
    missing = [c for c in expected if c not in names]
    extra = [c for c in names if c not in expected]
    if missing or extra:
        raise ValueError(f"`{name}` has the columns {names} but the model was fitted on {expected}: "
                         + "; ".join(m for m in (f"missing {missing}" if missing else "",
                                                 f"unknown {extra}" if extra else "") if m))
    if hasattr(x, "columns"):
        return x[sorted(x.columns, key=lambda c: expected.index(str(c)))]
    return x


def as_x(x: Any, name: str = "x") -> np.ndarray:
    """Return ``x`` as a float (n, d) array; a 1-D ``x`` is one feature."""
    if x is None:
        raise ValueError(f"`{name}` is required, got None")
    if hasattr(x, "to_numpy"):
        x = x.to_numpy()
    try:
        arr = np.asarray(x, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`{name}` must be numeric array-like, got {type(x).__name__}") from err
    if arr.ndim == 0:
        raise ValueError(f"`{name}` must have 1 or 2 dims (n,) or (n, d), got a scalar")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim > 2:
        raise ValueError(f"`{name}` must have 1 or 2 dims (n,) or (n, d), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"`{name}` has no rows")
    if not np.all(np.isfinite(arr)):
        bad = int(np.sum(~np.isfinite(arr)))
        raise ValueError(f"`{name}` contains {bad} NaN or infinite value(s)")
    return arr


def as_y_real(y: Any, n: int, name: str = "y") -> np.ndarray:
    """Return real-valued ``y`` as a float (n,) array, checking length and finiteness."""
    arr = _as_1d(y, n, name)
    try:
        arr = arr.astype(float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`{name}` must be numeric") from err
    if not np.all(np.isfinite(arr)):
        bad = int(np.sum(~np.isfinite(arr)))
        raise ValueError(f"`{name}` contains {bad} NaN or infinite value(s)")
    return arr


def as_y_labels(y: Any, n: int, n_classes: int, name: str = "y") -> np.ndarray:
    """Return class labels as an int (n,) array with values in 0..n_classes-1."""
    arr = _as_1d(y, n, name)
    if arr.dtype.kind not in "iufb":
        raise ValueError(f"`{name}` must hold integer class labels 0..{n_classes - 1}, "
                         f"got dtype {arr.dtype} (for other labels, e.g. strings, give them to the "
                         "expert, bm.experts.Categorical(labels=[...]); bm.fit_map, bm.fit_mle, bm.sample "
                         "and MoE.from_formula learn them)")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"`{name}` contains NaN or infinite value(s)")
        if not np.all(arr == np.round(arr)):
            raise ValueError(f"`{name}` must hold integer class labels 0..{n_classes - 1}, "
                             "got non-integer values")
    arr = arr.astype(np.int64)
    bad = (arr < 0) | (arr >= n_classes)
    if np.any(bad):
        raise ValueError(f"`{name}` has class labels outside 0..{n_classes - 1}: "
                         f"{sorted(set(arr[bad].tolist()))[:5]}")
    return arr.astype(np.int32)


def as_y(y: Any, n: int, support: Any, name: str = "y") -> np.ndarray:
    """Check ``y`` against an expert's support (a NumPyro constraint): float for real supports,
    int32 for integer ones (with their bounds named in the error)."""
    if not getattr(support, "is_discrete", False):
        return as_y_real(y, n, name)
    lo = getattr(support, "lower_bound", None)
    hi = getattr(support, "upper_bound", None)
    if lo == 0 and hi is not None:
        return as_y_labels(y, n, int(hi) + 1, name)
    arr = _as_1d(y, n, name)
    what = "integers" if lo is None else f"integers >= {lo}"
    if arr.dtype.kind not in "iufb":
        raise ValueError(f"`{name}` must hold {what}, got dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"`{name}` contains NaN or infinite value(s)")
        if not np.all(arr == np.round(arr)):
            raise ValueError(f"`{name}` must hold {what}, got non-integer values "
                             f"{sorted(set(arr[arr != np.round(arr)].tolist()))[:5]}")
    arr = arr.astype(np.int64)
    bad = np.zeros(arr.shape, bool)
    if lo is not None:
        bad |= arr < lo
    if hi is not None:
        bad |= arr > hi
    if np.any(bad):
        raise ValueError(f"`{name}` must hold {what}" + (f" <= {hi}" if hi is not None else "")
                         + f", got {sorted(set(arr[bad].tolist()))[:5]}")
    return arr.astype(np.int32)


def _as_1d(y: Any, n: int, name: str) -> np.ndarray:
    if y is None:
        raise ValueError(f"`{name}` is required, got None")
    if hasattr(y, "to_numpy"):
        y = y.to_numpy()
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be one-dimensional (n,), got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"`{name}` has length {arr.shape[0]} but `x` has {n} rows")
    return arr


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """Check that ``value`` is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}")
    return int(value)


def check_real(value: Any, name: str, allowed: str, ok: Callable[[float], bool]) -> float:
    """A real scalar (Python or numpy int/float, not bool) satisfying ``ok``; returns it as a float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"`{name}` must be a real number {allowed}, got {value!r}")
    if not ok(float(value)):
        raise ValueError(f"`{name}` must be {allowed}, got {value!r}")
    return float(value)


def check_bool(value: Any, name: str, extra: str = "") -> bool:
    """True or False (numpy booleans accepted)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be True or False{extra}, got {value!r}")
    return bool(value)


def align_xy(x: Any, y: Any) -> Any:
    """``y`` matched to ``x`` by index when both are pandas objects (rows are never matched by position
    when the indexes differ): reordered to x's index when they hold the same labels, else an error."""
    xi, yi = getattr(x, "index", None), getattr(y, "index", None)
    if xi is None or yi is None or not hasattr(y, "reindex"):
        return y
    if xi.equals(yi):
        return y
    if len(xi) == len(yi) and xi.is_unique and yi.is_unique and set(xi) == set(yi):
        return y.reindex(xi)
    raise ValueError("`x` and `y` are pandas objects whose indexes hold different labels: align them "
                     "(e.g. y.loc[x.index]) or pass arrays")
