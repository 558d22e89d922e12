"""Log joint densities of a NumPyro model and the map to unconstrained space (no Jacobian: MAP)."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.distributions.transforms import AffineTransform, ComposeTransform, ExpTransform
from numpyro.handlers import seed, substitute, trace

#: NumPyro's effect-handler stack is a module-level list shared by all threads: workflows that trace
#: NumPyro models (fit_map, sample) hold this lock, so concurrent calls from threads run one at a time.
MODEL_LOCK = threading.RLock()


def serialized(fn: Callable) -> Callable:
    """Run ``fn`` under :data:`MODEL_LOCK` (reentrant: workflows may call each other)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with MODEL_LOCK:
            return fn(*args, **kwargs)

    return wrapper


def latent_sites(model_fn: Callable, args: tuple, kwargs: dict) -> dict[str, dict]:
    """Support and shape of every latent (non-observed) sample site: ``{name: {"support", "shape"}}``.

    The model is traced abstractly (``jax.eval_shape``: nothing is computed or compiled); when a
    support holds traced values (e.g. bounds computed from data), the model runs once eagerly instead.
    """
    box: dict[str, dict] = {}

    def run(a, kw):
        tr = trace(seed(model_fn, 0)).get_trace(*a, **kw)
        box.clear()
        for name, site in tr.items():
            if (site["type"] == "sample" and not site["is_observed"]
                    and not site.get("infer", {}).get("is_auxiliary", False)):
                box[name] = {"support": site["fn"].support, "shape": tuple(jnp.shape(site["value"]))}
        return 0

    jax.eval_shape(run, args, kwargs)
    leaked = any(isinstance(v, jax.core.Tracer) for s in box.values()
                 for v in jax.tree.leaves(getattr(s["support"], "__dict__", {})))
    if leaked:
        run(args, kwargs)
    return dict(box)


def transforms(sites: dict[str, dict], floors: dict[str, jnp.ndarray] | None = None) -> dict:
    """Bijections from unconstrained space to each site's support.

    Sites named in ``floors`` (positive scales) use ``floor + exp(u)``: an explicit lower bound that
    keeps a maximum-likelihood fit from collapsing an expert's variance to 0.
    """
    floors = floors or {}
    out = {}
    for name, site in sites.items():
        if name in floors:
            out[name] = ComposeTransform([ExpTransform(), AffineTransform(floors[name], 1.0)])
        else:
            out[name] = dist.biject_to(site["support"])
    return out


def constrain(tfs: dict, u: dict) -> dict:
    return {k: tfs[k](v) for k, v in u.items()}


def unconstrain(tfs: dict, theta: dict) -> dict:
    return {k: tfs[k].inv(jnp.asarray(v)) for k, v in theta.items()}


def log_joint(model_fn: Callable, theta: dict, args: tuple, kwargs: dict,
              prior: bool) -> jnp.ndarray:
    """Sum of the log-densities of the observed sites (and of the latent ones when ``prior``)."""
    tr = trace(substitute(model_fn, data=theta)).get_trace(*args, **kwargs)
    total = jnp.zeros(())
    for site in tr.values():
        if site["type"] != "sample":
            continue
        if site["is_observed"] or prior:
            lp = site["fn"].log_prob(site["value"])
            if site.get("scale") is not None:
                lp = lp * site["scale"]
            total = total + jnp.sum(lp)
    return total


def pointwise_log_lik(model_fn: Callable, theta: dict, args: tuple, kwargs: dict, n: int) -> jnp.ndarray:
    """Per-observation log-density of the observed sites, shape (n,): sites whose log-density does
    not have a leading axis of length ``n`` contribute nothing."""
    tr = trace(substitute(model_fn, data=theta)).get_trace(*args, **kwargs)
    total = jnp.zeros((n,))
    for site in tr.values():
        if site["type"] == "sample" and site["is_observed"]:
            lp = site["fn"].log_prob(site["value"])
            if site.get("scale") is not None:
                lp = lp * site["scale"]
            if jnp.ndim(lp) >= 1 and lp.shape[0] == n:
                total = total + jnp.sum(jnp.reshape(lp, (n, -1)), axis=1)
    return total


def all_values(model_fn: Callable, theta: dict, args: tuple, kwargs: dict) -> dict:
    """Latent and deterministic site values at ``theta`` (observed sites excluded)."""
    tr = trace(substitute(seed(model_fn, 0), data=theta)).get_trace(*args, **kwargs)
    return {name: site["value"] for name, site in tr.items()
            if (site["type"] == "sample" and not site["is_observed"])
            or site["type"] == "deterministic"}
