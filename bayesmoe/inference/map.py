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

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import init_to_uniform
from numpyro.infer.util import initialize_model

from bayesmoe._random import as_key, seed_int
from bayesmoe._validation import as_x, as_y_real, check_positive_int
from bayesmoe.inference import _objective as obj
from bayesmoe.inference import _optimize, _standardize
from bayesmoe.inference.init import data_starts
from bayesmoe.inference.result import FitResult
from bayesmoe.model import MoE

__all__ = ["METHODS", "fit_map", "fit_mle"]

METHODS = ("lbfgs", "adam", "em")


def _check_args(method, n_starts, max_steps, tol, seed):
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    check_positive_int(n_starts, "n_starts")
    if max_steps is not None:
        check_positive_int(max_steps, "max_steps")
    if tol is not None and not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"`tol` must be a positive number, got {tol!r}")
    return seed_int(seed, "seed")


def _subsample(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a reproducible random subsample of ``size`` of ``n`` rows."""
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def _stack(dicts: list[dict]) -> dict:
    return {k: jnp.stack([jnp.asarray(d[k]) for d in dicts]) for k in dicts[0]}


def _index(tree: dict, i: int) -> dict:
    return {k: v[i] for k, v in tree.items()}


def fit_map(model: MoE | Callable, x: Any, y: Any, *, method: str = "lbfgs", n_starts: int = 8,
            seed: int = 0, init: dict | None = None, max_steps: int | None = None,
            tol: float | None = None, learning_rate: float = 0.02, jitter: float = 0.1,
            scale_floor: float = 1e-3, screen_size: int = 20_000, progress_bar: bool = False,
            prior: bool = True) -> FitResult:
    """Maximum a posteriori estimate of ``model`` on (x, y), best of ``n_starts`` starts.

    :param model: a :class:`bayesmoe.MoE` or any NumPyro model function ``model(x, y=None)``
        (random jittered starts and no named dims for the latter).
    :param method: ``"lbfgs"`` (default), ``"adam"`` or ``"em"``.
    :param n_starts: number of starts, run together (vmap).
    :param seed: an int or a ``jax.random`` key: seed of the data-driven starts and their jitter.
    :param init: a params dict (site names) used as the first start; the others are jittered copies.
    :param max_steps: iteration cap (default 500 for lbfgs, 3000 for adam, 2000 for em).
    :param tol: relative change of the objective to stop at (default 1e-7 in float32, 1e-12 in x64).
    :param scale_floor: lower bound of every floored scale (expert / gate standard deviations),
        relative to the standard deviation of the variable it bounds (y, or each x column).
    :param screen_size: above ``2 * screen_size`` observations, starts are screened on a subsample.
    :returns: a :class:`FitResult` with ``params`` keyed by the site names of DESIGN.md.
    """
    key = as_key(seed, "seed")
    seed = _check_args(method, n_starts, max_steps, tol, seed)
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
    if init is not None and isinstance(model, MoE):
        init = model.check_params(init, xa.shape[1], name="init")
    std = None
    if isinstance(model, MoE) and not prior:  # ML fits run on standardised data (exact back-map)
        std = _standardize.for_data(model, xa, ya)
        xa, ya = std.x(xa), std.y(ya, model)
        if init is not None:
            init = {k: v for k, v in std.to_std(model, init).items() if k in init}
    dtype = jnp.result_type(float)
    tol = tol if tol is not None else (1e-7 if dtype == jnp.float32 else 1e-12)
    gtol = 1e-4 if dtype == jnp.float32 else 1e-8
    max_steps = max_steps or {"lbfgs": 500, "adam": 3000, "em": 2000}[method]
    x_j = jnp.asarray(xa, dtype)
    y_j = jnp.asarray(ya, model.y_dtype()) if isinstance(model, MoE) else jnp.asarray(ya, dtype)

    if isinstance(model, MoE):
        kwargs = {"data_scale": model.data_scale(xa, ya)}
        floors = model.floors(xa, ya, scale_floor)
        starts = [{k: jnp.asarray(v, dtype)[None] for k, v in init.items()}] if init is not None else []
        # the starts need the data's shape, not all of it
        rows = _subsample(n, screen_size, seed + 1) if n > screen_size else slice(None)
        if n_starts > len(starts):
            starts.append(data_starts(model, x_j[rows], y_j[rows], n_starts - len(starts),
                                      np.random.default_rng(seed), floors))
        starts_free = model.free_params(
            {k: jnp.concatenate([s_[k] for s_ in starts]) for k in starts[0]})
    else:
        kwargs, floors = {}, {}
        keys = jax.random.split(key, n_starts)
        starts_free = None
    sites = obj.latent_sites(model, (x_j, y_j), kwargs)
    tfs = obj.transforms(sites, floors)
    if starts_free is None:
        u_list = []
        for i in range(n_starts):
            if i == 0 and init is not None:
                u_list.append(obj.unconstrain(tfs, {k: init[k] for k in sites}))
                continue
            info = initialize_model(keys[i], model, init_strategy=init_to_uniform(radius=2),
                                    model_args=(x_j, y_j))[0]
            u_list.append(info.z)
        u0 = _stack(u_list)
    else:
        u0 = obj.unconstrain(tfs, {k: jnp.asarray(v, dtype) for k, v in starts_free.items()})
    # jittered copies: start 0 of every data-driven seed is kept as is
    noise_keys = jax.random.split(jax.random.fold_in(key, 1), len(u0))
    jit_mask = (jnp.arange(n_starts) % 2 == 1) if init is None else (jnp.arange(n_starts) > 0)
    u0 = {k: v + jitter * jit_mask.reshape((-1,) + (1,) * (v.ndim - 1))
          * jax.random.normal(noise_keys[i], v.shape, dtype)
          for i, (k, v) in enumerate(u0.items())}

    objective = _optimize.Objective(model, bool(prior))

    extra: dict[str, Any] = {}
    if method == "em":
        from bayesmoe.inference.em import em_fit  # noqa: PLC0415

        full0 = _optimize.site_values(objective, u0, (x_j, y_j, kwargs, floors))
        if n > 2 * screen_size and n_starts > 1:  # screen the starts on a subsample
            idx = _subsample(n, screen_size, seed)
            em = em_fit(model, x_j[idx], y_j[idx], full0, max_steps=max_steps, tol=tol, floors=floors)
            start_ll = np.asarray(em.log_likelihood)
            best = int(np.nanargmax(start_ll))
            full0 = {k: v[best:best + 1] for k, v in em.params.items()}
            extra["screened_on"] = screen_size
        em = em_fit(model, x_j, y_j, full0, max_steps=max_steps, tol=tol, floors=floors)
        if "screened_on" not in extra:
            start_ll = np.asarray(em.log_likelihood)
        best = int(np.nanargmax(np.asarray(em.log_likelihood)))
        best_full = _index(em.params, best)
        n_steps, converged = int(em.n_steps[best]), bool(em.converged[best])
        u_best = obj.unconstrain(tfs, {k: jnp.asarray(v, dtype) for k, v in
                                       model.free_params(best_full).items()})
        if prior:  # polish the EM answer on the posterior
            st = _optimize.run(objective, _stack([u_best]), (x_j, y_j, kwargs, floors), method="lbfgs",
                               max_steps=500, tol=tol, gtol=gtol, progress_bar=progress_bar)
            u_best = _index(st.u, 0)
            n_steps += int(st.steps[0])
    else:
        data = (x_j, y_j, kwargs, floors)
        if n > 2 * screen_size and n_starts > 1:
            idx = _subsample(n, screen_size, seed)
            sub = (x_j[idx], y_j[idx], kwargs, floors)
            st = _optimize.run(objective, u0, sub, method=method, max_steps=max_steps, tol=tol,
                               gtol=gtol, learning_rate=learning_rate, progress_bar=progress_bar,
                               desc="screen starts")
            start_ll = -np.asarray(st.value) * screen_size
            best = int(np.nanargmin(np.asarray(st.value)))
            st = _optimize.run(objective, _stack([_index(st.u, best)]), data, method=method,
                               max_steps=max_steps, tol=tol, gtol=gtol, learning_rate=learning_rate,
                               progress_bar=progress_bar, desc="refine")
            best_i = 0
            extra["screened_on"] = screen_size
        else:
            st = _optimize.run(objective, u0, data, method=method, max_steps=max_steps, tol=tol,
                               gtol=gtol, learning_rate=learning_rate, progress_bar=progress_bar)
            best_i = int(np.nanargmin(np.asarray(st.value)))
            start_ll = None
        u_best = _index(st.u, best_i)
        n_steps, converged = int(st.steps[best_i]), bool(st.done[best_i])
        if start_ll is None:
            # per-start log-likelihoods (MAP: the likelihood part at each start's optimum)
            start_ll = np.asarray(_optimize.start_log_likelihoods(objective, st.u, data))

    ll, lpost, params, resp = _optimize.summary(objective, u_best, (x_j, y_j, kwargs, floors))
    ll = float(ll)
    if std is not None:  # back to the data's units: exact parameter map and Jacobian
        params = std.to_raw(model, params)
        ll += std.log_jacobian(model, n)
        start_ll = np.asarray(start_ll) + std.log_jacobian(model, n)
        extra["standardization"] = std
    lpost = float(lpost) if prior else ll
    k = model.n_params(xa.shape[1]) if isinstance(model, MoE) else int(
        sum(np.size(v) for v in u_best.values()))
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
                     extra=extra)


def fit_mle(model: MoE | Callable, x: Any, y: Any, **kwargs) -> FitResult:
    """Maximum-likelihood estimate: :func:`fit_map` with the priors switched off.

    Same arguments and result type as :func:`fit_map`; ``log_posterior`` equals ``log_likelihood``.
    Expert and gate standard deviations are bounded below by ``scale_floor`` times the data's sd
    (the likelihood of a mixture is unbounded as a variance goes to 0).
    """
    return fit_map(model, x, y, prior=False, **kwargs)
