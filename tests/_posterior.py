"""One small posterior of the README model, sampled once per test process and shared by test files."""

import functools

import jax
import numpy as np

import bayesmoe as bm

TRUTH = {"gate_intercept": np.array([0.0, 0.0]), "gate_coef": np.array([[2.5], [0.0]]),
         "expert_intercept": np.array([1.0, -1.0]), "expert_coef": np.array([[2.0], [-1.5]]),
         "expert_scale": np.array([0.5, 0.8])}


@functools.lru_cache(maxsize=1)
def readme_posterior():
    """(model, x, y, dt): the README's K = 2 softmax-gated Gaussian MoE, 150 points, 2 chains x 150 draws."""
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(degree=1), n_experts=2)
    x = np.random.default_rng(0).uniform(-2, 2, size=(150, 1))
    y, _ = model.simulate(jax.random.key(0), TRUTH, x)
    y = np.asarray(y)
    dt = bm.sample(model, x, y, seed=0, num_chains=2, num_warmup=150, num_samples=150, n_starts=2,
                   progress_bar=False, quiet=True)
    return model, x, y, dt
