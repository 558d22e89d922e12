"""SparseMoE: a top-k mixture-of-experts feed-forward layer in Flax NNX.

For tokens ``x_t`` the router gives logits ``l_t`` (T, E) in float32; the k largest
``l_tj`` (indices ``i_tj``) are kept and mixed with ``g_tj = softmax_j(l_tj)``:

    y_t = sum_{j<k} g_tj f_{i_tj}(x_t),   f_e(x) = act(x W_in[e] + b_in[e]) W_out[e] + b_out[e]

(HyperRouter, arXiv 2312.07035, Eq. 1-2; Shazeer et al. 2017 for top-k gating).
The dispatch implementation is a choice of speed, not of maths (see ``dispatch.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bayesmoe.nn import dispatch
from bayesmoe.nn.experts import Experts, get_activation
from bayesmoe.nn.losses import MoEAux, router_stats
from bayesmoe.nn.routers import Router, make_router

Array = jax.Array

IMPLS = ("dense", "sorted", "capacity")


def top_k_gates(logits: Array, k: int) -> tuple[Array, Array]:
    """Top-k of the logits and the softmax over the k kept logits: (gates, indices)."""
    vals, idx = jax.lax.top_k(logits.astype(jnp.float32), k)
    return jax.nn.softmax(vals, axis=-1), idx


def check_top_k(top_k: int, n_experts: int) -> int:
    """Validate ``top_k`` (a Python int in [1, n_experts])."""
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise ValueError(f"top_k must be a Python int, got {top_k!r}")
    if not 1 <= top_k <= n_experts:
        raise ValueError(f"top_k must be in [1, n_experts={n_experts}], got {top_k}")
    return top_k


class SparseMoE(nnx.Module):
    """Top-k sparse mixture-of-experts FFN with a pluggable router.

    Args:
        d_model: token dimension d.
        d_ff: hidden width F of each expert.
        n_experts: number of experts E.
        top_k: default number of experts per token (override per call).
        router: "linear" (SMoE), "random" (SMoE-Dropout), "hyper" (HyperRouter) or a
            :class:`~bayesmoe.nn.routers.Router` instance.
        activation: "relu", "gelu" or "silu".
        impl: "dense" (reference), "sorted" (dropless grouped matmul: blocked gather on
            CPU, ``ragged_dot`` on GPU/TPU) or "capacity" (drops overflow copies).
        capacity_factor: for impl "capacity", ``C = ceil(cf T k / E)``.
        block_size: row block of the CPU "sorted" path.
        balance_weight, z_weight: weights of the Switch balancing loss and the
            router z-loss in ``aux.loss`` (both 0 in the HyperRouter recipe).
        router_kwargs: extra arguments for a router built by name (e.g.
            ``{"hyper_hidden": 128, "init_std": 0.04}`` for "hyper").
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        n_experts: int,
        top_k: int,
        router: str | Router = "hyper",
        activation: str = "relu",
        impl: str = "sorted",
        *,
        capacity_factor: float = 1.25,
        block_size: int = 256,
        balance_weight: float = 0.0,
        z_weight: float = 0.0,
        router_kwargs: dict | None = None,
        rngs: nnx.Rngs,
    ):
        for name, v in (("d_model", d_model), ("d_ff", d_ff), ("n_experts", n_experts)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        if not capacity_factor > 0:
            raise ValueError(f"capacity_factor must be > 0, got {capacity_factor!r}")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive int, got {block_size!r}")
        self.d_model, self.d_ff, self.n_experts = d_model, d_ff, n_experts
        self.top_k = check_top_k(top_k, n_experts)
        self.activation = activation
        self.act = get_activation(activation)
        self.impl = impl
        self.capacity_factor = float(capacity_factor)
        self.block_size = block_size
        self.balance_weight, self.z_weight = float(balance_weight), float(z_weight)
        # the router draws from its own sub-stream (one key of ``rngs``), so that models
        # differing only in router type share every other initial weight
        router_rngs = nnx.Rngs(params=rngs.params())
        self.router = make_router(router, d_model, n_experts, rngs=router_rngs,
                                  **(router_kwargs or {}))
        self.experts = Experts(d_model, d_ff, n_experts, rngs=rngs)

    def _dispatch(self, x: Array, gates: Array, idx: Array, k: int):
        w = self.experts.weights(x.dtype)
        if self.impl == "dense":
            return dispatch.dense_dispatch(x, gates, idx, w, self.act)
        if self.impl == "sorted":
            if jax.default_backend() == "cpu":
                return dispatch.sorted_blocked_dispatch(
                    x, gates, idx, w, self.act, self.block_size
                )
            return dispatch.sorted_ragged_dispatch(x, gates, idx, w, self.act)
        cap = dispatch.expert_capacity(x.shape[0], k, self.n_experts, self.capacity_factor)
        if jax.default_backend() == "tpu":
            return dispatch.capacity_einsum_dispatch(x, gates, idx, w, self.act, cap)
        return dispatch.capacity_gather_dispatch(x, gates, idx, w, self.act, cap)

    def __call__(self, x: Array, top_k: int | None = None) -> tuple[Array, MoEAux]:
        """Apply the layer to x (..., d_model); returns (y of x's shape, MoEAux)."""
        k = self.top_k if top_k is None else check_top_k(top_k, self.n_experts)
        if x.ndim < 1 or x.shape[-1] != self.d_model:
            raise ValueError(f"x: last dimension must be d_model={self.d_model}, got {x.shape}")
        lead = x.shape[:-1]
        xt = dispatch.constrain(x.reshape(-1, self.d_model), ("data", None))
        logits = self.router(xt)
        gates, idx = top_k_gates(logits, k)
        y, dropped = self._dispatch(xt, gates, idx, k)
        balance, z_loss, entropy, load = router_stats(logits, idx, self.n_experts)
        loss = self.balance_weight * balance + self.z_weight * z_loss
        aux = MoEAux(loss, balance, z_loss, entropy, load, jnp.asarray(dropped, jnp.float32))
        return y.reshape(*lead, self.d_model).astype(x.dtype), aux
