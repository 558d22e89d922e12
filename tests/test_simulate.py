"""simulate agrees with the density: moments (Gaussian) and class frequencies (Categorical)."""

import jax
import numpy as np
import pytest
from scipy import stats

import bayesmoe as bm
from tests.params_factory import GATES, random_params

N = 40000


@pytest.mark.parametrize("gate_name", list(GATES))
def test_gaussian_simulation_moments(gate_name, rng):
    gate, expert = GATES[gate_name](), bm.experts.Gaussian(degree=2)
    model = bm.MoE(gate, expert, n_experts=3)
    params = random_params(rng, gate, expert, 3, 2)
    x = np.repeat(rng.normal(size=(1, 2)), N, axis=0)
    sim = model.simulate(jax.random.key(3), params, x)
    y = np.asarray(sim.y)
    pred = model.predict(params, x[:1])
    # closed-form mixture moments from the parameters (numpy, not the library's variance)
    g, m = np.asarray(pred.gate_probs[0], float), np.asarray(pred.expert_mean[0], float)
    g = g / g.sum()
    s2 = np.asarray(params["expert_scale"]) ** 2
    mean = float(np.sum(g * m))
    var = float(np.sum(g * (s2 + m**2)) - mean**2)
    assert abs(y.mean() - float(pred.mean[0])) < 5 * np.sqrt(var / N)
    np.testing.assert_allclose(float(pred.mean[0]), mean, rtol=1e-5)
    assert abs(y.var() - var) < 0.05 * var
    # expert frequencies follow the gate
    freq = np.bincount(np.asarray(sim.z), minlength=3) / N
    assert stats.chisquare(freq * N, g * N).pvalue > 1e-4
    # each draw is consistent with its expert: standardised residuals are N(0, 1)
    z = np.asarray(sim.z)
    r = (y - m[z]) / np.sqrt(s2[z])
    assert abs(r.mean()) < 0.05 and abs(r.std() - 1) < 0.03


@pytest.mark.parametrize("gate_name", ["softmax", "gaussian_diag"])
def test_categorical_class_frequencies(gate_name, rng):
    gate, expert = GATES[gate_name](), bm.experts.Categorical(n_classes=4)
    model = bm.MoE(gate, expert, n_experts=3)
    params = random_params(rng, gate, expert, 3, 2)
    x = np.repeat(rng.normal(size=(1, 2)), N, axis=0)
    y = np.asarray(model.simulate(jax.random.key(7), params, x).y)
    probs = np.asarray(model.predict(params, x[:1]).class_probs[0])
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)
    counts = np.bincount(y, minlength=4)
    p64 = probs.astype(float) / probs.astype(float).sum()
    assert stats.chisquare(counts, p64 * N).pvalue > 1e-3


def test_simulate_is_reproducible(rng):
    model, params = bm.datasets.softmax_gated_gaussian()
    x = bm.datasets.softmax_gated_gaussian_x(200)
    a = model.simulate(jax.random.key(11), params, x)
    b = model.simulate(jax.random.key(11), params, x)
    c = model.simulate(jax.random.key(12), params, x)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.allclose(a.y, c.y)


@pytest.mark.parametrize("which", [1, 2, 3, 4])
def test_gaussian_gated_paper_models_regenerate_data(which):
    model, params = bm.datasets.gaussian_gated(which)
    x, y, z = bm.datasets.simulate_dataset(jax.random.key(which), model, params, 20000)
    d = 1 if which < 3 else 2
    assert x.shape == (20000, d)
    # x is drawn from the gate's mixture: the expert shares match pi*
    np.testing.assert_allclose(np.bincount(z, minlength=3) / 20000, [0.3, 0.4, 0.3], atol=0.015)
    # the papers' variances: nu*_2 = 0.026429 (models 1, 3)
    if which in (1, 3):
        np.testing.assert_allclose(params["expert_scale"] ** 2, [0.0088767, 0.026429, 0.0175],
                                   rtol=1e-4)
    # residual variance of expert 2 matches nu*_2
    sel = z == 1
    resid = y[sel] - (x[sel] @ params["expert_coef"][1] + params["expert_intercept"][1])
    np.testing.assert_allclose(resid.var(), 0.026429, rtol=0.06)


def test_glome_models():
    model, params = bm.datasets.glome(specified=False)
    assert model.expert.degree == 2
    x = np.array([[0.5]])
    # expert 1 mean 1 - 6 x + x^2 at x = 0.5
    np.testing.assert_allclose(model.predict(params, x).expert_mean[0, 0], 1 - 3 + 0.25, rtol=1e-6)
    model, params = bm.datasets.glome(specified=True)
    np.testing.assert_allclose(model.predict(params, x).expert_mean[0], [2 - 2.5, 0.05], rtol=1e-6)
    assert model.n_params(1) == 6 * 2 - 1  # dim = 6K - 1 of papers.md section 4
