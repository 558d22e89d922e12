"""model.log_likelihood against independent numpy/scipy computations, for every gate x expert."""

import itertools

import jax
import numpy as np
import pytest
from numpyro.infer.util import log_density
from scipy import integrate, special, stats

import bayesmoe as bm
from tests import reference as ref
from tests.params_factory import EXPERTS, GATES, random_params, random_y, reference_kinds

COMBOS = list(itertools.product(GATES, EXPERTS))
JOINT = [(g, e, False) for g, e in COMBOS] + [
    (g, e, True) for g, e in COMBOS if g.startswith("gaussian")]


@pytest.mark.parametrize("gate_name,expert_name,joint", JOINT)
def test_log_likelihood_matches_scipy_float32(gate_name, expert_name, joint, rng):
    gate, expert = GATES[gate_name](), EXPERTS[expert_name]()
    K, d, n = 3, 2, 50
    model = bm.MoE(gate, expert, n_experts=K, joint=joint)
    params = random_params(rng, gate, expert, K, d)
    x = rng.normal(size=(n, d))
    y = random_y(rng, expert, n)
    got = np.asarray(model.log_likelihood(params, x, y))
    gk, tr, ek = reference_kinds(gate, expert)
    want = ref.moe_log_lik(gk, ek, params, x, y, degree=expert.degree, transform=tr, joint=joint)
    assert got.shape == (n,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gate_name,expert_name", COMBOS)
def test_log_likelihood_matches_scipy_x64(gate_name, expert_name, rng):
    gate, expert = GATES[gate_name](), EXPERTS[expert_name]()
    K, d, n = 4, 2, 40
    model = bm.MoE(gate, expert, n_experts=K)
    params = random_params(rng, gate, expert, K, d)
    x = rng.normal(size=(n, d))
    y = random_y(rng, expert, n)
    with jax.enable_x64(True):
        got = np.asarray(model.log_likelihood(params, x, y))
        assert got.dtype == np.float64
    gk, tr, ek = reference_kinds(gate, expert)
    want = ref.moe_log_lik(gk, ek, params, x, y, degree=expert.degree, transform=tr)
    np.testing.assert_allclose(got, want, rtol=1e-10)


@pytest.mark.parametrize("expert_name", list(EXPERTS))
@pytest.mark.parametrize("gate_name", ["softmax", "gaussian_diag"])
def test_single_expert_is_expert_density(gate_name, expert_name, rng):
    gate, expert = GATES[gate_name](), EXPERTS[expert_name]()
    model = bm.MoE(gate, expert, n_experts=1)
    params = random_params(rng, gate, expert, 1, 2)
    x, y = rng.normal(size=(30, 2)), random_y(rng, expert, 30)
    _, _, ek = reference_kinds(gate, expert)
    want = ref.expert_log_probs(ek, params, x, y, degree=expert.degree)[:, 0]
    np.testing.assert_allclose(model.log_likelihood(params, x, y), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gate_name", ["softmax", "modified_tanh"])
def test_softmax_translation_invariance(gate_name, rng):
    gate = GATES[gate_name]()
    K, d = 4, 3
    params = random_params(rng, gate, bm.experts.Gaussian(), K, d)
    x = rng.normal(size=(25, d)) * 3
    base = np.asarray(gate.log_weights(params, x))
    t0, t1 = rng.normal(), rng.normal(size=d)
    shifted = dict(params, gate_intercept=params["gate_intercept"] + t0,
                   gate_coef=params["gate_coef"] + t1)
    np.testing.assert_allclose(gate.log_weights(shifted, x), base, rtol=1e-5, atol=1e-5)
    # normalised: every row log-sums to 0
    np.testing.assert_allclose(special.logsumexp(base, axis=1), 0.0, atol=1e-5)


def test_gaussian_gate_equal_covariances_is_linear_softmax(rng):
    """Equal covariances Sigma: log pi_k N(x|c_k, Sigma) = const(x) + w_k.x + b_k with
    w_k = Sigma^-1 c_k and b_k = log pi_k - c_k' Sigma^-1 c_k / 2 (closed form)."""
    K, d = 3, 2
    a = rng.normal(size=(d, d))
    sigma = a @ a.T + np.eye(d)
    loc = rng.normal(size=(K, d))
    pi = rng.dirichlet(np.ones(K))
    gp = {"gate_weight": pi, "gate_loc": loc, "gate_cov": np.stack([sigma] * K)}
    prec = np.linalg.inv(sigma)
    w = loc @ prec
    b = np.log(pi) - 0.5 * np.einsum("ki,ij,kj->k", loc, prec, loc)
    sp = {"gate_intercept": b - b[-1], "gate_coef": w - w[-1]}  # reference gauge
    x = rng.normal(size=(40, d)) * 2
    np.testing.assert_allclose(bm.gates.Gaussian("full").log_weights(gp, x),
                               bm.gates.Softmax().log_weights(sp, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("gate_name", list(GATES))
@pytest.mark.parametrize("degree", [1, 2])
def test_gaussian_mixture_density_integrates_to_one(gate_name, degree, rng):
    gate, expert = GATES[gate_name](), bm.experts.Gaussian(degree=degree)
    model = bm.MoE(gate, expert, n_experts=3)
    params = random_params(rng, gate, expert, 3, 2)
    x0 = rng.normal(size=(1, 2))
    pred = model.predict(params, x0)
    lo = float(np.min(pred.expert_mean)) - 12
    hi = float(np.max(pred.expert_mean)) + 12
    grid = np.linspace(lo, hi, 20001)
    with jax.enable_x64(True):
        ll = np.asarray(model.log_likelihood(params, np.repeat(x0, grid.size, 0), grid))
    total = integrate.simpson(np.exp(ll), x=grid)
    assert abs(total - 1.0) < 1e-6


@pytest.mark.parametrize("gate_name,expert_name", COMBOS)
def test_log_density_is_log_prior_plus_log_likelihood(gate_name, expert_name, rng):
    gate, expert = GATES[gate_name](), EXPERTS[expert_name]()
    K, d, n = 3, 2, 30
    x = rng.normal(size=(n, d))
    y = random_y(rng, expert, n)
    prior = {}
    if isinstance(expert, bm.experts.Gaussian):
        prior["expert_scale"] = bm.priors.dist.Gamma(2.0, 1.5)
    model = bm.MoE(gate, expert, n_experts=K, priors=prior or None)
    params = random_params(rng, gate, expert, K, d)
    free = model.free_params(params)
    got = float(log_density(model, (x, y), {}, free)[0])
    # independent log prior, site by site, from the documented default rules
    scale = model.data_scale(x, y)
    lp = _log_prior(model, free, scale)
    gk, tr, ek = reference_kinds(gate, expert)
    ll = ref.moe_log_lik(gk, ek, params, x, y, degree=expert.degree, transform=tr).sum()
    np.testing.assert_allclose(got, lp + ll, rtol=2e-5)


def _log_prior(model, free, scale):
    gs, es = scale.gate, scale.expert
    g_mean, g_sd = np.asarray(gs.mean), np.asarray(gs.sd)
    e_mean, e_sd = np.asarray(es.mean), np.asarray(es.sd)
    y_mean, y_sd = float(es.y_mean), float(es.y_sd)
    g_infl = np.sqrt(1 + np.sum((g_mean / g_sd) ** 2))
    e_infl = np.sqrt(1 + np.sum((e_mean / e_sd) ** 2))
    lp = 0.0
    if "gate_intercept_free" in free:
        lp += stats.norm(0, 5 * g_infl).logpdf(free["gate_intercept_free"]).sum()
        lp += stats.norm(0, 5 / g_sd).logpdf(free["gate_coef_free"]).sum()
    if "gate_weight" in free:
        lp += stats.dirichlet(np.ones(model.n_experts)).logpdf(np.asarray(free["gate_weight"]))
    if "gate_loc" in free:
        lp += stats.norm(g_mean, 2 * g_sd).logpdf(free["gate_loc"]).sum()
        lp += stats.lognorm(s=1.5, scale=g_sd / 2).logpdf(free["gate_scale"]).sum()
    if "gate_corr_chol" in free:
        lp += sum(_lkj_chol_logpdf(np.asarray(L), 2.0) for L in free["gate_corr_chol"])
    family = type(model.expert).__name__
    if family in ("Gaussian", "StudentT"):
        lp += stats.norm(y_mean, 2.5 * y_sd * e_infl).logpdf(free["expert_intercept"]).sum()
        lp += stats.norm(0, 2.5 * y_sd / e_sd).logpdf(free["expert_coef"]).sum()
        if family == "Gaussian":  # the test's own prior
            lp += stats.gamma(2.0, scale=1 / 1.5).logpdf(free["expert_scale"]).sum()
        else:  # the defaults: LogNormal(log(sd(y) / 2), 1.5) scale, Gamma(2, rate 0.1) df
            lp += stats.lognorm(s=1.5, scale=y_sd / 2).logpdf(free["expert_scale"]).sum()
            lp += stats.gamma(2.0, scale=1 / 0.1).logpdf(free["expert_df"]).sum()
    elif family == "Poisson":
        lp += stats.norm(np.log(max(y_mean, 1e-3)), 2.5 * e_infl).logpdf(free["expert_intercept"]).sum()
        lp += stats.norm(0, 2.5 / e_sd).logpdf(free["expert_coef"]).sum()
    else:
        lp += stats.norm(0, 2.5 * e_infl).logpdf(free["expert_intercept_free"]).sum()
        lp += stats.norm(0, 2.5 / e_sd).logpdf(free["expert_coef_free"]).sum()
    return lp


def _lkj_chol_logpdf(L, eta):
    """LKJ density of the Cholesky factor (Lewandowski et al. 2009), normalised, d = 2."""
    d = L.shape[0]
    assert d == 2
    # for d = 2 the correlation r = L[1, 0] has density ∝ (1 - r^2)^(eta - 1) on (-1, 1): a
    # Beta(eta, eta) on (r + 1) / 2; the Cholesky map r -> L has Jacobian dL[1,0]/dr = 1.
    r = L[1, 0]
    return stats.beta(eta, eta).logpdf((r + 1) / 2) - np.log(2)


def test_full_covariance_gate_with_one_input(rng):
    """d = 1: the correlation factor is the constant 1, so only the scales are sampled."""
    model = bm.MoE(bm.gates.Gaussian("full"), bm.experts.Gaussian(), n_experts=2)
    params = {"gate_weight": np.array([0.4, 0.6]), "gate_loc": np.array([[-1.0], [1.0]]),
              "gate_cov": np.array([[[0.5]], [[2.0]]]), "expert_intercept": np.array([0.0, 1.0]),
              "expert_coef": np.array([[1.0], [-1.0]]), "expert_scale": np.array([0.5, 1.0])}
    x, y = rng.normal(size=(20, 1)), rng.normal(size=20)
    free = model.free_params(params)
    assert "gate_corr_chol" not in free
    lp = float(log_density(model, (x, y), {}, free)[0])
    assert np.isfinite(lp)
    want = ref.moe_log_lik("gaussian", "gaussian", params, x, y)
    np.testing.assert_allclose(model.log_likelihood(params, x, y), want, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown site"):
        bm.MoE(bm.gates.Gaussian("diag"), bm.experts.Gaussian(), 2,
               priors={"gate_corr_chol": bm.priors.dist.LKJCholesky(2, 1.0)})


def test_free_params_of_stacked_draws_match_one_by_one(rng):
    """free_params keeps leading batch axes (stacked posterior draws) and re-gauges each draw."""
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Categorical(3), n_experts=3)
    draws = [random_params(rng, model.gate, model.expert, 3, 2) for _ in range(4)]
    for p in draws:  # leave the reference gauge, so the re-gauging has work to do
        p["gate_intercept"] = p["gate_intercept"] + rng.normal()
        p["expert_intercept"] = p["expert_intercept"] + rng.normal(size=(3, 1))
    stacked = {k: np.stack([p[k] for p in draws]) for k in draws[0]}
    got = model.free_params(stacked)
    for i, p in enumerate(draws):
        one = model.free_params(p)
        for k in one:
            np.testing.assert_allclose(np.asarray(got[k])[i], one[k], rtol=1e-6, atol=1e-6)
    x, y = rng.normal(size=(10, 2)), rng.integers(0, 3, 10)
    p0 = draws[0]
    f0 = model.free_params(p0)
    back = dict(p0, gate_intercept=np.append(f0["gate_intercept_free"], 0.0))
    np.testing.assert_allclose(model.log_likelihood(back, x, y), model.log_likelihood(p0, x, y), rtol=1e-5)


@pytest.mark.parametrize("df", [0.3, 2.0, 9.0, 50.0, 1e4, 1e7])
def test_student_t_log_density_keeps_its_digits_for_large_df(df):
    """float32 Student-t experts against scipy in float64, for every df: NumPyro's formula subtracts two
    gammaln values of order df log df (error ~ 8 at df = 1e7); the package's does not."""
    expert = bm.experts.StudentT()
    y = np.linspace(-30.0, 30.0, 41)
    params = {"expert_intercept": np.array([0.5]), "expert_coef": np.array([[0.0]]),
              "expert_scale": np.array([3.0]), "expert_df": np.array([df])}
    got = np.asarray(expert.log_prob(params, np.zeros((41, 1), np.float32), y.astype(np.float32)))[:, 0]
    want = stats.t(df, 0.5, 3.0).logpdf(y)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-5)


@pytest.mark.parametrize("rate", [0.3, 4.0, 60.0, 900.0, 5e3, 1e5, 1e8, 1e12])
def test_poisson_cdf_is_accurate_for_large_rates(rate):
    """The Poisson experts' CDF (prediction intervals) against scipy, for rates where XLA's float32
    gammaincc is wrong (1e5 and up) or slow (near 1e12)."""
    import jax.numpy as jnp

    expert = bm.experts.Poisson()
    params = {"expert_intercept": np.array([np.log(rate)]), "expert_coef": np.array([[0.0]])}
    k = np.unique(np.floor(rate + np.linspace(-4, 4, 17) * np.sqrt(rate)).clip(-1).astype(np.float32))
    comp = expert.component(params, np.zeros((len(k), 1), np.float32))
    got = np.asarray(comp.cdf(jnp.asarray(k)[:, None]))[:, 0]
    rate32 = float(np.exp(np.float32(np.log(rate))))  # the rate float32 can hold
    # float32 holds k / rate to 6e-8: z = 3 sqrt(rate) ((rate/k)^(1/3) - 1) is known to ~ sqrt(rate) 6e-8
    tol = 2e-4 + 3 * np.sqrt(rate) * 6e-8
    np.testing.assert_allclose(got, stats.poisson(rate32).cdf(k.astype(np.float64)), atol=tol)
    assert np.all(np.diff(got) >= -tol) and np.all((got >= 0) & (got <= 1))
