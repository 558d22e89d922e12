"""bayesmoe: Bayesian mixture-of-experts models for NumPyro, optax and ArviZ."""

from bayesmoe import datasets, experts, gates, priors
from bayesmoe.distributions import MixtureOfExperts
from bayesmoe.inference import FitResult, fit_map, fit_mle, sample, set_host_device_count
from bayesmoe.model import MoE, Prediction, Simulation

__version__ = "0.1.0"


def enable_x64(enable: bool = True) -> None:
    """Use float64 throughout (for estimation studies); call before creating arrays."""
    import jax

    jax.config.update("jax_enable_x64", bool(enable))


def relabel(idata, method: str = "ecr", **kwargs):
    """Undo label switching in a posterior DataTree (see :mod:`bayesmoe.inference.relabel`)."""
    from bayesmoe.inference.relabel import relabel as _relabel

    return _relabel(idata, method=method, **kwargs)


__all__ = ["FitResult", "MixtureOfExperts", "MoE", "Prediction", "Simulation", "datasets",
           "enable_x64", "experts", "fit_map", "fit_mle", "gates", "priors", "relabel", "sample",
           "set_host_device_count"]
