r"""Posterior inference by NUTS, returned as an ArviZ (>= 1.0) ``DataTree``.

Mixture-of-experts posteriors are multimodal (label switching, and poor local modes). NUTS from
random starts leaves chains in different modes (R-hat >> 1, for Stan and NumPyro alike), so by default
(``init="map"``) a multi-start MAP fit runs first and every chain starts near it (a small jitter in
unconstrained space). Chains run in parallel on host devices when JAX has at least ``num_chains`` of
them (``bm.set_host_device_count(n)`` before JAX starts; fastest on CPU), else vectorized.

Groups of the result: ``posterior`` (the parameters that vary: a site with a reference entry fixed at
zero, e.g. the softmax gate's last row, is stored as its free part ``gate_coef_free`` with dim
``expert_free``, and constant sites are left out, so that ``arviz.summary`` has no NaN R-hat;
``MoE.complete_params`` restores the full sites; dims ``expert``, ``feature``, ``class``),
``sample_stats`` (energy, tree depth, acceptance, divergences), ``log_likelihood`` (per observation,
for ``arviz.loo``), ``observed_data``, ``constant_data`` (x) and ``posterior_predictive``.

After sampling, :mod:`bayesmoe.inference.diagnostics` checks the run (divergences, rank-normalised
R-hat, bulk/tail ESS, tree-depth saturation, E-BFMI), stores the results in the root attrs and warns
with a ``SamplerWarning`` per problem (``quiet=True`` silences the warnings).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import MCMC, NUTS

from bayesmoe import priors as _priors
from bayesmoe._random import as_key
from bayesmoe._validation import as_x, check_bool, check_positive_int, check_real, column_names
from bayesmoe.formula import resolve_data
from bayesmoe.inference import _datatree, _mcmc_cache, _sharding
from bayesmoe.inference import _objective as obj
from bayesmoe.inference import diagnostics as diag
from bayesmoe.inference.map import fit_map
from bayesmoe.model import MoE

__all__ = ["CHAIN_METHODS", "sample", "set_host_device_count"]

CHAIN_METHODS = ("parallel", "vectorized", "sequential")


def set_host_device_count(n: int) -> None:
    """Expose ``n`` CPU devices to JAX so that chains run in parallel (``chain_method="parallel"``).

    It only takes effect before JAX starts its backends (the first array created or computation
    run in the process): call it right after ``import bayesmoe``. Called later, when the process
    already has a different number of devices, it raises ``RuntimeError`` (instead of silently
    doing nothing); set the environment variable
    ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before starting Python instead.

    :param n: number of host (CPU) devices, >= 1.
    """
    import numpyro  # noqa: PLC0415
    from jax._src import xla_bridge  # noqa: PLC0415

    n = check_positive_int(n, "n")
    if xla_bridge.backends_are_initialized():
        have = jax.local_device_count()
        if have != n:
            raise RuntimeError(
                f"set_host_device_count({n}) was called after JAX started (it has {have} device(s) "
                "now): the device count is fixed when JAX creates its first array. Call it right "
                "after `import bayesmoe`, before any computation, or start Python with "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={n}")
        return
    numpyro.set_host_device_count(n)


def _default_chain_method(num_chains: int) -> str:
    return "parallel" if jax.local_device_count() >= num_chains else "vectorized"


@obj.serialized
def sample(model: MoE | Callable, x: Any = None, y: Any = None, *, data: Any = None,
           num_chains: int = 4, num_warmup: int = 1000,
           num_samples: int = 1000, seed: int | jax.Array = 0, init: str | dict = "map",
           chain_method: str | None = None, progress_bar: bool = True, relabel: bool = True,
           posterior_predictive: bool = True, target_accept_prob: float = 0.8,
           dense_mass: bool | None = None, init_jitter: float = 0.05, n_starts: int = 8,
           max_tree_depth: int = 10, quiet: bool = False, devices: Any = None):
    r"""Run NUTS on ``model`` given (x, y) and return an ArviZ ``DataTree``.

    The target is the posterior :math:`p(\theta \mid x, y) \propto p(\theta) \prod_i \sum_k
    g_k(x_i; \theta)\, p_k(y_i \mid x_i; \theta)` (the mixture of experts of Jacobs, Jordan, Nowlan &
    Hinton 1991), sampled by the No-U-Turn sampler (Hoffman & Gelman 2014, arXiv 1111.4246) of NumPyro.

    :param model: a :class:`bayesmoe.MoE` or any NumPyro model function ``model(x, y=None)`` with an
        observed site ``y`` (no named dims, no relabelling model for the latter).
    :param x: inputs (n, d) (a DataFrame for formula models).
    :param y: responses (n,) (class labels of any kind for class-label experts: learnt into the
        model's expert, the ``class`` coords).
    :param data: for formula models (:meth:`bayesmoe.MoE.from_formula`), a DataFrame in place of
        ``x`` and ``y``. The observed site and its DataTree variables are named ``y`` whatever the
        response's name (so ``az.loo`` and code written for any model work); the formula's response
        name is in the root attr ``bayesmoe_response``. Class labels are stored as their codes in
        ``y`` (numbers, as ArviZ's checks need) and the labels are the ``class`` coords.

    :param num_chains: number of Markov chains, >= 1.
    :param num_warmup: warm-up (adaptation) iterations per chain, discarded; >= 1.
    :param num_samples: draws kept per chain, >= 1 (the ``draw`` dim).
    :param seed: an int or a ``jax.random`` key: seed of the MAP start, the init jitter and the
        chains. Same seed, same draws.
    :param init: ``"map"`` (multi-start MAP, then chains near it), ``"random"`` (NumPyro's uniform
        init in (-2, 2) unconstrained) or a params dict keyed by the model's site names
        (:meth:`bayesmoe.MoE.site_names`, as in ``fit_map(...).params``).
    :param chain_method: ``"parallel"`` (default when JAX has ``num_chains`` devices),
        ``"vectorized"`` (default otherwise) or ``"sequential"``.
    :param progress_bar: show NumPyro's progress bar while sampling.
    :param relabel: apply :func:`bayesmoe.relabel` (ECR) to undo label switching across draws.
    :param posterior_predictive: add the ``posterior_predictive`` group (one replicated ``y`` per
        draw, :math:`y^{rep}_i \sim p(y \mid x_i, \theta^{(s)})`) for ``az.plot_ppc_*``.
    :param dense_mass: dense mass matrix (default: True when the model has <= 100 parameters).
    :param target_accept_prob: NUTS's target acceptance probability, in (0, 1); raise it (e.g. 0.95)
        when there are divergences.
    :param init_jitter: sd of the Gaussian jitter (unconstrained space) around the init, >= 0.
    :param n_starts: starts of the MAP fit when ``init="map"``, >= 1.
    :param max_tree_depth: maximum number of trajectory doublings of NUTS, >= 1.
    :param devices: None (the default), a list of ``jax`` devices or a ``jax.sharding.Mesh``: the
        rows of the data are sharded over them (each log-density evaluation reduced across devices)
        and the chains are vectorized (``chain_method="vectorized"``; MoE models only). The MAP start
        is fitted on the same devices.
    :param quiet: do not warn about sampler problems. By default each problem found after sampling
        (divergences, R-hat > 1.01, bulk/tail ESS < 100 per chain, transitions at
        ``max_tree_depth``, E-BFMI < 0.3; see :mod:`bayesmoe.inference.diagnostics`) is reported
        as a :class:`~bayesmoe.inference.diagnostics.SamplerWarning` naming the sites and the
        remedy. The diagnostics are stored in the root attrs either way: ``bayesmoe_diagnostics``
        (a JSON string), ``bayesmoe_n_divergent``, ``bayesmoe_max_rhat``, ``bayesmoe_min_ess_bulk``,
        ``bayesmoe_min_ess_tail``, ``bayesmoe_min_ebfmi``, ``bayesmoe_tree_depth_saturation`` and
        ``bayesmoe_n_warnings``.
    """
    _check_arguments(num_chains=num_chains, num_warmup=num_warmup, num_samples=num_samples,
                     chain_method=chain_method, progress_bar=progress_bar, relabel=relabel,
                     posterior_predictive=posterior_predictive, target_accept_prob=target_accept_prob,
                     dense_mass=dense_mass, init_jitter=init_jitter, n_starts=n_starts,
                     max_tree_depth=max_tree_depth, quiet=quiet)
    num_chains, num_warmup, num_samples = int(num_chains), int(num_warmup), int(num_samples)
    n_starts, max_tree_depth = int(n_starts), int(max_tree_depth)
    target_accept_prob, init_jitter = float(target_accept_prob), float(init_jitter)
    dense_mass = None if dense_mass is None else bool(dense_mass)
    if not (isinstance(init, dict) or (isinstance(init, str) and init in ("map", "random"))):
        raise ValueError(f"`init` must be 'map', 'random' or a params dict, got {init!r}")
    key = as_key(seed, "seed")
    x, y = resolve_data(model, x, y, data)
    is_moe = isinstance(model, MoE)
    if is_moe and y is not None:
        model = model.for_response(y)
    mesh = _sharding.as_mesh(devices)
    if mesh is not None:
        if not is_moe:
            raise ValueError("`devices` needs a bayesmoe.MoE model (its rows can be masked for padding)")
        if chain_method not in (None, "vectorized"):
            raise ValueError(f"`devices` shards the data, so chains are vectorized: `chain_method` must "
                             f"be None or 'vectorized', got {chain_method!r}")
        chain_method = "vectorized"
    if is_moe:
        if model.expert.y_shape():
            raise NotImplementedError(f"{model.expert!r} has vector responses y (n, q): the posterior's "
                                      "DataTree is built for scalar responses; use bm.fit_mle / bm.fit_map")
        xa, ya = model.check_data(x, y)
        if ya is None:
            raise ValueError("`y` is required, got None")
        if isinstance(init, dict):
            init = model.check_params(init, xa.shape[1], name="init")
    elif callable(model):
        xa = as_x(x, "x")
        ya = np.asarray(y)
        if ya.shape[0] != xa.shape[0]:
            raise ValueError(f"`y` has length {ya.shape[0]} but `x` has {xa.shape[0]} rows")
    else:
        raise ValueError(f"`model` must be a bayesmoe.MoE or a NumPyro model function, got {model!r}")
    features = model.input_names(x) if is_moe else column_names(x)
    dtype = jnp.result_type(float)
    x_j = jnp.asarray(xa, dtype)
    if is_moe:
        y_j = jnp.asarray(ya, model.y_dtype())
    else:
        y_j = jnp.asarray(ya) if ya.dtype.kind in "iub" else jnp.asarray(ya, dtype)
    kwargs = {"data_scale": model.data_scale(xa, ya)} if is_moe else {}
    key_init, key_mcmc, key_ppc = jax.random.split(key, 3)
    sites = obj.latent_sites(model, (x_j, y_j), kwargs)
    tfs = obj.transforms(sites)
    n_latent = sum(int(np.prod(s["shape"])) for s in sites.values())
    dense_mass = (n_latent <= 100) if dense_mass is None else dense_mass

    init_params = None
    map_fit = None
    if init == "map" or isinstance(init, dict):
        if init == "map":  # under hierarchical priors: the MAP of the model with plain slope priors
            point = model
            if is_moe and _priors.point_priors(model.priors) is not model.priors:
                point = model.with_priors(_priors.point_priors(model.priors))
            map_fit = fit_map(point, xa, ya, n_starts=n_starts, seed=seed, devices=devices)
            centre = map_fit.params
        else:
            centre = init
        free = model.init_values(centre) if is_moe else {k: centre[k] for k in sites}
        u = obj.unconstrain(tfs, {k: jnp.asarray(v, dtype) for k, v in free.items()})
        keys = jax.random.split(key_init, len(u))
        init_params = {k: v[None] + init_jitter * jax.random.normal(keys[i], (num_chains, *v.shape), dtype)
                       for i, (k, v) in enumerate(u.items())}
        if num_chains == 1:
            init_params = {k: v[0] for k, v in init_params.items()}

    method = chain_method or _default_chain_method(num_chains)
    run_x, run_y, run_kwargs = x_j, y_j, kwargs
    if mesh is not None:  # rows sharded over the devices, padding rows masked
        sharded = _sharding.shard_rows(mesh, x_j, y_j)
        run_x, run_y, run_kwargs = sharded.x, sharded.y, {**kwargs, "mask": sharded.mask}

    def make_mcmc() -> MCMC:
        kernel = NUTS(model, target_accept_prob=target_accept_prob, dense_mass=dense_mass,
                      max_tree_depth=max_tree_depth)
        # chains in compiled programs that later calls reuse (_mcmc_cache)
        cm = method
        if num_chains > 1 and method == "vectorized" and not progress_bar:
            cm = _mcmc_cache.vectorized
        elif 1 < num_chains <= jax.local_device_count() and method == "parallel":
            cm = _mcmc_cache.parallel  # NumPyro's pmap, kept for later calls
        return MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                    chain_method=cm, progress_bar=bool(progress_bar), jit_model_args=True)

    # equal model, settings and data shapes: the sampler compiled by an earlier call (_mcmc_cache)
    settings = (target_accept_prob, dense_mass, max_tree_depth, num_warmup, num_samples, num_chains,
                method, bool(progress_bar), mesh)
    mcmc = _mcmc_cache.cached_mcmc(model, settings, (run_x, run_y, run_kwargs, init_params), make_mcmc)
    mcmc.run(key_mcmc, run_x, run_y, init_params=init_params,
             extra_fields=("energy", "num_steps", "accept_prob", "diverging", "adapt_state.step_size"),
             **run_kwargs)
    samples = mcmc.get_samples(group_by_chain=True)
    stats = mcmc.get_extra_fields(group_by_chain=True)

    stats_np = {
        "energy": np.asarray(stats["energy"]),
        "n_steps": np.asarray(stats["num_steps"]),
        "tree_depth": np.floor(np.log2(np.asarray(stats["num_steps"]) + 1)).astype(int),
        "acceptance_rate": np.asarray(stats["accept_prob"]),
        "diverging": np.asarray(stats["diverging"]),
        "step_size": np.asarray(stats["adapt_state.step_size"]),
    }
    attrs = {"inference_library": "numpyro", "bayesmoe_chain_method": method,
             "bayesmoe_n_devices": 1 if mesh is None else int(mesh.size)}
    if is_moe and model.response_name is not None:
        attrs["bayesmoe_response"] = model.response_name
    if map_fit is not None:
        attrs["map_log_likelihood"] = map_fit.log_likelihood
    dt = _datatree.build(model, samples, xa, ya, x_j, y_j, features, kwargs, key_ppc,
                         posterior_predictive=posterior_predictive, sample_stats=stats_np,
                         attrs=attrs, relabel=relabel)
    _report(dt, stats, max_tree_depth, quiet)
    return dt


def _check_arguments(*, num_chains, num_warmup, num_samples, chain_method, progress_bar, relabel,
                     posterior_predictive, target_accept_prob, dense_mass, init_jitter, n_starts,
                     max_tree_depth, quiet) -> None:
    """Check the scalar arguments of :func:`sample` (before anything is compiled)."""
    check_positive_int(num_chains, "num_chains")
    check_positive_int(num_samples, "num_samples")
    check_positive_int(num_warmup, "num_warmup", minimum=0)
    check_positive_int(n_starts, "n_starts")
    check_positive_int(max_tree_depth, "max_tree_depth")
    if chain_method is not None and not (isinstance(chain_method, str) and chain_method in CHAIN_METHODS):
        raise ValueError(f"`chain_method` must be one of {CHAIN_METHODS} or None, got {chain_method!r}")
    check_real(target_accept_prob, "target_accept_prob", "in (0, 1)", lambda v: 0 < v < 1)
    check_real(init_jitter, "init_jitter", ">= 0 and finite", lambda v: 0 <= v < math.inf)
    for name, value in (("progress_bar", progress_bar), ("relabel", relabel),
                        ("posterior_predictive", posterior_predictive), ("quiet", quiet)):
        check_bool(value, name)
    if dense_mass is not None:
        check_bool(dense_mass, "dense_mass", " or None")


def _report(dt, stats: dict, max_tree_depth: int, quiet: bool) -> None:
    """Diagnose the run, write the root attrs (netCDF-safe) and warn unless ``quiet``."""
    found = diag.diagnose(dt.posterior.to_dataset(), stats["energy"], stats["diverging"],
                          stats["num_steps"], max_tree_depth)
    msgs = diag.messages(found)
    attrs = {k: _netcdf_safe(v) for k, v in dt.attrs.items()}
    attrs.update(diag.to_attrs(found, msgs))
    dt.attrs = attrs
    if not quiet:
        for msg in msgs:
            warnings.warn(msg, diag.SamplerWarning, stacklevel=3)


def _netcdf_safe(value: Any) -> Any:
    """Booleans (not storable as netCDF attributes) as ints; numpy scalars as Python numbers."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value
