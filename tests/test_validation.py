"""Every bad input raises ValueError naming the argument, before any compilation."""

import jax
import numpy as np
import pandas as pd
import pytest

import bayesmoe as bm


@pytest.fixture
def reg():
    model, params = bm.datasets.softmax_gated_gaussian()
    x = bm.datasets.softmax_gated_gaussian_x(20)
    y = np.asarray(model.simulate(jax.random.key(0), params, x).y)
    return model, params, x, y


@pytest.fixture
def clf():
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Categorical(3), n_experts=2)
    rng = np.random.default_rng(0)
    params = {"gate_intercept": np.array([0.5, 0.0]), "gate_coef": np.array([[1.0], [0.0]]),
              "expert_intercept": rng.normal(size=(2, 3)), "expert_coef": rng.normal(size=(2, 3, 1))}
    return model, params, rng.normal(size=(20, 1)), rng.integers(0, 3, 20)


def test_nan_in_x(reg):
    model, params, x, y = reg
    x = x.copy()
    x[3, 0] = np.nan
    with pytest.raises(ValueError, match="`x`.*NaN"):
        model.log_likelihood(params, x, y)


def test_inf_in_y(reg):
    model, params, x, y = reg
    y = y.copy()
    y[0] = np.inf
    with pytest.raises(ValueError, match="`y`.*infinite"):
        model.log_likelihood(params, x, y)


def test_length_mismatch(reg):
    model, params, x, y = reg
    with pytest.raises(ValueError, match="`y` has length 19"):
        model.log_likelihood(params, x, y[:-1])


def test_x_with_three_dims(reg):
    model, params, x, y = reg
    with pytest.raises(ValueError, match="`x` must have 1 or 2 dims"):
        model.log_likelihood(params, x[:, :, None], y)


@pytest.mark.parametrize("k", [0, -1, 2.5, "3", True])
def test_bad_n_experts(k):
    with pytest.raises(ValueError, match="`n_experts`"):
        bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), n_experts=k)


def test_labels_out_of_range(clf):
    model, params, x, y = clf
    y = y.copy()
    y[0] = 3
    with pytest.raises(ValueError, match=r"`y` has class labels outside 0\.\.2"):
        model.log_likelihood(params, x, y)
    y[0] = -1
    with pytest.raises(ValueError, match="`y` has class labels outside"):
        model.log_likelihood(params, x, y)


def test_non_integer_labels(clf):
    model, params, x, y = clf
    with pytest.raises(ValueError, match="`y` must hold integer class labels"):
        model.log_likelihood(params, x, y + 0.5)
    with pytest.raises(ValueError, match="`y` must hold integer class labels"):
        model.log_likelihood(params, x, np.array(["a"] * 20))


def test_unknown_transform():
    with pytest.raises(ValueError, match="`transform`"):
        bm.gates.ModifiedSoftmax("relu")


@pytest.mark.parametrize("degree", [0, -2, 1.5])
def test_bad_degree(degree):
    with pytest.raises(ValueError, match="`degree`"):
        bm.experts.Gaussian(degree=degree)


def test_bad_n_classes():
    with pytest.raises(ValueError, match="`n_classes`"):
        bm.experts.Categorical(n_classes=1)


def test_bad_covariance_and_joint():
    with pytest.raises(ValueError, match="`covariance`"):
        bm.gates.Gaussian("spherical")
    with pytest.raises(ValueError, match="`joint=True`"):
        bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2, joint=True)


def test_bad_priors():
    with pytest.raises(ValueError, match="`priors` has unknown site"):
        bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2, priors={"sigma": None})
    with pytest.raises(ValueError, match="`priors"):
        bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2, priors=[1])


def test_missing_params(reg):
    model, params, x, y = reg
    bad = dict(params)
    del bad["expert_scale"]
    with pytest.raises(ValueError, match="`params` is missing site"):
        model.log_likelihood(bad, x, y)
    bad = dict(params, gate_coef=np.zeros((3, 1)))
    with pytest.raises(ValueError, match="gate_coef"):
        model.predict(bad, x)


def test_dataframe_and_series_accepted(reg):
    model, params, x, y = reg
    df = pd.DataFrame({"dose": x[:, 0]})
    ll_df = model.log_likelihood(params, df, pd.Series(y, name="response"))
    np.testing.assert_allclose(ll_df, model.log_likelihood(params, x, y))
    from bayesmoe._validation import column_names
    assert column_names(df) == ["dose"]


def test_validation_runs_before_compilation(reg, monkeypatch):
    """Bad data is rejected without tracing any JAX function."""
    model, params, x, y = reg
    calls = []
    monkeypatch.setattr(type(model.gate), "log_weights", lambda *a: calls.append(1))  # frozen value
    with pytest.raises(ValueError):
        model.log_likelihood(params, x, y[:5])
    assert calls == []
