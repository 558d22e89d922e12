"""Sparsity priors on the slopes (bayesmoe.priors.laplace / horseshoe): the Laplace prior's MAP is the
Lasso (scikit-learn), and a short NUTS run under the regularised horseshoe shrinks the irrelevant slopes
to zero while the relevant ones stay away from it (simulated data with known relevant slopes)."""

import numpy as np
import pytest

import bayesmoe as bm
from bayesmoe.lasso import simulate_sparse


def test_prior_presets_checked():
    with pytest.raises(ValueError, match="`scale`"):
        bm.priors.laplace(-1.0)
    with pytest.raises(ValueError, match="`global_scale`"):
        bm.priors.horseshoe(0.0)
    with pytest.raises(ValueError, match="`sites`"):
        bm.priors.horseshoe(0.1, sites="expert_coef")
    pri = bm.priors.horseshoe(0.1)
    assert set(pri) == {"gate_coef", "expert_coef"}
    assert bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2, priors=pri) == bm.MoE(
        bm.gates.Softmax(), bm.experts.Gaussian(), 2, priors=bm.priors.horseshoe(0.1))


def test_laplace_prior_density():
    """The model's prior log density of the slope sites under laplace(b) is scipy's Laplace log pdf."""
    from numpyro.handlers import seed, substitute, trace
    from scipy.stats import laplace

    x, y, truth = simulate_sparse(1, n=50, p=10, n_experts=2)
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2, priors=bm.priors.laplace(0.3))
    free = model.free_params(truth)
    tr = trace(substitute(seed(model, 0), data=free)).get_trace(x, y)
    for site in ("expert_coef", "gate_coef_free"):
        lp = float(tr[site]["fn"].log_prob(tr[site]["value"]))
        assert abs(lp - laplace.logpdf(np.asarray(free[site]), scale=0.3).sum()) < 1e-4


@pytest.mark.slow
def test_horseshoe_posterior_shrinks_irrelevant():
    """Regularised horseshoe on one expert's 20 slopes (3 relevant), one short chain: the posterior
    median of every irrelevant slope is within 0.1 of 0 and every relevant 90% interval excludes 0."""
    x, y, truth = simulate_sparse(1, n=200, p=20, n_experts=1)
    p, n = x.shape[1], len(y)
    tau0 = 3 / (p - 3) * 0.5 / np.sqrt(n)
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 1,
                   priors=bm.priors.horseshoe(tau0, sites=("expert_coef",)))
    idata = bm.sample(model, x, y, init="random", num_chains=1, num_warmup=300, num_samples=300,
                      progress_bar=False, seed=0, posterior_predictive=False)
    draws = idata.posterior["expert_coef"].values.reshape(-1, p)
    med = np.median(draws, 0)
    lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
    rel = truth["expert_coef"][0] != 0
    assert np.all(np.abs(med[~rel]) < 0.1), med
    assert np.all((lo[rel] > 0) | (hi[rel] < 0)), (lo[rel], hi[rel])
