r"""The math layer: pure JAX functions shared by the families, EM, MCMC, plots and tests (no NumPyro).

A mixture of experts has the conditional density

.. math::  p(y | x) = \sum_{k=1}^K g_k(x)\, p_k(y | x),

computed in log space: with :math:`\ell_{ik} = \log g_k(x_i) + \log p_k(y_i | x_i)` the pointwise
log-likelihood is :math:`\log\sum_k e^{\ell_{ik}}` (log-sum-exp) and the posterior expert memberships
(responsibilities, the E-step of EM) are :math:`r_{ik} = e^{\ell_{ik} - \log\sum_j e^{\ell_{ij}}}`.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular
from jax.scipy.special import logsumexp

__all__ = ["gaussian_log_components", "gaussian_log_components_diag", "gaussian_tril",
           "log_joint_terms", "monomials", "moe_log_likelihood", "polynomial_features",
           "responsibilities", "softmax_log_weights", "with_intercept"]


# ----------------------------------------------------------------------------- mixtures
def log_joint_terms(log_gate: jnp.ndarray, log_expert: jnp.ndarray) -> jnp.ndarray:
    r""":math:`\ell_{ik} = \log g_k(x_i) + \log p_k(y_i | x_i)`, shape (n, K)."""
    return log_gate + log_expert


def moe_log_likelihood(log_gate: jnp.ndarray, log_expert: jnp.ndarray) -> jnp.ndarray:
    r"""Pointwise :math:`\log \sum_k g_k(x_i) p_k(y_i | x_i)`, shape (n,)."""
    return logsumexp(log_joint_terms(log_gate, log_expert), axis=-1)


def responsibilities(log_gate: jnp.ndarray, log_expert: jnp.ndarray) -> jnp.ndarray:
    r"""Posterior expert memberships :math:`r_{ik} \propto g_k(x_i) p_k(y_i | x_i)`, shape (n, K)."""
    return jax.nn.softmax(log_joint_terms(log_gate, log_expert), axis=-1)


def log_gamma_half_ratio(a: jnp.ndarray) -> jnp.ndarray:
    r""":math:`\log\Gamma(a + 1/2) - \log\Gamma(a)` without cancellation: directly for a <= 8, and for
    larger a by the asymptotic series :math:`\tfrac12\log a - \tfrac1{8a} + \tfrac1{192a^3}` (error below
    1e-7 there), where the difference of two huge ``gammaln`` values loses every digit in float32."""
    a = jnp.asarray(a)
    big = a > 8.0
    ab = jnp.where(big, a, 8.0)
    series = 0.5 * jnp.log(ab) - 1.0 / (8.0 * ab) + 1.0 / (192.0 * ab**3)
    small = jnp.where(big, 1.0, a)
    direct = jax.scipy.special.gammaln(small + 0.5) - jax.scipy.special.gammaln(small)
    return jnp.where(big, series, direct)


def student_t_log_density(y, df, loc, scale):
    r"""Student-t log density :math:`\log\Gamma(\frac{\nu+1}2) - \log\Gamma(\frac\nu2) - \frac12\log(\nu\pi)
    - \log\sigma - \frac{\nu+1}2 \log(1 + z^2/\nu)`, :math:`z = (y - \mu)/\sigma`, accurate for any
    :math:`\nu` (the gamma ratio by :func:`log_gamma_half_ratio`; as :math:`\nu \to \infty` it tends
    to the normal log density instead of losing its digits)."""
    z = (y - loc) / scale
    return (log_gamma_half_ratio(0.5 * df) - 0.5 * jnp.log(df * jnp.pi) - jnp.log(scale)
            - 0.5 * (df + 1.0) * jnp.log1p(z * z / df))


def poisson_cdf(k, rate):
    r""":math:`P(Y \le k)` of a Poisson(rate): the regularised upper incomplete gamma :math:`Q(\lfloor k
    \rfloor + 1, \lambda)`, by ``gammaincc`` below 1000 and by the Wilson-Hilferty normal approximation
    of the gamma distribution above (error below 1e-6 there), where XLA's ``gammaincc`` loses its
    digits in float32 (and, for rates near 1e12, iterates for seconds per value)."""
    a = jnp.floor(jnp.asarray(k)) + 1.0
    lam = jnp.asarray(rate)
    big = jnp.maximum(a, lam) > 1000.0
    exact = jax.scipy.special.gammaincc(jnp.where(big, 1.0, jnp.maximum(a, 1.0)), jnp.where(big, 1.0, lam))
    ab = jnp.where(big, jnp.maximum(a, 1.0), 1000.0)
    z = (jnp.cbrt(lam / ab) - 1.0 + 1.0 / (9.0 * ab)) * 3.0 * jnp.sqrt(ab)
    approx = jax.scipy.special.ndtr(-z)
    return jnp.where(a < 1.0, 0.0, jnp.where(big, approx, exact))


# ----------------------------------------------------------------------------- regressors
def monomials(d: int, degree: int) -> list[tuple[int, ...]]:
    """Index tuples of all monomials of d inputs with total degree 1..degree, by degree then lexically."""
    return [c for k in range(1, degree + 1)
            for c in itertools.combinations_with_replacement(range(d), k)]


def as_array(x) -> jnp.ndarray | np.ndarray:
    """x itself when it is already an array (numpy arrays stay on the host: computing on them
    compiles nothing), else a JAX array."""
    return x if isinstance(x, (np.ndarray, jax.Array)) else jnp.asarray(x)


def polynomial_features(x: jnp.ndarray, degree: int) -> jnp.ndarray:
    """All monomials of the columns of x (n, d) of total degree 1..degree, shape (n, p); numpy in,
    numpy out."""
    x = as_array(x)
    if degree == 1:
        return x
    xp = np if isinstance(x, np.ndarray) else jnp
    cols = [xp.prod(x[:, list(m)], axis=1) for m in monomials(x.shape[-1], degree)]
    return xp.stack(cols, axis=1)


def expert_affine(f: jnp.ndarray, coef: jnp.ndarray, intercept: jnp.ndarray) -> jnp.ndarray:
    r""":math:`b_{km} + a_{km}^\top f_i` for regressors f (n, p), coef (K, m, p), intercept (K, m): shape
    (n, K, m) (class logits of multinomial experts, means of multivariate experts)."""
    return jnp.einsum("np,kmp->nkm", f, jnp.asarray(coef)) + jnp.asarray(intercept)


def with_intercept(f: jnp.ndarray) -> jnp.ndarray:
    """The design ``[1, f]`` of regressors f (n, p): shape (n, p + 1)."""
    return jnp.concatenate([jnp.ones((f.shape[0], 1), f.dtype), f], axis=1)


# ----------------------------------------------------------------------------- gates
def softmax_log_weights(intercept: jnp.ndarray, coef: jnp.ndarray,
                        features: jnp.ndarray) -> jnp.ndarray:
    r""":math:`\log \mathrm{softmax}_k(\beta_{0k} + \beta_{1k}^\top f(x_i))` for features (n, q),
    intercept (K,), coef (K, q); shape (n, K)."""
    logits = features @ jnp.swapaxes(coef, -1, -2) + intercept[..., None, :]
    return jax.nn.log_softmax(logits, axis=-1)


def gaussian_tril(scale: jnp.ndarray, corr_chol: jnp.ndarray | None = None) -> jnp.ndarray:
    r"""Cholesky factor :math:`L_k = \mathrm{diag}(s_k) C_k` of :math:`\Gamma_k = L_k L_k^\top`.

    ``scale`` (..., d) standard deviations, ``corr_chol`` (..., d, d) Cholesky factors of the
    correlation matrices (None: diagonal covariance).
    """
    scale = jnp.asarray(scale)
    if corr_chol is None:
        return scale[..., :, None] * jnp.eye(scale.shape[-1], dtype=scale.dtype)
    return scale[..., :, None] * jnp.asarray(corr_chol)


def gaussian_log_components(weight: jnp.ndarray, loc: jnp.ndarray, scale_tril: jnp.ndarray,
                            x: jnp.ndarray) -> jnp.ndarray:
    r""":math:`\log \pi_k + \log N(x_i | c_k, L_k L_k^\top)`, shape (n, K), for weight (K,),
    loc (K, d), L (K, d, d) lower triangular.

    :param weight: mixing weights :math:`\pi` (K,), on the simplex.
    :param loc: means :math:`c_k` (K, d).
    :param scale_tril: Cholesky factors :math:`L_k` (K, d, d) of the covariances.
    :param x: inputs (n, d).
    """
    d = x.shape[-1]
    diff = x[:, None, :] - loc[None, :, :]  # (n, K, d)
    z = jax.vmap(lambda L, r: solve_triangular(L, r.T, lower=True).T, in_axes=(0, 1),
                 out_axes=1)(scale_tril, diff)
    half_logdet = jnp.sum(jnp.log(jnp.abs(jnp.diagonal(scale_tril, axis1=-2, axis2=-1))), -1)
    log_norm = -0.5 * jnp.sum(z**2, -1) - half_logdet - 0.5 * d * math.log(2 * math.pi)
    return jnp.log(weight) + log_norm


def gaussian_log_components_diag(weight: jnp.ndarray, loc: jnp.ndarray, scale: jnp.ndarray,
                                 x: jnp.ndarray) -> jnp.ndarray:
    r"""As :func:`gaussian_log_components` with diagonal covariance, ``scale`` (K, d) sds.

    :param weight: mixing weights :math:`\pi` (K,).
    :param loc: means (K, d).
    :param scale: standard deviations (K, d).
    :param x: inputs (n, d).
    """
    d = x.shape[-1]
    z = (x[:, None, :] - loc[None]) / scale[None]
    log_norm = (-0.5 * jnp.sum(z**2, -1) - jnp.sum(jnp.log(scale), -1)
                - 0.5 * d * math.log(2 * math.pi))
    return jnp.log(weight) + log_norm
