"""Routers: maths against numpy, frozen vs trainable under an optimizer, seeds, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from nn_reference import hypernet

from bayesmoe.nn import Frozen, HyperRouter, LinearRouter, RandomRouter, SparseMoE

D, E = 12, 5


def _x(n=9, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, D))


def _n_params(module, kind=nnx.Param) -> int:
    return sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(module, kind)))


def test_hyper_router_weights_are_the_reshaped_hypernetwork_output():
    r = HyperRouter(D, E, hyper_hidden=7, embed_dim=4, rngs=nnx.Rngs(3))
    w_ref, b_ref = hypernet(r.embedding[...], r.w1[...], r.b1[...], r.w2[...], r.b2[...], D)
    w, b = r.weight_and_bias()
    assert w.shape == (D, E) and b.shape == (E,)
    np.testing.assert_allclose(w, w_ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(b, b_ref, rtol=1e-5, atol=1e-7)
    x = np.asarray(_x(), np.float64)
    np.testing.assert_allclose(r(_x()), x @ w_ref + b_ref, rtol=1e-5, atol=1e-6)


def test_hyper_router_init_statistics():
    r = HyperRouter(64, 16, rngs=nnx.Rngs(0))
    assert r.embedding.shape == (64,) and r.w1.shape == (64, 256)
    assert r.w2.shape == (256, 16 * 65)
    assert abs(float(jnp.std(r.w2[...])) - 0.02) < 0.001
    assert abs(float(jnp.std(r.embedding[...])) - 1.0) < 0.25
    assert float(jnp.abs(r.b1[...]).max()) == 0.0 and float(jnp.abs(r.b2[...]).max()) == 0.0
    assert isinstance(r.w1, Frozen) and isinstance(r.embedding, nnx.Param)


@pytest.mark.parametrize("cls", [LinearRouter, RandomRouter])
def test_linear_and_random_router_logits(cls):
    r = cls(D, E, rngs=nnx.Rngs(1))
    w, b = (np.asarray(a, np.float64) for a in r.weight_and_bias())
    np.testing.assert_allclose(r(_x()), np.asarray(_x(), np.float64) @ w + b, rtol=1e-5, atol=1e-6)


def test_router_logits_are_float32_for_bfloat16_tokens():
    r = HyperRouter(D, E, rngs=nnx.Rngs(0))
    assert r(_x().astype(jnp.bfloat16)).dtype == jnp.float32


def test_trainable_router_parameter_counts():
    assert _n_params(HyperRouter(D, E, rngs=nnx.Rngs(0))) == D
    assert _n_params(HyperRouter(D, E, embed_dim=3, rngs=nnx.Rngs(0))) == 3
    assert _n_params(LinearRouter(D, E, rngs=nnx.Rngs(0))) == D * E + E
    assert _n_params(RandomRouter(D, E, rngs=nnx.Rngs(0))) == 0
    assert _n_params(RandomRouter(D, E, rngs=nnx.Rngs(0)), Frozen) == D * E + E


@pytest.mark.parametrize("router", ["hyper", "random", "linear"])
def test_optimizer_step_updates_only_params(router):
    layer = SparseMoE(D, 16, E, 2, router=router, impl="dense", expert_dropout=0.0,
                      rngs=nnx.Rngs(0))
    frozen0 = jax.tree.map(np.array, nnx.state(layer.router, Frozen))
    param0 = jax.tree.map(np.array, nnx.state(layer.router, nnx.Param))
    opt = nnx.Optimizer(layer, optax.adam(1e-2), wrt=nnx.Param)
    x = _x(20)

    def loss(m):
        return jnp.mean((m(x)[0] - 1.0) ** 2)

    assert float(loss(layer)) > 0.1
    grads = nnx.grad(loss)(layer)
    assert not jax.tree.leaves(nnx.state(grads, Frozen))  # no gradient slot for Frozen
    opt.update(layer, grads)
    frozen1 = jax.tree.map(np.array, nnx.state(layer.router, Frozen))
    param1 = jax.tree.map(np.array, nnx.state(layer.router, nnx.Param))
    for a, b in zip(jax.tree.leaves(frozen0), jax.tree.leaves(frozen1), strict=True):
        assert a.tobytes() == b.tobytes()  # bit-identical
    for a, b in zip(jax.tree.leaves(param0), jax.tree.leaves(param1), strict=True):
        assert np.abs(a - b).max() > 1e-4  # every trainable router array moved
    n_frozen = len(jax.tree.leaves(frozen0))
    n_param = len(jax.tree.leaves(param0))
    assert (n_frozen, n_param) == {"hyper": (4, 1), "random": (2, 0), "linear": (0, 2)}[router]
    assert float(loss(layer)) < float(loss(SparseMoE(D, 16, E, 2, router=router, impl="dense",
                                                     expert_dropout=0.0, rngs=nnx.Rngs(0))))


@pytest.mark.parametrize("router", ["hyper", "random", "linear"])
def test_same_seed_same_weights_other_seed_different(router):
    def leaves(seed):
        m = SparseMoE(D, 16, E, 2, router=router, rngs=nnx.Rngs(seed))
        return [np.asarray(v) for v in jax.tree.leaves(nnx.state(m))
                if not jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key)]

    a, b, c = leaves(7), leaves(7), leaves(8)
    assert all(u.tobytes() == v.tobytes() for u, v in zip(a, b, strict=True))
    assert any(np.abs(u - v).max() > 0 for u, v in zip(a, c, strict=True) if u.size > 1)


def test_models_differing_only_in_router_share_expert_weights():
    a = SparseMoE(D, 16, E, 2, router="hyper", rngs=nnx.Rngs(4))
    b = SparseMoE(D, 16, E, 2, router="linear", rngs=nnx.Rngs(4))
    np.testing.assert_array_equal(a.experts.w_in[...], b.experts.w_in[...])


def test_router_errors():
    with pytest.raises(ValueError, match="d_model"):
        HyperRouter(D, E, rngs=nnx.Rngs(0))(jnp.ones((3, D + 1)))
    with pytest.raises(ValueError, match="n_experts"):
        LinearRouter(D, 0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="embed_dim"):
        HyperRouter(D, E, embed_dim=0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="router"):
        SparseMoE(D, 16, E, 2, router="softmax", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="router"):
        SparseMoE(D, 16, E, 2, router=LinearRouter(D, E + 1, rngs=nnx.Rngs(0)),
                  rngs=nnx.Rngs(0))


def test_router_kwargs_reach_the_hyper_router():
    layer = SparseMoE(D, 16, E, 2, router="hyper", rngs=nnx.Rngs(0),
                      router_kwargs={"hyper_hidden": 7, "init_std": 0.5})
    assert layer.router.w1.shape == (D, 7)
    assert 0.3 < float(jnp.std(layer.router.w2[...])) < 0.7
    with pytest.raises(TypeError):
        SparseMoE(D, 16, E, 2, router="linear", rngs=nnx.Rngs(0), router_kwargs={"x": 1})
