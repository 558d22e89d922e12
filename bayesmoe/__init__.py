"""bayesmoe: Bayesian mixture-of-experts models for NumPyro, optax and ArviZ, and a Flax sparse-MoE layer.

The public names are imported on first use, so that ``import bayesmoe.nn`` (Flax only) does not load
NumPyro or ArviZ.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "MoE": "bayesmoe.model",
    "Prediction": "bayesmoe.model",
    "Simulation": "bayesmoe.model",
    "MixtureOfExperts": "bayesmoe.distributions",
    "Gate": "bayesmoe.family",
    "Expert": "bayesmoe.family",
    "Param": "bayesmoe.family",
    "FitResult": "bayesmoe.inference",
    "FitData": "bayesmoe.inference",
    "predict": "bayesmoe.predictive",
    "posterior_predictive": "bayesmoe.predictive",
    "to_datatree": "bayesmoe.inference",
    "fit_map": "bayesmoe.inference",
    "fit_mle": "bayesmoe.inference",
    "fit_vi": "bayesmoe.inference",
    "sample": "bayesmoe.inference",
    "set_host_device_count": "bayesmoe.inference",
    "set_compilation_cache": "bayesmoe._cache",
    "SamplerWarning": "bayesmoe.inference.diagnostics",
    "FitWarning": "bayesmoe.inference.result",
    "select_n_experts": "bayesmoe.selection",
    "slope_heuristic": "bayesmoe.selection",
    "plot_selection": "bayesmoe.selection",
    "convergence_rate": "bayesmoe.experiments",
    "plot_convergence": "bayesmoe.experiments",
    "LassoPath": "bayesmoe.lasso",
    "lasso_path": "bayesmoe.lasso",
    "plot_lasso_path": "bayesmoe.lasso",
}
_SUBMODULES = ("datasets", "experiments", "experts", "family", "formula", "gates", "gllim", "metrics",
               "penalties", "priors", "plots", "inference", "nn", "selection")


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"bayesmoe.{name}")
    else:
        raise AttributeError(f"module 'bayesmoe' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


def enable_x64(enable: bool = True) -> None:
    """Use float64 throughout (for estimation studies); call before creating arrays.

    :param enable: True for float64 (``jax_enable_x64``), False back to float32.
    """
    import jax

    jax.config.update("jax_enable_x64", bool(enable))


def relabel(idata, method: str = "ecr", **kwargs):
    """Undo label switching in a posterior DataTree (see :mod:`bayesmoe.inference.relabel`).

    :param idata: a ``DataTree`` from :func:`bayesmoe.sample` or :func:`bayesmoe.to_datatree`.
    :param method: ``"ecr"`` (ECR-iterative-1 of Papastamoulis & Iliopoulos 2010, on the MAP
        allocations) or ``"stephens"`` (the KL algorithm of Stephens 2000, "Dealing with label
        switching in mixture models", on the membership probabilities).
    :param kwargs: ``model`` (the :class:`~bayesmoe.MoE`; by default rebuilt from the root attribute
        ``bayesmoe_model``), ``max_iter`` (iteration cap, default 100) and ``chunk`` (draws whose
        memberships are computed at once); see :func:`bayesmoe.inference.relabel.relabel`.
    """
    from bayesmoe.inference.relabel import relabel as _relabel

    return _relabel(idata, method=method, **kwargs)


__all__ = sorted([*_LAZY, *(m for m in _SUBMODULES if m != "inference"), "enable_x64", "relabel"])
