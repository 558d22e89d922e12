r"""Convergence-rate experiments: how fast the MLE of a mixture of experts approaches the truth.

:func:`convergence_rate` draws, for every sample size n of a grid and every replication, a data set
from a true model, fits it by maximum likelihood (EM or L-BFGS; the replications are ``vmap``-ed, one
compiled program per n) and measures the Voronoi loss (:func:`bayesmoe.metrics.voronoi_loss`) between
the fitted and the true mixing measures. The rate is the slope of the ordinary least-squares line of
:math:`\log \bar D(n)` on :math:`\log n` (:math:`\bar D` the mean loss over replications) over
:math:`n \ge n_0`, with its standard error :math:`\sqrt{s^2 / \sum_i (\log n_i - \overline{\log n})^2}`,
:math:`s^2` the residual variance on m - 2 degrees of freedom. The theory of the papers gives losses
:math:`O(\sqrt{\log n / n})`, a slope near -1/2 (Nguyen, Nguyen & Ho 2023, arXiv 2305.03288;
arXiv 2305.07572; arXiv 2310.14188).

**Near-true starts** (``init="near_true"``, as in the published simulations of arXiv 2305.03288): the
true atoms, over-fitted true atoms split into copies sharing their mass (the extra copies go to true
atoms 0, 1, ..., K*-2 in turn: the last, reference atom of a softmax gate stays single), then
perturbed: real gate sites by :math:`N(0, (0.005\,n^{-0.083})^2)`, real expert sites by
:math:`N(0, (0.05\,n^{-0.083})^2)`, and the variances of positive (scale) sites increased by
:math:`|N(0, (0.005\,n^{-0.25})^2)|`; simplex sites (mixing weights) are multiplied by
:math:`\exp N(0, (0.005\,n^{-0.083})^2)` and renormalised.
``init="data"`` uses the package's data-driven starts (k-means soft partitions).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.distributions import constraints
from tqdm.auto import tqdm

from bayesmoe._random import as_key, seed_int
from bayesmoe._validation import check_positive_int
from bayesmoe.inference import em as _em
from bayesmoe.metrics import _check_orders, _input_dim, _rbar_table, voronoi_loss
from bayesmoe.model import MoE

__all__ = ["convergence_rate", "loglog_slope", "near_true_starts", "plot_convergence"]

INITS = ("near_true", "data")
METHODS = ("em", "lbfgs")
#: near-true perturbation: (gate sd, expert sd, variance sd) at n = 1 and their exponents in n
NOISE = (0.005, 0.05, 0.005)
NOISE_EXPONENTS = (-0.083, -0.083, -0.25)


# ----------------------------------------------------------------------------- starts
def _split_index(k_fit: int, k_true: int) -> np.ndarray:
    """Which true atom each fitted atom copies: the extra copies go to atoms 0, 1, ..., K*-2 in turn
    (never to the last, the gate's reference atom, unless K* = 1), placed beside the original, so the
    last fitted atom is the true reference atom alone; e.g. K=4, K*=3: [0, 0, 1, 2]."""
    extra = np.arange(k_fit - k_true) % max(k_true - 1, 1)
    return np.sort(np.concatenate([np.arange(k_true), extra]))


def _perturb(fam, params: dict, rng: np.random.Generator, n_starts: int, sd_real: float, sd_gate: float,
             sd_var: float) -> dict:
    """``n_starts`` perturbed copies of the family's sites (leading axis of starts)."""
    out = {}
    for p in fam.param_table():
        if p.name not in params:
            continue
        v = np.asarray(params[p.name], float)
        v = np.broadcast_to(v, (n_starts,) + v.shape)
        if p.constraint is constraints.real:
            e = sd_real * rng.normal(size=v.shape)
            if p.reference:                           # reference entries stay at zero (the gauge)
                idx = [slice(None)] * v.ndim
                idx[v.ndim + p.ref_axis()] = -1
                e[tuple(idx)] = 0.0
            out[p.name] = v + e
        elif isinstance(p.constraint, type(constraints.positive)):
            out[p.name] = np.sqrt(v**2 + np.abs(sd_var * rng.normal(size=v.shape)))
        elif p.constraint is constraints.simplex:
            w = v * np.exp(sd_gate * rng.normal(size=v.shape))
            out[p.name] = w / w.sum(-1, keepdims=True)
        else:
            out[p.name] = v
    return out


def near_true_starts(model: MoE, true_params: Mapping, n: int, n_starts: int,
                     rng: np.random.Generator, noise: tuple = NOISE,
                     exponents: tuple = NOISE_EXPONENTS) -> dict:
    r"""``n_starts`` starts of ``model`` (the fitted K) near the true params at sample size n (numpy,
    leading axis of starts): true atoms split into copies sharing their mass, then perturbed with
    standard deviations ``noise[i] * n ** exponents[i]`` (gate, expert, variance; see the module
    docstring).

    :param model: the fitted model (K >= the true K). :param true_params: the true full params.
    :param n: the sample size. :param n_starts: number of starts.
    :param rng: a numpy Generator. :param noise: (gate, expert, variance) sd at n = 1.
    :param exponents: their exponents in n.
    """
    gate, expert = model.gate, model.expert
    k_true = int(np.shape(gate.voronoi_weights(true_params))[-1])
    index = _split_index(model.n_experts, k_true)
    counts = np.bincount(index, minlength=k_true)[index].astype(float)
    base = expert.take_atoms(gate.scale_masses(gate.take_atoms(dict(true_params), index), 1.0 / counts),
                             index)
    base = {k: np.asarray(v, float) for k, v in model.regauge(base).items()}
    sd_g, sd_e, sd_v = (s * float(n) ** e for s, e in zip(noise, exponents, strict=True))
    gate_sites = {p.name for p in gate.param_table()}
    starts = _perturb(gate, {k: v for k, v in base.items() if k in gate_sites}, rng, n_starts,
                      sd_g, sd_g, sd_v)
    starts.update(_perturb(expert, {k: v for k, v in base.items() if k not in gate_sites}, rng, n_starts,
                           sd_e, sd_g, sd_v))
    return {k: np.asarray(v) for k, v in model.regauge(starts).items()}


# ----------------------------------------------------------------------------- fits
@partial(jax.jit, static_argnames=("model",))
def _em_reps(model, x, y, starts, floors, max_steps, tol):
    """EM of every replication (leading axis R) from its S starts; the best start's params."""
    def one(xr, yr, sr, fr):
        params, ll, steps, conv, _ = _em._em_core(model, xr, yr, sr, max_steps, tol, fr, 0)
        best = jnp.argmax(jnp.where(jnp.isfinite(ll), ll, -jnp.inf))
        return jax.tree.map(lambda v: v[best], params), ll[best], steps[best], conv[best]
    return jax.vmap(one)(x, y, starts, floors)


def _nll(model, u, x, y, floors):
    tfs = {**model.gate.transforms(floors), **model.expert.transforms(floors)}
    full = model.full_params({k: tfs[k](v) for k, v in u.items()}, x.shape[-1])
    ll = jax.scipy.special.logsumexp(model.log_joint_terms(full, x, y), axis=-1)
    return -jnp.mean(ll)


@partial(jax.jit, static_argnames=("model",))
def _lbfgs_reps(model, x, y, starts, floors, max_steps, tol):
    """L-BFGS (optax, zoom line search) of the mean negative log-likelihood in the unconstrained
    free parametrisation; replications and starts vmapped; the best start's params."""
    opt = optax.lbfgs()

    def fit(xr, yr, fr, u0):
        f = lambda u: _nll(model, u, xr, yr, fr)  # noqa: E731
        vg = optax.value_and_grad_from_state(f)

        def body(c):
            u, s, i, prev, _ = c
            v, g = vg(u, state=s)
            upd, s = opt.update(g, s, u, value=v, grad=g, value_fn=f)
            u = optax.apply_updates(u, upd)
            return u, s, i + 1, v, jnp.abs(prev - v) <= tol * jnp.abs(v)

        c0 = (u0, opt.init(u0), jnp.asarray(0, jnp.int32), jnp.asarray(jnp.inf, xr.dtype), jnp.asarray(False))
        u, _, steps, _, conv = jax.lax.while_loop(lambda c: (c[2] < max_steps) & ~c[4], body, c0)
        tfs = {**model.gate.transforms(fr), **model.expert.transforms(fr)}
        full = model.complete_params(model.full_params({k: tfs[k](v) for k, v in u.items()},
                                                       xr.shape[-1]))
        return full, -f(u) * xr.shape[0], steps, conv

    def one(xr, yr, sr, fr):
        tfs = {**model.gate.transforms(fr), **model.expert.transforms(fr)}
        free = model.free_params(sr)
        u0 = {k: jnp.nan_to_num(tfs[k].inv(v), neginf=-30.0) for k, v in free.items()}
        params, ll, steps, conv = jax.vmap(lambda u: fit(xr, yr, fr, u))(u0)
        best = jnp.argmax(jnp.where(jnp.isfinite(ll), ll, -jnp.inf))
        return jax.tree.map(lambda v: v[best], params), ll[best], steps[best], conv[best]

    return jax.vmap(one)(x, y, starts, floors)


@partial(jax.jit, static_argnames=("model", "kind", "translation", "rbar", "orders"))
def _losses(model, params, truth, kind, translation, rbar, orders=None):
    """Voronoi losses of stacked params (compiled once per model value, kind, translation, rbar and
    orders; ``rbar`` a tuple of (cell size, r) pairs, a callable or None; ``orders`` a tuple of
    (block, order) pairs or None)."""
    rb = dict(rbar) if isinstance(rbar, tuple) else rbar
    od = dict(orders) if orders is not None else None
    return jax.vmap(lambda p: voronoi_loss(model, p, truth, kind=kind, rbar=rb, translation=translation,
                                           orders=od))(params)


@partial(jax.jit, static_argnames=("model",))
def _simulate_y(model, params, keys, x):
    return jax.vmap(lambda k, xr: model.distribution(params, xr).sample_with_index(k)[0])(keys, x)


# ----------------------------------------------------------------------------- slope
def loglog_slope(n: np.ndarray, loss: np.ndarray) -> tuple[float, float, float]:
    r"""OLS of :math:`\log` loss on :math:`\log n`: (slope, its standard error, intercept); the
    standard error is NaN with fewer than 3 points.

    :param n: sample sizes (m,). :param loss: positive mean losses (m,).
    """
    lx, ly = np.log(np.asarray(n, float)), np.log(np.asarray(loss, float))
    m = lx.size
    if m < 2:
        return float("nan"), float("nan"), float("nan")
    sxx = np.sum((lx - lx.mean()) ** 2)
    slope = float(np.sum((lx - lx.mean()) * (ly - ly.mean())) / sxx)
    icpt = float(ly.mean() - slope * lx.mean())
    if m < 3:
        return slope, float("nan"), icpt
    resid = ly - (icpt + slope * lx)
    return slope, float(np.sqrt(np.sum(resid**2) / (m - 2) / sxx)), icpt


# ----------------------------------------------------------------------------- checks
def _check_args(model, true_params, n_grid, n_reps, n_experts_fit, x_sampler, init, method, n0,
                n_starts, rbar, kind, orders=None):
    if not isinstance(model, MoE):
        raise ValueError(f"`model` must be a bayesmoe.MoE (the true model), got {type(model).__name__}")
    if not isinstance(true_params, Mapping):
        raise ValueError(f"`true_params` must be a dict keyed by site name, got {type(true_params).__name__}")
    missing = sorted(set(model.param_dims(1)) - set(true_params))
    if missing:
        raise ValueError(f"`true_params` is missing site(s) {missing} of {model!r} (params of another "
                         "gate or expert family?)")
    first = next(iter(model.expert.param_shapes(1, 1)))
    k_true = int(np.shape(true_params[first])[0]) if np.ndim(true_params[first]) else 0
    if k_true != model.n_experts:
        raise ValueError(f"`true_params` has {k_true} experts but `model` has n_experts={model.n_experts}")
    d = _input_dim(model, true_params)
    model.check_params(dict(true_params), d, name="true_params")
    grid = np.asarray(n_grid)
    if grid.ndim != 1 or grid.size < 2 or not np.issubdtype(grid.dtype, np.number) \
            or np.any(grid != np.round(grid)) or np.any(grid < 2):
        raise ValueError(f"`n_grid` must be a 1-D sequence of at least two integers >= 2, got {n_grid!r}")
    if np.any(np.diff(grid) <= 0):
        raise ValueError(f"`n_grid` must be strictly increasing, got {list(grid)}")
    check_positive_int(n_reps, "n_reps")
    check_positive_int(n_starts, "n_starts")
    k_fit = model.n_experts if n_experts_fit is None else check_positive_int(n_experts_fit, "n_experts_fit")
    if k_fit < k_true:
        raise ValueError(f"`n_experts_fit` must be >= the true number of experts {k_true}, got {k_fit}")
    if init not in INITS:
        raise ValueError(f"`init` must be one of {INITS}, got {init!r}")
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    if x_sampler is None and not model.gate.models_x:
        raise ValueError(f"`x_sampler` is required: {model.gate!r} does not model x; pass a callable "
                         "(key, n) -> (n, d) inputs, e.g. the fixed design of the paper")
    if x_sampler is not None and not callable(x_sampler):
        raise ValueError(f"`x_sampler` must be a callable (key, n) -> (n, d), got {x_sampler!r}")
    if n0 is not None and (not isinstance(n0, (int, float, np.number)) or np.sum(grid >= n0) < 2):
        raise ValueError(f"`n0` must leave at least two grid points n >= n0, got {n0!r}")
    try:
        model.gate.voronoi_weights(dict(true_params))
        model.gate.voronoi_atoms(dict(true_params))
        model.expert.voronoi_atoms(dict(true_params))
    except NotImplementedError as err:
        raise ValueError(f"`model` has no Voronoi loss: {err}") from err
    _check_orders(model, dict(true_params), orders)
    largest = k_fit - k_true + 1
    if kind != "exact" and largest >= 4 and not np.all(np.isfinite(_rbar_table(rbar, k_fit)[4:largest + 1])):
        raise ValueError(f"`rbar` is required: with {k_fit} fitted and {k_true} true experts a Voronoi cell "
                         f"may hold {largest} atoms, and rbar is known only for cells of 2 and 3")
    return grid.astype(int), k_true, k_fit, d


# ----------------------------------------------------------------------------- the experiment
def convergence_rate(model: MoE, true_params: Mapping, *, n_grid, n_reps: int,
                     n_experts_fit: int | None = None, x_sampler: Callable | None = None,
                     init: str = "near_true", method: str = "em", seed: Any = 0, n0: float | None = None,
                     quiet: bool = False, n_starts: int = 1, max_steps: int | None = None,
                     tol: float = 1e-6, scale_floor: float = 1e-3, kind: str = "auto",
                     rbar: Mapping | Callable | None = None, translation: str | None = None,
                     orders: Mapping | None = None):
    r"""Voronoi loss of the MLE against n, over replications, and its log-log slope.

    :param model: the **true** :class:`~bayesmoe.MoE` (its ``n_experts`` is the true K; ``joint``
        models are fitted by the joint likelihood).
    :param true_params: its full parameters (numpy or JAX arrays keyed by site name).
    :param n_grid: strictly increasing sample sizes.
    :param n_reps: replications per sample size (vmapped).
    :param n_experts_fit: the fitted K (default the true K: an exact fit; larger: an over-fit).
    :param x_sampler: ``(key, n) -> (n, d)`` inputs of one data set (e.g. a fixed design ignoring the
        key); default: the gate's model of x (gates with ``models_x``), required otherwise.
    :param init: ``"near_true"`` (see the module docstring) or ``"data"`` (data-driven starts).
    :param method: ``"em"`` or ``"lbfgs"`` (the plain likelihood, unpenalised, scale floors as in
        :func:`bayesmoe.fit_mle`).
    :param seed: an int or a ``jax.random`` key (data, starts): same seed, same result.
    :param n0: the slope uses the grid points n >= n0 (default all).
    :param quiet: no progress bar.
    :param n_starts: starts per replication (the best log-likelihood is kept; the paper uses 5 for
        over-fits).
    :param max_steps: EM steps (default 2000) or L-BFGS iterations (default 500).
    :param tol: relative change of the log-likelihood to stop.
    :param scale_floor: relative lower bound of the scales (see :func:`bayesmoe.inference.em.em_fit`).
    :param kind: :func:`~bayesmoe.metrics.voronoi_loss` kind. :param rbar: its ``rbar``.
    :param translation: its ``translation``; default ``"inf"`` for ``init="data"`` (a fit from the
        data may split the gate's reference atom, which inflates the loss in the reference gauge),
        ``"gauge"`` otherwise.
    :param orders: its ``orders`` (exponents of blocks in over-fitted cells replacing the families').
    :returns: an ``xarray.Dataset`` with dims ``n`` and ``rep``: ``loss`` (n, rep), ``log_likelihood``,
        ``n_steps``, ``converged``, the fitted params (dims ``n``, ``rep`` and the site's own, the
        expert axis ``expert``), ``mean_loss`` (n) and the scalars ``slope``, ``slope_se``,
        ``intercept`` (also in ``attrs`` with ``n0`` and the settings).
    """
    import xarray as xr  # noqa: PLC0415

    grid, k_true, k_fit, d = _check_args(model, true_params, n_grid, n_reps, n_experts_fit, x_sampler,
                                         init, method, n0, n_starts, rbar, kind, orders)
    fit_model = MoE(model.gate, model.expert, k_fit, joint=model.joint)
    if translation is None:
        translation = "inf" if init == "data" else "gauge"
    from bayesmoe.metrics import TRANSLATIONS  # noqa: PLC0415

    if translation not in TRANSLATIONS:
        raise ValueError(f"`translation` must be one of {TRANSLATIONS} or None, got {translation!r}")
    max_steps = int(max_steps if max_steps is not None else (2000 if method == "em" else 500))
    max_steps = check_positive_int(max_steps, "max_steps")
    dtype = jnp.result_type(float)
    truth = {k: jnp.asarray(v, dtype) for k, v in model.check_params(dict(true_params), d).items()}
    key = as_key(seed, "seed")
    base_seed = seed_int(seed, "seed")
    rbar_key = tuple(sorted(rbar.items())) if isinstance(rbar, Mapping) else rbar
    orders_key = None if orders is None else tuple(sorted(dict(orders).items()))
    fit_fn = _em_reps if method == "em" else _lbfgs_reps
    results = []
    bar = tqdm(grid, disable=quiet, desc="convergence_rate", unit="n")
    for i, n in enumerate(bar):
        bar.set_postfix(n=int(n))
        kx, ky = jax.random.split(jax.random.fold_in(key, i))
        rng = np.random.default_rng([base_seed, i])
        xs = np.stack([np.asarray(x_sampler(k, int(n)) if x_sampler is not None else
                                  model.gate.sample_x(k, truth, int(n)), float).reshape(int(n), -1)
                       for k in jax.random.split(kx, n_reps)])
        if xs.shape[-1] != d:
            raise ValueError(f"`x_sampler` returned inputs of dimension {xs.shape[-1]}, the true params "
                             f"have d = {d}")
        xj = jnp.asarray(xs, dtype)
        yj = _simulate_y(model, truth, jax.random.split(ky, n_reps), xj)
        yj = yj.astype(jnp.int32) if model.expert.is_discrete else yj.astype(dtype)
        y_np = np.asarray(yj)
        floors = [fit_model.floors(xs[r], y_np[r], float(scale_floor)) for r in range(n_reps)]
        floors = {k: jnp.asarray(np.stack([np.asarray(f[k]) for f in floors]), dtype) for k in floors[0]}
        if init == "near_true":
            starts = near_true_starts(fit_model, truth, int(n), n_reps * n_starts, rng)
            starts = {k: jnp.asarray(v.reshape((n_reps, n_starts) + v.shape[1:]), dtype)
                      for k, v in starts.items()}
        else:
            from bayesmoe.inference.init import data_starts  # noqa: PLC0415
            per = [data_starts(fit_model, xj[r], yj[r], n_starts, rng,
                               {k: v[r] for k, v in floors.items()}) for r in range(n_reps)]
            starts = {k: jnp.stack([s[k] for s in per]) for k in per[0]}
        params, ll, steps, conv = fit_fn(fit_model, xj, yj, starts, floors,
                                         jnp.asarray(max_steps, jnp.int32), jnp.asarray(tol, dtype))
        loss = _losses(fit_model, params, truth, kind, translation, rbar_key, orders_key)
        results.append(({k: np.asarray(v) for k, v in params.items()}, np.asarray(ll), np.asarray(steps),
                        np.asarray(conv), np.asarray(loss)))
    return _dataset(xr, fit_model, d, grid, results, n0, dict(
        init=init, method=method, n_reps=int(n_reps), n_starts=int(n_starts), k_true=k_true, k_fit=k_fit,
        kind=kind, translation=translation, orders=repr(orders), max_steps=max_steps, tol=float(tol),
        seed=base_seed, model=repr(model), x64=bool(jax.config.jax_enable_x64)))


def _dataset(xr, fit_model, d, grid, results, n0, attrs):
    dims = fit_model.param_dims(d)
    data = {"loss": (("n", "rep"), np.stack([r[4] for r in results])),
            "log_likelihood": (("n", "rep"), np.stack([r[1] for r in results])),
            "n_steps": (("n", "rep"), np.stack([r[2] for r in results])),
            "converged": (("n", "rep"), np.stack([r[3] for r in results]))}
    for site, sd in dims.items():
        if site in results[0][0]:
            data[site] = (("n", "rep") + tuple(sd), np.stack([r[0][site] for r in results]))
    ds = xr.Dataset(data, coords={"n": grid, "rep": np.arange(results[0][4].shape[0]),
                                  "expert": np.arange(fit_model.n_experts)})
    ds["mean_loss"] = ds["loss"].mean("rep")
    n0 = float(grid[0] if n0 is None else n0)
    keep = grid >= n0
    slope, se, icpt = loglog_slope(grid[keep], ds["mean_loss"].values[keep])
    ds["slope"], ds["slope_se"], ds["intercept"] = slope, se, icpt
    ds.attrs.update(attrs, n0=n0, slope=slope, slope_se=se, intercept=icpt)
    return ds


# ----------------------------------------------------------------------------- plot
def plot_convergence(ds, ax=None, *, band: tuple[float, float] = (0.1, 0.9), label: str | None = None,
                     color=None):
    """Mean Voronoi loss against n on log-log axes, a band of replication quantiles, the fitted OLS
    line over n >= n0 (with its slope in the legend) and a reference line of slope -1/2 through the
    first fitted point.

    :param ds: a :func:`convergence_rate` Dataset. :param ax: matplotlib axes (new figure if None).
    :param band: lower and upper quantiles of the loss over replications.
    :param label: legend label of the mean curve. :param color: its colour.
    :returns: the axes.
    """
    import matplotlib.pyplot as plt  # noqa: PLC0415

    if not (isinstance(band, tuple) and len(band) == 2 and 0 <= band[0] < band[1] <= 1):
        raise ValueError(f"`band` must be a pair of quantiles 0 <= lo < hi <= 1, got {band!r}")
    for v in ("loss", "mean_loss"):
        if v not in getattr(ds, "data_vars", {}):
            raise ValueError(f"`ds` must be a convergence_rate Dataset (with {v!r})")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    n = ds["n"].values.astype(float)
    mean = ds["mean_loss"].values
    lo, hi = np.quantile(ds["loss"].values, band, axis=1)
    (line,) = ax.loglog(n, mean, "o-", color=color, label=label or "mean loss")
    ax.fill_between(n, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    keep = n >= float(ds.attrs.get("n0", n[0]))
    slope, se, icpt = float(ds["slope"]), float(ds["slope_se"]), float(ds["intercept"])
    ax.loglog(n[keep], np.exp(icpt) * n[keep] ** slope, "--", color=line.get_color(),
              label=f"OLS slope {slope:.2f} ± {se:.2f}")
    first = np.argmax(keep)
    ax.loglog(n[keep], mean[first] * (n[keep] / n[first]) ** -0.5, ":", color="grey",
              label="slope -1/2")
    ax.set_xlabel("n")
    ax.set_ylabel("Voronoi loss")
    ax.legend(fontsize=8)
    return ax
