"""Routers: map tokens ``x`` of shape (T, d) to expert logits of shape (T, E).

All three routers are affine maps ``logits = x W + b`` with ``W`` of shape (d, E) and
``b`` of shape (E,), computed in float32 whatever the dtype of ``x``.  They differ in
where ``W`` and ``b`` come from:

* :class:`LinearRouter` (SMoE): ``W`` and ``b`` are trainable ``nnx.Param``.
* :class:`RandomRouter` (SMoE-Dropout, Chen et al. 2023, arXiv 2303.01610): ``W`` and
  ``b`` are random and :class:`~bayesmoe.nn.Frozen`.

Both draw ``W ~ N(0, init_std^2)`` with ``init_std = 0.02`` by default and ``b = 0``, the
initialisation of every router in the HyperRouter authors' Transformer-XL code (its
``init_std`` of 0.02 for all linear weights, zero biases). For unit-variance tokens the
initial logits then have standard deviation ``0.02 sqrt(d)`` (0.16 at d = 64, 0.32 at
d = 256). ``init_std=None`` gives the LeCun init N(0, 1/d) (logit sd 1 at any d), the
default of bayesmoe before issue 14.
* :class:`HyperRouter` (Do et al. 2023, arXiv 2312.07035): a trainable embedding
  ``e`` (N(0, 1)) is fed through a frozen hypernetwork
  ``H(e) = W2 relu(W1 e + b1) + b2`` (weights N(0, 0.02), biases 0) whose output of
  size E (d + 1) is reshaped on every call to (E, d + 1) = [W^T | b].  Only ``e``
  (``embed_dim`` numbers) is trained instead of E (d + 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bayesmoe.nn.variables import Frozen

Array = jax.Array


def _check_dims(d_model: int, n_experts: int) -> None:
    if int(d_model) < 1:
        raise ValueError(f"d_model must be a positive integer, got {d_model!r}")
    if int(n_experts) < 1:
        raise ValueError(f"n_experts must be a positive integer, got {n_experts!r}")


def affine_logits(x: Array, weight: Array, bias: Array) -> Array:
    """``x W + b`` in float32: (T, d) x (d, E) + (E,) -> (T, E)."""
    x32 = x.astype(jnp.float32)
    return x32 @ weight.astype(jnp.float32) + bias.astype(jnp.float32)


class Router(nnx.Module):
    """Base class: subclasses implement :meth:`weight_and_bias`."""

    d_model: int
    n_experts: int

    def weight_and_bias(self) -> tuple[Array, Array]:
        """Return the router weight (d, E) and bias (E,) in float32."""
        raise NotImplementedError

    def __call__(self, x: Array) -> Array:
        if x.shape[-1] != self.d_model:
            raise ValueError(
                f"x: last dimension {x.shape[-1]} does not match d_model={self.d_model}"
            )
        w, b = self.weight_and_bias()
        return affine_logits(x, w, b)


def check_init_std(name: str, value: float | None) -> float | None:
    """``value`` must be None or a finite float > 0; else ``ValueError`` naming ``name``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e30:
        raise ValueError(f"{name} must be a positive float or None, got {value!r}")
    return float(value)


def _linear_init(key: Array, d_model: int, n_experts: int, init_std: float | None) -> Array:
    """A (d, E) matrix N(0, init_std^2); ``init_std=None``: LeCun N(0, 1/d)."""
    std = 1.0 / float(d_model) ** 0.5 if init_std is None else init_std
    return std * jax.random.normal(key, (d_model, n_experts), jnp.float32)


class LinearRouter(Router):
    """Trainable linear router (SMoE): ``logits = x W + b``.

    ``W ~ N(0, init_std^2)`` (0.02 as the authors; None: LeCun N(0, 1/d)), ``b = 0``.

    :param d_model: token dimension d.
    :param n_experts: number of experts E.
    :param init_std: std of W (None: LeCun normal).
    :param rngs: the ``flax.nnx.Rngs`` the weights are initialised from (its ``params``
        stream).
    """

    def __init__(self, d_model: int, n_experts: int, *, init_std: float | None = 0.02,
                 rngs: nnx.Rngs):
        _check_dims(d_model, n_experts)
        init_std = check_init_std("init_std", init_std)
        self.d_model, self.n_experts = int(d_model), int(n_experts)
        self.kernel = nnx.Param(_linear_init(rngs.params(), self.d_model, self.n_experts,
                                             init_std))
        self.bias = nnx.Param(jnp.zeros((self.n_experts,), jnp.float32))

    def weight_and_bias(self) -> tuple[Array, Array]:
        return self.kernel[...], self.bias[...]


class RandomRouter(Router):
    """Random, frozen linear router (SMoE-Dropout): same init as :class:`LinearRouter`.

    :param d_model: token dimension d.
    :param n_experts: number of experts E.
    :param init_std: std of the frozen W (None: LeCun normal).
    :param rngs: the ``flax.nnx.Rngs`` the weights are initialised from (its ``params``
        stream).
    """

    def __init__(self, d_model: int, n_experts: int, *, init_std: float | None = 0.02,
                 rngs: nnx.Rngs):
        _check_dims(d_model, n_experts)
        init_std = check_init_std("init_std", init_std)
        self.d_model, self.n_experts = int(d_model), int(n_experts)
        self.kernel = Frozen(_linear_init(rngs.params(), self.d_model, self.n_experts,
                                          init_std))
        self.bias = Frozen(jnp.zeros((self.n_experts,), jnp.float32))

    def weight_and_bias(self) -> tuple[Array, Array]:
        return self.kernel[...], self.bias[...]


def hypernet_router_weights(
    embedding: Array, w1: Array, b1: Array, w2: Array, b2: Array, d_model: int
) -> tuple[Array, Array]:
    """HyperRouter's ``H(e)`` reshaped into a router (Do et al. 2023, Eq. 4).

    ``z = relu(e W1 + b1) W2 + b2`` has E (d + 1) entries; reshaped to (E, d + 1) its
    first d columns are ``W^T`` and the last column is the bias.  Returns ``W`` (d, E)
    and ``b`` (E,).
    """
    hidden = jax.nn.relu(embedding @ w1 + b1)
    z = (hidden @ w2 + b2).reshape(-1, d_model + 1)
    return z[:, :d_model].T, z[:, d_model]


class HyperRouter(Router):
    """Router generated by a frozen hypernetwork from a trainable embedding (HyperRouter,
    Do et al. 2023, arXiv 2312.07035, Eq. 4).

    At initialisation, for unit-variance tokens, the generated router's logits have
    variance ``(d + 1) h s^2 E[relu(a)^2] = (d + 1) h s^4 embed_dim / 2`` (``a = e . W1_j``
    is N(0, s^2 |e|^2) given e, and E|e|^2 = embed_dim), i.e. sd 0.29 at d = h = 256,
    d = 64 and 1.16 at d = 256: 1.8x and 3.6x the 0.02-initialised linear routers.

    :param d_model: token dimension d.
    :param n_experts: number of experts E.
    :param hyper_hidden: hidden width h of the hypernetwork (256 in the paper).
    :param embed_dim: dimension of the trainable embedding (default ``d_model``).
    :param init_std: std s of the frozen hypernetwork weights (0.02 as the authors; None
        also means 0.02, the init HyperRouter always had here).
    :param rngs: the ``flax.nnx.Rngs`` the frozen hypernetwork and the embedding are
        initialised from (its ``params`` stream).
    """

    def __init__(
        self,
        d_model: int,
        n_experts: int,
        hyper_hidden: int = 256,
        embed_dim: int | None = None,
        *,
        init_std: float = 0.02,
        rngs: nnx.Rngs,
    ):
        _check_dims(d_model, n_experts)
        init_std = check_init_std("init_std", init_std)
        init_std = 0.02 if init_std is None else init_std
        embed_dim = d_model if embed_dim is None else embed_dim
        if int(embed_dim) < 1:
            raise ValueError(f"embed_dim must be a positive integer, got {embed_dim!r}")
        if int(hyper_hidden) < 1:
            raise ValueError(f"hyper_hidden must be a positive integer, got {hyper_hidden!r}")
        self.d_model, self.n_experts = int(d_model), int(n_experts)
        self.embed_dim, self.hyper_hidden = int(embed_dim), int(hyper_hidden)
        out = self.n_experts * (self.d_model + 1)
        self.embedding = nnx.Param(jax.random.normal(rngs.params(), (self.embed_dim,)))
        normal = jax.random.normal
        self.w1 = Frozen(init_std * normal(rngs.params(), (self.embed_dim, self.hyper_hidden)))
        self.b1 = Frozen(jnp.zeros((self.hyper_hidden,), jnp.float32))
        self.w2 = Frozen(init_std * normal(rngs.params(), (self.hyper_hidden, out)))
        self.b2 = Frozen(jnp.zeros((out,), jnp.float32))

    def weight_and_bias(self) -> tuple[Array, Array]:
        return hypernet_router_weights(
            self.embedding[...].astype(jnp.float32),
            self.w1[...],
            self.b1[...],
            self.w2[...],
            self.b2[...],
            self.d_model,
        )


ROUTERS = {"linear": LinearRouter, "random": RandomRouter, "hyper": HyperRouter}


def make_router(
    kind: str | Router, d_model: int, n_experts: int, *, rngs: nnx.Rngs, **kwargs
) -> Router:
    """Build a router from its name ("linear", "random", "hyper") or check an instance;
    ``kwargs`` go to the router's constructor."""
    if isinstance(kind, Router):
        if kind.d_model != d_model or kind.n_experts != n_experts:
            raise ValueError(
                f"router: instance has (d_model, n_experts)=({kind.d_model}, {kind.n_experts}),"
                f" expected ({d_model}, {n_experts})"
            )
        return kind
    if kind not in ROUTERS:
        raise ValueError(f"router must be one of {sorted(ROUTERS)} or a Router, got {kind!r}")
    return ROUTERS[kind](d_model, n_experts, rngs=rngs, **kwargs)
