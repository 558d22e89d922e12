"""Every gate x expert x degree x d x K x workflow option works: the generated matrix of tests/_matrix.py.

Each case simulates data from the case's own model, fits it the case's way and checks, against
computations that do not share the package's code path:
- finite estimates; the log-likelihood equal to the model's own pointwise sum and to an independent
  numpy/scipy computation (tests/reference.py) at the estimate;
- maximum-likelihood fits at least as likely as the parameters that simulated the data (the MLE
  maximises over a set that contains them);
- ``predict`` (gate probabilities on the simplex, the mixture mean their weighted expert means),
  ``summary()`` (its estimates are the fit's), ``save``/``load`` (the same estimates and predictions);
- for models whose families declare an exact map under a change of units of x (``x_affine``), the
  same pointwise log-likelihood when x is rescaled and shifted;
- for a fixed random subset, a short NUTS run whose stored log-likelihood equals the numpy one at a
  posterior draw.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import numpy as np
import pandas as pd
import pytest
from numpyro.distributions import constraints

import bayesmoe as bm
from tests import reference
from tests._matrix import OPTIONS, Case, cases, expert_levels, gate_levels
from tests.params_factory import reference_kinds

N_MIN = 150
CASES = cases()
MLE_OPTIONS = ("lbfgs", "em", "devices", "formula")
SAMPLED = {CASES[i].id for i in np.random.default_rng(7).choice(
    [i for i, c in enumerate(CASES) if c.option in ("lbfgs", "em", "map")], size=3, replace=False)}


def _simulate(case: Case, index: int):
    rng = np.random.default_rng(1000 + index)
    model = case.model
    n = max(N_MIN, 2 * model.n_params(case.d) + 20)  # enough rows for maximum likelihood
    x = rng.uniform(-1.0, 1.0, size=(n, case.d))
    truth = model.random_params(rng, case.d)
    for fam in model.families:
        for p in fam.param_table():
            if bm.family.REGRESSOR in p.dims:  # slopes of order 1 / (number of regressors)
                truth[p.name] = truth[p.name] / fam.n_features(case.d)
            elif p.constraint is constraints.positive and p.floor is None:  # shapes (e.g. t's df) >= 3:
                truth[p.name] = truth[p.name] + 3.0  # tails that float32 data can hold
    truth = model.complete_params(truth)
    y = np.asarray(model.simulate(index, truth, x).y)
    return model, x, y, truth


def _fit(case: Case, model, x, y, **kw):
    opt = case.option
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FitWarnings of small samples are not what is tested here
        if opt in ("lbfgs", "em", "adam"):
            return bm.fit_mle(model, x, y, method=opt, seed=0, **kw)
        if opt == "map":
            return bm.fit_map(model, x, y, seed=0, **kw)
        if opt == "penalty":
            return bm.fit_mle(model, x, y, penalty=bm.penalties.L1(0.02), seed=0, **kw)
        if opt == "devices":
            return bm.fit_mle(model, x, y, devices=jax.devices()[:2], seed=0, **kw)
        raise AssertionError(opt)


def _formula(case: Case, x, y):
    cols = [f"x{j}" for j in range(case.d)]
    df = pd.DataFrame(x, columns=cols).assign(y=y)
    expert = dataclasses.replace(case.model.expert)
    model = bm.MoE.from_formula("y ~ " + " + ".join(cols), n_experts=case.K, data=df,
                                gate_family=case.gate, expert=expert)
    return model, df


def _numpy_log_lik(model, params, x, y) -> np.ndarray:
    gk, tr, ek = reference_kinds(model.gate, model.expert)
    degree = getattr(model.expert, "degree", 1)
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    return reference.moe_log_lik(gk, ek, p, np.asarray(x, np.float64), np.asarray(y), degree, tr)


@pytest.fixture(autouse=True)
def _release_programs():
    """Each case compiles its own programs, never reused by the next: release them (a process that
    keeps hundreds of compiled programs runs out of memory mappings inside LLVM)."""
    yield
    jax.clear_caches()


def test_matrix_covers_every_family_and_option():
    gates = {type(g) for g in gate_levels()}
    experts = {type(e) for e in expert_levels()}
    assert gates == {type(c.gate) for c in CASES} and experts == {type(c.expert) for c in CASES}
    assert {repr(g) for g in gate_levels()} == {repr(c.gate) for c in CASES}
    assert set(OPTIONS) == {c.option for c in CASES}
    for attr, levels in (("degree", (1, 2, 3)), ("d", (1, 2, 3)), ("K", (1, 2, 3))):
        assert {getattr(c, attr) for c in CASES} == set(levels)
    # pairwise coverage: every gate/expert level with every option it can go with, and with each other
    pairs = {(repr(c.gate), repr(c.expert)) for c in CASES} | {(repr(c.expert), c.option) for c in CASES}
    assert {(repr(g), repr(e)) for g in gate_levels() for e in expert_levels()} <= pairs
    # a polynomial expert of every degree with every gate class
    assert {(type(c.gate), c.degree) for c in CASES} >= {(g, k) for g in gates for k in (1, 2, 3)}


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(CASES)), ids=[c.id for c in CASES])
def test_combination(index, tmp_path):
    case = CASES[index]
    model, x, y, truth = _simulate(case, index)
    if case.option == "formula":
        model, df = _formula(case, x, y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = bm.fit_mle(model, data=df, seed=0)
        x_fit = df
    else:
        fit = _fit(case, model, x, y)
        x_fit = x
    params = fit.params
    for k, v in params.items():
        assert np.all(np.isfinite(v)), f"{k} not finite"
    assert np.isfinite(fit.log_likelihood) and np.all(np.isfinite(fit.start_log_likelihoods))

    # the log-likelihood: the model's own pointwise sum, and numpy/scipy by hand
    pointwise = fit.pointwise_log_likelihood()
    assert pointwise.shape == (x.shape[0],)
    tol = 1e-4 * abs(fit.log_likelihood) + 1e-2
    assert np.sum(pointwise) == pytest.approx(fit.log_likelihood, abs=tol)
    by_hand = _numpy_log_lik(fit.model, params, x, y)
    np.testing.assert_allclose(pointwise, by_hand, rtol=1e-4, atol=1e-3)
    assert np.sum(by_hand) == pytest.approx(fit.log_likelihood, abs=tol)
    if case.option in MLE_OPTIONS:
        ll_truth = float(np.sum(_numpy_log_lik(model, truth, x, y)))
        assert fit.log_likelihood >= ll_truth - tol, "MLE below the simulating parameters"

    # predictions
    pred = fit.predict(x_fit, level=None if model.expert.y_shape() else 0.9)
    np.testing.assert_allclose(np.sum(pred.gate_probs, axis=1), 1.0, atol=1e-5)
    for name in ("gate_probs", "expert_mean", "mean", "class_probs", "lower", "upper"):
        v = getattr(pred, name)
        assert v is None or np.all(np.isfinite(v)), name
    if pred.expert_mean is not None and pred.mean is not None:
        want = np.einsum("nk,nk...->n...", np.asarray(pred.gate_probs), np.asarray(pred.expert_mean))
        np.testing.assert_allclose(pred.mean, want, rtol=1e-4, atol=1e-4)
    if pred.class_probs is not None:
        np.testing.assert_allclose(np.sum(pred.class_probs, axis=1), 1.0, atol=1e-5)

    # summary: a row per listed parameter entry, each estimate an entry of its site's estimate
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = fit.summary()
    assert len(table) > 0 and np.all(np.isfinite(table["estimate"].to_numpy()))
    for label, est in table["estimate"].items():
        site = str(label).split("[")[0]
        # (float32 estimates: a simplex re-derived through its free parametrisation moves by ~1e-8)
        assert np.any(np.isclose(np.ravel(params[site]), est, rtol=1e-6, atol=1e-7)), label

    # save / load: the same estimates, log-likelihood and predictions
    path = tmp_path / "fit.nc"
    fit.save(path)
    back = bm.FitResult.load(path)
    assert back.log_likelihood == fit.log_likelihood
    for k in params:
        np.testing.assert_array_equal(back.params[k], params[k], err_msg=k)
    again = back.predict(x_fit, level=None)
    np.testing.assert_allclose(again.gate_probs, pred.gate_probs, rtol=1e-6, atol=1e-7)

    # units of x: families that declare an exact map give the same fit in any units
    if case.option in ("lbfgs", "em", "adam", "devices") and all(
            f.x_affine(case.d) for f in model.families):
        moved = _fit(case, model, 1e3 * x - 7.0, y)
        np.testing.assert_allclose(moved.pointwise_log_likelihood(), pointwise, rtol=1e-4, atol=1e-3)

    if case.id in SAMPLED:
        _check_sample(case, fit.model, x_fit, x, y)


def _check_sample(case: Case, model, x_fit, x, y):
    kwargs = {"data": x_fit} if case.option == "formula" else {"x": x, "y": y}
    dt = bm.sample(model, **kwargs, num_chains=1, num_warmup=40, num_samples=10, seed=0,
                   progress_bar=False, quiet=True)
    post = dt.posterior
    for name in model.site_names(x.shape[1]):
        if name in post:
            assert np.all(np.isfinite(post[name].values)), name
    draw = model.complete_params({name: np.asarray(post[name].values[0, -1]) for name in post.data_vars},
                                 x.shape[1])
    stored = dt.log_likelihood["y"].values[0, -1]
    np.testing.assert_allclose(stored, _numpy_log_lik(model, draw, x, y), rtol=1e-4, atol=1e-3)
