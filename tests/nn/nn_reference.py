"""Independent numpy (float64) reference computations for the bayesmoe.nn tests."""

from __future__ import annotations

import numpy as np

NP_ACT = {
    "relu": lambda z: np.maximum(z, 0.0),
    "silu": lambda z: z / (1.0 + np.exp(-z)),
}


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def expert(x, e, w_in, b_in, w_out, b_out, act="relu"):
    """Expert e on rows x (n, d)."""
    return NP_ACT[act](x @ w_in[e] + b_in[e]) @ w_out[e] + b_out[e]


def moe(x, logits, k, w_in, b_in, w_out, b_out, act="relu", capacity=None):
    """Top-k MoE with a loop over tokens; ``capacity`` drops copies k-major."""
    x, logits = np.asarray(x, np.float64), np.asarray(logits, np.float64)
    ws = [np.asarray(a, np.float64) for a in (w_in, b_in, w_out, b_out)]
    n_tok, n_exp = logits.shape
    idx = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    gates = softmax(np.take_along_axis(logits, idx, axis=1))
    keep = np.ones_like(idx, dtype=bool)
    if capacity is not None:
        used = np.zeros(n_exp, int)
        for j in range(k):  # first choices have priority
            for t in range(n_tok):
                e = idx[t, j]
                keep[t, j] = used[e] < capacity
                used[e] += 1
    y = np.zeros_like(x)
    for t in range(n_tok):
        for j in range(k):
            if keep[t, j]:
                y[t] += gates[t, j] * expert(x[t : t + 1], idx[t, j], *ws, act=act)[0]
    return y, 1.0 - keep.mean()


def full_mixture(x, logits, w_in, b_in, w_out, b_out, act="relu"):
    """sum_e softmax(logits)_e f_e(x): the top_k = E output, vectorised over experts."""
    x, p = np.asarray(x, np.float64), softmax(np.asarray(logits, np.float64))
    ws = [np.asarray(a, np.float64) for a in (w_in, b_in, w_out, b_out)]
    outs = np.stack([expert(x, e, *ws, act=act) for e in range(p.shape[1])], axis=1)
    return np.einsum("te,ted->td", p, outs)


def hypernet(embedding, w1, b1, w2, b2, d_model):
    """HyperRouter: (W (d, E), b (E,)) from relu(e W1 + b1) W2 + b2 reshaped (E, d+1)."""
    e, w1, b1, w2, b2 = (np.asarray(a, np.float64) for a in (embedding, w1, b1, w2, b2))
    z = np.maximum(e @ w1 + b1, 0.0) @ w2 + b2
    z = z.reshape(-1, d_model + 1)
    return z[:, :d_model].T, z[:, d_model]
