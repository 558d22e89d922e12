"""Label-switching repair (bayesmoe.inference.relabel): ECR-iterative-1 and Stephens' KL algorithm."""

import itertools
import json
import os
import warnings

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from arviz_base import from_dict

import bayesmoe as bm

REFERENCE_CSV = "/work/shared/reference/sgmoe_k2_n1000.csv"
SAMPLE_DIMS = ("chain", "draw")

# well-separated 3-expert softmax-gated linear Gaussian experts, reference gauge (last row 0)
TRUE_SOFTMAX = {
    "gate_intercept": np.array([0.5, -0.3, 0.0]),
    "gate_coef": np.array([[2.0], [-2.0], [0.0]]),
    "expert_intercept": np.array([-4.0, 0.0, 4.0]),
    "expert_coef": np.array([[1.0], [-1.0], [0.5]]),
    "expert_scale": np.array([0.5, 0.4, 0.6]),
}


# ----------------------------------------------------------------------------- helpers
def _jitter(rng, true, shape, sd, softmax):
    """Posterior-like draws: the true values plus small Gaussian noise (log-scale for positives),
    kept valid (simplex weights, reference rows/classes at 0, covariance from scale and correlation)."""
    out = {}
    for name, v in true.items():
        eps = sd * rng.standard_normal(shape + v.shape)
        if name == "gate_corr_chol":  # jitter below the diagonal, rows back to unit norm
            L = np.tril(v + eps, -1) + np.eye(v.shape[-1]) * np.diagonal(v, axis1=-2, axis2=-1)[..., None]
            out[name] = L / np.linalg.norm(L, axis=-1, keepdims=True)
        elif name in ("expert_scale", "gate_scale", "gate_weight"):
            w = v * np.exp(eps)
            out[name] = w / w.sum(-1, keepdims=True) if name == "gate_weight" else w
        else:
            out[name] = v + eps
    if "gate_cov" in true:
        tril = out["gate_scale"][..., :, None] * out["gate_corr_chol"]
        out["gate_cov"] = tril @ np.swapaxes(tril, -1, -2)
    if true["expert_intercept"].ndim == 2:  # categorical experts: the last class is the reference
        out["expert_intercept"][..., -1] = 0.0
        out["expert_coef"][..., -1, :] = 0.0
    if softmax:
        out = _regauge(out)
    return out


def _regauge(post):
    out = dict(post)
    for name in ("gate_intercept", "gate_coef"):
        v = post[name]
        out[name] = v - v[:, :, -1:]
    return out


def _permute(post, perms):
    """Draw (c, s) gets theta_new[k] = theta[perms[c, s, k]] on the expert axis (axis 2)."""
    out = {}
    for name, v in post.items():
        idx = perms.reshape(perms.shape + (1,) * (v.ndim - 3))
        out[name] = np.take_along_axis(v, idx, axis=2)
    return out


def _loglik(model, post, x, y):
    """Pointwise log-likelihood (chain, draw, obs) recomputed with model.log_likelihood."""
    C, D = next(iter(post.values())).shape[:2]
    flat = {k: jnp.asarray(np.asarray(v).reshape((C * D,) + v.shape[2:])) for k, v in post.items()}
    ll = jax.jit(jax.vmap(lambda p: model.log_likelihood(p, jnp.asarray(x), jnp.asarray(y))))(flat)
    return np.asarray(ll).reshape(C, D, -1)


def _posterior_arrays(dt, names):
    return {n: dt.posterior[n].transpose(*SAMPLE_DIMS, "expert", ...).values for n in names}


def _build(model, post, x, y, dims, coords, with_attrs=True):
    data = {"posterior": post,
            "sample_stats": {"energy": np.zeros(next(iter(post.values())).shape[:2])},
            "log_likelihood": {"y": _loglik(model, post, x, y)},
            "observed_data": {"y": y}, "constant_data": {"x": x}}
    attrs = {"/": {"bayesmoe_model": json.dumps(model.spec())}} if with_attrs else None
    return from_dict(data, coords=coords, dims=dims, attrs=attrs)


def _max_rhat(dt, names=None):
    """Largest R-hat over the non-constant posterior parameters."""
    post = dt.posterior
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r = az.rhat(dt)
    worst = 0.0
    for name in names or list(post.data_vars):
        varies = (post[name].std(SAMPLE_DIMS) > 0).values
        vals = np.asarray(r[name].values)[varies]
        assert np.all(np.isfinite(vals)), name
        worst = max(worst, float(vals.max()))
    return worst


def _match_global_permutation(relabelled, original, K, regauge):
    """Smallest max-abs difference between relabelled draws and ONE global relabelling of the original
    draws (over all K! permutations), and the permutation attaining it."""
    best = (np.inf, None)
    for pi in itertools.permutations(range(K)):
        shape = next(iter(original.values())).shape[:2]
        cand = _permute(original, np.broadcast_to(np.array(pi), shape + (K,)))
        if regauge:
            cand = _regauge(cand)
        err = max(float(np.max(np.abs(relabelled[n] - cand[n]))) for n in original)
        best = min(best, (err, pi), key=lambda t: t[0])
    return best


def _scramble(rng, C, D, K, p_switch=0.3):
    """Random label permutations per draw, (C, D, K): each chain sits in its own labelling (chains in
    different modes: distinct permutations while K! allows) and, on top, a fraction p_switch of its
    draws get a further uniformly random permutation (label switches within a chain)."""
    all_perms = list(itertools.permutations(range(K)))
    base = np.array([all_perms[i] for i in rng.choice(len(all_perms), C, replace=C > len(all_perms))])
    base[0] = np.arange(K)
    if K == 2 and C > 1:
        base[1] = [1, 0]
    sigma = np.broadcast_to(base[:, None, :], (C, D, K)).copy()
    switch = rng.random((C, D)) < p_switch
    extra = np.stack([rng.permutation(K) for _ in range(int(switch.sum()))])
    sigma[switch] = np.take_along_axis(sigma[switch], extra, axis=1)
    return sigma


@pytest.fixture(scope="module")
def softmax_case():
    """4 chains x 500 draws around TRUE_SOFTMAX, each draw's labels randomly permuted (chains in distinct
    labellings plus random switches within chains, see _scramble) and the gate re-gauged."""
    rng = np.random.default_rng(20100)
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 3)
    n, C, D, K = 300, 4, 500, 3
    x = rng.uniform(-2, 2, size=(n, 1))
    true_j = {k: jnp.asarray(v, jnp.float32) for k, v in TRUE_SOFTMAX.items()}
    y = np.asarray(model.simulate(jax.random.key(3), true_j, x).y, dtype=np.float64)
    original = {k: v.astype(np.float32) for k, v in _jitter(rng, TRUE_SOFTMAX, (C, D), 0.03, True).items()}
    sigma = _scramble(rng, C, D, K)
    scrambled = _regauge(_permute(original, sigma))
    dims = {"gate_intercept": ["expert"], "gate_coef": ["expert", "feature"],
            "expert_intercept": ["expert"], "expert_coef": ["expert", "feature"],
            "expert_scale": ["expert"], "x": ["obs", "feature"], "y": ["obs"]}
    coords = {"expert": np.arange(K), "feature": ["x"], "obs": np.arange(n)}
    dt = _build(model, scrambled, x, y, dims, coords)
    out = {m: bm.relabel(dt, method=m) for m in ("ecr", "stephens")}
    return dict(model=model, x=x, y=y, original=original, scrambled=scrambled, sigma=sigma, dt=dt,
                out=out, dims=dims, coords=coords, K=K)


# ----------------------------------------------------------------------------- 1. synthetic
@pytest.mark.parametrize("method", ["ecr", "stephens"])
def test_synthetic_scrambled_draws_are_restored(softmax_case, method):
    case = softmax_case
    dt, out, K = case["dt"], case["out"][method], case["K"]
    assert _max_rhat(dt) > 1.1  # the scrambled labels ruin mixing
    assert _max_rhat(out) < 1.01
    names = list(case["original"])
    got = _posterior_arrays(out, names)
    err, pi = _match_global_permutation(got, case["original"], K, regauge=True)
    assert err < 1e-5, (err, pi)
    # the stored permutations undo the scrambling up to that global permutation
    perm = out.sample_stats["relabel_permutation"].transpose(*SAMPLE_DIMS, "expert").values
    total = np.take_along_axis(case["sigma"], perm, axis=2)  # original label under each new label
    assert np.all(total == np.array(pi))
    frac = out.attrs["relabel_fraction_permuted"]
    assert frac == pytest.approx(np.mean(np.any(perm != np.arange(K), axis=-1)))
    assert frac > 0.6  # at least three of the four chains were in another labelling
    assert out.attrs["relabel_method"] == method and out.attrs["relabel_converged"]


def test_input_unchanged_and_idempotent(softmax_case):
    case = softmax_case
    dt, out = case["dt"], case["out"]["ecr"]
    before = _posterior_arrays(dt, list(case["scrambled"]))
    for n, v in case["scrambled"].items():
        np.testing.assert_array_equal(before[n], v)
    assert "relabel_permutation" not in dt.sample_stats and "relabel_method" not in dt.attrs
    again = bm.relabel(out)
    assert again.attrs["relabel_fraction_permuted"] == 0.0
    for n in case["scrambled"]:
        np.testing.assert_array_equal(again.posterior[n].values, out.posterior[n].values)
    np.testing.assert_array_equal(again.sample_stats["relabel_permutation"].values,
                                  out.sample_stats["relabel_permutation"].values)


# ----------------------------------------------------------------------------- 2. gauge and likelihood
@pytest.mark.parametrize("method", ["ecr", "stephens"])
def test_reference_gauge_and_likelihood_preserved(softmax_case, method):
    case = softmax_case
    out = case["out"][method]
    b = out.posterior["gate_intercept"].transpose(*SAMPLE_DIMS, "expert").values
    w = out.posterior["gate_coef"].transpose(*SAMPLE_DIMS, "expert", "feature").values
    assert np.all(b[:, :, -1] == 0.0) and np.all(w[:, :, -1, :] == 0.0)
    assert np.mean(b[:, :, 0] != 0.0) == 1.0  # the other rows are not zeroed
    got = _posterior_arrays(out, list(case["scrambled"]))
    ll_before = _loglik(case["model"], case["scrambled"], case["x"], case["y"])
    ll_after = _loglik(case["model"], got, case["x"], case["y"])
    np.testing.assert_allclose(ll_after, ll_before, rtol=1e-5, atol=1e-4)
    # the log_likelihood group is untouched and still matches the relabelled draws
    np.testing.assert_allclose(out.log_likelihood["y"].values, ll_after, rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------------------- 3. a real NUTS run
@pytest.mark.skipif(not os.path.exists(REFERENCE_CSV), reason="reference data not available")
def test_real_run_with_swapped_chains_is_repaired():
    """NUTS from random starts (seed 1): two of the four chains settle in the label-swapped mode
    (as in the reference README's Stan run); relabelling must restore R-hat < 1.05."""
    import pandas as pd

    d = pd.read_csv(REFERENCE_CSV)
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2)
    dt = bm.sample(model, d[["x"]], d.y.to_numpy(), init="random", relabel=False, num_chains=4,
                   num_warmup=300, num_samples=300, seed=1, progress_bar=False)
    assert _max_rhat(dt, ["expert_intercept"]) > 1.1
    out = bm.relabel(dt, model=model)
    assert _max_rhat(out) < 1.05
    assert 0.2 < out.attrs["relabel_fraction_permuted"] < 0.8  # whole chains were swapped
    # one labelling for all chains, matching the reference MLE (flexmix) in some order
    means = out.posterior["expert_intercept"].mean("draw").values  # (chain, expert)
    assert np.ptp(means, axis=0).max() < 0.1
    np.testing.assert_allclose(np.sort(means.mean(0)), [-1.04287, 1.01529], atol=0.1)
    # the posterior stores the gate's free rows only (the reference row is a constant)
    assert out.posterior["gate_intercept_free"].dims == ("chain", "draw", "expert_free")
    assert "gate_intercept" not in out.posterior


# ----------------------------------------------------------------------------- 4. agreement and errors
def test_methods_agree(softmax_case):
    a, b = softmax_case["out"]["ecr"], softmax_case["out"]["stephens"]
    np.testing.assert_array_equal(a.sample_stats["relabel_permutation"].values,
                                  b.sample_stats["relabel_permutation"].values)
    for n in softmax_case["scrambled"]:
        np.testing.assert_array_equal(a.posterior[n].values, b.posterior[n].values)
    # memberships computed in small chunks (the last one padded) give the same answer
    c = bm.relabel(softmax_case["dt"], method="stephens", chunk=333)
    np.testing.assert_array_equal(c.sample_stats["relabel_permutation"].values,
                                  b.sample_stats["relabel_permutation"].values)


def test_errors(softmax_case):
    case = softmax_case
    with pytest.raises(ValueError, match="method"):
        bm.relabel(case["dt"], method="kmeans")
    no_attrs = _build(case["model"], case["scrambled"], case["x"], case["y"], case["dims"],
                      case["coords"], with_attrs=False)
    with pytest.raises(ValueError, match="model="):
        bm.relabel(no_attrs)
    # ... but works when the model is passed
    out = bm.relabel(no_attrs, model=case["model"])
    np.testing.assert_array_equal(out.posterior["expert_scale"].values,
                                  case["out"]["ecr"].posterior["expert_scale"].values)
    with pytest.raises(ValueError, match="n_experts"):
        bm.relabel(case["dt"], model=bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2))


# ----------------------------------------------------------------------------- other gates/experts
def test_gaussian_gate_categorical_experts():
    """Multi-dimensional expert variables (gate_cov (expert, feature, feature_bis), class dims) are
    permuted as a whole; the likelihood is unchanged."""
    rng = np.random.default_rng(7)
    K, C_cls, n, C, D = 2, 3, 200, 2, 300
    model = bm.MoE(bm.gates.Gaussian("full"), bm.experts.Categorical(C_cls), K)
    corr = np.array([[[1.0, 0.0], [0.3, np.sqrt(1 - 0.09)]], [[1.0, 0.0], [-0.5, np.sqrt(0.75)]]])
    scale = np.array([[0.5, 0.8], [0.6, 0.4]])
    tril = scale[..., :, None] * corr
    true = {"gate_weight": np.array([0.4, 0.6]), "gate_loc": np.array([[-3.0, 0.0], [3.0, 1.0]]),
            "gate_scale": scale, "gate_corr_chol": corr, "gate_cov": tril @ np.swapaxes(tril, -1, -2),
            "expert_intercept": np.array([[2.0, -1.0, 0.0], [-2.0, 1.5, 0.0]]),
            "expert_coef": np.array([[[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]],
                                     [[-1.0, 0.5], [0.5, 0.0], [0.0, 0.0]]])}
    tj = {k: jnp.asarray(v, jnp.float32) for k, v in true.items()}
    x = np.asarray(model.sample_x(jax.random.key(1), tj, n), dtype=np.float64)
    y = np.asarray(model.simulate(jax.random.key(2), tj, x).y)
    original = {k: v.astype(np.float32) for k, v in _jitter(rng, true, (C, D), 0.03, False).items()}
    sigma = _scramble(rng, C, D, K)
    scrambled = _permute(original, sigma)
    dims = {"gate_weight": ["expert"], "gate_loc": ["expert", "feature"],
            "gate_scale": ["expert", "feature"], "gate_corr_chol": ["expert", "feature", "feature_bis"],
            "gate_cov": ["expert", "feature", "feature_bis"], "expert_intercept": ["expert", "class"],
            "expert_coef": ["expert", "class", "feature"], "x": ["obs", "feature"], "y": ["obs"]}
    coords = {"expert": np.arange(K), "feature": ["a", "b"], "feature_bis": ["a", "b"],
              "class": np.arange(C_cls), "obs": np.arange(n)}
    dt = _build(model, scrambled, x, y, dims, coords)
    assert _max_rhat(dt) > 1.1
    for method in ("ecr", "stephens"):
        out = bm.relabel(dt, method=method)
        assert _max_rhat(out) < 1.03
        got = _posterior_arrays(out, list(original))
        err, _ = _match_global_permutation(got, original, K, regauge=False)
        assert err == 0.0
        np.testing.assert_allclose(_loglik(model, got, x, y), _loglik(model, scrambled, x, y),
                                   rtol=1e-5, atol=1e-4)
