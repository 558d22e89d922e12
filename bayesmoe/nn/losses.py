"""Router statistics and auxiliary losses.

* Switch load-balancing loss (Fedus et al. 2021, arXiv 2101.03961, Eq. 4), extended to
  top-k: ``L_bal = E * sum_e f_e P_e`` with ``f_e`` the fraction of the T k token copies
  sent to expert e and ``P_e`` the mean router probability of e; 1 when uniform.
* Router z-loss (Zoph et al. 2022, ST-MoE, arXiv 2202.08906, Eq. 5):
  ``L_z = mean_t (logsumexp_e logits_te)^2``.
* Router entropy: mean over tokens of ``-sum_e p_te log p_te`` (nats) of the full
  softmax over all E experts, the quantity HyperRouter (arXiv 2312.07035) compares.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class MoEAux(NamedTuple):
    """Auxiliary outputs of a SparseMoE layer (a pytree).

    :ivar loss: weighted auxiliary loss to add to the task loss
        (``balance_weight * balance_loss + z_weight * z_loss``; 0 by default).
    :ivar balance_loss: Switch load-balancing loss ``E sum_e f_e P_e``.
    :ivar z_loss: router z-loss ``mean(logsumexp(logits)^2)``.
    :ivar entropy: mean router entropy (nats).
    :ivar load: per-expert fraction of token copies ``f_e`` (E,), sums to 1.
    :ivar dropped: fraction of token copies dropped by the capacity limit.
    :ivar layer_entropy: router entropy per layer (L,) after :func:`merge_aux`; for one
        layer, the same as ``entropy`` with shape (1,).
    """

    loss: Array
    balance_loss: Array
    z_loss: Array
    entropy: Array
    load: Array
    dropped: Array
    layer_entropy: Array | None = None


def router_stats(
    logits: Array, expert_idx: Array, n_experts: int
) -> tuple[Array, Array, Array, Array]:
    """Return (balance_loss, z_loss, entropy, load) for logits (T, E), indices (T, k).

    :param logits: router logits (T, E) of T tokens.
    :param expert_idx: the chosen experts (T, k).
    :param n_experts: E, the number of experts.
    """
    logits = logits.astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    probs = jnp.exp(logp)
    load = jnp.mean(jax.nn.one_hot(expert_idx, n_experts, dtype=jnp.float32), axis=(0, 1))
    importance = jnp.mean(probs, axis=0)
    balance = n_experts * jnp.sum(load * importance)
    z_loss = jnp.mean(jax.nn.logsumexp(logits, axis=-1) ** 2)
    entropy = jnp.mean(-jnp.sum(probs * logp, axis=-1))
    return balance, z_loss, entropy, load


def merge_aux(auxes: Sequence[MoEAux]) -> MoEAux:
    """Combine the aux outputs of several layers: losses summed, statistics averaged.

    :param auxes: the :class:`MoEAux` of each MoE layer.
    """
    if not auxes:
        z = jnp.zeros(())
        return MoEAux(z, z, z, z, jnp.zeros((0,)), z, jnp.zeros((0,)))
    return MoEAux(
        loss=sum(a.loss for a in auxes),
        balance_loss=sum(a.balance_loss for a in auxes),
        z_loss=sum(a.z_loss for a in auxes),
        entropy=sum(a.entropy for a in auxes) / len(auxes),
        load=jnp.stack([a.load for a in auxes]),
        dropped=sum(a.dropped for a in auxes) / len(auxes),
        layer_entropy=jnp.stack([a.entropy for a in auxes]),
    )
