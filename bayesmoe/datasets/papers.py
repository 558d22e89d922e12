"""The papers' true models, as ``(model, true_params)`` pairs ready for ``model.simulate``.

Parameters are those of the papers' simulation sections (arXiv 2305.03288, 2305.07572, 2104.02640,
cited at each function); Gaussian variances of the papers are converted to the
standard deviations our sites use (``expert_scale``, ``gate_scale``).
"""

from __future__ import annotations

import jax
import numpy as np

from bayesmoe import experts, gates
from bayesmoe._random import as_key
from bayesmoe.model import MoE

__all__ = ["gaussian_gated", "glome", "simulate_dataset", "softmax_gated_gaussian",
           "softmax_gated_gaussian_x"]


def softmax_gated_gaussian() -> tuple[MoE, dict]:
    """Softmax-gated Gaussian MoE of arXiv 2305.03288 (section 1): d = 1, K* = 2.

    Gates (beta0, beta1) = (-8, 25), (0, 0) (the second is the reference); experts (b, a) = (15, -20),
    (-5, 20); noise sd 0.3, 0.4. The paper's inputs are the grid ``softmax_gated_gaussian_x(n)``.
    """
    model = MoE(gates.Softmax(), experts.Gaussian(degree=1), n_experts=2)
    params = {
        "gate_intercept": np.array([-8.0, 0.0]),
        "gate_coef": np.array([[25.0], [0.0]]),
        "expert_intercept": np.array([15.0, -5.0]),
        "expert_coef": np.array([[-20.0], [20.0]]),
        "expert_scale": np.array([0.3, 0.4]),
    }
    return model, params


def softmax_gated_gaussian_x(n: int) -> np.ndarray:
    """The fixed design of arXiv 2305.03288: x = linspace(0, 1, n), shape (n, 1)."""
    return np.linspace(0.0, 1.0, int(n))[:, None]


_GG_VARIANCE = np.array([0.042824, 0.0175, 0.01])
_GG_A = np.array([0.017324 / 0.042824, -0.0125 / 0.0175, 0.0])


def gaussian_gated(model: int = 1) -> tuple[MoE, dict]:
    """Gaussian-gated Gaussian MoE of arXiv 2305.07572 (section 2), models 1-4, K* = 3.

    pi* = (0.3, 0.4, 0.3), Gamma* = (0.042824, 0.0175, 0.01) (variances). Model 1 (d = 1):
    c* = (-0.1, 0.1, 0.5), A* = (0.40454, -0.71429, 0), b* = (0.34045, -0.32857, 0.2),
    nu* = (0.0088767, 0.026429, 0.0175). Model 2: as model 1 with c*_1 = 0, b*_1 = 0.3,
    nu*_1 = 0.0011677 (a zero gate location: regime 2). Models 3 and 4 are models 1 and 2 in d = 2:
    every coordinate of c*_k equal to the d = 1 value, Gamma*_k = variance times the identity, and
    A*_k with both entries equal to the d = 1 slope (as in the authors' published simulation code).
    The returned model has a diagonal Gaussian gate and ``joint=True`` (the papers fit p(x, y)).
    """
    if model not in (1, 2, 3, 4):
        raise ValueError(f"`model` must be 1, 2, 3 or 4, got {model!r}")
    d = 1 if model in (1, 2) else 2
    c = np.array([-0.1, 0.1, 0.5])
    b = np.array([0.3 + _GG_A[0] * 0.1, -0.4 + 0.0125 / 0.0175 * 0.1, 0.2])
    nu = np.array([0.0081759 + _GG_A[0] * 0.1 * 0.017324, 0.0175 + 0.0125 / 0.0175 * 0.0125,
                   0.0175])
    if model in (2, 4):
        c[0], b[0], nu[0] = 0.0, 0.3, 0.0081759 - _GG_A[0] * 0.017324
    moe = MoE(gates.Gaussian("diag"), experts.Gaussian(degree=1), n_experts=3, joint=True)
    params = {
        "gate_weight": np.array([0.3, 0.4, 0.3]),
        "gate_loc": np.repeat(c[:, None], d, axis=1),
        "gate_scale": np.repeat(np.sqrt(_GG_VARIANCE)[:, None], d, axis=1),
        "expert_intercept": b,
        "expert_coef": np.repeat(_GG_A[:, None], d, axis=1),
        "expert_scale": np.sqrt(nu),
    }
    return moe, params


def glome(specified: bool = True) -> tuple[MoE, dict]:
    """GLoME simulation of arXiv 2104.02640 (section 4), K* = 2, d = 1.

    pi = (1/2, 1/2), c = (0.2, 0.8), Gamma = (0.1, 0.15) (variances), noise sd 0.3. Well specified
    (``specified=True``): linear experts b = (2, 0), A = (-5, 0.1). Misspecified: quadratic experts
    y = beta0 + beta1 x + beta2 x^2 with beta0 = (1, 0), beta1 = (-6, 0), beta2 = (1, -0.4); the true
    model then has ``degree=2`` experts, which a linear GLoME fit does not contain.
    """
    degree = 1 if specified else 2
    moe = MoE(gates.Gaussian("diag"), experts.Gaussian(degree=degree), n_experts=2, joint=True)
    params = {
        "gate_weight": np.array([0.5, 0.5]),
        "gate_loc": np.array([[0.2], [0.8]]),
        "gate_scale": np.sqrt(np.array([[0.1], [0.15]])),
        "expert_scale": np.array([0.3, 0.3]),
    }
    if specified:
        params.update(expert_intercept=np.array([2.0, 0.0]), expert_coef=np.array([[-5.0], [0.1]]))
    else:
        params.update(expert_intercept=np.array([1.0, 0.0]),
                      expert_coef=np.array([[-6.0, 1.0], [0.0, -0.4]]))
    return moe, params


def simulate_dataset(key, model: MoE, params: dict, n: int,
                     x: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw a data set (x, y, z) of size n from a true model.

    x: given, else drawn from a Gaussian gate's mixture (GLLiM generative model), else an error
    for softmax gates (their papers fix a design: pass it, e.g. ``softmax_gated_gaussian_x(n)``).
    ``key``: a ``jax.random`` key or an int seed.

    :param key: a ``jax.random`` key or an int seed.
    :param model: the true :class:`~bayesmoe.MoE`.
    :param params: its true parameters keyed by site name.
    :param n: number of observations.
    :param x: the inputs (n, d), or None to draw them from the gate's model of x.
    """
    kx, ky = jax.random.split(as_key(key, "key"))
    if x is None:
        x = np.asarray(model.sample_x(kx, params, n))
    sim = model.simulate(ky, params, x)
    return np.asarray(x), np.asarray(sim.y), np.asarray(sim.z)
