"""Class labels of any kind (strings, pandas Categorical, R-style 1..C) for Categorical experts: codes
0..C-1 in the math, the original labels as ``class`` coords and in predictions."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.special import log_softmax, logsumexp

import bayesmoe as bm

LEVELS = ["low", "mid", "high"]  # a pandas Categorical's order, not the alphabetical one


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    n = 150
    x = rng.normal(size=(n, 1))
    logits = np.column_stack([2 * x[:, 0], np.zeros(n), -2 * x[:, 0]])
    p = np.exp(log_softmax(logits, axis=1))
    codes = np.array([rng.choice(3, p=pi) for pi in p])
    y_cat = pd.Categorical(np.asarray(LEVELS, dtype=object)[codes], categories=LEVELS)
    return x, codes, y_cat


def np_loglik(params, x, codes):
    """log sum_k g_k(x) p_k(y | x) of a softmax gate and multinomial-logistic experts, by hand."""
    gl = params["gate_intercept"] + x @ np.asarray(params["gate_coef"]).T
    logg = gl - logsumexp(gl, axis=1, keepdims=True)
    el = np.einsum("np,kcp->nkc", x, params["expert_coef"]) + params["expert_intercept"]
    logp = log_softmax(el, axis=-1)[np.arange(len(codes)), :, codes]
    return logsumexp(logg + logp, axis=1)


BASE = bm.MoE(bm.gates.Softmax(), bm.experts.Categorical(3), n_experts=2)


def test_labels_are_learnt_in_the_expected_order(data):
    x, codes, y_cat = data
    ex = bm.experts.Categorical(3)
    assert ex.for_response(y_cat).labels == tuple(LEVELS)                 # categories' order
    assert ex.for_response(pd.Series(y_cat)).labels == tuple(LEVELS)
    strings = np.asarray(y_cat, dtype=object)
    assert ex.for_response(strings).labels == ("high", "low", "mid")      # sorted
    assert ex.for_response(codes + 1).labels == (1, 2, 3)                 # R-style 1..C
    assert ex.for_response(codes) is ex                                   # codes stay codes
    assert ex.for_response(codes.astype(float)) is ex
    labelled = bm.experts.Categorical(labels=LEVELS)
    assert labelled.n_classes == 3 and labelled == ex.for_response(y_cat)
    assert bm.experts.Categorical.from_spec(json.loads(json.dumps(labelled.spec()))) == labelled
    with pytest.raises(ValueError, match="holds 2 distinct labels"):
        ex.for_response(np.array(["a", "b", "a"]))
    with pytest.raises(ValueError, match="3 labels but `n_classes` is 4"):
        bm.experts.Categorical(4, labels=LEVELS)
    with pytest.raises(ValueError, match="repeated labels"):
        bm.experts.Categorical(labels=["a", "a"])


def test_loglik_with_labels_equals_codes_by_hand(data):
    x, codes, y_cat = data
    params = BASE.random_params(np.random.default_rng(0), 1)
    want = np_loglik(params, x, codes)
    labelled = BASE.for_response(y_cat)
    assert labelled.classes == LEVELS and BASE.classes == [0, 1, 2]
    for y in (y_cat, pd.Series(y_cat), np.asarray(y_cat, dtype=object), list(np.asarray(y_cat))):
        np.testing.assert_allclose(np.asarray(labelled.log_likelihood(params, x, y)), want, rtol=1e-5)
    r_style = BASE.for_response(codes + 1)
    np.testing.assert_allclose(np.asarray(r_style.log_likelihood(params, x, codes + 1)), want, rtol=1e-5)
    with pytest.raises(ValueError, match=r"label\(s\) \['top'\] that are not among the model's classes"):
        labelled.log_likelihood(params, x[:2], ["low", "top"])
    with pytest.raises(ValueError, match="Categorical\\(labels="):
        BASE.log_likelihood(params, x[:2], ["low", "mid"])


@pytest.fixture(scope="module")
def fitted(data):
    x, codes, y_cat = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bm.FitWarning)
        fit = bm.fit_mle(BASE, x, y_cat, n_starts=2, seed=0)
    return fit


def test_fit_with_labels(data, fitted):
    x, codes, y_cat = data
    labelled = BASE.for_response(y_cat)
    # float32 fit vs the float64 computation by hand (the MLE's logits are large: rounding ~1e-5)
    assert fitted.log_likelihood == pytest.approx(np_loglik(fitted.params, x, codes).sum(), rel=1e-4)
    # predictions: class probabilities in the labels' order; the most probable class by its label
    pred = labelled.predict(fitted.params, x[:20])
    probs = np.asarray(pred.class_probs)
    gl = fitted.params["gate_intercept"] + x[:20] @ fitted.params["gate_coef"].T
    g = np.exp(gl - logsumexp(gl, axis=1, keepdims=True))
    el = np.einsum("np,kcp->nkc", x[:20], fitted.params["expert_coef"]) + fitted.params["expert_intercept"]
    np.testing.assert_allclose(probs, np.einsum("nk,nkc->nc", g, np.exp(log_softmax(el, -1))),
                               rtol=1e-3, atol=1e-5)
    best = labelled.decode_y(probs.argmax(1))
    assert list(best) == [LEVELS[c] for c in probs.argmax(1)]
    assert labelled.coords(["x"])["class"] == LEVELS


def test_sample_keeps_labels_as_coords(data, fitted):
    x, codes, y_cat = data
    dt = bm.sample(BASE, x, y_cat, num_chains=1, num_warmup=60, num_samples=60, seed=0,
                   progress_bar=False, quiet=True, init=fitted.params, relabel=False)
    assert list(dt.posterior["expert_intercept_free"].coords["class_free"].values) == LEVELS[:-1]
    np.testing.assert_array_equal(dt.observed_data["y"].values, codes)
    assert set(np.unique(dt.posterior_predictive["y"].values)) <= {0, 1, 2}
    rebuilt = bm.MoE.from_spec(json.loads(dt.attrs["bayesmoe_model"]))
    assert rebuilt.classes == LEVELS and rebuilt == BASE.for_response(y_cat)


def test_formula_with_a_label_response(data, fitted):
    x, codes, y_cat = data
    df = pd.DataFrame({"dose": x[:, 0], "grade": y_cat})
    model = bm.MoE.from_formula("grade ~ dose", n_experts=2, expert=bm.experts.Categorical(3),
                                data=df)
    assert model.classes == LEVELS and model.response_name == "grade"
    ll = np.asarray(model.log_likelihood(fitted.params, data=df))
    np.testing.assert_allclose(ll, np_loglik(fitted.params, x, codes), rtol=1e-4, atol=5e-4)
    with pytest.raises(ValueError, match="not among the model's classes"):
        model.log_likelihood(fitted.params, data=df.assign(grade=["none"] * len(df)))
