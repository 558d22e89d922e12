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
}


def random_params(rng, gate, expert, K, d):
    p = {}
    if isinstance(gate, bm.gates.Gaussian):
        w = rng.dirichlet(np.ones(K) * 2)
        p["gate_weight"] = w
        p["gate_loc"] = rng.normal(size=(K, d))
        p["gate_scale"] = rng.uniform(0.5, 1.5, size=(K, d))
        if gate.covariance == "full":
            covs = []
            for k in range(K):
                a = rng.normal(size=(d, d))
                covs.append(a @ a.T + np.diag(p["gate_scale"][k] ** 2))
            p["gate_cov"] = np.stack(covs)
            del p["gate_scale"]
    else:
        p["gate_intercept"] = np.append(rng.normal(size=K - 1), 0.0)
        p["gate_coef"] = np.vstack([rng.normal(size=(K - 1, d)), np.zeros((1, d))])
    pdim = expert.n_features(d)
    if isinstance(expert, bm.experts.Categorical):
        C = expert.n_classes
        b = rng.normal(size=(K, C))
        a = rng.normal(size=(K, C, pdim))
        b[:, -1] = 0.0
        a[:, -1] = 0.0
        p["expert_intercept"], p["expert_coef"] = b, a
    else:
        p["expert_intercept"] = rng.normal(size=K)
        p["expert_coef"] = rng.normal(size=(K, pdim))
        p["expert_scale"] = rng.uniform(0.3, 1.2, size=K)
    return p


def random_y(rng, expert, n):
    if isinstance(expert, bm.experts.Categorical):
        return rng.integers(0, expert.n_classes, size=n)
    return rng.normal(size=n) * 2


def reference_kinds(gate, expert):
    if isinstance(gate, bm.gates.Gaussian):
        gk, tr = "gaussian", None
    elif isinstance(gate, bm.gates.Softmax):
        gk, tr = "softmax", None
    else:
        gk = "modified"
        tr = {"tanh": np.tanh, "sigmoid": lambda x: 1 / (1 + np.exp(-x))}[gate.transform_name]
    ek = "categorical" if isinstance(expert, bm.experts.Categorical) else "gaussian"
    return gk, tr, ek
