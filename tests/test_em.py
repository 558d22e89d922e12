"""EM (bayesmoe.inference.em): against R flexmix's answer, against an independent scipy maximisation of a
numpy log-likelihood, monotonicity of the log-likelihood trace, Categorical experts, vmapped starts and
the up-front model checks."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import check_grad, minimize
from scipy.special import logsumexp

import bayesmoe as bm
from bayesmoe._solvers import multinomial_newton
from bayesmoe.inference import em as em_mod
from bayesmoe.inference.em import em_fit

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "sgmoe_k2_n1000.csv"

# R flexmix 2.3-18, README of the reference directory (expert 2 the reference of the gate).
FLEX_LL = -1201.01989
FLEX_GATE = (0.01955, 2.49712)
FLEX_EXPERTS = np.array([[1.01529, 1.99633, 0.52478], [-1.04287, -1.55051, 0.81052]])


def _rel_increments(trace):
    tr = np.asarray(trace)
    tr = tr[~np.isnan(tr)]
    return np.diff(tr) / np.abs(tr[1:])


# ----------------------------------------------------------------------------- fixtures (fits run once)
@pytest.fixture(scope="module")
def reference_data():
    if not REFERENCE.exists():
        pytest.skip(f"reference data set not found at {REFERENCE}")
    data = np.genfromtxt(REFERENCE, delimiter=",", skip_header=1)
    return data[:, :1], data[:, 1]


def _reference_inits(x, y):
    """Three starts: expert 1 from an OLS fit on x > 0, expert 2 on x <= 0 (a crude split, expert 1
    favoured by the gate for x > 0), the same perturbed, and a split on the sign of the OLS residual."""
    pos = x[:, 0] > 0
    fits = [np.polyfit(x[m, 0], y[m], 1) for m in (pos, ~pos)]
    crude = {"gate_intercept": np.array([0.0, 0.0]), "gate_coef": np.array([[1.0], [0.0]]),
             "expert_intercept": np.array([fits[0][1], fits[1][1]]),
             "expert_coef": np.array([[fits[0][0]], [fits[1][0]]]), "expert_scale": np.array([1.0, 1.0])}
    rng = np.random.default_rng(7)
    perturbed = {k: v + (0.3 * rng.standard_normal(v.shape) if k.startswith("expert_") and k != "expert_scale"
                         else 0.0) for k, v in crude.items()}
    perturbed["gate_coef"] = np.array([[0.5], [0.0]])
    slope, icpt = np.polyfit(x[:, 0], y, 1)
    up = y > icpt + slope * x[:, 0]
    fits2 = [np.polyfit(x[m, 0], y[m], 1) for m in (up, ~up)]
    resid = {"gate_intercept": np.array([0.0, 0.0]), "gate_coef": np.array([[0.0], [0.0]]),
             "expert_intercept": np.array([fits2[0][1], fits2[1][1]]),
             "expert_coef": np.array([[fits2[0][0]], [fits2[1][0]]]), "expert_scale": np.array([0.7, 0.7])}
    return {k: np.stack([crude[k], perturbed[k], resid[k]]) for k in crude}


@pytest.fixture(scope="module")
def softmax_model():
    return bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2)


@pytest.fixture(scope="module")
def reference_fit(reference_data, softmax_model):
    x, y = reference_data
    init = _reference_inits(x, y)
    with jax.enable_x64(True):
        res = em_fit(softmax_model, x, y, init, tol=1e-10, max_steps=500, return_trace=True)
    return init, jax.tree.map(np.asarray, res)


@pytest.fixture(scope="module")
def gllim_case():
    with jax.enable_x64(True):
        model, truth = bm.datasets.gaussian_gated(1)
        x, y, _ = bm.datasets.simulate_dataset(jax.random.key(0), model, truth, 2000)
        rng = np.random.default_rng(3)
        init = {k: (np.asarray(v) * (1 + 0.1 * rng.standard_normal(np.shape(v))))[None]
                for k, v in truth.items()}
        init["gate_weight"] = init["gate_weight"] / init["gate_weight"].sum(-1, keepdims=True)
        res = em_fit(model, x, y, init, tol=1e-12, max_steps=500, return_trace=True)
    return model, x, y, jax.tree.map(np.asarray, res)


CAT_TRUTH = {
    "gate_intercept": np.array([0.3, 0.0]), "gate_coef": np.array([[2.0, -1.0], [0.0, 0.0]]),
    "expert_intercept": np.array([[1.0, -0.5, 0.0], [-1.0, 0.5, 0.0]]),
    "expert_coef": np.array([[[2.0, 0.0], [-1.0, 1.0], [0.0, 0.0]], [[-2.0, 1.0], [1.5, -1.0], [0.0, 0.0]]]),
}


@pytest.fixture(scope="module")
def categorical_case():
    with jax.enable_x64(True):
        model = bm.MoE(bm.gates.Softmax(), bm.experts.Categorical(3), 2)
        x = np.random.default_rng(2).standard_normal((3000, 2))
        y = np.asarray(model.simulate(jax.random.key(3), CAT_TRUTH, x).y)
        rng = np.random.default_rng(4)
        init = {k: (v + 0.3 * rng.standard_normal(v.shape))[None] for k, v in CAT_TRUTH.items()}
        res = em_fit(model, x, y, init, return_trace=True)
        ll_truth = float(jnp.sum(model.log_likelihood(CAT_TRUTH, x, y)))
        ll_start = float(jnp.sum(model.log_likelihood({k: v[0] for k, v in init.items()}, x, y)))
    return res, ll_truth, ll_start


def _modified_softmax_fit():
    model = bm.MoE(bm.gates.ModifiedSoftmax(lambda x: jnp.tanh(1.5 * x)), bm.experts.Gaussian(degree=2), 2)
    truth = {"gate_intercept": np.array([0.2, 0.0]), "gate_coef": np.array([[3.0], [0.0]]),
             "expert_intercept": np.array([1.0, -1.0]), "expert_coef": np.array([[2.0, -0.5], [-1.0, 0.5]]),
             "expert_scale": np.array([0.4, 0.6])}
    x = np.random.default_rng(5).uniform(-2, 2, (1000, 1))
    y = np.asarray(model.simulate(jax.random.key(5), truth, x).y)
    init = {k: (v + 0.2)[None] for k, v in truth.items()}
    return em_fit(model, x, y, init, tol=1e-10, max_steps=300, return_trace=True)


def _full_covariance_fit():
    m3, truth = bm.datasets.gaussian_gated(3)
    x, y, _ = bm.datasets.simulate_dataset(jax.random.key(1), m3, truth, 1500)
    model = bm.MoE(bm.gates.Gaussian("full"), bm.experts.Gaussian(), 3, joint=True)
    init = {k: np.asarray(v)[None] for k, v in truth.items() if k != "gate_scale"}
    init["gate_cov"] = np.stack([np.diag(s**2) for s in truth["gate_scale"]])[None] * 1.5
    init["gate_loc"] = init["gate_loc"] + 0.05
    return em_fit(model, x, y, init, tol=1e-10, max_steps=300, return_trace=True)


# ----------------------------------------------------------------------------- flexmix reference
def test_reference_matches_flexmix(reference_fit, reference_data):
    init, res = reference_fit
    best = int(np.argmax(res.log_likelihood))
    assert res.log_likelihood[best] >= FLEX_LL - 1e-3          # -1201.0209: the bar of the README
    assert res.converged[best]
    # start 0 puts expert 1 (the one favoured for x > 0) first, as flexmix's labels; it must be the best
    assert res.log_likelihood[0] >= res.log_likelihood[best] - 1e-6
    p = {k: v[0] for k, v in res.params.items()}
    assert p["gate_intercept"][1] == 0.0 and p["gate_coef"][1, 0] == 0.0
    np.testing.assert_allclose([p["gate_intercept"][0], p["gate_coef"][0, 0]], FLEX_GATE, atol=1e-2)
    np.testing.assert_allclose(p["expert_intercept"], FLEX_EXPERTS[:, 0], atol=1e-2)
    np.testing.assert_allclose(p["expert_coef"][:, 0], FLEX_EXPERTS[:, 1], atol=1e-2)
    # flexmix reports sd * sqrt(N / (N - p)) (N = 1000, p = 2 regressors): rescale ours to compare
    n = reference_data[0].shape[0]
    np.testing.assert_allclose(p["expert_scale"] * np.sqrt(n / (n - 2)), FLEX_EXPERTS[:, 2], rtol=2e-3)


def test_reference_float32_default(reference_data, softmax_model, reference_fit):
    """Without x64 the fit runs in float32 and lands on the same maximum."""
    x, y = reference_data
    init, res64 = reference_fit
    res = em_fit(softmax_model, x.astype(np.float32), y, {k: v[:1] for k, v in init.items()})
    assert res.params["expert_coef"].dtype == jnp.float32
    assert res.log_likelihood.dtype == jnp.float32
    assert abs(float(res.log_likelihood[0]) - res64.log_likelihood[0]) < 1e-2
    np.testing.assert_allclose(res.params["gate_coef"][0], res64.params["gate_coef"][0], atol=1e-2)


# ----------------------------------------------------------------------------- independent maximisation
_LOG_SQRT_2PI = 0.5 * np.log(2 * np.pi)


def _lognormal(v, mean, log_sd):
    return -0.5 * ((v - mean) * np.exp(-log_sd)) ** 2 - log_sd - _LOG_SQRT_2PI


def _softmax_gaussian_ll(theta, x, y):
    """log-likelihood of the 2-expert softmax-gated Gaussian MoE (expert 2 the gate's reference) and its
    gradient in theta = (g0, g1, b1, a1, log s1, b2, a2, log s2)."""
    g0, g1, b1, a1, ls1, b2, a2, ls2 = theta
    eta = g0 + g1 * x
    sp = np.logaddexp(eta, 0.0)
    e1, e2 = y - b1 - a1 * x, y - b2 - a2 * x
    l1 = eta - sp + _lognormal(e1, 0.0, ls1)
    l2 = -sp + _lognormal(e2, 0.0, ls2)
    lse = np.logaddexp(l1, l2)
    r1, r2 = np.exp(l1 - lse), np.exp(l2 - lse)
    d_eta = r1 - np.exp(eta - sp)
    u1, u2 = r1 * e1 * np.exp(-2 * ls1), r2 * e2 * np.exp(-2 * ls2)
    grad = [d_eta.sum(), (d_eta * x).sum(),
            u1.sum(), (u1 * x).sum(), (r1 * (e1**2 * np.exp(-2 * ls1) - 1)).sum(),
            u2.sum(), (u2 * x).sum(), (r2 * (e2**2 * np.exp(-2 * ls2) - 1)).sum()]
    return lse.sum(), np.array(grad)


def _gllim_ll(theta, x, y, K):
    """Joint log-likelihood sum_i log sum_k pi_k N(x_i | c_k, G_k) N(y_i | a_k x_i + b_k, nu_k) (d = 1) and
    its gradient in theta = (pi logits of experts 1..K-1, c, log G, a, b, log nu)."""
    logit, c, lgam, a, b, lnu = np.split(theta, np.cumsum([K - 1, K, K, K, K]))
    logpi = np.append(logit, 0.0)
    logpi = logpi - logsumexp(logpi)
    dx = x[:, None] - c
    e = y[:, None] - a * x[:, None] - b
    terms = logpi + _lognormal(dx, 0.0, 0.5 * lgam) + _lognormal(e, 0.0, 0.5 * lnu)
    lse = logsumexp(terms, axis=1)
    r = np.exp(terms - lse[:, None])
    rk = r.sum(0)
    ig, inu = np.exp(-lgam), np.exp(-lnu)
    grad = np.concatenate([
        (rk - x.size * np.exp(logpi))[:-1],
        (r * dx).sum(0) * ig,
        (r * (0.5 * dx**2 * ig - 0.5)).sum(0),
        (r * e * x[:, None]).sum(0) * inu,
        (r * e).sum(0) * inu,
        (r * (0.5 * e**2 * inu - 0.5)).sum(0)])
    return lse.sum(), grad


def _scipy_max(f, theta0):
    """Maximise f (returning value and gradient) by L-BFGS-B; the gradient is checked by differences."""
    err = check_grad(lambda t: f(t)[0], lambda t: f(t)[1], theta0)
    assert err <= 1e-4 * max(1.0, np.linalg.norm(f(theta0)[1]))
    res = minimize(lambda t: tuple(-v for v in f(t)), theta0, jac=True, method="L-BFGS-B",
                   options={"ftol": 1e-15, "gtol": 1e-9, "maxiter": 20000, "maxfun": 100000})
    return -res.fun, res.x


def test_softmax_gaussian_matches_scipy(reference_fit, reference_data):
    _, res = reference_fit
    x, y = reference_data[0][:, 0], reference_data[1]
    p = {k: v[0] for k, v in res.params.items()}
    theta_em = np.array([p["gate_intercept"][0], p["gate_coef"][0, 0],
                         p["expert_intercept"][0], p["expert_coef"][0, 0], np.log(p["expert_scale"][0]),
                         p["expert_intercept"][1], p["expert_coef"][1, 0], np.log(p["expert_scale"][1])])
    # the test's own likelihood agrees with the package's at EM's answer
    assert _softmax_gaussian_ll(theta_em, x, y)[0] == pytest.approx(res.log_likelihood[0], rel=1e-12)
    start = theta_em + 0.05 * np.random.default_rng(0).standard_normal(theta_em.size)
    ll_sp, theta_sp = _scipy_max(lambda t: _softmax_gaussian_ll(t, x, y), start)
    assert abs(ll_sp - res.log_likelihood[0]) <= 1e-6 * abs(ll_sp)
    np.testing.assert_allclose(theta_sp, theta_em, atol=5e-3)


def test_gaussian_gate_joint_matches_scipy(gllim_case):
    model, x, y, res = gllim_case
    K = model.n_experts
    p = {k: v[0] for k, v in res.params.items()}
    assert res.converged[0]
    lw = np.log(p["gate_weight"])
    theta_em = np.concatenate([lw[:-1] - lw[-1], p["gate_loc"][:, 0], 2 * np.log(p["gate_scale"][:, 0]),
                               p["expert_coef"][:, 0], p["expert_intercept"], 2 * np.log(p["expert_scale"])])
    x1 = x[:, 0]
    assert _gllim_ll(theta_em, x1, y, K)[0] == pytest.approx(res.log_likelihood[0], rel=1e-10)
    start = theta_em + 0.02 * np.random.default_rng(1).standard_normal(theta_em.size)
    ll_sp, _ = _scipy_max(lambda t: _gllim_ll(t, x1, y, K), start)
    assert abs(ll_sp - res.log_likelihood[0]) <= 1e-6 * abs(ll_sp)
    # EM's weights are the closed-form pi_k = r_k / n: they sum to one
    assert p["gate_weight"].sum() == pytest.approx(1.0, abs=1e-12)


# ----------------------------------------------------------------------------- monotone traces
@pytest.mark.parametrize("case", ["softmax", "modified_softmax_poly", "gaussian_joint_diag",
                                  "gaussian_joint_full", "categorical"])
def test_trace_is_monotone(case, request):
    if case == "softmax":
        trace = request.getfixturevalue("reference_fit")[1].trace
    elif case == "gaussian_joint_diag":
        trace = request.getfixturevalue("gllim_case")[3].trace
    elif case == "categorical":
        trace = request.getfixturevalue("categorical_case")[0].trace
    else:
        with jax.enable_x64(True):
            res = _modified_softmax_fit() if case == "modified_softmax_poly" else _full_covariance_fit()
        assert bool(res.converged[0])
        trace = res.trace
    for tr in np.asarray(trace):
        inc = _rel_increments(tr)
        assert inc.size >= 2                        # the fit took several steps
        assert inc.min() >= -1e-9
        assert np.sum(inc) > 0                      # and increased the likelihood


def test_trace_layout(reference_fit):
    _, res = reference_fit
    for s in range(3):
        k = int(res.n_steps[s])
        assert np.all(np.isfinite(res.trace[s, :k + 1])) and np.all(np.isnan(res.trace[s, k + 1:]))
        assert res.trace[s, k] == pytest.approx(res.log_likelihood[s], rel=1e-12)


# ----------------------------------------------------------------------------- Categorical experts
def test_categorical_experts_recover_truth_region(categorical_case):
    res, ll_truth, ll_start = categorical_case
    ll = float(res.log_likelihood[0])
    assert ll >= ll_truth - 1.0
    assert ll > ll_start + 10.0
    # reference rows stay zero
    assert np.all(np.asarray(res.params["expert_intercept"])[..., -1] == 0)
    assert np.all(np.asarray(res.params["expert_coef"])[..., -1, :] == 0)
    assert np.all(np.asarray(res.params["gate_coef"])[:, -1] == 0)


def test_multinomial_newton_matches_scipy():
    """The shared Newton routine maximises a weighted soft-target multinomial logit exactly."""
    rng = np.random.default_rng(11)
    n, m, K = 400, 3, 3
    z = np.c_[np.ones(n), rng.standard_normal((n, m - 1))]
    targets = rng.dirichlet(np.ones(K), n)
    w = rng.uniform(0.1, 2.0, n)

    def f(b):
        eta = np.c_[z @ b.reshape(K - 1, m).T, np.zeros(n)]
        logp = eta - logsumexp(eta, axis=1, keepdims=True)
        grad = ((w[:, None] * (targets - np.exp(logp) * targets.sum(1, keepdims=True)))[:, :-1]).T @ z
        return np.sum(w * np.sum(targets * logp, axis=1)), grad.ravel()

    with jax.enable_x64(True):
        beta, obj, it = multinomial_newton(jnp.zeros((K - 1, m)), jnp.asarray(z),
                                                  jnp.asarray(targets), jnp.asarray(w), 50)
    ll_sp, b_sp = _scipy_max(f, np.zeros((K - 1) * m))
    assert float(obj) == pytest.approx(f(np.asarray(beta).ravel())[0], rel=1e-12)
    assert float(obj) >= ll_sp - 1e-9 * abs(ll_sp)
    np.testing.assert_allclose(np.asarray(beta).ravel(), b_sp, atol=1e-4)
    assert 2 <= int(it) < 50


# ----------------------------------------------------------------------------- vmapped starts
def test_vmapped_starts_equal_separate_calls(reference_fit, reference_data, softmax_model):
    init, res = reference_fit
    x, y = reference_data
    with jax.enable_x64(True):
        for s in range(3):
            one = em_fit(softmax_model, x, y, {k: v[s:s + 1] for k, v in init.items()}, tol=1e-10,
                         max_steps=500, return_trace=True)
            assert int(one.n_steps[0]) == int(res.n_steps[s])
            assert bool(one.converged[0]) == bool(res.converged[s])
            np.testing.assert_allclose(one.log_likelihood[0], res.log_likelihood[s], rtol=1e-12)
            for k in res.params:
                np.testing.assert_allclose(one.params[k][0], res.params[k][s], rtol=1e-6, atol=1e-8)
            np.testing.assert_allclose(one.trace[0], res.trace[s], rtol=1e-9)


# ----------------------------------------------------------------------------- model / argument checks
def _fail_if_compiled(*args, **kwargs):
    raise AssertionError("em_fit compiled before rejecting its arguments")


def test_bad_arguments_rejected_before_compiling(monkeypatch):
    monkeypatch.setattr(em_mod, "_em_jit", _fail_if_compiled)
    model, truth = bm.datasets.gaussian_gated(1)
    x = np.linspace(-1, 1, 20)[:, None]
    y = np.zeros(20)
    init = {k: np.asarray(v)[None] for k, v in truth.items()}
    with pytest.raises(ValueError, match=r"init\['gate_loc'\].*shape \(3, 1\)"):
        em_fit(model, x, y, {**init, "gate_loc": np.zeros((1, 3, 2))})
    with pytest.raises(ValueError, match=r"init\['expert_scale'\].*support"):
        em_fit(model, x, y, {**init, "expert_scale": -init["expert_scale"]})
    # malformed init: no leading axis of starts
    with pytest.raises(ValueError, match="leading axis of S starts"):
        em_fit(model, x, y, truth)
    with pytest.raises(ValueError, match="missing site"):
        em_fit(model, x, y, {k: v for k, v in init.items() if k != "gate_loc"})
    with pytest.raises(ValueError, match="max_steps"):
        em_fit(model, x, y, init, max_steps=-1)
