"""Posterior draws -> the ArviZ ``DataTree`` every workflow returns (``sample``, ``fit_vi``).

Groups: ``posterior`` (site names, dims ``expert``, ``feature``, ...), ``log_likelihood`` (per
observation, for ``arviz.loo``), ``observed_data``, ``constant_data`` (x), ``posterior_predictive``
(optional) and ``sample_stats`` (when the workflow has per-draw statistics). One function builds it so
that diagnostics, relabelling and plots see the same shape whichever algorithm drew the posterior.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import jax
import numpy as np
from arviz_base import from_dict
from numpyro.infer import Predictive
from numpyro.infer import log_likelihood as numpyro_log_likelihood

from bayesmoe._draws import chunk_size, map_draws
from bayesmoe.model import MoE

__all__ = ["build"]


def build(model: Any, samples: dict, xa: np.ndarray, ya: np.ndarray, x_j, y_j, features: list | None,
          kwargs: dict, key_ppc, *, posterior_predictive: bool, sample_stats: dict | None,
          attrs: dict, relabel: bool):
    """The DataTree of posterior ``samples``.

    :param model: a :class:`~bayesmoe.MoE` or a NumPyro model function.
    :param samples: ``{site: array (chain, draw, ...)}``: latent and deterministic sites (for an MoE,
        only its user-facing sites are kept).
    :param xa: (n, d) inputs (numpy); :param ya: (n,) responses (numpy).
    :param x_j: ``xa`` as a JAX array; :param y_j: ``ya`` as a JAX array.
    :param features: column names of x (None: ``x0, x1, ...``).
    :param kwargs: keyword arguments of the model (e.g. ``data_scale``).
    :param key_ppc: PRNG key of the posterior predictive draws.
    :param posterior_predictive: add the ``posterior_predictive`` group (y drawn at every draw).
    :param sample_stats: ``{name: array (chain, draw)}`` or None (no group).
    :param attrs: root attributes (``bayesmoe_model`` is added for an MoE).
    :param relabel: undo label switching (ECR) for MoE models with K > 1.
    """
    is_moe = isinstance(model, MoE)
    num_chains, num_samples = next(iter(samples.values())).shape[:2]
    flat = {k: np.asarray(v).reshape((-1,) + np.shape(v)[2:]) for k, v in samples.items()}
    if is_moe:
        # constant entries (reference rows, K = 1 gates) stay out: see MoE.posterior_dims
        kept = model.posterior_dims(xa.shape[1])
        post = {k: np.asarray(v) for k, v in samples.items() if k in kept}
        log_lik = {"y": moe_pointwise_ll(model, flat, x_j, y_j, num_chains)}
    else:
        post = {k: np.asarray(v) for k, v in samples.items()}
        lls = numpyro_log_likelihood(model, flat, x_j, y_j, **kwargs)
        log_lik = {k: np.asarray(v).reshape((num_chains, num_samples) + v.shape[1:])
                   for k, v in lls.items()}
    data = {"posterior": post, "log_likelihood": log_lik, "observed_data": {"y": np.asarray(ya)},
            "constant_data": {"x": np.asarray(xa)}}
    if sample_stats is not None:
        data["sample_stats"] = sample_stats
    if posterior_predictive:
        pred = _predictive_y(model, key_ppc, flat, x_j, kwargs)
        data["posterior_predictive"] = {"y": np.asarray(pred).reshape((num_chains, num_samples, -1))}
    d = xa.shape[1]
    labels = features if features else [f"x{j}" for j in range(d)]
    coords = {"obs": np.arange(xa.shape[0]), "feature": labels}
    dims = {"x": ["obs", "feature"], "y": ["obs"]}
    attrs = dict(attrs)
    if is_moe:
        pdims = model.posterior_dims(d)
        dims.update({k: list(v) for k, v in pdims.items() if k in post})
        for dim, values in model.coords(labels).items():
            coords.setdefault(dim, np.asarray(values))
        if model.joint:
            dims["x_obs"] = ["obs", "feature"]
        attrs["bayesmoe_model"] = json.dumps(model.spec())
    dt = from_dict(data, coords=coords, dims=dims, attrs={"/": attrs})
    if is_moe and relabel and model.n_experts > 1:
        from bayesmoe.inference.relabel import relabel as _relabel  # noqa: PLC0415

        dt = _relabel(dt, model=model)
    return dt


@partial(jax.jit, static_argnums=0)
def _predictive_y(model, key, flat: dict, x, kwargs: dict):
    """y drawn at every posterior draw (compiled once per model and shapes, reused across calls)."""
    return Predictive(model, posterior_samples=flat, return_sites=["y"])(key, x, None, **kwargs)["y"]


@partial(jax.jit, static_argnums=0)
def _pointwise_ll(model: MoE, draws: dict, x, y):
    """log p(y_i | x_i, theta_s) for a batch of draws (compiled once per model and shapes)."""
    return jax.vmap(lambda p: model.log_likelihood(p, x, y))(draws)


def moe_pointwise_ll(model: MoE, flat: dict, x, y, num_chains: int) -> np.ndarray:
    """log p(y_i | x_i, theta_s) for every draw s: (chain, draw, obs), in chunks of draws."""
    names = model.site_names(x.shape[1])
    full = {k: v for k, v in flat.items() if k in names}
    out = map_draws(lambda p: _pointwise_ll(model, p, x, y), full,
                    chunk_size(x.shape[0] * model.n_experts))
    return out.reshape((num_chains, out.shape[0] // num_chains, -1))
