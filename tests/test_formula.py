"""Formula models (formulaic): designs against numpy coding by hand, fits and likelihoods against the
array model on the hand-built design matrix, new data through the stored design, specs, errors."""

import json
import warnings

import arviz as az
import numpy as np
import pandas as pd
import pytest
from scipy.special import logsumexp
from scipy.stats import norm

import bayesmoe as bm

N = 160


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(7)
    df = pd.DataFrame({"x1": rng.uniform(0.5, 4.0, N), "x2": rng.normal(size=N),
                       "region": rng.choice(["north", "south", "west"], N)})
    z = rng.random(N) < 1 / (1 + np.exp(-1.5 * df.x2.to_numpy()))
    lx = np.log(df.x1.to_numpy())
    south = (df.region == "south").to_numpy()
    df["y"] = np.where(z, 2.0 + 1.5 * lx + 1.0 * south, -1.0 - 1.0 * lx) + 0.3 * rng.normal(size=N)
    return df


def hand_design(df):
    """np.log(x1) and treatment dummies of region (first level 'north' the reference), by hand."""
    r = df["region"].to_numpy()
    return np.column_stack([np.log(df["x1"].to_numpy()), (r == "south") * 1.0, (r == "west") * 1.0])


def np_loglik(params, xg, xe, y):
    """log sum_k softmax(b + A xg)_k N(y | c_k + xe a_k, s_k^2), by hand (numpy/scipy)."""
    logits = params["gate_intercept"] + xg @ np.asarray(params["gate_coef"]).T
    logg = logits - logsumexp(logits, axis=1, keepdims=True)
    mu = params["expert_intercept"] + xe @ np.asarray(params["expert_coef"]).T
    return logsumexp(logg + norm.logpdf(y[:, None], mu, params["expert_scale"]), axis=1)


@pytest.fixture(scope="module")
def same_design(frame):
    """A formula model (one design for gate and experts), the array model, and their MLE fits."""
    fmodel = bm.MoE.from_formula("y ~ np.log(x1) + C(region)", n_experts=2, data=frame)
    amodel = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), n_experts=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bm.FitWarning)
        ffit = bm.fit_mle(fmodel, data=frame, n_starts=4, seed=3)
        afit = bm.fit_mle(amodel, hand_design(frame), frame["y"].to_numpy(), n_starts=4, seed=3)
    return fmodel, amodel, ffit, afit


def test_design_is_the_hand_coding(frame, same_design):
    fmodel = same_design[0]
    assert fmodel.design.columns == ("np.log(x1)", "C(region)[T.south]", "C(region)[T.west]")
    np.testing.assert_allclose(fmodel.design.x(frame), hand_design(frame), rtol=1e-12)
    xa, ya = fmodel.check_data(frame, frame["y"])
    np.testing.assert_allclose(xa, hand_design(frame), rtol=1e-12)
    np.testing.assert_allclose(ya, frame["y"].to_numpy())


def test_formula_fit_equals_array_fit_on_the_hand_design(frame, same_design):
    fmodel, amodel, ffit, afit = same_design
    assert ffit.log_likelihood == pytest.approx(afit.log_likelihood, rel=1e-6)
    for k, v in afit.params.items():
        np.testing.assert_allclose(ffit.params[k], v, rtol=1e-4, atol=1e-5, err_msg=k)
    y = frame["y"].to_numpy()
    ll = np.asarray(fmodel.log_likelihood(ffit.params, data=frame))
    want = np_loglik(ffit.params, hand_design(frame), hand_design(frame), y)
    np.testing.assert_allclose(ll, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ll, np.asarray(amodel.log_likelihood(ffit.params, hand_design(frame), y)),
                               rtol=1e-6)
    assert ll.sum() == pytest.approx(ffit.log_likelihood, rel=1e-5)


def test_predict_new_data_uses_the_stored_coding(frame, same_design):
    fmodel, amodel, ffit, _ = same_design
    new = frame[frame.region != "west"].iloc[:7].drop(columns="y")  # a level missing: still coded
    assert "west" not in set(new.region)
    got = fmodel.predict(ffit.params, new)
    want = amodel.predict(ffit.params, hand_design(new))
    np.testing.assert_allclose(np.asarray(got.mean), np.asarray(want.mean), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(got.gate_probs), np.asarray(want.gate_probs), rtol=1e-6)
    # the response column is not needed for predictions; only the formula's columns are
    np.testing.assert_allclose(np.asarray(fmodel.predict(ffit.params, new[["x1", "region"]]).mean),
                               np.asarray(want.mean), rtol=1e-6)


def test_unseen_level_and_missing_column_are_clear_errors(frame, same_design):
    fmodel, _, ffit, _ = same_design
    bad = frame.iloc[:3].copy()
    bad["region"] = ["north", "east", "south"]
    with pytest.raises(ValueError, match=r"column 'region' has level\(s\) \['east'\] not seen"):
        fmodel.predict(ffit.params, bad)
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['x1'\]"):
        fmodel.predict(ffit.params, frame[["x2", "region"]].rename(columns={"x2": "X1"}))
    with pytest.raises(ValueError, match="lacks the response column 'y'"):
        fmodel.log_likelihood(ffit.params, data=frame.drop(columns="y"))
    with pytest.raises(ValueError, match="either `data`"):
        bm.fit_mle(fmodel, frame, frame["y"], data=frame)
    with pytest.raises(ValueError, match="needs a formula model"):
        bm.fit_mle(bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2), data=frame)
    with pytest.raises(ValueError, match="has 2 columns but the model's design has 3"):
        fmodel.predict(ffit.params, np.zeros((4, 2)))


def test_formula_errors(frame):
    with pytest.raises(ValueError, match="no intercept"):
        bm.MoE.from_formula("y ~ x1 - 1", n_experts=2, data=frame)
    with pytest.raises(ValueError, match="name the response"):
        bm.MoE.from_formula("~ x1", n_experts=2, data=frame)
    with pytest.raises(ValueError, match="one-sided"):
        bm.MoE.from_formula("y ~ x1", gate="y ~ x2", n_experts=2, data=frame)
    with pytest.raises(ValueError, match="cannot build the experts' design"):
        bm.MoE.from_formula("y ~ x1 + nope", n_experts=2, data=frame)


def test_spec_round_trip_and_stateful_transforms(frame):
    model = bm.MoE.from_formula("y ~ poly(x2, 2) + center(x1) + C(region)", gate="~ x2", n_experts=2,
                                data=frame)
    again = bm.MoE.from_spec(json.loads(json.dumps(model.spec())))
    assert again == model and hash(again) == hash(model)
    # poly and center keep the training state: the rows of a small frame are coded as in the full one
    full = model.design.x(frame)
    np.testing.assert_allclose(again.design.x(frame.iloc[:5]), full[:5], rtol=1e-10)
    x2 = frame["x2"].to_numpy()
    np.testing.assert_allclose(full[:, 2], frame["x1"] - frame["x1"].mean(), rtol=1e-10)
    # orthogonal polynomial columns: orthogonal to the constant and to each other on the training data
    p = full[:, :2]
    np.testing.assert_allclose(p.sum(0), 0, atol=1e-9)
    assert abs(p[:, 0] @ p[:, 1]) < 1e-9
    assert np.corrcoef(p[:, 0], x2)[0, 1] == pytest.approx(1.0, abs=1e-12)


def test_transformed_response(frame):
    df = frame.assign(w=np.exp(frame["y"] / 3))
    model = bm.MoE.from_formula("np.log(w) ~ x2", n_experts=1, data=df)
    assert model.response_name == "np.log(w)"
    _, y = model.check_data(df, model.design.y(df))
    np.testing.assert_allclose(y, frame["y"] / 3, rtol=1e-10)


@pytest.fixture(scope="module")
def concomitant(frame):
    """Separate designs: experts on np.log(x1) + C(region), the gate on x2 (a concomitant model)."""
    model = bm.MoE.from_formula("y ~ np.log(x1) + C(region)", gate="~ x2", n_experts=2, data=frame)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bm.FitWarning)
        fit = bm.fit_mle(model, data=frame, n_starts=4, seed=0)
    return model, fit


def test_concomitant_design_loglik_by_hand(frame, concomitant):
    model, fit = concomitant
    assert model.design.columns == ("np.log(x1)", "C(region)[T.south]", "C(region)[T.west]", "x2")
    assert fit.params["gate_coef"].shape == (2, 1) and fit.params["expert_coef"].shape == (2, 3)
    # gate: 1 free intercept + 1 free slope; experts: 2 intercepts + 2 x 3 slopes + 2 scales
    assert model.n_params(4) == 12 and fit.n_params == 12
    y = frame["y"].to_numpy()
    xg = frame[["x2"]].to_numpy()
    want = np_loglik(fit.params, xg, hand_design(frame), y)
    np.testing.assert_allclose(np.asarray(model.log_likelihood(fit.params, data=frame)), want,
                               rtol=1e-4, atol=1e-5)
    assert fit.log_likelihood == pytest.approx(want.sum(), rel=1e-5)
    # the simulated truth: the gate rises with x2 (slope 1.5) and one expert has slope 1.5 on log(x1)
    k = int(np.argmax(fit.params["expert_coef"][:, 0]))
    assert fit.params["expert_coef"][k, 0] == pytest.approx(1.5, abs=0.3)
    assert abs(fit.params["gate_coef"][0, 0]) == pytest.approx(1.5, abs=0.9)
    # EM on the same data: the same maximum
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bm.FitWarning)
        em = bm.fit_mle(model, data=frame, n_starts=4, seed=0, method="em")
    assert em.log_likelihood == pytest.approx(fit.log_likelihood, abs=1e-3)


def test_concomitant_sample_dims_and_loo(frame, concomitant):
    model, fit = concomitant
    dt = bm.sample(model, data=frame, num_chains=1, num_warmup=100, num_samples=100, seed=1,
                   progress_bar=False, quiet=True, init=fit.params)
    post = dt.posterior
    assert list(post["gate_coef_free"].coords["gate_feature"].values) == ["x2"]
    assert list(post["expert_coef"].coords["expert_feature"].values) == list(model.design.expert.columns)
    assert list(dt.constant_data["x"].coords["feature"].values) == list(model.design.columns)
    assert dt.attrs["bayesmoe_response"] == "y"
    assert bm.MoE.from_spec(json.loads(dt.attrs["bayesmoe_model"])) == model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pareto k of 100 draws
        loo = az.loo(dt)
    assert np.isfinite(loo.elpd) and abs(loo.elpd - fit.log_likelihood) < 25


def test_new_columns_checked_against_the_training_names():
    from bayesmoe._validation import check_columns

    new = pd.DataFrame({"b": [1.0], "a": [2.0]})
    assert list(check_columns(new, ["a", "b"]).columns) == ["a", "b"]       # reordered by name
    with pytest.raises(ValueError, match=r"fitted on \['a', 'c'\]: missing \['c'\]; unknown \['b'\]"):
        check_columns(new, ["a", "c"])
    arr = np.zeros((2, 2))
    assert check_columns(arr, ["a", "b"]) is arr


def test_plot_axes_use_column_names(frame):
    import matplotlib.pyplot as plt

    model = bm.MoE.from_formula("y ~ np.log(x1)", n_experts=2, data=frame)
    params = model.random_params(np.random.default_rng(0), 1)
    ax = bm.plots.plot_fit(model, data=frame, params=params, n_grid=20)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("np.log(x1)", "y")
    ax2 = bm.plots.plot_gates(model, data=frame, params=params, n_grid=20)
    assert ax2.get_xlabel() == "np.log(x1)"
    amodel = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), n_experts=2)
    ax3 = bm.plots.plot_fit(amodel, frame[["x2"]], frame["y"].rename("spend"), params=params, n_grid=20)
    assert (ax3.get_xlabel(), ax3.get_ylabel()) == ("x2", "spend")
    plt.close("all")
