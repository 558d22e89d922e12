"""SparseMoE: every dispatch implementation against dense and an independent numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from nn_reference import full_mixture, moe, softmax

from bayesmoe.nn import MoEAux, SparseMoE
from bayesmoe.nn import dispatch as dp
from bayesmoe.nn.experts import get_activation

D, F, E, T = 8, 12, 6, 29


def _layer(impl="dense", k=2, router="linear", **kw):
    kw = {"expert_dropout": 0.0, **kw}
    return SparseMoE(D, F, E, k, router=router, impl=impl, rngs=nnx.Rngs(0), **kw)


def _x(shape=(T, D), seed=1):
    return jax.random.normal(jax.random.key(seed), shape)


def _weights(layer):
    return [np.asarray(a) for a in layer.experts.weights()]


@nnx.jit(static_argnames="k")
def _value_and_grads(layer, x, k):
    """Output and gradients (w.r.t. params and x) of sum(y * c), one compiled program."""
    cot = jax.random.normal(jax.random.key(9), x.shape)

    def loss(m, xx):
        y = m(xx, top_k=k)[0]
        return jnp.sum(y * cot), y

    (_, y), grads = nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True)(layer, x)
    return y, grads


def _assert_trees_close(a, b, rtol=1e-5):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        u, v = np.asarray(u), np.asarray(v)
        np.testing.assert_allclose(u, v, rtol=rtol, atol=rtol * max(1.0, np.abs(v).max()) * 0.1)


@pytest.mark.parametrize("k,router", [(1, "linear"), (2, "hyper"), (4, "linear"), (E, "hyper")])
@pytest.mark.parametrize("impl,kw", [("sorted", {"block_size": 4}), ("sorted", {}),
                                     ("capacity", {"capacity_factor": float(E)})])
def test_impls_match_dense_values_and_gradients(impl, kw, k, router):
    x = _x()
    ref_layer, layer = _layer("dense", k, router), _layer(impl, k, router, **kw)
    y_ref, g_ref = _value_and_grads(ref_layer, x, k)
    y, grads = _value_and_grads(layer, x, k)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
    assert float(layer(x)[1].dropped) == 0.0
    assert np.abs(np.asarray(g_ref[1])).max() > 1e-3  # gradients are not trivially zero
    _assert_trees_close(grads, g_ref)


@pytest.mark.parametrize("k", [1, 3, E])
@pytest.mark.parametrize("fn", ["ragged", "einsum", "blocked1", "blocked_big"])
def test_backend_specific_dispatch_paths_match_dense(fn, k):
    """The GPU (ragged_dot) and TPU (one-hot einsum) paths, run here on CPU."""
    layer = _layer("dense", k, "hyper")
    x = _x()
    gates, idx = jax.lax.top_k(layer.router(x), k)
    gates = jax.nn.softmax(gates)
    w, act = layer.experts.weights(), get_activation("relu")
    f = {"ragged": dp.sorted_ragged_dispatch,
         "einsum": lambda *a: dp.capacity_einsum_dispatch(*a, capacity=T),
         "blocked1": lambda *a: dp.sorted_blocked_dispatch(*a, block=1),
         "blocked_big": lambda *a: dp.sorted_blocked_dispatch(*a, block=1000)}[fn]

    cot = _x(seed=5)

    @jax.jit
    def both(g, ww):
        def vg(d):
            return jax.value_and_grad(lambda gg, w2: jnp.sum(d(x, gg, idx, w2, act)[0] * cot),
                                      argnums=(0, 1))(g, ww)
        return vg(f), vg(dp.dense_dispatch)

    (v1, g1), (v2, g2) = both(gates, w)
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    _assert_trees_close(g1, g2)
    y = jax.jit(lambda g, ww: f(x, g, idx, ww, act)[0])(gates, w)
    np.testing.assert_allclose(y, dp.dense_dispatch(x, gates, idx, w, act)[0],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", ["dense", "sorted", "capacity"])
def test_top_k_equal_E_is_the_full_softmax_mixture(impl):
    layer = _layer(impl, E, "hyper", capacity_factor=1.0)
    x = _x()
    y, _ = layer(x)
    ref = full_mixture(x, layer.router(x), *_weights(layer))
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["dense", "sorted", "capacity"])
def test_top_k_changed_per_call_matches_numpy(impl):
    layer = _layer(impl, 2, "hyper", capacity_factor=float(E), activation="silu")
    x = _x()
    logits = np.asarray(layer.router(x))
    for k in [1, 2, 3, 5, E, 2]:
        y, aux = layer(x, top_k=k)
        ref, _ = moe(x, logits, k, *_weights(layer), act="silu")
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
        assert np.isclose(float(aux.load.sum()), 1.0)
    assert layer.top_k == 2
    np.testing.assert_allclose(layer(x)[0], moe(x, logits, 2, *_weights(layer), act="silu")[0],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cf", [0.5, 1.0])
def test_capacity_drops_overflow_first_choices_first(cf):
    k = 2
    layer = _layer("capacity", k, "linear", capacity_factor=cf)
    x = _x((64, D))
    cap = dp.expert_capacity(64, k, E, cf)
    y, aux = layer(x)
    ref, dropped = moe(x, layer.router(x), k, *_weights(layer), capacity=cap)
    assert dropped > 0.05
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(aux.dropped), dropped, rtol=1e-6)


def test_leading_dims_and_aux_statistics():
    layer = _layer("sorted", 2, "hyper", balance_weight=0.1, z_weight=0.01)
    x = _x((3, 7, D))
    y, aux = layer(x)
    assert y.shape == (3, 7, D) and isinstance(aux, MoEAux)
    np.testing.assert_allclose(y.reshape(21, D), layer(x.reshape(21, D))[0], rtol=1e-6,
                               atol=1e-6)
    logits = np.asarray(layer.router(x.reshape(21, D)), np.float64)
    p = softmax(logits)
    idx = np.argsort(-logits, axis=1)[:, :2]
    f = np.bincount(idx.ravel(), minlength=E) / idx.size
    balance = E * np.sum(f * p.mean(0))
    lse = np.log(np.exp(logits).sum(1))
    z = np.mean(lse**2)
    ent = np.mean(-(p * np.log(p)).sum(1))
    np.testing.assert_allclose(aux.load, f, rtol=1e-6)
    np.testing.assert_allclose(aux.balance_loss, balance, rtol=1e-5)
    np.testing.assert_allclose(aux.z_loss, z, rtol=1e-5)
    np.testing.assert_allclose(aux.entropy, ent, rtol=1e-5)
    np.testing.assert_allclose(aux.loss, 0.1 * balance + 0.01 * z, rtol=1e-5)
    assert float(_layer("sorted", 2, "hyper")(x)[1].loss) == 0.0  # weights default to 0


def test_sorted_blocked_block_bound_is_enough_for_skewed_routing():
    """All copies on one expert and on every expert: the static block count suffices."""
    x = _x((10, D))
    w = _layer().experts.weights()
    act = get_activation("relu")
    for idx in [jnp.zeros((10, 1), jnp.int32), jnp.tile(jnp.arange(E), (10, 1))[:, :E]]:
        k = idx.shape[1]
        gates = jnp.full((10, k), 1.0 / k)
        run = jax.jit(lambda i, g: [dp.sorted_blocked_dispatch(x, g, i, w, act, b)[0]
                                    for b in (1, 3, 4, 7, 64)])
        ref = dp.dense_dispatch(x, gates, idx, w, act)[0]
        for y in run(idx, gates):
            np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


def test_layer_under_jit_with_static_top_k():
    layer = _layer("sorted", 2, "hyper")
    x = _x()

    @nnx.jit(static_argnames="k")
    def f(m, xx, k):
        return m(xx, top_k=k)[0]

    for k in [1, 4]:
        np.testing.assert_allclose(f(layer, x, k), _layer("dense", 2, "hyper")(x, top_k=k)[0],
                                   rtol=1e-5, atol=1e-6)


def test_bad_arguments_raise_value_error_naming_them():
    layer = _layer()
    with pytest.raises(ValueError, match="d_model"):
        layer(jnp.ones((4, D + 1)))
    for k in [0, E + 1, 2.0, True]:
        with pytest.raises(ValueError, match="top_k"):
            layer(_x(), top_k=k)
    with pytest.raises(ValueError, match="top_k"):
        SparseMoE(D, F, E, 0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="impl"):
        SparseMoE(D, F, E, 2, impl="megablocks", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="activation"):
        SparseMoE(D, F, E, 2, activation="tanhh", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="capacity_factor"):
        SparseMoE(D, F, E, 2, capacity_factor=0.0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="d_ff"):
        SparseMoE(D, 0, E, 2, rngs=nnx.Rngs(0))
