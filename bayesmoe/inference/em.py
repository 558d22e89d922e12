r"""Maximum likelihood by expectation-maximisation (EM), pure and jit-compiled.

``em_fit(model, x, y, init)`` runs S EM chains at once (the starts are ``vmap``-ed, the outer loop is a
``lax.while_loop``) and returns an :class:`EMResult`. The driver (:func:`init`, :func:`step`,
:func:`em_fit`) knows no family: it calls each family's M-step through the contract
(``Gate.em_update`` / ``Expert.em_update``), which is the family's closed form where it has one and
otherwise a generic generalised-EM step (damped Newton steps on the family's part of the expected
complete-data log-likelihood, accepted only when it increases). Every gate x expert is supported.

**E-step**, in log space for every model:

.. math::  r_{ik} = \frac{g_k(x_i)\, p_k(y_i | x_i)}{\sum_j g_j(x_i)\, p_j(y_i | x_i)},
    \qquad \ell = \sum_i \log \sum_k g_k(x_i)\, p_k(y_i | x_i)

(``logsumexp``); for the joint Gaussian-gated model the gate term is :math:`\pi_k N(x_i | c_k, \Gamma_k)`
and :math:`\ell` is the joint log-likelihood :math:`\sum_i \log p(x_i, y_i)`.

**M-step, Gaussian experts** :math:`N(y | b_k + a_k^\top \mathrm{poly}(x), \sigma_k^2)`: weighted least
squares on the design :math:`z_i = [1, \mathrm{poly}(x_i)]` (the :math:`(p+1)\times(p+1)` normal equations
:math:`(Z^\top R_k Z)\beta_k = Z^\top R_k y` with :math:`R_k = \mathrm{diag}(r_{\cdot k})`), then
:math:`\sigma_k^2 = \sum_i r_{ik}(y_i - z_i^\top\beta_k)^2 / \sum_i r_{ik}`, bounded below by
the squared floor (arXiv 2305.03288). The normal equations are solved by
Cholesky; only when that factorisation fails (a singular system, e.g. an expert with fewer distinct
points than regressors) is a jitter :math:`10^3\,\epsilon\,(\mathrm{tr}(A)/m + 1)\,I` added
(:math:`\epsilon` the machine epsilon of the dtype); nothing is added otherwise.

**M-step, softmax gate** :math:`g_k(x) = \mathrm{softmax}_k(\beta_{0k} + \beta_{1k}^\top M(x))` (``M`` the
identity for ``Softmax``; arXiv 2305.03288, 2310.14188): maximise the gate's expected complete-data
log-likelihood :math:`Q_g(\beta) = \sum_i \sum_k r_{ik} \log g_k(x_i)` -- a multinomial logistic regression
with soft targets :math:`r_{ik}` on :math:`[1, M(x_i)]` -- over the K-1 free rows (the reference row K is
fixed at 0) by Newton/IRLS with step halving: a step is accepted only when :math:`Q_g` does not decrease
(halving up to 20 times), at most 25 Newton iterations per EM step, stopping early when the increase
(or the increase the quadratic model predicts for the next step) is below :math:`10^{-10}|Q_g|`
(see :func:`bayesmoe._solvers.multinomial_newton`). Each EM step therefore increases the expected
complete-data log-likelihood, which makes the algorithm a generalised EM whose observed log-likelihood
never decreases.

**M-step, Categorical experts** (arXiv 2310.14188): per expert, the same Newton
routine (:func:`multinomial_newton`) on one-hot(y) with observation weights :math:`r_{ik}`, the last class
the reference (fixed at 0).

**M-step, joint Gaussian gate (GLLiM)** (arXiv 2305.07572), closed form:
:math:`\pi_k = r_k / n` with :math:`r_k = \sum_i r_{ik}`; :math:`c_k = \sum_i r_{ik} x_i / r_k`;
:math:`\Gamma_k` the weighted covariance of x (per-dimension variances bounded below by the squared floor
for ``covariance="diag"``; plus the squared floors on the diagonal for ``"full"``); experts as above.

**Floors**: ``scale_floor`` is relative: every floored scale is bounded below by ``scale_floor`` times
the standard deviation of the variable it bounds (y for expert scales, each x column for gate scales).

**Stopping**: the relative change :math:`|\ell_t - \ell_{t-1}| \le \mathrm{tol}\,|\ell_{t-1}|`
 or ``max_steps`` M-steps. The change is summed row by row,
:math:`\ell_t - \ell_{t-1} = \sum_i (\ell_{t,i} - \ell_{t-1,i})` (plus the change of the penalty), not
taken as the difference of the two sums: in float32 the difference of two sums of n terms is rounded to
about :math:`10^{-7}|\ell|`, so it reads exactly 0 while the parameters still move along the
likelihood's flattest direction, and EM stopped there, at a step that depends on the order of the sums
(1 device against several). Summed row by row it is 0 only at a fixed point of the float arithmetic.
An expert whose total responsibility :math:`r_k` is below :math:`n\epsilon` keeps its previous
parameters (its M-step is undefined). If an update produces a
non-finite log-likelihood the previous parameters are kept and the chain stops (``converged=False``).

The maximised likelihood is the plain (unpenalised) likelihood: the model's priors are ignored. The
Gaussian-experts likelihood is unbounded (an expert collapsing on a few points); ``scale_floor`` bounds the
standard deviations below, and several starts (``init`` with S > 1) guard against poor local maxima.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import logsumexp

from bayesmoe import penalties as _penalties
from bayesmoe._validation import check_positive_int

Params = dict[str, Any]

__all__ = ["EMProblem", "EMResult", "EMState", "em_fit", "init", "step"]


class EMResult(NamedTuple):
    """Result of :func:`em_fit`, every field with a leading axis of S starts.

    params: dict of full parameters (the families' table sites, reference rows as zeros, and the
    derived sites such as ``gate_cov``).
    log_likelihood: (S,) the final observed-data log-likelihood ``sum(model.log_likelihood(...))``
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


class EMState(NamedTuple):
    """State of one EM chain."""

    params: Params
    resp: jnp.ndarray       # (n, K) responsibilities at params
    ll: jnp.ndarray         # observed-data log-likelihood at params (the objective, with a penalty)
    lli: jnp.ndarray        # (n,) pointwise log-likelihoods at params (0 on padding rows)
    pen: jnp.ndarray        # the penalty terms of the objective at params (0 without a penalty)
    step: jnp.ndarray
    converged: jnp.ndarray
    failed: jnp.ndarray
    trace: jnp.ndarray | None


class EMProblem(NamedTuple):
    """What stays fixed during an EM run: the data, the floors, the families' ``em_prepare`` cache,
    the tolerance, an optional (n,) bool row mask ``w`` (padding rows, see
    :mod:`bayesmoe.inference._sharding`) and an optional
    :class:`~bayesmoe.penalties.PenaltyWeights`."""

    x: jnp.ndarray
    y: jnp.ndarray
    floors: Mapping
    cache: tuple
    tol: Any
    w: jnp.ndarray | None = None
    penalty: Any = None


def _estep(model, params, pb: EMProblem):
    """Responsibilities (n, K), the pointwise log-likelihoods (n,) and the penalty terms (a scalar; 0
    without a penalty); the objective is ``sum(lli) + pen``. Rows of weight ``w = 0`` get zero
    responsibilities and add 0. With a penalty, ``pen`` is minus n times the penalty, plus the log prior
    for MAP (n the number of real rows)."""
    lj = model.log_joint_terms(params, pb.x, pb.y)
    lli = logsumexp(lj, axis=-1)
    r = jnp.exp(lj - lli[:, None])
    if pb.w is not None:
        r, lli = jnp.where(pb.w[:, None], r, 0.0), jnp.where(pb.w, lli, 0.0)
    pen = jnp.zeros((), lli.dtype)
    if pb.penalty is not None:
        n = pb.x.shape[0] if pb.w is None else jnp.sum(pb.w)
        pen = _penalties.objective_terms(model, params, pb.x, pb.penalty, n=n)
    return r, lli, pen


def init(model, params: Params, pb: EMProblem, trace_len: int = 0) -> EMState:
    """The EM state at ``params`` (one E-step)."""
    r, lli, pen = _estep(model, params, pb)
    ll = jnp.sum(lli) + pen
    trace = None
    if trace_len:
        trace = jnp.full((trace_len,), jnp.nan, pb.x.dtype).at[0].set(ll)
    return EMState(params, r, ll, lli, pen, jnp.asarray(0, jnp.int32), jnp.asarray(False),
                   ~jnp.isfinite(ll), trace)


def step(model, state: EMState, pb: EMProblem) -> EMState:
    """One M-step (both families; the penalised M-step of :mod:`bayesmoe.penalties` when the problem
    has a penalty) then one E-step. A non-finite log-likelihood keeps the previous parameters and
    marks the chain failed; convergence is a relative change below ``pb.tol``."""
    if pb.penalty is None:
        new = model.em_update(state.params, state.resp, pb.x, pb.y, pb.floors, pb.cache)
    else:
        new = _penalties.em_update(model, state.params, state.resp, pb.x, pb.y, pb.floors, pb.cache,
                                   pb.penalty)
    new = {k: new[k] for k in state.params}  # the state's sites (M-steps may add derived ones)
    r_new, lli_new, pen_new = _estep(model, new, pb)
    ll_new = jnp.sum(lli_new) + pen_new
    ok = jnp.isfinite(ll_new)
    keep = lambda a, b: jnp.where(ok, a, b)
    params = jax.tree.map(keep, new, state.params)
    change = jnp.sum(lli_new - state.lli) + (pen_new - state.pen)  # row by row: see "Stopping"
    conv = ok & (jnp.abs(change) <= pb.tol * jnp.abs(state.ll))
    n = state.step + 1
    tr = state.trace
    if tr is not None:
        tr = tr.at[n].set(jnp.where(ok, ll_new, jnp.nan))
    return EMState(params, keep(r_new, state.resp), keep(ll_new, state.ll), keep(lli_new, state.lli),
                   keep(pen_new, state.pen), n, conv, ~ok, tr)


def _fit_one(model, params, pb: EMProblem, max_steps, trace_len):
    s = init(model, params, pb, trace_len)
    s = lax.while_loop(lambda s: (s.step < max_steps) & ~s.converged & ~s.failed,
                       lambda s: step(model, s, pb), s)
    return model.complete_params(s.params), s.ll, s.step, s.converged, s.trace


def _em_core(model, x, y, starts, max_steps, tol, floors, trace_len, w=None, penalty=None):
    pb = EMProblem(x, y, floors, model.em_prepare(x, y), tol, w, penalty)
    return jax.vmap(lambda p: _fit_one(model, p, pb, max_steps, trace_len))(starts)


_em_jit = jax.jit(_em_core, static_argnames=("model", "trace_len"))


def _float_dtype(x) -> Any:
    dt = getattr(x, "dtype", None)
    if dt is not None and np.issubdtype(dt, np.floating):
        return jax.dtypes.canonicalize_dtype(jnp.promote_types(dt, jnp.float32))
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def em_fit(model, x, y, init: Params, *, max_steps: int = 2000, tol: float = 1e-6,
           scale_floor: float = 1e-3, floors: Mapping | None = None,
           return_trace: bool = False, penalty=None) -> EMResult:
    r"""Maximum-likelihood fit of ``model`` by EM from S starts at once (see the module docstring).

    :param model: a :class:`bayesmoe.MoE` (any gate x expert).
    :param x: (n, d) inputs (float; its dtype -- float32, or float64 under x64 -- is used throughout).
    :param y: (n,) responses in the expert's support (e.g. class labels 0..C-1, counts).
    :param init: full parameters keyed by site name, each with a leading axis of S starts, e.g.
        ``init["expert_coef"].shape == (S, K, p)``; reference rows included (re-gauged to 0 if not).
        Full-covariance Gaussian gates take ``gate_cov`` or ``gate_scale`` + ``gate_corr_chol``.
    :param max_steps: maximum number of EM steps. :param tol: relative log-likelihood change to stop.
    :param scale_floor: lower bound of the floored scales relative to the spread of the variable
        each bounds (ignored when ``floors`` gives absolute bounds by site name).
    :param return_trace: also return the (S, max_steps + 1) log-likelihood trace.
    :param penalty: None, or a :class:`bayesmoe.penalties.PenaltyWeights` (per-coefficient l1 levels in
        the units of x and y given here): then EM maximises the penalised log-likelihood
        :math:`\ell - n \sum \lambda w |\theta|` (plus the log prior with a data scale: MAP), and
        ``log_likelihood`` and the trace hold that penalised objective.
    :returns: :class:`EMResult`.

    Compiled once per model *value*, data shapes and trace length. Raises ``ValueError`` (before
    compiling) for malformed arguments.
    """
    from bayesmoe.model import MoE  # noqa: PLC0415

    if not isinstance(model, MoE):
        raise ValueError(f"`model` must be a bayesmoe MoE, got {type(model).__name__}")
    max_steps = check_positive_int(max_steps, "max_steps", minimum=0)
    if isinstance(tol, bool) or not (isinstance(tol, (int, float, np.floating)) and np.isfinite(tol)
                                     and tol >= 0):
        raise ValueError(f"`tol` must be a finite number >= 0, got {tol!r}")
    if isinstance(scale_floor, bool) or not (isinstance(scale_floor, (int, float, np.floating))
                                             and np.isfinite(scale_floor) and scale_floor > 0):
        raise ValueError(f"`scale_floor` must be a finite number > 0, got {scale_floor!r}")
    dtype = _float_dtype(x)
    x_np, y_np = model.check_data(x, y)
    d = x_np.shape[1]
    full = model.check_params(init, d, batch_ndim=1, name="init")
    if next(iter(full.values())).shape[0] == 0:
        raise ValueError("`init` has no starts (leading axis of size 0)")
    xj = jnp.asarray(x_np, dtype)
    yj = jnp.asarray(y_np, jnp.int32 if model.expert.is_discrete else dtype)
    if floors is None:
        floors = model.floors(x_np, y_np, float(scale_floor))
    floors = {k: jnp.asarray(v, dtype) for k, v in floors.items()}
    starts = model.regauge({k: jnp.asarray(v, dtype) for k, v in full.items()})
    trace_len = max_steps + 1 if return_trace else 0
    params, ll, steps, conv, trace = _em_jit(model, xj, yj, starts, jnp.asarray(max_steps, jnp.int32),
                                             jnp.asarray(tol, dtype), floors, trace_len, penalty=penalty)
    return EMResult(params, ll, steps, conv, trace)
