"""Data-driven starting points for MoE fits, for any gate x expert.

Each start is a soft partition of the data into K groups: k-means++ on the standardised (x, y) (y
weighted twice; one-hot labels for finite-support experts) and a few Lloyd iterations, softened to
memberships 0.95 / 0.05 so that no expert is empty. Each family then turns the soft weights into its
own parameters (``Gate.init_params`` / ``Expert.init_params``: closed forms such as weighted least
squares, or its M-step from a neutral point), all starts at once in one compiled, vmapped call.
"""

from __future__ import annotations

import jax
import numpy as np

__all__ = ["data_starts", "params_from_weights", "soft_partitions"]

_EPS = 1e-6


def _kmeans(z: np.ndarray, K: int, rng: np.random.Generator, n_iter: int = 10) -> np.ndarray:
    n = z.shape[0]
    centres = [z[rng.integers(n)]]
    d2 = np.sum((z - centres[0]) ** 2, axis=1)
    for _ in range(1, K):
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
        centres.append(z[rng.choice(n, p=p)])
        d2 = np.minimum(d2, np.sum((z - centres[-1]) ** 2, axis=1))
    c = np.stack(centres)
    labels = np.zeros(n, dtype=int)
    for _ in range(n_iter):
        dist = ((z[:, None, :] - c[None]) ** 2).sum(-1)
        labels = dist.argmin(1)
        for k in range(K):
            if np.any(labels == k):
                c[k] = z[labels == k].mean(0)
    return labels


def _y_columns(support, y: np.ndarray) -> np.ndarray:
    """y as clustering columns: one-hot labels for finite integer supports, standardised otherwise."""
    lo, hi = getattr(support, "lower_bound", None), getattr(support, "upper_bound", None)
    if getattr(support, "is_discrete", False) and lo == 0 and hi is not None:
        return np.eye(int(hi) + 1)[np.asarray(y, int)] * 1.5
    y = np.asarray(y, float).reshape(len(y), -1)  # (n, q) for vector responses
    return 2.0 * (y - y.mean(0)) / (y.std(0) + _EPS) / np.sqrt(y.shape[1])


def soft_partitions(model, x: np.ndarray, y: np.ndarray, n_starts: int,
                    rng: np.random.Generator) -> np.ndarray:
    """``n_starts`` soft partitions of the rows into K groups, shape (S, n, K)."""
    K, n = model.n_experts, x.shape[0]
    xs = (x - x.mean(0)) / (x.std(0) + _EPS)
    z = np.column_stack([xs, _y_columns(model.expert.support, y)])
    out = np.empty((n_starts, n, K))
    for s in range(n_starts):
        labels = _kmeans(z, K, rng) if K > 1 else np.zeros(n, dtype=int)
        w = np.full((n, K), 0.05 / K)
        w[np.arange(n), labels] += 0.95
        out[s] = w
    return out


def params_from_weights(model, x, y, weights, floors, free: bool = False) -> dict:
    """Traceable: the families' weighted first M-step from each soft partition of ``weights``
    (S, n, K); full parameters in the reference gauge, or sample-site values with ``free``."""
    def one(w):
        params = dict(model.gate.init_params(model.gate_x(x), w, floors))
        params.update(model.expert.init_params(model.expert_x(x), y, w, floors))
        return model.free_params(params) if free else model.regauge(params)

    return jax.vmap(one)(weights)


_params_from_weights = jax.jit(params_from_weights, static_argnums=(0, 5))


def data_starts(model, x, y, n_starts: int, rng: np.random.Generator, floors: dict, *,
                free: bool = False) -> dict:
    """``n_starts`` data-driven starts with a leading axis of starts: full params (table sites), or
    with ``free=True`` the sample-site values (all in one compiled call)."""
    weights = soft_partitions(model, np.asarray(x), np.asarray(y), n_starts, rng)
    return _params_from_weights(model, x, y, jax.numpy.asarray(weights, x.dtype), floors, free)
