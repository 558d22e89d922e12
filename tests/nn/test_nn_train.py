"""Training loop: k schedule, BPC against a direct computation, the --quick example,
checkpoint resume."""

import json
import math
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from bayesmoe.nn import TrainConfig, TransformerLM, evaluate_bpc, k_schedule, train
from bayesmoe.nn.data import bundled_text, encode, eval_windows, split

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _tiny_lm(router="hyper", seed=0, **kw):
    kw = {"d_model": 16, "n_heads": 2, "n_layers": 2, "d_ff": 16, "n_experts": 4, "top_k": 2,
          "max_len": 16, "impl": "dense", "dropout": 0.0, **kw}
    return TransformerLM(30, router=router, rngs=nnx.Rngs(seed), **kw)


# one training configuration shared by the tests below, so their jitted steps are reused
BASE = dict(steps=6, batch_size=2, seq_len=16, learning_rate=3e-3, clip_norm=0.25, log_every=1,
            progress=False, k_min=1, k_max=2)


def _ids(n=4000):
    return np.random.default_rng(0).integers(0, 30, size=n).astype(np.int32)


def test_k_schedule_grows_linearly_with_equal_shares():
    ks = [k_schedule(s, 900, 8, 16) for s in range(900)]
    assert ks[0] == 8 and ks[-1] == 16 and k_schedule(900, 900, 8, 16) == 16
    assert all(b - a in (0, 1) for a, b in zip(ks, ks[1:], strict=False))
    assert [ks.count(k) for k in range(8, 17)] == [100] * 9
    assert [k_schedule(s, 10, 2, 2) for s in range(10)] == [2] * 10
    with pytest.raises(ValueError, match="k_min"):
        k_schedule(0, 10, 3, 2)


def test_bundled_text_is_real_english():
    ids, vocab = encode(bundled_text())
    assert len(ids) > 400_000 and 60 < len(vocab) < 256
    train_ids, va, te = split(ids)
    assert len(train_ids) + len(va) + len(te) == len(ids) and len(te) == int(0.05 * len(ids))
    assert b" the " in bundled_text()[:20000]


def test_evaluate_bpc_matches_direct_computation():
    model = _tiny_lm()
    data = _ids(300)
    res = evaluate_bpc(model, data, [1, 4], seq_len=16, batch_size=4)  # 18 windows: padded
    win = eval_windows(data, 16)
    assert res["tokens"] == len(win) * 16 == 18 * 16
    model.eval()
    forward = nnx.jit(lambda m, t, k: m(t, top_k=k)[0], static_argnums=2)
    for k in (1, 4):
        logits = forward(model, win[:, :-1], k)
        logp = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1))
        nll = -np.take_along_axis(logp, win[:, 1:, None], axis=-1).mean()
        np.testing.assert_allclose(res["bpc"][k], nll / math.log(2), rtol=1e-5)
    assert res["bpc"][1] != res["bpc"][4]


def test_hyper_lm_trains_only_embed_dim_router_numbers_per_layer():
    model = _tiny_lm()
    routers = nnx.List([m.router for m in model.moe_layers()])
    n = sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(routers, nnx.Param)))
    assert n == 2 * 16


def test_train_step_matches_a_hand_written_adam_step():
    """One step of train() (k = 1): Adam on clipped grads, cosine-decayed lr, done directly."""
    cfg = TrainConfig(**BASE, stop_at=1)
    model, ref = _tiny_lm(), _tiny_lm()
    data = _ids()
    train(model, data, cfg)
    from bayesmoe.nn.data import sample_windows
    from bayesmoe.nn.train import lm_loss

    batch = sample_windows(data, 2, 16, 0, 0)
    grads = nnx.jit(nnx.grad(lambda m: lm_loss(m, batch, 1)[0]))(ref)
    params = nnx.state(ref, nnx.Param)
    tx = optax.chain(optax.clip_by_global_norm(0.25),
                     optax.adam(optax.cosine_decay_schedule(3e-3, 6)))
    upd, _ = tx.update(grads, tx.init(params), params)
    expected = optax.apply_updates(params, upd)
    got = nnx.state(model, nnx.Param)
    n = 0
    for (path, a), (_, b) in zip(nnx.to_flat_state(got), nnx.to_flat_state(expected),
                                 strict=True):
        if path[-2:] == ("key", "bias"):
            continue  # softmax is shift-invariant: its gradient is round-off, Adam amplifies it
        np.testing.assert_allclose(a[...], b[...], rtol=1e-5, atol=5e-6, err_msg=str(path))
        n += 1
    assert n > 30


def test_checkpoint_resume_continues_with_the_same_losses(tmp_path):
    data = _ids()
    base = BASE
    full = train(_tiny_lm(), data, TrainConfig(**base))["history"]
    ck = str(tmp_path / "ck")
    part = train(_tiny_lm(), data, TrainConfig(**base, checkpoint_dir=ck, checkpoint_every=2,
                                               stop_at=3))
    assert [h["step"] for h in part["history"]] == [1, 2, 3] and part["step"] == 3
    resumed = train(_tiny_lm(), data, TrainConfig(**base, checkpoint_dir=ck,
                                                  checkpoint_every=2))["history"]
    assert [h["step"] for h in resumed] == [1, 2, 3, 4, 5, 6]
    assert [h["k"] for h in resumed] == [h["k"] for h in full] == [1, 1, 1, 2, 2, 2]
    np.testing.assert_allclose([h["loss"] for h in resumed], [h["loss"] for h in full],
                               rtol=1e-5)
    assert full[0]["loss"] != full[-1]["loss"]


def test_quick_example_decreases_the_loss(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import hyperrouter_charlm

    out = tmp_path / "hr"
    res = hyperrouter_charlm.main(["--quick", "--routers", "hyper", "--out", str(out),
                                   "--no-progress", "--steps", "80"])
    (run,) = res["runs"]
    hist = run["history"]
    first, last = np.mean([h["ce"] for h in hist[:2]]), np.mean([h["ce"] for h in hist[-2:]])
    assert last < first - 1.0, (first, last)
    vocab = json.loads((out / "results.json").read_text())["args"]["vocab"]
    assert max(run["test"]["bpc"].values()) < 0.75 * math.log2(vocab)  # well below uniform
    assert run["trainable_router_params"] == 2 * 32
    assert (out / "hyperrouter_bpc.png").stat().st_size > 10_000
    assert "HyperRouter" in (out / "table.md").read_text()
    sys.modules.pop("hyperrouter_charlm", None)
