"""sample(): NUTS on the reference data, ArviZ output, reproducibility, errors."""

import json
import warnings
from pathlib import Path

import arviz as az
import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
import pytest

import bayesmoe as bm
from bayesmoe.inference.diagnostics import SamplerWarning
from bayesmoe.inference.relabel import complete_dataset

REF = Path(__file__).resolve().parents[2] / "shared" / "reference" / "sgmoe_k2_n1000.csv"


@pytest.fixture(scope="module")
def ref_frame():
    if not REF.exists():
        pytest.skip(f"reference data not found at {REF}")
    return pd.read_csv(REF)


@pytest.fixture(scope="module")
def ref_run(ref_frame):
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), n_experts=2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        dt = bm.sample(model, ref_frame[["x"]], ref_frame["y"], seed=0, progress_bar=False)
    return model, dt, [str(w.message) for w in record if issubclass(w.category, SamplerWarning)]


def _free_vars(dt):
    """Posterior variables: the free parameters only (the gate's reference row is not stored)."""
    return dict(dt.posterior.to_dataset().data_vars.items())


def test_nuts_defaults_on_reference_data(ref_frame, ref_run):
    model, dt, msgs = ref_run
    assert {"posterior", "sample_stats", "log_likelihood", "observed_data", "posterior_predictive"} <= set(
        dt.children)
    post = dt.posterior
    assert post.sizes["chain"] == 4 and post.sizes["draw"] == 1000
    assert post["gate_coef_free"].dims == ("chain", "draw", "expert_free", "feature")
    assert list(post["gate_coef_free"].coords["feature"].values) == ["x"]
    assert "gate_coef" not in post  # the constant reference row stays out of the posterior
    assert int(dt.sample_stats["diverging"].sum()) == 0
    # a healthy default run: no sampler warning, and the stored diagnostics agree with arviz
    assert msgs == []
    assert dt.attrs["bayesmoe_n_divergent"] == 0 and dt.attrs["bayesmoe_n_warnings"] == 0
    found = json.loads(dt.attrs["bayesmoe_diagnostics"])
    for name, da in _free_vars(dt).items():
        assert found["rhat"][name] == pytest.approx(float(az.rhat(da).max()))
        assert found["ess_bulk"][name] == pytest.approx(float(az.ess(da, method="bulk").min()))
    for name, da in _free_vars(dt).items():
        rhat = np.asarray(az.rhat(da))
        ess = np.asarray(az.ess(da, method="bulk"))
        assert np.all(rhat < 1.01), (name, rhat)
        assert np.all(ess > 400), (name, ess)
    # posterior means within 2 posterior sd of the MLE (labels matched by the expert slopes)
    x, y = ref_frame[["x"]].to_numpy(), ref_frame["y"].to_numpy()
    with jax.enable_x64(True):
        mle = bm.fit_mle(model, x, y, seed=0).params
    order = np.argsort(np.asarray(post["expert_coef"].mean(("chain", "draw")))[:, 0])
    mle_order = np.argsort(mle["expert_coef"][:, 0])
    full = complete_dataset(post.to_dataset(), model)  # with the gate's reference rows
    for name, da in full.data_vars.items():
        m = np.asarray(da.mean(("chain", "draw")))[order]
        s = np.asarray(da.std(("chain", "draw")))[order]
        ref = np.asarray(mle[name])[mle_order]
        if name.startswith("gate_"):  # compare gate contrasts: expert with positive slope vs the other
            m, ref = m[1] - m[0], ref[1] - ref[0]
            s = np.asarray((da.isel(expert=int(order[1])) - da.isel(expert=int(order[0])))
                           .std(("chain", "draw")))
        assert np.all(np.abs(m - ref) <= 2 * s), (name, m, ref, s)


def test_loo_on_result(ref_run):
    model, dt, _ = ref_run
    loo = az.loo(dt)
    ll = dt.log_likelihood["y"].to_numpy()
    assert ll.shape == (4, 1000, 1000)
    # elpd_loo <= lppd (LOO pays for the parameters); p_loo near the 8 free parameters
    lppd = np.sum(np.log(np.mean(np.exp(ll.reshape(-1, ll.shape[-1])), axis=0)))
    assert loo.elpd < lppd
    assert 4 < loo.p < 15


def test_pointwise_log_likelihood_matches_model(ref_frame, ref_run):
    model, dt, _ = ref_run
    x, y = ref_frame[["x"]].to_numpy(), ref_frame["y"].to_numpy()
    draw = {k: np.asarray(v.isel(chain=1, draw=17)) for k, v in dt.posterior.to_dataset().data_vars.items()}
    draw = model.complete_params(draw, x.shape[1])
    np.testing.assert_allclose(dt.log_likelihood["y"].isel(chain=1, draw=17).to_numpy(),
                               model.log_likelihood(draw, x, y), rtol=1e-5, atol=1e-5)


def _tiny(model, x, y, **kw):
    return bm.sample(model, x, y, num_chains=2, num_warmup=100, num_samples=100, progress_bar=False,
                     quiet=True, **kw)


def test_reproducible(ref_frame):
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), n_experts=2)
    x, y = ref_frame[["x"]].to_numpy()[:300], ref_frame["y"].to_numpy()[:300]
    a = _tiny(model, x, y, seed=4)
    b = _tiny(model, x, y, seed=4)
    np.testing.assert_array_equal(a.posterior["expert_coef"].to_numpy(),
                                  b.posterior["expert_coef"].to_numpy())


def test_user_model_and_classifier_dims():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(150, 2))
    y = rng.integers(0, 3, 150)
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Categorical(3), n_experts=2)
    dt = _tiny(model, pd.DataFrame(x, columns=["a", "b"]), y, seed=0, relabel=False)
    # the reference class (constant zeros) is not stored: expert_coef_free has a class_free dim
    assert dt.posterior["expert_coef_free"].dims == ("chain", "draw", "expert", "class_free", "feature")
    assert list(dt.posterior["expert_coef_free"].coords["feature"].values) == ["a", "b"]
    assert list(dt.posterior["expert_coef_free"].coords["class_free"].values) == [0, 1]
    assert "expert_coef" not in dt.posterior

    def reg(x, y=None):
        b = numpyro.sample("b", dist.Normal(0, 5).expand([2]).to_event(1))
        with numpyro.plate("obs", x.shape[0]):
            numpyro.sample("y", dist.Normal(x @ b, 1.0), obs=y)

    yr = x @ np.array([1.0, -2.0]) + rng.normal(size=150)
    dt = _tiny(reg, x, yr, seed=0, init="random")
    m = dt.posterior["b"].mean(("chain", "draw")).to_numpy()
    ols = np.linalg.lstsq(x, yr, rcond=None)[0]
    assert np.all(np.abs(m - ols) < 0.2)
    assert dt.log_likelihood["y"].shape[-1] == 150


@pytest.mark.parametrize("kwargs,match", [
    ({"num_chains": 0}, "`num_chains`"),
    ({"num_samples": 0}, "`num_samples`"),
    ({"chain_method": "threads"}, "`chain_method`"),
    ({"init": "median"}, "`init`"),
    ({"seed": "a"}, "`seed`"),
])
def test_bad_arguments(kwargs, match):
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), n_experts=2)
    with pytest.raises(ValueError, match=match):
        bm.sample(model, np.zeros((10, 1)), np.zeros(10), **kwargs)


def test_bad_data():
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), n_experts=2)
    with pytest.raises(ValueError, match="`y` has length"):
        bm.sample(model, np.zeros((10, 1)), np.zeros(8))
    with pytest.raises(ValueError, match="`x` must have 1 or 2 dims"):
        bm.sample(model, np.zeros((10, 1, 2)), np.zeros(10))
