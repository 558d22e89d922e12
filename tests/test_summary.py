"""Point-fit inference: Wald tables, vcov, memberships and prediction intervals of a FitResult."""

import warnings
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest
from scipy import special, stats

import bayesmoe as bm
from tests.reference import moe_log_lik

REF = Path(__file__).resolve().parents[2] / "shared" / "reference" / "sgmoe_k2_n1000.csv"


@pytest.fixture(scope="module")
def ref_fit():
    if not REF.exists():
        pytest.skip(f"reference data not found at {REF}")
    d = pd.read_csv(REF)
    x, y = d[["x"]], d["y"].to_numpy()
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), n_experts=2)
    with jax.enable_x64(True):
        fit = bm.fit_mle(model, x, y, method="em", seed=0, tol=1e-13, max_steps=5000)
        table = fit.summary()
        ds = fit.summary(level=0.9, as_xarray=True)
    return fit, x.to_numpy(), y, table, ds


def _theta_to_params(t):
    """(g0, g1, b1, b2, a1, a2, s1, s2) -> full params (expert 2 the gate's reference)."""
    return {"gate_intercept": np.array([t[0], 0.0]), "gate_coef": np.array([[t[1]], [0.0]]),
            "expert_intercept": np.array([t[2], t[3]]), "expert_coef": np.array([[t[4]], [t[5]]]),
            "expert_scale": np.array([t[6], t[7]])}


def _fd_hessian(f, t0, rel=1e-4):
    """Central finite-difference Hessian of f at t0 (numpy, float64)."""
    m = len(t0)
    h = rel * np.maximum(np.abs(t0), 1.0)
    H = np.empty((m, m))
    for i in range(m):
        for j in range(i, m):
            def at(si, sj, i=i, j=j):
                t = t0.copy()
                t[i] += si * h[i]
                t[j] += sj * h[j]
                return f(t)
            H[i, j] = H[j, i] = (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1)) / (4 * h[i] * h[j])
    return H


def test_standard_errors_match_finite_difference_hessian(ref_fit):
    fit, x, y, table, _ = ref_fit
    p = fit.params
    t0 = np.array([p["gate_intercept"][0] - p["gate_intercept"][1],
                   p["gate_coef"][0, 0] - p["gate_coef"][1, 0], *p["expert_intercept"],
                   *p["expert_coef"][:, 0], *p["expert_scale"]], float)

    def ll(t):
        return moe_log_lik("softmax", "gaussian", _theta_to_params(t), x, y).sum()

    assert abs(ll(t0) - fit.log_likelihood) < 1e-6 * abs(fit.log_likelihood)
    se_fd = np.sqrt(np.diag(np.linalg.inv(-_fd_hessian(ll, t0))))
    rows = ["gate_intercept[0]", "gate_coef[0, x]", "expert_intercept[0]", "expert_intercept[1]",
            "expert_coef[0, x]", "expert_coef[1, x]", "expert_scale[0]", "expert_scale[1]"]
    assert list(table.index) == rows
    np.testing.assert_allclose(table["estimate"].to_numpy(), t0, rtol=1e-12)
    np.testing.assert_allclose(table["std_err"].to_numpy(), se_fd, rtol=1e-3)
    # the Wald columns from the estimate and the standard error
    z = t0 / se_fd
    np.testing.assert_allclose(table["z"].to_numpy(), z, rtol=1e-3)
    np.testing.assert_allclose(table["p_value"].to_numpy(), 2 * stats.norm.sf(np.abs(z)), rtol=1e-2,
                               atol=1e-300)
    np.testing.assert_allclose(table["ci_upper"] - table["ci_lower"], 2 * 1.959963985 * table["std_err"],
                               rtol=1e-8)
    # vcov: the same matrix, labelled like the table
    v = fit.vcov
    assert list(v.index) == rows
    np.testing.assert_allclose(np.sqrt(np.diag(v.to_numpy())), table["std_err"].to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(v.to_numpy(), v.to_numpy().T, atol=1e-12)


def test_summary_as_xarray(ref_fit):
    fit, _, _, table, ds = ref_fit
    assert ds["gate_coef"].dims == ("expert_free", "feature", "statistic")
    assert list(ds["expert_coef"].coords["feature"].values) == ["x"]
    se = ds["expert_coef"].sel(statistic="std_err").values[:, 0]
    want = table.loc[["expert_coef[0, x]", "expert_coef[1, x]"], "std_err"]
    np.testing.assert_allclose(se, want, rtol=1e-12)
    est = ds["expert_scale"].sel(statistic="estimate").values
    lo = ds["expert_scale"].sel(statistic="ci_lower").values
    q = stats.norm.ppf(0.95)  # level 0.9
    np.testing.assert_allclose(lo, est - q * ds["expert_scale"].sel(statistic="std_err").values, rtol=1e-10)


def test_memberships_and_prediction_interval(ref_fit):
    fit, x, y, _, _ = ref_fit
    p = fit.params
    # memberships by hand: gate x expert densities, normalised
    lg = p["gate_intercept"] + x @ p["gate_coef"].T
    lg = lg - special.logsumexp(lg, axis=1, keepdims=True)
    le = stats.norm(p["expert_intercept"] + x @ p["expert_coef"].T, p["expert_scale"]).logpdf(y[:, None])
    t = np.exp(lg + le - special.logsumexp(lg + le, axis=1, keepdims=True))
    np.testing.assert_allclose(fit.memberships(), t, atol=1e-5)
    np.testing.assert_allclose(fit.memberships(x[:7], y[:7]), t[:7], atol=1e-5)
    # prediction interval: the mixture CDF at the bounds is 0.025 and 0.975
    x_new = np.array([[-1.5], [0.0], [0.3], [1.9]])
    pred = fit.predict(x_new, level=0.95)
    g = np.exp(p["gate_intercept"] + x_new @ p["gate_coef"].T)
    g = g / g.sum(1, keepdims=True)
    mu = p["expert_intercept"] + x_new @ p["expert_coef"].T

    def cdf(v):
        return np.sum(g * stats.norm.cdf((np.asarray(v)[:, None] - mu) / p["expert_scale"]), axis=1)

    np.testing.assert_allclose(cdf(pred.lower), 0.025, atol=2e-5)
    np.testing.assert_allclose(cdf(pred.upper), 0.975, atol=2e-5)
    np.testing.assert_allclose(pred.mean, np.sum(g * mu, 1), rtol=1e-5, atol=1e-6)
    assert fit.predict(x_new, level=None).lower is None
    with pytest.raises(ValueError, match="interval"):
        fit.predict(x_new, level=1.5)


def test_poisson_prediction_interval_is_the_mixture_quantile():
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Poisson(), n_experts=2)
    params = {"gate_intercept": np.array([0.4, 0.0]), "gate_coef": np.array([[1.0], [0.0]]),
              "expert_intercept": np.array([0.5, 2.0]), "expert_coef": np.array([[0.3], [-0.2]])}
    x = np.array([[-1.0], [0.0], [2.0]])
    pred = model.predict(params, x, interval=0.9)
    g = np.exp(params["gate_intercept"] + x @ params["gate_coef"].T)
    g = g / g.sum(1, keepdims=True)
    lam = np.exp(params["expert_intercept"] + x @ params["expert_coef"].T)
    ks = np.arange(200)
    pmf = np.sum(g[:, None, :] * stats.poisson.pmf(ks[None, :, None], lam[:, None, :]), axis=2)
    F = np.cumsum(pmf, axis=1)
    for q, got in ((0.05, pred.lower), (0.95, pred.upper)):
        want = np.argmax(F >= q, axis=1)
        np.testing.assert_array_equal(np.asarray(got), want)


def test_singular_hessian_warns_and_leaves_no_standard_error():
    """Two identical experts: the gate is not identified (flat likelihood along the gate)."""
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (200, 1))
    y = 0.5 + 1.0 * x[:, 0] + 0.3 * rng.standard_normal(200)
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), n_experts=2)
    ols = np.polyfit(x[:, 0], y, 1)
    s = np.sqrt(np.mean((y - np.polyval(ols, x[:, 0])) ** 2))
    params = {"gate_intercept": np.array([0.0, 0.0]), "gate_coef": np.array([[0.0], [0.0]]),
              "expert_intercept": np.array([ols[1]] * 2), "expert_coef": np.array([[ols[0]]] * 2),
              "expert_scale": np.array([s, s])}
    fit = bm.FitResult(params=params, log_likelihood=0.0, log_posterior=0.0, n_params=8, n_obs=200, aic=0.0,
                       bic=0.0, icl=0.0, converged=True, n_steps=0, start_log_likelihoods=np.zeros(1),
                       method="em", prior=False, model=model, data=bm.FitData(x, y))
    with pytest.warns(bm.FitWarning, match="Hessian .* (singular|not negative definite)"):
        table = fit.summary()
    assert np.isnan(table.loc["gate_coef[0, x0]", "std_err"])
    assert np.isnan(table.loc["gate_intercept[0]", "std_err"])


def test_summary_needs_model_and_data():
    fit = bm.FitResult(params={}, log_likelihood=0.0, log_posterior=0.0, n_params=0, n_obs=1, aic=0.0,
                       bic=0.0, icl=0.0, converged=True, n_steps=0, start_log_likelihoods=np.zeros(1),
                       method="em", prior=False)
    with pytest.raises(ValueError, match="needs the fitted model and data"):
        fit.summary()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "FitResult" in repr(fit)


def test_numpyro_model_function_matches_ols_closed_form():
    """A plain NumPyro regression fitted by maximum likelihood: SEs equal the closed form
    sqrt(diag(s^2 (X'X)^-1)) for the coefficients and s / sqrt(2n) for the residual sd."""
    import numpyro  # noqa: PLC0415
    import numpyro.distributions as dist  # noqa: PLC0415

    def reg(x, y=None):
        b = numpyro.sample("b", dist.Normal(0, 5).expand([2]).to_event(1))
        s = numpyro.sample("s", dist.LogNormal(0, 1))
        with numpyro.plate("obs", x.shape[0]):
            numpyro.sample("y", dist.Normal(x @ b, s), obs=y)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    y = x @ np.array([1.0, -2.0]) + 0.5 * rng.normal(size=200)
    fit = bm.fit_mle(reg, x, y, n_starts=2)
    table = fit.summary()
    beta = np.linalg.lstsq(x, y, rcond=None)[0]
    s2 = np.mean((y - x @ beta) ** 2)
    np.testing.assert_allclose(table["estimate"], [*beta, np.sqrt(s2)], rtol=2e-4)
    want = [*np.sqrt(np.diag(s2 * np.linalg.inv(x.T @ x))), np.sqrt(s2 / (2 * len(y)))]
    np.testing.assert_allclose(table["std_err"], want, rtol=1e-3)
