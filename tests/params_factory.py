"""Random parameter dicts for every gate x expert combination (numpy, site names of DESIGN.md)."""

import numpy as np

import bayesmoe as bm

GATES = {
    "softmax": lambda: bm.gates.Softmax(),
    "modified_tanh": lambda: bm.gates.ModifiedSoftmax("tanh"),
    "modified_sigmoid": lambda: bm.gates.ModifiedSoftmax("sigmoid"),
    "gaussian_diag": lambda: bm.gates.Gaussian("diag"),
    "gaussian_full": lambda: bm.gates.Gaussian("full"),
}
EXPERTS = {
    "gaussian1": lambda: bm.experts.Gaussian(degree=1),
    "gaussian2": lambda: bm.experts.Gaussian(degree=2),
    "categorical3": lambda: bm.experts.Categorical(n_classes=3),
    "studentt1": lambda: bm.experts.StudentT(degree=1),
    "poisson1": lambda: bm.experts.Poisson(degree=1),
}


def random_params(rng, gate, expert, K, d):
    """Random valid parameters, derived from the families' parameter tables."""
    return bm.MoE(gate, expert, K).random_params(rng, d)


def random_y(rng, expert, n):
    if isinstance(expert, bm.experts.Categorical):
        return rng.integers(0, expert.n_classes, size=n)
    if isinstance(expert, bm.experts.Poisson):
        return rng.poisson(3.0, size=n)
    return rng.normal(size=n) * 2


def reference_kinds(gate, expert):
    if isinstance(gate, bm.gates.Gaussian):
        gk, tr = "gaussian", None
    elif isinstance(gate, bm.gates.Softmax):
        gk, tr = "softmax", None
    else:
        gk = "modified"
        tr = {"tanh": np.tanh, "sigmoid": lambda x: 1 / (1 + np.exp(-x))}[gate.transform_name]
    ek = {"Categorical": "categorical", "Poisson": "poisson", "StudentT": "studentt",
          "MultivariateGaussian": "mvgaussian"}.get(
        type(expert).__name__, "gaussian")
    return gk, tr, ek
