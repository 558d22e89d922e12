r"""A monotone accelerated proximal-gradient solver for l1-penalised smooth problems (pure JAX).

Minimises :math:`F(v) = f(v) + \sum_j w_j |v_j|` (f smooth, :math:`w_j \ge 0`; :math:`w_j = 0` leaves
:math:`v_j` unpenalised) by the monotone FISTA of Beck & Teboulle (2009, "Fast gradient-based
algorithms for constrained total variation image denoising and deblurring problems", MFISTA):

.. math:: z = \mathrm{prox}_{w/L}\big(u - \nabla f(u)/L\big), \qquad
    \mathrm{prox}_{s}(a)_j = \mathrm{sign}(a_j)\max(|a_j| - s_j, 0),

with the step :math:`1/L` found by backtracking (L doubled until
:math:`f(z) \le f(u) + \nabla f(u)^\top(z - u) + \tfrac L2\|z - u\|^2`); the iterate moves to z only when
:math:`F(z) \le F(v)` (so F never increases) and the extrapolation point is
:math:`u' = v' + \tfrac{t}{t'}(z - v') + \tfrac{t-1}{t'}(v' - v)`,
:math:`t' = (1 + \sqrt{1 + 4t^2})/2`. The soft-threshold gives exact zeros.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["mfista", "soft_threshold"]

_MAX_BACKTRACK = 60


def soft_threshold(a: jnp.ndarray, s: jnp.ndarray) -> jnp.ndarray:
    """:math:`\\mathrm{sign}(a)\\max(|a| - s, 0)` elementwise: the proximal map of :math:`s|\\cdot|`."""
    return jnp.sign(a) * jnp.maximum(jnp.abs(a) - s, 0.0)


class _State(NamedTuple):
    v: jnp.ndarray      # current iterate (F never increases along v)
    fv: jnp.ndarray     # F(v)
    u: jnp.ndarray      # extrapolation point
    t: jnp.ndarray
    lip: jnp.ndarray    # current Lipschitz estimate L
    it: jnp.ndarray
    done: jnp.ndarray


def mfista(f: Callable[[jnp.ndarray], jnp.ndarray], v0: jnp.ndarray, w: jnp.ndarray,
           mask: jnp.ndarray | None = None, *, max_iter: int = 50, xtol: float = 1e-7,
           lip0: float = 1.0):
    r"""Minimise :math:`f(v) + \sum_j w_j|v_j|` from ``v0`` (see the module docstring).

    :param f: smooth objective of a flat vector (m,) -> scalar (non-finite values are rejected by the
        backtracking).
    :param v0: (m,) start. :param w: (m,) non-negative penalty weights (0: unpenalised).
    :param mask: (m,) 1 for free entries, 0 for entries held fixed (e.g. reference rows); None: all free.
    :param max_iter: maximum number of proximal-gradient iterations.
    :param xtol: stop when a step moves no entry by more than ``xtol * (1 + max|v|)``.
    :param lip0: starting Lipschitz estimate (doubled as needed).
    :returns: (v, F(v), number of iterations).
    """
    dtype = v0.dtype
    mask = jnp.ones_like(v0) if mask is None else mask.astype(dtype)
    w = w.astype(dtype)
    pen = lambda v: jnp.sum(w * jnp.abs(v))
    fval = lambda v: jnp.where(jnp.isfinite(f(v)), f(v), jnp.inf)

    def cond(s):
        return (s.it < max_iter) & ~s.done

    def body(s):
        fu, gu = jax.value_and_grad(f)(s.u)
        gu = jnp.where(mask > 0, gu, 0.0)

        def trial(lip):
            z = soft_threshold(s.u - gu / lip, w / lip)
            z = jnp.where(mask > 0, z, s.u)
            return z, fval(z)

        def bound(lip, z):
            dz = z - s.u
            return fu + jnp.sum(gu * dz) + 0.5 * lip * jnp.sum(dz * dz)

        def bt_cond(c):
            lip, z, fz, k = c
            return ~(fz <= bound(lip, z)) & (k < _MAX_BACKTRACK)

        def bt_body(c):
            lip, _, _, k = c
            lip = 2.0 * lip
            z, fz = trial(lip)
            return lip, z, fz, k + 1

        z0, fz0 = trial(s.lip)
        lip, z, fz, _ = lax.while_loop(bt_cond, bt_body, (s.lip, z0, fz0, jnp.asarray(0)))
        fz_total = fz + pen(z)
        better = fz_total <= s.fv
        v_new = jnp.where(better, z, s.v)
        fv_new = jnp.where(better, fz_total, s.fv)
        t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * s.t * s.t))
        u_new = v_new + (s.t / t_new) * (z - v_new) + ((s.t - 1.0) / t_new) * (v_new - s.v)
        done = jnp.max(jnp.abs(z - s.u)) <= xtol * (1.0 + jnp.max(jnp.abs(s.u)))
        # a finite Lipschitz estimate that may shrink again (longer steps where the curvature allows)
        return _State(v_new, fv_new, u_new, t_new, 0.9 * lip, s.it + 1, done | ~jnp.isfinite(fv_new))

    f0 = fval(v0) + pen(v0)
    s0 = _State(v0, f0, v0, jnp.asarray(1.0, dtype), jnp.asarray(lip0, dtype), jnp.asarray(0),
                jnp.asarray(False))
    s = lax.while_loop(cond, body, s0)
    return s.v, s.fv, s.it
