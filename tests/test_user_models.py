"""A user's own NumPyro model and MCMC run, turned into bayesmoe's DataTree by bm.to_datatree."""

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC, NUTS, init_to_value
from scipy import special, stats

import bayesmoe as bm
from tests._posterior import TRUTH


def user_model(x, y=None):
    """Two linear Gaussian experts, a logistic gate on x: written by hand with bm.MixtureOfExperts."""
    n = x.shape[0]
    b = numpyro.sample("b", dist.Normal(0.0, 5.0).expand([2]).to_event(1))
    a = numpyro.sample("a", dist.Normal(0.0, 5.0).expand([2]).to_event(1))
    s = numpyro.sample("s", dist.LogNormal(0.0, 1.0).expand([2]).to_event(1))
    w = numpyro.sample("w", dist.Normal(0.0, 5.0))
    logits = jnp.stack([w * x[:, 0], jnp.zeros(n)], axis=-1)
    comp = dist.Normal(b + a * x, s)  # batch (n, 2)
    with numpyro.plate("obs", n):
        numpyro.sample("y", bm.MixtureOfExperts(logits, comp), obs=y)


@pytest.fixture(scope="module")
def data():
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), n_experts=2)
    x = np.random.default_rng(4).uniform(-2, 2, size=(120, 1))
    y, _ = model.simulate(jax.random.key(4), TRUTH, x)
    return model, x, np.asarray(y)


@pytest.fixture(scope="module")
def user_tree(data):
    _, x, y = data
    init = {"b": jnp.array([1.0, -1.0]), "a": jnp.array([2.0, -1.5]), "s": jnp.array([0.5, 0.8]),
            "w": jnp.array(2.5)}
    mcmc = MCMC(NUTS(user_model, init_strategy=init_to_value(values=init)), num_warmup=100, num_samples=100,
                num_chains=1, progress_bar=False)
    mcmc.run(jax.random.key(0), jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
    return bm.to_datatree(mcmc, user_model, x, y, seed=1)


def test_user_model_log_likelihood_matches_hand_computation(user_tree, data):
    _, x, y = data
    post = user_tree.posterior
    b, a, s = (post[k].values[0] for k in ("b", "a", "s"))  # (draw, 2)
    w = post["w"].values[0]
    lg = np.stack([w[:, None] * x[None, :, 0], np.zeros((len(w), len(y)))], -1)
    lg = lg - special.logsumexp(lg, axis=-1, keepdims=True)
    le = stats.norm(b[:, None, :] + a[:, None, :] * x[None], s[:, None, :]).logpdf(y[None, :, None])
    want = special.logsumexp(lg + le, axis=-1)
    got = user_tree.log_likelihood["y"].values[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert user_tree.log_likelihood["y"].dims == ("chain", "draw", "obs")
    assert user_tree.posterior_predictive["y"].shape == (1, 100, len(y))


def test_loo_and_ppc_plot_run_on_user_tree(user_tree):
    loo = az.loo(user_tree, pointwise=True)
    ll = user_tree.log_likelihood["y"].values.reshape(-1, user_tree.log_likelihood.sizes["obs"])
    # PSIS-LOO is close to the plain importance-sampling LOO: log 1 / mean_s exp(-ll)
    is_loo = -special.logsumexp(-ll, axis=0) + np.log(ll.shape[0])
    assert abs(loo.elpd - is_loo.sum()) < 2.0
    pc = az.plot_ppc_dist(user_tree)
    assert pc is not None
    import matplotlib.pyplot as plt  # noqa: PLC0415

    plt.close("all")


def test_relabel_without_model_says_so_first(user_tree):
    with pytest.raises(ValueError, match="model="):
        bm.relabel(user_tree)


def test_moe_run_by_users_own_mcmc(data, user_tree):
    model, x, y = data
    free = model.free_params(TRUTH)
    mcmc = MCMC(NUTS(model, init_strategy=init_to_value(values=free)), num_warmup=100, num_samples=100,
                num_chains=1, progress_bar=False)
    mcmc.run(jax.random.key(2), jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
    dt = bm.to_datatree(mcmc, model, x, y)
    assert "gate_coef_free" in dt.posterior and "gate_coef" not in dt.posterior
    draw = {k: dt.posterior[k].values[0, 7] for k in dt.posterior.data_vars}
    full = model.complete_params(draw, 1)
    want = model.log_likelihood({k: np.asarray(v) for k, v in full.items()}, x, y)
    np.testing.assert_allclose(dt.log_likelihood["y"].values[0, 7], want, rtol=1e-5, atol=1e-5)
    out = bm.relabel(dt)  # the model is recorded in the tree
    assert out.attrs["relabel_method"] == "ecr"
    assert bm.MoE.from_datatree(dt) == model
    # both trees hold pointwise log-likelihoods of the same data: arviz compares them
    cmp = az.compare({"hand_written": user_tree, "moe": dt})
    assert set(cmp.index) == {"hand_written", "moe"}
    # (arviz rounds the table's numbers for display)
    np.testing.assert_allclose(float(cmp.loc["moe", "elpd"]), az.loo(dt).elpd, rtol=0.05)


def test_to_datatree_argument_errors(data):
    model, x, y = data
    with pytest.raises(TypeError, match="mcmc"):
        bm.to_datatree("not mcmc", model, x, y)
