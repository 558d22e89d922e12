r"""Variational inference for large n: NumPyro's SVI with a Gaussian guide, initialised at the MAP.

The posterior :math:`p(\theta | x, y)` is approximated by a Gaussian :math:`q_\phi` in the
unconstrained space of the sample sites (``guide="normal"``: mean-field, NumPyro's ``AutoNormal``;
``guide="lowrank"``: a rank-r plus diagonal covariance, ``AutoLowRankMultivariateNormal``), fitted by
maximising the evidence lower bound (Kucukelbir et al., "Automatic differentiation variational
inference", JMLR 2017)

.. math::  \mathrm{ELBO}(\phi) = E_{q_\phi}\big[\log p(\theta) + \sum_{i=1}^n \log p(y_i | x_i, \theta)
    - \log q_\phi(\theta)\big]

with Adam on single-draw reparameterised gradients (step size decayed along a cosine to a tenth).
With ``subsample_size = m`` each step uses a
random minibatch :math:`B` of m rows and the unbiased estimate
:math:`\frac{n}{m}\sum_{i\in B}\log p(y_i | x_i, \theta)` of the likelihood term (Hoffman et al.,
"Stochastic variational inference", JMLR 2013), so a step costs O(m) rather than O(n).

The guide's means start at a multi-start MAP fit (:func:`bayesmoe.fit_map`), which also fixes the
labelling of the experts. The result has the shape of :func:`bayesmoe.sample`'s: posterior draws from
the fitted guide (one chain), per-observation ``log_likelihood``, ``observed_data``, ``constant_data``,
``posterior_predictive``, plus the group ``vi_stats`` (``loss``: the negative ELBO at every step).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import xarray as xr
from numpyro.infer import SVI, Trace_ELBO, init_to_value
from numpyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoNormal

from bayesmoe._random import as_key, seed_int
from bayesmoe._validation import check_bool, check_positive_int, check_real
from bayesmoe.inference import _datatree
from bayesmoe.inference import _objective as obj
from bayesmoe.inference.map import fit_map
from bayesmoe.inference.result import FitWarning
from bayesmoe.model import MoE

__all__ = ["GUIDES", "fit_vi"]

GUIDES = ("normal", "lowrank")


def _check(model, guide, subsample_size, num_steps, num_draws, learning_rate, n_starts,
           progress_bar, posterior_predictive, relabel, quiet) -> None:
    """Every argument of :func:`fit_vi`, before anything is traced."""
    if not isinstance(model, MoE):
        raise TypeError(f"`model` must be a bayesmoe.MoE, got {type(model).__name__}")
    if not (isinstance(guide, str) and guide in GUIDES):
        raise ValueError(f"`guide` must be one of {GUIDES}, got {guide!r}")
    if subsample_size is not None:
        check_positive_int(subsample_size, "subsample_size")
    check_positive_int(num_steps, "num_steps")
    check_positive_int(num_draws, "num_draws")
    check_positive_int(n_starts, "n_starts")
    check_real(learning_rate, "learning_rate", "> 0 and finite", lambda v: 0 < v < math.inf)
    for name, value in (("progress_bar", progress_bar), ("posterior_predictive", posterior_predictive),
                        ("relabel", relabel), ("quiet", quiet)):
        check_bool(value, name)


def _guide(kind: str, model: MoE, init: dict):
    loc = init_to_value(values=init)
    if kind == "normal":
        return AutoNormal(model, init_loc_fn=loc, init_scale=0.01)
    return AutoLowRankMultivariateNormal(model, init_loc_fn=loc, init_scale=0.01)


@obj.serialized
def fit_vi(model: MoE, x: Any, y: Any, *, guide: str = "normal", subsample_size: int | None = None,
           num_steps: int = 2000, num_draws: int = 1000, seed: int | jax.Array = 0,
           learning_rate: float = 0.01, n_starts: int = 8, progress_bar: bool = True,
           posterior_predictive: bool = True, relabel: bool = False, quiet: bool = False):
    """Variational posterior of ``model`` given (x, y), as an ArviZ ``DataTree`` shaped like
    :func:`bayesmoe.sample`'s (see the module docstring for the objective).

    :param model: a :class:`bayesmoe.MoE`.
    :param x: (n, d) inputs (array or DataFrame; column names become the ``feature`` coords).
    :param y: (n,) responses in the expert's support.
    :param guide: ``"normal"`` (mean-field Gaussian) or ``"lowrank"`` (low-rank plus diagonal
        multivariate Gaussian: keeps the correlations between sites) in unconstrained space.
    :param subsample_size: rows per step (a random minibatch, likelihood scaled by n / size);
        None uses all n rows every step. Sizes >= n mean all rows.
    :param num_steps: Adam steps on the negative ELBO.
    :param num_draws: draws from the fitted guide (the ``draw`` dim; ``chain`` has size 1).
    :param seed: an int or a ``jax.random`` key (MAP starts, ELBO gradients, draws).
    :param learning_rate: Adam's initial step size (cosine-decayed to a tenth over ``num_steps``).
    :param n_starts: starts of the MAP fit the guide is initialised at.
    :param progress_bar: show the ELBO optimisation's progress (tqdm).
    :param posterior_predictive: add the ``posterior_predictive`` group.
    :param relabel: apply ECR relabelling to the draws (the MAP start already fixes the labels, so
        this is rarely needed).
    :param quiet: do not warn (:class:`~bayesmoe.FitWarning`) when the ELBO is not finite or still
        falling at the end.
    :returns: DataTree with ``posterior``, ``log_likelihood``, ``observed_data``, ``constant_data``,
        ``posterior_predictive`` and ``vi_stats`` (``loss`` per step); root attrs
        ``inference_library``, ``bayesmoe_vi_guide``, ``bayesmoe_vi_subsample_size``,
        ``bayesmoe_vi_final_loss`` and ``map_log_likelihood``.
    """
    _check(model, guide, subsample_size, num_steps, num_draws, learning_rate, n_starts, progress_bar,
           posterior_predictive, relabel, quiet)
    key = as_key(seed, "seed")
    seed_i = seed_int(seed, "seed")
    if model.expert.y_shape():
        raise NotImplementedError(f"{model.expert!r} has vector responses y (n, q): the posterior's "
                                  "DataTree is built for scalar responses; use bm.fit_mle / bm.fit_map")
    xa, ya = model.check_data(x, y)
    if ya is None:
        raise ValueError("`y` is required, got None")
    n, d = xa.shape
    batch = None if subsample_size is None or int(subsample_size) >= n else int(subsample_size)
    features = model.input_names(x)
    x_j = jnp.asarray(xa, jnp.result_type(float))
    y_j = jnp.asarray(ya, model.y_dtype())
    scale = model.data_scale(xa, ya)
    key_svi, key_draw, key_ppc = jax.random.split(key, 3)

    map_fit = fit_map(model, xa, ya, n_starts=int(n_starts), seed=seed_i)
    init = {k: jnp.asarray(v, x_j.dtype) for k, v in model.free_params(map_fit.params).items()}
    q = _guide(guide, model, init)
    # Adam with a cosine decay to a tenth of the step size: minibatch noise averages out at the end
    rate = optax.cosine_decay_schedule(float(learning_rate), int(num_steps), alpha=0.1)
    svi = SVI(model, q, optax.adam(rate), Trace_ELBO())
    run = svi.run(key_svi, int(num_steps), x_j, y_j, progress_bar=bool(progress_bar),
                  data_scale=scale, subsample_size=batch)
    losses = np.asarray(run.losses)

    samples = _draws(model, q, run.params, key_draw, int(num_draws), x_j, y_j, scale)
    attrs = {"inference_library": "numpyro", "bayesmoe_vi_guide": guide,
             "bayesmoe_vi_subsample_size": 0 if batch is None else batch,
             "bayesmoe_vi_num_steps": int(num_steps),
             "bayesmoe_vi_final_loss": float(losses[-1]),
             "map_log_likelihood": float(map_fit.log_likelihood)}
    dt = _datatree.build(model, samples, xa, ya, x_j, y_j, features, {"data_scale": scale}, key_ppc,
                         posterior_predictive=bool(posterior_predictive), sample_stats=None,
                         attrs=attrs, relabel=bool(relabel))
    dt["vi_stats"] = xr.Dataset({"loss": (("step",), losses)}, coords={"step": np.arange(len(losses))})
    msg = _convergence_problem(losses)
    if msg and not quiet:
        warnings.warn(f"fit_vi: {msg}", FitWarning, stacklevel=3)
    return dt


def _convergence_problem(losses: np.ndarray) -> str:
    """A message when the negative ELBO is non-finite or still falling over the last 20% of steps
    (the mean of the last 10% below the mean of the 10% before by more than 3 standard errors)."""
    if not np.all(np.isfinite(losses[-max(1, len(losses) // 10):])):
        return "the ELBO is not finite at the end of the optimisation; lower `learning_rate`"
    m = len(losses) // 10
    if m < 5:
        return ""
    last, prev = losses[-m:], losses[-2 * m:-m]
    se = np.sqrt((np.var(last) + np.var(prev)) / m)
    if np.mean(prev) - np.mean(last) > 3 * se + 1e-6 * abs(np.mean(last)):
        return (f"the negative ELBO was still falling over the last {2 * m} steps ("
                f"{np.mean(prev):.6g} -> {np.mean(last):.6g}); raise `num_steps`")
    return ""


def _draws(model: MoE, q, params: dict, key, num_draws: int, x, y, scale) -> dict:
    """``num_draws`` draws from the fitted guide, as every site of the model (chain axis of 1)."""
    free = q.sample_posterior(key, params, sample_shape=(num_draws,))
    sites = obj.latent_sites(model, (x, y), {"data_scale": scale})
    free = {k: v for k, v in free.items() if k in sites}
    full = _site_values(model, free, x[:1], y[:1], scale)
    return {k: np.asarray(v)[None] for k, v in full.items()}


def _site_values(model: MoE, free: dict, x, y, scale) -> dict:
    """Latent and deterministic sites at every draw (the model run on one row: sites only)."""
    fn = jax.jit(jax.vmap(lambda t: obj.all_values(model, t, (x, y), {"data_scale": scale})))
    return fn(free)
