r"""The Lasso path of a MoE: penalised fits along a grid of levels, and the chosen one.

:func:`lasso_path` fits the l1-penalised MoE (:mod:`bayesmoe.penalties`) on a decreasing grid of levels
:math:`\lambda_1 > \dots > \lambda_L`, each fit warm-started at the previous answer (one compiled EM
program, reused along the path). The penalised likelihood of a mixture is not concave (not even for one
expert with its scale estimated), so the path is walked twice: down from the all-zero fit and up from
dense data-driven starts; each level keeps the answer with the larger penalised likelihood.

:math:`\lambda_{\max}` is the smallest level at which the fit with every slope at zero (a mixture with
constant gates and constant expert means, itself fitted by EM from several data-driven starts)
satisfies the optimality conditions of the penalised problem,
:math:`\lambda_{\max} = \max_j |\partial\ell/\partial\theta_j| / (n w_j)`; the default grid is geometric
from ``lambda_max_ratio`` to ``lambda_min_ratio`` times it. The level is chosen by an information
criterion with the Lasso's degrees of freedom (the number of nonzero slopes plus the unpenalised
parameters; Zou, Hastie & Tibshirani 2007):
:math:`\mathrm{BIC}(\lambda) = -2\ell(\hat\theta_\lambda) + \mathrm{df}(\lambda)\log n`, the extended BIC
of Chen & Chen (2008, "Extended Bayesian information criteria for model selection with large model
spaces", Biometrika 95),
:math:`\mathrm{EBIC}_\gamma(\lambda) = \mathrm{BIC}(\lambda) + 2\gamma\log\binom{P}{s(\lambda)}` with P
the number of penalised slopes and s the nonzero ones (the prior over supports that gives every support
size the same mass, to the power gamma), or ICL / AIC; :math:`\ell` is by default the log-likelihood of
the unpenalised refit on the level's support (relaxed).

By default (``adaptive=True``) the chosen level's relaxed refit then gives the weights
:math:`1/|\tilde\theta_j|` of a second path, the adaptive Lasso (Zou 2006, "The adaptive lasso and its
oracle properties", JASA 101), on which the criterion chooses again: on the plain path of a mixture
the sparse supports are not reached (see :func:`lasso_path`'s ``adaptive``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from bayesmoe import penalties as _pen
from bayesmoe._random import seed_int
from bayesmoe._validation import check_bool, check_positive_int, check_real, column_names
from bayesmoe.family import REGRESSOR
from bayesmoe.inference import _standardize
from bayesmoe.inference.init import data_starts
from bayesmoe.inference.result import FitResult

__all__ = ["CRITERIA", "LassoPath", "lasso_path", "plot_lasso_path"]

CRITERIA = ("bic", "ebic", "icl", "aic")
# the level of the all-zero fit that lambda_max is computed at (every slope is thresholded away)
_NULL_LAM = 1e4
#: size n (p+1)^2 (in float bytes) of the data-driven starts' Gram matrices' work above which the
#: dense starts use screened features (a cost bound: the Gram matrices themselves are (K, p+1, p+1))
_MAX_START_BYTES = 2**30


@dataclasses.dataclass(frozen=True)
class LassoPath:
    """Result of :func:`lasso_path`.

    ``best`` is the :class:`~bayesmoe.FitResult` at the chosen level (``best.extra["lambda"]``);
    ``lambdas`` the decreasing levels; ``dataset`` an ``xarray.Dataset`` with a ``lambda`` dim: every
    parameter site (data units, named dims), ``log_likelihood``, ``penalized_log_likelihood``, ``df``,
    ``n_nonzero`` (nonzero slopes), ``aic``, ``bic``, ``ebic``, ``icl``, ``n_steps``, ``converged``;
    ``best_index`` the position of the chosen level and ``criterion`` the criterion used;
    ``lambda_max`` the smallest level at which every slope is zero (the path's start);
    ``first_stage`` the plain Lasso path whose chosen fit gave the adaptive weights (None when the
    path is itself the plain one).
    """

    best: FitResult
    lambdas: np.ndarray
    dataset: Any
    best_index: int
    criterion: str
    lambda_max: float
    first_stage: LassoPath | None = None

    def __repr__(self) -> str:
        return (f"LassoPath({len(self.lambdas)} levels, lambda_max={self.lambda_max:.4g}, "
                f"{self.criterion}-chosen lambda={self.lambdas[self.best_index]:.4g}, "
                f"nonzero slopes={self.best.extra['n_nonzero_slopes']})")


def _check_lambdas(lambdas) -> np.ndarray:
    a = np.asarray(lambdas, dtype=float)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"`lambdas` must be a non-empty 1-D array of levels, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError("`lambdas` must be finite and >= 0")
    return np.sort(a)[::-1].copy()


@jax.jit
def _zero_slopes(params: dict, weights: dict) -> dict:
    return {k: (v * (weights[k] == 0) if k in weights else v) for k, v in params.items()}


def _criteria_terms(model, params, x, y):
    """(log-likelihood, sum_i sum_k t_ik log t_ik) of one parameter set (standardised units)."""
    lj = model.log_joint_terms(params, x, y)
    lli = logsumexp(lj, axis=-1)
    logt = lj - lli[:, None]
    return jnp.sum(lli), jnp.sum(jnp.exp(logt) * logt)


_criteria = jax.jit(jax.vmap(_criteria_terms, in_axes=(None, 0, None, None)), static_argnums=0)


def _starts(model, x, y, n_starts: int, rng: np.random.Generator, floors: dict) -> dict:
    """Data-driven starts; with many features (where building the starts' normal equations, n (p+1)^2
    multiply-adds per expert and per Newton step of the gate, would exceed ``_MAX_START_BYTES``) from
    the q features most correlated with y (sure independence screening, Fan & Lv 2008), the other
    slopes at zero. The screening needs families whose regressors
    are x and whose only per-feature sites are slopes; otherwise the plain starts are used."""
    n, d = x.shape
    m = max(f.n_features(d) for f in model.families) + 1
    size = n * m * m * x.dtype.itemsize
    per_feature = [p for f in model.families for p in f.param_table()
                   if REGRESSOR in p.dims or "feature" in p.dims]
    if (size <= _MAX_START_BYTES or not all(f.x_affine(d) and f.n_features(d) == d for f in model.families)
            or any(p.affine != "coef" for p in per_feature) or model.expert.is_discrete):
        return data_starts(model, x, y, n_starts, rng, floors)
    q = int(min(d, max(1, np.sqrt(_MAX_START_BYTES / (n * x.dtype.itemsize)) - 1)))
    xn, yn = np.asarray(x, float), np.asarray(y, float)
    corr = np.abs((xn - xn.mean(0)).T @ (yn - yn.mean())) / (xn.std(0) + 1e-12)
    cols = np.sort(np.argsort(-corr)[:q])
    small = data_starts(model, x[:, cols], y, n_starts, rng, floors)
    out = dict(small)
    for p in per_feature:
        v = np.asarray(small[p.name])
        full = np.zeros(v.shape[:-1] + (d,), v.dtype)
        full[..., cols] = v
        out[p.name] = jnp.asarray(full)
    return out


def lasso_path(model, x, y, lambdas=None, *, n_lambdas: int = 30, lambda_min_ratio: float = 0.1,
               lambda_max_ratio: float = 3.0,
               criterion: str = "bic", ebic_gamma: float = 1.0, penalty: _pen.L1 | None = None,
               n_starts: int = 4,
               seed: int = 0, max_steps: int = 500, tol: float | None = None,
               relaxed: bool = True, adaptive: bool = True, scale_floor: float = 1e-3,
               progress_bar: bool = True) -> LassoPath:
    r"""Fit the Lasso MoE along a path of levels and choose one (see the module docstring).

    :param model: a :class:`bayesmoe.MoE` with slopes (gate and/or experts).
    :param x: (n, d) inputs (array or DataFrame: its column names become the ``feature`` coords).
    :param y: (n,) responses.
    :param lambdas: the levels (any order; run from large to small); default a geometric grid of
        ``n_lambdas`` levels from :math:`\lambda_{\max}` to ``lambda_min_ratio`` times it.
    :param n_lambdas: number of levels of the default grid.
    :param lambda_min_ratio: smallest level of the default grid relative to :math:`\lambda_{\max}`.
    :param lambda_max_ratio: largest level of the default grid relative to :math:`\lambda_{\max}`
        (above 1: the penalised likelihood of a mixture is not concave, and sparse nonzero fits better
        than the all-zero one exist above :math:`\lambda_{\max}`; see below).
    :param criterion: ``"bic"`` (default), ``"ebic"`` (extended BIC), ``"icl"`` or ``"aic"``: the level
        minimising it is chosen. With many features (P penalised slopes of which few matter) BIC's
        log n per slope lets irrelevant slopes in; EBIC adds the log number of supports of each size.
    :param ebic_gamma: :math:`\gamma \in [0, 1]` of EBIC (0: BIC). Chen & Chen (2008) show EBIC
        selection consistent for :math:`\gamma > 1 - 1/(2\kappa)` when :math:`P = O(n^\kappa)`;
        :math:`\gamma = 1` (default) is consistent for every :math:`\kappa`.
    :param penalty: an :class:`~bayesmoe.penalties.L1` whose gate/expert ratio and adaptive weights are
        kept along the path (its level is ignored); default the plain Lasso on every slope.
    :param n_starts: data-driven starts of the all-zero fit at :math:`\lambda_{\max}`.
    :param seed: int or ``jax.random`` key of those starts.
    :param max_steps: EM steps per level. :param tol: relative change of the penalised objective to
        stop at (default 1e-7 in float32, 1e-10 in x64).
    :param relaxed: compute the criterion from the unpenalised maximum-likelihood refit on each level's
        support (the relaxed Lasso of Meinshausen 2007 with no shrinkage; the Lasso-OLS hybrid of Efron
        et al. 2004): the Lasso's shrinkage no longer pushes the criterion towards dense supports.
        False: from the penalised fit itself.
    :param adaptive: walk a second path with the adaptive Lasso (Zou 2006) and choose the level on it
        (default): weights :math:`1/|\tilde\theta_j|` from the relaxed refit at the level the
        criterion chose on the plain path (slopes zero there stay zero). In a mixture the plain Lasso's
        shrinkage of the relevant slopes also weakens the mixture itself, so above some level the all-zero
        fit wins and the plain path jumps from a support with spurious slopes straight to zero: no level
        of it has the sparse support. The adaptive weights barely shrink the large slopes, so the second
        path visits the sparse supports. False: the plain path's choice.
    :param scale_floor: lower bound of the scales relative to the data's spread (as in ``fit_mle``).
    :param progress_bar: show a tqdm bar over the levels.
    :returns: a :class:`LassoPath` (with ``adaptive=True`` the second path's, its ``first_stage`` the
        plain path).
    """
    from bayesmoe.inference.em import em_fit  # noqa: PLC0415
    from bayesmoe.model import MoE  # noqa: PLC0415

    if not isinstance(model, MoE):
        raise ValueError(f"`model` must be a bayesmoe.MoE, got {model!r}")
    if not isinstance(criterion, str) or criterion not in CRITERIA:
        raise ValueError(f"`criterion` must be one of {CRITERIA}, got {criterion!r}")
    check_real(ebic_gamma, "ebic_gamma", "in [0, 1]", lambda v: 0 <= v <= 1)
    check_positive_int(n_lambdas, "n_lambdas", minimum=2 if lambdas is None else 1)
    check_real(lambda_min_ratio, "lambda_min_ratio", "in (0, 1)", lambda v: 0 < v < 1)
    check_real(lambda_max_ratio, "lambda_max_ratio", ">= 1 and finite", lambda v: 1 <= v < math.inf)
    check_positive_int(n_starts, "n_starts")
    check_positive_int(max_steps, "max_steps")
    check_real(scale_floor, "scale_floor", "in (0, 1)", lambda v: 0 < v < 1)
    check_bool(progress_bar, "progress_bar")
    check_bool(relaxed, "relaxed")
    check_bool(adaptive, "adaptive")
    if tol is not None:
        check_real(tol, "tol", "> 0 and finite", lambda v: 0 < v < math.inf)
    if penalty is not None and not isinstance(penalty, _pen.L1):
        raise ValueError(f"`penalty` must be a bayesmoe.penalties.L1, got {type(penalty).__name__}")
    seed = seed_int(seed, "seed")
    grid = None if lambdas is None else _check_lambdas(lambdas)
    xa, ya = model.check_data(x, y)
    if ya is None:
        raise ValueError("`y` is required, got None")
    n, d = xa.shape
    if penalty is not None and penalty.lam == 0:
        raise ValueError("`penalty.lam` must be > 0 (the path keeps its gate/expert ratios), got 0")
    unit = _pen.L1(1.0) if penalty is None else penalty.with_lam(1.0)
    _pen.site_weights(unit, model, d)  # errors before anything compiles

    std = _standardize.for_data(model, xa, ya, separable=True)
    xs, ys = std.x(xa), std.y(ya, model)
    dtype = jnp.result_type(float)
    tol = float(tol) if tol is not None else (1e-7 if dtype == jnp.float32 else 1e-10)
    x_j = jnp.asarray(xs, dtype)
    y_j = jnp.asarray(ys, model.y_dtype())
    floors = model.floors(xs, ys, scale_floor)
    w1 = {k: jnp.asarray(v, dtype) for k, v in _pen.site_weights(unit, model, d, std).items()}

    # the all-zero fit: a mixture with constant gates and expert means, from several starts
    dense = _starts(model, x_j, y_j, n_starts, np.random.default_rng(seed), floors)
    starts = _zero_slopes(dense, w1)
    null_pen = _pen.PenaltyWeights({k: _NULL_LAM * v for k, v in w1.items()})
    # every EM call below has n_starts chains: one compiled program for the whole path
    em0 = em_fit(model, x_j, y_j, starts, max_steps=max_steps, tol=tol, floors=floors, penalty=null_pen)
    ll0 = np.asarray(em0.log_likelihood)
    b = int(np.nanargmax(np.where(np.isfinite(ll0), ll0, -np.inf)))
    lam_max = _pen.lambda_max(model, {k: v[b] for k, v in em0.params.items()}, x_j, y_j, w1)
    if grid is None:
        grid = lam_max * np.geomspace(lambda_max_ratio, lambda_min_ratio, n_lambdas)

    def run(start, weights):
        em = em_fit(model, x_j, y_j, start, max_steps=max_steps, tol=tol, floors=floors,
                    penalty=_pen.PenaltyWeights(weights))
        return em

    def pick(em, s):
        return ({k: v[s] for k, v in em.params.items()}, float(em.log_likelihood[s]),
                int(em.n_steps[s]), bool(em.converged[s]), {})

    def better(a, b):
        return b is None or (np.isfinite(a[1]) and a[1] > b[1])

    L = len(grid)
    bar = None
    if progress_bar:
        from tqdm.auto import tqdm  # noqa: PLC0415

        bar = tqdm(total=2 * L, desc="lasso path", leave=False)
    fits: list = [None] * L
    # down from the all-zero fits, and up from the dense data-driven starts: the penalised likelihood
    # is not concave and several local maxima coexist at one level; each level keeps the best answer
    for current, order in ((em0.params, range(L)), (dense, range(L - 1, -1, -1))):
        for i in order:
            em = run(current, {k: jnp.asarray(grid[i], dtype) * v for k, v in w1.items()})
            current = em.params
            ok = np.where(np.isfinite(np.asarray(em.log_likelihood)), np.asarray(em.log_likelihood),
                          -np.inf)
            cand = pick(em, int(np.argmax(ok)))
            if better(cand, fits[i]):
                fits[i] = cand
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    stacked = {k: jnp.stack([f[0][k] for f in fits]) for k in fits[0][0]}
    ll_std, tlogt = (np.asarray(a, float) for a in _criteria(model, stacked, x_j, y_j))
    ll = ll_std + std.log_jacobian(model, n)
    if relaxed:  # unpenalised refit on each level's support (the same compiled EM program)
        refits: dict[bytes, dict] = {}
        for f in fits:
            out = {k: np.asarray((f[0][k] == 0) & (w1[k] > 0)) for k in w1}
            key = b"".join(v.tobytes() for v in out.values())
            if key not in refits:
                pw = _pen.PenaltyWeights({k: jnp.asarray(_NULL_LAM * v, dtype) for k, v in out.items()})
                em = run({k: jnp.broadcast_to(v, (n_starts,) + v.shape) for k, v in f[0].items()},
                         pw.weights)
                refits[key] = {k: v[0] for k, v in em.params.items()}
            f[4]["refit"] = refits[key]
        st = {k: jnp.stack([f[4]["refit"][k] for f in fits]) for k in fits[0][0]}
        rll_std, rtlogt = (np.asarray(a, float) for a in _criteria(model, st, x_j, y_j))
        refit_ll = rll_std + std.log_jacobian(model, n)

    raw = [std.to_raw(model, jax.tree.map(np.asarray, f[0])) for f in fits]
    w_raw = _pen.site_weights(unit, model, d)
    k_all = model.n_params(d)
    nz, pen_raw = [], []
    for p in raw:
        zeros = _pen.n_zero_slopes(model, p, w_raw, d)
        nz.append(int(sum(np.sum(np.asarray(v) > 0) for v in w_raw.values())) - zeros)
        pen_raw.append(float(_pen.penalty_value({k: np.asarray(p[k]) for k in w_raw}, w_raw)))
    n_pen = int(sum(np.sum(np.asarray(v) > 0) for v in w_raw.values()))
    df = np.array([k_all - (n_pen - z) for z in nz])
    ll_c, t_c = (refit_ll, rtlogt) if relaxed else (ll, tlogt)
    bic = -2 * ll_c + df * np.log(n)
    aic = -2 * ll_c + 2 * df
    icl = bic - 2 * t_c
    ebic = bic + 2 * float(ebic_gamma) * _log_binom(n_pen, np.asarray(nz))
    crit = {"bic": bic, "ebic": ebic, "aic": aic, "icl": icl}[criterion]
    best = int(np.nanargmin(np.where(np.isfinite(crit), crit, np.inf)))

    names = column_names(x) or [f"x{j}" for j in range(d)]
    ds = _dataset(model, raw, grid, names, {
        "log_likelihood": ll, "penalized_log_likelihood": ll - n * grid * np.asarray(pen_raw),
        **({"refit_log_likelihood": refit_ll} if relaxed else {}),
        "df": df, "n_nonzero": np.asarray(nz), "aic": aic, "bic": bic, "ebic": ebic, "icl": icl,
        "n_steps": np.array([f[2] for f in fits]), "converged": np.array([f[3] for f in fits])})
    best_fit = FitResult(
        params={k: np.asarray(v) for k, v in raw[best].items()}, log_likelihood=float(ll[best]),
        log_posterior=float(ll[best]), n_params=int(df[best]), n_obs=n, aic=float(aic[best]),
        bic=float(bic[best]), icl=float(icl[best]), converged=fits[best][3], n_steps=fits[best][2],
        start_log_likelihoods=ll0 + std.log_jacobian(model, n), method="em", prior=False,
        extra={"standardization": std, "penalty": unit.with_lam(float(grid[best])),
               "lambda": float(grid[best]), "n_nonzero_slopes": int(nz[best]),
               "penalized_log_likelihood": float(ll[best] - n * grid[best] * pen_raw[best])})
    out = LassoPath(best_fit, np.asarray(grid), ds, best, criterion, float(lam_max))
    if not adaptive:
        return out
    pilot = std.to_raw(model, jax.tree.map(np.asarray, fits[best][4]["refit"] if relaxed else fits[best][0]))
    weights = {}
    for k, w in _pen.L1.adaptive(pilot, 1.0).weights.items():
        given = None if unit.weights is None else unit.weights.get(k)
        weights[k] = w if given is None else w * np.asarray(given)
    second = lasso_path(model, x, y, lambdas, n_lambdas=n_lambdas, lambda_min_ratio=lambda_min_ratio,
                        lambda_max_ratio=lambda_max_ratio, criterion=criterion, ebic_gamma=ebic_gamma,
                        penalty=_pen.L1(1.0, unit.gate, unit.expert, weights), n_starts=n_starts,
                        seed=seed, max_steps=max_steps, tol=tol, relaxed=relaxed, adaptive=False,
                        scale_floor=scale_floor, progress_bar=progress_bar)
    return dataclasses.replace(second, first_stage=out)


def _log_binom(m: int, s: np.ndarray) -> np.ndarray:
    r""":math:`\log\binom{m}{s}` elementwise (log-gamma; exact for the sizes here)."""
    s = np.asarray(s, float)
    return math.lgamma(m + 1) - np.array([math.lgamma(v + 1) + math.lgamma(m - v + 1) for v in s.ravel()]
                                         ).reshape(s.shape)


def _dataset(model, raw: list[dict], grid: np.ndarray, names: list[str], scalars: dict):
    import xarray as xr  # noqa: PLC0415

    d = len(names)
    dims = model.param_dims(d)
    coords = {"lambda": np.asarray(grid)}
    for dim, labels in model.coords(names).items():
        coords[dim] = np.asarray(labels)
    data = {}
    for k, site_dims in dims.items():
        if k not in raw[0]:
            continue
        data[k] = (("lambda",) + tuple(site_dims), np.stack([np.asarray(p[k]) for p in raw]))
    for k, v in scalars.items():
        data[k] = (("lambda",), np.asarray(v))
    used = {dim for v in data.values() for dim in v[0]}
    return xr.Dataset(data, coords={k: v for k, v in coords.items() if k in used})


def plot_lasso_path(path: LassoPath, *, x_log: bool = True):
    """Coefficient paths (one panel per expert for the expert slopes, one for the gate slopes) and the
    criterion against the level; the chosen level is marked. Returns the matplotlib figure.

    :param path: a :class:`LassoPath`.
    :param x_log: a logarithmic level axis.
    """
    import matplotlib.pyplot as plt  # noqa: PLC0415

    if not isinstance(path, LassoPath):
        raise ValueError(f"`path` must be a LassoPath (from bm.lasso_path), got {type(path).__name__}")
    ds = path.dataset
    lam = np.asarray(path.lambdas)
    panels = []
    if "expert_coef" in ds:
        c = np.asarray(ds["expert_coef"])
        for k in range(c.shape[1]):
            panels.append((f"expert {k} slopes", c[:, k].reshape(len(lam), -1)))
    if "gate_coef" in ds:
        g = np.asarray(ds["gate_coef"])
        panels.append(("gate slopes", g[:, :-1].reshape(len(lam), -1)))
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(3.2 * (len(panels) + 1), 3.0), squeeze=False)
    best = lam[path.best_index]
    for ax, (title, vals) in zip(axes[0], panels, strict=False):
        ax.plot(lam, vals, lw=0.8)
        ax.set_title(title)
    ax = axes[0, -1]
    ax.plot(lam, np.asarray(ds[path.criterion]), color="k")
    ax.set_title(path.criterion.upper())
    for a in axes[0]:
        a.axvline(best, color="0.5", ls="--", lw=0.8)
        a.set_xlabel("lambda")
        if x_log:
            a.set_xscale("log")
    fig.tight_layout()
    return fig
