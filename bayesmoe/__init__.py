"""bayesmoe: Bayesian mixture-of-experts models for NumPyro, optax and ArviZ."""

from bayesmoe import datasets, experts, gates, priors
from bayesmoe.distributions import MixtureOfExperts
from bayesmoe.model import MoE, Prediction, Simulation

__version__ = "0.1.0"


def enable_x64(enable: bool = True) -> None:
    """Use float64 throughout (for estimation studies); call before creating arrays."""
    import jax

    jax.config.update("jax_enable_x64", bool(enable))


__all__ = ["MoE", "MixtureOfExperts", "Prediction", "Simulation", "datasets", "enable_x64",
           "experts", "gates", "priors"]
