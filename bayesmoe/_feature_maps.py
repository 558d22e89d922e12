r"""How a family's regressors change when its inputs are standardised: the exact affine map
:math:`f((x - m)/s) = A f(x) + c` of a family whose regressors :math:`f` are polynomials in x.

A linear predictor :math:`b + a^\top f(\tilde x)` on the standardised inputs :math:`\tilde x = (x - m)/s`
is the linear predictor :math:`(b + a^\top c) + (A^\top a)^\top f(x)` on the raw ones (the *pull-back*
of ``(a, b)`` through the map), so maximum-likelihood fits may run on standardised data and map the
estimates back exactly. The map of the inverse change of units (:math:`x = (\tilde x - (-m/s)) / (1/s)`)
is :func:`polynomial_map` at ``(-m/s, 1/s)``: no matrix is ever inverted.

For a monomial :math:`\tilde x^\alpha = \prod_j ((x_j - m_j)/s_j)^{\alpha_j}` the binomial theorem
gives the coefficient of :math:`x^\beta` (:math:`\beta \le \alpha` entrywise):

.. math::  A_{\alpha\beta} = \prod_j \binom{\alpha_j}{\beta_j} (-m_j)^{\alpha_j - \beta_j} s_j^{-\alpha_j},

with :math:`\beta = 0` giving the constant :math:`c_\alpha`. ``A`` is stored sparse (a linear
family of d inputs has d entries, not d^2), so the map costs what the regressors do.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from bayesmoe._math import monomials

__all__ = ["FeatureMap", "identity_map", "polynomial_map"]


class FeatureMap(NamedTuple):
    """:math:`f((x - m)/s) = A f(x) + c` with A sparse: ``A[rows[i], cols[i]] = vals[i]``.

    :ivar rows: the standardised regressor of each entry (static numpy ints).
    :ivar cols: the raw regressor of each entry (static numpy ints).
    :ivar vals: the entries of A.
    :ivar offset: c, shape (p,).
    """

    rows: np.ndarray
    cols: np.ndarray
    vals: jnp.ndarray
    offset: jnp.ndarray

    def pull(self, coef, intercept):
        r"""(coef, intercept) of :math:`b + a^\top f(\tilde x)` as those of :math:`f(x)`: :math:`(A^\top a,
        b + a^\top c)`; ``coef`` (..., p), ``intercept`` (...)."""
        coef = jnp.asarray(coef)
        moved = coef[..., self.rows] * self.vals
        out = jnp.zeros_like(coef).at[..., self.cols].add(moved)
        return out, jnp.asarray(intercept) + coef @ self.offset


def identity_map(x_loc, x_scale) -> FeatureMap:
    """The map of regressors that are x itself: A = diag(1/s), c = -m/s."""
    m, s = jnp.asarray(x_loc), jnp.asarray(x_scale)
    idx = np.arange(m.shape[-1])
    return FeatureMap(idx, idx, 1.0 / s, -m / s)


@functools.lru_cache(maxsize=64)
def _structure(d: int, degree: int):
    """Static index tables of the polynomial map: per nonzero entry (row, col) and per slot (at most
    ``degree`` inputs per monomial) the input j, alpha_j, beta_j and the binomial coefficient; the same
    for the constant terms (beta = 0)."""
    terms = monomials(d, degree)
    index = {t: i for i, t in enumerate(terms)}
    rows, cols, entry_slots, offset_slots = [], [], [], []
    for i, t in enumerate(terms):
        alpha = {j: t.count(j) for j in sorted(set(t))}
        js = list(alpha)
        for beta_counts in _sub_multi_indices([alpha[j] for j in js]):
            slots = [(j, alpha[j], b) for j, b in zip(js, beta_counts, strict=True)]
            slots += [(0, 0, 0)] * (degree - len(slots))
            if sum(beta_counts) == 0:
                offset_slots.append(slots)
                continue
            beta = tuple(sorted(j for j, b in zip(js, beta_counts, strict=True) for _ in range(b)))
            rows.append(i)
            cols.append(index[beta])
            entry_slots.append(slots)
    return (np.asarray(rows, np.int64), np.asarray(cols, np.int64), _slot_table(entry_slots),
            _slot_table(offset_slots))


def _sub_multi_indices(alpha: list[int]):
    """Every beta with 0 <= beta_j <= alpha_j."""
    if not alpha:
        yield ()
        return
    for b in range(alpha[0] + 1):
        for rest in _sub_multi_indices(alpha[1:]):
            yield (b, *rest)


def _slot_table(slots: list) -> tuple[np.ndarray, ...]:
    a = np.asarray(slots, np.int64).reshape(len(slots), -1, 3)
    j, alpha, beta = a[..., 0], a[..., 1], a[..., 2]
    binom = np.vectorize(math.comb)(alpha, beta).astype(np.float64)
    return j, alpha, beta, binom


def _values(table, neg_m_pow, inv_s_pow):
    j, alpha, beta, binom = table
    return jnp.prod(binom * neg_m_pow[alpha - beta, j] * inv_s_pow[alpha, j], axis=-1)


def _powers(v, degree: int):
    """(degree + 1, d): row k holds v**k (products, exact for negative v)."""
    out = [jnp.ones_like(v)]
    for _ in range(degree):
        out.append(out[-1] * v)
    return jnp.stack(out)


def polynomial_map(x_loc, x_scale, degree: int) -> FeatureMap:
    """The map of the regressors :func:`bayesmoe._math.polynomial_features` of total degree 1..degree."""
    m, s = jnp.asarray(x_loc), jnp.asarray(x_scale)
    if degree == 1:
        return identity_map(m, s)
    rows, cols, entries, offsets = _structure(int(m.shape[-1]), int(degree))
    neg_m_pow, inv_s_pow = _powers(-m, degree), _powers(1.0 / s, degree)
    return FeatureMap(rows, cols, _values(entries, neg_m_pow, inv_s_pow),
                      _values(offsets, neg_m_pow, inv_s_pow))
