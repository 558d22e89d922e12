"""Run in a subprocess with 4 host devices (see test_nn_sharding.py); prints JSON."""

import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bayesmoe.nn import SparseMoE, TrainConfig, TransformerLM, make_mesh, shard_layer, train
from bayesmoe.nn.data import encode, load_bytes, split


def main() -> None:
    out = {"n_devices": len(jax.devices())}
    mesh = make_mesh(n_data=2, n_expert=2)
    x = jax.random.normal(jax.random.key(0), (4, 16, 16))
    fwd = nnx.jit(lambda m, xx: m(xx)[0])
    for impl in ("dense", "sorted", "capacity"):
        ref = SparseMoE(16, 32, 4, 2, router="hyper", impl=impl, expert_dropout=0.0,
                        rngs=nnx.Rngs(0))
        y_ref = np.asarray(fwd(ref, x))
        layer = shard_layer(SparseMoE(16, 32, 4, 2, router="hyper", impl=impl,
                                      expert_dropout=0.0, rngs=nnx.Rngs(0)), mesh)
        xs = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
            "data")))
        with jax.sharding.set_mesh(mesh):
            y = fwd(layer, xs)
        out[impl] = {
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
                              max_len=16, dropout=0.0, rngs=nnx.Rngs(0))
        hist = train(model, train_ids, cfg, mesh=m)["history"]
        losses[name] = [h["loss"] for h in hist]
        if m is not None:
            out["lm_expert_spec"] = str(model.blocks[0].ffn.experts.w_out[...].sharding.spec)
    out["train_losses"] = losses
    out["jnp_ok"] = bool(jnp.isfinite(jnp.asarray(losses["mesh"])).all())
    print("RESULT" + json.dumps(out))


if __name__ == "__main__":
    main()
