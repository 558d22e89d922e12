"""Accelerator dispatch path (ragged_dot, forced on CPU with kernel="ragged") under vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bayesmoe.nn import SparseMoE
from bayesmoe.nn import dispatch as dp

D, F, E, B, S = 8, 12, 6, 3, 11


def _layer(seed=0, kernel="ragged", impl="sorted"):
    return SparseMoE(D, F, E, 2, router="hyper", impl=impl, kernel=kernel,
                     expert_dropout=0.0, rngs=nnx.Rngs(seed))


def _x():
    return jax.random.normal(jax.random.key(1), (B, S, D))


def test_raw_ragged_dot_cannot_be_vmapped_with_shared_weights():
    """Why grouped_matmul exists: ragged_dot's batching rule needs every operand batched."""
    lhs, rhs = jnp.ones((B, 4, D)), jnp.ones((E, D, F))
    gs = jnp.full((B, E), 0, jnp.int32).at[:, 0].set(4)
    with pytest.raises(NotImplementedError):
        jax.vmap(lambda a, g: jax.lax.ragged_dot(a, rhs, g))(lhs, gs)
    y = jax.vmap(lambda a, g: dp.grouped_matmul(a, rhs, g))(lhs, gs)
    np.testing.assert_allclose(y, np.full((B, 4, F), float(D)), rtol=1e-6)


@pytest.mark.parametrize("impl,kernel", [("sorted", "ragged"), ("sorted", "blocked"),
                                         ("capacity", "einsum")])
def test_vmapped_layer_equals_a_loop_over_the_batch(impl, kernel):
    layer, x = _layer(kernel=kernel, impl=impl), _x()
    cot = jax.random.normal(jax.random.key(2), x.shape)

    @nnx.jit
    def vmapped(m, xx):
        def loss(mm, xv):
            y = nnx.vmap(lambda m2, v: m2(v)[0], in_axes=(None, 0))(mm, xv)
            return jnp.sum(y * cot), y
        (_, y), g = nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True)(m, xx)
        return y, g

    @nnx.jit
    def one(m, xb, cb):
        def loss(mm, xv):
            return jnp.sum(mm(xv)[0] * cb)
        return m(xb)[0], nnx.grad(loss, argnums=(0, 1))(m, xb)

    y, (gm, gx) = vmapped(layer, x)
    loop = [one(layer, x[b], cot[b]) for b in range(B)]
    np.testing.assert_allclose(y, np.stack([o[0] for o in loop]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gx, np.stack([o[1][1] for o in loop]), rtol=1e-4, atol=1e-6)
    loop_gm = jax.tree.map(lambda *a: sum(a), *[o[1][0] for o in loop])
    for u, v in zip(jax.tree.leaves(gm), jax.tree.leaves(loop_gm), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(v).max()))


def test_vmap_over_a_stack_of_layers_with_their_own_weights():
    """Batched expert weights (an ensemble / stacked layers): B E groups in one ragged_dot."""
    layers = [_layer(seed) for seed in range(B)]
    graphdef = nnx.graphdef(layers[0])
    parts = [nnx.split(m, nnx.Param, ...)[1:] for m in layers]
    params, others = (jax.tree.map(lambda *a: jnp.stack(a), *[p[i] for p in parts])
                      for i in (0, 1))
    x = _x()

    def f(ps):
        return jax.vmap(lambda p, o, xx: nnx.merge(graphdef, p, o)(xx)[0])(ps, others, x)

    y = jax.jit(f)(params)
    ref = np.stack([np.asarray(layers[b](x[b])[0]) for b in range(B)])
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    grads = jax.jit(jax.grad(lambda ps: jnp.sum(jnp.sin(f(ps)))))(params)
    for b in range(B):
        g_b = nnx.grad(lambda m, bb=b: jnp.sum(jnp.sin(m(x[bb])[0])))(layers[b])
        for name in ("w_in", "w_out"):
            np.testing.assert_allclose(grads["experts"][name][...][b],
                                       g_b["experts"][name][...], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(grads["router"]["embedding"][...][b],
                                   g_b["router"]["embedding"][...], rtol=1e-4, atol=1e-6)


def test_default_kernel_per_backend():
    from bayesmoe.nn.layer import default_kernel

    assert [default_kernel("sorted", b) for b in ("cpu", "gpu", "tpu")] == [
        "blocked", "ragged", "ragged"]
    assert [default_kernel("capacity", b) for b in ("cpu", "gpu", "tpu")] == [
        "gather", "gather", "einsum"]
