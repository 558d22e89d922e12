"""bm.metrics.kl_conditional / jensen_kl: Monte-Carlo estimates against closed forms and quadrature."""

import numpy as np
import pytest
from scipy import stats

import bayesmoe as bm

MODEL = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 1)
S = {"gate_intercept": np.zeros(1), "gate_coef": np.zeros((1, 1)), "expert_intercept": np.array([0.5]),
     "expert_coef": np.array([[2.0]]), "expert_scale": np.array([0.7])}
T = {**S, "expert_intercept": np.array([0.0]), "expert_coef": np.array([[1.5]]),
     "expert_scale": np.array([1.1])}
X = np.linspace(-1, 1, 15)


def _means(p):
    return p["expert_intercept"][0] + p["expert_coef"][0, 0] * X


def test_kl_matches_gaussian_closed_form():
    res = bm.metrics.kl_conditional(MODEL, S, MODEL, T, X, n_draws=4000, seed=0)
    s1, s2 = 0.7, 1.1
    exact = np.mean(np.log(s2 / s1) + (s1**2 + (_means(S) - _means(T)) ** 2) / (2 * s2**2) - 0.5)
    assert abs(res.value - exact) < max(4 * res.se, 0.01 * exact)
    assert bm.metrics.kl_conditional(MODEL, S, MODEL, S, X, n_draws=10).value == pytest.approx(0.0, abs=1e-6)


def test_jensen_kl_matches_quadrature():
    rho = 0.5
    res = bm.metrics.jensen_kl(MODEL, S, MODEL, T, X, rho=rho, n_draws=4000, seed=1)
    grid = np.linspace(-12, 12, 20001)
    vals = []
    for ms, mt in zip(_means(S), _means(T), strict=True):
        s = stats.norm.pdf(grid, ms, 0.7)
        t = stats.norm.pdf(grid, mt, 1.1)
        f = np.where(s > 0, s * np.log(s / ((1 - rho) * s + rho * t)), 0.0)
        vals.append(np.trapezoid(f, grid) / rho)
    exact = float(np.mean(vals))
    assert abs(res.value - exact) < max(4 * res.se, 0.01 * exact)
    assert res.value <= -np.log(1 - rho) / rho  # the JKL bound


def test_bad_arguments():
    with pytest.raises(ValueError, match="`rho`"):
        bm.metrics.jensen_kl(MODEL, S, MODEL, T, X, rho=1.0)
    with pytest.raises(ValueError, match="`model_t`"):
        bm.metrics.kl_conditional(MODEL, S, "truth", T, X)
    with pytest.raises(ValueError, match="`n_draws`"):
        bm.metrics.kl_conditional(MODEL, S, MODEL, T, X, n_draws=0)
