"""MixtureOfExperts against scipy for several component families; sampling and moments."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from scipy import special, stats

import bayesmoe as bm


def _gate(rng, n, K):
    return rng.normal(size=(n, K)) * 2


def _check_lp(mix, comps_logpdf, logits, y):
    lg = logits - special.logsumexp(logits, axis=1, keepdims=True)
    want = special.logsumexp(lg + comps_logpdf, axis=1)
    np.testing.assert_allclose(mix.log_prob(y), want, rtol=1e-5, atol=1e-5)


def test_normal_components(rng):
    n, K = 40, 3
    logits, loc, sd = _gate(rng, n, K), rng.normal(size=(n, K)), rng.uniform(0.5, 2, K)
    mix = bm.MixtureOfExperts(logits, dist.Normal(loc, sd))
    y = rng.normal(size=n)
    _check_lp(mix, stats.norm(loc, sd).logpdf(y[:, None]), logits, y)
    assert mix.batch_shape == (n,) and mix.event_shape == ()


def test_student_t_components(rng):
    n, K = 30, 4
    logits, loc, sd = _gate(rng, n, K), rng.normal(size=(n, K)), rng.uniform(0.5, 2, K)
    df = rng.uniform(2, 8, K)
    mix = bm.MixtureOfExperts(logits, dist.StudentT(df, loc, sd))
    y = rng.normal(size=n) * 3
    _check_lp(mix, stats.t(df, loc, sd).logpdf(y[:, None]), logits, y)


def test_poisson_components(rng):
    n, K = 30, 2
    logits, rate = _gate(rng, n, K), rng.uniform(0.5, 10, (n, K))
    mix = bm.MixtureOfExperts(logits, dist.Poisson(rate))
    y = rng.poisson(4, n)
    _check_lp(mix, stats.poisson(rate).logpmf(y[:, None]), logits, y)
    g = special.softmax(logits, axis=1)
    np.testing.assert_allclose(mix.mean, (g * rate).sum(1), rtol=1e-5)
    # mixture variance: E[var] + var[mean]
    want_var = (g * rate).sum(1) + (g * rate**2).sum(1) - (g * rate).sum(1) ** 2
    np.testing.assert_allclose(mix.variance, want_var, rtol=1e-4)


def test_categorical_components(rng):
    n, K, C = 25, 3, 4
    logits, cl = _gate(rng, n, K), rng.normal(size=(n, K, C))
    mix = bm.MixtureOfExperts(logits, dist.Categorical(logits=cl))
    y = rng.integers(0, C, n)
    logp = cl - special.logsumexp(cl, axis=2, keepdims=True)
    _check_lp(mix, logp[np.arange(n), :, y], logits, y)


def test_sampling_frequencies_and_index(rng):
    K = 3
    logits = np.array([[0.5, -1.0, 0.2]])
    loc = np.array([[-10.0, 0.0, 10.0]])
    mix = bm.MixtureOfExperts(logits, dist.Normal(loc, 0.1))
    y, z = mix.sample_with_index(jax.random.key(0), (20000,))
    assert y.shape == (20000, 1) and z.shape == (20000, 1)
    # the index is the component the value came from
    np.testing.assert_array_equal(np.asarray(z[:, 0]), np.round((np.asarray(y[:, 0]) + 10) / 10))
    freq = np.bincount(np.asarray(z[:, 0]), minlength=K) / 20000
    p = special.softmax(logits[0])
    chi2 = 20000 * np.sum((freq - p) ** 2 / p)
    assert chi2 < stats.chi2(K - 1).ppf(0.999)
    # same key, same draws
    y2, _ = mix.sample_with_index(jax.random.key(0), (20000,))
    np.testing.assert_array_equal(y, y2)


def test_responsibilities_are_bayes_rule(rng):
    n, K = 20, 3
    logits, loc = _gate(rng, n, K), rng.normal(size=(n, K))
    mix = bm.MixtureOfExperts(logits, dist.Normal(loc, 1.0))
    y = rng.normal(size=n)
    joint = special.softmax(logits, 1) * stats.norm(loc, 1).pdf(y[:, None])
    np.testing.assert_allclose(mix.responsibilities(y), joint / joint.sum(1, keepdims=True),
                               rtol=1e-4, atol=1e-6)


def test_mean_and_variance_normal(rng):
    n, K = 10, 3
    logits, loc, sd = _gate(rng, n, K), rng.normal(size=(n, K)), rng.uniform(0.5, 2, K)
    mix = bm.MixtureOfExperts(logits, dist.Normal(loc, sd))
    g = special.softmax(logits, 1)
    m = (g * loc).sum(1)
    np.testing.assert_allclose(mix.mean, m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mix.variance, (g * (sd**2 + loc**2)).sum(1) - m**2, rtol=1e-4)


def test_bad_component_shape_is_rejected():
    with pytest.raises(ValueError, match="component_distribution"):
        bm.MixtureOfExperts(jnp.zeros((5, 3)), dist.Normal(jnp.zeros((5, 2)), 1.0))
    with pytest.raises(ValueError, match="component_distribution"):
        bm.MixtureOfExperts(jnp.zeros((5, 3)), "normal")
