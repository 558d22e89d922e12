"""Run in a subprocess with 4 host devices (see test_nn_sharding.py); prints JSON."""

import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from bayesmoe.nn import SparseMoE, TrainConfig, TransformerLM, make_mesh, shard_layer, train
from bayesmoe.nn.data import encode, load_bytes, split

D, F, E, K = 32, 64, 8, 2


def _flops(jitted, *args) -> float:
    cost = jitted.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


def _on_mesh(x, mesh):
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))


def _parallel_checks(out):
    """shard_map routing per device: values, per-device FLOPs, expert weights per device."""
    x = jax.random.normal(jax.random.key(0), (16, 128, D))  # 2048 tokens
    fwd = nnx.jit(lambda m, xx: m(xx)[0])
    cot = jax.random.normal(jax.random.key(1), x.shape)
    step = nnx.jit(lambda m, xx: nnx.grad(lambda mm: jnp.sum(mm(xx)[0] * cot))(m))
    for impl, kw in (("sorted", {"block_size": 16}), ("capacity", {"capacity_factor": 8.0}),
                     ("dense", {})):
        def make(impl=impl, kw=kw):
            return SparseMoE(D, F, E, K, router="hyper", impl=impl, expert_dropout=0.0,
                             rngs=nnx.Rngs(0), **kw)

        ref = make()
        y_ref, g_ref = np.asarray(fwd(ref, x)), step(ref, x)
        f1, f1_grad = _flops(fwd, ref, x), _flops(step, ref, x)
        for n_data, n_expert in ((4, 1), (1, 4)) if impl != "capacity" else ((4, 1), (2, 2),
                                                                            (1, 4)):
            mesh = make_mesh(n_data=n_data, n_expert=n_expert)
            layer = shard_layer(make(), mesh)
            xs = _on_mesh(x, mesh)
            with jax.sharding.set_mesh(mesh):
                y, grads = fwd(layer, xs), step(layer, xs)
                ratio = _flops(fwd, layer, xs) / f1
                ratio_grad = _flops(step, layer, xs) / f1_grad
            w_in = layer.experts.w_in[...]
            out[f"par_{impl}_{n_data}x{n_expert}"] = {
                "max_abs_diff": float(np.abs(np.asarray(y) - y_ref).max()),
                "grad_max_rel_diff": max(
                    float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(b).max())
                    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(g_ref),
                                    strict=True)),
                "flops_ratio": ratio, "flops_ratio_grad": ratio_grad,
                "w_in_shard_shapes": sorted({tuple(s.data.shape) for s in w_in.addressable_shards}),
                "w_in_devices": len(w_in.sharding.device_set),
            }
    # capacity is per device: with drops, the sharded layer equals the single-device layer
    # applied to each device's tokens (rows split in device order)
    for n_data, n_expert in ((4, 1), (2, 2)):
        ref = SparseMoE(D, F, E, K, router="linear", impl="capacity", capacity_factor=1.0,
                        expert_dropout=0.0, rngs=nnx.Rngs(0))
        xt = x[:8].reshape(-1, D)
        chunks = np.split(np.asarray(xt), 4)
        y_loop = np.concatenate([np.asarray(ref(jnp.asarray(c))[0]) for c in chunks])
        dropped_loop = np.mean([float(ref(jnp.asarray(c))[1].dropped) for c in chunks])
        mesh = make_mesh(n_data=n_data, n_expert=n_expert)
        layer = shard_layer(SparseMoE(D, F, E, K, router="linear", impl="capacity",
                                      capacity_factor=1.0, expert_dropout=0.0,
                                      rngs=nnx.Rngs(0)), mesh)
        with jax.sharding.set_mesh(mesh):
            y, aux = nnx.jit(lambda m, xx: m(xx))(layer, _on_mesh(xt, mesh))
        out[f"capacity_per_device_{n_data}x{n_expert}"] = {
            "max_abs_diff": float(np.abs(np.asarray(y) - y_loop).max()),
            "dropped": float(aux.dropped), "dropped_loop": float(dropped_loop),
        }


def main() -> None:
    out = {"n_devices": len(jax.devices())}
    mesh = make_mesh(n_data=2, n_expert=2)
    x = jax.random.normal(jax.random.key(0), (4, 16, 16))
    fwd = nnx.jit(lambda m, xx: m(xx)[0])
    for impl in ("dense", "sorted", "capacity"):
        for parallel in (True, False) if impl == "capacity" else (True,):
            def make(impl=impl, parallel=parallel):
                return SparseMoE(16, 32, 4, 2, router="hyper", impl=impl, expert_dropout=0.0,
                                 capacity_factor=4.0, parallel=parallel, rngs=nnx.Rngs(0))

            y_ref = np.asarray(fwd(make(), x))
            layer = shard_layer(make(), mesh)
            with jax.sharding.set_mesh(mesh):
                y = fwd(layer, _on_mesh(x, mesh))
            out[f"{impl}_{'shard_map' if parallel else 'gspmd'}"] = {
                "max_abs_diff": float(np.abs(np.asarray(y) - y_ref).max()),
                "w_in_spec": str(layer.experts.w_in[...].sharding.spec),
                "w_in_shard_shape": list(layer.experts.w_in[...].addressable_shards[0].data.shape),
                "embedding_spec": str(layer.router.embedding[...].sharding.spec),
                "y_devices": len(y.sharding.device_set),
            }
    ids, vocab = encode(load_bytes())
    train_ids = split(ids)[0][:20000]
    cfg = TrainConfig(steps=3, batch_size=4, seq_len=16, learning_rate=1e-3, log_every=1,
                      progress=False)
    losses = {}
    for name, m in (("single", None), ("mesh", mesh)):
        model = TransformerLM(len(vocab), 16, 2, 2, 32, 4, 2, router="hyper", impl="capacity",
                              max_len=16, dropout=0.0, moe_kwargs={"capacity_factor": 4.0},
                              rngs=nnx.Rngs(0))
        hist = train(model, train_ids, cfg, mesh=m)["history"]
        losses[name] = [h["loss"] for h in hist]
        if m is not None:
            out["lm_expert_spec"] = str(model.blocks[0].ffn.experts.w_out[...].sharding.spec)
    out["train_losses"] = losses
    # expert dropout inside shard_map: one key per device, active in training mode only
    layer = shard_layer(SparseMoE(16, 32, 4, 2, router="hyper", impl="capacity",
                                  capacity_factor=4.0, expert_dropout=0.5,
                                  rngs=nnx.Rngs(0)), mesh)
    with jax.sharding.set_mesh(mesh):
        y_train = fwd(layer, _on_mesh(x, mesh))
        layer.eval()
        y_eval = fwd(layer, _on_mesh(x, mesh))
    out["dropout_train_eval_diff"] = float(np.abs(np.asarray(y_train - y_eval)).max())
    out["dropout_finite"] = bool(np.isfinite(np.asarray(y_train)).all())
    _parallel_checks(out)
    print("RESULT" + json.dumps(out))


if __name__ == "__main__":
    main()
