r"""Standard errors and Wald tables of point fits (the ``summary(refit(fit))`` of R's flexmix).

At the estimate :math:`\hat\theta` of a fit, the observed information is minus the Hessian of the
objective the fit maximised (the log-likelihood for ``fit_mle``; the log posterior density for
``fit_map``, i.e. the Laplace approximation). It is computed exactly by automatic differentiation,
in float64, in the model's unconstrained free parametrisation :math:`u` (reference rows dropped,
scales as logs, simplexes by stick-breaking):

.. math::  \hat V_u = \bigl(-\nabla^2_u \ell(\hat u)\bigr)^{-1}, \qquad
           \hat V_\theta = J \hat V_u J^\top, \quad J = \partial\theta / \partial u \big|_{\hat u}

(the delta method back to the reported scale :math:`\theta`: the free sites as sampled, e.g. standard
deviations rather than their logs). The Wald statistics are :math:`z = \hat\theta / \mathrm{se}`,
the two-sided p value :math:`2\{1 - \Phi(|z|)\}` and the interval
:math:`\hat\theta \pm z_{1-\alpha/2}\,\mathrm{se}`.

When :math:`-\nabla^2 \ell` is singular or not positive definite (a weakly identified or boundary fit:
coinciding experts, a gate that separates the data, a scale at its floor), the directions with
eigenvalues :math:`\le 10^{-9}\lambda_{\max}` are left out, the parameters that load on them get no
standard error (NaN), and a :class:`~bayesmoe.FitWarning` names them.
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from scipy import stats

from bayesmoe.inference import _objective as obj
from bayesmoe.inference.result import FitWarning
from bayesmoe.model import MoE

__all__ = ["ParamInference", "STATISTICS", "observed_inference", "summary_table", "summary_xarray"]

#: the columns of :func:`summary_table`
STATISTICS = ("estimate", "std_err", "z", "p_value", "ci_lower", "ci_upper")
_EIG_TOL = 1e-9


class ParamInference(NamedTuple):
    """Estimates and their covariance on the reported scale.

    ``labels`` one row label per free parameter (``"gate_coef[0, x]"``); ``sites`` the reported site
    name of each row; ``index`` the row's index within its site; ``estimate`` (m,); ``vcov`` (m, m)
    (NaN rows and columns for parameters without a standard error); ``shapes`` and ``dims`` of every
    reported site (for xarray); ``coords`` of its dims; ``problem`` the warning message or None.
    """

    labels: list[str]
    sites: list[str]
    index: list[tuple]
    estimate: np.ndarray
    vcov: np.ndarray
    shapes: dict[str, tuple]
    dims: dict[str, tuple]
    coords: dict[str, list]
    problem: str | None


def _reported_name(model, site: str) -> str:
    """The user-facing name of a sample site (``gate_coef_free`` -> ``gate_coef``)."""
    if isinstance(model, MoE):
        for fam in model.families:
            for p in fam.param_table():
                if p.site == site:
                    return p.name
    return site


def _site_dims(model, site: str, shape: tuple, d: int, feature_names: list[str]) -> tuple[tuple, dict]:
    """Dims and coords of a sample site (MoE: the families' free dims; else generic names)."""
    if isinstance(model, MoE):
        dims = model.param_dims(d, free=True).get(site)
        if dims is not None and len(dims) == len(shape):
            full = model.coords(feature_names)
            coords = {}
            for dim, size in zip(dims, shape, strict=True):
                base = dim[:-len("_free")] if dim.endswith("_free") else dim
                labels = list(full.get(base, range(size)))[:size]
                coords[dim] = labels if len(labels) == size else list(range(size))
            return tuple(dims), coords
    dims = tuple(f"{site}_dim_{i}" for i in range(len(shape)))
    return dims, {dim: list(range(n)) for dim, n in zip(dims, shape, strict=True)}


def observed_inference(model: Any, params: dict, x: np.ndarray, y: np.ndarray, *, prior: bool,
                       feature_names: list[str] | None = None) -> ParamInference:
    r"""Covariance of the estimates from the observed information (see the module docstring).

    :param model: the fitted :class:`~bayesmoe.MoE` (or NumPyro model function).
    :param params: the estimate, keyed by site name (full sites for a MoE).
    :param x: the fit's inputs (n, d).
    :param y: the fit's responses (n,).
    :param prior: True for a MAP fit (Hessian of the log posterior), False for maximum likelihood.
    :param feature_names: labels of the feature dim (default ``x0, x1, ...``).
    :returns: a :class:`ParamInference`.
    """
    x = np.asarray(x)
    d = x.shape[1]
    names = list(feature_names) if feature_names else [f"x{j}" for j in range(d)]
    with obj.MODEL_LOCK, jax.enable_x64(True):  # NumPyro's handler stack is global: one trace at a time
        x64 = jnp.asarray(x, jnp.float64)
        if isinstance(model, MoE):
            y64 = jnp.asarray(y, jnp.int32 if model.expert.is_discrete else jnp.float64)
            kwargs = {"data_scale": model.data_scale(x64, y64)}
        else:
            ya = np.asarray(y)
            y64 = jnp.asarray(ya) if ya.dtype.kind in "iub" else jnp.asarray(ya, jnp.float64)
            kwargs = {}
        args = (x64, y64)
        sites = obj.latent_sites(model, args, kwargs)
        free = model.free_params(params) if isinstance(model, MoE) else dict(params)
        theta0 = {k: jnp.asarray(free[k], jnp.float64) for k in sites}
        hess, jac, estimate = _derivatives(model, bool(prior), theta0, args, kwargs)
        hess, jac, estimate = (np.asarray(a, np.float64) for a in (hess, jac, estimate))

    # ravel_pytree's order: sorted site names, C order within a site
    offsets, start = {}, 0
    for site in sorted(theta0):
        m = int(np.size(theta0[site]))
        offsets[site] = np.arange(start, start + m)
        start += m
    order = _site_order(model, theta0)
    perm = np.concatenate([offsets[s] for s in order]) if order else np.zeros(0, int)
    jac, estimate = jac[perm], estimate[perm]
    labels, row_sites, index, shapes, dims, coords = [], [], [], {}, {}, {}
    for site in order:
        shape = tuple(np.shape(theta0[site]))
        name = _reported_name(model, site)
        sdims, scoords = _site_dims(model, site, shape, d, names)
        shapes[name], dims[name] = shape, sdims
        coords.update(scoords)
        for idx in np.ndindex(*shape):
            lab = [str(scoords[dim][i]) for dim, i in zip(sdims, idx, strict=True)]
            labels.append(f"{name}[{', '.join(lab)}]" if lab else name)
            row_sites.append(name)
            index.append(idx)
    vcov, problem = _covariance(hess, jac, labels)
    return ParamInference(labels, row_sites, index, estimate, vcov, shapes, dims, coords, problem)


@partial(jax.jit, static_argnums=(0, 1))
def _derivatives(model, prior: bool, theta0: dict, args: tuple, kwargs: dict):
    """Hessian of the objective in the unconstrained free parametrisation u, Jacobian of the reported
    values (the sample sites) with respect to u, and those values; compiled once per model and
    data shape."""
    tfs = obj.transforms(obj.latent_sites(model, args, kwargs))
    flat0, unravel = ravel_pytree(obj.unconstrain(tfs, theta0))

    def objective(flat):
        return obj.log_joint(model, obj.constrain(tfs, unravel(flat)), args, kwargs, prior)

    def reported(flat):
        return ravel_pytree(obj.constrain(tfs, unravel(flat)))[0]

    return jax.hessian(objective)(flat0), jax.jacfwd(reported)(flat0), reported(flat0)


def _site_order(model, theta0: dict) -> list[str]:
    """Sites in the order of the families' tables (gate first), others after, sorted."""
    first = [k for k in model.param_dims(1, free=True) if k in theta0] if isinstance(model, MoE) else []
    return first + sorted(k for k in theta0 if k not in first)


def _covariance(hess: np.ndarray, jac: np.ndarray, labels: list[str]) -> tuple[np.ndarray, str | None]:
    """:math:`J (-H)^{-1} J^\\top`, leaving out the directions where -H is not positive definite."""
    m = len(labels)
    if not np.all(np.isfinite(hess)):
        return np.full((m, m), np.nan), ("the Hessian of the objective is not finite at the estimate: "
                                         "no standard errors")
    info = -(hess + hess.T) / 2
    lam, vec = np.linalg.eigh(info)
    top = max(float(np.max(np.abs(lam))), np.finfo(float).tiny)
    good = lam > _EIG_TOL * top
    vcov_u = (vec[:, good] / lam[good]) @ vec[:, good].T
    vcov = jac @ vcov_u @ jac.T
    if np.all(good):
        return vcov, None
    load = np.abs(jac @ vec[:, ~good])
    scale = np.maximum(np.linalg.norm(jac, axis=1), np.finfo(float).tiny)
    hit = np.max(load, axis=1) > 1e-6 * scale
    vcov[hit, :] = np.nan
    vcov[:, hit] = np.nan
    kind = "not negative definite" if np.any(lam < -_EIG_TOL * top) else "singular"
    names = [lab for lab, h in zip(labels, hit, strict=True) if h]
    problem = (f"the Hessian of the objective is {kind} at the estimate ({int(np.sum(~good))} of "
               f"{len(lam)} directions; smallest eigenvalue of the information {lam.min():.3g}, "
               f"largest {lam.max():.3g}): the fit is weakly identified or on a boundary (coinciding "
               "experts, a separating gate, a scale at its floor, or not a maximum). No standard "
               f"error for: {', '.join(names) if names else '(none of the reported parameters)'}")
    return vcov, problem


def wald(inf: ParamInference, level: float = 0.95) -> np.ndarray:
    """The table's statistics (m, 6): estimate, std_err, z, p_value, ci_lower, ci_upper.

    :param inf: from :func:`observed_inference`.
    :param level: coverage of the intervals, in (0, 1).
    """
    if not (isinstance(level, (int, float)) and 0 < float(level) < 1):
        raise ValueError(f"`level` must be in (0, 1), got {level!r}")
    se = np.sqrt(np.clip(np.diag(inf.vcov), 0.0, None))
    se = np.where(np.isfinite(np.diag(inf.vcov)), se, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = inf.estimate / se
    p = 2 * stats.norm.sf(np.abs(z))
    q = stats.norm.ppf(0.5 + float(level) / 2)
    return np.stack([inf.estimate, se, z, p, inf.estimate - q * se, inf.estimate + q * se], axis=1)


def summary_table(inf: ParamInference, level: float = 0.95, warn: bool = True):
    """The Wald table as a pandas DataFrame (rows: free parameters; columns :data:`STATISTICS`).

    :param inf: from :func:`observed_inference`.
    :param level: coverage of the intervals, in (0, 1).
    :param warn: issue the :class:`~bayesmoe.FitWarning` of a singular or indefinite Hessian.
    """
    import pandas as pd  # noqa: PLC0415

    values = wald(inf, level)
    if warn and inf.problem:
        warnings.warn(f"summary: {inf.problem}", FitWarning, stacklevel=3)
    df = pd.DataFrame(values, index=pd.Index(inf.labels, name="parameter"), columns=list(STATISTICS))
    df.attrs["level"] = float(level)
    return df


def summary_xarray(inf: ParamInference, level: float = 0.95, warn: bool = True):
    """The Wald table as an xarray Dataset: one variable per site with the site's dims and a
    ``statistic`` dim (coords :data:`STATISTICS`). Arguments as :func:`summary_table`."""
    import xarray as xr  # noqa: PLC0415

    values = wald(inf, level)
    if warn and inf.problem:
        warnings.warn(f"summary: {inf.problem}", FitWarning, stacklevel=3)
    data, start = {}, 0
    for name, shape in inf.shapes.items():
        m = int(np.prod(shape, dtype=np.int64))
        block = values[start:start + m].reshape(*shape, len(STATISTICS))
        data[name] = xr.DataArray(block, dims=(*inf.dims[name], "statistic"))
        start += m
    coords = {k: v for k, v in inf.coords.items()}
    coords["statistic"] = list(STATISTICS)
    return xr.Dataset(data, coords=coords, attrs={"level": float(level)})
