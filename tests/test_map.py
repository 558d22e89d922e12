"""fit_map / fit_mle: flexmix's answer on the reference data, recovery, reproducibility, errors."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
import pytest
from scipy import special

import bayesmoe as bm

REF = Path(__file__).resolve().parents[2] / "shared" / "reference" / "sgmoe_k2_n1000.csv"
FLEXMIX_LL = -1201.01989
# flexmix: logit P(expert 1) = g0 + g1 x; experts (intercept, slope, sd)
FLEX = {"g": (0.01955, 2.49712), "e1": (1.01529, 1.99633, 0.52478), "e2": (-1.04287, -1.55051, 0.81052)}


@pytest.fixture(scope="module")
def ref_data():
    if not REF.exists():
        pytest.skip(f"reference data not found at {REF}")
    d = pd.read_csv(REF)
    return d[["x"]].to_numpy(), d["y"].to_numpy()


def _as_flexmix(params):
    """Our estimate in flexmix's labelling: expert 1 is the one with the positive slope,
    gate logit of expert 1 relative to expert 2."""
    k1 = int(np.argmax(params["expert_coef"][:, 0]))
    k2 = 1 - k1
    b, w = params["gate_intercept"], params["gate_coef"][:, 0]
    return {"g": (b[k1] - b[k2], w[k1] - w[k2]),
            "e1": (params["expert_intercept"][k1], params["expert_coef"][k1, 0], params["expert_scale"][k1]),
            "e2": (params["expert_intercept"][k2], params["expert_coef"][k2, 0], params["expert_scale"][k2])}


@pytest.mark.parametrize("method", ["lbfgs", "adam", "em"])
def test_reference_data_matches_flexmix(ref_data, method):
    x, y = ref_data
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), n_experts=2)
    with jax.enable_x64(True):
        fit = bm.fit_mle(model, x, y, method=method, seed=0)
    assert fit.log_likelihood >= -1201.0209
    assert fit.log_likelihood <= FLEXMIX_LL + 0.05  # an exact maximiser beats flexmix by a hair only
    ours = _as_flexmix(fit.params)
    for key in FLEX:
        np.testing.assert_allclose(ours[key], FLEX[key], atol=1e-2)
    # the reported log-likelihood is the model's at the reported params
    np.testing.assert_allclose(model.log_likelihood(fit.params, x, y).sum(), fit.log_likelihood, rtol=1e-6)
    k, n = model.n_params(1), len(y)
    assert fit.n_params == k == 2 + 2 * 3  # gate (K-1)(d+1), experts K(d+2)
    np.testing.assert_allclose(fit.bic, -2 * fit.log_likelihood + k * np.log(n), rtol=1e-10)
    np.testing.assert_allclose(fit.aic, -2 * fit.log_likelihood + 2 * k, rtol=1e-10)
    with jax.enable_x64(True):
        t = np.asarray(model.distribution(fit.params, x).responsibilities(y), dtype=float)
    entropy = -np.sum(special.xlogy(t, t))
    np.testing.assert_allclose(fit.icl, fit.bic + 2 * entropy, rtol=1e-6)
    assert fit.converged


def test_reference_data_float32(ref_data):
    x, y = ref_data
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), n_experts=2)
    fit = bm.fit_mle(model, x, y)
    assert fit.log_likelihood >= FLEXMIX_LL - 5e-3


def test_em_and_lbfgs_agree_x64(ref_data):
    x, y = ref_data
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), n_experts=2)
    with jax.enable_x64(True):
        a = bm.fit_mle(model, x, y, method="em", seed=1)
        b = bm.fit_mle(model, x, y, method="lbfgs", seed=1)
    assert abs(a.log_likelihood - b.log_likelihood) <= 1e-6 * abs(b.log_likelihood)


def _standard_errors(model, params, x, y):
    """Observed-information standard errors of the free parameters (numerical Hessian, x64)."""
    free = model.free_params(params)
    free.pop("gate_weight", None)  # on the simplex: checked separately
    names = sorted(free)
    flat0 = np.concatenate([np.ravel(free[k]) for k in names])
    shapes = [np.shape(free[k]) for k in names]

    def unflat(v):
        out, i = {}, 0
        for k, s in zip(names, shapes, strict=True):
            m = int(np.prod(s))
            out[k] = v[i:i + m].reshape(s)
            i += m
        return out

    def nll(v):
        f = unflat(v)
        full = dict(params)
        if "gate_intercept_free" in f:
            full["gate_intercept"] = jnp.append(f["gate_intercept_free"], 0.0)
            w = f["gate_coef_free"]
            full["gate_coef"] = jnp.vstack([w, jnp.zeros((1, w.shape[1]))])
        for k in ("gate_loc", "gate_scale", "expert_intercept", "expert_coef", "expert_scale"):
            if k in f:
                full[k] = f[k]
        return -model.log_likelihood(full, x, y).sum()

    with jax.enable_x64(True):
        h = np.asarray(jax.hessian(nll)(jnp.asarray(flat0, jnp.float64)))
    se = np.sqrt(np.diag(np.linalg.inv(h)))
    return unflat(flat0), unflat(se)


@pytest.mark.parametrize("gate", ["softmax", "modified", "gaussian"])
def test_recovery_within_five_standard_errors(gate):
    rng = np.random.default_rng(5)
    n = 5000
    expert = bm.experts.Gaussian()
    truth = {"expert_intercept": np.array([1.0, -1.0, 3.0]), "expert_coef": np.array([[2.0], [-1.0], [0.5]]),
             "expert_scale": np.array([0.3, 0.4, 0.5])}
    if gate == "gaussian":
        model = bm.MoE(bm.gates.Gaussian(), expert, 3, joint=True)
        truth.update(gate_weight=np.array([0.3, 0.4, 0.3]), gate_loc=np.array([[-2.0], [0.0], [2.0]]),
                     gate_scale=np.array([[0.6], [0.5], [0.7]]))
        x = np.asarray(model.sample_x(jax.random.key(1), truth, n))
    else:
        g = bm.gates.Softmax() if gate == "softmax" else bm.gates.ModifiedSoftmax("tanh")
        model = bm.MoE(g, expert, 3)
        truth.update(gate_intercept=np.array([0.5, 1.0, 0.0]), gate_coef=np.array([[-3.0], [0.0], [3.0]]))
        x = rng.uniform(-2.5, 2.5, size=(n, 1))
    y = np.asarray(model.simulate(jax.random.key(2), truth, x).y)
    fit = bm.fit_map(model, x, y, seed=0)
    # align labels by the expert slopes (distinct in the truth)
    order = [int(np.argmin(np.abs(fit.params["expert_coef"][:, 0] - a))) for a in truth["expert_coef"][:, 0]]
    assert sorted(order) == [0, 1, 2]
    est = {k: np.asarray(v)[order] for k, v in fit.params.items()}
    if "gate_intercept" in est:  # back to the reference gauge of the truth's labelling
        est["gate_intercept"] = est["gate_intercept"] - est["gate_intercept"][-1]
        est["gate_coef"] = est["gate_coef"] - est["gate_coef"][-1]
    free_est, se = _standard_errors(model, est, x, y)
    free_true = model.free_params(truth)
    if "gate_weight" in est:
        w = truth["gate_weight"]
        assert np.all(np.abs(est["gate_weight"] - w) < 5 * np.sqrt(w * (1 - w) / n))
    for k in free_est:
        z = np.abs(np.asarray(free_est[k]) - np.asarray(free_true[k])) / se[k]
        assert np.all(z < 5), (k, free_est[k], free_true[k], se[k])


def test_reproducible(ref_data):
    x, y = ref_data
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), n_experts=2)
    a = bm.fit_map(model, x, y, seed=3, n_starts=3)
    b = bm.fit_map(model, x, y, seed=3, n_starts=3)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    np.testing.assert_array_equal(a.start_log_likelihoods, b.start_log_likelihoods)


def test_user_numpyro_model_matches_ols():
    """A hand-written NumPyro model: the MLE of a linear regression is OLS (closed form)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    y = 1.0 + x @ np.array([2.0, -0.5]) + rng.normal(size=200) * 0.7

    def model(x, y=None):
        b = numpyro.sample("b", dist.Normal(0, 10).expand([x.shape[1] + 1]).to_event(1))
        s = numpyro.sample("s", dist.HalfNormal(5.0))
        with numpyro.plate("obs", x.shape[0]):
            numpyro.sample("y", dist.Normal(b[0] + x @ b[1:], s), obs=y)

    with jax.enable_x64(True):
        fit = bm.fit_mle(model, x, y, n_starts=3, seed=0)
    a = np.column_stack([np.ones(200), x])
    beta = np.linalg.lstsq(a, y, rcond=None)[0]
    np.testing.assert_allclose(fit.params["b"], beta, rtol=1e-5)
    np.testing.assert_allclose(fit.params["s"], np.sqrt(np.mean((y - a @ beta) ** 2)), rtol=1e-5)
    assert fit.n_params == 4


@pytest.mark.parametrize("kwargs,match", [
    ({"method": "newton"}, "`method`"),
    ({"n_starts": 0}, "`n_starts`"),
    ({"max_steps": -1}, "`max_steps`"),
    ({"tol": -1.0}, "`tol`"),
    ({"seed": 1.5}, "`seed`"),
])
def test_bad_arguments(ref_data, kwargs, match):
    x, y = ref_data
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), n_experts=2)
    with pytest.raises(ValueError, match=match):
        bm.fit_map(model, x, y, **kwargs)


def test_bad_data():
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), n_experts=2)
    x = np.zeros((10, 1))
    with pytest.raises(ValueError, match="`y` has length"):
        bm.fit_map(model, x, np.zeros(9))
    with pytest.raises(ValueError, match="`x`.*NaN"):
        bm.fit_mle(model, np.full((10, 1), np.nan), np.zeros(10))
    with pytest.raises(ValueError, match="`model`"):
        bm.fit_map("not a model", x, np.zeros(10))
