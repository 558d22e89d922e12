r"""l1 (Lasso) penalties on the slopes of a MoE, and the penalised EM M-step.

``fit_mle(model, x, y, penalty=L1(lam))`` maximises the penalised log-likelihood of the Lasso MoE
(Khalili 2010; Nguyen, Chamroukhi & Forbes, "Lasso for high-dimensional softmax-gated Gaussian MoE",
arXiv 2009.10622), stated per observation:

.. math:: -\frac1n \sum_i \log s(y_i | x_i; \theta)
    + \lambda_g \sum_{k,j} w^g_{kj} |\gamma_{kj}| + \lambda_e \sum_{k,j} w^e_{kj} |\beta_{kj}|

where :math:`\gamma` are the gate slopes and :math:`\beta` the expert slopes -- the sites a family's
parameter table tags ``affine="coef"`` (``gate_coef``, ``expert_coef``): intercepts, scales and
degrees of freedom are never penalised. The weights :math:`w \ge 0` are ones for the plain Lasso and
e.g. :math:`1/|\hat\theta|^\gamma` for the adaptive Lasso (Zou 2006, :meth:`L1.adaptive`). The penalty is
stated in the data's units, like the objective above (maximum-likelihood fits run on standardised data:
the weights are mapped exactly).

The maximiser is found by a generalised EM: the E-step as usual, and in the M-step each family with
penalised slopes maximises its part of the expected complete-data log-likelihood minus its penalty,
:math:`Q_f(\theta_f) - n\lambda_f \sum w|\theta|`, in two blocks: the linear predictor (intercepts and
slopes) by a monotone proximal-gradient method (:func:`bayesmoe._proximal.mfista`; for Gaussian experts
with a fixed scale this is the weighted Lasso, for a softmax gate a weighted l1 multinomial logistic
regression), then the remaining sites (scales, ...) by damped Newton steps. Both blocks never
decrease the penalised objective, so neither does EM. Slopes are exactly zero where the soft-threshold
puts them. For MAP fits (``fit_map(..., penalty=...)``) the log prior of every site is added to every
family's objective (the penalised posterior mode).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from bayesmoe import priors as _priors
from bayesmoe._proximal import mfista

__all__ = ["L1", "PenaltyWeights", "em_update", "lambda_max", "n_zero_slopes", "objective_terms",
           "penalty_value", "site_weights", "slope_sites"]

Params = dict[str, Any]
# proximal-gradient iterations and Newton steps per family per EM step
_PROX_STEPS = 10
_NEWTON_STEPS = 5
# an adaptive weight of a zero initial estimate (the coefficient stays at zero in practice)
_MAX_WEIGHT = 1e6


def _check_lam(value: Any, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"`{name}` must be a real number >= 0, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}")
    return v


@dataclasses.dataclass(frozen=True, eq=False)
class L1:
    r"""An l1 penalty on the gate and expert slopes (the Lasso MoE; see the module docstring).

    :param lam: the penalty level :math:`\lambda \ge 0` (finite), per observation.
    :param gate: :math:`\lambda_g` for the gate slopes (default ``lam``).
    :param expert: :math:`\lambda_e` for the expert slopes (default ``lam``).
    :param weights: optional per-coefficient weights ``{site name: array}`` of a slope site's full
        shape, e.g. ``{"expert_coef": (K, p)}`` (adaptive Lasso); non-negative and finite. Sites not
        given have weight 1.
    """

    lam: float
    gate: float | None = None
    expert: float | None = None
    weights: Mapping | None = None

    def __post_init__(self):
        object.__setattr__(self, "lam", _check_lam(self.lam, "lam"))
        for name in ("gate", "expert"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, _check_lam(v, name))
        if self.weights is not None:
            if not isinstance(self.weights, Mapping):
                raise ValueError(f"`weights` must be a dict of site name -> array, got "
                                 f"{type(self.weights).__name__}")
            out = {}
            for k, v in self.weights.items():
                a = np.asarray(v, dtype=float)
                if not np.all(np.isfinite(a)) or np.any(a < 0):
                    raise ValueError(f"`weights[{k!r}]` must be finite and >= 0")
                out[str(k)] = a
            object.__setattr__(self, "weights", out)

    @property
    def gate_lam(self) -> float:
        return self.lam if self.gate is None else self.gate

    @property
    def expert_lam(self) -> float:
        return self.lam if self.expert is None else self.expert

    def with_lam(self, lam: float) -> L1:
        """The same penalty (ratios between gate and expert levels, weights) at level ``lam``."""
        lam = _check_lam(lam, "lam")
        scale = lam / self.lam if self.lam > 0 else 0.0
        g = None if self.gate is None else self.gate * scale
        e = None if self.expert is None else self.expert * scale
        return L1(lam, g, e, self.weights)

    @classmethod
    def adaptive(cls, fit, lam: float, *, gamma: float = 1.0, gate: float | None = None,
                 expert: float | None = None) -> L1:
        r"""The adaptive Lasso (Zou 2006): weights :math:`1/|\hat\theta_j|^\gamma` from a first fit.

        :param fit: a :class:`~bayesmoe.FitResult` (or a params dict) of the same model, e.g. an
            unpenalised or ridge-like MAP fit.
        :param lam: the penalty level. :param gamma: the exponent :math:`\gamma > 0`.
        :param gate: :param expert: separate levels, as in :class:`L1`.
        """
        gamma = _check_lam(gamma, "gamma")
        if gamma == 0:
            raise ValueError("`gamma` must be > 0, got 0")
        params = getattr(fit, "params", fit)
        if not isinstance(params, Mapping):
            raise ValueError(f"`fit` must be a FitResult or a params dict, got {type(fit).__name__}")
        weights = {}
        for name in ("gate_coef", "expert_coef"):
            if name in params:
                a = np.abs(np.asarray(params[name], float))
                inv = np.full_like(a, _MAX_WEIGHT)
                np.power(a, -gamma, out=inv, where=a > 0)
                weights[name] = np.minimum(inv, _MAX_WEIGHT)
        return cls(lam, gate, expert, weights)


class PenaltyWeights(NamedTuple):
    """What the penalised EM needs (a pytree).

    :ivar weights: per-coefficient levels ``{site: full-shape array}`` (:math:`\\lambda_f w`, in the
        units the fit runs in).
    :ivar data_scale: for MAP fits, the data scale of the priors (None: maximum likelihood).
    """

    weights: dict
    data_scale: Any = None


# ----------------------------------------------------------------------------- sites and levels
def slope_sites(family, K: int, d: int) -> list[str]:
    """The family's slope sites (tagged ``affine="coef"``) that have free entries.

    :param family: a gate or expert family.
    :param K: number of experts.
    :param d: number of the family's inputs.
    """
    sizes = family.sizes(K, d)
    return [p.name for p in family.param_table() if p.affine == "coef" and p.n_free(sizes) > 0]


def _coef_factor(family, K: int, d: int, std) -> dict[str, np.ndarray]:
    """Multiplier f of every slope from the data's units to the standardised ones (coef_std = f coef),
    read off the family's own parameter map (:meth:`Family.standardize`)."""
    with jax.enable_x64(True):
        base = {k: jnp.asarray(v, jnp.float64) for k, v in family.neutral_params(K, d, jnp.float64).items()}
        names = family.affine_sites("coef")
        for name in names:
            base[name] = jnp.ones_like(base[name])
        for name in family.affine_sites("intercept"):
            base[name] = jnp.zeros_like(base[name])
        xs = (np.asarray(std.x_loc), np.asarray(std.x_scale)) if std.moves_x else (None, None)
        out = family.standardize(base, *xs, std.y_loc, std.y_scale)
        return {name: np.asarray(out[name], np.float64) for name in names}


def site_weights(penalty: L1, model, d: int, std=None) -> dict[str, np.ndarray]:
    r"""Per-coefficient levels :math:`\lambda_f w_j` of every penalised slope site (full shapes),
    mapped to standardised units when ``std`` (a standardisation of the fit) is given.

    Raises ``ValueError`` naming ``penalty`` when the model has no slope site, ``penalty.gate`` /
    ``penalty.expert`` when a positive level is asked of a family without slopes, and
    ``penalty.weights[site]`` for unknown sites or wrong shapes.

    :param penalty: the :class:`L1` penalty.
    :param model: the :class:`~bayesmoe.MoE`.
    :param d: number of inputs (columns of x).
    :param std: the fit's standardisation (locations and scales of x and y), or None for the
        data's units.
    """
    if not isinstance(penalty, L1):
        raise ValueError(f"`penalty` must be a bayesmoe.penalties.L1, got {type(penalty).__name__}")
    K = model.n_experts
    fams = {"gate": (model.gate, penalty.gate_lam, penalty.gate),
            "expert": (model.expert, penalty.expert_lam, penalty.expert)}
    if not any(slope_sites(f, K, d) for f, _, _ in fams.values()):
        raise ValueError(f"`penalty`: {model!r} has no slope sites (no parameter tagged affine='coef' "
                         "with free entries) to penalise")
    known = set()
    out = {}
    for role, (fam, lam, explicit) in fams.items():
        sites = slope_sites(fam, K, d)
        known.update(sites)
        if not sites:
            if explicit:
                raise ValueError(f"`penalty.{role}` = {explicit} but the {role} {fam!r} has no slopes")
            continue
        shapes = fam.param_shapes(K, d)
        factor = _coef_factor(fam, K, d, std) if std is not None else {}
        for name in sites:
            w = np.ones(shapes[name])
            if penalty.weights is not None and name in penalty.weights:
                given = penalty.weights[name]
                if given.shape != shapes[name]:
                    raise ValueError(f"`penalty.weights[{name!r}]` must have shape {shapes[name]}, got "
                                     f"{given.shape}")
                w = given
            lev = lam * w * _ref_mask(_param(fam, name), fam.sizes(K, d))
            if name in factor:
                f = np.broadcast_to(factor[name], lev.shape)
                lev = np.where(f != 0, lev / np.where(f != 0, np.abs(f), 1.0), lev)
            out[name] = lev
    if penalty.weights is not None:
        unknown = sorted(set(penalty.weights) - known)
        if unknown:
            raise ValueError(f"`penalty.weights` has unknown site(s) {unknown}; slope sites: "
                             f"{sorted(known)}")
    return out


def penalty_value(params: Mapping, weights: Mapping) -> jnp.ndarray:
    r""":math:`\sum_{\text{sites}} \sum_j \lambda w_j |\theta_j|` (per observation).

    :param params: full parameters keyed by site name.
    :param weights: per-coefficient levels :math:`\lambda_f w_j`, ``{site: full-shape array}``
        (:func:`site_weights`).
    """
    total = jnp.zeros(())
    for name, w in weights.items():
        total = total + jnp.sum(w * jnp.abs(params[name]))
    return total


def objective_terms(model, params: Mapping, x, penalty: PenaltyWeights, n=None) -> jnp.ndarray:
    """What the penalised EM adds to the log-likelihood: minus n times the penalty, plus the log prior
    of both families for MAP fits (``penalty.data_scale`` given); ``n``: the number of real rows
    (default: all rows of ``x``; padding rows are not counted).

    :param model: the :class:`~bayesmoe.MoE`.
    :param params: full parameters keyed by site name.
    :param x: inputs (n, d).
    :param penalty: the :class:`PenaltyWeights` of the fit.
    :param n: number of real rows (None: all rows of ``x``).
    """
    x = jnp.asarray(x)
    out = -(x.shape[0] if n is None else n) * penalty_value(params, penalty.weights)
    if penalty.data_scale is not None:
        K, d = model.n_experts, x.shape[-1]
        out = out + _log_prior(model.gate, params, penalty.data_scale.gate, model.priors, K,
                               model.gate_d(d))
        out = out + _log_prior(model.expert, params, penalty.data_scale.expert, model.priors, K,
                               model.expert_d(d))
    return out


def n_zero_slopes(model, params: Mapping, weights: Mapping, d: int) -> int:
    """Number of penalised slope entries (weight > 0: reference rows excluded) that are exactly zero.

    :param model: the :class:`~bayesmoe.MoE`.
    :param params: full parameters keyed by site name.
    :param weights: per-coefficient levels ``{site: full-shape array}`` (:func:`site_weights`).
    :param d: number of inputs (columns of x).
    """
    zeros = 0
    for fam in model.families:
        for p in fam.param_table():
            if p.name not in weights:
                continue
            a = np.asarray(params[p.name])
            pen = np.asarray(weights[p.name]) > 0
            zeros += int(np.sum((a == 0) & pen))  # reference entries have weight 0
    return zeros


# ----------------------------------------------------------------------------- the M-step
def _ref_mask(p, sizes) -> np.ndarray:
    """1 on free entries of a site, 0 on its reference entries (numpy)."""
    m = np.ones(p.full_shape(sizes))
    if p.reference:
        idx = [slice(None)] * m.ndim
        idx[p.ref_axis()] = -1
        m[tuple(idx)] = 0.0
    return m


def _param(fam, name: str):
    return next(p for p in fam.param_table() if p.name == name)


def _log_prior(fam, full: Params, scale, priors, K: int, d: int) -> jnp.ndarray:
    """Log prior density of the family's sample sites (no Jacobian: the MAP objective)."""
    sizes = fam.sizes(K, d)
    free = fam.to_free(full)
    total = jnp.zeros(())
    for p in fam.param_table():
        if p.n_free(sizes) == 0:
            continue
        prior = _priors.resolve(priors, p.name, p.prior(scale, sizes), p.free_shape(sizes))
        total = total + jnp.sum(prior.log_prob(free[p.site]))
    return total


def _family_update(fam, params: Params, r, x, y, floors, joint: bool, weights: Mapping, scale,
                   priors) -> Params:
    """One penalised M-step of one family: proximal gradient on the linear predictor, Newton on the rest."""
    K, d = r.shape[-1], x.shape[-1]
    n = jnp.sum(r)  # the real rows: padding rows have zero responsibilities
    sizes = fam.sizes(K, d)
    dtype = x.dtype

    def objective(full):
        val = fam.em_objective(full, r, x, y, joint)
        if scale is not None:
            val = val + _log_prior(fam, full, scale, priors, K, d)
        return val

    table = fam.param_table()
    lin = [p for p in table if p.affine in ("intercept", "coef") and p.n_free(sizes) > 0]
    out = dict(params)
    if lin:
        v0 = {p.name: jnp.asarray(params[p.name], dtype) for p in lin}
        flat0, unravel = ravel_pytree(v0)
        mask, _ = ravel_pytree({p.name: jnp.asarray(_ref_mask(p, sizes), dtype) for p in lin})
        w, _ = ravel_pytree({p.name: (n * jnp.asarray(weights[p.name], dtype) if p.name in weights
                                      else jnp.zeros(p.full_shape(sizes), dtype)) for p in lin})
        norm = jnp.maximum(jnp.sum(r), 1.0)  # per-observation scale: the step search starts near 1

        def f(flat):
            return -objective({**out, **unravel(flat)}) / norm

        xtol = 1e-10 if dtype == jnp.float64 else 1e-6
        flat, _, _ = mfista(f, flat0, w / norm, mask, max_iter=_PROX_STEPS, xtol=xtol)
        out.update(unravel(flat))
    other = [p.site for p in table if p not in lin and p.n_free(sizes) > 0]
    if other:
        out = fam.generic_mstep(out, r, x, y, floors, joint, _NEWTON_STEPS, sites=other,
                                objective=objective)
    return out


def em_update(model, params: Params, r, x, y, floors: Mapping, cache: tuple,
              penalty: PenaltyWeights) -> Params:
    """The penalised (generalised) M-step of both families (see the module docstring): families with
    penalised slopes -- every family for MAP fits -- take the proximal step, the others their usual
    M-step (:meth:`Family.em_update`).

    :param model: the :class:`~bayesmoe.MoE`.
    :param params: the current full parameters keyed by site name.
    :param r: responsibilities (n, K), :math:`r_{ik} = P(z_i = k \\mid x_i, y_i)` (E-step).
    :param x: inputs (n, d).
    :param y: responses (n,).
    :param floors: ``{site name: lower bound}`` of the floored scales.
    :param cache: the pair of the families' ``em_prepare`` results
        (:meth:`bayesmoe.MoE.em_prepare`).
    :param penalty: the :class:`PenaltyWeights` of the fit.
    """
    scale = penalty.data_scale
    new = dict(params)
    for fam, sc, c, xf in ((model.gate, None if scale is None else scale.gate, cache[0], model.gate_x(x)),
                           (model.expert, None if scale is None else scale.expert, cache[1],
                            model.expert_x(x))):
        w = {k: v for k, v in penalty.weights.items() if k in fam.prior_names()}
        if w or scale is not None:
            new = _family_update(fam, new, r, xf, y, floors, model.joint, w, sc, model.priors)
        else:
            new = fam.em_update(new, r, xf, y, floors, c, model.joint)
    return new


# ----------------------------------------------------------------------------- lambda_max
def lambda_max(model, params: Mapping, x, y, weights: Mapping) -> float:
    r"""The smallest level at which ``params`` (all penalised slopes zero, the rest fitted) satisfies the
    optimality conditions of the penalised problem: :math:`\max_j |\partial \ell/\partial\theta_j| /
    (n\,w_j)` over the penalised slopes, with :math:`\ell` the log-likelihood and ``weights`` the
    per-coefficient weights at level 1 (:func:`site_weights` of ``L1(1.0)``).

    :param model: the :class:`~bayesmoe.MoE`.
    :param params: parameters with every penalised slope zero and the other sites fitted.
    :param x: inputs (n, d).
    :param y: responses (n,).
    :param weights: per-coefficient weights at level 1.
    """
    x = jnp.asarray(x)
    n = x.shape[0]
    sites = list(weights)

    def ll(sub):
        return jnp.sum(model.log_likelihood({**params, **sub}, x, y))

    grads = jax.grad(ll)({k: jnp.asarray(params[k], x.dtype) for k in sites})
    best = 0.0
    for k in sites:
        g = np.abs(np.asarray(grads[k], float)) / n
        w = np.asarray(weights[k], float)
        ok = w > 0
        if np.any(ok):
            best = max(best, float(np.max(g[ok] / w[ok])))
    return best


# ----------------------------------------------------------------------------- fit_map / fit_mle plumbing
def check_fit(penalty: L1, model, method: str, d: int) -> str:
    """Check a penalty given to ``fit_map``/``fit_mle`` before anything compiles; returns the method
    that runs (the proximal EM)."""
    from bayesmoe.model import MoE  # noqa: PLC0415

    if not isinstance(model, MoE):
        raise ValueError("`penalty` needs a bayesmoe.MoE model (its slope sites are penalised), got "
                         f"{model!r}")
    if method not in ("em", "lbfgs"):
        raise ValueError(f"`method={method!r}` cannot give exact zeros: a `penalty` is fitted by the "
                         "proximal EM (method='em', or leave the default)")
    site_weights(penalty, model, d)
    return "em"


def for_fit(penalty: L1 | None, model, d: int, std, prior_kwargs: Mapping | None, dtype):
    """The :class:`PenaltyWeights` of a fit (standardised units when ``std`` is given), or None."""
    if penalty is None:
        return None
    w = {k: jnp.asarray(v, dtype) for k, v in site_weights(penalty, model, d, std).items()}
    scale = None if prior_kwargs is None else prior_kwargs["data_scale"]
    return PenaltyWeights(w, scale)


def fit_summary(penalty: L1, model, params: Mapping, ll: float, n: int, d: int, k: int):
    """Degrees of freedom (``k`` minus the slopes at zero) and the extras of a penalised fit (in the
    data's units): the penalty, the number of nonzero slopes, the penalised log-likelihood."""
    w = site_weights(penalty, model, d)
    zeros = n_zero_slopes(model, params, w, d)
    n_pen = int(sum(np.sum(np.asarray(v) > 0) for v in w.values()))
    pen = float(penalty_value({k_: np.asarray(params[k_], float) for k_ in w}, w))
    return k - zeros, {"penalty": penalty, "n_nonzero_slopes": n_pen - zeros,
                       "penalized_log_likelihood": ll - n * pen}
