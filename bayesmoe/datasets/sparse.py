r"""The sparse high-dimensional setting of the Lasso MoE papers (Khalili 2010; Nguyen, Chamroukhi &
Forbes, arXiv 2009.10622): a softmax-gated Gaussian MoE with many features of which few act in each
gate row and each expert, and the selection rates of a fit against the truth.
"""

from __future__ import annotations

import itertools

import numpy as np

from bayesmoe import experts, gates
from bayesmoe._random import seed_int
from bayesmoe._validation import check_positive_int
from bayesmoe.model import MoE

__all__ = ["selection_rates", "simulate_sparse"]


def simulate_sparse(seed: int = 0, n: int = 400, p: int = 50, n_experts: int = 2, n_relevant: int = 3,
                    noise: float = 0.5, strength: float = 2.0):
    r"""Data from a sparse softmax-gated Gaussian MoE (the setting of the Lasso MoE papers): x ~ N(0, I_p),
    each free gate row and each expert with ``n_relevant`` nonzero slopes (disjoint blocks of features,
    values :math:`\pm` ``strength`` times 1, 1, 0.75, ...), expert intercepts spread in [-1, 1] and
    standard deviation ``noise``.

    :param seed: int or ``jax.random`` key. :param n: rows. :param p: features.
    :param n_experts: K. :param n_relevant: relevant slopes per gate row and per expert.
    :param noise: the experts' standard deviation. :param strength: size of the relevant slopes.
    :returns: (x (n, p), y (n,), the true params dict).
    """
    K = check_positive_int(n_experts, "n_experts")
    s = check_positive_int(n_relevant, "n_relevant")
    check_positive_int(p, "p", minimum=(2 * K - 1) * s)
    check_positive_int(n, "n")
    seed = seed_int(seed, "seed")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, p))
    mags = strength * np.resize([1.0, -1.0, 0.75], s)
    gate = np.zeros((K, p))
    coef = np.zeros((K, p))
    j = 0
    for k in range(K - 1):
        gate[k, j:j + s] = 1.25 * mags
        j += s
    for k in range(K):
        coef[k, j:j + s] = mags * (-1) ** k
        j += s
    truth = {"gate_intercept": np.zeros(K), "gate_coef": gate,
             "expert_intercept": np.linspace(1.0, -1.0, K) if K > 1 else np.zeros(1),
             "expert_coef": coef, "expert_scale": np.full(K, float(noise))}
    model = MoE(gates.Softmax(), experts.Gaussian(), K)
    y = np.asarray(model.simulate(seed, truth, x).y, float)
    return x, y, truth


def selection_rates(params: dict, truth: dict) -> tuple[float, float]:
    """(share of the relevant slopes estimated nonzero, share of the irrelevant ones estimated nonzero),
    over the expert slopes and the free gate rows, for the expert labelling that matches best.

    :param params: fitted params (``gate_coef``, ``expert_coef``). :param truth: the true params.
    """
    ec, gc = np.asarray(params["expert_coef"]), np.asarray(params["gate_coef"])
    tec, tgc = np.asarray(truth["expert_coef"]), np.asarray(truth["gate_coef"])
    K = ec.shape[0]
    best = None
    for perm in itertools.permutations(range(K)):
        perm = list(perm)
        e, g = ec[perm], gc[perm]
        g = g - g[-1:]
        est = np.concatenate([(e != 0).ravel(), (g[:-1] != 0).ravel()])
        rel = np.concatenate([(tec != 0).ravel(), (tgc[:-1] != 0).ravel()])
        tp, fp = est[rel].mean(), est[~rel].mean()
        if best is None or tp - fp > best[0] - best[1]:
            best = (float(tp), float(fp))
    return best
