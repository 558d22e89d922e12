r"""Quantiles of a per-observation mixture :math:`F_i(t) = \sum_k g_{ik} F_{ik}(t)` (pure JAX).

The quantile :math:`F_i^{-1}(q) = \inf\{t: F_i(t) \ge q\}` is found by bracketing and bisection on
the mixture's CDF (component CDFs from the NumPyro distributions): the bracket starts at the
component means -/+ their standard deviations and is widened (doubling) until it holds the
quantile, then 80 bisection steps. For discrete supports the answer is the smallest support point
with :math:`F_i(t) \ge q`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["mixture_quantile"]

_EXPAND = 60
_BISECT = 80


def mixture_quantile(log_weights: jnp.ndarray, component, q: float, discrete: bool) -> jnp.ndarray:
    r"""The q-quantile of each observation's mixture.

    :param log_weights: normalised log mixture weights (n, K).
    :param component: a NumPyro distribution with batch shape (n, K) and a ``cdf`` method.
    :param q: the probability, in (0, 1).
    :param discrete: whether the support is integer (the answer is then an integer).
    :returns: (n,) quantiles.
    """
    w = jnp.exp(log_weights)
    mean = jnp.asarray(component.mean)
    var = jnp.asarray(component.variance)
    sd = jnp.where(jnp.isfinite(var) & (var > 0), jnp.sqrt(jnp.where(var > 0, var, 1.0)), 1.0)
    mean = jnp.where(jnp.isfinite(mean), mean, 0.0)

    def cdf(t):  # (n,)
        return jnp.sum(w * component.cdf(t[:, None]), axis=-1)

    lo = jnp.min(mean - sd, axis=-1)
    hi = jnp.max(mean + sd, axis=-1)
    width = hi - lo + 1.0

    def widen(_, state):
        lo, hi, width = state
        lo = jnp.where(cdf(lo) >= q, lo - width, lo)
        hi = jnp.where(cdf(hi) < q, hi + width, hi)
        return lo, hi, 2.0 * width

    lo, hi, _ = jax.lax.fori_loop(0, _EXPAND, widen, (lo, hi, width))

    def halve(_, state):
        lo, hi = state
        mid = (lo + hi) / 2
        above = cdf(mid) >= q
        return jnp.where(above, lo, mid), jnp.where(above, mid, hi)

    lo, hi = jax.lax.fori_loop(0, _BISECT, halve, (lo, hi))
    return jnp.floor(hi) if discrete else hi
