"""Transformer-XL: relative attention against numpy, segment memory against the
concatenated context, no gradient into the memory, bf16 compute, memory-backed BPC."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from nn_reference import softmax

from bayesmoe.nn.transformer_xl import (
    RelPartialAttention,
    TransformerXL,
    evaluate_xl_bpc,
    segment_streams,
    sinusoid,
    xl_loss,
)

V, L = 23, 8


def _model(mem_len=L, **kw):
    kw = {"d_model": 16, "n_heads": 2, "n_layers": 2, "d_ff": 16, "n_experts": 4, "top_k": 2,
          "impl": "dense", "mem_len": mem_len, "dropout": 0.1, **kw}
    m = TransformerXL(V, rngs=nnx.Rngs(0), **kw)
    m.eval()
    return m


def _tokens(n=2 * L + 1, b=2, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, V, size=(b, n)), jnp.int32)


def _nll(logits, targets):
    return np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, targets))


def test_relative_attention_matches_numpy():
    d, h, dh, b, s, m = 8, 2, 3, 2, 5, 4
    att = RelPartialAttention(d, h, dh, 0.0, 0.0, init_std=0.3, dtype=jnp.float32,
                              rngs=nnx.Rngs(1))
    rng = np.random.default_rng(2)
    x, mem = rng.normal(size=(b, s, d)), rng.normal(size=(b, m, d))
    u, v = rng.normal(size=(h, dh)), rng.normal(size=(h, dh))
    mask = np.tril(np.ones((s, m + s), bool), k=m)
    pos = np.asarray(sinusoid(jnp.arange(m + s), d), np.float64)
    y = att(*(jnp.asarray(a, jnp.float32) for a in (x, mem, pos, u, v)), jnp.asarray(mask))
    wq, wr, wo = (np.asarray(a, np.float64) for a in (att.qkv.kernel[...], att.r_net.kernel[...],
                                                      att.out.kernel[...]))
    out = np.zeros((b, s, h * dh))
    for bb in range(b):
        cat = np.concatenate([mem[bb], x[bb]])
        q, k, val = np.split(cat @ wq, 3, axis=-1)
        for hh in range(h):
            sl = slice(hh * dh, (hh + 1) * dh)
            score = np.full((s, m + s), -np.inf)
            for i in range(s):
                for j in range(m + s):
                    if mask[i, j]:
                        r = pos[m + i - j] @ wr[:, sl]  # R at distance (m + i) - j
                        score[i, j] = ((q[m + i, sl] + u[hh]) @ k[j, sl]
                                       + (q[m + i, sl] + v[hh]) @ r) / math.sqrt(dh)
            out[bb, :, sl] = softmax(score) @ val[:, sl]
    z = x + out @ wo
    ref = (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mem_len", [L, 5])
def test_segment_with_memory_equals_the_concatenated_context(mem_len):
    """Loss of segment 2 given segment 1's memory = loss of the same tokens computed on
    [segment 1 ; segment 2] in one pass, with attention restricted to the same span
    (segment-2 queries see keys from position L - mem_len on; segment 1 is causal)."""
    model, tok = _model(mem_len, init_std=0.3), _tokens()  # sharp attention: spans matter
    seg1, seg2, tgt2 = tok[:, :L], tok[:, L:2 * L], tok[:, L + 1:]
    memory = model.init_memory(2)
    _, memory, _ = model(seg1, memory)
    assert int(memory.length) == mem_len
    logits2, _, _ = model(seg2, memory)
    i, j = np.arange(2 * L)[:, None], np.arange(2 * L)[None, :]
    mask = (j <= i) & ((i < L) | (j >= L - mem_len))
    logits_c, _, _ = model(tok[:, :2 * L], None, attn_mask=jnp.asarray(mask))
    np.testing.assert_allclose(logits2, logits_c[:, L:], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_nll(logits2, tgt2).mean(), _nll(logits_c[:, L:], tgt2).mean(),
                               rtol=1e-6)
    if mem_len < L:  # the span restriction matters: full causal context differs
        full, _, _ = model(tok[:, :2 * L])
        assert np.abs(np.asarray(full[:, L:] - logits2)).max() > 1e-2


def test_no_gradient_flows_into_the_memory():
    model, tok = _model(init_std=0.3), _tokens()  # eval mode: deterministic
    seg1, seg2, tgt2 = tok[:, :L], tok[:, L:2 * L], tok[:, L + 1:]
    const_memory = model(seg1, model.init_memory(2))[1]

    def through_memory(m):  # the memory is built inside the differentiated function
        memory = m(seg1, m.init_memory(2))[1]
        return xl_loss(m, seg2, tgt2, memory, None)[0]

    def constant_memory(m):
        return xl_loss(m, seg2, tgt2, const_memory, None)[0]

    g1, g2 = nnx.grad(through_memory)(model), nnx.grad(constant_memory)(model)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        b = np.asarray(b)  # float32 round-off only (a gradient path would be O(|b|))
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max() + 1e-9)
    # the memory is used (its gradient as an input is not zero) but the new memory is cut
    g_mem = jax.grad(lambda st: xl_loss(model, seg2, tgt2, const_memory._replace(states=st),
                                        None)[0])(const_memory.states)
    assert max(float(jnp.abs(g).max()) for g in g_mem) > 1e-3
    g_new = jax.grad(lambda st: sum(jnp.sum(s) for s in model(
        seg2, const_memory._replace(states=st))[1].states))(const_memory.states)
    assert max(float(jnp.abs(g).max()) for g in g_new) == 0.0


def test_memory_backed_bpc_equals_one_pass_over_the_whole_stream():
    model = _model(mem_len=4 * L)
    data = np.asarray(_tokens(n=4 * L + 1, b=1)[0])
    res = evaluate_xl_bpc(model, data, [1, 2], tgt_len=L, mem_len=4 * L)
    assert res["tokens"] == 4 * L
    model.eval()  # evaluate_xl_bpc leaves the model in training mode
    for k in (1, 2):
        logits, _, aux = model(jnp.asarray(data[None, :-1]), None, top_k=k)
        ref = _nll(logits, data[None, 1:]).sum() / (4 * L * math.log(2))
        np.testing.assert_allclose(res["bpc"][k], ref, rtol=1e-5)
        # router entropy per layer: the mean over 4 equal segments = the one-pass mean
        assert aux.layer_entropy.shape == (2,)
        np.testing.assert_allclose(res["layer_entropy"][k], aux.layer_entropy, rtol=1e-5)
        np.testing.assert_allclose(res["entropy"][k], float(aux.entropy), rtol=1e-5)


def test_bf16_compute_keeps_f32_master_weights_and_router():
    m32, m16 = _model(), _model(compute_dtype=jnp.bfloat16)
    tok = _tokens()
    l32, _, _ = m32(tok[:, :L], m32.init_memory(2))
    l16, mem16, _ = m16(tok[:, :L], m16.init_memory(2))
    assert l16.dtype == jnp.float32 and mem16.states[0].dtype == jnp.bfloat16
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(m16, nnx.Param)))
    assert m16.blocks[0].ffn.router(mem16.states[1][0]).dtype == jnp.float32
    p32, p16 = jax.nn.softmax(l32), jax.nn.softmax(l16)
    assert float(jnp.abs(p32 - p16).max()) < 0.02  # bf16 round-off only


def test_segment_streams_and_errors():
    s = segment_streams(np.arange(23), 3)
    np.testing.assert_array_equal(s, np.arange(21).reshape(3, 7))
    with pytest.raises(ValueError, match="data"):
        segment_streams(np.arange(3), 3)
    with pytest.raises(ValueError, match="mem_len"):
        TransformerXL(V, 16, 2, mem_len=-1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="n_heads"):
        TransformerXL(V, 16, 3, rngs=nnx.Rngs(0))
    model = _model()
    with pytest.raises(ValueError, match="attn_mask"):
        model(_tokens()[:, :L], None, attn_mask=jnp.ones((L, L + 1), bool))


def test_reference_k_schedule_rounds_half_to_even():
    from bayesmoe.nn.train import k_schedule_reference

    steps = np.arange(160)
    ks = [k_schedule_reference(int(s), 160, 8, 16) for s in steps]
    np.testing.assert_array_equal(ks, np.clip(np.round(8 * steps / 160) + 8, 8, 16))
    counts = np.bincount(ks, minlength=17)[8:]
    assert counts[0] == 11 and counts[-1] == 10 and counts[1:-1].min() >= 19  # ends: half


def test_train_xl_keeps_the_best_validation_state():
    from bayesmoe.nn.transformer_xl import XLTrainConfig, train_xl

    rng = np.random.default_rng(0)
    period = rng.integers(0, V, size=7)
    data = np.tile(period, 200)  # a learnable periodic stream
    model = _model(mem_len=L, dropout=0.0)
    cfg = XLTrainConfig(steps=12, batch_size=2, tgt_len=L, eval_tgt_len=L, eval_mem_len=L,
                        eval_batch_size=1, learning_rate=1e-2, k_min=1, k_max=2, log_every=1,
                        eval_every=4, eval_max_tokens=8 * L, progress=False)
    res = train_xl(model, data[:1000], cfg, valid_data=data[1000:])
    assert [v["step"] for v in res["valid"]] == [4, 8, 12]
    assert res["best_valid_bpc"] == min(v["bpc"] for v in res["valid"])
    again = evaluate_xl_bpc(model, data[1000:], [2], tgt_len=L, mem_len=L, batch_size=1,
                            max_tokens=8 * L)
    np.testing.assert_allclose(again["bpc"][2], res["best_valid_bpc"], rtol=1e-5)
    assert res["best_valid_bpc"] < 0.7 * math.log2(V)  # it learned the period
    assert [h["k"] for h in res["history"]][:2] == [1, 1] and res["history"][-1]["k"] == 2
