"""Data sets: the papers' true models for simulation; small real data (``ethanol``, ``motorcycle``)."""

from bayesmoe.datasets.papers import (
    gaussian_gated,
    glome,
    simulate_dataset,
    softmax_gated_gaussian,
    softmax_gated_gaussian_x,
)
from bayesmoe.datasets.real import ethanol, motorcycle
from bayesmoe.datasets.sparse import selection_rates, simulate_sparse

__all__ = ["ethanol", "gaussian_gated", "glome", "motorcycle", "selection_rates", "simulate_dataset",
           "simulate_sparse", "softmax_gated_gaussian", "softmax_gated_gaussian_x"]
