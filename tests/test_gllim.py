"""bm.gllim: inverse <-> forward GLLiM maps (round trips, scipy densities) and the forward conditional
of a joint GLLiM fitted by EM."""

import warnings

import jax
import numpy as np
import pytest
from scipy import special, stats

import bayesmoe as bm
from bayesmoe.gllim import GLLiM


def _spd(rng, k, m):
    a = rng.normal(size=(k, m, m))
    return a @ np.swapaxes(a, -1, -2) + m * np.eye(m)


def _random_inverse(rng, K=3, L=2, D=4):
    w = rng.dirichlet(np.ones(K))
    return GLLiM(w, rng.normal(size=(K, L)), _spd(rng, K, L), rng.normal(size=(K, D, L)),
                 rng.normal(size=(K, D)), _spd(rng, K, D))


def _log_joint(theta, u, v):
    """log p(u, v) = log sum_k pi_k N(u | c_k, Gamma_k) N(v | A_k u + b_k, Sigma_k), by scipy."""
    terms = []
    for k in range(len(theta.weight)):
        mu = u @ np.asarray(theta.coef[k]).T + np.asarray(theta.intercept[k])
        lv = np.array([stats.multivariate_normal(m, np.asarray(theta.noise_cov[k])).logpdf(vi)
                       for m, vi in zip(mu, v, strict=True)])
        lu = stats.multivariate_normal(np.asarray(theta.loc[k]), np.asarray(theta.cov[k])).logpdf(u)
        terms.append(np.log(theta.weight[k]) + lu + lv)
    return special.logsumexp(np.stack(terms, -1), axis=-1)


def test_round_trip_x64():
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        inv = _random_inverse(rng)
        fwd = bm.gllim.inverse_to_forward(inv)
        back = bm.gllim.forward_to_inverse(fwd)
        for name, a, b in zip(GLLiM._fields, inv, back, strict=True):
            np.testing.assert_allclose(np.asarray(b), a, atol=1e-10, rtol=0, err_msg=name)
        assert fwd.coef.shape == (3, 2, 4) and fwd.noise_cov.shape == (3, 2, 2)


def test_forward_is_the_same_joint_density():
    """Both parametrisations give the same p(x, y) (scipy densities at random points)."""
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        inv = _random_inverse(rng, K=2, L=2, D=3)
        fwd = bm.gllim.inverse_to_forward(inv)
    y = rng.normal(size=(20, 2))
    x = rng.normal(size=(20, 3))
    np.testing.assert_allclose(_log_joint(fwd, x, y), _log_joint(inv, y, x), rtol=1e-10)
    # the forward x-marginal mean and covariance, by hand: c* = A c + b, Gamma* = Sigma + A Gamma A^T
    k = 1
    np.testing.assert_allclose(fwd.loc[k], inv.coef[k] @ inv.loc[k] + inv.intercept[k], rtol=1e-12)
    np.testing.assert_allclose(fwd.cov[k], inv.noise_cov[k] + inv.coef[k] @ inv.cov[k] @ inv.coef[k].T,
                               rtol=1e-12)


def test_em_fit_forward_conditional_matches_direct():
    """Fit the joint GLLiM (Gaussian gate, full covariance, joint=True) by EM; the model's conditional
    log-likelihood at the estimate equals log p(x, y) - log p(x) computed by scipy from the inverse
    parameters obtained with forward_to_inverse."""
    rng = np.random.default_rng(2)
    n = 150
    z = rng.integers(0, 2, n)
    locs = np.array([[-1.0, 0.5], [1.5, -0.5]])
    x = locs[z] + rng.normal(size=(n, 2)) * 0.6
    y = np.array([1.0, -2.0])[z] + np.sum(x * np.array([[2.0, -1.0], [0.5, 1.0]])[z], 1) \
        + 0.3 * rng.normal(size=n)
    gate = bm.gates.Gaussian(covariance="full")
    joint = bm.MoE(gate, bm.experts.Gaussian(), 2, joint=True)
    with jax.enable_x64(True), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = bm.fit_mle(joint, x, y, method="em", n_starts=1, seed=0)
        params = joint.complete_params(fit.params)
        fwd = bm.gllim.from_moe_params(params)
        inv = bm.gllim.forward_to_inverse(fwd)
        cond = np.asarray(bm.MoE(gate, bm.experts.Gaussian(), 2).log_likelihood(fit.params, x, y))
        both = np.asarray(joint.log_likelihood(fit.params, x, y))
        back = bm.gllim.to_moe_params(bm.gllim.inverse_to_forward(inv))
    log_xy = _log_joint(inv, y[:, None], x)
    log_x = special.logsumexp(np.stack([np.log(fwd.weight[k]) + stats.multivariate_normal(
        fwd.loc[k], fwd.cov[k]).logpdf(x) for k in range(2)], -1), axis=-1)
    np.testing.assert_allclose(cond, log_xy - log_x, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(both, log_xy, rtol=1e-8, atol=1e-8)
    assert fit.log_likelihood == pytest.approx(both.sum(), rel=1e-8)
    # and back to MoE sites
    np.testing.assert_allclose(back["expert_coef"], params["expert_coef"], atol=1e-8)
    np.testing.assert_allclose(back["gate_cov"], params["gate_cov"], atol=1e-8)


def test_bad_input():
    rng = np.random.default_rng(3)
    inv = _random_inverse(rng)
    with pytest.raises(ValueError, match="theta"):
        bm.gllim.inverse_to_forward({"weight": 1})
    with pytest.raises(ValueError, match=r"`theta.intercept` must have shape"):
        bm.gllim.inverse_to_forward(inv._replace(intercept=np.zeros((3, 5))))
    with pytest.raises(ValueError, match=r"`theta.cov`"):
        bm.gllim.inverse_to_forward(inv._replace(cov=np.full((3, 2, 2), np.nan)))
    with pytest.raises(ValueError, match="one-dimensional response"):
        bm.gllim.to_moe_params(inv)
