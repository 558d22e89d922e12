"""Saving and loading point fits and posteriors (netCDF through ``h5netcdf``).

A point fit is written as one netCDF file (netCDF4 through ``h5netcdf`` when ``h5py`` is installed,
else netCDF3 through scipy): a variable per parameter site (with the model's dims and
coords), the data it was fitted to (``x`` (obs, feature), ``y`` (obs)), the per-start
log-likelihoods, and JSON attributes: ``bayesmoe_model`` (:meth:`bayesmoe.MoE.spec`, from which
the model is rebuilt) and ``bayesmoe_fit`` (criteria, method, convergence, warnings). A posterior
``DataTree`` from :func:`bayesmoe.sample` is written by xarray itself
(``dt.to_netcdf(path, engine="h5netcdf")``, read back with ``xarray.open_datatree``); its root
attribute ``bayesmoe_model`` rebuilds the model (:func:`model_from_datatree`). Every attribute is a
string or a number: netCDF stores no booleans.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bayesmoe.inference.result import FitData, FitResult
from bayesmoe.model import MoE

__all__ = ["load_fit", "model_from_datatree", "netcdf_engine", "save_fit"]

_FORMAT = "bayesmoe.FitResult/1"
_SCALARS = ("log_likelihood", "log_posterior", "n_params", "n_obs", "aic", "bic", "icl", "n_steps")


def netcdf_engine() -> str:
    """``"h5netcdf"`` (netCDF4/HDF5) when its HDF5 backend ``h5py`` is installed, else ``"scipy"``
    (netCDF3: enough for a point fit, whose attributes are strings and numbers)."""
    import importlib.util  # noqa: PLC0415

    return "h5netcdf" if importlib.util.find_spec("h5py") is not None else "scipy"


def _check_path(path: Any, name: str = "path") -> Path:
    if not isinstance(path, (str, Path)):
        raise TypeError(f"`{name}` must be a str or pathlib.Path, got {type(path).__name__}")
    return Path(path)


def _spec_json(model: MoE) -> str:
    try:
        return json.dumps(model.spec())
    except TypeError as err:
        raise ValueError(f"the model {model!r} has a spec that is not JSON-able ({err}): a family with a "
                         "callable or array field cannot be saved by name; save the params yourself") from err


def save_fit(fit: FitResult, path: Any) -> None:
    """Write a :class:`~bayesmoe.FitResult` of a :class:`~bayesmoe.MoE` to a netCDF file.

    :param fit: the fit (with its model and data, as returned by ``fit_mle`` / ``fit_map``).
    :param path: the file to write (overwritten).
    """
    import xarray as xr  # noqa: PLC0415

    path = _check_path(path)
    if not isinstance(fit, FitResult):
        raise TypeError(f"`fit` must be a bayesmoe.FitResult, got {type(fit).__name__}")
    if not isinstance(fit.model, MoE) or fit.data is None:
        raise ValueError("only fits of a bayesmoe.MoE that carry their data can be saved (fit it with "
                         "bm.fit_mle / bm.fit_map)")
    model, data = fit.model, fit.data
    x = np.asarray(data.x)
    d = x.shape[1]
    names = list(data.feature_names) if data.feature_names else [f"x{j}" for j in range(d)]
    coords = {k: np.asarray(v) for k, v in model.coords(names).items()}
    coords["obs"] = np.arange(x.shape[0])
    coords["start"] = np.arange(len(np.atleast_1d(fit.start_log_likelihoods)))
    dims = model.param_dims(d)
    variables = {}
    for name, value in fit.params.items():
        v = np.asarray(value)
        vdims = dims.get(name)
        if vdims is None or len(vdims) != v.ndim:
            vdims = tuple(f"{name}_dim_{i}" for i in range(v.ndim))
        variables[f"param__{name}"] = xr.DataArray(v, dims=vdims)
    variables["x"] = xr.DataArray(x, dims=("obs", "feature"))
    y = np.asarray(data.y)
    variables["y"] = xr.DataArray(y, dims=("obs", "output")[:y.ndim])  # (n,) or (n, q) responses
    variables["start_log_likelihoods"] = xr.DataArray(np.atleast_1d(np.asarray(fit.start_log_likelihoods,
                                                                               float)), dims=("start",))
    used = {dim for da in variables.values() for dim in da.dims}
    info = {k: (float(getattr(fit, k)) if isinstance(getattr(fit, k), float) else int(getattr(fit, k)))
            for k in _SCALARS}
    info.update(converged=int(bool(fit.converged)), method=str(fit.method), prior=int(bool(fit.prior)),
                warnings=list(fit.warnings),
                feature_names=list(data.feature_names) if data.feature_names else None,
                extra={k: v for k, v in fit.extra.items() if isinstance(v, (int, float, str))})
    attrs = {"bayesmoe_format": _FORMAT, "bayesmoe_model": _spec_json(model),
             "bayesmoe_fit": json.dumps(info),
             "bayesmoe_priors": json.dumps(sorted(model.priors) if model.priors else [])}
    ds = xr.Dataset(variables, coords={k: v for k, v in coords.items() if k in used}, attrs=attrs)
    ds.to_netcdf(path, engine=netcdf_engine())


def load_fit(path: Any, model: MoE | None = None) -> FitResult:
    """Read a fit written by :func:`save_fit`.

    :param path: the file.
    :param model: the model to attach (default: rebuilt from the stored spec). Needed when the model
        had user priors (they are not stored) or a family that cannot be imported by name.
    :returns: the :class:`~bayesmoe.FitResult`, with its model and data.
    """
    import xarray as xr  # noqa: PLC0415

    path = _check_path(path)
    if not path.exists():
        raise FileNotFoundError(f"`path` {str(path)!r} does not exist")
    with xr.open_dataset(path) as ds:
        ds = ds.load()
    if ds.attrs.get("bayesmoe_format") != _FORMAT:
        raise ValueError(f"{str(path)!r} is not a saved bayesmoe fit (attribute bayesmoe_format is "
                         f"{ds.attrs.get('bayesmoe_format')!r}, expected {_FORMAT!r})")
    spec = json.loads(ds.attrs["bayesmoe_model"])
    if model is None:
        if json.loads(ds.attrs.get("bayesmoe_priors", "[]")):
            raise ValueError(f"the saved model had user priors ({ds.attrs['bayesmoe_priors']}), which are "
                             "not stored: pass the model with `model=`")
        model = MoE.from_spec(spec)
    elif not isinstance(model, MoE) or json.loads(_spec_json(model)) != spec:
        raise ValueError(f"`model` {model!r} is not the saved model (spec {spec})")
    info = json.loads(ds.attrs["bayesmoe_fit"])
    params = {str(k)[len("param__"):]: np.asarray(v.values) for k, v in ds.data_vars.items()
              if str(k).startswith("param__")}
    names = info.get("feature_names")
    data = FitData(np.asarray(ds["x"].values), np.asarray(ds["y"].values), tuple(names) if names else None)
    return FitResult(params=params, **{k: info[k] for k in _SCALARS}, converged=bool(info["converged"]),
                     start_log_likelihoods=np.asarray(ds["start_log_likelihoods"].values),
                     method=info["method"], prior=bool(info["prior"]), extra=dict(info.get("extra", {})),
                     warnings=tuple(info.get("warnings", ())), model=model, data=data)


def model_from_datatree(dt: Any, priors: dict | None = None) -> MoE:
    """The :class:`~bayesmoe.MoE` a posterior ``DataTree`` was sampled from (root attribute
    ``bayesmoe_model``, written by :func:`bayesmoe.sample` and :func:`bayesmoe.to_datatree`).

    :param dt: the ``DataTree`` (e.g. read back with ``xarray.open_datatree``).
    :param priors: the user priors of the model, if it had any (they are not stored).
    """
    import xarray as xr  # noqa: PLC0415

    if not isinstance(dt, xr.DataTree):
        raise TypeError(f"`dt` must be an xarray DataTree (from bayesmoe.sample), got {type(dt).__name__}")
    spec = dt.attrs.get("bayesmoe_model")
    if spec is None and "posterior" in dt.children:
        spec = dt["posterior"].attrs.get("bayesmoe_model")
    if spec is None:
        raise ValueError("`dt` has no `bayesmoe_model` attribute: it was not made by bayesmoe.sample or "
                         "bayesmoe.to_datatree; pass the model itself where one is needed (model=...)")
    return MoE.from_spec(json.loads(spec) if isinstance(spec, str) else dict(spec), priors=priors)
