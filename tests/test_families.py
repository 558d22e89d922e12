"""Student-t and Poisson experts, added through the family contract: densities against scipy by hand,
robustness to outliers, recovery within standard errors, monotone EM, and clear errors on bad y."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from jax.flatten_util import ravel_pytree
from scipy import stats
from scipy.special import logsumexp

import bayesmoe as bm

REF = Path(__file__).resolve().parents[2] / "shared" / "reference" / "sgmoe_k2_n1000.csv"


def _aligned(model, est, truth):
    """est relabelled to the truth's expert order (K = 2, by expert intercepts), reference gauge."""
    key = "expert_intercept"
    if np.sum(np.abs(est[key] - truth[key])) > np.sum(np.abs(est[key][::-1] - truth[key])):
        est = {k: (np.asarray(v)[::-1] if np.ndim(v) and np.shape(v)[0] == 2 else v) for k, v in est.items()}
    return {k: np.asarray(v) for k, v in model.regauge(est).items()}


# ----------------------------------------------------------------------------- Student t
def test_student_t_log_density_is_scipy_t(rng):
    model = bm.MoE(bm.gates.Softmax(), bm.experts.StudentT(), 3)
    p = model.random_params(rng, 2)
    x = rng.normal(size=(50, 2))
    y = rng.standard_t(3, size=50) * 2
    mean = p["expert_intercept"] + x @ p["expert_coef"].T
    lp = stats.t(p["expert_df"], mean, p["expert_scale"]).logpdf(y[:, None])
    np.testing.assert_allclose(model.expert.log_prob(p, x, y), lp, rtol=1e-4, atol=1e-4)
    logits = p["gate_intercept"] + x @ p["gate_coef"].T
    lg = logits - logsumexp(logits, axis=1, keepdims=True)
    np.testing.assert_allclose(model.log_likelihood(p, x, y), logsumexp(lg + lp, axis=1), rtol=1e-4,
                               atol=1e-4)
    fixed = bm.experts.StudentT(df=4.0)
    assert "expert_df" not in fixed.prior_names() and model.expert.n_params(3, 2) == 3 * 5
    np.testing.assert_allclose(fixed.log_prob(p, x, y), stats.t(4.0, mean, p["expert_scale"]).logpdf(
        y[:, None]), rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def outlier_data():
    if not REF.exists():
        pytest.skip(f"reference data not found at {REF}")
    df = pd.read_csv(REF)
    x, y = df[["x"]].to_numpy(), df["y"].to_numpy().copy()
    rng = np.random.default_rng(11)
    idx = rng.choice(len(y), size=len(y) // 20, replace=False)          # 5% outliers at +-20 sd
    y[idx] = y.mean() + rng.choice([-20.0, 20.0], size=len(idx)) * y.std()
    return x, y


TRUE_SLOPES = np.array([2.0, -1.5])
TRUE_REF = {"expert_intercept": np.array([1.0, -1.0])}


@pytest.mark.parametrize("method", ["lbfgs", "em"])
def test_student_t_recovers_slopes_under_outliers(outlier_data, method):
    x, y = outlier_data
    t_model = bm.MoE(bm.gates.Softmax(), bm.experts.StudentT(), 2)
    g_model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2)
    t_fit = bm.fit_mle(t_model, x, y, method=method, seed=0)
    g_fit = bm.fit_mle(g_model, x, y, method=method, seed=0)
    t_est = _aligned(t_model, t_fit.params, TRUE_REF)["expert_coef"][:, 0]
    g_est = _aligned(g_model, g_fit.params, TRUE_REF)["expert_coef"][:, 0]
    t_err, g_err = np.max(np.abs(t_est - TRUE_SLOPES)), np.max(np.abs(g_est - TRUE_SLOPES))
    print(f"{method}: t-expert slopes {t_est} (max error {t_err:.3f}); Gaussian {g_est} ({g_err:.3f})")
    assert t_err < 0.1
    assert g_err > t_err


def test_student_t_em_is_monotone(outlier_data):
    x, y = outlier_data
    model = bm.MoE(bm.gates.Softmax(), bm.experts.StudentT(), 2)
    start = {"gate_intercept": np.array([[0.5, 0.0]]), "gate_coef": np.array([[[1.0], [0.0]]]),
             "expert_intercept": np.array([[0.5, -0.5]]), "expert_coef": np.array([[[1.0], [-1.0]]]),
             "expert_scale": np.array([[1.0, 1.0]]), "expert_df": np.array([[5.0, 5.0]])}
    with jax.enable_x64(True):
        res = bm.inference.em.em_fit(model, x, y, start, max_steps=200, tol=0.0, return_trace=True)
    tr = np.asarray(res.trace[0])
    tr = tr[np.isfinite(tr)]
    assert np.all(np.diff(tr) >= -1e-9 * np.abs(tr[1:]))
    assert tr[-1] > tr[0]


# ----------------------------------------------------------------------------- Poisson
POISSON_TRUTH = {"gate_intercept": np.array([0.3, 0.0]), "gate_coef": np.array([[2.0], [0.0]]),
                 "expert_intercept": np.array([1.5, 0.2]), "expert_coef": np.array([[0.5], [-0.8]])}


@pytest.fixture(scope="module")
def poisson_case():
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Poisson(), 2)
    x = np.random.default_rng(21).uniform(-2, 2, (5000, 1))
    y = np.asarray(model.simulate(22, POISSON_TRUTH, x).y)
    return model, x, y


def test_poisson_log_likelihood_is_scipy_poisson(poisson_case):
    model, x, y = poisson_case
    rate = np.exp(POISSON_TRUTH["expert_intercept"] + x @ POISSON_TRUTH["expert_coef"].T)
    lp = stats.poisson(rate).logpmf(y[:, None])
    logits = POISSON_TRUTH["gate_intercept"] + x @ POISSON_TRUTH["gate_coef"].T
    lg = logits - logsumexp(logits, axis=1, keepdims=True)
    np.testing.assert_allclose(model.log_likelihood(POISSON_TRUTH, x, y), logsumexp(lg + lp, axis=1),
                               rtol=1e-4, atol=1e-4)
    assert np.issubdtype(np.asarray(y).dtype, np.integer) and y.min() >= 0
    assert model.n_params(1) == 2 + 4


def _standard_errors(model, params, x, y):
    """sqrt(diag(observed information^-1)) in the free parametrisation, by JAX autodiff (float64)."""
    free = {k: jnp.asarray(v, jnp.float64) for k, v in model.free_params(params).items()}
    flat, unravel = ravel_pytree(free)

    def nll(v):
        return -jnp.sum(model.log_likelihood(model.full_params(unravel(v), x.shape[1]), jnp.asarray(x),
                                             jnp.asarray(y)))

    cov = np.linalg.inv(np.asarray(jax.hessian(nll)(flat)))
    return unravel(jnp.asarray(np.sqrt(np.diag(cov))))


@pytest.mark.parametrize("method", ["em", "lbfgs"])
def test_poisson_recovers_truth_within_three_standard_errors(poisson_case, method):
    model, x, y = poisson_case
    with jax.enable_x64(True):
        fit = bm.fit_mle(model, x, y, method=method, seed=0, n_starts=4)
        est = _aligned(model, fit.params, POISSON_TRUTH)
        se = _standard_errors(model, est, x, y)
        free_est, free_true = model.free_params(est), model.free_params(POISSON_TRUTH)
        for k in free_true:
            z = np.abs(np.asarray(free_est[k]) - free_true[k]) / np.asarray(se[k])
            assert np.all(z < 3), (k, free_est[k], free_true[k], se[k])


def test_poisson_em_is_monotone(poisson_case):
    model, x, y = poisson_case
    start = {k: (np.asarray(v, float) + 0.4)[None] for k, v in POISSON_TRUTH.items()}
    with jax.enable_x64(True):
        res = bm.inference.em.em_fit(model, x, y, start, max_steps=100, tol=0.0, return_trace=True)
    tr = np.asarray(res.trace[0])
    tr = tr[np.isfinite(tr)]
    assert len(tr) > 10 and np.all(np.diff(tr) >= -1e-9 * np.abs(tr[1:]))


@pytest.mark.parametrize("bad, what", [(np.r_[-1, np.zeros(9)], "integers >= 0"),
                                       (np.r_[0.5, np.zeros(9)], "non-integer"),
                                       (np.r_[np.nan, np.zeros(9)], "NaN")])
def test_poisson_bad_y_names_y(bad, what):
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Poisson(), 2)
    with pytest.raises(ValueError, match=rf"`y`.*{what}"):
        bm.fit_mle(model, np.linspace(0, 1, 10), bad)


@pytest.mark.parametrize("expert", [bm.experts.StudentT(), bm.experts.Poisson()])
@pytest.mark.parametrize("gate", [bm.gates.ModifiedSoftmax("tanh"), bm.gates.Gaussian("diag")])
def test_new_experts_work_with_every_gate(gate, expert):
    """simulate -> fit_mle (EM) -> predict on every gate; the fit beats the truth's likelihood."""
    model = bm.MoE(gate, expert, 2)
    rng = np.random.default_rng(3)
    truth = model.random_params(rng, 1)
    truth["expert_intercept"] = np.array([2.0, 0.0])
    if "expert_df" in truth:  # random unconstrained values would give df < 1 (no mean): moderate tails
        truth["expert_intercept"] = np.array([1.5, -1.5])
        truth["expert_df"] = np.array([4.0, 6.0])
    x = rng.uniform(-2, 2, (600, 1))
    y = np.asarray(model.simulate(0, truth, x).y)
    fit = bm.fit_mle(model, x, y, method="em", n_starts=3, seed=0)
    ll_truth = float(np.sum(model.log_likelihood(truth, x, y)))
    assert fit.log_likelihood >= ll_truth - 1e-4 * abs(ll_truth)
    pred = model.predict(fit.params, x[:4])
    assert pred.mean.shape == (4,) and np.all(np.isfinite(pred.mean))
