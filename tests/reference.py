"""Independent numpy/scipy computations of MoE densities, written from the formulas of papers.md."""

from itertools import combinations_with_replacement

import numpy as np
from scipy import special, stats


def poly(x, degree):
    d = x.shape[1]
    cols = []
    for k in range(1, degree + 1):
        for c in combinations_with_replacement(range(d), k):
            col = np.ones(x.shape[0])
            for j in c:
                col = col * x[:, j]
            cols.append(col)
    return np.stack(cols, axis=1)


def gate_log_probs(kind, params, x, transform=None):
    if kind in ("softmax", "modified"):
        f = x if transform is None else transform(x)
        logits = params["gate_intercept"][None, :] + f @ params["gate_coef"].T
        return logits - special.logsumexp(logits, axis=1, keepdims=True)
    K = len(params["gate_weight"])
    out = np.empty((x.shape[0], K))
    for k in range(K):
        if "gate_cov" in params:
            cov = params["gate_cov"][k]
        else:
            cov = np.diag(params["gate_scale"][k] ** 2)
        out[:, k] = np.log(params["gate_weight"][k]) + stats.multivariate_normal(
            params["gate_loc"][k], cov).logpdf(x).reshape(-1)
    return out


def gaussian_gate_log_marginal(params, x):
    return special.logsumexp(gate_log_probs("gaussian", params, x), axis=1)


def expert_log_probs(kind, params, x, y, degree=1):
    f = poly(x, degree)
    if kind in ("gaussian", "studentt", "poisson"):
        mean = params["expert_intercept"][None, :] + f @ params["expert_coef"].T
        if kind == "poisson":
            return stats.poisson(np.exp(mean)).logpmf(y[:, None])
        if kind == "studentt":
            df, scale = params["expert_df"][None, :], params["expert_scale"][None, :]
            return stats.t(df, mean, scale).logpdf(y[:, None])
        return stats.norm(mean, params["expert_scale"][None, :]).logpdf(y[:, None])
    if kind == "mvgaussian":
        mean = params["expert_intercept"][None] + np.einsum("np,kqp->nkq", f, params["expert_coef"])
        return np.stack([stats.multivariate_normal(np.zeros(y.shape[1]), params["expert_cov"][k])
                         .logpdf(y - mean[:, k]).reshape(-1) for k in range(mean.shape[1])], axis=1)
    logits = params["expert_intercept"][None] + np.einsum("np,kcp->nkc", f, params["expert_coef"])
    logp = logits - special.logsumexp(logits, axis=2, keepdims=True)
    return logp[np.arange(len(y)), :, y]


def moe_log_lik(gate_kind, expert_kind, params, x, y, degree=1, transform=None, joint=False):
    lg = gate_log_probs(gate_kind, params, x, transform)
    if gate_kind == "gaussian":
        lg = lg - special.logsumexp(lg, axis=1, keepdims=True)
    ll = special.logsumexp(lg + expert_log_probs(expert_kind, params, x, y, degree), axis=1)
    if joint:
        ll = ll + gaussian_gate_log_marginal(params, x)
    return ll
