"""A small decoder-only Transformer language model with SparseMoE feed-forward layers.

Pre-LayerNorm blocks (Xiong et al. 2020): ``h = x + Drop(Attn(LN(x)))``,
``y = h + Drop(FFN(LN(h)))`` with causal multi-head self-attention, learned absolute
position embeddings, and a SparseMoE FFN in the chosen layers (a dense FFN elsewhere).
This stands in for the Transformer-XL of the HyperRouter recipe (arXiv 2312.07035,
Sec. 4.1), without its segment memory and relative positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from bayesmoe.nn.experts import DenseFFN
from bayesmoe.nn.layer import SparseMoE
from bayesmoe.nn.losses import MoEAux, merge_aux

Array = jax.Array


class Block(nnx.Module):
    """One pre-LN Transformer block; ``ffn`` is a SparseMoE or a DenseFFN."""

    def __init__(self, d_model: int, n_heads: int, ffn: nnx.Module, dropout: float, *,
                 rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(d_model, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            n_heads, d_model, dropout_rate=dropout, decode=False, deterministic=False, rngs=rngs
        )
        self.ln2 = nnx.LayerNorm(d_model, rngs=rngs)
        self.ffn = ffn
        self.drop = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x: Array, mask: Array, top_k: int | None) -> tuple[Array, MoEAux | None]:
        h = x + self.drop(self.attn(self.ln1(x), mask=mask))
        if isinstance(self.ffn, SparseMoE):
            y, aux = self.ffn(self.ln2(h), top_k=top_k)
        else:
            y, aux = self.ffn(self.ln2(h)), None
        return h + self.drop(y), aux


class TransformerLM(nnx.Module):
    """Decoder-only LM: tokens (B, S) -> logits (B, S, vocab) and merged MoEAux.

    :param vocab_size: number of token ids.
    :param d_model: token dimension d.
    :param n_heads: attention heads (must divide ``d_model``).
    :param n_layers: number of transformer blocks.
    :param max_len: longest sequence (learnt position embeddings).
    :param d_ff: hidden width of each expert (and of dense FFN layers).
    :param n_experts: number of experts E of every SparseMoE layer.
    :param top_k: default number of active experts per token.
    :param router: ``"linear"``, ``"random"``, ``"hyper"`` (see :class:`SparseMoE`).
    :param impl: dispatch implementation (see :class:`SparseMoE`).
    :param activation: expert activation (see :class:`SparseMoE`).
    :param moe_layers: indices of the layers with a SparseMoE FFN (default: all).
    :param dropout: dropout rate on attention weights and residual branches, and (unless
        ``moe_kwargs`` sets ``expert_dropout``) inside the experts, as the authors.
    :param moe_kwargs: extra keyword arguments for SparseMoE (e.g. balance_weight,
        router_init_std, expert_init_std, expert_dropout, kernel).
    :param rngs: the ``flax.nnx.Rngs`` the weights are initialised from (its ``params``
        stream, and its ``dropout`` stream for dropout).
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 128,
        n_heads: int = 4,
        n_layers: int = 4,
        d_ff: int = 256,
        n_experts: int = 16,
        top_k: int = 2,
        router: str = "hyper",
        impl: str = "sorted",
        activation: str = "relu",
        max_len: int = 512,
        dropout: float = 0.1,
        moe_layers: Sequence[int] | None = None,
        moe_kwargs: dict | None = None,
        *,
        rngs: nnx.Rngs,
    ):
        if d_model % n_heads:
            raise ValueError(f"n_heads={n_heads} must divide d_model={d_model}")
        moe_layers = tuple(range(n_layers)) if moe_layers is None else tuple(moe_layers)
        if any(not 0 <= i < n_layers for i in moe_layers):
            raise ValueError(f"moe_layers must lie in [0, {n_layers}), got {moe_layers}")
        self.max_len, self.vocab_size = max_len, vocab_size
        self.embed = nnx.Embed(vocab_size, d_model, rngs=rngs)
        self.pos = nnx.Embed(max_len, d_model, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)
        blocks = []
        for i in range(n_layers):
            if i in moe_layers:
                ffn = SparseMoE(d_model, d_ff, n_experts, top_k, router=router,
                                activation=activation, impl=impl, rngs=rngs,
                                **{"expert_dropout": dropout, **(moe_kwargs or {})})
            else:
                ffn = DenseFFN(d_model, d_ff, activation, rngs=rngs)
            blocks.append(Block(d_model, n_heads, ffn, dropout, rngs=rngs))
        self.blocks = nnx.List(blocks)
        self.ln_f = nnx.LayerNorm(d_model, rngs=rngs)
        self.head = nnx.Linear(d_model, vocab_size, rngs=rngs)

    def moe_layers(self) -> list[SparseMoE]:
        """The SparseMoE modules, in layer order."""
        return [b.ffn for b in self.blocks if isinstance(b.ffn, SparseMoE)]

    def __call__(self, tokens: Array, top_k: int | None = None) -> tuple[Array, MoEAux]:
        seq = tokens.shape[-1]
        if seq > self.max_len:
            raise ValueError(f"tokens: sequence length {seq} exceeds max_len={self.max_len}")
        x = self.embed(tokens) + self.pos(jnp.arange(seq))
        x = self.drop(x)
        mask = nnx.make_causal_mask(tokens)
        auxes = []
        for block in self.blocks:
            x, aux = block(x, mask, top_k)
            if aux is not None:
                auxes.append(aux)
        logits = self.head(self.ln_f(x)).astype(jnp.float32)
        return logits, merge_aux(auxes)
