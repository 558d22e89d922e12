r"""Slope heuristics: calibrating a penalty :math:`\mathrm{pen}(m) = c\,\kappa\,D_m` from the data.

For a collection of models :math:`m` with minimum contrasts :math:`\gamma_m` (e.g. the negative mean
log-likelihood :math:`-\frac1n \sum_i \log \hat s_m(y_i | x_i)`) and penalty shapes :math:`D_m` (e.g. the
number of free parameters), the slope heuristic (Birgé & Massart 2007; Baudry, Maugis & Michel 2012,
*Slope heuristics: overview and implementation*, Statistics and Computing) says that the minimal penalty
is :math:`\kappa_{\min} D_m` with :math:`\kappa_{\min}` the slope of :math:`-\gamma_m` against
:math:`D_m` over the most complex models, and that the optimal penalty is twice it
(``scoef = 2``). The selected model minimises :math:`\gamma_m + c\,\hat\kappa\,D_m`.

Two calibrations of :math:`\hat\kappa`, as in the R package capushe:

* **Djump** (dimension jump): the model :math:`\hat m(\kappa) = \arg\min_m \gamma_m + \kappa D_m` is a
  step function of :math:`\kappa` whose dimension decreases; :math:`\hat\kappa` is where that dimension
  makes its largest jump. The path is computed exactly (the breakpoints are slopes of the lower convex
  hull of the points :math:`(D_m, \gamma_m)`).
* **DDSE** (data-driven slope estimation): for each :math:`p` among the dimensions, the slope
  :math:`\hat\kappa(p)` of a robust (Tukey bisquare) regression of :math:`-\gamma_m` on :math:`D_m` over
  the models with :math:`D_m \ge p`; each slope selects :math:`\hat m(p)`. Runs of equal selections are
  *plateaus*; the last plateau (largest :math:`p`) whose length is at least ``pct`` of all is chosen,
  and :math:`\hat\kappa` is the slope at its first point.

Models with equal dimension keep only the one of smallest contrast (as capushe does).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = ["METHODS", "SlopeHeuristic", "ddse", "djump", "slope_heuristic"]

METHODS = ("djump", "ddse")
_BISQUARE_C = 4.685  # 95% efficiency at the Gaussian


class SlopeHeuristic(NamedTuple):
    """The result of :func:`slope_heuristic`.

    :ivar method: ``"djump"`` or ``"ddse"``.
    :ivar kappa: the calibrated minimal-penalty slope :math:`\\hat\\kappa`.
    :ivar constant: the penalty constant ``scoef * kappa`` used to select.
    :ivar selected: index (into the arrays given) of the selected model.
    :ivar criterion: ``contrasts + constant * dims`` for every model given.
    :ivar contrasts: the contrasts given (float array).
    :ivar dims: the penalty shapes given (float array).
    :ivar diagnostics: what the plots need. Djump: ``kappa_path`` (breakpoints, increasing),
        ``dim_path`` (the selected dimension just after each breakpoint), ``dim_start`` (the
        dimension selected at kappa = 0+), ``jump`` (index of the largest jump; -1 and kappa = 0 when
        the simplest model has the smallest contrast). DDSE: ``start_dims``
        (the p of every regression), ``slopes``, ``intercepts``, ``selected_path`` (index of
        :math:`\\hat m(p)`), ``plateau`` ((first, last) index into ``start_dims``),
        ``slope_interval`` (min, max slope over the plateau).
    """

    method: str
    kappa: float
    constant: float
    selected: int
    criterion: np.ndarray
    contrasts: np.ndarray
    dims: np.ndarray
    diagnostics: dict[str, Any]


def _check(contrasts: Any, dims: Any, min_models: int) -> tuple[np.ndarray, np.ndarray]:
    g = np.asarray(contrasts, dtype=float)
    dm = np.asarray(dims, dtype=float)
    if g.ndim != 1 or dm.ndim != 1:
        raise ValueError(f"`contrasts` and `dims` must be 1-D, got shapes {g.shape} and {dm.shape}")
    if g.shape != dm.shape:
        raise ValueError(f"`contrasts` ({g.size} values) and `dims` ({dm.size} values) must have the "
                         "same length")
    if not (np.all(np.isfinite(g)) and np.all(np.isfinite(dm))):
        raise ValueError("`contrasts` and `dims` must be finite")
    if np.any(dm < 0):
        raise ValueError("`dims` must be non-negative (penalty shapes)")
    if np.unique(dm).size < min_models:
        raise ValueError(f"the slope heuristic needs at least {min_models} distinct `dims`, got "
                         f"{np.unique(dm).size}")
    return g, dm


def _unique_best(g: np.ndarray, dm: np.ndarray) -> np.ndarray:
    """Indices of the models kept: one per distinct dimension (smallest contrast), sorted by dim."""
    order = np.lexsort((g, dm))  # by dim, then contrast
    keep = np.ones(order.size, bool)
    keep[1:] = dm[order][1:] != dm[order][:-1]
    return order[keep]


def _argmin_pen(g: np.ndarray, dm: np.ndarray, kappa: float) -> int:
    """argmin of g + kappa dm; ties to the smaller dimension."""
    crit = g + kappa * dm
    best = np.flatnonzero(crit <= crit.min() + 1e-12 * max(1.0, abs(crit.min())))
    return int(best[np.argmin(dm[best])])


def _path(g: np.ndarray, dm: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    r"""Exact path of :math:`\hat m(\kappa)` for :math:`\kappa > 0` (g, dm sorted by increasing dm,
    distinct): the start index and the breakpoints with the index selected just after each."""
    cur = _argmin_pen(g, dm, 0.0)
    start, kappas, nxt = cur, [], []
    while cur > 0:
        slopes = (g[:cur] - g[cur]) / (dm[cur] - dm[:cur])  # kappa where j overtakes cur
        k = slopes.min()
        j = int(np.flatnonzero(slopes <= k + 1e-12 * max(1.0, abs(k)))[0])  # smallest dim on ties
        kappas.append(max(k, 0.0))
        nxt.append(j)
        cur = j
    return start, np.asarray(kappas), np.asarray(nxt, int)


def djump(contrasts: Any, dims: Any, *, scoef: float = 2.0) -> SlopeHeuristic:
    r"""Dimension-jump calibration of the slope heuristic (see the module docstring).

    :param contrasts: minimum contrast of every model (smaller is better), e.g. ``-loglik / n``.
    :param dims: penalty shape of every model, e.g. the number of free parameters.
    :param scoef: ratio between the optimal and the minimal penalty (2 by the slope heuristic).
    :returns: a :class:`SlopeHeuristic`; ``kappa`` is the breakpoint of the largest dimension jump
        and the selected model minimises ``contrasts + scoef * kappa * dims``.
    """
    g_all, d_all = _check(contrasts, dims, 2)
    scoef = _check_scoef(scoef)
    idx = _unique_best(g_all, d_all)
    g, dm = g_all[idx], d_all[idx]
    start, kappas, nxt = _path(g, dm)
    if kappas.size == 0:  # the simplest model already has the smallest contrast: no jump at all
        jump, kappa = -1, 0.0
    else:
        dims_before = np.concatenate([[dm[start]], dm[nxt[:-1]]])
        jumps = dims_before - dm[nxt]
        jump = int(np.argmax(jumps))  # the first (smallest kappa) among equal largest jumps
        kappa = float(kappas[jump])
    return _result("djump", kappa, scoef, g_all, d_all,
                   {"kappa_path": kappas, "dim_path": dm[nxt], "dim_start": float(dm[start]),
                    "jump": jump})


def _check_scoef(scoef: Any) -> float:
    try:
        s = float(scoef)
    except (TypeError, ValueError):
        raise ValueError(f"`scoef` must be a positive number, got {scoef!r}") from None
    if not (np.isfinite(s) and s > 0):
        raise ValueError(f"`scoef` must be a positive finite number, got {scoef!r}")
    return s


def _result(method, kappa, scoef, g_all, d_all, diag) -> SlopeHeuristic:
    const = scoef * kappa
    crit = g_all + const * d_all
    return SlopeHeuristic(method=method, kappa=kappa, constant=const,
                          selected=_argmin_pen(g_all, d_all, const), criterion=crit,
                          contrasts=g_all, dims=d_all, diagnostics=diag)


def _bisquare_fit(xv: np.ndarray, yv: np.ndarray, robust: bool, n_iter: int = 50) -> tuple[float, float]:
    r"""Intercept and slope of y on x: least squares, then (``robust``) iteratively reweighted least
    squares with Tukey's bisquare weights :math:`(1 - (r/cs)^2)^2` for :math:`|r| < cs`, c = 4.685,
    the scale s re-estimated each step as MAD / 0.6745 of the residuals."""
    design = np.column_stack([np.ones_like(xv), xv])
    beta = np.linalg.lstsq(design, yv, rcond=None)[0]
    if not robust:
        return float(beta[0]), float(beta[1])
    for _ in range(n_iter):
        r = yv - design @ beta
        s = np.median(np.abs(r - np.median(r))) / 0.6745
        if s <= 1e-12 * max(1.0, np.max(np.abs(yv))):
            break
        u = r / (_BISQUARE_C * s)
        w = np.where(np.abs(u) < 1, (1 - u**2) ** 2, 0.0)
        if np.count_nonzero(w) < 2:
            break
        sw = np.sqrt(w)
        new = np.linalg.lstsq(design * sw[:, None], yv * sw, rcond=None)[0]
        done = np.allclose(new, beta, rtol=1e-10, atol=1e-12)
        beta = new
        if done:
            break
    return float(beta[0]), float(beta[1])


def ddse(contrasts: Any, dims: Any, *, scoef: float = 2.0, pct: float = 0.15, min_points: int = 3,
         robust: bool = True) -> SlopeHeuristic:
    r"""Data-driven slope estimation (see the module docstring).

    :param contrasts: minimum contrast of every model (smaller is better), e.g. ``-loglik / n``.
    :param dims: penalty shape of every model, e.g. the number of free parameters.
    :param scoef: ratio between the optimal and the minimal penalty (2 by the slope heuristic).
    :param pct: minimum length of the chosen plateau, as a fraction of all regressions, in (0, 1].
    :param min_points: fewest models in a regression (the largest p used leaves this many), >= 2.
    :param robust: Tukey-bisquare robust regression (True) or ordinary least squares (False).
    :returns: a :class:`SlopeHeuristic`; ``kappa`` is the slope at the first point of the chosen
        plateau, and the selected model minimises ``contrasts + scoef * kappa * dims``.
    """
    if isinstance(min_points, bool) or not isinstance(min_points, (int, np.integer)) or min_points < 2:
        raise ValueError(f"`min_points` must be an integer >= 2, got {min_points!r}")
    g_all, d_all = _check(contrasts, dims, int(min_points))
    scoef = _check_scoef(scoef)
    try:
        pct = float(pct)
    except (TypeError, ValueError):
        raise ValueError(f"`pct` must be a number in (0, 1], got {pct!r}") from None
    if not 0 < pct <= 1:
        raise ValueError(f"`pct` must be in (0, 1], got {pct}")
    idx = _unique_best(g_all, d_all)
    g, dm = g_all[idx], d_all[idx]
    n_reg = g.size - int(min_points) + 1
    fits = np.array([_bisquare_fit(dm[i:], -g[i:], bool(robust)) for i in range(n_reg)])
    intercepts, slopes = fits[:, 0], fits[:, 1]
    sel = np.array([_argmin_pen(g, dm, scoef * max(k, 0.0)) for k in slopes])
    # plateaus: maximal runs of equal selections, in increasing p
    starts = np.flatnonzero(np.concatenate([[True], sel[1:] != sel[:-1]]))
    ends = np.concatenate([starts[1:], [n_reg]])
    lengths = ends - starts
    ok = np.flatnonzero(lengths >= pct * n_reg)
    plateau = int(ok[-1]) if ok.size else int(np.argmax(lengths))
    first, last = int(starts[plateau]), int(ends[plateau] - 1)
    kappa = float(max(slopes[first], 0.0))
    return _result("ddse", kappa, scoef, g_all, d_all,
                   {"start_dims": dm[:n_reg], "slopes": slopes, "intercepts": intercepts,
                    "selected_path": idx[sel], "plateau": (first, last),
                    "slope_interval": (float(slopes[first:last + 1].min()),
                                       float(slopes[first:last + 1].max()))})


def slope_heuristic(contrasts: Any, dims: Any, method: str = "djump", **kwargs) -> SlopeHeuristic:
    r"""Calibrate the penalty :math:`\mathrm{pen}(m) = \mathrm{scoef}\,\hat\kappa\,D_m` by the slope
    heuristic and select a model (capushe's Djump or DDSE).

    :param contrasts: minimum contrast of every model (smaller is better), e.g. ``-loglik / n``
        (the negative mean log-likelihood), array-like (M,).
    :param dims: penalty shape of every model (e.g. the number of free parameters), array-like (M,).
    :param method: ``"djump"`` (dimension jump) or ``"ddse"`` (data-driven slope estimation).
    :param kwargs: ``scoef`` (both), ``pct``, ``min_points``, ``robust`` (DDSE).
    :returns: a :class:`SlopeHeuristic` (penalty constant, selected index, criterion, diagnostics).
    """
    if method == "djump":
        return djump(contrasts, dims, **kwargs)
    if method == "ddse":
        return ddse(contrasts, dims, **kwargs)
    raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
