"""Transformer-XL with a SparseMoE feed-forward in every layer (the HyperRouter backbone).

Dai et al. 2019, "Transformer-XL: Attentive Language Models Beyond a Fixed-Length Context",
arXiv 1901.02860, as used by SMoE-Dropout (arXiv 2303.01610) and HyperRouter (arXiv
2312.07035, Sec. 4.1) for enwik8:

* **Segment-level recurrence.** Layer l attends over ``[m^l ; h^l]``: the cached inputs
  ``m^l`` of that layer for the last ``mem_len`` positions of earlier segments (under
  ``stop_gradient``: no gradient flows into the memory), then the current segment.
* **Relative positions** (Sec. 3.3): for query i and key j at distance ``delta = i - j``,
  ``score_ij = (q_i + u)^T k_j + (q_i + v)^T W_r R_delta`` with sinusoidal ``R`` and the
  learned global biases ``u``, ``v`` (one (heads, d_head) pair shared by all layers, as
  the reference's default), scaled by ``1 / sqrt(d_head)``.
* **Post-LN** blocks: ``h = LN(x + Drop(Attn(x)))``, ``y = LN(h + Drop(MoE(h)))``; dropout
  on the embeddings, on ``R`` and before the output layer; optional attention dropout.
* Embeddings scaled by ``sqrt(d_model)``, tied with the output layer (plus a bias); every
  weight N(0, ``init_std`` = 0.02^2), LayerNorm scales 1, biases 0.

The memory is a :class:`XLMemory` of fixed shape (B, mem_len, d) per layer plus the number
of valid trailing positions, so one compiled step serves every segment (the reference
grows its memory from empty; invalid positions are masked instead here, with the same
values). ``compute_dtype=jnp.bfloat16`` runs attention and experts in bf16 with float32
master weights, LayerNorm, softmax, router and logits.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from bayesmoe.nn.layer import SparseMoE
from bayesmoe.nn.losses import MoEAux, merge_aux

Array = jax.Array


class XLMemory(NamedTuple):
    """The cached states of a Transformer-XL.

    :ivar states: per-layer cached inputs, ``states[l]`` of shape (B, M, d).
    :ivar length: how many of the M trailing positions hold real states (the rest are masked
        out).
    """

    states: tuple[Array, ...]
    length: Array


def sinusoid(distances: Array, d_model: int) -> Array:
    """``R_delta = [sin(delta w), cos(delta w)]``, ``w_i = 10000^(-2i/d)`` (Vaswani et al.)."""
    inv_freq = 1.0 / (10000.0 ** (jnp.arange(0, d_model, 2, dtype=jnp.float32) / d_model))
    ang = distances.astype(jnp.float32)[:, None] * inv_freq[None, :]
    return jnp.concatenate([jnp.sin(ang), jnp.cos(ang)], axis=-1)


def causal_xl_mask(seg_len: int, mem_len: int, mem_valid: Array | int) -> Array:
    """Boolean (S, M + S): query i sees the valid memory and keys j <= i of its segment."""
    j = jnp.arange(mem_len + seg_len)[None, :]
    i = jnp.arange(seg_len)[:, None]
    return (j <= mem_len + i) & (j >= mem_len - mem_valid)


class RelPartialAttention(nnx.Module):
    """Multi-head attention with Transformer-XL relative positions (post-LN)."""

    def __init__(self, d_model: int, n_heads: int, d_head: int, dropout: float,
                 dropatt: float, *, init_std: float, dtype, rngs: nnx.Rngs):
        init = nnx.initializers.normal(init_std)
        kw = {"use_bias": False, "kernel_init": init, "dtype": dtype, "rngs": rngs}
        self.n_heads, self.d_head = n_heads, d_head
        self.qkv = nnx.Linear(d_model, 3 * n_heads * d_head, **kw)
        self.r_net = nnx.Linear(d_model, n_heads * d_head, **kw)
        self.out = nnx.Linear(n_heads * d_head, d_model, **kw)
        self.ln = nnx.LayerNorm(d_model, scale_init=nnx.initializers.ones, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)
        self.dropatt = nnx.Dropout(dropatt, rngs=rngs)

    def __call__(self, h: Array, mem: Array, pos: Array, u: Array, v: Array,
                 mask: Array) -> Array:
        """h (B, S, d), mem (B, M, d), pos (M + S, d) for distances 0..M+S-1, mask (S, M+S)."""
        b, s, _ = h.shape
        m = mem.shape[1]
        cat = jnp.concatenate([mem.astype(h.dtype), h], axis=1)
        q, k, val = jnp.split(self.qkv(cat), 3, axis=-1)
        shape = (b, m + s, self.n_heads, self.d_head)
        q, k, val = (a.reshape(shape) for a in (q, k, val))
        q = q[:, m:]
        rk = self.r_net(pos.astype(h.dtype)).reshape(m + s, self.n_heads, self.d_head)
        ac = jnp.einsum("bihd,bjhd->bhij", q + u.astype(q.dtype), k)
        bd_dist = jnp.einsum("bihd,rhd->bhir", q + v.astype(q.dtype), rk)
        # key j of query i is at distance m + i - j (the reference's "rel_shift")
        dist = jnp.clip(m + jnp.arange(s)[:, None] - jnp.arange(m + s)[None, :], 0, m + s - 1)
        bd = jnp.take_along_axis(bd_dist, jnp.broadcast_to(dist, bd_dist.shape), axis=-1)
        score = (ac.astype(jnp.float32) + bd.astype(jnp.float32)) / math.sqrt(self.d_head)
        score = jnp.where(mask[None, None], score, -1e30)
        prob = self.dropatt(jax.nn.softmax(score, axis=-1)).astype(h.dtype)
        o = jnp.einsum("bhij,bjhd->bihd", prob, val).reshape(b, s, -1)
        return self.ln((h + self.drop(self.out(o))).astype(jnp.float32)).astype(h.dtype)


class XLBlock(nnx.Module):
    """Relative attention, then a post-LN SparseMoE feed-forward."""

    def __init__(self, d_model, n_heads, d_head, moe: SparseMoE, dropout, dropatt, *,
                 init_std, dtype, rngs):
        self.attn = RelPartialAttention(d_model, n_heads, d_head, dropout, dropatt,
                                        init_std=init_std, dtype=dtype, rngs=rngs)
        self.ffn = moe
        self.ln = nnx.LayerNorm(d_model, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, h, mem, pos, u, v, mask, top_k):
        a = self.attn(h, mem, pos, u, v, mask)
        y, aux = self.ffn(a, top_k=top_k)
        return self.ln((a + self.drop(y)).astype(jnp.float32)).astype(h.dtype), aux


class TransformerXL(nnx.Module):
    """Transformer-XL language model with a SparseMoE FFN in every layer.

    ``model(tokens, memory)`` -> ``(logits (B, S, V) float32, new memory, MoEAux)``.

    :param vocab_size: number of token ids.
    :param d_model: token dimension d (256 in the reference enwik8 MoE runs).
    :param n_heads: attention heads (8 in the reference).
    :param d_head: width of each head (64 in the reference; default ``d_model // n_heads``).
    :param n_layers: number of layers (4 in the reference).
    :param d_ff: hidden width of each expert (512 in the reference).
    :param n_experts: number of experts E of every SparseMoE layer.
    :param top_k: default number of active experts per token.
    :param router: ``"linear"``, ``"random"``, ``"hyper"`` (see :class:`SparseMoE`).
    :param impl: dispatch implementation (see :class:`SparseMoE`).
    :param activation: expert activation (see :class:`SparseMoE`).
    :param mem_len: length of the cached memory per layer (512 in the reference).
    :param dropout: dropout rate on embeddings, R, residual branches, before the output and
        (unless ``moe_kwargs`` says otherwise) inside the experts.
    :param dropatt: dropout rate on attention weights.
    :param init_std: std of every weight matrix, the routers' included (0.02).
    :param compute_dtype: None (float32) or e.g. ``jnp.bfloat16`` for attention and experts.
    :param moe_kwargs: extra SparseMoE arguments (router_kwargs, expert_init_std, kernel, ...).
    :param rngs: the ``flax.nnx.Rngs`` the weights are initialised from (its ``params``
        stream, and its ``dropout`` stream for dropout).
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 256,
        n_heads: int = 8,
        n_layers: int = 4,
        d_ff: int = 512,
        n_experts: int = 16,
        top_k: int = 2,
        router: str = "hyper",
        impl: str = "sorted",
        activation: str = "relu",
        *,
        d_head: int | None = None,
        mem_len: int = 512,
        dropout: float = 0.1,
        dropatt: float = 0.0,
        init_std: float = 0.02,
        compute_dtype=None,
        moe_kwargs: dict | None = None,
        rngs: nnx.Rngs,
    ):
        for name, val in (("vocab_size", vocab_size), ("d_model", d_model),
                          ("n_heads", n_heads), ("n_layers", n_layers), ("d_ff", d_ff)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be a positive int, got {val!r}")
        if isinstance(mem_len, bool) or not isinstance(mem_len, int) or mem_len < 0:
            raise ValueError(f"mem_len must be an int >= 0, got {mem_len!r}")
        if d_head is None:
            if d_model % n_heads:
                raise ValueError(f"n_heads={n_heads} must divide d_model={d_model} "
                                 "(or give d_head)")
            d_head = d_model // n_heads
        self.vocab_size, self.d_model, self.mem_len = vocab_size, d_model, mem_len
        self.n_layers = n_layers
        self.dtype = jnp.float32 if compute_dtype is None else compute_dtype
        init = nnx.initializers.normal(init_std)
        self.embed = nnx.Embed(vocab_size, d_model, embedding_init=init, rngs=rngs)
        self.out_bias = nnx.Param(jnp.zeros((vocab_size,), jnp.float32))
        self.u = nnx.Param(init(rngs.params(), (n_heads, d_head)))
        self.v = nnx.Param(init(rngs.params(), (n_heads, d_head)))
        self.drop = nnx.Dropout(dropout, rngs=rngs)
        moe_kw = {"router_init_std": init_std, "expert_init_std": init_std,
                  "expert_dropout": dropout, **(moe_kwargs or {})}
        self.blocks = nnx.List([
            XLBlock(d_model, n_heads, d_head,
                    SparseMoE(d_model, d_ff, n_experts, top_k, router=router, impl=impl,
                              activation=activation, rngs=rngs, **moe_kw),
                    dropout, dropatt, init_std=init_std, dtype=self.dtype, rngs=rngs)
            for _ in range(n_layers)
        ])

    def moe_layers(self) -> list[SparseMoE]:
        """The SparseMoE modules, in layer order."""
        return [b.ffn for b in self.blocks]

    def init_memory(self, batch_size: int, mem_len: int | None = None) -> XLMemory:
        """An empty memory (all positions invalid) of ``mem_len`` (default: the model's).

        :param batch_size: B, the number of streams.
        :param mem_len: memory length M (None: the model's ``mem_len``).
        """
        m = self.mem_len if mem_len is None else int(mem_len)
        zeros = jnp.zeros((batch_size, m, self.d_model), self.dtype)
        return XLMemory(tuple(zeros for _ in range(self.n_layers)), jnp.zeros((), jnp.int32))

    def __call__(self, tokens: Array, memory: XLMemory | None = None,
                 top_k: int | None = None, *, attn_mask: Array | None = None
                 ) -> tuple[Array, XLMemory, MoEAux]:
        """Logits for ``tokens`` (B, S), the updated memory, and the merged MoEAux.

        ``attn_mask`` (S, M + S) boolean replaces the default mask (causal within the
        segment, valid memory only); tests use it to restrict a long context's span.
        """
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape (batch, seq), got {tokens.shape}")
        b, s = tokens.shape
        if memory is None:
            memory = self.init_memory(b, 0)
        if len(memory.states) != self.n_layers:
            raise ValueError(f"memory: {len(memory.states)} layers, expected {self.n_layers}")
        m = memory.states[0].shape[1]
        if memory.states[0].shape[0] != b:
            raise ValueError(f"memory: batch {memory.states[0].shape[0]} != tokens batch {b}")
        mask = causal_xl_mask(s, m, memory.length) if attn_mask is None else attn_mask
        if mask.shape != (s, m + s):
            raise ValueError(f"attn_mask must have shape {(s, m + s)}, got {mask.shape}")
        x = self.embed(tokens).astype(jnp.float32) * math.sqrt(self.d_model)
        h = self.drop(x).astype(self.dtype)
        pos = self.drop(sinusoid(jnp.arange(m + s), self.d_model))
        u, v = self.u[...], self.v[...]
        hids, auxes = [], []
        for block, mem in zip(self.blocks, memory.states, strict=True):
            hids.append(h)
            h, aux = block(h, mem, pos, u, v, mask, top_k)
            auxes.append(aux)
        h = self.drop(h).astype(jnp.float32)
        logits = h @ self.embed.embedding[...].astype(jnp.float32).T + self.out_bias[...]
        new = self._update_memory(memory, hids)
        return logits, new, merge_aux(auxes)

    def _update_memory(self, memory: XLMemory, hids: list[Array]) -> XLMemory:
        """Keep the last ``M`` positions of ``[memory ; segment inputs]`` per layer, under
        ``stop_gradient`` (the reference's ``detach``)."""
        m = memory.states[0].shape[1]
        s = hids[0].shape[1]
        if m == 0:
            return memory
        states = tuple(
            jax.lax.stop_gradient(jnp.concatenate([old.astype(hid.dtype), hid], axis=1)[:, -m:])
            for old, hid in zip(memory.states, hids, strict=True))
        return XLMemory(states, jnp.minimum(memory.length + s, m).astype(jnp.int32))


def segment_streams(data: np.ndarray, batch_size: int) -> np.ndarray:
    """The reference's ordered iterator: ``data`` cut into ``batch_size`` contiguous
    streams (rows) of equal length; segment t of a batch is columns [t L, (t+1) L]."""
    n = len(data) // batch_size
    if n < 2:
        raise ValueError(f"data: {len(data)} tokens are too few for batch_size={batch_size}")
    return np.asarray(data[: n * batch_size]).reshape(batch_size, n)


def xl_loss(model: TransformerXL, inputs: Array, targets: Array, memory: XLMemory,
            top_k: int | None):
    """Mean next-token cross-entropy (nats) of a segment given the memory, + aux loss."""
    logits, new_memory, aux = model(inputs, memory, top_k)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
    return ce + aux.loss, (ce, new_memory, aux)


@nnx.jit(static_argnames=("top_k",))
def xl_train_step(model: TransformerXL, optimizer: nnx.Optimizer, inputs: Array,
                  targets: Array, memory: XLMemory, top_k: int):
    """One optimizer step on a segment; returns (metrics, new memory)."""
    grad_fn = nnx.value_and_grad(lambda mdl: xl_loss(mdl, inputs, targets, memory, top_k),
                                 has_aux=True)
    (loss, (ce, new_memory, aux)), grads = grad_fn(model)
    optimizer.update(model, grads)
    return {"loss": loss, "ce": ce, "entropy": aux.entropy,
            "grad_norm": optax.tree.norm(grads)}, new_memory


@nnx.jit(static_argnames=("top_k",))
def _xl_eval_step(model, inputs, targets, memory, top_k):
    logits, new_memory, aux = model(inputs, memory, top_k)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(nll), new_memory, aux.layer_entropy


def evaluate_xl_bpc(model: TransformerXL, data: np.ndarray, ks, *, tgt_len: int = 128,
                    mem_len: int | None = None, batch_size: int = 1,
                    max_tokens: int | None = None) -> dict:
    """Bits per character of ``data`` at each k with memory: ``batch_size`` ordered
    streams scored in segments of ``tgt_len`` (the reference's ``eval_tgt_len``), each
    with the cached states of the previous ``mem_len`` positions (default: the model's
    ``mem_len``). Returns ``{"bpc": {k: .}, "entropy": {k: .}, "layer_entropy": {k: [.]},
    "tokens": n}``: mean router entropy (nats) over layers and per layer.

    :param model: the :class:`TransformerXL`.
    :param data: the token ids (1-D integer array).
    :param ks: the numbers of active experts to evaluate at.
    :param tgt_len: segment length.
    :param mem_len: memory length (None: the model's).
    :param batch_size: number of ordered streams.
    :param max_tokens: score at most this many tokens (None: all).
    """
    streams = segment_streams(np.asarray(data), batch_size)
    if max_tokens is not None:
        streams = streams[:, : max(2, max_tokens // batch_size + 1)]
    n_seg = (streams.shape[1] - 1) // tgt_len
    if n_seg < 1:
        raise ValueError(f"data: too short for tgt_len={tgt_len} and batch_size={batch_size}")
    model.eval()
    out = {"bpc": {}, "entropy": {}, "layer_entropy": {},
           "tokens": int(n_seg * tgt_len * batch_size)}
    for k in ks:
        memory = model.init_memory(batch_size, mem_len)
        total, ent = 0.0, []
        for t in range(n_seg):
            cols = slice(t * tgt_len, (t + 1) * tgt_len + 1)
            seg = jnp.asarray(streams[:, cols])
            nll, memory, e = _xl_eval_step(model, seg[:, :-1], seg[:, 1:], memory, int(k))
            total += float(nll)
            ent.append(np.asarray(e))
        out["bpc"][int(k)] = total / (out["tokens"] * math.log(2))
        per_layer = np.mean(ent, axis=0)
        out["layer_entropy"][int(k)] = [float(v) for v in per_layer]
        out["entropy"][int(k)] = float(per_layer.mean())
    model.train()
    return out


@dataclasses.dataclass(frozen=True)
class XLTrainConfig:
    """Settings of :func:`train_xl`; defaults are the reference enwik8 MoE recipe
    (HyperRouter / SMoE-Dropout scripts: Adam 2.5e-4, cosine decay over ``steps``, no
    warmup, clip 0.25, batch 22 x tgt_len 512, mem_len 512, eval_tgt_len 128, k 8 -> 16
    by the authors' rounding, 400 000 steps)."""

    steps: int = 400_000
    batch_size: int = 22
    tgt_len: int = 512
    eval_tgt_len: int = 128
    eval_mem_len: int | None = None  # None: mem_len + tgt_len - eval_tgt_len
    eval_batch_size: int = 10
    learning_rate: float = 2.5e-4
    warmup_steps: int = 0
    clip_norm: float = 0.25
    k_min: int | None = 8
    k_max: int | None = 16
    seed: int = 0
    log_every: int = 200
    eval_every: int = 4000  # validation BPC at k_max; the best state is kept
    eval_max_tokens: int | None = None
    checkpoint_dir: str | None = None
    progress: bool = True


def train_xl(model: TransformerXL, train_data: np.ndarray, config: XLTrainConfig, *,
             valid_data: np.ndarray | None = None) -> dict:
    """Train on consecutive segments with memory; keep the best validation state.

    The training data are cut into ``batch_size`` ordered streams; step t trains on
    segment t (wrapping around at the end, where the memory restarts empty) with the
    memory left by segment t - 1. Every ``eval_every`` steps (and at the end) the
    validation BPC at ``k_max`` is computed with memory (:func:`evaluate_xl_bpc`); the
    model state with the lowest one is kept in memory (and in ``checkpoint_dir/best``
    when given) and loaded into ``model`` at the end (best-validation checkpoint).
    Returns ``{"history", "valid", "best_step", "best_valid_bpc"}``.
    """
    from tqdm.auto import tqdm

    from bayesmoe.nn.train import TrainConfig, k_schedule_reference, make_optimizer

    default_k = model.moe_layers()[0].top_k
    k_min = config.k_min or default_k
    k_max = config.k_max or max(k_min, default_k)
    optimizer = make_optimizer(model, TrainConfig(
        steps=config.steps, learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps, clip_norm=config.clip_norm))
    streams = segment_streams(np.asarray(train_data), config.batch_size)
    n_seg = (streams.shape[1] - 1) // config.tgt_len
    if n_seg < 1:
        raise ValueError(f"train_data: too short for batch_size={config.batch_size} and "
                         f"tgt_len={config.tgt_len}")
    eval_mem = (model.mem_len + config.tgt_len - config.eval_tgt_len
                if config.eval_mem_len is None else config.eval_mem_len)
    history, valid, best = [], [], (math.inf, 0, None)
    memory = model.init_memory(config.batch_size)
    model.train()
    t0 = time.perf_counter()
    for step in tqdm(range(config.steps), disable=not config.progress, desc="train-xl",
                     mininterval=2.0):
        t = step % n_seg
        if t == 0:
            memory = model.init_memory(config.batch_size)
        seg = jnp.asarray(streams[:, t * config.tgt_len: (t + 1) * config.tgt_len + 1])
        k = k_schedule_reference(step, config.steps, k_min, k_max)
        metrics, memory = xl_train_step(model, optimizer, seg[:, :-1], seg[:, 1:], memory,
                                        top_k=k)
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            history.append({"step": done, "k": k, "time": time.perf_counter() - t0,
                            **{n: float(v) for n, v in metrics.items()}})
        if valid_data is not None and (
            (config.eval_every and done % config.eval_every == 0) or done == config.steps
        ):
            ev = evaluate_xl_bpc(model, valid_data, [k_max], tgt_len=config.eval_tgt_len,
                                 mem_len=eval_mem, batch_size=config.eval_batch_size,
                                 max_tokens=config.eval_max_tokens)
            bpc = ev["bpc"][k_max]
            valid.append({"step": done, "bpc": bpc})
            if bpc < best[0]:
                best = (bpc, done, jax.tree.map(jnp.copy, nnx.state(model, nnx.Param)))
                if config.checkpoint_dir:
                    from bayesmoe.nn.train import save_checkpoint

                    save_checkpoint(Path(config.checkpoint_dir) / "best", done, model,
                                    optimizer, history)
    if best[2] is not None:
        nnx.update(model, best[2])
    return {"history": history, "valid": valid, "best_step": best[1],
            "best_valid_bpc": best[0] if best[2] is not None else None,
            "config": dataclasses.asdict(config)}
