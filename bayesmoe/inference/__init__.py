"""Workflows that turn a model and data into answers: MAP/MLE, EM, NUTS, relabelling."""

from bayesmoe._cache import configure_default as _configure_compilation_cache
from bayesmoe.inference.convert import to_datatree
from bayesmoe.inference.diagnostics import SamplerWarning
from bayesmoe.inference.map import fit_map, fit_mle
from bayesmoe.inference.mcmc import sample, set_host_device_count
from bayesmoe.inference.result import FitData, FitResult, FitWarning
from bayesmoe.inference.vi import fit_vi

_configure_compilation_cache()  # persistent JAX compilation cache on by default (bayesmoe._cache)

__all__ = ["FitData", "FitResult", "FitWarning", "SamplerWarning", "fit_map", "fit_mle", "fit_vi", "sample",
           "set_host_device_count", "to_datatree"]
