"""Numerically extreme inputs give finite values (log-space computations)."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import bayesmoe as bm
from tests.params_factory import EXPERTS, GATES, random_params, random_y

SETTINGS = settings(max_examples=15, deadline=None)


@SETTINGS
@given(gate_name=st.sampled_from(sorted(GATES)), expert_name=st.sampled_from(sorted(EXPERTS)),
       x_scale=st.sampled_from([1e-3, 1.0, 1e2, 1e4]), sd=st.sampled_from([1e-6, 1e-3, 1.0, 1e3]),
       K=st.sampled_from([1, 2, 20]), seed=st.integers(0, 2**16))
def test_log_likelihood_finite(gate_name, expert_name, x_scale, sd, K, seed):
    rng = np.random.default_rng(seed)
    gate, expert = GATES[gate_name](), EXPERTS[expert_name]()
    d, n = 2, 16
    model = bm.MoE(gate, expert, n_experts=K)
    params = random_params(rng, gate, expert, K, d)
    if "expert_scale" in params:
        params["expert_scale"] = np.full(K, sd)
    if "gate_scale" in params:
        params["gate_scale"] = np.full((K, d), max(sd, 1e-3))
    if "gate_coef" in params:
        params["gate_coef"] = params["gate_coef"] * 10
    if expert_name.startswith("poisson"):  # log-rates O(1): a rate beyond float range is no density
        params["expert_coef"] = params["expert_coef"] / x_scale
    x = rng.uniform(-1, 1, size=(n, d)) * x_scale
    y = random_y(rng, expert, n) * (x_scale if "gaussian" in expert_name else 1)
    ll = np.asarray(model.log_likelihood(params, x, y))
    assert ll.shape == (n,) and np.all(np.isfinite(ll))
    pred = model.predict(params, x)
    assert np.all(np.isfinite(np.asarray(pred.gate_probs)))
    np.testing.assert_allclose(np.asarray(pred.gate_probs).sum(1), 1.0, rtol=1e-4)


@SETTINGS
@given(x_scale=st.sampled_from([1.0, 1e2, 1e4]), sd=st.sampled_from([1e-6, 1e-2, 1.0]),
       seed=st.integers(0, 2**16))
def test_gradient_finite_softmax_gaussian(x_scale, sd, seed):
    rng = np.random.default_rng(seed)
    K, d, n = 20, 2, 32
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), n_experts=K)
    params = random_params(rng, model.gate, model.expert, K, d)
    params["expert_scale"] = np.full(K, sd)
    x = rng.uniform(-1, 1, size=(n, d)) * x_scale
    y = rng.normal(size=n) * x_scale
    xj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    jparams = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
    g = jax.grad(lambda p: model.log_likelihood(p, xj, yj).sum())(jparams)
    for v in jax.tree.leaves(g):
        assert np.all(np.isfinite(np.asarray(v)))
