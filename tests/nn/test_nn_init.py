"""Initialisation as the HyperRouter authors (N(0, 0.02) routers and experts), the old
inits by option, and dropout inside the experts."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from nn_reference import moe

from bayesmoe.nn import SparseMoE

E, H, S = 16, 256, 0.02  # experts, hypernetwork hidden width, init std


def _logit_sd(router: str, d: int, seeds: range, **kw) -> float:
    """Pooled sd of the initial router logits for N(0, 1) tokens over several seeds."""
    x = jax.random.normal(jax.random.key(12345), (2048, d))
    var = []
    for s in seeds:
        layer = SparseMoE(d, 8, E, 2, router=router, rngs=nnx.Rngs(s), **kw)
        var.append(float(jnp.var(layer.router(x))))
    return math.sqrt(np.mean(var))


def predicted_logit_sd(router: str, d: int, std: float = S) -> float:
    """Closed forms for x ~ N(0, I_d).

    linear / random: logits x W with W_ij ~ N(0, s^2), b = 0: Var = d s^2.
    hyper: W, b from z = relu(e W1) W2 (e ~ N(0, I_d), W1, W2 ~ N(0, s^2), zero biases);
    given e, a_j = e . W1_j ~ N(0, s^2 |e|^2), E relu(a)^2 = s^2 |e|^2 / 2, so
    Var z = H s^2 s^2 d / 2 and Var(x W + b) = (d + 1) Var z.
    """
    if router in ("linear", "random"):
        return std * math.sqrt(d)
    return std**2 * math.sqrt((d + 1) * H * d / 2)


@pytest.mark.parametrize("d", [64, 256])
@pytest.mark.parametrize("router,n_seeds", [("linear", 4), ("random", 4), ("hyper", 24)])
def test_initial_logit_sd_matches_the_paper_init_prediction(router, d, n_seeds):
    sd = _logit_sd(router, d, range(n_seeds))
    pred = predicted_logit_sd(router, d)
    assert abs(sd / pred - 1.0) < 0.10, (sd, pred)


def test_logit_scale_ratios_quoted_in_the_docs():
    """HyperRouter / baseline logit-sd ratios at the paper init (1.8x at d 64, 3.6x at 256)."""
    r64 = predicted_logit_sd("hyper", 64) / predicted_logit_sd("linear", 64)
    r256 = predicted_logit_sd("hyper", 256) / predicted_logit_sd("linear", 256)
    assert round(r64, 1) == 1.8 and round(r256, 1) == 3.6


@pytest.mark.parametrize("router", ["linear", "random"])
def test_old_router_init_is_available(router):
    """router_init_std=None: LeCun N(0, 1/d), logit sd 1 at any d."""
    assert abs(_logit_sd(router, 64, range(2), router_init_std=None) - 1.0) < 0.1


def test_expert_init_std_and_the_old_lecun_init():
    d, f = 64, 128
    new = SparseMoE(d, f, E, 2, rngs=nnx.Rngs(0)).experts
    old = SparseMoE(d, f, E, 2, expert_init_std=None, rngs=nnx.Rngs(0)).experts
    for w in (new.w_in, new.w_out):
        assert abs(float(jnp.std(w[...])) / S - 1.0) < 0.02
    for w, fan_in in ((old.w_in, d), (old.w_out, f)):  # lecun_normal: N(0, 1/fan_in)
        assert abs(float(jnp.std(w[...])) * math.sqrt(fan_in) - 1.0) < 0.03
    assert float(jnp.abs(new.b_in[...]).max()) == 0.0


def _dense_layer(rate, **kw):
    return SparseMoE(6, 10, 4, 2, router="linear", impl="dense", expert_dropout=rate,
                     expert_init_std=0.5, router_init_std=0.5, rngs=nnx.Rngs(0), **kw)


def test_expert_dropout_is_off_in_eval_mode_and_unbiased_in_training():
    p, n_draws = 0.3, 200
    layer = _dense_layer(p)
    x = jax.random.normal(jax.random.key(1), (29, 6))
    w = [np.asarray(a, np.float64) for a in layer.experts.weights()]
    logits = np.asarray(layer.router(x), np.float64)
    ref, _ = moe(x, logits, 2, *w)
    layer.eval()
    np.testing.assert_allclose(layer(x)[0], ref, rtol=1e-5, atol=1e-5)
    layer.train()
    draw = nnx.jit(lambda m, xx: m(xx)[0])
    ys = np.stack([np.asarray(draw(layer, x), np.float64) for _ in range(n_draws)])
    # closed-form variance: each copy's hidden units are kept independently, so
    # Var y_td = sum_j g_tj^2 p / (1 - p) sum_f h_tjf^2 W_out[e, f, d]^2
    idx = np.argsort(-logits, axis=1)[:, :2]
    g = np.exp(np.take_along_axis(logits, idx, 1))
    g /= g.sum(1, keepdims=True)
    var = np.zeros_like(ref)
    x64 = np.asarray(x, np.float64)
    for t in range(29):
        for j in range(2):
            e = idx[t, j]
            h = np.maximum(x64[t] @ w[0][e] + w[1][e], 0.0)
            var[t] += g[t, j] ** 2 * p / (1 - p) * (h**2) @ (w[2][e] ** 2)
    z = (ys.mean(0) - ref) / np.sqrt(var / n_draws + 1e-12)
    assert np.abs(z).max() < 5.0  # unbiased: E[mask / (1 - p)] = 1
    ratio = ys.var(0).sum() / var.sum()
    assert 0.85 < ratio < 1.15, ratio
    assert np.abs(ys[0] - ys[1]).max() > 1e-3  # a new mask per call


def test_expert_dropout_rngs_argument_is_reproducible():
    layer = _dense_layer(0.5)
    x = jax.random.normal(jax.random.key(1), (7, 6))
    a = layer(x, rngs=nnx.Rngs(dropout=3))[0]
    b = layer(x, rngs=nnx.Rngs(dropout=3))[0]
    c = layer(x, rngs=nnx.Rngs(dropout=4))[0]
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a - c)).max() > 1e-3


def test_bad_init_and_dropout_arguments_raise_value_error():
    for kw, name in [({"router_init_std": -1.0}, "router_init_std"),
                     ({"expert_init_std": 0.0}, "expert_init_std"),
                     ({"expert_dropout": 1.0}, "expert_dropout"),
                     ({"kernel": "ragged", "impl": "capacity"}, "kernel"),
                     ({"kernel": "cuda"}, "kernel")]:
        with pytest.raises(ValueError, match=name):
            SparseMoE(8, 8, 4, 2, rngs=nnx.Rngs(0), **kw)
