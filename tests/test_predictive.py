"""Posterior prediction at new inputs (bm.predict / bm.posterior_predictive)."""

import arviz as az
import numpy as np
import pandas as pd
import pytest
from arviz_stats.base import array_stats

import bayesmoe as bm
from bayesmoe.predictive import hdi
from tests._posterior import readme_posterior

X_NEW = np.array([[-1.7], [-0.4], [0.0], [0.9], [1.8]])


@pytest.fixture(scope="module")
def pred():
    model, _, _, dt = readme_posterior()
    y_new = np.array([-0.2, 0.1, 0.3, 2.5, 4.4])
    return bm.predict(dt, X_NEW, y_new=y_new, seed=5, hdi_prob=0.9)


def test_per_draw_predictions_match_the_model_by_hand(pred):
    _, _, _, dt = readme_posterior()
    post = dt.posterior
    b0 = post["gate_intercept_free"].values[..., 0]                 # (chain, draw); reference row is 0
    b1 = post["gate_coef_free"].values[..., 0, 0]
    g1 = 1.0 / (1.0 + np.exp(-(b0[..., None] + b1[..., None] * X_NEW[:, 0])))   # (chain, draw, obs)
    slope = post["expert_coef"].values[..., None, :, 0]
    mu = post["expert_intercept"].values[..., None, :] + slope * X_NEW
    want_mean = g1 * mu[..., 0] + (1 - g1) * mu[..., 1]
    np.testing.assert_allclose(pred.predictions["mean"].values, want_mean, rtol=1e-4, atol=1e-4)
    got = pred.predictions["gate_probs"].values[..., 0]
    np.testing.assert_allclose(got, g1, rtol=1e-4, atol=1e-5)


def test_draws_follow_the_predictive_and_summaries(pred):
    y = pred.posterior_predictive["y"].values.reshape(-1, len(X_NEW))
    S = y.shape[0]
    summ = pred.predictions_summary
    np.testing.assert_allclose(summ["y_mean"].values, y.mean(0), rtol=1e-5, atol=1e-5)
    # the draws' mean estimates the posterior mean of the mixture mean (Monte-Carlo error)
    gap = np.abs(summ["y_mean"].values - summ["mean_mean"].values)
    assert np.all(gap < 4.5 * y.std(0) / np.sqrt(S))
    np.testing.assert_allclose(summ["y_hdi"].values, array_stats.hdi(y, 0.9, axis=0), rtol=1e-5, atol=1e-5)
    assert summ.attrs["hdi_prob"] == 0.9
    np.testing.assert_array_equal(pred.observed_data["y"].values, [-0.2, 0.1, 0.3, 2.5, 4.4])


def test_same_seed_same_draws_and_plot(pred):
    _, _, _, dt = readme_posterior()
    y_new = pred.observed_data["y"].values
    again = bm.posterior_predictive(dt, X_NEW, y_new=y_new, seed=5, hdi_prob=0.9)
    np.testing.assert_array_equal(again.posterior_predictive["y"].values,
                                  pred.posterior_predictive["y"].values)
    other = bm.predict(dt, X_NEW, seed=6)
    assert not np.array_equal(other.posterior_predictive["y"].values, pred.posterior_predictive["y"].values)
    pc = az.plot_ppc_dist(pred, num_samples=20)
    assert pc is not None
    import matplotlib.pyplot as plt  # noqa: PLC0415

    plt.close("all")


def test_predict_checks_its_inputs():
    _, _, _, dt = readme_posterior()
    with pytest.raises(ValueError, match="x_new.*2 column"):
        bm.predict(dt, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="columns"):
        bm.predict(dt, pd.DataFrame({"dose": [0.0, 1.0]}))
    with pytest.raises(ValueError, match="hdi_prob"):
        bm.predict(dt, X_NEW, hdi_prob=1.0)


def test_hdi_of_a_known_sample():
    draws = np.concatenate([np.arange(10.0), [100.0]])[:, None]
    np.testing.assert_array_equal(hdi(draws, 0.9), [[0.0, 9.0]])


def test_set_host_device_count_after_start_raises():
    import jax  # noqa: PLC0415

    n = jax.local_device_count()
    bm.set_host_device_count(n)  # the count JAX already has: nothing to do
    with pytest.raises(RuntimeError, match="after JAX started"):
        bm.set_host_device_count(n + 1)
