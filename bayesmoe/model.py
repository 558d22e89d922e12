r"""The ready-made mixture-of-experts model: gate + expert + priors -> a NumPyro model.

.. math::  p(y | x) = \sum_{k=1}^K g_k(x; \theta_g)\, p_k(y | x; \theta_k)

``MoE(gate, expert, n_experts)`` is a callable NumPyro model ``model(x, y=None)`` usable with any
``numpyro.infer`` API, plus pure helpers on a params dict keyed by the site names of DESIGN.md:
``log_likelihood``, ``predict``, ``simulate``, ``n_params``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import logsumexp

from bayesmoe import experts as _experts
from bayesmoe import gates as _gates
from bayesmoe import priors as _priors
from bayesmoe._validation import as_x, as_y_labels, as_y_real, check_positive_int, is_traced
from bayesmoe.distributions import MixtureOfExperts

Params = dict[str, Any]


class Prediction(NamedTuple):
    """What the model predicts at x.

    gate_probs (n, K); expert_mean (n, K) for Gaussian experts (None otherwise); expert_probs
    (n, K, C) for Categorical experts (None otherwise); mean (n,) the mixture mean (None for
    Categorical); class_probs (n, C) the mixture's class probabilities (None for Gaussian).
    """

    gate_probs: jnp.ndarray
    expert_mean: jnp.ndarray | None
    expert_probs: jnp.ndarray | None
    mean: jnp.ndarray | None
    class_probs: jnp.ndarray | None


class Simulation(NamedTuple):
    """Simulated responses ``y`` (n,) and the expert ``z`` (n,) each was drawn from."""

    y: jnp.ndarray
    z: jnp.ndarray


class DataScale(NamedTuple):
    """Scales of the gate's and the experts' regressors (see :mod:`bayesmoe.priors`)."""

    gate: _priors.Scale
    expert: _priors.Scale


_GATES = (_gates.ModifiedSoftmax, _gates.Gaussian)
_EXPERTS = (_experts.Gaussian, _experts.Categorical)


class MoE:
    """A mixture-of-experts NumPyro model.

    :param gate: ``bm.gates.Softmax()``, ``ModifiedSoftmax(transform)`` or ``Gaussian(covariance)``.
    :param expert: ``bm.experts.Gaussian(degree)`` or ``Categorical(n_classes)``.
    :param n_experts: K >= 1.
    :param priors: optional ``{site name: numpyro Distribution}`` overriding default priors
        (see :mod:`bayesmoe.priors` for the defaults and the data-scaling rule).
    :param joint: Gaussian gate only: also model the inputs, adding
        :math:`\\log p(x) = \\log\\sum_k \\pi_k N(x | c_k, \\Gamma_k)` as the observed site ``x`` (the
        GLLiM joint likelihood of arXiv 2305.07572).

    Calling ``model(x, y=None)`` declares the sample sites (``gate_*``, ``expert_*``) and the observed
    site ``y`` under the plate ``obs``. The keyword ``data_scale`` (from :meth:`data_scale`) fixes the
    prior scaling; by default it is computed from the ``x`` and ``y`` given.
    """

    def __init__(self, gate, expert, n_experts: int, priors: dict | None = None,
                 joint: bool = False):
        if not isinstance(gate, _GATES):
            raise ValueError("`gate` must be a bayesmoe gate (bm.gates.Softmax(), ModifiedSoftmax(), "
                             f"Gaussian()), got {gate!r}")
        if not isinstance(expert, _EXPERTS):
            raise ValueError("`expert` must be a bayesmoe expert (bm.experts.Gaussian(), "
                             f"Categorical()), got {expert!r}")
        self.n_experts = check_positive_int(n_experts, "n_experts")
        if joint and not isinstance(gate, _gates.Gaussian):
            raise ValueError("`joint=True` needs a Gaussian gate (it adds log p(x) of the gate's "
                             f"Gaussian mixture), got {gate!r}")
        self.gate, self.expert, self.priors, self.joint = gate, expert, priors, bool(joint)
        if priors is not None:
            if not isinstance(priors, dict):
                raise ValueError(f"`priors` must be a dict of site name -> Distribution, got "
                                 f"{type(priors).__name__}")
            known = self._prior_names()
            unknown = sorted(set(priors) - known)
            if unknown:
                raise ValueError(f"`priors` has unknown site name(s) {unknown}; known: "
                                 f"{sorted(known)}")

    def __repr__(self) -> str:
        j = ", joint=True" if self.joint else ""
        return f"MoE({self.gate!r}, {self.expert!r}, n_experts={self.n_experts}{j})"

    # ------------------------------------------------------------------ data handling
    @property
    def is_classifier(self) -> bool:
        return isinstance(self.expert, _experts.Categorical)

    def _prior_names(self) -> set[str]:
        names = {"expert_intercept", "expert_coef"}
        if isinstance(self.expert, _experts.Gaussian):
            names.add("expert_scale")
        if isinstance(self.gate, _gates.Gaussian):
            names |= {"gate_weight", "gate_loc", "gate_scale"}
            if self.gate.covariance == "full":
                names.add("gate_corr_chol")
        else:
            names |= {"gate_intercept", "gate_coef"}
        return names

    def check_data(self, x, y=None) -> tuple[np.ndarray, np.ndarray | None]:
        """Validate and convert ``x`` (n, d) and ``y`` (n,); raises ValueError naming the argument."""
        x = as_x(x, "x")
        if y is None:
            return x, None
        if self.is_classifier:
            return x, as_y_labels(y, x.shape[0], self.expert.n_classes, "y")
        return x, as_y_real(y, x.shape[0], "y")

    def _prepare(self, x, y=None):
        if is_traced(x) or is_traced(y):
            x = jnp.asarray(x)
            return (x[:, None] if x.ndim == 1 else x), y
        x, y = self.check_data(x, y)
        x = jnp.asarray(x, dtype=jnp.result_type(float))
        if y is not None:
            y = jnp.asarray(y) if self.is_classifier else jnp.asarray(y, dtype=x.dtype)
        return x, y

    def data_scale(self, x, y=None) -> DataScale:
        """The data scales the default priors are stated in (see :mod:`bayesmoe.priors`)."""
        x, y = self._prepare(x, y)
        y_for_scale = y if self.expert.uses_y_scale() else None
        return DataScale(_priors.data_scale(self.gate.features(x), None),
                         _priors.data_scale(self.expert.features(x), y_for_scale))

    # ------------------------------------------------------------------ the NumPyro model
    def __call__(self, x, y=None, *, data_scale: DataScale | None = None):
        x, y = self._prepare(x, y)
        scale = data_scale if data_scale is not None else self.data_scale(x, y)
        params = self.gate.sample(self.n_experts, scale.gate, self.priors)
        params.update(self.expert.sample(self.n_experts, scale.expert, self.priors))
        n = x.shape[0]
        with numpyro.plate("obs", n):
            if self.joint:
                numpyro.sample("x", self._x_distribution(params), obs=x)
            numpyro.sample("y", self.distribution(params, x), obs=y)

    def distribution(self, params: Params, x) -> MixtureOfExperts:
        """The per-observation mixture p(y_i | x_i) as a :class:`MixtureOfExperts` (batch (n,))."""
        return MixtureOfExperts(self.gate.log_weights(params, x), self.expert.component(params, x))

    def _x_distribution(self, params: Params) -> dist.Distribution:
        loc = jnp.asarray(params["gate_loc"])
        if "gate_cov" in params:
            comp = dist.MultivariateNormal(loc, covariance_matrix=jnp.asarray(params["gate_cov"]))
        else:
            comp = dist.Normal(loc, jnp.asarray(params["gate_scale"])).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(probs=jnp.asarray(params["gate_weight"])),
                                      comp)

    # ------------------------------------------------------------------ pure helpers
    def _check_params(self, params: Params, d: int) -> None:
        if not isinstance(params, dict):
            raise ValueError(f"`params` must be a dict keyed by site name, got "
                             f"{type(params).__name__}")
        need = {"expert_intercept", "expert_coef"}
        need |= {"expert_scale"} if not self.is_classifier else set()
        if isinstance(self.gate, _gates.Gaussian):
            need |= {"gate_weight", "gate_loc"}
            if self.gate.covariance == "diag" or "gate_cov" not in params:
                need.add("gate_scale")
        else:
            need |= {"gate_intercept", "gate_coef"}
        missing = sorted(need - set(params))
        if missing:
            raise ValueError(f"`params` is missing site(s) {missing}")
        K = self.n_experts
        for name in need:
            shape = jnp.shape(params[name])
            if not shape or shape[0] != K:
                raise ValueError(f"`params[{name!r}]` must have a leading axis of n_experts = {K}, "
                                 f"got shape {shape}")

    def log_likelihood(self, params: Params, x, y) -> jnp.ndarray:
        r"""Pointwise log-likelihood :math:`\log p(y_i | x_i)` (plus :math:`\log p(x_i)` when
        ``joint``), shape (n,)."""
        x, y = self._prepare(x, y)
        if y is None:
            raise ValueError("`y` is required, got None")
        if not is_traced(x):
            self._check_params(params, x.shape[1])
        return self._log_likelihood(params, x, y)

    def _log_likelihood(self, params: Params, x, y) -> jnp.ndarray:
        lw = self.gate.log_weights(params, x)
        ll = logsumexp(lw + self.expert.log_prob(params, x, y), axis=-1)
        if self.joint:
            ll = ll + self.gate.log_marginal(params, x)
        return ll

    def predict(self, params: Params, x) -> Prediction:
        """Gate probabilities, expert means or class probabilities, and the mixture's prediction."""
        x, _ = self._prepare(x)
        self._check_params(params, x.shape[1])
        g = jnp.exp(self.gate.log_weights(params, x))
        if self.is_classifier:
            ep = self.expert.probs(params, x)
            return Prediction(g, None, ep, None, jnp.einsum("nk,nkc->nc", g, ep))
        em = self.expert.mean(params, x)
        return Prediction(g, em, None, jnp.sum(g * em, axis=-1), None)

    def simulate(self, key: jax.Array, params: Params, x) -> Simulation:
        """Draw y_i ~ p(y | x_i) and report the expert z_i each came from."""
        if not isinstance(key, jax.Array):
            raise ValueError(f"`key` must be a jax.random key (jax.random.key(seed)), got "
                             f"{type(key).__name__}")
        x, _ = self._prepare(x)
        self._check_params(params, x.shape[1])
        y, z = self.distribution(params, x).sample_with_index(key)
        return Simulation(y, z)

    def sample_x(self, key: jax.Array, params: Params, n: int) -> jnp.ndarray:
        """Draw inputs from a Gaussian gate's mixture (the GLLiM generative model of x)."""
        if not isinstance(self.gate, _gates.Gaussian):
            raise ValueError("`sample_x` needs a Gaussian gate: softmax gates do not model x")
        return self.gate.sample_x(key, params, n)

    def n_params(self, d: int) -> int:
        """Number of free parameters for d inputs (for AIC/BIC)."""
        d = check_positive_int(d, "d")
        return self.gate.n_params(self.n_experts, d) + self.expert.n_params(self.n_experts, d)

    def free_params(self, params: Params) -> Params:
        """The sample-site values of full parameters (reference rows dropped, gauge applied): what
        ``numpyro.infer.util.log_density`` and ``init_to_value`` take."""
        out = self.gate.free_params(params)
        out.update(self.expert.free_params(params))
        return out

    def spec(self) -> dict:
        """A JSON-able description of the model (stored in ArviZ attrs); see :meth:`from_spec`."""
        g, e = self.gate, self.expert
        out = {"n_experts": self.n_experts, "joint": self.joint, "expert": type(e).__name__,
               "degree": e.degree}
        if isinstance(g, _gates.Gaussian):
            out.update(gate="Gaussian", covariance=g.covariance)
        elif isinstance(g, _gates.Softmax):
            out.update(gate="Softmax")
        else:
            out.update(gate="ModifiedSoftmax", transform=g.transform_name)
        if isinstance(e, _experts.Categorical):
            out["n_classes"] = e.n_classes
        return out

    @classmethod
    def from_spec(cls, spec: dict, priors: dict | None = None) -> MoE:
        """Rebuild a model from :meth:`spec` (custom callable transforms cannot be rebuilt)."""
        if spec["gate"] == "Gaussian":
            gate = _gates.Gaussian(spec["covariance"])
        elif spec["gate"] == "Softmax":
            gate = _gates.Softmax()
        else:
            gate = _gates.ModifiedSoftmax(spec["transform"])
        if spec["expert"] == "Categorical":
            expert = _experts.Categorical(spec["n_classes"], degree=spec["degree"])
        else:
            expert = _experts.Gaussian(degree=spec["degree"])
        return cls(gate, expert, spec["n_experts"], priors=priors, joint=spec["joint"])

    def param_dims(self, d: int) -> dict[str, tuple[str, ...]]:
        """Named dims of every site (for ArviZ)."""
        dims = self.gate.param_dims(d)
        dims.update(self.expert.param_dims(d))
        return dims
