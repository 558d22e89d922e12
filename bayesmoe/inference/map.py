r"""Point estimates: MAP (``fit_map``) and maximum likelihood (``fit_mle``).

Maximum-likelihood fits run on standardised data and map the estimates back exactly (see
:mod:`bayesmoe.inference._standardize`): the answer does not depend on the units of x and y.

The objective is the log posterior :math:`\log p(\theta) + \sum_i \log p(y_i | x_i, \theta)` (MAP) or the
log-likelihood alone (MLE), maximised in unconstrained space without a Jacobian term (the mode of the
density of :math:`\theta` itself, as Stan's ``optimizing`` does). Positive scales of MoE models are
bounded below explicitly (``scale_floor`` times the data's standard deviation). Several starts run
together (``vmap``) in a compiled loop (optax L-BFGS with zoom line search, or Adam); with
``method="em"`` the EM algorithm of :mod:`bayesmoe.inference.em` is used (and, for MAP, its answer is
polished by L-BFGS on the posterior).

For large data (``n > 2 * screen_size``) all starts run first on a random subsample of
``screen_size`` observations, and only the best is refined on the full data.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import init_to_uniform
from numpyro.infer.util import initialize_model

from bayesmoe import penalties as _penalties
from bayesmoe import priors as _priors
from bayesmoe._random import as_key, seed_int
from bayesmoe._validation import as_x, as_y_real, check_bool, check_positive_int, check_real, column_names
from bayesmoe.formula import resolve_data
from bayesmoe.inference import _checks, _optimize, _sharding, _standardize
from bayesmoe.inference import _objective as obj
from bayesmoe.inference.init import soft_partitions
from bayesmoe.inference.result import FitData, FitResult, FitWarning
from bayesmoe.model import MoE
from bayesmoe.penalties import L1

__all__ = ["METHODS", "fit_map", "fit_mle"]

METHODS = ("lbfgs", "adam", "em")


def _check_args(*, method, n_starts, max_steps, tol, seed, learning_rate, jitter, scale_floor,
                screen_size, progress_bar, prior) -> int:
    """Every argument of fit_map, before anything is traced; returns the int seed."""
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    check_positive_int(n_starts, "n_starts")
    if max_steps is not None:
        check_positive_int(max_steps, "max_steps")
    if tol is not None:
        check_real(tol, "tol", "> 0 and finite", lambda v: 0 < v < math.inf)
    check_real(learning_rate, "learning_rate", "> 0 and finite", lambda v: 0 < v < math.inf)
    check_real(jitter, "jitter", ">= 0 and finite", lambda v: 0 <= v < math.inf)
    check_real(scale_floor, "scale_floor", "in (0, 1)", lambda v: 0 < v < 1)
    check_positive_int(screen_size, "screen_size", minimum=10)
    check_bool(progress_bar, "progress_bar")
    check_bool(prior, "prior")
    return seed_int(seed, "seed")


def _check_size(model: MoE, n: int, d: int, prior: bool) -> None:
    """Enough rows: more than the number of free parameters for maximum likelihood (else the MLE is
    not identified), and at least 2 per expert for a MAP fit."""
    k = model.n_params(d)
    need = k + 1 if not prior else max(2, 2 * model.n_experts)
    if n < need:
        what = (f"the model has {k} free parameters: maximum likelihood needs at least {need} rows"
                if not prior else f"a MAP fit of {model.n_experts} experts needs at least {need} rows")
        raise ValueError(f"`x` has {n} rows but {what} ({model!r})")


def _doubtful(model, params: dict, floors: dict) -> np.ndarray:
    """Per start: a scale at its floor (a spike) or two coinciding experts (a saddle)."""
    return _checks.at_floor(params, floors) | _checks.coinciding(params, model.expert.prior_names(),
                                                                 model.n_experts)


def _u_doubtful(model, u: dict, floors: dict) -> np.ndarray:
    """:func:`_doubtful` read in unconstrained space (no MoE: nothing is doubtful)."""
    if not isinstance(model, MoE):
        return np.zeros(len(next(iter(u.values()))), bool)
    names = [k for k in model.expert.param_dims(1, free=True) if k in u]
    return _u_at_floor(u, floors) | _checks.coinciding(u, names, model.n_experts)


def _best(ll: np.ndarray, degenerate: np.ndarray) -> int:
    r"""The start of highest log-likelihood among the regular ones (if any is): starts at a scale floor
    (spikes of the likelihood) or with coinciding experts (saddles) are passed over. Starts within
    float32 rounding of the best (relative :math:`64\,\epsilon_{32}`: typically the same optimum,
    perhaps with the experts in another order) count as ties, won by the first: the choice does not
    depend on the order of floating-point sums (e.g. the number of devices)."""
    ll = np.where(np.isfinite(ll), ll, -np.inf)
    if np.any(~degenerate & np.isfinite(ll)):
        ll = np.where(degenerate, -np.inf, ll)
    top = np.max(ll)
    if not np.isfinite(top):
        return int(np.argmax(ll))
    tie = 64 * np.finfo(np.float32).eps * max(1.0, abs(float(top)))
    return int(np.flatnonzero(ll >= top - tie)[0])


def _u_at_floor(u: dict, floors: dict) -> np.ndarray:
    """Per start, whether a floored scale is at its floor, read in unconstrained space
    (``u = log(scale - floor)``, so the floor is ``u = -inf``)."""
    out = np.zeros(len(next(iter(u.values()))), bool)
    for name, floor in floors.items():
        if name in u:
            v = np.asarray(u[name])
            lim = np.log(np.maximum(1e-3 * np.asarray(floor), np.finfo(np.float32).tiny))
            out |= np.any((v <= np.broadcast_to(lim, v.shape[1:])).reshape(v.shape[0], -1), axis=1)
    return out


def _subsample(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a reproducible random subsample of ``size`` of ``n`` rows."""
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def _stack(dicts: list[dict]) -> dict:
    return {k: jnp.stack([jnp.asarray(d[k]) for d in dicts]) for k in dicts[0]}


def _index(tree: dict, i: int | slice) -> dict:
    """Entry (or slice) ``i`` of every leaf's leading axis, on the host (no compiled program)."""
    return {k: np.asarray(v)[i] for k, v in tree.items()}


def _device(v, dtype) -> jnp.ndarray:
    """A host array on the default device in ``dtype`` (cast by numpy: no compiled program)."""
    return jax.device_put(np.asarray(v, dtype))


@obj.serialized
def fit_map(model: MoE | Callable, x: Any = None, y: Any = None, *, data: Any = None,
            method: str = "lbfgs", n_starts: int = 8,
            seed: int = 0, init: dict | None = None, max_steps: int | None = None,
            tol: float | None = None, learning_rate: float = 0.02, jitter: float = 0.1,
            scale_floor: float = 1e-3, screen_size: int = 20_000, progress_bar: bool = False,
            prior: bool = True, devices: Any = None, penalty: L1 | None = None) -> FitResult:
    r"""Maximum a posteriori estimate of ``model`` on (x, y), best of ``n_starts`` starts.

    :param model: a :class:`bayesmoe.MoE` or any NumPyro model function ``model(x, y=None)``
        (random jittered starts and no named dims for the latter).
    :param x: inputs (n, d) (a DataFrame for formula models).
    :param y: responses (n,) (class labels of any kind for class-label experts: learnt into the
        model's expert).
    :param data: for formula models (:meth:`bayesmoe.MoE.from_formula`), a DataFrame in place of
        ``x`` and ``y``.
    :param method: ``"lbfgs"`` (default), ``"adam"`` or ``"em"`` (the EM algorithm of Jordan &
        Jacobs 1994, "Hierarchical mixtures of experts and the EM algorithm"; MoE models only).
    :param n_starts: number of starts, run together (vmap).
    :param seed: an int or a ``jax.random`` key: seed of the data-driven starts and their jitter.
    :param init: a params dict (site names) used as the first start; the others are jittered copies.
    :param max_steps: iteration cap (default 500 for lbfgs, 3000 for adam, 2000 for em).
    :param tol: relative change of the objective to stop at (default 1e-7 in float32, 1e-12 in x64).
    :param learning_rate: step size of Adam (``method="adam"`` only), > 0.
    :param jitter: sd of the Gaussian jitter (unconstrained space) added to the starts after the
        first, >= 0.
    :param scale_floor: lower bound of every floored scale (expert / gate standard deviations),
        relative to the standard deviation of the variable it bounds (y, or each x column).
    :param screen_size: above ``2 * screen_size`` observations, starts are screened on a subsample.
    :param progress_bar: show a progress bar over the iterations.
    :param prior: maximise the log posterior :math:`\log p(y \mid x, \theta) + \log p(\theta)`
        (True, MAP) or the log-likelihood alone (False, as :func:`fit_mle`).
    :param devices: None (one device, the default), a list of ``jax`` devices or a
        ``jax.sharding.Mesh``: the rows are sharded over them and the likelihood (or EM's sufficient
        statistics) is reduced across devices (see :mod:`bayesmoe.inference._sharding`); MoE models only.
    :param penalty: an l1 penalty on the slopes (:class:`bayesmoe.penalties.L1`): the Lasso MoE, fitted
        by the proximal EM of :mod:`bayesmoe.penalties` (exact zeros; ``method`` must be ``"em"`` or
        the default). ``n_params`` (and so AIC/BIC/ICL) then counts the nonzero slopes only.
    :returns: a :class:`FitResult` with ``params`` keyed by the site names; ``warnings`` lists what
        makes the answer doubtful (a scale at its floor, degenerate or coinciding experts, a gate that
        separates the data), each also issued as a :class:`~bayesmoe.FitWarning`.

    Maximum-likelihood fits (``prior=False``) run on standardised data and map the estimates back
    exactly, so the answer does not depend on the units of x and y. Among the starts, answers with a
    scale at its floor (spikes of the unbounded likelihood) are passed over when another start is
    regular. Fits may be called from several threads: NumPyro's handler stack is global, so fits
    (and ``sample``) run one at a time under a lock.
    """
    key = as_key(seed, "seed")
    x, y = resolve_data(model, x, y, data)
    if isinstance(model, MoE) and y is not None:
        model = model.for_response(y)
    mesh = _sharding.as_mesh(devices)
    if mesh is not None and not isinstance(model, MoE):
        raise ValueError("`devices` needs a bayesmoe.MoE model (its rows can be masked for padding)")
    seed = _check_args(method=method, n_starts=n_starts, max_steps=max_steps, tol=tol, seed=seed,
                       learning_rate=learning_rate, jitter=jitter, scale_floor=scale_floor,
                       screen_size=screen_size, progress_bar=progress_bar, prior=prior)
    if isinstance(model, MoE):
        xa, ya = model.check_data(x, y)
        if ya is None:
            raise ValueError("`y` is required, got None")
    elif callable(model):
        if method == "em":
            raise ValueError("`method='em'` needs a bayesmoe.MoE model; use 'lbfgs' or 'adam'")
        xa = as_x(x, "x")
        ya = as_y_real(y, xa.shape[0], "y") if np.asarray(y).dtype.kind == "f" else np.asarray(y)
    else:
        raise ValueError(f"`model` must be a bayesmoe.MoE or a NumPyro model function, got {model!r}")
    n = xa.shape[0]
    fit_data = FitData(np.asarray(xa), np.asarray(ya), _feature_names(model, x))
    if penalty is not None:
        method = _penalties.check_fit(penalty, model, method, xa.shape[1])
    if isinstance(model, MoE):
        _check_size(model, n, xa.shape[1], bool(prior) or penalty is not None)
        if prior and _priors.point_priors(model.priors) is not model.priors:
            raise ValueError("`model` has hierarchical shrinkage priors (horseshoe): their posterior mode "
                             "is degenerate (every slope at zero, the global scale at 0), so fit_map has no "
                             "meaningful answer; use bm.sample, fit_map on "
                             "model.with_priors(bm.priors.point_priors(model.priors)), or an L1 penalty")
    if init is not None and isinstance(model, MoE):
        init = model.check_params(init, xa.shape[1], name="init")
    std = None
    if isinstance(model, MoE) and not prior:  # ML fits run on standardised data (exact back-map)
        std = _standardize.for_data(model, xa, ya, separable=penalty is not None)
        xa, ya = std.x(xa), std.y(ya, model)
        if init is not None:
            init = {k: v for k, v in std.to_std(model, init).items() if k in init}
    dtype = jnp.result_type(float)
    tol = float(tol) if tol is not None else (1e-7 if dtype == jnp.float32 else 1e-12)
    gtol = 1e-4 if dtype == jnp.float32 else 1e-8
    dtol = _optimize.NEWTON_DECREMENT_TOL[jnp.dtype(dtype).name]
    max_steps = max_steps or {"lbfgs": 500, "adam": 3000, "em": 2000}[method]
    objective = _optimize.Objective(model, bool(prior))
    if isinstance(model, MoE):
        kwargs = {"data_scale": model.data_scale(xa, ya)}
        floors = {k: np.asarray(v, dtype) for k, v in model.floors(xa, ya, scale_floor).items()}
        if init is not None:
            for name, floor in floors.items():
                if name in init and np.any(np.asarray(init[name]) < np.asarray(floor)):
                    raise ValueError(f"`init[{name!r}]` is below its floor (scale_floor = {scale_floor} "
                                     f"times the data's spread): the estimator bounds it there")
        # rows padded to a size bucket (masked), sharded over `devices`
        sharded = _sharding.shard_rows(mesh, xa, ya, bucket=True, dtypes=(dtype, model.y_dtype()))
        run_data = (sharded.x, sharded.y, {**kwargs, "mask": sharded.mask}, floors)
        # every start in one compiled program; the starts need the data's shape, not all of it
        rows = _subsample(n, screen_size, seed + 1) if n > screen_size else slice(None)
        n_data = n_starts - (init is not None)
        weights = (_device(soft_partitions(model, xa[rows], ya[rows], n_data, np.random.default_rng(seed)),
                           dtype) if n_data else None)
        init0 = None if init is None else {k: np.asarray(v, dtype)[None] for k, v in init.items()}
        # jittered copies: start 0 of every data-driven seed is kept as is
        jit_mask = (np.arange(n_starts) % 2 == 1) if init is None else (np.arange(n_starts) > 0)
        start_data = (_device(xa[rows], dtype), _device(ya[rows], model.y_dtype()), kwargs, floors)
        u0, full0 = _optimize.start_points(objective, start_data, weights, init0, np.int32(seed % 2**31),
                                           np.asarray(jitter, dtype), np.asarray(jit_mask, dtype))
    else:
        kwargs, floors = {}, {}
        x_j = jnp.asarray(xa, dtype)
        y_j = jnp.asarray(ya, dtype)
        run_data = (x_j, y_j, kwargs, floors)
        sites = obj.latent_sites(model, (x_j, y_j), kwargs)
        tfs = obj.transforms(sites, floors)
        keys = jax.random.split(key, n_starts)
        u_list = []
        for i in range(n_starts):
            if i == 0 and init is not None:
                u_list.append(obj.unconstrain(tfs, {k: init[k] for k in sites}))
                continue
            info = initialize_model(keys[i], model, init_strategy=init_to_uniform(radius=2),
                                    model_args=(x_j, y_j))[0]
            u_list.append(info.z)
        u0 = _stack(u_list)
        noise = np.random.default_rng([seed, 1])
        jit_mask = (np.arange(n_starts) % 2 == 1) if init is None else (np.arange(n_starts) > 0)
        u0 = {k: jnp.asarray(np.asarray(v) + jitter * jit_mask.reshape((-1,) + (1,) * (np.ndim(v) - 1))
                             * noise.standard_normal(np.shape(v)), dtype)
              for k, v in u0.items()}

    extra: dict[str, Any] = {}
    pen = _penalties.for_fit(penalty, model, xa.shape[1], std, kwargs if prior else None, dtype)
    screen = n > 2 * screen_size and n_starts > 1
    if screen:  # screen the starts on a subsample; only the best is refined on the full data
        idx = _subsample(n, screen_size, seed)
        if isinstance(model, MoE):
            sub = _sharding.shard_rows(None, xa[idx], ya[idx], bucket=True, dtypes=(dtype, model.y_dtype()))
            sub_data = (sub.x, sub.y, {**kwargs, "mask": sub.mask}, floors)
        else:
            sub_data = (run_data[0][idx], run_data[1][idx], kwargs, floors)
        extra["screened_on"] = screen_size
    if method == "em":
        if screen:
            em = _sharding.em_fit(model, sub, full0, max_steps=max_steps, tol=tol, floors=floors,
                                  penalty=pen)
            start_ll = np.asarray(em.log_likelihood)
            best = _best(start_ll, _doubtful(model, em.params, floors))
            full0 = _index(em.params, slice(best, best + 1))
        em = _sharding.em_fit(model, sharded, full0, max_steps=max_steps, tol=tol, floors=floors,
                              penalty=pen)
        if not screen:
            start_ll = np.asarray(em.log_likelihood)
        best = _best(np.asarray(em.log_likelihood), _doubtful(model, em.params, floors))
        best_full = _index(em.params, best)
        n_steps, converged = int(np.asarray(em.n_steps)[best]), bool(np.asarray(em.converged)[best])
        point, space = best_full, "full"
        if prior and pen is None:  # polish the EM answer on the posterior
            u1 = _optimize.to_u(objective, _index(em.params, slice(best, best + 1)), run_data)
            st = _optimize.run(objective, u1, run_data, method="lbfgs",
                               max_steps=500, tol=tol, gtol=gtol, dtol=dtol, progress_bar=progress_bar)
            point, space = _index(st.u, 0), "u"
            n_steps += int(np.asarray(st.steps)[0])
    else:
        if screen:
            st = _optimize.run(objective, u0, sub_data, method=method, max_steps=max_steps, tol=tol,
                               gtol=gtol, dtol=dtol, learning_rate=learning_rate, progress_bar=progress_bar,
                               desc="screen starts")
            start_ll = -np.asarray(st.value) * screen_size
            best = _best(-np.asarray(st.value), _u_doubtful(model, st.u, floors))
            st = _optimize.run(objective, _index(st.u, slice(best, best + 1)), run_data, method=method,
                               scale=_index(st.scale, slice(best, best + 1)), max_steps=max_steps,
                               tol=tol, gtol=gtol, dtol=dtol, learning_rate=learning_rate,
                               progress_bar=progress_bar, desc="refine")
            best_i = 0
        else:
            st = _optimize.run(objective, u0, run_data, method=method, max_steps=max_steps, tol=tol,
                               gtol=gtol, dtol=dtol, learning_rate=learning_rate, progress_bar=progress_bar)
            best_i = _best(-np.asarray(st.value), _u_doubtful(model, st.u, floors))
            # per-start log-likelihoods (MAP: the likelihood part at each start's optimum)
            start_ll = (np.asarray(_optimize.start_log_likelihoods(objective, st.u, run_data)) if prior
                        else -np.asarray(st.value, np.float64) * n)
        point, space = _index(st.u, best_i), "u"
        n_steps, converged = int(np.asarray(st.steps)[best_i]), bool(np.asarray(st.done)[best_i])

    ll, lpost, params, resp = _optimize.summary(objective, point, run_data, space=space)
    if resp is not None:
        resp = np.asarray(resp)[:n]  # padding rows dropped
    ll = float(ll)
    problems: list[str] = []
    if isinstance(model, MoE):
        problems = _checks.fit_problems(
            model, jax.tree.map(np.asarray, params), resp, floors, kwargs["data_scale"].gate.sd, ll,
            xa.shape[1], loglik=lambda p: np.sum(np.asarray(model.log_likelihood(p, _device(xa, dtype),
                                                                     _device(ya, model.y_dtype())))))
    converged = converged and bool(np.isfinite(ll))
    for msg in problems:
        # stack: user -> [fit_mle ->] lock wrapper -> here
        warnings.warn(f"{'fit_map' if prior else 'fit_mle'}: {msg}", FitWarning, stacklevel=3 if prior else 4)
    if std is not None:  # back to the data's units: exact parameter map and Jacobian
        params = std.to_raw(model, params)
        ll += std.log_jacobian(model, n)
        start_ll = np.asarray(start_ll) + std.log_jacobian(model, n)
        extra["standardization"] = std
    lpost = float(lpost) if prior else ll
    k = model.n_params(xa.shape[1]) if isinstance(model, MoE) else int(
        sum(np.size(v) for v in point.values()))
    if pen is not None:  # the Lasso's degrees of freedom: the nonzero slopes (Zou et al. 2007)
        k, more = _penalties.fit_summary(penalty, model, params, ll, n, xa.shape[1], k)
        extra.update(more)
    aic = -2 * ll + 2 * k
    bic = -2 * ll + k * np.log(n)
    if resp is not None:
        t = np.asarray(resp, dtype=float)
        icl = bic - 2 * float(np.sum(np.where(t > 0, t * np.log(np.where(t > 0, t, 1.0)), 0.0)))
    else:
        icl = float("nan")
    return FitResult(params={k: np.asarray(v) for k, v in params.items()}, log_likelihood=ll,
                     log_posterior=lpost, n_params=int(k), n_obs=n, aic=float(aic), bic=float(bic),
                     icl=float(icl), converged=converged, n_steps=n_steps,
                     start_log_likelihoods=np.asarray(start_ll), method=method, prior=prior,
                     extra=extra, warnings=tuple(problems), model=model, data=fit_data)


def _feature_names(model: Any, x: Any) -> tuple[str, ...] | None:
    names = model.input_names(x) if isinstance(model, MoE) else column_names(x)
    return tuple(names) if names else None


def fit_mle(model: MoE | Callable, x: Any = None, y: Any = None, **kwargs) -> FitResult:
    r"""Maximum-likelihood estimate: :func:`fit_map` with the priors switched off.

    Maximises :math:`\ell(\theta) = \sum_i \log \sum_k g_k(x_i; \theta)\, p_k(y_i \mid x_i; \theta)`.
    Same arguments and result type as :func:`fit_map`; ``log_posterior`` equals ``log_likelihood``.

    :param model: a :class:`bayesmoe.MoE` or a NumPyro model function ``model(x, y=None)``.
    :param x: inputs (n, d) (a DataFrame for formula models).
    :param y: responses (n,).
    :param kwargs: any keyword argument of :func:`fit_map` (``data``, ``method``, ``n_starts``,
        ``seed``, ``init``, ``max_steps``, ``tol``, ``learning_rate``, ``jitter``, ``scale_floor``,
        ``screen_size``, ``progress_bar``, ``devices``, ``penalty``) except ``prior``.
    Expert and gate standard deviations are bounded below by ``scale_floor`` times the data's sd
    (the likelihood of a mixture is unbounded as a variance goes to 0).
    """
    return fit_map(model, x, y, prior=False, **kwargs)
