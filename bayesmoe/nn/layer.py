"""SparseMoE: a top-k mixture-of-experts feed-forward layer in Flax NNX.

For tokens ``x_t`` the router gives logits ``l_t`` (T, E) in float32; the k largest
``l_tj`` (indices ``i_tj``) are kept and mixed with ``g_tj = softmax_j(l_tj)``:

    y_t = sum_{j<k} g_tj f_{i_tj}(x_t),   f_e(x) = act(x W_in[e] + b_in[e]) W_out[e] + b_out[e]

(HyperRouter, arXiv 2312.07035, Eq. 1-2; Shazeer et al. 2017 for top-k gating).
The dispatch implementation is a choice of speed, not of maths (see ``dispatch.py``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from bayesmoe.nn import dispatch
from bayesmoe.nn.experts import Experts, get_activation
from bayesmoe.nn.losses import MoEAux, router_stats
from bayesmoe.nn.routers import Router, check_init_std, make_router

Array = jax.Array

IMPLS = ("dense", "sorted", "capacity")
KERNELS = {"sorted": ("blocked", "ragged"), "capacity": ("gather", "einsum"), "dense": ()}


def default_kernel(impl: str, backend: str | None = None) -> str | None:
    """The kernel ``kernel="auto"`` picks for ``impl`` on ``backend`` (default: JAX's).

    sorted: "blocked" on CPU (XLA:CPU lowers ragged_dot to a dense masked matmul), "ragged"
    (``ragged_dot``) on GPU/TPU; capacity: "einsum" (one-hot) on TPU, "gather" elsewhere.
    """
    backend = jax.default_backend() if backend is None else backend
    if impl == "sorted":
        return "blocked" if backend == "cpu" else "ragged"
    if impl == "capacity":
        return "einsum" if backend == "tpu" else "gather"
    return None


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

    :param d_model: token dimension d.
    :param d_ff: hidden width F of each expert.
    :param n_experts: number of experts E.
    :param top_k: default number of experts per token (override per call).
    :param router: "linear" (SMoE), "random" (SMoE-Dropout), "hyper" (HyperRouter) or a
        :class:`~bayesmoe.nn.routers.Router` instance.
    :param activation: "relu", "gelu" or "silu".
    :param impl: "dense" (reference), "sorted" (dropless grouped matmul: blocked gather on
        CPU, ``ragged_dot`` on GPU/TPU) or "capacity" (drops overflow copies).
    :param kernel: "auto" (by backend, :func:`default_kernel`) or force one: "blocked" /
        "ragged" for impl "sorted", "gather" / "einsum" for "capacity". E.g.
        ``kernel="ragged"`` runs the accelerator code path on CPU.
    :param capacity_factor: for impl "capacity", ``C = ceil(cf T k / E)``.
    :param block_size: row block of the CPU "sorted" path.
    :param balance_weight: weight of the Switch balancing loss in ``aux.loss`` (0 in the
        HyperRouter recipe).
    :param z_weight: weight of the router z-loss in ``aux.loss`` (0 in the HyperRouter recipe).
    :param router_kwargs: extra arguments for a router built by name (e.g.
        ``{"hyper_hidden": 128, "init_std": 0.04}`` for "hyper"); they override
        ``router_init_std``.
    :param router_init_std: std of the router weights (SMoE, SMoE-Dropout) or of the frozen
        hypernetwork weights (HyperRouter); 0.02 for all, as the authors. None: the
        previous inits (LeCun N(0, 1/d) for linear/random routers, 0.02 for hyper).
    :param expert_init_std: std of the expert weights (0.02 as the authors; None: LeCun).
    :param parallel: with a mesh set (``jax.sharding.set_mesh``) whose "data" / "expert"
        axes have more than one device, run the dispatch in ``jax.shard_map``: each
        device routes and dispatches only its own tokens (capacity per device) and,
        with an "expert" axis, exchanges token copies with ``all_to_all`` so that it
        runs only its E / n_expert experts. False: leave the partitioning to GSPMD
        (every device then repeats the routing of the global token set).
    :param expert_dropout: dropout rate on each expert's hidden activation (0.1 as the
        authors: ``f_e(x) = Drop(act(x W_in + b_in)) W_out + b_out``). Active in
        training mode only (``layer.eval()`` turns it off, ``layer.train()`` on), with
        the dropout stream of ``rngs`` given at construction or an ``rngs`` call argument.
    :param rngs: the ``flax.nnx.Rngs`` the router and expert weights are initialised from (its
        ``params`` stream; its ``dropout`` stream for expert dropout).
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
        kernel: str = "auto",
        capacity_factor: float = 1.25,
        block_size: int = 256,
        balance_weight: float = 0.0,
        z_weight: float = 0.0,
        router_kwargs: dict | None = None,
        router_init_std: float | None = 0.02,
        expert_init_std: float | None = 0.02,
        expert_dropout: float = 0.1,
        parallel: bool = True,
        rngs: nnx.Rngs,
    ):
        for name, v in (("d_model", d_model), ("d_ff", d_ff), ("n_experts", n_experts)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        if kernel != "auto" and kernel not in KERNELS[impl]:
            raise ValueError(f"kernel must be 'auto' or one of {KERNELS[impl]} for "
                             f"impl={impl!r}, got {kernel!r}")
        router_init_std = check_init_std("router_init_std", router_init_std)
        expert_init_std = check_init_std("expert_init_std", expert_init_std)
        if isinstance(expert_dropout, bool) or not 0.0 <= expert_dropout < 1.0:
            raise ValueError(f"expert_dropout must be in [0, 1), got {expert_dropout!r}")
        if not capacity_factor > 0:
            raise ValueError(f"capacity_factor must be > 0, got {capacity_factor!r}")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive int, got {block_size!r}")
        self.d_model, self.d_ff, self.n_experts = d_model, d_ff, n_experts
        self.top_k = check_top_k(top_k, n_experts)
        self.activation = activation
        self.act = get_activation(activation)
        self.impl, self.kernel, self.parallel = impl, kernel, bool(parallel)
        self.capacity_factor = float(capacity_factor)
        self.block_size = block_size
        self.balance_weight, self.z_weight = float(balance_weight), float(z_weight)
        # the router draws from its own sub-stream (one key of ``rngs``), so that models
        # differing only in router type share every other initial weight
        router_rngs = nnx.Rngs(params=rngs.params())
        router_kwargs = dict(router_kwargs or {})
        if isinstance(router, str) and not (router == "hyper" and router_init_std is None):
            router_kwargs.setdefault("init_std", router_init_std)
        self.router = make_router(router, d_model, n_experts, rngs=router_rngs,
                                  **router_kwargs)
        self.experts = Experts(d_model, d_ff, n_experts, init_std=expert_init_std, rngs=rngs)
        self.expert_dropout = nnx.Dropout(float(expert_dropout), rngs=rngs)

    def _kernel(self) -> str | None:
        return default_kernel(self.impl) if self.kernel == "auto" else self.kernel

    def _dropout_key(self, rngs) -> Array | None:
        """A key for the expert dropout masks, or None when dropout is off."""
        drop = self.expert_dropout
        if drop.rate == 0.0 or drop.deterministic:
            return None
        if rngs is not None:
            return rngs.dropout() if isinstance(rngs, nnx.Rngs) else rngs
        if drop.rngs is None:
            raise ValueError("rngs: expert dropout is active (training mode, expert_dropout > 0)"
                             " but the layer has no dropout stream; pass rngs or call .eval()")
        return drop.rngs()

    def _act(self, key: Array | None):
        """The activation, followed by dropout with ``key`` (None: no dropout)."""
        if key is None:
            return self.act
        act, rate = self.act, self.expert_dropout.rate

        def act_drop(z):
            keep = jax.random.bernoulli(key, 1.0 - rate, z.shape)
            return jnp.where(keep, act(z) / (1.0 - rate), 0.0).astype(z.dtype)

        return act_drop

    def local_dispatch(self, x: Array, gates: Array, idx: Array, w, k: int, act):
        """Dispatch of the tokens of one device (or of all tokens on one device).

        :param x: tokens (T, d).
        :param gates: the combination weights (T, k) of the chosen experts.
        :param idx: the chosen experts (T, k).
        :param w: the experts' :class:`ExpertWeights`.
        :param k: number of active experts per token.
        :param act: the activation function.
        """
        kernel = self._kernel()
        if self.impl == "dense":
            return dispatch.dense_dispatch(x, gates, idx, w, act)
        if self.impl == "sorted":
            if kernel == "blocked":
                return dispatch.sorted_blocked_dispatch(x, gates, idx, w, act, self.block_size)
            return dispatch.sorted_ragged_dispatch(x, gates, idx, w, act)
        cap = dispatch.expert_capacity(x.shape[0], k, self.n_experts, self.capacity_factor)
        if kernel == "einsum":
            return dispatch.capacity_einsum_dispatch(x, gates, idx, w, act, cap)
        return dispatch.capacity_gather_dispatch(x, gates, idx, w, act, cap)

    def _mesh_axes(self) -> tuple[int, int, tuple[str, ...]]:
        """(n_data, n_expert, token axis names) of the active mesh; (1, 1, ()) if none."""
        mesh = jax.sharding.get_abstract_mesh()
        names = tuple(getattr(mesh, "axis_names", ()) or ())
        if not self.parallel or not names:
            return 1, 1, ()
        shape = dict(mesh.shape)
        axes = tuple(a for a in ("data", "expert") if a in names)
        return shape.get("data", 1), shape.get("expert", 1), axes

    def _parallel_dispatch(self, x, gates, idx, w, k, key, n_data, n_expert, axes):
        """Per-device routing and dispatch in ``shard_map`` (see ``parallel``)."""
        P = jax.sharding.PartitionSpec
        n_dev = n_data * n_expert
        tok = P(axes)
        w_spec = P("expert") if "expert" in axes else P()
        t_local = x.shape[0] // n_dev
        if self.impl == "capacity":
            cap = dispatch.expert_capacity(t_local, k, self.n_experts, self.capacity_factor)
        else:  # dropless under expert parallelism: room for every local token
            cap = t_local
        has_key = key is not None

        def per_device(xl, gl, il, wl, kk):
            sizes = {"data": n_data, "expert": n_expert}
            dev = jnp.zeros((), jnp.int32)
            for a in axes:
                dev = dev * sizes[a] + jax.lax.axis_index(a)
            act = self._act(jax.random.fold_in(kk, dev) if has_key else None)
            if n_expert > 1:
                y, dropped = dispatch.expert_parallel_dispatch(xl, gl, il, wl, act, cap,
                                                               "expert", n_expert)
            else:
                y, dropped = self.local_dispatch(xl, gl, il, wl, k, act)
            return y, jax.lax.pmean(jnp.asarray(dropped, jnp.float32), axes)

        key = key if has_key else jax.random.key(0)
        fn = jax.shard_map(per_device, in_specs=(tok, tok, tok, w_spec, P()),
                           out_specs=(tok, P()))
        return fn(x, gates, idx, w, key)

    def __call__(self, x: Array, top_k: int | None = None, *,
                 rngs: nnx.Rngs | Array | None = None) -> tuple[Array, MoEAux]:
        """Apply the layer to x (..., d_model); returns (y of x's shape, MoEAux).

        ``rngs`` (an ``nnx.Rngs`` with a dropout stream, or a key) overrides the dropout
        stream given at construction; dropout runs only in training mode.
        """
        k = self.top_k if top_k is None else check_top_k(top_k, self.n_experts)
        if x.ndim < 1 or x.shape[-1] != self.d_model:
            raise ValueError(f"x: last dimension must be d_model={self.d_model}, got {x.shape}")
        lead = x.shape[:-1]
        n_data, n_expert, axes = self._mesh_axes()
        n_tokens = math.prod(lead)
        if n_data * n_expert > 1 and n_tokens % (n_data * n_expert):
            raise ValueError(f"x: the {n_tokens} tokens must split evenly over the "
                             f"{n_data * n_expert} devices of the mesh axes {axes}")
        if self.n_experts % n_expert:
            raise ValueError(f"n_experts={self.n_experts} must be divisible by the "
                             f"{n_expert} devices of the 'expert' mesh axis")
        spec = (axes, None) if n_data * n_expert > 1 else ("data", None)
        xt = dispatch.constrain(x.reshape(-1, self.d_model), spec)
        logits = self.router(xt)
        gates, idx = top_k_gates(logits, k)
        key = self._dropout_key(rngs)
        w = self.experts.weights(xt.dtype)
        if n_data * n_expert > 1:
            y, dropped = self._parallel_dispatch(xt, gates, idx, w, k, key, n_data,
                                                 n_expert, axes)
        else:
            y, dropped = self.local_dispatch(xt, gates, idx, w, k, self._act(key))
        balance, z_loss, entropy, load = router_stats(logits, idx, self.n_experts)
        loss = self.balance_weight * balance + self.z_weight * z_loss
        aux = MoEAux(loss, balance, z_loss, entropy, load, jnp.asarray(dropped, jnp.float32),
                     entropy[None])
        return y.reshape(*lead, self.d_model).astype(x.dtype), aux
