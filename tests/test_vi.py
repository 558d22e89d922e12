"""fit_vi: SVI initialised at the MAP, against NUTS on n = 1e4 rows of the reference model (issue 12)."""

import warnings

import numpy as np
import pytest

import bayesmoe as bm
from bayesmoe.inference.vi import _convergence_problem

N = 10_000


def _reference_model_data(n: int, seed: int):
    """The reference case's true model (/work/shared/reference/README.md): x ~ U(-2, 2),
    P(z = 1 | x) = logistic(2.5 x); expert 1: 1 + 2x + N(0, 0.5^2); expert 2: -1 - 1.5x + N(0, 0.8^2)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, n)
    z = rng.uniform(size=n) < 1 / (1 + np.exp(-2.5 * x))
    y = np.where(z, 1 + 2 * x + 0.5 * rng.standard_normal(n), -1 - 1.5 * x + 0.8 * rng.standard_normal(n))
    return x, y


@pytest.fixture(scope="module")
def runs():
    x, y = _reference_model_data(N, 7)
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), n_experts=2)
    common = {"n_starts": 2, "seed": 0}
    nuts = bm.sample(model, x, y, num_chains=2, num_warmup=150, num_samples=150, progress_bar=False,
                     quiet=True, posterior_predictive=False, **common)
    with warnings.catch_warnings():
        warnings.simplefilter("error", bm.FitWarning)  # a converged ELBO: no warning
        full = bm.fit_vi(model, x, y, num_steps=1500, num_draws=500, progress_bar=False,
                         posterior_predictive=False, **common)
    sub = bm.fit_vi(model, x, y, subsample_size=1000, num_steps=1500, num_draws=500, progress_bar=False,
                    posterior_predictive=False, quiet=True, **common)
    return model, x, y, nuts, full, sub


def _z_scores(nuts, vi):
    """|mean_VI - mean_NUTS| / sd_NUTS for every free parameter (the gate's reference row is 0)."""
    out = {}
    for name, da in nuts.posterior.data_vars.items():
        m, s = da.mean(("chain", "draw")).values, da.std(("chain", "draw")).values
        v = vi.posterior[name].mean(("chain", "draw")).values
        free = s > 0
        out[name] = np.abs(v - m)[free] / s[free]
    return out


def test_vi_posterior_means_within_two_nuts_sds(runs):
    _, _, _, nuts, full, _ = runs
    z = _z_scores(nuts, full)
    assert all(np.all(v < 2) for v in z.values()), z


def test_vi_with_subsampling_within_three_nuts_sds(runs):
    _, _, _, nuts, _, sub = runs
    z = _z_scores(nuts, sub)
    assert all(np.all(v < 3) for v in z.values()), z
    assert sub.attrs["bayesmoe_vi_subsample_size"] == 1000


def test_vi_datatree_has_the_shape_of_sample(runs):
    model, x, y, nuts, full, _ = runs
    post = full.posterior
    assert post.sizes["chain"] == 1 and post.sizes["draw"] == 500
    assert set(post.data_vars) == set(nuts.posterior.data_vars)
    for name in post.data_vars:
        assert post[name].dims[2:] == nuts.posterior[name].dims[2:]
    assert list(post["gate_coef_free"].coords["feature"].values) == ["x0"]
    # log_likelihood: the model's pointwise log-likelihood at each draw, checked by numpy at one draw
    from tests.reference import moe_log_lik

    draw = {k: np.asarray(v) for k, v in model.complete_params(
        {k: post[k].values[0, 3] for k in post.data_vars}, 1).items()}
    ll = moe_log_lik("softmax", "gaussian", draw, x[:, None], y)
    np.testing.assert_allclose(full.log_likelihood["y"].values[0, 3], ll, rtol=2e-5, atol=2e-4)
    np.testing.assert_allclose(full.observed_data["y"].values, y)
    # the ELBO trace: one loss per step, and the optimisation lowered it from the MAP-centred start
    loss = full.vi_stats["loss"].values
    assert loss.shape == (1500,) and np.all(np.isfinite(loss))
    assert np.mean(loss[-150:]) <= np.mean(loss[:150])


def test_convergence_check():
    rng = np.random.default_rng(0)
    flat = 100 + rng.standard_normal(1000)
    assert _convergence_problem(flat) == ""
    assert "still falling" in _convergence_problem(flat - np.linspace(0, 50, 1000))
    assert "not finite" in _convergence_problem(np.r_[flat, np.nan])


def test_fit_vi_rejects_bad_arguments():
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), n_experts=2)
    x, y = np.zeros((20, 1)), np.zeros(20)
    with pytest.raises(ValueError, match="guide"):
        bm.fit_vi(model, x, y, guide="flow")
    with pytest.raises(ValueError, match="subsample_size"):
        bm.fit_vi(model, x, y, subsample_size=0)
    with pytest.raises(ValueError, match="num_steps"):
        bm.fit_vi(model, x, y, num_steps=-1)
    with pytest.raises(TypeError, match="model"):
        bm.fit_vi(lambda x, y=None: None, x, y)
