"""Token-to-expert dispatch strategies (pure functions, static shapes).

Every function takes tokens ``x`` (T, d), combine weights ``gates`` (T, k), chosen
experts ``idx`` (T, k) and stacked :class:`ExpertWeights`, and returns
``y_t = sum_j gates_tj f_{idx_tj}(x_t)`` of shape (T, d) together with the fraction of
token copies that were dropped (0 except for the capacity strategies).

* :func:`dense_dispatch` - every expert on every token; the reference.
* :func:`sorted_blocked_dispatch` - dropless: sort the T k copies by expert, pad each
  expert's segment to a multiple of ``block`` rows, run one batched matmul over
  ``ceil(Tk / block) + E`` blocks (a static upper bound), each block with its own
  expert's weights, and gather results back (the CPU path; MegaBlocks-style grouped
  matmul, Gale et al. 2022, arXiv 2211.15841).
* :func:`sorted_ragged_dispatch` - dropless with :func:`grouped_matmul` (``jax.lax.ragged_dot``)
  over the sorted copies (the GPU/TPU path; XLA:CPU lowers ragged_dot to a dense masked
  matmul). Safe under ``jax.vmap`` / ``nnx.vmap``: the vmapped axis is folded into the
  row axis (see :func:`grouped_matmul`).
* :func:`capacity_gather_dispatch` - at most ``C`` copies per expert (GShard / Switch
  capacity; first choices have priority), gathered into an (E, C, d) buffer, one
  batched matmul, gathered back; overflow copies are dropped (output 0).
* :func:`capacity_einsum_dispatch` - the same maths with one-hot dispatch/combine
  tensors (T, E, C) and einsums (the TPU-friendly form).
* :func:`expert_parallel_dispatch` - inside ``shard_map``: the (E, C, d) buffer of one
  device's tokens is exchanged with ``all_to_all`` over the expert mesh axis so that each
  device runs only its E / n experts (GShard, Lepikhin et al. 2020, arXiv 2006.16668).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from bayesmoe.nn.experts import ExpertWeights, expert_ffn

Array = jax.Array
Act = Callable[[Array], Array]


def constrain(a: Array, spec: tuple) -> Array:
    """Shard ``a`` as ``spec`` if a mesh with those (automatic, i.e. not inside
    ``shard_map``) axis names is set, else no-op."""
    mesh = jax.sharding.get_abstract_mesh()
    names = {n for n, t in zip(getattr(mesh, "axis_names", ()) or (),
                               getattr(mesh, "axis_types", ()) or (), strict=False)
             if t == jax.sharding.AxisType.Auto}
    used = [n for s in spec if s is not None for n in ((s,) if isinstance(s, str) else s)]
    if not names or not all(n in names for n in used):
        return a
    return jax.lax.with_sharding_constraint(a, jax.sharding.PartitionSpec(*spec))


def dense_dispatch(x: Array, gates: Array, idx: Array, w: ExpertWeights, act: Act):
    """All experts on all tokens, mixed with the sparse combine matrix (T, E)."""
    n_experts = w.w_in.shape[0]
    combine = jnp.einsum("tk,tke->te", gates, jax.nn.one_hot(idx, n_experts, dtype=gates.dtype))
    xe = jnp.broadcast_to(x[None], (n_experts, *x.shape))
    ye = expert_ffn(constrain(xe, ("expert", None, None)), w, act)  # (E, T, d)
    return jnp.einsum("te,etd->td", combine.astype(ye.dtype), ye), jnp.zeros((), jnp.float32)


def _segments(flat_e: Array, n_experts: int) -> tuple[Array, Array, Array]:
    """Stable sort of expert ids; returns (order, sorted ids, rank of each sorted copy)."""
    n = flat_e.shape[0]
    order = jnp.argsort(flat_e, stable=True)
    sorted_e = flat_e[order]
    counts = jnp.bincount(flat_e, length=n_experts)
    start = jnp.cumsum(counts) - counts
    rank = jnp.arange(n) - start[sorted_e]
    return order, sorted_e, rank


def _inverse_scatter(order: Array, values: Array) -> Array:
    """``out[order[i]] = values[i]``: move per-sorted-copy values back to copy order."""
    return jnp.zeros_like(values).at[order].set(values)


def n_blocks_bound(n_copies: int, n_experts: int, block: int) -> int:
    """Static upper bound on the blocks used by :func:`sorted_blocked_dispatch`."""
    return min(-(-n_copies // block) + n_experts, n_copies)


def sorted_blocked_dispatch(
    x: Array, gates: Array, idx: Array, w: ExpertWeights, act: Act, block: int = 128
):
    """Dropless grouped matmul over expert-sorted copies, padded to ``block`` rows.

    Expert e's c_e copies occupy ``ceil(c_e / block)`` blocks, so at most
    ``sum_e ceil(c_e / block) <= ceil(T k / block) + E - 1`` blocks are needed.
    """
    n_tokens, d = x.shape
    k = idx.shape[1]
    n_experts = w.w_in.shape[0]
    n = n_tokens * k
    block = max(1, min(block, n))
    n_blocks = n_blocks_bound(n, n_experts, block)
    flat_e = idx.reshape(n)
    order, sorted_e, rank = _segments(flat_e, n_experts)
    counts = jnp.bincount(flat_e, length=n_experts)
    padded = (counts + block - 1) // block * block
    pad_end = jnp.cumsum(padded)
    pos = _inverse_scatter(order, pad_end[sorted_e] - padded[sorted_e] + rank)  # (n,)
    token = jnp.arange(n) // k
    buf_token = jnp.full((n_blocks * block,), n_tokens, jnp.int32).at[pos].set(token)
    x_pad = jnp.concatenate([x, jnp.zeros((1, d), x.dtype)])
    xb = x_pad[buf_token].reshape(n_blocks, block, d)
    block_e = jnp.searchsorted(pad_end, jnp.arange(n_blocks) * block, side="right")
    block_e = jnp.minimum(block_e, n_experts - 1)
    wb = ExpertWeights(*(a[block_e] for a in w))
    yb = expert_ffn(xb, wb, act).reshape(n_blocks * block, d)
    y_copy = yb[pos].reshape(n_tokens, k, d)
    return jnp.einsum("tk,tkd->td", gates.astype(y_copy.dtype), y_copy), jnp.zeros(())


def sorted_ragged_dispatch(x: Array, gates: Array, idx: Array, w: ExpertWeights, act: Act):
    """Dropless grouped matmul with :func:`grouped_matmul` (``ragged_dot``; GPU/TPU path)."""
    n_tokens, d = x.shape
    k = idx.shape[1]
    n_experts = w.w_in.shape[0]
    n = n_tokens * k
    flat_e = idx.reshape(n)
    order, sorted_e, _ = _segments(flat_e, n_experts)
    counts = jnp.bincount(flat_e, length=n_experts).astype(jnp.int32)
    xs = x[order // k]
    h = act(grouped_matmul(xs, w.w_in, counts) + w.b_in[sorted_e])
    ys = grouped_matmul(h, w.w_out, counts) + w.b_out[sorted_e]
    y_copy = _inverse_scatter(order, ys).reshape(n_tokens, k, d)
    return jnp.einsum("tk,tkd->td", gates.astype(y_copy.dtype), y_copy), jnp.zeros(())


def _broadcast_batched(axis_size: int, in_batched, args):
    return [a if b else jnp.broadcast_to(a, (axis_size, *a.shape))
            for a, b in zip(args, in_batched, strict=True)]


def _row_groups(group_sizes: Array, n_rows: int) -> Array:
    """Group id of each of ``n_rows`` rows for contiguous groups (G for rows past the end)."""
    ends = jnp.cumsum(group_sizes)
    return jnp.searchsorted(ends, jnp.arange(n_rows), side="right")


@jax.custom_batching.custom_vmap
def _gmm(lhs: Array, rhs: Array, group_sizes: Array) -> Array:
    """``out[r] = lhs[r] @ rhs[g(r)]`` for rows in contiguous groups: (m,k),(G,k,n) -> (m,n)."""
    return jax.lax.ragged_dot(lhs, rhs, group_sizes)


@_gmm.def_vmap
def _gmm_vmap(axis_size, in_batched, lhs, rhs, group_sizes):
    lhs_b, rhs_b, gs_b = in_batched
    lhs, group_sizes = _broadcast_batched(axis_size, (lhs_b, gs_b), (lhs, group_sizes))
    n_batch, m, _ = lhs.shape
    if rhs_b:  # (batch, group) pairs are B G consecutive groups over the B m folded rows
        out = _gmm(lhs.reshape(n_batch * m, -1), rhs.reshape(-1, *rhs.shape[2:]),
                   group_sizes.reshape(-1))
        return out.reshape(n_batch, m, -1), True
    # shared weights: re-sort the B m rows by group (stable), one ragged_dot, sort back
    gid = jax.vmap(lambda g: _row_groups(g, m))(group_sizes).reshape(-1)
    order = jnp.argsort(gid, stable=True)
    out_sorted = _gmm(lhs.reshape(n_batch * m, -1)[order], rhs, jnp.sum(group_sizes, 0))
    out = jnp.zeros_like(out_sorted).at[order].set(out_sorted)
    return out.reshape(n_batch, m, -1), True


@jax.custom_batching.custom_vmap
def _tgmm(lhs: Array, ct: Array, group_sizes: Array) -> Array:
    """Per-group ``lhs_g^T ct_g``: (m,k),(m,n),(G,) -> (G,k,n) (the weight gradient)."""
    n_groups = group_sizes.shape[0]
    zeros = jnp.zeros((n_groups, lhs.shape[1], ct.shape[1]), ct.dtype)
    _, vjp = jax.vjp(lambda r: jax.lax.ragged_dot(lhs, r, group_sizes), zeros)
    return vjp(ct)[0]


@_tgmm.def_vmap
def _tgmm_vmap(axis_size, in_batched, lhs, ct, group_sizes):
    lhs, ct, group_sizes = _broadcast_batched(axis_size, in_batched, (lhs, ct, group_sizes))
    n_batch, m, _ = lhs.shape
    out = _tgmm(lhs.reshape(n_batch * m, -1), ct.reshape(n_batch * m, -1),
                group_sizes.reshape(-1))
    return out.reshape(n_batch, group_sizes.shape[1], *out.shape[1:]), True


@jax.custom_vjp
def grouped_matmul(lhs: Array, rhs: Array, group_sizes: Array) -> Array:
    """Grouped matmul ``out[r] = lhs[r] @ rhs[g(r)]`` (rows sorted by group), vmap-safe.

    Same values as ``jax.lax.ragged_dot(lhs, rhs, group_sizes)``: lhs (m, k), rhs
    (G, k, n), group_sizes (G,) int32 with rows of group g contiguous and in group order.
    ``ragged_dot``'s batching rule raises ``NotImplementedError`` unless every operand is
    batched along axis 0; under ``jax.vmap`` this function instead folds the vmapped axis
    into the rows (shared weights: rows of all batch elements re-sorted by group, one
    ragged_dot with G groups; batched weights: B G groups). The backward pass
    (``d lhs = ct rhs_g^T``, ``d rhs_g = lhs_g^T ct_g``) folds the same way; it is
    written out because ``custom_vmap`` functions cannot be reverse-differentiated.
    """
    return _gmm(lhs, rhs, group_sizes)


def _grouped_matmul_fwd(lhs, rhs, group_sizes):
    return _gmm(lhs, rhs, group_sizes), (lhs, rhs, group_sizes)


def _grouped_matmul_bwd(res, ct):
    lhs, rhs, group_sizes = res
    d_lhs = _gmm(ct, jnp.swapaxes(rhs, 1, 2).astype(ct.dtype), group_sizes)
    d_rhs = _tgmm(lhs.astype(ct.dtype), ct, group_sizes)
    return d_lhs.astype(lhs.dtype), d_rhs.astype(rhs.dtype), None


grouped_matmul.defvjp(_grouped_matmul_fwd, _grouped_matmul_bwd)


def expert_capacity(n_tokens: int, k: int, n_experts: int, capacity_factor: float) -> int:
    """``C = ceil(capacity_factor * T k / E)``, at most T (a token picks an expert once)."""
    return max(1, min(n_tokens, math.ceil(capacity_factor * n_tokens * k / n_experts)))


def _capacity_slots(idx: Array, n_experts: int, capacity: int) -> tuple[Array, Array]:
    """Slot ``e C + rank`` of each copy, k-major (first choices first); E C if dropped."""
    n_tokens, k = idx.shape
    flat_e = idx.T.reshape(n_tokens * k)  # k-major priority
    order, sorted_e, rank = _segments(flat_e, n_experts)
    rank = _inverse_scatter(order, rank)
    keep = rank < capacity
    slot = jnp.where(keep, flat_e * capacity + rank, n_experts * capacity)
    return slot, keep


def capacity_gather_dispatch(
    x: Array, gates: Array, idx: Array, w: ExpertWeights, act: Act, capacity: int
):
    """Capacity-limited dispatch by gather into an (E, C, d) buffer and gather back."""
    n_tokens, d = x.shape
    k = idx.shape[1]
    n_experts = w.w_in.shape[0]
    slot, keep = _capacity_slots(idx, n_experts, capacity)
    token = jnp.tile(jnp.arange(n_tokens), k)
    size = n_experts * capacity
    buf_token = jnp.full((size + 1,), n_tokens, jnp.int32).at[slot].set(token)[:size]
    x_pad = jnp.concatenate([x, jnp.zeros((1, d), x.dtype)])
    xb = constrain(x_pad[buf_token].reshape(n_experts, capacity, d), ("expert", None, None))
    yb = constrain(expert_ffn(xb, w, act), ("expert", None, None))
    y_pad = jnp.concatenate([yb.reshape(size, d), jnp.zeros((1, d), yb.dtype)])
    y_copy = y_pad[slot].reshape(k, n_tokens, d)
    y = jnp.einsum("tk,ktd->td", gates.astype(y_copy.dtype), y_copy)
    return y, 1.0 - jnp.mean(keep.astype(jnp.float32))


def capacity_einsum_dispatch(
    x: Array, gates: Array, idx: Array, w: ExpertWeights, act: Act, capacity: int
):
    """Capacity-limited dispatch with one-hot dispatch/combine tensors (T, E, C)."""
    n_tokens, _ = x.shape
    k = idx.shape[1]
    n_experts = w.w_in.shape[0]
    slot, keep = _capacity_slots(idx, n_experts, capacity)
    # one-hot over E C slots (+1 dump slot, then cut), summed over the k choices
    oh = jax.nn.one_hot(slot, n_experts * capacity + 1, dtype=x.dtype)[:, :-1]
    oh = oh.reshape(k, n_tokens, n_experts, capacity)
    dispatch = jnp.sum(oh, axis=0)
    combine = jnp.einsum("tk,ktec->tec", gates.astype(x.dtype), oh)
    xb = constrain(jnp.einsum("tec,td->ecd", dispatch, x), ("expert", None, None))
    yb = expert_ffn(xb, w, act)
    y = jnp.einsum("tec,ecd->td", combine, yb)
    return y, 1.0 - jnp.mean(keep.astype(jnp.float32))


def expert_parallel_dispatch(
    x: Array, gates: Array, idx: Array, w_local: ExpertWeights, act: Act, capacity: int,
    axis_name: str, n_shards: int,
):
    """Expert-parallel capacity dispatch; call inside ``shard_map`` over ``axis_name``.

    ``x`` (T, d), ``gates``/``idx`` (T, k) are this device's tokens and their routing over
    all E experts; ``w_local`` holds this device's E / n experts (expert e lives on
    device ``e // (E / n)``). Each device fills its (E, C, d) buffer (k-major priority,
    overflow dropped, as :func:`capacity_gather_dispatch`), ``all_to_all`` sends the
    (E / n, C, d) slice of expert group g to device g, which runs its experts on the
    n C rows it received; a second ``all_to_all`` returns the outputs. Values equal
    :func:`capacity_gather_dispatch` on the device's tokens with the same capacity.
    """
    n_tokens, d = x.shape
    k = idx.shape[1]
    n_local = w_local.w_in.shape[0]
    n_experts = n_local * n_shards
    slot, keep = _capacity_slots(idx, n_experts, capacity)
    token = jnp.tile(jnp.arange(n_tokens), k)
    size = n_experts * capacity
    buf_token = jnp.full((size + 1,), n_tokens, jnp.int32).at[slot].set(token)[:size]
    x_pad = jnp.concatenate([x, jnp.zeros((1, d), x.dtype)])
    xb = x_pad[buf_token].reshape(n_shards, n_local, capacity, d)
    xr = jax.lax.all_to_all(xb, axis_name, 0, 0)  # (source device, local expert, C, d)
    xr = jnp.swapaxes(xr, 0, 1).reshape(n_local, n_shards * capacity, d)
    yr = expert_ffn(xr, w_local, act).reshape(n_local, n_shards, capacity, d)
    yb = jax.lax.all_to_all(jnp.swapaxes(yr, 0, 1), axis_name, 0, 0)  # back to the source
    y_pad = jnp.concatenate([yb.reshape(size, d), jnp.zeros((1, d), yb.dtype)])
    y_copy = y_pad[slot].reshape(k, n_tokens, d)
    y = jnp.einsum("tk,ktd->td", gates.astype(y_copy.dtype), y_copy)
    return y, 1.0 - jnp.mean(keep.astype(jnp.float32))
