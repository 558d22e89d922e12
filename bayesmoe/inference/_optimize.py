"""A compiled multi-start optimiser: optax L-BFGS (zoom line search) or Adam, starts vmapped.

The loop runs as ``lax.while_loop`` over chunks of steps; between chunks control returns to Python
only to advance a progress bar and to stop early once every start has converged. The compiled
functions are module-level with the objective as a static argument, so repeated fits of the same
model on data of the same shapes compile once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from tqdm.auto import tqdm

from bayesmoe.inference import _objective as obj
from bayesmoe.model import MoE


@dataclass(frozen=True, eq=True)
class Objective:
    """Negative log joint (``prior=True``) or log-likelihood per observation, in unconstrained space.

    Hashable by model *value* (equal models hash equal), so that it is a static argument of the
    compiled loop and equal models share one compilation.
    """

    model: Any
    prior: bool

    @property
    def direct(self) -> bool:
        """Maximum likelihood of a bayesmoe ``MoE``: the log-likelihood comes straight from the
        families' contract (:meth:`bayesmoe.MoE.log_joint_terms`), without tracing the NumPyro model
        (the same function, a smaller and faster-to-trace program)."""
        return not self.prior and isinstance(self.model, MoE)

    def transforms(self, x, y, kwargs, floors) -> dict:
        if self.direct:
            return {**self.model.gate.transforms(floors), **self.model.expert.transforms(floors)}
        return obj.transforms(obj.latent_sites(self.model, (x, y), kwargs), floors)

    @staticmethod
    def rows(x, kwargs):
        """The number of real observations (padding rows, masked out, are not counted)."""
        return jnp.sum(kwargs["mask"]) if "mask" in kwargs else x.shape[0]

    def _pointwise_direct(self, theta, x, y, kwargs):
        full = self.model.full_params(theta, x.shape[1])
        lli = jax.scipy.special.logsumexp(self.model.log_joint_terms(full, x, y), axis=-1)
        return jnp.where(kwargs["mask"], lli, 0.0) if "mask" in kwargs else lli

    def __call__(self, u, x, y, kwargs, floors):
        theta = obj.constrain(self.transforms(x, y, kwargs, floors), u)
        if self.direct:
            return -jnp.sum(self._pointwise_direct(theta, x, y, kwargs)) / self.rows(x, kwargs)
        return -obj.log_joint(self.model, theta, (x, y), kwargs, self.prior) / self.rows(x, kwargs)

    def log_likelihood(self, u, x, y, kwargs, floors):
        theta = obj.constrain(self.transforms(x, y, kwargs, floors), u)
        if self.direct:
            return jnp.sum(self._pointwise_direct(theta, x, y, kwargs))
        return obj.log_joint(self.model, theta, (x, y), kwargs, False)

    def pointwise(self, u, x, y, kwargs, floors):
        theta = obj.constrain(self.transforms(x, y, kwargs, floors), u)
        if self.direct:
            return self._pointwise_direct(theta, x, y, kwargs)
        return obj.pointwise_log_lik(self.model, theta, (x, y), kwargs, x.shape[0])


#: above this many free parameters the diagonal preconditioner is not computed (one forward-mode
#: pass per parameter)
PRECONDITION_MAX_PARAMS = 512


def fisher_scale(objective: Objective, u: dict, data) -> dict:
    r"""Diagonal preconditioner per start: :math:`s_j = \sqrt{\bar F_{jj}}`, with
    :math:`\bar F_{jj} = n^{-1} \sum_i (\partial \ell_i / \partial u_j)^2` the empirical Fisher
    information of parameter j at the start (forward mode, one pass per parameter).

    The optimiser then works on :math:`v = s \odot u`, in which every parameter has unit curvature
    to first order: the path no longer depends on the data's units, and gate and expert parameters of
    very different curvature (an expert's location in units of a small noise scale beside a gate
    slope) stop slowing L-BFGS down. Entries are bounded below by 1e-4 of the largest (parameters
    with no information at the start) and above by 1e6.
    """
    def one(v):
        flat, unravel = ravel_pytree(v)
        jac = jax.jacfwd(lambda f: objective.pointwise(unravel(f), *data))(flat)  # (n, P)
        info = jnp.sum(jnp.where(jnp.isfinite(jac), jac, 0.0) ** 2, axis=0) / Objective.rows(data[0],
                                                                                             data[2])
        top = jnp.max(info)
        info = jnp.where(top > 0, jnp.clip(info, 1e-4 * top, 1e12), 1.0)
        return unravel(jnp.sqrt(info))

    return jax.vmap(one)(u)


#: L-BFGS stops once the Newton decrement of the total log-likelihood is below this twice in a row:
#: the optimum is then closer than about sqrt(dtol) standard errors, in any units.
NEWTON_DECREMENT_TOL = {"float32": 1e-3, "float64": 1e-8}


class OptState(NamedTuple):
    u: dict  # unconstrained parameters (leading start axis)
    opt: optax.OptState  # of each start's flat vector ravel_pytree(u * scale)
    value: jnp.ndarray  # objective at u
    small: jnp.ndarray  # consecutive steps with a negligible decrease
    steps: jnp.ndarray
    done: jnp.ndarray
    grad_max: jnp.ndarray
    scale: dict  # diagonal preconditioner: the optimiser works on u * scale (ones: none)


def _optimizer(method: str, learning_rate: float) -> optax.GradientTransformation:
    if method == "lbfgs":
        return optax.lbfgs()
    return optax.adam(learning_rate)


@partial(jax.jit, static_argnames=("objective", "method", "learning_rate", "precondition"))
def _init(objective, method, learning_rate, precondition, u0, scale, data) -> OptState:
    """The optimiser's state at ``u0``; the preconditioner is computed here (one compiled program
    with the start's values) unless ``scale`` is given."""
    opt = _optimizer(method, learning_rate)
    S = jax.tree.leaves(u0)[0].shape[0]
    if scale is None:
        scale = (fisher_scale(objective, u0, data) if precondition
                 else jax.tree.map(jnp.ones_like, u0))
    values = jax.vmap(lambda u: objective(u, *data))(u0)
    v0 = jax.tree.map(jnp.multiply, u0, scale)
    # the optimiser works on one flat vector per start (ravel_pytree): its state and its tree
    # operations are then single arrays, which makes the loop's program smaller than on a dict of sites.
    # Strong types: optax's line-search state starts with weakly typed scalars that the loop returns
    # strongly typed, and a second chunk would then compile a second program.
    opt_state = jax.vmap(lambda v: opt.init(ravel_pytree(v)[0]))(v0)
    opt_state = jax.tree.map(lambda a: jax.lax.convert_element_type(a, a.dtype), opt_state)
    return OptState(v0, opt_state, values, jnp.zeros(S, jnp.int32),
                    jnp.zeros(S, jnp.int32), ~jnp.isfinite(values), jnp.full(S, jnp.inf, values.dtype),
                    scale)


@partial(jax.jit, static_argnames=("objective", "method", "learning_rate", "chunk", "max_steps",
                                   "tol", "gtol", "dtol"))
def _run_chunk(objective, method, learning_rate, chunk, max_steps, tol, gtol, dtol, s: OptState,
               data) -> OptState:
    opt = _optimizer(method, learning_rate)
    unravel = ravel_pytree(jax.tree.map(lambda a: a[0], s.u))[1]
    flat = lambda tree: ravel_pytree(tree)[0]

    def one_step(s: OptState) -> OptState:  # one start; s.u and s.scale flat vectors
        fn = lambda v: objective(unravel(v / s.scale), *data)
        if method == "lbfgs":
            value, grad = optax.value_and_grad_from_state(fn)(s.u, state=s.opt)
            updates, new_opt = opt.update(grad, s.opt, s.u, value=value, grad=grad, value_fn=fn)
        else:
            value, grad = jax.value_and_grad(fn)(s.u)
            updates, new_opt = opt.update(grad, s.opt, s.u)
        new_u = s.u + updates
        gmax = jnp.max(jnp.abs(grad))
        finite = jnp.isfinite(value)
        decrease = s.value - value
        negligible = jnp.abs(decrease) <= tol * (1.0 + jnp.abs(value))
        if method == "lbfgs" and dtol > 0:
            # Newton decrement of the total objective, -n g.d, with d the quasi-Newton step taken:
            # invariant to affine reparametrisation (units, standardisation), unlike |g| or |f|
            n_obs = objective.rows(data[0], data[2])
            dec = -n_obs * jnp.vdot(grad, updates)
            negligible = negligible | (jnp.abs(dec) <= dtol)
        small = jnp.where(negligible, s.small + 1, 0)
        done = (small >= 2) | ~finite | ((gmax <= gtol) & (small >= 1))
        frozen = s.done | (s.steps >= max_steps)
        keep = lambda old, new: jax.tree.map(lambda a, b: jnp.where(frozen | ~finite, a, b), old, new)
        return OptState(keep(s.u, new_u), keep(s.opt, new_opt),
                        jnp.where(frozen, s.value, value), jnp.where(frozen, s.small, small),
                        s.steps + jnp.where(frozen, 0, 1), s.done | (done & ~frozen),
                        jnp.where(frozen, s.grad_max, gmax), s.scale)

    def body(c):
        s, j = c
        return jax.vmap(one_step)(s), j + 1

    def cond(c):
        s, j = c
        return (j < chunk) & ~jnp.all(s.done | (s.steps >= max_steps))

    sf = s._replace(u=jax.vmap(flat)(s.u), scale=jax.vmap(flat)(s.scale))
    out = jax.lax.while_loop(cond, body, (sf, 0))[0]
    return out._replace(u=jax.vmap(unravel)(out.u), scale=s.scale)


@partial(jax.jit, static_argnames=("objective",))
def start_log_likelihoods(objective: Objective, u, data):
    """Log-likelihood at every start's current point (leading start axis)."""
    return jax.vmap(lambda v: objective.log_likelihood(v, *data))(u)


def run(objective: Objective, u0: dict, data: tuple, *, method: str, max_steps: int, tol: float,
        gtol: float, dtol: float = 0.0, learning_rate: float = 0.02, chunk: int = 50,
        progress_bar: bool = False, desc: str = "fit", precondition: bool = True,
        scale: dict | None = None) -> OptState:
    """Minimise ``objective(u, *data)`` from every start in ``u0`` (leading axis S).

    A start stops after two consecutive steps that are negligible: a relative change of the objective
    below ``tol``, or (L-BFGS) a Newton decrement ``-n g.d`` of the total objective below ``dtol``; or
    after one such step with every gradient entry below ``gtol``. L-BFGS works on the diagonally
    preconditioned ``u * scale`` (:func:`fisher_scale` unless ``scale`` is given or ``precondition`` is
    off); the returned state holds ``u`` itself.
    """
    n_params = sum(math.prod(v.shape[1:]) for v in jax.tree.leaves(u0))
    # a given scale (e.g. the screening run's, reused for the refinement) is used as it is
    precondition = precondition and method == "lbfgs" and n_params <= PRECONDITION_MAX_PARAMS
    state = _init(objective, method, float(learning_rate), precondition, u0, scale, data)
    n_chunks = -(-max_steps // chunk)
    with tqdm(total=max_steps, desc=desc, disable=not progress_bar, leave=False) as bar:
        done_steps = 0
        for _ in range(n_chunks):
            state = _run_chunk(objective, method, float(learning_rate), chunk, max_steps, float(tol),
                               float(gtol), float(dtol), state, data)
            steps = np.asarray(state.steps)  # host-side reads: no small compiled programs
            bar.update(int(steps.max()) - done_steps)
            done_steps = int(steps.max())
            if bool(np.all(np.asarray(state.done) | (steps >= max_steps))):
                break
    return state._replace(u={k: np.asarray(v) / np.asarray(state.scale[k]) for k, v in state.u.items()})


def _values(objective: Objective, theta, data) -> dict:
    """Latent and deterministic site values at sample-site values ``theta`` (for an ``MoE``, the
    user-facing sites only: full rows, no free duplicates)."""
    x, y, kwargs, _ = data
    values = obj.all_values(objective.model, theta, (x, y), kwargs)
    if isinstance(objective.model, MoE):
        names = objective.model.site_names(x.shape[1])
        values = {k: v for k, v in values.items() if k in names}
    return values


def _theta(objective: Objective, point, data, space: str) -> dict:
    """Sample-site values from a point given as unconstrained ``u`` (``space="u"``) or as the model's
    full parameters (``space="full"``)."""
    x, y, kwargs, floors = data
    if space == "u":
        return obj.constrain(objective.transforms(x, y, kwargs, floors), point)
    return objective.model.free_params(point)


@partial(jax.jit, static_argnames=("objective", "space"))
def summary(objective: Objective, point, data, space: str = "u"):
    """(log-likelihood, log posterior, site values, expert memberships or None) at one point, given
    in unconstrained space (``space="u"``) or as full parameters (``space="full"``, MoE models).
    Rows masked out by ``kwargs["mask"]`` do not count (their memberships are returned too)."""
    x, y, kwargs, floors = data
    theta = _theta(objective, point, data, space)
    ll = obj.log_joint(objective.model, theta, (x, y), kwargs, False)
    lpost = obj.log_joint(objective.model, theta, (x, y), kwargs, True)
    values = _values(objective, theta, data)
    resp = None
    if isinstance(objective.model, MoE):
        resp = objective.model.responsibilities(values, x, y)
    return ll, lpost, values, resp


@partial(jax.jit, static_argnames=("objective",))
def to_u(objective: Objective, full, data) -> dict:
    """Full MoE parameters (leading start axis) -> unconstrained points (scales at their floor
    lifted just above it, see :func:`lift`)."""
    x, y, kwargs, floors = data
    tfs = objective.transforms(x, y, kwargs, floors)
    return lift(jax.vmap(lambda p: obj.unconstrain(tfs, objective.model.free_params(p)))(full), floors)


def lift(u: dict, floors: dict) -> dict:
    """A scale exactly at its floor is -inf in unconstrained space (``u = log(scale - floor)``): start
    it at ``floor * (1 + 1e-6)`` instead, so that optimisers have a finite point and gradient."""
    out = dict(u)
    for name, floor in floors.items():
        if name in out:
            lim = jnp.log(1e-6 * jnp.asarray(floor, out[name].dtype))
            out[name] = jnp.where(jnp.isneginf(out[name]), lim, out[name])
    return out


@partial(jax.jit, static_argnames=("objective",))
def start_points(objective: Objective, data, weights, init, seed, jitter, jitter_mask):
    """Every start of an MoE fit in one compiled program: (u0, full0), the unconstrained points and
    the full parameters (leading start axis).

    The starts are ``init`` (full parameters with a leading axis, or None) followed by the families'
    first M-step from each soft partition in ``weights`` (S, n, K) (or None), computed on ``data``;
    the starts flagged in ``jitter_mask`` then get ``jitter`` times standard normal noise (key
    ``seed``) added in unconstrained space.
    """
    from bayesmoe.inference.init import params_from_weights  # noqa: PLC0415

    x, y, kwargs, floors = data
    model = objective.model
    parts = []
    if init is not None:
        parts.append(jax.vmap(model.free_params)(model.regauge(init)))
    if weights is not None:
        parts.append(params_from_weights(model, x, y, weights, floors, free=True))
    free = {k: jnp.concatenate([jnp.asarray(p[k], x.dtype) for p in parts]) for k in parts[0]}
    tfs = objective.transforms(x, y, kwargs, floors)
    u = lift(jax.vmap(lambda f: obj.unconstrain(tfs, f))(free), floors)
    keys = jax.random.split(jax.random.key(seed), len(u))
    u = {k: v + jitter * jitter_mask.reshape((-1,) + (1,) * (v.ndim - 1))
         * jax.random.normal(kk, v.shape, v.dtype) for (k, v), kk in zip(u.items(), keys, strict=True)}
    full = jax.vmap(lambda v: _values(objective, obj.constrain(tfs, v), data))(u)
    return u, full
