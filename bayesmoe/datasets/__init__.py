"""Data sets: the papers' true models for simulation (and small real data loaders)."""

from bayesmoe.datasets.papers import (
    gaussian_gated,
    glome,
    simulate_dataset,
    softmax_gated_gaussian,
    softmax_gated_gaussian_x,
)
from bayesmoe.datasets.sparse import selection_rates, simulate_sparse

__all__ = ["gaussian_gated", "glome", "selection_rates", "simulate_dataset", "simulate_sparse",
           "softmax_gated_gaussian", "softmax_gated_gaussian_x"]
