r"""Experts: the per-expert conditional distributions :math:`p_k(y | x)` of a mixture of experts.

* :class:`Gaussian`: :math:`y | x, k \sim N(b_k + \mathrm{poly}(x)^\top a_k, \sigma_k^2)` where
  ``poly`` holds every monomial of the inputs of total degree 1..``degree`` (GLoME / BLoMPE polynomial
  experts, arXiv 2104.02640, 2104.08959; linear experts for ``degree=1``, arXiv 2305.03288).
* :class:`Categorical`: multinomial logistic, :math:`p_k(y = s | x) = \mathrm{softmax}_s(a_{ks}^\top
  \mathrm{poly}(x) + b_{ks})` with the last class the reference (:math:`a_{kC} = 0, b_{kC} = 0`),
  arXiv 2310.14188.

Each expert offers pure functions of a params dict (``features``, ``component``, ``log_prob``,
``mean``) and a NumPyro method ``sample(n_experts, scale, priors)`` declaring its sites.
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from bayesmoe import priors as _priors
from bayesmoe._validation import check_positive_int

Params = dict[str, Any]


def monomials(d: int, degree: int) -> list[tuple[int, ...]]:
    """Index tuples of all monomials of d inputs with total degree 1..degree, by degree then lexically."""
    return [c for k in range(1, degree + 1)
            for c in itertools.combinations_with_replacement(range(d), k)]


def polynomial_features(x: jnp.ndarray, degree: int) -> jnp.ndarray:
    """All monomials of the columns of x (n, d) of total degree 1..degree, shape (n, p)."""
    if degree == 1:
        return x
    cols = [jnp.prod(x[:, list(m)], axis=1) for m in monomials(x.shape[-1], degree)]
    return jnp.stack(cols, axis=1)


def feature_names(names: list[str], degree: int) -> list[str]:
    """Names of the polynomial features, e.g. ``x0``, ``x0^2``, ``x0*x1``."""
    out = []
    for m in monomials(len(names), degree):
        counts = {i: m.count(i) for i in sorted(set(m))}
        out.append("*".join(names[i] if c == 1 else f"{names[i]}^{c}" for i, c in counts.items()))
    return out


class _PolynomialRegressors:
    def __init__(self, degree: int = 1):
        self.degree = check_positive_int(degree, "degree")

    def features(self, x: jnp.ndarray) -> jnp.ndarray:
        """The experts' regressors poly(x), shape (n, p)."""
        return polynomial_features(jnp.asarray(x), self.degree)

    def n_features(self, d: int) -> int:
        return len(monomials(d, self.degree))

    def _feature_dim(self) -> str:
        return "feature" if self.degree == 1 else "term"


class Gaussian(_PolynomialRegressors):
    r"""Gaussian expert with polynomial mean: :math:`N(y | b_k + \mathrm{poly}(x)^\top a_k, \sigma_k^2)`.

    Sites: ``expert_intercept`` (K,), ``expert_coef`` (K, p), ``expert_scale`` (K,; standard deviation,
    prior vanishing at 0). ``p`` counts the monomials of degree 1..``degree`` (``p = d`` when linear).
    """

    kind = "gaussian"

    def __repr__(self) -> str:
        return f"Gaussian(degree={self.degree})"

    def mean(self, params: Params, x: jnp.ndarray) -> jnp.ndarray:
        """Expert means (n, K)."""
        f = self.features(x)
        return f @ jnp.asarray(params["expert_coef"]).T + jnp.asarray(params["expert_intercept"])

    def component(self, params: Params, x: jnp.ndarray) -> dist.Distribution:
        """The K expert distributions for each observation: a Normal of batch shape (n, K)."""
        return dist.Normal(self.mean(params, x), jnp.asarray(params["expert_scale"]))

    def log_prob(self, params: Params, x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
        """log p_k(y_i | x_i), shape (n, K)."""
        return self.component(params, x).log_prob(jnp.asarray(y)[:, None])

    def sample(self, n_experts: int, scale: _priors.Scale, priors: dict | None = None) -> Params:
        K, p = n_experts, scale.mean.shape[-1]
        infl = _priors.intercept_inflation(scale)
        b = numpyro.sample("expert_intercept", _priors.resolve(
            priors, "expert_intercept", dist.Normal(scale.y_mean, 2.5 * scale.y_sd * infl), (K,)))
        a = numpyro.sample("expert_coef", _priors.resolve(
            priors, "expert_coef", dist.Normal(0.0, 2.5 * scale.y_sd / scale.sd), (K, p)))
        s = numpyro.sample("expert_scale", _priors.resolve(
            priors, "expert_scale", dist.LogNormal(jnp.log(scale.y_sd / 2), 1.5), (K,)))
        return {"expert_intercept": b, "expert_coef": a, "expert_scale": s}

    def free_params(self, params: Params) -> Params:
        return {k: jnp.asarray(params[k]) for k in ("expert_intercept", "expert_coef",
                                                    "expert_scale")}

    def n_params(self, n_experts: int, d: int) -> int:
        return n_experts * (self.n_features(d) + 2)

    def param_dims(self, d: int) -> dict[str, tuple[str, ...]]:
        return {"expert_intercept": ("expert",), "expert_coef": ("expert", self._feature_dim()),
                "expert_scale": ("expert",)}

    def uses_y_scale(self) -> bool:
        return True


class Categorical(_PolynomialRegressors):
    r"""Multinomial-logistic expert: :math:`p_k(y = s | x) = \mathrm{softmax}_s(b_{ks} + a_{ks}^\top
    \mathrm{poly}(x))`, last class the reference (zero row).

    Sites: ``expert_intercept_free`` (K, C-1), ``expert_coef_free`` (K, C-1, p) and the deterministic
    ``expert_intercept`` (K, C), ``expert_coef`` (K, C, p) with the reference class as zeros.
    """

    kind = "categorical"

    def __init__(self, n_classes: int, degree: int = 1):
        self.n_classes = check_positive_int(n_classes, "n_classes", minimum=2)
        super().__init__(degree)

    def __repr__(self) -> str:
        return f"Categorical(n_classes={self.n_classes}, degree={self.degree})"

    def logits(self, params: Params, x: jnp.ndarray) -> jnp.ndarray:
        """Class logits (n, K, C)."""
        f = self.features(x)
        return (jnp.einsum("np,kcp->nkc", f, jnp.asarray(params["expert_coef"]))
                + jnp.asarray(params["expert_intercept"]))

    def probs(self, params: Params, x: jnp.ndarray) -> jnp.ndarray:
        """Class probabilities of every expert (n, K, C)."""
        return jax.nn.softmax(self.logits(params, x), axis=-1)

    def component(self, params: Params, x: jnp.ndarray) -> dist.Distribution:
        return dist.Categorical(logits=self.logits(params, x))

    def log_prob(self, params: Params, x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
        logp = jax.nn.log_softmax(self.logits(params, x), axis=-1)  # (n, K, C)
        y = jnp.asarray(y, dtype=jnp.int32)
        return jnp.take_along_axis(logp, y[:, None, None], axis=-1)[..., 0]

    def sample(self, n_experts: int, scale: _priors.Scale, priors: dict | None = None) -> Params:
        K, C, p = n_experts, self.n_classes, scale.mean.shape[-1]
        infl = _priors.intercept_inflation(scale)
        b = numpyro.sample("expert_intercept_free", _priors.resolve(
            priors, "expert_intercept", dist.Normal(0.0, 2.5 * infl), (K, C - 1)))
        a = numpyro.sample("expert_coef_free", _priors.resolve(
            priors, "expert_coef", dist.Normal(0.0, 2.5 / scale.sd), (K, C - 1, p)))
        b_full = jnp.concatenate([b, jnp.zeros((K, 1), b.dtype)], axis=1)
        a_full = jnp.concatenate([a, jnp.zeros((K, 1, p), a.dtype)], axis=1)
        return {"expert_intercept": numpyro.deterministic("expert_intercept", b_full),
                "expert_coef": numpyro.deterministic("expert_coef", a_full)}

    def free_params(self, params: Params) -> Params:
        b = jnp.asarray(params["expert_intercept"])
        a = jnp.asarray(params["expert_coef"])
        # reference-class gauge (probabilities unchanged); leading batch axes are kept
        b, a = b - b[..., -1:], a - a[..., -1:, :]
        return {"expert_intercept_free": b[..., :-1], "expert_coef_free": a[..., :-1, :]}

    def n_params(self, n_experts: int, d: int) -> int:
        return n_experts * (self.n_classes - 1) * (self.n_features(d) + 1)

    def param_dims(self, d: int) -> dict[str, tuple[str, ...]]:
        f = self._feature_dim()
        return {"expert_intercept": ("expert", "class"), "expert_coef": ("expert", "class", f),
                "expert_intercept_free": ("expert", "class_free"),
                "expert_coef_free": ("expert", "class_free", f)}

    def uses_y_scale(self) -> bool:
        return False
