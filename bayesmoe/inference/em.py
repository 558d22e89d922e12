r"""Maximum likelihood by expectation-maximisation (EM), pure and jit-compiled.

``em_fit(model, x, y, init)`` runs S EM chains at once (the starts are ``vmap``-ed, the outer loop is a
``lax.while_loop``) and returns an :class:`EMResult`. Supported models (anything else raises a
``ValueError`` before compiling):

1. softmax or modified-softmax gate + Gaussian experts (any polynomial degree);
2. Gaussian gate + Gaussian experts with ``joint=True`` (GLLiM: closed-form joint EM);
3. softmax or modified-softmax gate + Categorical (multinomial-logistic) experts.

**E-step** (``papers.md`` section 8), in log space for every model:

.. math::  r_{ik} = \frac{g_k(x_i)\, p_k(y_i | x_i)}{\sum_j g_j(x_i)\, p_j(y_i | x_i)},
    \qquad \ell = \sum_i \log \sum_k g_k(x_i)\, p_k(y_i | x_i)

(``logsumexp``); for the joint Gaussian-gated model the gate term is :math:`\pi_k N(x_i | c_k, \Gamma_k)`
and :math:`\ell` is the joint log-likelihood :math:`\sum_i \log p(x_i, y_i)`.

**M-step, Gaussian experts** :math:`N(y | b_k + a_k^\top \mathrm{poly}(x), \sigma_k^2)`: weighted least
squares on the design :math:`z_i = [1, \mathrm{poly}(x_i)]` (the :math:`(p+1)\times(p+1)` normal equations
:math:`(Z^\top R_k Z)\beta_k = Z^\top R_k y` with :math:`R_k = \mathrm{diag}(r_{\cdot k})`), then
:math:`\sigma_k^2 = \sum_i r_{ik}(y_i - z_i^\top\beta_k)^2 / \sum_i r_{ik}`, bounded below by
``scale_floor**2`` (arXiv 2305.03288; ``papers.md`` sections 1, 8). The normal equations are solved by
Cholesky; only when that factorisation fails (a singular system, e.g. an expert with fewer distinct
points than regressors) is a jitter :math:`10^3\,\epsilon\,(\mathrm{tr}(A)/m + 1)\,I` added
(:math:`\epsilon` the machine epsilon of the dtype); nothing is added otherwise.

**M-step, softmax gate** :math:`g_k(x) = \mathrm{softmax}_k(\beta_{0k} + \beta_{1k}^\top M(x))` (``M`` the
identity for ``Softmax``; arXiv 2305.03288, 2310.14188): maximise the gate's expected complete-data
log-likelihood :math:`Q_g(\beta) = \sum_i \sum_k r_{ik} \log g_k(x_i)` -- a multinomial logistic regression
with soft targets :math:`r_{ik}` on :math:`[1, M(x_i)]` -- over the K-1 free rows (the reference row K is
fixed at 0) by Newton/IRLS with step halving: a step is accepted only when :math:`Q_g` does not decrease
(halving up to 20 times), at most ``max_newton`` Newton iterations per EM step, stopping early when the
increase (or the increase the quadratic model predicts for the next step) is below :math:`10^{-10}|Q_g|`
(see :func:`multinomial_newton`). Each EM step therefore increases the expected complete-data
log-likelihood, which makes the algorithm a generalised EM whose observed log-likelihood never decreases.

**M-step, Categorical experts** (arXiv 2310.14188; ``papers.md`` section 3): per expert, the same Newton
routine (:func:`multinomial_newton`) on one-hot(y) with observation weights :math:`r_{ik}`, the last class
the reference (fixed at 0).

**M-step, joint Gaussian gate (GLLiM)** (arXiv 2305.07572; ``papers.md`` section 2), closed form:
:math:`\pi_k = r_k / n` with :math:`r_k = \sum_i r_{ik}`; :math:`c_k = \sum_i r_{ik} x_i / r_k`;
:math:`\Gamma_k` the weighted covariance of x (per-dimension variances bounded below by ``scale_floor**2``
for ``covariance="diag"``; plus ``scale_floor**2 * I`` for ``"full"``); experts as above.

**Stopping**: the relative change :math:`|\ell_t - \ell_{t-1}| \le \mathrm{tol}\,|\ell_{t-1}|`
(``papers.md`` section 8) or ``max_steps`` M-steps. An expert whose total responsibility :math:`r_k` is
below :math:`n\epsilon` keeps its previous parameters (its M-step is undefined). If an update produces a
non-finite log-likelihood the previous parameters are kept and the chain stops (``converged=False``).

The maximised likelihood is the plain (unpenalised) likelihood: the model's priors are ignored. The
Gaussian-experts likelihood is unbounded (an expert collapsing on a few points); ``scale_floor`` bounds the
standard deviations below, and several starts (``init`` with S > 1) guard against poor local maxima.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import logsumexp

from bayesmoe import experts as _experts
from bayesmoe import gates as _gates

Params = dict[str, Any]

__all__ = ["EMResult", "em_fit", "multinomial_newton"]

_MAX_HALVING = 20
_NEWTON_REL_TOL = 1e-10


class EMResult(NamedTuple):
    """Result of :func:`em_fit`, every field with a leading axis of S starts.

    params: dict of full parameters (the site names of ``init``; reference rows as zeros).
    log_likelihood: (S,) the final observed-data log-likelihood ``sum(model._log_likelihood(...))``
    (joint, i.e. including log p(x), for ``joint=True`` models).
    n_steps: (S,) number of EM (M-)steps taken. converged: (S,) bool, the tolerance was met.
    trace: (S, max_steps + 1) the log-likelihood at the start and after each step, NaN after the
    last step (only with ``return_trace=True``; None otherwise).
    """

    params: Params
    log_likelihood: jnp.ndarray
    n_steps: jnp.ndarray
    converged: jnp.ndarray
    trace: jnp.ndarray | None = None


# ----------------------------------------------------------------------------- linear algebra
def _spd_solve(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
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
    outer = (design[:, :, None] * design[:, None, :]).reshape(-1, m * m)     # (n, m*m)
    diag = (up.T @ outer).reshape(J, m, m)                     # sum u p_j z z^T
    cross = ((up[:, :, None] * p[:, None, :]).reshape(-1, J * J).T @ outer).reshape(J, J, m, m)
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

    def cond(c):
        return (c[2] < max_iter) & ~c[3]

    def body(c):
        b, _, it, _ = c
        obj, grad, nh = _mlogit_derivatives(b, design, targets, weights)
        delta = _spd_solve(nh, grad.reshape(-1)).reshape(J, m)
        # the quadratic model's predicted increase (half the Newton decrement): if it is already below
        # the tolerance, stop here rather than evaluate a step lost in rounding
        small = 0.5 * jnp.sum(grad * delta) <= rel_tol * jnp.abs(obj)

        def h_cond(h):
            _, obj_t, i = h
            return ~small & ~(obj_t >= obj) & (i <= max_halving)

        def h_body(h):
            t, _, i = h
            t = jnp.where(i == 0, t, 0.5 * t)
            return t, _mlogit_objective(b + t * delta, design, targets, weights), i + 1

        one = jnp.asarray(1.0, b.dtype)
        t, obj_t, _ = lax.while_loop(h_cond, h_body, (one, jnp.asarray(-jnp.inf, b.dtype), 0))
        accept = ~small & (obj_t >= obj)
        b_new = jnp.where(accept, b + t * delta, b)
        obj_new = jnp.where(accept, obj_t, obj)
        done = ~accept | (obj_new - obj <= rel_tol * jnp.abs(obj))
        return b_new, obj_new, it + 1, done

    zero = jnp.asarray(0.0, design.dtype)
    b, obj, it, _ = lax.while_loop(cond, body, (beta, zero, jnp.asarray(0, jnp.int32),
                                                jnp.asarray(False)))
    return b, obj, it


# ----------------------------------------------------------------------------- M-steps
def _with_ones(f: jnp.ndarray) -> jnp.ndarray:
    return jnp.concatenate([jnp.ones((f.shape[0], 1), f.dtype), f], axis=1)


def _alive(rk: jnp.ndarray, n: int) -> jnp.ndarray:
    return rk > n * jnp.finfo(rk.dtype).eps


def _gaussian_experts_mstep(params, r, design, y, floor2):
    """Weighted least squares per expert and the floored weighted residual variance."""
    rk = jnp.sum(r, axis=0)                                          # (K,)
    m = design.shape[1]
    outer = (design[:, :, None] * design[:, None, :]).reshape(-1, m * m)
    xtwx = (r.T @ outer).reshape(-1, m, m)                           # (K, m, m)
    xtwy = (r * y[:, None]).T @ design                              # (K, m)
    beta = jax.vmap(_spd_solve)(xtwx, xtwy)                          # (K, m)
    resid = y[:, None] - design @ beta.T                             # (n, K)
    var = jnp.sum(r * resid**2, axis=0) / jnp.where(rk > 0, rk, 1.0)
    scale = jnp.sqrt(jnp.maximum(var, floor2))
    alive = _alive(rk, y.shape[0])
    return {"expert_intercept": jnp.where(alive, beta[:, 0], params["expert_intercept"]),
            "expert_coef": jnp.where(alive[:, None], beta[:, 1:], params["expert_coef"]),
            "expert_scale": jnp.where(alive, scale, params["expert_scale"])}


def _categorical_experts_mstep(params, r, design, onehot, max_newton):
    b, a = params["expert_intercept"], params["expert_coef"]            # (K, C), (K, C, p)
    beta = jnp.concatenate([b[:, :-1, None], a[:, :-1]], axis=-1)       # (K, C-1, p+1)
    beta, _, _ = jax.vmap(lambda bk, wk: multinomial_newton(bk, design, onehot, wk, max_newton))(
        beta, r.T)
    K, _, m = beta.shape
    full = jnp.concatenate([beta, jnp.zeros((K, 1, m), beta.dtype)], axis=1)  # (K, C, p+1)
    return {"expert_intercept": full[..., 0], "expert_coef": full[..., 1:]}


def _softmax_gate_mstep(params, r, design, max_newton):
    b, w = params["gate_intercept"], params["gate_coef"]
    beta = jnp.concatenate([b[:-1, None], w[:-1]], axis=1)               # (K-1, q+1)
    beta, _, _ = multinomial_newton(beta, design, r, None, max_newton)
    full = jnp.concatenate([beta, jnp.zeros((1, beta.shape[1]), beta.dtype)], axis=0)
    return {"gate_intercept": full[:, 0], "gate_coef": full[:, 1:]}


def _gaussian_gate_mstep(params, r, x, floor2, full_cov):
    n = x.shape[0]
    rk = jnp.sum(r, axis=0)
    safe = jnp.where(rk > 0, rk, 1.0)
    alive = _alive(rk, n)
    weight = rk / n
    loc = (r.T @ x) / safe[:, None]                                   # (K, d)
    diff = x[:, None, :] - loc[None]                                  # (n, K, d)
    out = {"gate_weight": weight, "gate_loc": jnp.where(alive[:, None], loc, params["gate_loc"])}
    if full_cov:
        d = x.shape[1]
        cov = jnp.einsum("nk,nka,nkb->kab", r, diff, diff) / safe[:, None, None]
        cov = cov + floor2 * jnp.eye(d, dtype=x.dtype)
        out["gate_cov"] = jnp.where(alive[:, None, None], cov, params["gate_cov"])
    else:
        var = jnp.einsum("nk,nka->ka", r, diff**2) / safe[:, None]
        scale = jnp.sqrt(jnp.maximum(var, floor2))
        out["gate_scale"] = jnp.where(alive[:, None], scale, params["gate_scale"])
    return out


# ----------------------------------------------------------------------------- the EM loop
class _EMState(NamedTuple):
    params: Params
    resp: jnp.ndarray
    ll: jnp.ndarray
    step: jnp.ndarray
    converged: jnp.ndarray
    failed: jnp.ndarray
    trace: jnp.ndarray | None


def _estep(model, params, x, y):
    """Responsibilities (n, K) and the observed-data log-likelihood (scalar)."""
    if model.joint:
        lg = model.gate.log_components(params, x)
    else:
        lg = model.gate.log_weights(params, x)
    lj = lg + model.expert.log_prob(params, x, y)
    lli = logsumexp(lj, axis=-1)
    return jnp.exp(lj - lli[:, None]), jnp.sum(lli)


def _mstep(model, params, r, x, y, data, floor2, max_newton):
    new = dict(params)
    if isinstance(model.gate, _gates.Gaussian):
        new.update(_gaussian_gate_mstep(params, r, x, floor2, model.gate.covariance == "full"))
    else:
        new.update(_softmax_gate_mstep(params, r, data["gate_design"], max_newton))
    if isinstance(model.expert, _experts.Gaussian):
        new.update(_gaussian_experts_mstep(params, r, data["expert_design"], y, floor2))
    else:
        new.update(_categorical_experts_mstep(params, r, data["expert_design"], data["onehot"],
                                              max_newton))
    return new


def _fit_one(model, params, x, y, data, max_steps, tol, floor2, max_newton, trace_len):
    r, ll = _estep(model, params, x, y)
    trace = None
    if trace_len:
        trace = jnp.full((trace_len,), jnp.nan, x.dtype).at[0].set(ll)
    state = _EMState(params, r, ll, jnp.asarray(0, jnp.int32), jnp.asarray(False),
                     ~jnp.isfinite(ll), trace)

    def cond(s):
        return (s.step < max_steps) & ~s.converged & ~s.failed

    def body(s):
        new = _mstep(model, s.params, s.resp, x, y, data, floor2, max_newton)
        r_new, ll_new = _estep(model, new, x, y)
        ok = jnp.isfinite(ll_new)
        keep = lambda a, b: jnp.where(ok, a, b)
        params = jax.tree.map(keep, new, s.params)
        conv = ok & (jnp.abs(ll_new - s.ll) <= tol * jnp.abs(s.ll))
        step = s.step + 1
        tr = s.trace
        if tr is not None:
            tr = tr.at[step].set(jnp.where(ok, ll_new, jnp.nan))
        return _EMState(params, keep(r_new, s.resp), keep(ll_new, s.ll), step, conv, ~ok, tr)

    s = lax.while_loop(cond, body, state)
    return s.params, s.step, s.converged, s.trace


def _em_core(model, x, y, init, max_steps, tol, floor2, max_newton, trace_len):
    data = {}
    if not isinstance(model.gate, _gates.Gaussian):
        data["gate_design"] = _with_ones(model.gate.features(x))
    data["expert_design"] = _with_ones(model.expert.features(x))
    if isinstance(model.expert, _experts.Categorical):
        data["onehot"] = jax.nn.one_hot(y, model.expert.n_classes, dtype=x.dtype)

    def one(p):
        return _fit_one(model, p, x, y, data, max_steps, tol, floor2, max_newton, trace_len)

    params, steps, conv, trace = jax.vmap(one)(init)
    ll = jax.vmap(lambda p: jnp.sum(model._log_likelihood(p, x, y)))(params)
    return params, ll, steps, conv, trace


_em_jit = jax.jit(_em_core, static_argnames=("model", "max_newton", "trace_len"))


# ----------------------------------------------------------------------------- checks and conversion
def check_em_model(model) -> None:
    """Raise ValueError unless EM supports ``model`` (see the module docstring)."""
    from bayesmoe.model import MoE

    if not isinstance(model, MoE):
        raise ValueError(f"`model` must be a bayesmoe MoE, got {type(model).__name__}")
    gate, expert = model.gate, model.expert
    if isinstance(gate, _gates.Gaussian):
        if not model.joint:
            raise ValueError(
                "EM for a Gaussian gate fits the joint likelihood p(x, y) (GLLiM, arXiv 2305.07572): "
                "use MoE(..., joint=True), or fit the conditional likelihood with method=\"lbfgs\"")
        if not isinstance(expert, _experts.Gaussian):
            raise ValueError(f"EM supports a Gaussian gate only with Gaussian experts, got {expert!r}")
    elif not isinstance(gate, _gates.ModifiedSoftmax):
        raise ValueError(f"EM does not support the gate {gate!r}")
    if not isinstance(expert, (_experts.Gaussian, _experts.Categorical)):
        raise ValueError(f"EM does not support the expert {expert!r}")


def _expected_shapes(model, d: int) -> dict[str, tuple[int, ...]]:
    K = model.n_experts
    p = model.expert.n_features(d)
    if isinstance(model.expert, _experts.Categorical):
        C = model.expert.n_classes
        shapes = {"expert_intercept": (K, C), "expert_coef": (K, C, p)}
    else:
        shapes = {"expert_intercept": (K,), "expert_coef": (K, p), "expert_scale": (K,)}
    if isinstance(model.gate, _gates.Gaussian):
        shapes.update(gate_weight=(K,), gate_loc=(K, d))
    else:
        shapes.update(gate_intercept=(K,), gate_coef=(K, model.gate.n_features(d)))
    return shapes


def _prepare_init(model, init, d: int, dtype) -> tuple[Params, int, set[str]]:
    """Check ``init`` and convert it to the internal representation (reference gauges applied)."""
    if not isinstance(init, dict):
        raise ValueError(f"`init` must be a dict of full parameters keyed by site name, got "
                         f"{type(init).__name__}")
    shapes = _expected_shapes(model, d)
    gaussian_gate = isinstance(model.gate, _gates.Gaussian)
    full_cov = gaussian_gate and model.gate.covariance == "full"
    if gaussian_gate:
        if full_cov and "gate_cov" in init:
            shapes["gate_cov"] = (model.n_experts, d, d)
        elif full_cov:
            shapes.update(gate_scale=(model.n_experts, d), gate_corr_chol=(model.n_experts, d, d))
        else:
            shapes["gate_scale"] = (model.n_experts, d)
    missing = sorted(set(shapes) - set(init))
    if missing:
        raise ValueError(f"`init` is missing site(s) {missing}")
    arrays, S = {}, None
    for name, shape in shapes.items():
        a = np.asarray(init[name], dtype=float)
        if a.shape[1:] != shape:
            raise ValueError(f"`init[{name!r}]` must have shape (S, {', '.join(map(str, shape))}) with a "
                             f"leading axis of S starts (add [None] for one start), got {a.shape}")
        if S is None:
            S = a.shape[0]
        elif a.shape[0] != S:
            raise ValueError(f"`init[{name!r}]` has {a.shape[0]} starts but other sites have {S}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"`init[{name!r}]` contains NaN or infinite values")
        arrays[name] = a
    if S == 0:
        raise ValueError("`init` has no starts (leading axis of size 0)")
    for name in ("expert_scale", "gate_scale", "gate_weight"):
        if name in arrays and np.any(arrays[name] <= 0):
            raise ValueError(f"`init[{name!r}]` must be positive")
    if gaussian_gate:
        arrays["gate_weight"] = arrays["gate_weight"] / arrays["gate_weight"].sum(-1, keepdims=True)
        if full_cov and "gate_cov" not in arrays:
            tril = arrays["gate_scale"][..., :, None] * arrays["gate_corr_chol"]
            arrays["gate_cov"] = tril @ np.swapaxes(tril, -1, -2)
        if full_cov:
            arrays.pop("gate_scale", None)
            arrays.pop("gate_corr_chol", None)
            if np.any(np.linalg.eigvalsh(arrays["gate_cov"]) <= 0):
                raise ValueError("`init['gate_cov']` must be positive definite")
    else:
        for name in ("gate_intercept", "gate_coef"):
            arrays[name] = arrays[name] - arrays[name][:, -1:]     # reference gauge
    if isinstance(model.expert, _experts.Categorical):
        for name in ("expert_intercept", "expert_coef"):
            arrays[name] = arrays[name] - arrays[name][:, :, -1:]  # reference class
    return {k: jnp.asarray(v, dtype) for k, v in arrays.items()}, S, set(init)


def _output_params(params: Params, init_keys: set[str], full_cov: bool) -> Params:
    out = dict(params)
    if full_cov:
        cov = params["gate_cov"]
        sd = jnp.sqrt(jnp.diagonal(cov, axis1=-2, axis2=-1))
        if "gate_scale" in init_keys or "gate_corr_chol" in init_keys:
            out["gate_scale"] = sd
            out["gate_corr_chol"] = jnp.linalg.cholesky(cov / (sd[..., :, None] * sd[..., None, :]))
    return out


def _float_dtype(x) -> Any:
    dt = getattr(x, "dtype", None)
    if dt is not None and np.issubdtype(dt, np.floating):
        return jax.dtypes.canonicalize_dtype(jnp.promote_types(dt, jnp.float32))
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def em_fit(model, x, y, init: Params, *, max_steps: int = 2000, tol: float = 1e-6,
           scale_floor: float = 1e-6, max_newton: int = 25, return_trace: bool = False) -> EMResult:
    r"""Maximum-likelihood fit of ``model`` by EM from S starts at once (see the module docstring).

    :param model: a :class:`bayesmoe.MoE`: softmax / modified-softmax gate with Gaussian or Categorical
        experts, or a Gaussian gate with Gaussian experts and ``joint=True``.
    :param x: (n, d) inputs (float; its dtype -- float32, or float64 under x64 -- is used throughout).
    :param y: (n,) responses (float), or integer labels 0..C-1 for Categorical experts.
    :param init: full parameters keyed by site name, each with a leading axis of S starts, e.g.
        ``init["expert_coef"].shape == (S, K, p)``; softmax reference rows included (re-gauged to 0
        if not). Full-covariance Gaussian gates take ``gate_cov`` or ``gate_scale`` + ``gate_corr_chol``.
    :param max_steps: maximum number of EM steps. :param tol: relative log-likelihood change to stop.
    :param scale_floor: lower bound on the standard deviations (expert scales, Gaussian-gate scales).
    :param max_newton: maximum Newton iterations per EM step in the softmax-gate / Categorical M-steps.
    :param return_trace: also return the (S, max_steps + 1) log-likelihood trace.
    :returns: :class:`EMResult`.

    Compiled once per model object, ``max_newton`` and ``return_trace``/``max_steps`` (trace length);
    data size changes recompile. Raises ``ValueError`` (before compiling) for unsupported models or
    malformed arguments.
    """
    check_em_model(model)
    max_steps = int(_check_int(max_steps, "max_steps", 0))
    max_newton = int(_check_int(max_newton, "max_newton", 1))
    if not (np.isfinite(tol) and tol >= 0):
        raise ValueError(f"`tol` must be a finite number >= 0, got {tol!r}")
    if not (np.isfinite(scale_floor) and scale_floor > 0):
        raise ValueError(f"`scale_floor` must be a finite number > 0, got {scale_floor!r}")
    dtype = _float_dtype(x)
    x_np, y_np = model.check_data(x, y)
    xj = jnp.asarray(x_np, dtype)
    yj = jnp.asarray(y_np, jnp.int32) if model.is_classifier else jnp.asarray(y_np, dtype)
    params, _, init_keys = _prepare_init(model, init, x_np.shape[1], dtype)
    trace_len = max_steps + 1 if return_trace else 0
    out, ll, steps, conv, trace = _em_jit(
        model, xj, yj, params, jnp.asarray(max_steps, jnp.int32), jnp.asarray(tol, dtype),
        jnp.asarray(scale_floor, dtype) ** 2, max_newton, trace_len)
    full_cov = isinstance(model.gate, _gates.Gaussian) and model.gate.covariance == "full"
    return EMResult(_output_params(out, init_keys, full_cov), ll, steps, conv, trace)


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}")
    return int(value)
