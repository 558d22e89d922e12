r"""The per-observation mixture-of-experts distribution.

:math:`p(y_i) = \sum_k \mathrm{softmax}(\ell_i)_k \, p_k(y_i)` where the gate logits :math:`\ell_i` and the
components :math:`p_k` both vary with the observation :math:`i` (through the covariates). NumPyro's
``MixtureSameFamily`` covers the same density; this class adds the expert index on sampling,
posterior expert membership (``responsibilities``) and moments, and accepts any component of batch
shape (..., n, K).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax.scipy.special import logsumexp
from numpyro.distributions import constraints
from numpyro.distributions.util import validate_sample

__all__ = ["MixtureOfExperts"]


class MixtureOfExperts(dist.Distribution):
    r"""Mixture with observation-specific gate probabilities and components.

    :param gate_logits: (..., n, K) gate logits (need not be normalised: a log-softmax is taken).
    :param component_distribution: any NumPyro distribution of batch shape (..., n, K), e.g.
        ``Normal(loc (n, K), scale (K,))``, ``StudentT``, ``Poisson``, ``Categorical(logits (n, K, C))``.

    ``log_prob(y)`` is :math:`\log \sum_k \exp(\log g_{ik} + \log p_k(y_i))` (log-sum-exp);
    ``sample`` draws the expert index then the value; ``sample_with_index`` also returns the index.
    :param validate_args: NumPyro's argument validation (None: the global setting).
    """

    arg_constraints = {"gate_logits": constraints.real_vector}
    pytree_data_fields = ("gate_logits", "component_distribution")

    def __init__(self, gate_logits, component_distribution: dist.Distribution, *,
                 validate_args=None):
        if not isinstance(component_distribution, dist.Distribution):
            raise ValueError("`component_distribution` must be a numpyro Distribution, got "
                             f"{type(component_distribution).__name__}")
        gate_logits = jnp.asarray(gate_logits)
        if gate_logits.ndim < 1:
            raise ValueError("`gate_logits` must have a last axis of experts, got a scalar")
        comp_batch = tuple(component_distribution.batch_shape)
        if len(comp_batch) < 1 or comp_batch[-1] != gate_logits.shape[-1]:
            raise ValueError(f"`component_distribution` must have batch shape (..., K) with "
                             f"K = {gate_logits.shape[-1]} experts (the last axis of `gate_logits`), "
                             f"got batch shape {comp_batch}")
        try:
            batch_shape = jnp.broadcast_shapes(gate_logits.shape[:-1], comp_batch[:-1])
        except ValueError as err:
            raise ValueError(f"`gate_logits` shape {gate_logits.shape} does not broadcast with the "
                             f"component batch shape {comp_batch}") from err
        self.gate_logits = gate_logits
        self.component_distribution = component_distribution
        super().__init__(batch_shape=batch_shape, event_shape=component_distribution.event_shape,
                         validate_args=validate_args)

    @property
    def n_experts(self) -> int:
        return self.gate_logits.shape[-1]

    @constraints.dependent_property
    def support(self):
        return self.component_distribution.support

    @property
    def is_discrete(self) -> bool:
        return self.component_distribution.is_discrete

    @property
    def log_gate(self) -> jnp.ndarray:
        """Normalised log gate probabilities, broadcast to batch_shape + (K,)."""
        lg = jax.nn.log_softmax(self.gate_logits, axis=-1)
        return jnp.broadcast_to(lg, self.batch_shape + (self.n_experts,))

    @property
    def gate_probs(self) -> jnp.ndarray:
        return jnp.exp(self.log_gate)

    def component_log_probs(self, value) -> jnp.ndarray:
        """log p_k(value), shape (sample..., batch..., K)."""
        value = jnp.asarray(value)
        value = jnp.expand_dims(value, axis=value.ndim - len(self.event_shape))
        return self.component_distribution.log_prob(value)

    @validate_sample
    def log_prob(self, value):
        return logsumexp(self.log_gate + self.component_log_probs(value), axis=-1)

    def responsibilities(self, value) -> jnp.ndarray:
        r"""Posterior expert membership :math:`P(z_i = k | y_i) \propto g_{ik} p_k(y_i)`, (..., K).

        :param value: observations y, shape (..., n) plus the components' event shape.
        """
        joint = self.log_gate + self.component_log_probs(value)
        return jax.nn.softmax(joint, axis=-1)

    def sample_with_index(self, key, sample_shape=()) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Draw (value, expert index); the index has shape sample_shape + batch_shape.

        :param key: a ``jax.random`` key.
        :param sample_shape: leading shape of the draws.
        """
        key_z, key_y = jax.random.split(key)
        shape = tuple(sample_shape) + tuple(self.batch_shape)
        z = jax.random.categorical(key_z, self.log_gate, shape=shape)
        comp = self.component_distribution.expand(self.batch_shape + (self.n_experts,))
        ys = comp.sample(key_y, sample_shape)  # sample + batch + (K,) + event
        ev = len(self.event_shape)
        idx = z.reshape(z.shape + (1,) + (1,) * ev)
        y = jnp.take_along_axis(ys, idx, axis=len(shape))
        return jnp.squeeze(y, axis=len(shape)), z

    def sample(self, key, sample_shape=()):
        return self.sample_with_index(key, sample_shape)[0]

    def sample_with_intermediates(self, key, sample_shape=()):
        y, z = self.sample_with_index(key, sample_shape)
        return y, [z]

    @property
    def mean(self):
        m = self.component_distribution.mean
        w = self.gate_probs
        if self.event_shape:
            w = w.reshape(w.shape + (1,) * len(self.event_shape))
        return jnp.sum(w * m, axis=-1 - len(self.event_shape))

    @property
    def variance(self):
        m = self.component_distribution.mean
        v = self.component_distribution.variance
        w = self.gate_probs
        if self.event_shape:
            w = w.reshape(w.shape + (1,) * len(self.event_shape))
        ax = -1 - len(self.event_shape)
        mean = jnp.sum(w * m, axis=ax)
        return jnp.sum(w * (v + m**2), axis=ax) - mean**2
