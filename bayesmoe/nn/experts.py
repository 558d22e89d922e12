"""Expert feed-forward networks with stacked weights, and a dense FFN baseline.

Expert e computes ``f_e(x) = act(x W_in[e] + b_in[e]) W_out[e] + b_out[e]`` with
``W_in`` of shape (E, d, F) and ``W_out`` of shape (E, F, d), so that a group of
experts is one batched matmul.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
}


def get_activation(name: str) -> Callable[[Array], Array]:
    """Look an activation up by name; unknown names raise ``ValueError``."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


class ExpertWeights(NamedTuple):
    """Stacked expert weights of E two-layer FFNs d -> F -> d.

    :ivar w_in: input weights (E, d, F).
    :ivar b_in: input biases (E, F).
    :ivar w_out: output weights (E, F, d).
    :ivar b_out: output biases (E, d).
    """

    w_in: Array
    b_in: Array
    w_out: Array
    b_out: Array


def expert_ffn(x: Array, w: ExpertWeights, act: Callable[[Array], Array]) -> Array:
    """Apply expert ``e`` to its group of rows: x (G, n, d) with w.* indexed by G."""
    h = act(jnp.einsum("gnd,gdf->gnf", x, w.w_in) + w.b_in[:, None, :])
    return jnp.einsum("gnf,gfd->gnd", h, w.w_out) + w.b_out[:, None, :]


class Experts(nnx.Module):
    """E independent two-layer FFNs d -> F -> d stored as stacked ``nnx.Param``.

    Weights ``W_in, W_out ~ N(0, init_std^2)`` with ``init_std = 0.02`` (the HyperRouter /
    SMoE-Dropout Transformer-XL code initialises every linear weight so), biases 0;
    ``init_std=None`` gives LeCun-normal (N(0, 1/fan_in)), the previous default.

    :param d_model: token dimension d.
    :param d_ff: hidden width F of each expert.
    :param n_experts: number of experts E.
    :param init_std: std of the weights (None: LeCun normal).
    :param rngs: the ``flax.nnx.Rngs`` the weights are initialised from (its ``params``
        stream).
    """

    def __init__(self, d_model: int, d_ff: int, n_experts: int, *,
                 init_std: float | None = 0.02, rngs: nnx.Rngs):
        if init_std is None:
            init = nnx.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))
        else:
            init = nnx.initializers.normal(stddev=float(init_std))
        self.w_in = nnx.Param(init(rngs.params(), (n_experts, d_model, d_ff)))
        self.b_in = nnx.Param(jnp.zeros((n_experts, d_ff)))
        self.w_out = nnx.Param(init(rngs.params(), (n_experts, d_ff, d_model)))
        self.b_out = nnx.Param(jnp.zeros((n_experts, d_model)))

    def weights(self, dtype=None) -> ExpertWeights:
        r"""The stacked weights as an :class:`ExpertWeights`.

        :param dtype: cast the weights to this dtype (None: as stored).
        """
        ws = (self.w_in[...], self.b_in[...], self.w_out[...], self.b_out[...])
        if dtype is not None:
            ws = tuple(a.astype(dtype) for a in ws)
        return ExpertWeights(*ws)


class DenseFFN(nnx.Module):
    """Plain FFN d -> F -> d, the equal-active-parameter baseline (F = d_ff * k).

    :param d_model: token dimension d.
    :param d_ff: hidden width F.
    :param activation: name of the activation (``"relu"``, ``"gelu"``, ...).
    :param rngs: the ``flax.nnx.Rngs`` the weights are initialised from (its ``params``
        stream).
    """

    def __init__(self, d_model: int, d_ff: int, activation: str = "relu", *, rngs: nnx.Rngs):
        self.act = get_activation(activation)
        self.fc1 = nnx.Linear(d_model, d_ff, rngs=rngs)
        self.fc2 = nnx.Linear(d_ff, d_model, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.fc2(self.act(self.fc1(x)))
