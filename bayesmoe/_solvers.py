r"""Small numerical solvers of the math layer (pure JAX, jit- and vmap-safe).

* :func:`spd_solve`: a symmetric positive (semi-)definite linear solve by Cholesky.
* :func:`gram`: weighted Gram matrices without (n, m, m) temporaries.
* :func:`weighted_least_squares`: per-expert weighted least squares (the Gaussian experts' M-step).
* :func:`multinomial_newton`: weighted multinomial logistic regression with soft targets (the softmax
  gate's and the multinomial-logistic experts' M-steps).
* :func:`newton_ascent`: a monotone damped Newton ascent on any smooth objective of a flat vector
  (step halving; an indefinite Hessian is made definite by taking absolute eigenvalues), used for
  IRLS-type M-steps and the generic generalised-EM M-step.
* :func:`bisect`: a vectorised bisection for monotone scalar equations.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["bisect", "gram", "multinomial_newton", "newton_ascent", "spd_solve", "weighted_least_squares"]

_MAX_HALVING = 20
_NEWTON_REL_TOL = 1e-10


# ----------------------------------------------------------------------------- linear algebra
def spd_solve(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Solve a x = b for symmetric positive (semi-)definite a (m, m), b (m,) or (m, r).

    Cholesky; if (and only if) the factor is not finite, retry with the jitter
    ``1e3 * eps * (tr(a) / m + 1) * I``.
    """
    m = a.shape[-1]
    eps = jnp.finfo(a.dtype).eps
    chol = jnp.linalg.cholesky(a)
    ok = jnp.all(jnp.isfinite(chol))
    jitter = 1e3 * eps * (jnp.trace(a) / m + 1.0)
    chol_j = jnp.linalg.cholesky(a + jitter * jnp.eye(m, dtype=a.dtype))
    chol = jnp.where(ok, chol, chol_j)
    return jax.scipy.linalg.cho_solve((chol, True), b)


def gram(design: jnp.ndarray, weights: jnp.ndarray) -> jnp.ndarray:
    r"""Weighted Gram matrices :math:`G_k = Z^\top \mathrm{diag}(w_{\cdot k}) Z`, one per weight column.

    One matrix product per weight column: the temporaries hold (K, n, m) numbers, never the
    (n, m, m) outer products of the rows (which do not fit in memory for m in the thousands).

    :param design: (n, m) design matrix Z. :param weights: (n, K) weights, one column per matrix.
    :returns: (K, m, m).
    """
    return jnp.einsum("kna,nb->kab", weights.T[:, :, None] * design[None], design)


# ----------------------------------------------------------------------------- Newton routine
def _logits(beta: jnp.ndarray, design: jnp.ndarray) -> jnp.ndarray:
    """Logits (n, J+1) of the free rows beta (J, m) on design (n, m), the reference column 0."""
    eta = design @ beta.T
    return jnp.concatenate([eta, jnp.zeros((eta.shape[0], 1), eta.dtype)], axis=1)


def _mlogit_objective(beta, design, targets, weights):
    """sum_i w_i sum_k T_ik log softmax_k(eta_i)."""
    logp = jax.nn.log_softmax(_logits(beta, design), axis=-1)
    return jnp.sum(weights * jnp.sum(targets * logp, axis=-1))


def _mlogit_derivatives(beta, design, targets, weights):
    """Objective, gradient (J, m) and the negated Hessian (J m, J m) of :func:`_mlogit_objective`."""
    J, m = beta.shape
    logp = jax.nn.log_softmax(_logits(beta, design), axis=-1)
    obj = jnp.sum(weights * jnp.sum(targets * logp, axis=-1))
    p = jnp.exp(logp[:, :J])                                   # (n, J)
    u = weights * jnp.sum(targets, axis=-1)                    # (n,)  w_i * sum_k T_ik
    grad = (weights[:, None] * targets[:, :J] - u[:, None] * p).T @ design   # (J, m)
    up = u[:, None] * p                                        # (n, J)
    diag = gram(design, up)                                    # (J, m, m) sum u p_j z z^T
    cross = gram(design, (up[:, :, None] * p[:, None, :]).reshape(-1, J * J)).reshape(J, J, m, m)
    neg_hess = jnp.einsum("jl,jab->jalb", jnp.eye(J, dtype=beta.dtype), diag)
    neg_hess = neg_hess - jnp.transpose(cross, (0, 2, 1, 3))
    return obj, grad, neg_hess.reshape(J * m, J * m)


def multinomial_newton(beta: jnp.ndarray, design: jnp.ndarray, targets: jnp.ndarray,
                       weights: jnp.ndarray | None = None, max_iter: int = 25,
                       rel_tol: float = _NEWTON_REL_TOL, max_halving: int = _MAX_HALVING):
    r"""Weighted multinomial logistic regression with soft targets, by Newton/IRLS with step halving.

    Maximises :math:`F(\beta) = \sum_i w_i \sum_{k=1}^{J+1} T_{ik} \log \mathrm{softmax}_k(\eta_i)` with
    :math:`\eta_{ik} = \beta_k^\top z_i` for the free rows k <= J and :math:`\eta_{i,J+1} = 0` (the
    reference). Gradient :math:`\sum_i w_i (T_{ij} - t_i p_{ij}) z_i` with :math:`t_i = \sum_k T_{ik}`;
    negated Hessian :math:`\sum_i w_i t_i (p_{ij}\delta_{jl} - p_{ij} p_{il}) z_i z_i^\top`
    (positive semi-definite, so F is concave).

    A Newton step is accepted only if F does not decrease, otherwise halved up to ``max_halving``
    times. The loop stops after ``max_iter`` iterations, when no step is accepted, when the increase
    is below ``rel_tol * |F|``, or (without stepping) when the increase the quadratic model predicts,
    :math:`\tfrac12 g^\top H^{-1} g`, is below ``rel_tol * |F|`` (so that in float32, where
    ``rel_tol=1e-10`` is below the rounding of F, no passes are spent on steps lost in rounding).
    Used for the softmax gate's M-step (T = responsibilities, w = 1) and the Categorical experts'
    M-step (T = one-hot(y), w = responsibilities of one expert).

    :param beta: (J, m) starting free rows. :param design: (n, m), typically ``[1, features]``.
    :param targets: (n, J+1) non-negative. :param weights: (n,) or None (ones).
    :returns: (beta, F(beta), number of Newton iterations).
    """
    J, m = beta.shape
    if weights is None:
        weights = jnp.ones(design.shape[0], design.dtype)
    if J == 0:
        return beta, jnp.asarray(0.0, design.dtype), jnp.asarray(0, jnp.int32)

    def objective(flat):
        return _mlogit_objective(flat.reshape(J, m), design, targets, weights)

    def derivatives(flat):
        obj, grad, nh = _mlogit_derivatives(flat.reshape(J, m), design, targets, weights)
        return obj, grad.reshape(-1), nh

    b, obj, it = newton_ascent(objective, beta.reshape(-1), derivatives=derivatives,
                               max_iter=max_iter, rel_tol=rel_tol, max_halving=max_halving,
                               solve=spd_solve)
    return b.reshape(J, m), obj, it


def weighted_least_squares(design: jnp.ndarray, y: jnp.ndarray, weights: jnp.ndarray) -> jnp.ndarray:
    r"""Per-expert weighted least squares: :math:`\beta_k = (Z^\top W_k Z)^{-1} Z^\top W_k y`.

    :param design: (n, m). :param y: (n,). :param weights: (n, K) non-negative.
    :returns: (K, m) coefficients (Cholesky solve; a tiny jitter only when singular).
    """
    xtwx = gram(design, weights)
    xtwy = (weights * y[:, None]).T @ design
    return jax.vmap(spd_solve)(xtwx, xtwy)


def newton_ascent(objective: Callable[[jnp.ndarray], jnp.ndarray], beta: jnp.ndarray, *,
                  derivatives: Callable | None = None, max_iter: int = 10,
                  rel_tol: float = _NEWTON_REL_TOL, max_halving: int = _MAX_HALVING,
                  solve: Callable | None = None):
    r"""Maximise a smooth ``objective`` of a flat vector ``beta`` (m,) by damped Newton steps; the
    objective never decreases (what a generalised-EM M-step needs).

    With ``solve(A, g)`` (for a concave objective whose negated Hessian A is positive semi-definite,
    e.g. :func:`spd_solve`) the Newton step :math:`A\delta = \nabla F` is halved up to ``max_halving``
    times until :math:`F` does not decrease. Without it (any smooth objective) the step is
    Levenberg-Marquardt on the saddle-free Hessian: :math:`\delta(\mu) = V (|\Lambda| + \mu)^{-1} V^\top
    \nabla F` with :math:`A = V\Lambda V^\top`, trying :math:`\mu = 10^{j-12}\max|\Lambda|` for
    j = 0, 1, ... (up to ``max_halving`` + 1 tries) until :math:`F` increases: a Newton step where the
    curvature is informative, a short gradient step where it is not (flat or non-smooth objectives).
    ``derivatives(beta) -> (F, grad, negated Hessian)`` may be given in closed form; by default JAX
    autodiff computes them.

    :returns: (beta, F(beta), number of iterations).
    """
    if derivatives is None:
        def derivatives(b):
            value, grad = jax.value_and_grad(objective)(b)
            return value, grad, -jax.hessian(objective)(b)

    def cond(c):
        return (c[2] < max_iter) & ~c[3]

    def body(c):
        b, _, it, _ = c
        obj, grad, nh = derivatives(b)
        if solve is not None:
            delta = solve(nh, grad)
            step = lambda i: jnp.where(i == 0, 1.0, 0.5**i).astype(b.dtype) * delta
        else:
            lam, vec = jnp.linalg.eigh(0.5 * (nh + nh.T))
            lam = jnp.abs(lam)
            top = jnp.max(lam) + jnp.finfo(b.dtype).tiny
            proj = vec.T @ grad
            delta = vec @ (proj / (lam + 1e-12 * top))
            step = lambda i: vec @ (proj / (lam + top * 10.0 ** (i.astype(b.dtype) - 12.0)))
        small = 0.5 * jnp.sum(grad * delta) <= rel_tol * jnp.abs(obj)
        # concave (solve given): a step that does not decrease F is fine; otherwise F must increase
        better = (lambda v: v >= obj) if solve is not None else (lambda v: v > obj)

        def h_cond(h):
            _, obj_t, i = h
            return ~small & ~better(obj_t) & (i <= max_halving)

        def h_body(h):
            _, _, i = h
            d = step(i)
            return d, objective(b + d), i + 1

        d, obj_t, _ = lax.while_loop(h_cond, h_body, (jnp.zeros_like(b), jnp.asarray(-jnp.inf, b.dtype),
                                                      jnp.asarray(0, jnp.int32)))
        accept = ~small & better(obj_t) & jnp.isfinite(obj_t)
        b_new = jnp.where(accept, b + d, b)
        obj_new = jnp.where(accept, obj_t, obj)
        done = ~accept | (obj_new - obj <= rel_tol * jnp.abs(obj))
        return b_new, obj_new, it + 1, done

    obj0 = objective(beta)
    b, obj, it, _ = lax.while_loop(cond, body, (beta, obj0, jnp.asarray(0, jnp.int32),
                                                ~jnp.isfinite(obj0)))
    return b, obj, it


def bisect(fn: Callable[[jnp.ndarray], jnp.ndarray], lo: jnp.ndarray, hi: jnp.ndarray,
           n_iter: int = 60) -> jnp.ndarray:
    """Root of a decreasing function ``fn`` (element-wise) in [lo, hi]; the bound where it has none."""
    f_lo, f_hi = fn(lo), fn(hi)

    def body(_, c):
        a, b = c
        mid = 0.5 * (a + b)
        pos = fn(mid) > 0
        return jnp.where(pos, mid, a), jnp.where(pos, b, mid)

    a, b = lax.fori_loop(0, n_iter, body, (lo, hi))
    root = 0.5 * (a + b)
    return jnp.where(f_lo <= 0, lo, jnp.where(f_hi >= 0, hi, root))
