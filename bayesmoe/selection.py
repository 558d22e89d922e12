r"""Choosing the number of experts: information criteria, slope heuristics, PSIS-LOO.

* AIC, BIC and ICL come from the :class:`~bayesmoe.FitResult` of each fit (defined once there):
  :math:`\mathrm{AIC} = -2\ell + 2D`, :math:`\mathrm{BIC} = -2\ell + D\log n`,
  :math:`\mathrm{ICL} = \mathrm{BIC} - 2\sum_{ik} t_{ik}\log t_{ik}` (smaller is better).
* ``"djump"`` / ``"ddse"``: the penalised contrast :math:`-\ell_K/n + \mathrm{scoef}\,\hat\kappa\,D_K`
  with :math:`\hat\kappa` calibrated by the slope heuristic (:func:`slope_heuristic`; the GLoME and
  BLoMPE model-selection papers, Nguyen et al. 2021, calibrate their penalty this way).
* ``"loo"``: NUTS per K (:func:`bayesmoe.sample`) and ``arviz.compare`` (PSIS-LOO, higher ELPD better).

:func:`select_n_experts` fits every K and returns a :class:`Selection`; :func:`select` does the
choosing alone from fits already made; :func:`select_models` chooses among any labelled collection
of fits (e.g. the joint grid of K, degree and block structure, by the slope heuristic);
:func:`plot_selection` draws the criteria against K and the slope-heuristic diagnostics.
:func:`detect_blocks` finds block-diagonal covariance structures of x (connected components of the
thresholded absolute correlation graph) for ``Gaussian(covariance="block")``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bayesmoe._blocks import block_dims, check_blocks, detect_blocks
from bayesmoe._slope import SlopeHeuristic, ddse, djump, slope_heuristic
from bayesmoe._validation import check_bool

__all__ = ["CRITERIA", "Selection", "SlopeHeuristic", "block_dims", "check_blocks", "ddse",
           "detect_blocks", "djump", "plot_selection", "select", "select_models", "select_n_experts",
           "slope_heuristic"]

#: criteria read from a point fit (smaller is better)
INFO_CRITERIA = ("bic", "icl", "aic")
SLOPE_CRITERIA = ("djump", "ddse")
CRITERIA = INFO_CRITERIA + SLOPE_CRITERIA + ("loo",)


@dataclass(frozen=True)
class Selection:
    """The result of :func:`select_n_experts` / :func:`select`.

    :ivar best: the chosen number of experts.
    :ivar criterion: the criterion that chose it.
    :ivar fits: ``{K: FitResult}`` (point fits of every K).
    :ivar table: an ``xarray.Dataset`` over the dim ``n_experts``: ``log_likelihood``, ``n_params``,
        ``contrast`` (``-log_likelihood / n``), ``aic``, ``bic``, ``icl``, and, when computed,
        ``slope_criterion`` (Djump/DDSE) or ``elpd_loo``, ``se``, ``p_loo``, ``elpd_diff``, ``weight``
        (LOO). ``table.to_pandas()`` gives a pandas DataFrame.
    :ivar slope: the :class:`SlopeHeuristic` (Djump/DDSE), else None.
    :ivar compare: the ``arviz.compare`` DataFrame (LOO; rows named by K), else None.
    :ivar posteriors: ``{K: DataTree}`` (LOO), else None.
    """

    best: int
    criterion: str
    fits: dict
    table: Any
    slope: SlopeHeuristic | None = None
    compare: Any = None
    posteriors: dict | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return (f"Selection(best={self.best}, criterion={self.criterion!r}, "
                f"n_experts={sorted(self.fits) or sorted(self.posteriors or {})})")


# ----------------------------------------------------------------------------- validation
def _check_k_range(k_range: Any) -> list[int]:
    if isinstance(k_range, (str, bytes)) or not isinstance(k_range, Iterable):
        raise ValueError(f"`k_range` must be an iterable of positive integers (e.g. range(1, 6)), "
                         f"got {k_range!r}")
    ks = list(k_range)
    if not ks:
        raise ValueError("`k_range` is empty: give at least one number of experts, e.g. range(1, 6)")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ValueError(f"`k_range` must hold integers, got {k!r} ({type(k).__name__})")
        if k < 1:
            raise ValueError(f"`k_range` must hold integers >= 1, got {k}")
    if len(set(ks)) != len(ks):
        raise ValueError(f"`k_range` has repeated values: {ks}")
    return sorted(int(k) for k in ks)


def _check_criterion(criterion: Any) -> str:
    if not isinstance(criterion, str) or criterion.lower() not in CRITERIA:
        raise ValueError(f"`criterion` must be one of {CRITERIA}, got {criterion!r}")
    return criterion.lower()


def _is_datatree(obj: Any) -> bool:
    import xarray as xr  # noqa: PLC0415

    return isinstance(obj, xr.DataTree)


# ----------------------------------------------------------------------------- selection from fits
def _info_table(fits: Mapping[Any, Any], dim: str = "n_experts", keys: list | None = None):
    import xarray as xr  # noqa: PLC0415

    ks = sorted(fits) if keys is None else keys
    ll = np.array([fits[k].log_likelihood for k in ks], float)
    n = np.array([fits[k].n_obs for k in ks], float)
    data = {"log_likelihood": ll,
            "n_params": np.array([fits[k].n_params for k in ks], int),
            "contrast": -ll / n,
            "aic": np.array([fits[k].aic for k in ks], float),
            "bic": np.array([fits[k].bic for k in ks], float),
            "icl": np.array([fits[k].icl for k in ks], float)}
    ds = xr.Dataset({k: (dim, v) for k, v in data.items()}, coords={dim: ks})
    ds["contrast"].attrs["description"] = "-log_likelihood / n (the slope heuristic's contrast)"
    return ds


def _loo_table(posteriors: Mapping[int, Any], ks: list[int]):
    import arviz as az  # noqa: PLC0415

    cmp = az.compare({str(k): posteriors[k] for k in ks}, round_to="none")
    return cmp


def select(fits: Mapping[int, Any], criterion: str = "bic", *, posteriors: Mapping[int, Any] | None = None,
           **slope_kwargs) -> Selection:
    """Choose the number of experts from fits already made.

    :param fits: ``{K: FitResult}`` for every candidate K (point fits, e.g. from :func:`bayesmoe.fit_mle`).
    :param criterion: ``"bic"``, ``"icl"``, ``"aic"`` (smallest wins), ``"djump"``, ``"ddse"`` (slope
        heuristic on ``-log_likelihood / n`` against ``n_params``) or ``"loo"`` (needs ``posteriors``).
    :param posteriors: ``{K: DataTree}`` from :func:`bayesmoe.sample` (with the ``log_likelihood``
        group), required by ``"loo"``.
    :param slope_kwargs: passed to :func:`slope_heuristic` (``scoef``, ``pct``, ``min_points``, ``robust``).
    :returns: a :class:`Selection`.
    """
    criterion = _check_criterion(criterion)
    if not isinstance(fits, Mapping):
        raise ValueError(f"`fits` must be a dict {{K: FitResult}}, got {type(fits).__name__}")
    if criterion == "loo":
        if posteriors is None:
            bad = [k for k, v in fits.items() if not _is_datatree(v)]
            raise ValueError("criterion 'loo' needs posterior draws: pass `posteriors={K: DataTree}` "
                             "from bm.sample; `fits` holds point estimates (MAP/MLE FitResult) "
                             f"for K = {bad}")
        if not isinstance(posteriors, Mapping) or not posteriors:
            raise ValueError("`posteriors` must be a non-empty dict {K: DataTree}")
        for k, v in posteriors.items():
            if not _is_datatree(v):
                raise ValueError(f"`posteriors[{k}]` must be a DataTree with posterior draws (from "
                                 f"bm.sample), got {type(v).__name__}: criterion 'loo' needs a posterior")
            if "log_likelihood" not in v.children:
                raise ValueError(f"`posteriors[{k}]` has no log_likelihood group (needed by 'loo')")
    ks = _check_k_range(list(fits) if fits else list(posteriors or []))
    for k in fits:
        if _is_datatree(fits[k]) or not hasattr(fits[k], "log_likelihood"):
            raise ValueError(f"`fits[{k}]` must be a FitResult (bm.fit_mle / bm.fit_map), got "
                             f"{type(fits[k]).__name__}")
    table = _info_table(fits) if fits else None
    slope, cmp = None, None
    if criterion in INFO_CRITERIA:
        values = table[criterion].values
        if not np.any(np.isfinite(values)):
            raise ValueError(f"criterion {criterion!r} is not finite for any K (e.g. ICL of a model "
                             "without responsibilities)")
        best = ks[int(np.nanargmin(np.where(np.isfinite(values), values, np.nan)))]
    elif criterion in SLOPE_CRITERIA:
        slope = slope_heuristic(table["contrast"].values, table["n_params"].values, method=criterion,
                                **slope_kwargs)
        table["slope_criterion"] = ("n_experts", slope.criterion)
        table["slope_criterion"].attrs["description"] = (f"contrast + {slope.constant:.6g} n_params "
                                                         f"({criterion})")
        best = ks[slope.selected]
    else:
        cmp = _loo_table(posteriors, sorted(posteriors))
        import xarray as xr  # noqa: PLC0415

        lks = sorted(posteriors)
        cols = {c: ("n_experts", np.array([cmp.loc[str(k), c] for k in lks], float))
                for c in ("elpd", "se", "p", "elpd_diff", "weight") if c in cmp.columns}
        loo = xr.Dataset(cols, coords={"n_experts": lks}).rename(
            {k: f"{k}_loo" for k in ("elpd", "p") if k in cols})
        table = loo if table is None else xr.merge([table, loo], join="outer")
        best = int(cmp.index[0])
    return Selection(best=int(best), criterion=criterion, fits=dict(fits), table=table, slope=slope,
                     compare=cmp, posteriors=dict(posteriors) if posteriors is not None else None)


def select_models(fits: Mapping[Any, Any], criterion: str = "bic", **slope_kwargs) -> Selection:
    """Choose among any collection of point fits (e.g. the joint grid of K, expert degree and gate
    block structure of BLoMPE), by an information criterion or the slope heuristic.

    :param fits: ``{label: FitResult}``, the labels any hashable values (strings, tuples such as
        ``(K, degree, blocks)``); all fits on the same data.
    :param criterion: ``"bic"``, ``"icl"``, ``"aic"``, ``"djump"`` or ``"ddse"`` (the slope heuristic
        on ``-log_likelihood / n`` against ``n_params``; models of equal dimension keep the best).
    :param slope_kwargs: passed to :func:`slope_heuristic`.
    :returns: a :class:`Selection` whose ``best`` is the chosen label and whose ``table`` has the dim
        ``model`` (coords: the labels as strings, in the order given).
    """
    criterion = _check_criterion(criterion)
    if criterion == "loo":
        raise ValueError("`criterion`: 'loo' needs posterior draws; use select(fits, 'loo', "
                         "posteriors=...) or select_n_experts(..., criterion='loo')")
    if not isinstance(fits, Mapping) or not fits:
        raise ValueError("`fits` must be a non-empty dict {label: FitResult}")
    labels = list(fits)
    for k in labels:
        if _is_datatree(fits[k]) or not hasattr(fits[k], "log_likelihood"):
            raise ValueError(f"`fits[{k!r}]` must be a FitResult (bm.fit_mle / bm.fit_map), got "
                             f"{type(fits[k]).__name__}")
    if len({fits[k].n_obs for k in labels}) > 1:
        raise ValueError("`fits` must all be fitted on the same data (their n_obs differ)")
    names = [str(k) for k in labels]
    if len(set(names)) != len(names):
        raise ValueError("`fits` labels must have distinct string forms")
    table = _info_table({str(k): fits[k] for k in labels}, "model", names)
    slope = None
    if criterion in INFO_CRITERIA:
        values = table[criterion].values
        if not np.any(np.isfinite(values)):
            raise ValueError(f"criterion {criterion!r} is not finite for any model")
        best = labels[int(np.nanargmin(np.where(np.isfinite(values), values, np.nan)))]
    else:
        slope = slope_heuristic(table["contrast"].values, table["n_params"].values, method=criterion,
                                **slope_kwargs)
        table["slope_criterion"] = ("model", slope.criterion)
        best = labels[slope.selected]
    return Selection(best=best, criterion=criterion, fits=dict(fits), table=table, slope=slope)


# ----------------------------------------------------------------------------- fitting every K
def select_n_experts(make_model: Callable[[int], Any], x: Any, y: Any, k_range: Iterable[int],
                     criterion: str = "bic", *, seed: int = 0, n_starts: int = 8, fit: str = "mle",
                     progress_bar: bool = True, fit_kwargs: Mapping | None = None,
                     sample_kwargs: Mapping | None = None, slope_kwargs: Mapping | None = None) -> Selection:
    """Fit a mixture of experts for every K in ``k_range`` and choose K.

    :param make_model: ``K -> bayesmoe.MoE`` (e.g. ``lambda K: bm.MoE(gate, expert, K)``).
    :param x: inputs (n, d) or (n,).
    :param y: responses (n,).
    :param k_range: the candidate numbers of experts: positive integers (e.g. ``range(1, 8)``).
    :param criterion: ``"bic"`` (default), ``"icl"``, ``"aic"``, ``"djump"``, ``"ddse"`` or ``"loo"``
        (see the module docstring). Djump/DDSE need at least 3 values of K (more is better: the slope
        is read on the most complex models).
    :param seed: an int or a ``jax.random`` key; every K is fitted with the same seed.
    :param n_starts: starts of every point fit.
    :param fit: ``"mle"`` (:func:`bayesmoe.fit_mle`, default: the criteria are likelihood-based) or
        ``"map"`` (:func:`bayesmoe.fit_map`).
    :param progress_bar: show a progress bar over K.
    :param fit_kwargs: more keyword arguments of the point fit (``method``, ``max_steps``, ...).
    :param sample_kwargs: keyword arguments of :func:`bayesmoe.sample` (``"loo"`` only; the chains
        start at the point fit of each K).
    :param slope_kwargs: keyword arguments of :func:`slope_heuristic` (Djump/DDSE).
    :returns: a :class:`Selection` (``best``, ``fits``, ``table``, and the slope heuristic or the
        ``arviz.compare`` table).
    """
    from bayesmoe._random import seed_int  # noqa: PLC0415

    if not callable(make_model):
        raise ValueError(f"`make_model` must be a callable K -> bm.MoE, got {make_model!r}")
    ks = _check_k_range(k_range)
    criterion = _check_criterion(criterion)
    seed_int(seed, "seed")
    check_bool(progress_bar, "progress_bar")
    if fit not in ("mle", "map"):
        raise ValueError(f"`fit` must be 'mle' or 'map', got {fit!r}")
    if criterion in SLOPE_CRITERIA and len(ks) < 3:
        raise ValueError(f"criterion {criterion!r} calibrates a slope over the most complex models: "
                         f"`k_range` needs at least 3 values, got {ks}")
    for name, kw in (("fit_kwargs", fit_kwargs), ("sample_kwargs", sample_kwargs),
                     ("slope_kwargs", slope_kwargs)):
        if kw is not None and not isinstance(kw, Mapping):
            raise ValueError(f"`{name}` must be a dict of keyword arguments, got {type(kw).__name__}")
    if sample_kwargs is not None and criterion != "loo":
        raise ValueError("`sample_kwargs` is only used with criterion='loo'")
    models = {}
    for k in ks:
        m = make_model(k)
        if getattr(m, "n_experts", None) != k:
            raise ValueError(f"`make_model({k})` must return a bm.MoE with n_experts = {k}, got {m!r}")
        models[k] = m
    from tqdm.auto import tqdm  # noqa: PLC0415

    from bayesmoe.inference import fit_map, fit_mle, sample  # noqa: PLC0415

    fitter = fit_mle if fit == "mle" else fit_map
    fits, posteriors = {}, ({} if criterion == "loo" else None)
    bar = tqdm(ks, desc="n_experts", disable=not progress_bar)
    for k in bar:
        bar.set_postfix_str(f"K={k}")
        fits[k] = fitter(models[k], x, y, seed=seed, n_starts=n_starts, **dict(fit_kwargs or {}))
        if posteriors is not None:
            kw = {"progress_bar": False, "seed": seed, **dict(sample_kwargs or {})}
            kw.setdefault("init", {n: v for n, v in fits[k].params.items()})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                posteriors[k] = sample(models[k], x, y, **kw)
    bar.close()
    return select(fits, criterion, posteriors=posteriors, **dict(slope_kwargs or {}))


# ----------------------------------------------------------------------------- figures
def plot_selection(result: Selection, *, criteria: Iterable[str] | None = None, axes=None):
    """Draw the criteria against K and, for Djump/DDSE, the slope-heuristic diagnostics.

    :param result: a :class:`Selection`.
    :param criteria: which table variables to draw in the first panel (default: ``aic``, ``bic``,
        ``icl`` and, when present, ``slope_criterion`` scaled by n, ``-2 * elpd_loo``).
    :param axes: matplotlib axes to draw on (as many as panels: 1, or 3 with a slope heuristic);
        new ones by default.
    :returns: the matplotlib Figure. Panels: criteria vs K (the chosen K marked); with a slope
        heuristic, the contrast against the dimension with the fitted line of slope ``-kappa``
        (DDSE) or the minimal-penalty line (Djump), and the selected dimension against kappa (Djump:
        the dimension-jump curve) or the DDSE slopes against the first dimension of each regression.
    """
    import matplotlib.pyplot as plt  # noqa: PLC0415

    if not isinstance(result, Selection):
        raise ValueError(f"`result` must be a Selection, got {type(result).__name__}")
    tab = result.table
    dim = "n_experts" if "n_experts" in tab.dims else "model"
    labels = list(tab[dim].values)
    ks = np.asarray(labels) if dim == "n_experts" else np.arange(len(labels))
    best_x = result.best if dim == "n_experts" else labels.index(str(result.best))
    n_panels = 3 if result.slope is not None else 1
    if axes is None:
        fig, axs = plt.subplots(1, n_panels, figsize=(4.5 * n_panels, 3.6), squeeze=False)
        axs = list(axs[0])
    else:
        axs = list(np.atleast_1d(axes))
        if len(axs) != n_panels:
            raise ValueError(f"`axes` must hold {n_panels} axes for this selection, got {len(axs)}")
        fig = axs[0].figure
    ax = axs[0]
    names = list(criteria) if criteria is not None else [c for c in ("aic", "bic", "icl") if c in tab]
    for c in names:
        if c not in tab:
            raise ValueError(f"`criteria`: {c!r} is not in the selection table ({list(tab.data_vars)})")
        ax.plot(ks, tab[c].values, "o-", label=c.upper() if c in INFO_CRITERIA else c)
    if criteria is None and "elpd_loo" in tab:
        ax.plot(ks, -2 * tab["elpd_loo"].values, "s--", label="-2 elpd_loo")
    if criteria is None and "slope_criterion" in tab and "log_likelihood" in tab:
        n = float(-tab["log_likelihood"].values[0] / tab["contrast"].values[0])
        ax.plot(ks, 2 * n * tab["slope_criterion"].values, "^--", label=f"2n x {result.criterion}")
    ax.axvline(best_x, color="0.5", ls=":", lw=1)
    if dim == "model":
        ax.set_xticks(ks, labels, rotation=45, ha="right", fontsize="small")
    else:
        ax.set_xticks(ks)
    ax.set_xlabel("number of experts K" if dim == "n_experts" else "model")
    ax.set_ylabel("criterion (smaller is better)")
    ax.set_title(f"chosen {'K' if dim == 'n_experts' else 'model'} = {result.best} ({result.criterion})")
    ax.legend(fontsize="small")
    if result.slope is not None:
        _plot_slope(result.slope, axs[1], axs[2])
    fig.tight_layout()
    return fig


def _plot_slope(sh: SlopeHeuristic, ax_c, ax_k) -> None:
    d, g = sh.dims, sh.contrasts
    ax_c.plot(d, g, "o", color="C0", label="contrast")
    diag = sh.diagnostics
    if sh.method == "ddse":
        first, last = diag["plateau"]
        dd = np.linspace(diag["start_dims"][first], d.max(), 50)
        ax_c.plot(dd, -(diag["intercepts"][first] + diag["slopes"][first] * dd), "-", color="C3",
                  label=f"robust fit, slope -{sh.kappa:.3g}")
        ax_k.plot(diag["start_dims"], diag["slopes"], "o-", ms=3)
        ax_k.axvspan(diag["start_dims"][first], diag["start_dims"][last], color="C2", alpha=0.2,
                     label="chosen plateau")
        ax_k.set_xlabel("smallest dimension in the regression p")
        ax_k.set_ylabel("slope kappa(p)")
        ax_k.legend(fontsize="small")
    else:
        kp = diag["kappa_path"]
        steps_k = np.concatenate([[0.0], kp, [kp.max() * 1.2 if kp.size and kp.max() > 0 else 1.0]])
        steps_d = np.concatenate([[diag["dim_start"]], diag["dim_path"], [diag["dim_path"][-1]
                                                                          if kp.size else diag["dim_start"]]])
        if kp.size and kp.min() > 0:  # breakpoints span decades: a log axis from below the first
            steps_k[0] = kp.min() / 3
            ax_k.set_xscale("log")
        ax_k.step(steps_k, steps_d, where="post")
        ax_k.axvline(sh.kappa, color="C3", ls="--", label=f"largest jump, kappa = {sh.kappa:.3g}")
        ax_k.axvline(sh.constant, color="C2", ls=":", label=f"penalty constant {sh.constant:.3g}")
        ax_k.set_xlabel("kappa")
        ax_k.set_ylabel("selected dimension")
        ax_k.legend(fontsize="small")
    ax_c.plot(d[sh.selected], g[sh.selected], "*", ms=14, color="C2", label="selected")
    ax_c.set_xlabel("dimension (penalty shape)")
    ax_c.set_ylabel("contrast")
    ax_c.set_title(f"slope heuristic ({sh.method})")
    ax_c.legend(fontsize="small")
