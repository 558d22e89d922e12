"""Evaluate a function over stacked parameter draws in fixed-size chunks (bounded memory, one compile).

Used by ``sample`` (pointwise log-likelihood), ``relabel`` (memberships) and the plots (predictions
along posterior draws): the last chunk is padded to the chunk size, so a jitted function compiles
once per chunk shape whatever the number of draws.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

__all__ = ["chunk_size", "map_draws"]


def chunk_size(floats_per_draw: int, budget: float = 2e7) -> int:
    """Draws per chunk so that a chunk holds about ``budget`` floats."""
    return max(1, int(budget // max(1, floats_per_draw)))


def map_draws(fn: Callable, draws: dict, chunk: int):
    """``fn(batch)`` over chunks of the leading (draw) axis of ``draws``; results concatenated.

    :param fn: maps a dict of arrays with a leading batch axis to a pytree of arrays with the same
        leading axis (typically ``jax.jit(jax.vmap(...))``, defined once at module level).
    :param draws: ``{name: array (S, ...)}``.
    :param chunk: draws per call.
    :returns: the pytree of numpy arrays with leading axis S.
    """
    S = next(iter(draws.values())).shape[0]
    step = max(1, min(int(chunk), S))
    parts = []
    for i in range(0, S, step):
        j = min(i + step, S)
        idx = np.minimum(np.arange(i, i + step), S - 1)
        out = fn({k: np.asarray(v)[idx] for k, v in draws.items()})
        parts.append(jax.tree.map(lambda a, m=j - i: np.asarray(a)[:m], out))
    return jax.tree.map(lambda *a: np.concatenate(a), *parts)
