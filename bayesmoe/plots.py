r"""Matplotlib plots of a fitted mixture of experts: the fit and the gates, with posterior bands.

* :func:`plot_fit` -- the data and what the model predicts: for Gaussian experts (1-D x) each expert's
  mean curve and the mixture mean :math:`\sum_k g_k(x) \mu_k(x)`; for Categorical experts (1-D x) the
  mixture's class probabilities :math:`p(y = c | x)`. With 2-D x: a map of the mixture mean
  (Gaussian experts) or of the most probable class (Categorical experts).
* :func:`plot_gates` -- the gate probabilities :math:`g_k(x)` against a 1-D x, or for 2-D x the regions
  where each expert has the largest gate probability.
* :func:`posterior_params` -- posterior draws of a ``DataTree`` as a dict of stacked arrays, the input
  of ``jax.vmap(lambda p: model.predict(p, x))``.

Curves come from a point estimate ``params`` (e.g. ``bm.fit_map(...).params``) and/or posterior draws
``idata`` (from :func:`bayesmoe.sample`). With ``idata`` the shaded bands are pointwise equal-tailed
intervals (ETI, probability ``band``) over up to ``n_draws`` posterior draws; the curves are drawn at
``params`` when given, else at the pointwise posterior median. Per-expert bands assume consistent expert
labels across draws: relabel the posterior first (:func:`bayesmoe.relabel`) if chains switched labels.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bayesmoe._draws import chunk_size, map_draws
from bayesmoe._random import as_rng
from bayesmoe._validation import check_positive_int
from bayesmoe.formula import resolve_data
from bayesmoe.model import MoE, Prediction

__all__ = ["plot_fit", "plot_gates", "posterior_params"]

_SAMPLE_DIMS = ("chain", "draw")
# floats per prediction chunk (draws x grid points x experts x classes)
_CHUNK_FLOATS = 4_000_000


# ----------------------------------------------------------------------------- posterior draws
def _posterior_dataset(idata):
    """The posterior group of a DataTree (or a Dataset passed directly) as an xarray Dataset."""
    import xarray as xr  # noqa: PLC0415

    if isinstance(idata, xr.Dataset):
        return idata
    try:
        node = idata["posterior"]
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError("`idata` must be a DataTree with a 'posterior' group (bm.sample's result) "
                         f"or a posterior xarray Dataset, got {type(idata).__name__}") from err
    return node.to_dataset() if hasattr(node, "to_dataset") else node


def posterior_params(idata, n_draws: int | None = None, seed=0) -> dict[str, np.ndarray]:
    """Posterior draws as ``{site name: array (S, *site shape)}``, chains and draws flattened.

    :param idata: a ``DataTree`` with a ``posterior`` group whose variables have dims ``chain`` and
        ``draw`` first (as :func:`bayesmoe.sample` returns), or that posterior ``Dataset`` itself.
    :param n_draws: keep this many draws, chosen at random without replacement (in their original
        order); ``None`` (default) or more than available keeps all ``S = chains * draws``.
    :param seed: an int or a ``jax.random`` key: seed of that random choice.
    :returns: numpy arrays whose leading axis indexes draws (chain-major), ready for
        ``jax.vmap(lambda p: model.predict(p, x))(params)``.
    """
    ds = _posterior_dataset(idata)
    missing = [d for d in _SAMPLE_DIMS if d not in ds.dims]
    if missing:
        raise ValueError(f"`idata` posterior lacks the sample dim(s) {missing}")
    if n_draws is not None:
        n_draws = check_positive_int(n_draws, "n_draws")
    n_total = int(ds.sizes["chain"] * ds.sizes["draw"])
    idx = None
    if n_draws is not None and n_draws < n_total:
        idx = np.sort(as_rng(seed).choice(n_total, n_draws, replace=False))
    out = {}
    for name, var in ds.data_vars.items():
        if not all(d in var.dims for d in _SAMPLE_DIMS):
            continue
        rest = [d for d in var.dims if d not in _SAMPLE_DIMS]
        arr = np.asarray(var.transpose(*_SAMPLE_DIMS, *rest).values)
        arr = arr.reshape((n_total, *arr.shape[2:]))
        out[str(name)] = arr[idx] if idx is not None else arr
    if not out:
        raise ValueError("`idata` posterior has no variable with dims ('chain', 'draw')")
    return out


@partial(jax.jit, static_argnums=0)
def _predict_batch(model: MoE, draws: dict, grid) -> Prediction:
    return jax.vmap(lambda p: model.predict(p, grid))(draws)


def _predict_draws(model: MoE, draws: dict, grid: np.ndarray) -> Prediction:
    """``model.predict`` at every draw (vmap, in chunks of draws): fields with a leading draw axis."""
    draws = model.complete_params(draws, grid.shape[1])  # posteriors store free sites only
    draws = model.check_params(draws, grid.shape[1], batch_ndim=1, name="idata.posterior")
    one = model.predict({k: v[0] for k, v in draws.items()}, grid[:1])
    width = grid.shape[0] * sum(int(np.size(f)) for f in one if f is not None)
    grid = jnp.asarray(grid, jnp.result_type(float))
    return map_draws(lambda p: _predict_batch(model, p, grid), draws, chunk_size(width, _CHUNK_FLOATS))


def _band_quantiles(a: np.ndarray, band: float) -> tuple[np.ndarray, np.ndarray]:
    return tuple(np.quantile(a, [(1 - band) / 2, (1 + band) / 2], axis=0))


# ----------------------------------------------------------------------------- argument checks
def _check_common(model, params, idata, band, n_grid, n_draws):
    if not isinstance(model, MoE):
        raise ValueError(f"`model` must be a bayesmoe.MoE, got {model!r}")
    if params is None and idata is None:
        raise ValueError("either `params` (a point estimate, e.g. bm.fit_map(...).params) or `idata` "
                         "(posterior draws from bm.sample) is required, got neither")
    if params is not None and not isinstance(params, dict):
        raise ValueError(f"`params` must be a dict keyed by site name, got {type(params).__name__}")
    if isinstance(band, bool) or not isinstance(band, (int, float)) or not 0 < band < 1:
        raise ValueError(f"`band` must be a probability in (0, 1), got {band!r}")
    check_positive_int(n_grid, "n_grid", minimum=2)
    if n_draws is not None:
        check_positive_int(n_draws, "n_draws")


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt  # noqa: PLC0415

        _, ax = plt.subplots(figsize=(7, 4.5))
    return ax


def _colors(n: int, offset: int = 0) -> np.ndarray:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt.get_cmap("tab10")((np.arange(n) + offset) % 10)


def _grid_1d(x: np.ndarray, n_grid: int) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    pad = 0.02 * (hi - lo) if hi > lo else 0.5
    return np.linspace(lo - pad, hi + pad, n_grid)[:, None]


def _grid_2d(x: np.ndarray, n_grid: int):
    """Pixel centres of an n_grid x n_grid grid over the data's box (5% margin) and imshow's extent."""
    axes, extent = [], []
    for j in range(2):
        lo, hi = float(x[:, j].min()), float(x[:, j].max())
        pad = 0.05 * (hi - lo) if hi > lo else 0.5
        g = np.linspace(lo - pad, hi + pad, n_grid)
        half = 0.5 * (g[1] - g[0])
        axes.append(g)
        extent += [g[0] - half, g[-1] + half]
    g0, g1 = np.meshgrid(axes[0], axes[1])  # rows: second feature, columns: first feature
    return np.column_stack([g0.ravel(), g1.ravel()]), tuple(extent)


def _curves(model: MoE, grid: np.ndarray, params, idata, n_draws, seed, band):
    """(point prediction, lower, upper): the point is at ``params`` or the posterior median."""
    lo = hi = None
    point = model.predict(params, grid) if params is not None else None
    if idata is not None:
        draws = _predict_draws(model, posterior_params(idata, n_draws, seed), grid)
        q = [None if f is None else _band_quantiles(f, band) for f in draws]
        lo = Prediction(*[None if v is None else v[0] for v in q])
        hi = Prediction(*[None if v is None else v[1] for v in q])
        if point is None:
            point = Prediction(*[None if f is None else np.median(f, axis=0) for f in draws])
    point = Prediction(*[None if f is None else np.asarray(f) for f in point])
    return point, lo, hi


def _source(params, idata, band) -> str:
    pct = f"{100 * band:g}%"
    if params is not None and idata is not None:
        return f"curves at the point estimate, {pct} posterior bands"
    if params is not None:
        return "point estimate"
    return f"posterior median, {pct} bands"


# ----------------------------------------------------------------------------- plot_fit
def _curve_with_band(ax, gx, point, lo, hi, field: str, j: int, color, label: str, gid: str,
                     band_gid: str, lw: float = 2.0) -> None:
    """Line of ``point.<field>[:, j]`` and, when posterior quantiles exist, its shaded band."""
    if lo is not None:
        ax.fill_between(gx, getattr(lo, field)[:, j], getattr(hi, field)[:, j], color=color,
                        alpha=0.25, lw=0, gid=band_gid)
    ax.plot(gx, getattr(point, field)[:, j], color=color, lw=lw, label=label, gid=gid)


def plot_fit(model: MoE, x: Any = None, y: Any = None, *, data: Any = None, params: dict | None = None,
             idata=None, ax=None, n_grid: int = 200, band: float = 0.89, n_draws: int | None = 200,
             seed=0):
    r"""Plot the data and the fitted model; returns the matplotlib ``Axes``.

    Gaussian experts, 1-D x: the data (grey points); each expert's mean :math:`\mu_k(x)` (coloured
    line, label ``expert k``, ``gid="expert_mean_k"``); the mixture mean
    :math:`\sum_k g_k(x)\mu_k(x)` (black dashed, ``gid="mixture_mean"``). With ``idata``, shaded
    pointwise ETI bands of probability ``band`` around each (``gid="expert_band_k"``,
    ``"mixture_band"``). The y-limits follow the data (expert lines may leave the frame where their gate
    weight is negligible).

    Categorical experts, 1-D x: the mixture's class probabilities :math:`p(y=c|x)` (line per class,
    ``gid="class_prob_c"``; bands ``"class_band_c"``) and the data as jittered rugs below 0, one lane
    per class, in the class colour.

    2-D x: an image of the mixture mean (Gaussian experts, with a colour bar) or of the most probable
    class (Categorical experts), with the data on top (coloured by y).

    :param model: the :class:`bayesmoe.MoE`.
    :param x: inputs (n,) or (n, d) with d = 1 or 2; ``y``: responses / labels (n,). Axes are
        labelled with the column names of a DataFrame ``x`` and the name of a Series ``y`` (or the
        formula's design columns and response).
    :param data: for formula models, a DataFrame in place of ``x`` and ``y``.
    :param params: a point estimate (site-name dict, e.g. ``bm.fit_map(...).params``).
    :param idata: posterior draws (``bm.sample``'s ``DataTree``) for the bands. At least one of
        ``params`` and ``idata`` is required; the curves are at ``params`` if given, else the
        pointwise posterior median.
    :param ax: matplotlib Axes to draw in (a new figure otherwise).
    :param n_grid: grid points along each input axis.
    :param band: probability of the equal-tailed bands.
    :param n_draws: at most this many posterior draws are used (random subset, ``seed``).
    """
    _check_common(model, params, idata, band, n_grid, n_draws)
    if model.expert.y_shape():
        raise NotImplementedError(f"plot_fit draws scalar responses; {model.expert!r} has vector "
                                  "responses (plot each column of bm.MoE.predict(...).mean instead)")
    x, y = resolve_data(model, x, y, data)
    xnames, yname = _names(model, x, y)
    x, y = model.check_data(x, y)
    if y is None:
        raise ValueError("`y` is required, got None")
    d = x.shape[1]
    if d > 2:
        raise ValueError(f"`x` must have 1 or 2 features to plot, got {d}")
    ax = _axes(ax)
    if d == 2:
        return _plot_fit_2d(model, x, y, params, idata, ax, n_grid, band, n_draws, seed, xnames, yname)
    grid = _grid_1d(x, n_grid)
    gx = grid[:, 0]
    point, lo, hi = _curves(model, grid, params, idata, n_draws, seed, band)
    if point.class_probs is not None:
        C = point.class_probs.shape[1]
        colors = _colors(C, offset=model.n_experts)
        jitter = as_rng(seed).uniform(-0.012, 0.012, size=y.shape[0])
        labels = model.classes or list(range(C))
        for c in range(C):
            _curve_with_band(ax, gx, point, lo, hi, "class_probs", c, colors[c],
                             f"p({yname} = {labels[c]} | {xnames[0]})",
                             f"class_prob_{c}", f"class_band_{c}")
            sel = y == c
            ax.scatter(x[sel, 0], -0.05 - 0.05 * c + jitter[sel], s=6, marker="|", color=colors[c],
                       alpha=0.7, gid=f"data_class_{c}")
        ax.axhline(0.0, color="0.6", lw=0.6)
        ax.set_ylim(-0.05 - 0.05 * C - 0.02, 1.03)
        ax.set_ylabel("class probability (data: rugs below 0)")
    else:
        colors = _colors(model.n_experts)
        ax.scatter(x[:, 0], y, s=7, color="0.55", alpha=0.5, lw=0, label="data", gid="data")
        for k in range(model.n_experts):
            _curve_with_band(ax, gx, point, lo, hi, "expert_mean", k, colors[k], f"expert {k}",
                             f"expert_mean_{k}", f"expert_band_{k}", lw=1.8)
        if lo is not None:
            ax.fill_between(gx, lo.mean, hi.mean, color="k", alpha=0.2, lw=0, gid="mixture_band")
        ax.plot(gx, point.mean, "k--", lw=1.8, label="mixture mean", gid="mixture_mean")
        span = float(y.max() - y.min()) or 1.0
        ax.set_ylim(min(y.min(), point.mean.min()) - 0.08 * span,
                    max(y.max(), point.mean.max()) + 0.08 * span)
        ax.set_ylabel(yname)
    ax.set_xlim(gx[0], gx[-1])
    ax.set_xlabel(xnames[0])
    ax.legend(loc="best", fontsize=8, framealpha=0.8)
    ax.set_title(f"{_model_name(model)}\nfit ({_source(params, idata, band)})", fontsize=10)
    return ax


def _model_name(model: MoE) -> str:
    return f"{model.gate.label}, {model.n_experts} {model.expert.label}"


def _names(model: MoE, x: Any, y: Any = None) -> tuple[list[str], str]:
    """Axis names: the inputs' (design or DataFrame columns, else x0, x1) and the response's."""
    xnames = model.input_names(x) or [f"x{j}" for j in range(2)]
    if len(xnames) == 1 and model.input_names(x) is None:
        xnames = ["x"]
    yname = model.response_name or (str(y.name) if getattr(y, "name", None) is not None else "y")
    return xnames, yname


def _plot_fit_2d(model, x, y, params, idata, ax, n_grid, band, n_draws, seed, xnames, yname):
    grid, extent = _grid_2d(x, n_grid)
    point, _, _ = _curves(model, grid, params, idata, n_draws, seed, band)
    if point.class_probs is not None:
        from matplotlib.colors import ListedColormap  # noqa: PLC0415

        C = point.class_probs.shape[1]
        colors = _colors(C, offset=model.n_experts)
        img = np.argmax(point.class_probs, axis=1).reshape(n_grid, n_grid)
        ax.imshow(img, origin="lower", extent=extent, aspect="auto", cmap=ListedColormap(colors),
                  vmin=-0.5, vmax=C - 0.5, alpha=0.35, interpolation="nearest", gid="class_regions")
        labels = model.classes or list(range(C))
        for c in range(C):
            sel = y == c
            ax.scatter(x[sel, 0], x[sel, 1], s=9, color=colors[c], edgecolor="k", lw=0.3,
                       label=f"{yname} = {labels[c]}")
        ax.legend(loc="best", fontsize=8, framealpha=0.8)
        what = "most probable class"
    else:
        img = point.mean.reshape(n_grid, n_grid)
        im = ax.imshow(img, origin="lower", extent=extent, aspect="auto", cmap="viridis",
                       interpolation="nearest", gid="mixture_mean")
        ax.scatter(x[:, 0], x[:, 1], c=y, cmap="viridis", norm=im.norm, s=9, edgecolor="w", lw=0.4)
        ax.figure.colorbar(im, ax=ax, label=f"mixture mean of {yname}")
        what = "mixture mean"
    ax.set_xlabel(xnames[0])
    ax.set_ylabel(xnames[1])
    src = "point estimate" if params is not None else "posterior median"
    ax.set_title(f"{_model_name(model)}\n{what} ({src})", fontsize=10)
    return ax


# ----------------------------------------------------------------------------- plot_gates
def plot_gates(model: MoE, x: Any = None, *, data: Any = None, params: dict | None = None, idata=None,
               ax=None, band: float = 0.89, n_grid: int = 200, n_draws: int | None = 200, seed=0,
               show_data: bool = True):
    r"""Plot the gate probabilities :math:`g_k(x)`; returns the matplotlib ``Axes``.

    1-D x: one line per expert (``gid="gate_k"``), at ``params`` or the pointwise posterior median,
    with shaded ETI bands of probability ``band`` from ``idata`` (``gid="gate_band_k"``) and the data's
    x as a rug at the bottom.

    2-D x: the regions where each expert has the largest gate probability, as an image
    (``gid="gate_regions"``; pixel centres on an ``n_grid`` x ``n_grid`` grid over the data's box, value
    ``argmax_k g_k``, of the point estimate or, with ``idata`` only, of the posterior mean of
    :math:`g_k`), dotted contours where the winning gate probability is 0.9, and the data points.

    Arguments as in :func:`plot_fit`; ``x`` with more than 2 features raises ``ValueError``.

    :param model: the :class:`bayesmoe.MoE`.
    :param x: inputs (n,) or (n, d) with d = 1 or 2 (a DataFrame for formula models).
    :param data: for formula models, a DataFrame in place of ``x``.
    :param params: a point estimate (site-name dict, e.g. ``bm.fit_map(...).params``).
    :param idata: posterior draws (``bm.sample``'s ``DataTree``) for the bands.
    :param ax: matplotlib Axes to draw in (a new figure otherwise).
    :param band: probability of the equal-tailed bands.
    :param n_grid: grid points along each input axis.
    :param n_draws: at most this many posterior draws are used (random subset, ``seed``; None: all).
    :param seed: an int or a ``jax.random`` key choosing the subset of draws.
    :param show_data: draw the data's x (a rug in 1-D, points in 2-D).
    """
    _check_common(model, params, idata, band, n_grid, n_draws)
    x, _ = resolve_data(model, x, None, data, need_y=False)
    xnames, _ = _names(model, x)
    x, _ = model.check_data(x)
    d = x.shape[1]
    if d > 2:
        raise ValueError(f"`x` must have 1 or 2 features to plot the gates, got {d}")
    ax = _axes(ax)
    K = model.n_experts
    colors = _colors(K)
    if d == 1:
        grid = _grid_1d(x, n_grid)
        gx = grid[:, 0]
        point, lo, hi = _curves(model, grid, params, idata, n_draws, seed, band)
        for k in range(K):
            _curve_with_band(ax, gx, point, lo, hi, "gate_probs", k, colors[k], f"g_{k}(x)",
                             f"gate_{k}", f"gate_band_{k}")
        if show_data:
            ax.plot(x[:, 0], np.full(x.shape[0], -0.03), "|", color="0.3", ms=6, alpha=0.5,
                    gid="data")
        ax.set_ylim(-0.06, 1.04)
        ax.set_xlim(gx[0], gx[-1])
        ax.set_xlabel(xnames[0])
        ax.set_ylabel("gate probability")
        ax.legend(loc="best", fontsize=8, framealpha=0.8)
        ax.set_title(f"{_model_name(model)}\ngates ({_source(params, idata, band)})", fontsize=10)
        return ax

    from matplotlib.colors import ListedColormap  # noqa: PLC0415
    from matplotlib.patches import Patch  # noqa: PLC0415

    grid, extent = _grid_2d(x, n_grid)
    if params is not None:
        g = np.asarray(model.predict(params, grid).gate_probs)
        src = "point estimate"
    else:
        g = _predict_draws(model, posterior_params(idata, n_draws, seed), grid).gate_probs.mean(0)
        src = "posterior mean of g"
    img = np.argmax(g, axis=1).reshape(n_grid, n_grid)
    ax.imshow(img, origin="lower", extent=extent, aspect="auto", cmap=ListedColormap(colors),
              vmin=-0.5, vmax=K - 0.5, alpha=0.45, interpolation="nearest", gid="gate_regions")
    g0 = grid[:, 0].reshape(n_grid, n_grid)
    g1 = grid[:, 1].reshape(n_grid, n_grid)
    ax.contour(g0, g1, g.max(axis=1).reshape(n_grid, n_grid), levels=[0.9], colors="k",
               linewidths=0.8, linestyles=":")
    if show_data:
        ax.scatter(x[:, 0], x[:, 1], s=6, color="k", alpha=0.6, lw=0, gid="data")
    handles = [Patch(color=colors[k], alpha=0.6, label=f"expert {k} most probable") for k in range(K)]
    ax.legend(handles=handles, loc="best", fontsize=8, framealpha=0.8)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_xlabel(xnames[0])
    ax.set_ylabel(xnames[1])
    ax.set_title(f"{_model_name(model)}\nargmax gate ({src}; dotted: max g = 0.9)", fontsize=10)
    return ax
