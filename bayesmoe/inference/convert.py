"""A user's own ``numpyro.infer.MCMC`` run as the same ArviZ ``DataTree`` as :func:`bayesmoe.sample`.

``to_datatree(mcmc, model, x, y)`` takes an MCMC object that has run ``model(x, y)`` (a
:class:`~bayesmoe.MoE`, or the user's own NumPyro model function ``model(x, y=None)`` built from our
pieces, e.g. with a :class:`~bayesmoe.MixtureOfExperts` observed site) and returns a tree with the
groups ``posterior`` (named dims), ``sample_stats``, ``log_likelihood`` (pointwise, for
``arviz.loo`` and ``arviz.compare``), ``posterior_predictive`` (for ``arviz.plot_ppc_dist``),
``observed_data`` and ``constant_data``. With ``moe=`` (the :class:`~bayesmoe.MoE` whose site names
the user's model uses), the posterior gets the model's dims (``expert``, ``feature``, ``class``) and
the tree records the model, so that :func:`bayesmoe.relabel` and :func:`bayesmoe.predict` work
without ``model=``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from arviz_base import from_dict
from numpyro.infer import Predictive
from numpyro.infer import log_likelihood as numpyro_log_likelihood

from bayesmoe._random import as_key
from bayesmoe._validation import as_x, check_bool, column_names
from bayesmoe.inference._objective import MODEL_LOCK
from bayesmoe.model import MoE

__all__ = ["to_datatree"]

_STATS = {"energy": "energy", "num_steps": "n_steps", "accept_prob": "acceptance_rate",
          "diverging": "diverging", "adapt_state.step_size": "step_size"}


def to_datatree(mcmc: Any, model: MoE | Callable, x: Any, y: Any, *, moe: MoE | None = None,
                posterior_predictive: bool = True, seed: int | jax.Array = 0,
                dims: dict | None = None, coords: dict | None = None):
    """Convert a finished ``numpyro.infer.MCMC`` run of ``model(x, y)`` into a ``DataTree``.

    :param mcmc: the ``numpyro.infer.MCMC`` object, after ``mcmc.run(key, x, y)``.
    :param model: the model that was run: a :class:`~bayesmoe.MoE` or a NumPyro model function
        ``model(x, y=None)`` (its observed sites get pointwise log-likelihoods and predictive draws).
    :param x: the inputs (n, d) the run used (array or DataFrame: its column names become the
        ``feature`` coords).
    :param y: the responses (n,) the run used.
    :param moe: for a model function whose sites are named like a :class:`~bayesmoe.MoE`'s
        (``gate_coef``, ``expert_scale``, ...): that model, for dims and for relabelling. Default:
        ``model`` itself when it is a MoE.
    :param posterior_predictive: also draw the observed sites from the posterior predictive.
    :param seed: an int or a ``jax.random`` key for the predictive draws.
    :param dims: extra ``{site: [dim, ...]}`` (without chain and draw) for the user's own sites.
    :param coords: extra ``{dim: labels}``.
    :returns: the ``DataTree``.
    """
    from numpyro.infer import MCMC  # noqa: PLC0415

    if not isinstance(mcmc, MCMC):
        raise TypeError(f"`mcmc` must be a numpyro.infer.MCMC after run(), got {type(mcmc).__name__}")
    check_bool(posterior_predictive, "posterior_predictive")
    if moe is None and isinstance(model, MoE):
        moe = model
    if moe is not None and not isinstance(moe, MoE):
        raise TypeError(f"`moe` must be a bayesmoe.MoE or None, got {type(moe).__name__}")
    if not callable(model):
        raise TypeError(f"`model` must be a bayesmoe.MoE or a NumPyro model function, got {model!r}")
    for name, value in (("dims", dims), ("coords", coords)):
        if value is not None and not isinstance(value, dict):
            raise TypeError(f"`{name}` must be a dict or None, got {type(value).__name__}")
    key = as_key(seed, "seed")
    try:
        samples = mcmc.get_samples(group_by_chain=True)
    except Exception as err:  # noqa: BLE001  (numpyro raises several types before run())
        raise ValueError("`mcmc` has no samples: call mcmc.run(key, x, y) first") from err
    if isinstance(model, MoE):
        xa, ya = model.check_data(x, y)
        y_j = jnp.asarray(ya, model.y_dtype())
    else:
        xa = as_x(x, "x")
        ya = np.asarray(y)
        if ya.shape[0] != xa.shape[0]:
            raise ValueError(f"`y` has length {ya.shape[0]} but `x` has {xa.shape[0]} rows")
        y_j = jnp.asarray(ya) if ya.dtype.kind in "iub" else jnp.asarray(ya, jnp.result_type(float))
    x_j = jnp.asarray(xa, jnp.result_type(float))
    n, d = xa.shape
    chains, draws = next(iter(samples.values())).shape[:2]
    flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in samples.items()}
    kwargs = {"data_scale": model.data_scale(xa, ya)} if isinstance(model, MoE) else {}

    with MODEL_LOCK:
        if isinstance(model, MoE):
            from bayesmoe.inference._datatree import moe_pointwise_ll  # noqa: PLC0415

            log_lik = {"y": moe_pointwise_ll(model, flat, x_j, y_j, chains)}
        else:
            lls = numpyro_log_likelihood(model, flat, x_j, y_j)
            log_lik = {k: np.asarray(v).reshape((chains, draws) + v.shape[1:]) for k, v in lls.items()}
        data = {"log_likelihood": log_lik, "observed_data": {}, "constant_data": {"x": np.asarray(xa)}}
        if posterior_predictive:
            predictive = Predictive(model, posterior_samples=flat, return_sites=list(log_lik))
            pred = predictive(key, x_j, None, **kwargs)
            data["posterior_predictive"] = {k: np.asarray(v).reshape((chains, draws) + v.shape[1:])
                                            for k, v in pred.items() if k in log_lik}
    for k in log_lik:
        data["observed_data"][k] = np.asarray(ya) if k == "y" else None
    data["observed_data"] = {k: v for k, v in data["observed_data"].items() if v is not None}

    features = column_names(x) or [f"x{j}" for j in range(d)]
    all_coords = {"obs": np.arange(n), "feature": features}
    all_dims = {"x": ["obs", "feature"]}
    for k in log_lik:
        all_dims[k] = ["obs"] + [f"{k}_dim_{i}" for i in range(log_lik[k].ndim - 3)]
    attrs = {"inference_library": "numpyro"}
    if moe is not None:
        kept = moe.posterior_dims(d)
        names = set(kept) | moe.site_names(d) | set(moe.param_dims(d, free=True))
        # sites the user's model samples under our names: keep those with free parameters
        post = {k: np.asarray(v) for k, v in samples.items()
                if (k in kept) or (k not in names)}
        pdims = {**moe.param_dims(d, free=True), **kept}
        for k, v in post.items():
            if k in pdims and len(pdims[k]) == v.ndim - 2:
                all_dims[k] = list(pdims[k])
        for dim, labels in moe.coords(features).items():
            all_coords.setdefault(dim, np.asarray(labels))
        attrs["bayesmoe_model"] = json.dumps(moe.spec())
    else:
        post = {k: np.asarray(v) for k, v in samples.items()}
    post = {k: v for k, v in post.items() if not _constant(v)}
    all_dims.update({k: list(v) for k, v in (dims or {}).items()})
    all_coords.update({k: np.asarray(v) for k, v in (coords or {}).items()})
    data["posterior"] = post
    stats = _sample_stats(mcmc)
    if stats:
        data["sample_stats"] = stats
    used = {dim for k, v in all_dims.items() for dim in v}
    return from_dict(data, coords={k: v for k, v in all_coords.items() if k in used}, dims=all_dims,
                     attrs={"/": attrs})


def _constant(v: np.ndarray) -> bool:
    """A site whose every entry is the same across all draws (no R-hat: kept out of the posterior)."""
    flat = v.reshape(v.shape[0] * v.shape[1], -1)
    return bool(flat.shape[0] > 1 and np.all(flat == flat[:1]))


def _sample_stats(mcmc) -> dict:
    """Whatever extra fields the run collected, under ArviZ's names."""
    try:
        extra = mcmc.get_extra_fields(group_by_chain=True)
    except Exception:  # noqa: BLE001
        return {}
    out = {}
    for k, v in extra.items():
        if k in _STATS:
            out[_STATS[k]] = np.asarray(v)
    if "n_steps" in out:
        out["tree_depth"] = np.floor(np.log2(out["n_steps"] + 1)).astype(int)
    return out
