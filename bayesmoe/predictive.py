r"""Posterior prediction at new inputs from a sampled ``DataTree``.

For every posterior draw :math:`\theta^{(s)}` and new input :math:`x_i`, a response is drawn from the
model, :math:`\tilde y_i^{(s)} \sim p(y | x_i, \theta^{(s)}) = \sum_k g_k(x_i; \theta^{(s)})
p_k(y | x_i; \theta^{(s)})`, so the draws follow the posterior predictive distribution
:math:`p(\tilde y | x_i, \mathcal D)`. Beside the draws come, per draw, the mixture mean
:math:`\sum_k g_k \mu_k` (experts with a mean), the gate probabilities and, for class-probability
experts, the mixture's class probabilities; and summaries over draws: the mean of the predictive
draws and the highest-density interval (the shortest interval holding ``hdi_prob`` of the draws).

The result is an ArviZ-style ``DataTree``: ``posterior_predictive`` (``y``, dims ``chain, draw, obs``),
``predictions`` (per draw: ``gate_probs``, ``mean``, ``class_probs``), ``constant_data`` (``x``: the
new inputs), ``observed_data``
(``y``, when ``y_new`` is given: then ``arviz.plot_ppc_dist`` and friends compare held-out responses
with their predictions) and ``predictions_summary`` (``y_mean``, ``y_hdi`` with a ``ci_bound`` dim
``lower``/``upper``, and ``mean_mean`` the posterior mean of the mixture mean).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bayesmoe._draws import chunk_size, map_draws
from bayesmoe._random import as_key
from bayesmoe._validation import column_names

__all__ = ["hdi", "posterior_draws", "posterior_predictive", "predict"]

_SAMPLE_DIMS = ("chain", "draw")
_KEYS = "__keys__"


def hdi(draws: np.ndarray, prob: float) -> np.ndarray:
    """Highest-density interval of each column: the shortest interval between sorted draws that holds
    ``floor(prob * S) + 1`` of the S draws (axis 0; the convention of Chen & Shao 1999, as ArviZ).
    Returns (..., 2): lower, upper.

    :param draws: (S, ...) draws.
    :param prob: the probability mass, in (0, 1).
    """
    a = np.sort(np.asarray(draws, float), axis=0)
    S = a.shape[0]
    m = max(1, min(S, int(np.floor(prob * S)) + 1))
    widths = a[m - 1:] - a[:S - m + 1]
    i = np.argmin(widths, axis=0)
    lo = np.take_along_axis(a, i[None], axis=0)[0]
    hi = np.take_along_axis(a, (i + m - 1)[None], axis=0)[0]
    return np.stack([lo, hi], axis=-1)


def posterior_draws(idata: Any, model: Any) -> tuple[dict[str, np.ndarray], int, int]:
    """The posterior's parameter draws completed to the model's full sites (reference rows and
    constants added by :meth:`bayesmoe.MoE.complete_params`), flattened to ``(S, ...)``.

    :param idata: a ``DataTree`` with a ``posterior`` group and ``constant_data.x``.
    :param model: the :class:`~bayesmoe.MoE`.
    :returns: ``(draws, n_chain, n_draw)``.
    """
    post = idata["posterior"].to_dataset()
    n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
    d = int(idata["constant_data"]["x"].shape[-1]) if "constant_data" in idata.children else None
    out = {}
    for name, da in post.data_vars.items():
        if all(s in da.dims for s in _SAMPLE_DIMS):
            v = np.asarray(da.transpose(*_SAMPLE_DIMS, ...).values)
            out[str(name)] = v.reshape((-1,) + v.shape[2:])
    full = model.complete_params(out, d)
    names = model.prior_names()
    return {k: np.asarray(v) for k, v in full.items() if k in names}, n_chain, n_draw


@partial(jax.jit, static_argnums=0)
def _draw_batch(model, params: dict, keys, x):
    def one(p, k):
        pred = model.predict(p, x)
        y = model.distribution(p, x).sample(jax.random.wrap_key_data(k))
        return y, pred.gate_probs, pred.mean, pred.class_probs

    return jax.vmap(one)(params, keys)


def posterior_predictive(idata: Any, x_new: Any, *, y_new: Any = None, model: Any = None,
                         seed: int | jax.Array = 0, hdi_prob: float = 0.94):
    r"""Posterior predictive draws and summaries at new inputs (see the module docstring).

    :param idata: the posterior ``DataTree`` of :func:`bayesmoe.sample` (or :func:`bayesmoe.to_datatree`),
        possibly read back from a file.
    :param x_new: new inputs (n, d) (array or DataFrame; a 1-D array is one feature).
    :param y_new: optional held-out responses (n,), stored as ``observed_data.y``.
    :param model: the :class:`~bayesmoe.MoE` (default: rebuilt from the tree's ``bayesmoe_model``).
    :param seed: an int or a ``jax.random`` key: the draws of y. Same seed, same draws.
    :param hdi_prob: mass of the highest-density intervals, in (0, 1).
    :returns: a ``DataTree`` with groups ``posterior_predictive``, ``predictions``, ``constant_data``,
        ``predictions_summary`` and (with ``y_new``) ``observed_data``.
    """
    import xarray as xr  # noqa: PLC0415

    from bayesmoe.inference.io import model_from_datatree  # noqa: PLC0415

    if not isinstance(idata, xr.DataTree) or "posterior" not in idata.children:
        raise ValueError("`idata` must be a DataTree with a `posterior` group (from bayesmoe.sample), got "
                         f"{type(idata).__name__}")
    if isinstance(hdi_prob, bool) or not isinstance(hdi_prob, (int, float)) or not 0 < hdi_prob < 1:
        raise ValueError(f"`hdi_prob` must be in (0, 1), got {hdi_prob!r}")
    key = as_key(seed, "seed")
    model = model_from_datatree(idata) if model is None else model
    xa, ya = model.check_data(x_new, y_new)
    names = column_names(x_new)
    if "constant_data" in idata.children and "x" in idata["constant_data"].data_vars:
        cx = idata["constant_data"]["x"]
        d_fit = int(cx.shape[-1])
        if xa.shape[1] != d_fit:
            raise ValueError(f"`x_new` has {xa.shape[1]} column(s) but the model was fitted on {d_fit}")
        fit_names = [str(v) for v in cx.coords["feature"].values] if "feature" in cx.coords else None
        if names is not None and fit_names is not None and names != fit_names:
            raise ValueError(f"`x_new` has columns {names} but the model was fitted on {fit_names}")
        names = fit_names or names
    draws, n_chain, n_draw = posterior_draws(idata, model)
    S = n_chain * n_draw
    n = xa.shape[0]
    keys = np.asarray(jax.random.key_data(jax.random.split(key, S)))
    x_j = jnp.asarray(xa, jnp.result_type(float))
    batch = {**draws, _KEYS: keys}

    def run(b):
        b = dict(b)
        k = b.pop(_KEYS)
        return _draw_batch(model, b, k, x_j)

    y, g, mean, cp = map_draws(run, batch, chunk_size(n * model.n_experts * 4))
    shape = (n_chain, n_draw)
    pp = {"y": (("chain", "draw", "obs"), np.asarray(y).reshape(shape + (n,)))}
    per_draw = {"gate_probs": (("chain", "draw", "obs", "expert"), np.asarray(g).reshape(shape + (n, -1)))}
    coords = {"chain": np.arange(n_chain), "draw": np.arange(n_draw), "obs": np.arange(n),
              "expert": np.arange(model.n_experts)}
    flat_y = np.asarray(y).reshape(S, n)
    summ = {"y_mean": (("obs",), flat_y.mean(0)),
            "y_hdi": (("obs", "ci_bound"), hdi(flat_y, float(hdi_prob)))}
    if mean is not None:
        per_draw["mean"] = (("chain", "draw", "obs"), np.asarray(mean).reshape(shape + (n,)))
        summ["mean_mean"] = (("obs",), np.asarray(mean).reshape(S, n).mean(0))
        summ["mean_hdi"] = (("obs", "ci_bound"), hdi(np.asarray(mean).reshape(S, n), float(hdi_prob)))
    if cp is not None:
        C = np.asarray(cp).shape[-1]
        per_draw["class_probs"] = (("chain", "draw", "obs", "class"), np.asarray(cp).reshape(shape + (n, C)))
        summ["class_probs_mean"] = (("obs", "class"), np.asarray(cp).reshape(S, n, C).mean(0))
    feat = names if names else [f"x{j}" for j in range(xa.shape[1])]
    groups = {
        "posterior_predictive": xr.Dataset(pp, coords={k: coords[k] for k in ("chain", "draw", "obs")}),
        "predictions": xr.Dataset(per_draw, coords=coords),
        "constant_data": xr.Dataset({"x": (("obs", "feature"), xa)},
                                    coords={"obs": np.arange(n), "feature": feat}),
        "predictions_summary": xr.Dataset(summ, coords={"obs": np.arange(n), "ci_bound": ["lower", "upper"]},
                                          attrs={"hdi_prob": float(hdi_prob)}),
    }
    if cp is not None:
        cls = model.coords(feat).get("class")
        if cls is not None:
            for g_ in ("predictions", "predictions_summary"):
                groups[g_] = groups[g_].assign_coords({"class": np.asarray(cls)})
    if ya is not None:
        groups["observed_data"] = xr.Dataset({"y": (("obs",), ya)}, coords={"obs": np.arange(n)})
    out = xr.DataTree.from_dict(groups)
    out.attrs = {k: v for k, v in idata.attrs.items() if k == "bayesmoe_model"}
    return out


#: the same function: ``bm.predict(idata, x_new, seed=...)``
predict = posterior_predictive
