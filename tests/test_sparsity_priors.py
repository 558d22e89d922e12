"""Sparsity priors on the slopes (bayesmoe.priors.laplace / horseshoe): the Laplace prior's MAP is the
Lasso (scikit-learn), and a short NUTS run under the regularised horseshoe shrinks the irrelevant slopes
to zero while the relevant ones stay away from it (simulated data with known relevant slopes)."""

import numpy as np
import pytest

import bayesmoe as bm
from bayesmoe.datasets import simulate_sparse


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
    # the horseshoe's posterior mode is degenerate: fit_map says so before compiling anything
    x, y, _ = simulate_sparse(1, n=50, p=10, n_experts=2)
    with pytest.raises(ValueError, match="hierarchical shrinkage priors"):
        bm.fit_map(bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2, priors=pri), x, y)


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


def test_horseshoe_start_from_plain_map():
    """The default start of sample() under horseshoe priors: Horseshoe.latent_values maps slopes into the
    hierarchy exactly (the deterministic slope site reproduces them; local scales >= their prior median
    1, |z| <= 1 where the scale had to grow), and MoE.init_values swaps the slope site for the latent
    sites."""
    hs = bm.priors.horseshoe(0.01)["expert_coef"]
    beta = np.array([[0.0, 1e-4, -0.5, 2.0], [3.0, -0.002, 0.0, 0.1]])
    lat = hs.latent_values("expert_coef", beta)
    tau, lam, c2, z = (np.asarray(lat[f"expert_coef_hs_{k}"], float) for k in ("tau", "lambda", "c2", "z"))
    assert abs(tau - 0.01) < 1e-8 and c2 >= 4 * 9.0 * (1 - 1e-6)
    lam_t = np.sqrt(c2 * lam**2 / (c2 + tau**2 * lam**2))
    np.testing.assert_allclose(z * tau * lam_t, beta, atol=1e-6)
    assert np.all(lam >= 1.0) and np.all(np.abs(z[lam > 1]) <= 1 + 1e-6)
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2,
                   priors=bm.priors.horseshoe(0.01, sites=("expert_coef",)))
    _, _, truth = simulate_sparse(0, n=20, p=10)
    vals = model.init_values(truth)
    assert "expert_coef" not in vals and "expert_coef_hs_z" in vals and "gate_coef_free" in vals
    assert model.with_priors(bm.priors.point_priors(model.priors)).priors is None
    plain = bm.priors.laplace(0.3)
    assert bm.priors.point_priors(plain) is plain  # nothing hierarchical: the same priors


@pytest.fixture(scope="module")
def horseshoe_posterior():
    """The issue's data (K = 2, p = 50, n = 400, 3 relevant slopes in the gate and in each expert, seed
    0), regularised horseshoe on both slope sites (global scales p0/(p - p0) sigma/sqrt(n) with the
    noise sd 0.5 for the experts and the logistic pseudo-sd 2 for the gate, Piironen & Vehtari 2017),
    one short chain from the default start (MAP under the plain priors)."""
    x, y, truth = simulate_sparse(0)
    p, n, p0 = x.shape[1], len(y), 3
    priors = {**bm.priors.horseshoe(p0 / (p - p0) * 0.5 / np.sqrt(n), sites=("expert_coef",)),
              **bm.priors.horseshoe(p0 / (p - p0) * 2.0 / np.sqrt(n), sites=("gate_coef",))}
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2, priors=priors)
    idata = bm.sample(model, x, y, num_chains=1, num_warmup=300, num_samples=300, progress_bar=False,
                      seed=0, posterior_predictive=False)
    return truth, idata


@pytest.mark.slow
def test_horseshoe_on_issue_data(horseshoe_posterior):
    """Posterior median of every irrelevant slope within 0.1 of 0, every relevant slope's 90% interval
    away from 0 (experts matched to the truth: the labelling with the smaller slope error)."""
    truth, idata = horseshoe_posterior
    post = idata.posterior
    ec = post["expert_coef"].values.reshape(-1, 2, 50)
    gc = post["gate_coef_free"].values.reshape(-1, 50)  # expert 0's row minus the reference's
    if np.abs(np.median(ec, 0)[::-1] - truth["expert_coef"]).sum() < np.abs(
            np.median(ec, 0) - truth["expert_coef"]).sum():  # label switch: swap the experts
        ec, gc = ec[:, ::-1], -gc
    draws = np.concatenate([ec.reshape(len(ec), -1), gc], axis=1)
    rel = np.concatenate([truth["expert_coef"].ravel(), truth["gate_coef"][0]]) != 0
    med = np.median(draws, 0)
    lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
    assert np.all(np.abs(med[~rel]) < 0.1), np.sort(np.abs(med[~rel]))[-5:]
    assert np.all((lo[rel] > 0) | (hi[rel] < 0)), (lo[rel], hi[rel])
