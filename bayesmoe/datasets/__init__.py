"""Data sets: the papers' true models for simulation (and small real data loaders)."""

from bayesmoe.datasets.papers import (
    gaussian_gated,
    glome,
    simulate_dataset,
    softmax_gated_gaussian,
    softmax_gated_gaussian_x,
)

__all__ = ["gaussian_gated", "glome", "simulate_dataset", "softmax_gated_gaussian",
           "softmax_gated_gaussian_x"]
