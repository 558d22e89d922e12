"""Data-driven starting points for MoE fits.

Each start seeds K centres with k-means++ on the standardised (x, y) (y weighted twice), runs a few
Lloyd iterations, then fits every expert by least squares on its cluster and the gate from the
clusters: for softmax gates the linear logits of a Gaussian classifier with a shared isotropic
covariance (log n_k/n - |m_k|^2 / 2s^2 + m_k.f / s^2, re-expressed in the reference gauge), for
Gaussian gates the clusters' proportions, means and standard deviations. Multinomial-logistic
experts start from their cluster's class frequencies. Everything is plain numpy: it runs once.
"""

from __future__ import annotations

import numpy as np

from bayesmoe import experts as _experts
from bayesmoe import gates as _gates

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


def _soft_weights(labels: np.ndarray, K: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Cluster memberships with a little mass everywhere (so no expert is empty)."""
    w = np.full((n, K), 0.05 / K)
    w[np.arange(n), labels] += 0.95
    return w


def _wls(f: np.ndarray, y: np.ndarray, w: np.ndarray, ridge: float) -> tuple[float, np.ndarray, float]:
    a = np.column_stack([np.ones(len(y)), f])
    aw = a * w[:, None]
    gram = a.T @ aw + ridge * np.eye(a.shape[1])
    beta = np.linalg.solve(gram, aw.T @ y)
    resid = y - a @ beta
    var = np.sum(w * resid**2) / max(np.sum(w), _EPS)
    return beta[0], beta[1:], float(np.sqrt(max(var, _EPS)))


def one_start(model, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> dict:
    """One data-driven start (full params, site names of DESIGN.md)."""
    K, n = model.n_experts, x.shape[0]
    xs = (x - x.mean(0)) / (x.std(0) + _EPS)
    if model.is_classifier:
        C = model.expert.n_classes
        yz = np.eye(C)[y] * 1.5
    else:
        yz = 2.0 * ((y - y.mean()) / (y.std() + _EPS))[:, None]
    labels = _kmeans(np.column_stack([xs, yz]), K, rng) if K > 1 else np.zeros(n, dtype=int)
    w = _soft_weights(labels, K, n, rng)
    nk = w.sum(0)
    params: dict[str, np.ndarray] = {}

    # gate
    gate = model.gate
    if isinstance(gate, _gates.Gaussian):
        loc = (w.T @ x) / nk[:, None]
        var = np.stack([(w[:, k:k + 1] * (x - loc[k]) ** 2).sum(0) / nk[k] for k in range(K)])
        sd = np.sqrt(np.maximum(var, (1e-3 * x.std(0)) ** 2 + _EPS))
        params.update(gate_weight=nk / nk.sum(), gate_loc=loc)
        if gate.covariance == "full":
            covs = []
            for k in range(K):
                r = x - loc[k]
                covs.append((w[:, k:k + 1] * r).T @ r / nk[k] + np.diag(sd[k] ** 2) * 1e-3)
            params["gate_cov"] = np.stack(covs)
        else:
            params["gate_scale"] = sd
    else:
        f = np.asarray(gate.features(x))
        fm = (w.T @ f) / nk[:, None]
        s2 = max(float(np.sum([(w[:, k:k + 1] * (f - fm[k]) ** 2).sum() for k in range(K)]))
                 / (n * f.shape[1]), _EPS)
        coef = fm / s2
        icpt = np.log(nk / n) - 0.5 * np.sum(fm**2, 1) / s2
        params.update(gate_intercept=icpt - icpt[-1], gate_coef=coef - coef[-1])

    # experts
    expert = model.expert
    fe = np.asarray(expert.features(x))
    if isinstance(expert, _experts.Categorical):
        C = expert.n_classes
        freq = np.stack([np.bincount(y, weights=w[:, k], minlength=C) for k in range(K)]) + 0.5
        logf = np.log(freq / freq.sum(1, keepdims=True))
        params.update(expert_intercept=logf - logf[:, -1:],
                      expert_coef=np.zeros((K, C, fe.shape[1])))
    else:
        ridge = 1e-6 * n
        fits = [_wls(fe, y, w[:, k], ridge) for k in range(K)]
        params.update(expert_intercept=np.array([b for b, _, _ in fits]),
                      expert_coef=np.stack([a for _, a, _ in fits]),
                      expert_scale=np.array([s for _, _, s in fits]))
    return params


def data_starts(model, x: np.ndarray, y: np.ndarray, n_starts: int, seed: int) -> list[dict]:
    """``n_starts`` data-driven starts (a list of full params dicts), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return [one_start(model, x, y, rng) for _ in range(n_starts)]
