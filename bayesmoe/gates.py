r"""Gating networks: the expert probabilities :math:`g_k(x)` of a mixture of experts.

Every gate has a pure ``log_weights(params, x) -> (n, K)`` returning normalised log gate probabilities
(each row log-sums to 0) and a NumPyro method ``sample(n_experts, scale, priors)`` that declares its
sample sites with priors and returns the parameters keyed by the site names of ``DESIGN.md``.

* :class:`Softmax`: :math:`g_k(x) = \mathrm{softmax}_k(\beta_{1k}^\top x + \beta_{0k})`, the last expert
  the reference (:math:`\beta_{1K} = 0, \beta_{0K} = 0`) [Nguyen, Nguyen & Ho 2023, arXiv 2305.03288, eq. 1].
* :class:`ModifiedSoftmax`: :math:`g_k(x) = \mathrm{softmax}_k(\beta_{1k}^\top M(x) + \beta_{0k})` with
  :math:`M` bounded and nonlinear [Nguyen et al. 2023, arXiv 2310.14188].
* :class:`Gaussian`: :math:`g_k(x) = \pi_k N(x | c_k, \Gamma_k) / \sum_j \pi_j N(x | c_j, \Gamma_j)`
  [arXiv 2305.07572; the forward conditional of GLLiM].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax.scipy.linalg import solve_triangular
from jax.scipy.special import logsumexp

from bayesmoe import priors as _priors
from bayesmoe._validation import check_positive_int

Params = dict[str, Any]

_TRANSFORMS: dict[str, Callable[[jnp.ndarray], jnp.ndarray]] = {
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
}


# ----------------------------------------------------------------------------- pure math
def softmax_log_weights(intercept: jnp.ndarray, coef: jnp.ndarray,
                        features: jnp.ndarray) -> jnp.ndarray:
    r"""log softmax_k(intercept_k + coef_k . f(x)) for features (n, p), intercept (K,), coef (K, p)."""
    logits = features @ jnp.swapaxes(coef, -1, -2) + intercept[..., None, :]
    return jax.nn.log_softmax(logits, axis=-1)


def gaussian_log_components(weight: jnp.ndarray, loc: jnp.ndarray, scale_tril: jnp.ndarray,
                            x: jnp.ndarray) -> jnp.ndarray:
    r"""log pi_k + log N(x_i | c_k, L_k L_k^T), shape (n, K), for weight (K,), loc (K, d), L (K, d, d)."""
    d = x.shape[-1]
    diff = x[:, None, :] - loc[None, :, :]  # (n, K, d)
    # solve L_k z = diff for every k (triangular solve, batched over K)
    z = jax.vmap(lambda L, r: solve_triangular(L, r.T, lower=True).T, in_axes=(0, 1),
                 out_axes=1)(scale_tril, diff)
    half_logdet = jnp.sum(jnp.log(jnp.abs(jnp.diagonal(scale_tril, axis1=-2, axis2=-1))), -1)
    log_norm = -0.5 * jnp.sum(z**2, -1) - half_logdet - 0.5 * d * math.log(2 * math.pi)
    return jnp.log(weight) + log_norm


def gaussian_log_components_diag(weight: jnp.ndarray, loc: jnp.ndarray, scale: jnp.ndarray,
                                 x: jnp.ndarray) -> jnp.ndarray:
    r"""As :func:`gaussian_log_components` with diagonal covariance, ``scale`` (K, d) sds."""
    d = x.shape[-1]
    z = (x[:, None, :] - loc[None]) / scale[None]
    log_norm = (-0.5 * jnp.sum(z**2, -1) - jnp.sum(jnp.log(scale), -1)
                - 0.5 * d * math.log(2 * math.pi))
    return jnp.log(weight) + log_norm


def _free_rows(name: str, k_free: int, shape_tail: tuple[int, ...], default, priors):
    return numpyro.sample(f"{name}_free", _priors.resolve(priors, name, default,
                                                          (k_free, *shape_tail)))


def _with_reference_row(free: jnp.ndarray) -> jnp.ndarray:
    """Append the reference (last) row of zeros."""
    return jnp.concatenate([free, jnp.zeros((1, *free.shape[1:]), free.dtype)], axis=0)


# ----------------------------------------------------------------------------- softmax gates
class ModifiedSoftmax:
    r"""Modified softmax gate :math:`g_k(x) = \mathrm{softmax}_k(\beta_{1k}^\top M(x) + \beta_{0k})`.

    ``transform`` is ``"tanh"``, ``"sigmoid"`` (element-wise) or a callable mapping (n, d) to (n, q).
    **M must be bounded and nonlinear**: that is what removes the interaction between gate and expert
    parameters which slows the estimation rates of plain softmax gating with multinomial-logistic
    experts (Nguyen et al. 2023, arXiv 2310.14188, modified softmax gating). Polynomials and the
    identity do not qualify; the condition is documented, not checked.

    The last expert is the reference: :math:`\beta_{0K} = 0, \beta_{1K} = 0`. Sites:
    ``gate_intercept_free`` (K-1,), ``gate_coef_free`` (K-1, q) and the deterministic
    ``gate_intercept`` (K,), ``gate_coef`` (K, q) with the zero reference row.
    """

    kind = "softmax"

    def __init__(self, transform: str | Callable = "tanh"):
        if isinstance(transform, str):
            if transform not in _TRANSFORMS:
                raise ValueError(f"`transform` must be one of {sorted(_TRANSFORMS)} or a callable, "
                                 f"got {transform!r}")
            self.transform_name = transform
            self._transform = _TRANSFORMS[transform]
        elif callable(transform):
            self.transform_name = getattr(transform, "__name__", "custom")
            self._transform = transform
        else:
            raise ValueError(f"`transform` must be a string or a callable, got {transform!r}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(transform={self.transform_name!r})"

    def features(self, x: jnp.ndarray) -> jnp.ndarray:
        """The gate's regressors M(x), shape (n, q)."""
        return self._transform(x)

    def n_features(self, d: int) -> int:
        return int(jax.eval_shape(self.features, jax.ShapeDtypeStruct((1, d), jnp.float32))
                   .shape[-1])

    def log_weights(self, params: Params, x: jnp.ndarray) -> jnp.ndarray:
        """Normalised log gate probabilities (n, K)."""
        return softmax_log_weights(jnp.asarray(params["gate_intercept"]),
                                   jnp.asarray(params["gate_coef"]), self.features(x))

    def sample(self, n_experts: int, scale: _priors.Scale, priors: dict | None = None) -> Params:
        """Declare the gate's sample sites (NumPyro) and return its parameters."""
        q = scale.mean.shape[-1]
        if n_experts == 1:
            zero_b, zero_w = jnp.zeros((1,)), jnp.zeros((1, q))
            return {"gate_intercept": numpyro.deterministic("gate_intercept", zero_b),
                    "gate_coef": numpyro.deterministic("gate_coef", zero_w)}
        infl = _priors.intercept_inflation(scale)
        b = _free_rows("gate_intercept", n_experts - 1, (), dist.Normal(0.0, 5.0 * infl), priors)
        w = _free_rows("gate_coef", n_experts - 1, (q,), dist.Normal(0.0, 5.0 / scale.sd), priors)
        return {"gate_intercept": numpyro.deterministic("gate_intercept", _with_reference_row(b)),
                "gate_coef": numpyro.deterministic("gate_coef", _with_reference_row(w))}

    def free_params(self, params: Params) -> Params:
        """Sample-site values (free rows) of full parameters, in the reference gauge.

        Leading batch axes (e.g. stacked draws: intercept (S, K), coef (S, K, q)) are kept.
        """
        b = jnp.asarray(params["gate_intercept"])
        w = jnp.asarray(params["gate_coef"])
        # re-express in the reference gauge (the likelihood is unchanged)
        b, w = b - b[..., -1:], w - w[..., -1:, :]
        if b.shape[-1] == 1:
            return {}
        return {"gate_intercept_free": b[..., :-1], "gate_coef_free": w[..., :-1, :]}

    def n_params(self, n_experts: int, d: int) -> int:
        return (n_experts - 1) * (self.n_features(d) + 1)

    def param_dims(self, d: int) -> dict[str, tuple[str, ...]]:
        feat = "feature" if self.n_features(d) == d else "gate_feature"
        return {"gate_intercept": ("expert",), "gate_coef": ("expert", feat),
                "gate_intercept_free": ("expert_free",),
                "gate_coef_free": ("expert_free", feat)}


class Softmax(ModifiedSoftmax):
    r"""Softmax gate :math:`g_k(x) = \mathrm{softmax}_k(\beta_{1k}^\top x + \beta_{0k})`.

    Identifiable only up to a common translation of all gate parameters; the **last expert is the
    reference** (:math:`\beta_{0K} = 0`, :math:`\beta_{1K} = 0`) as in arXiv 2305.03288. Sites as
    in :class:`ModifiedSoftmax` with :math:`M` the identity.
    """

    def __init__(self):
        self.transform_name = "identity"
        self._transform = lambda x: x

    def __repr__(self) -> str:
        return "Softmax()"

    def n_features(self, d: int) -> int:
        return d


# ----------------------------------------------------------------------------- Gaussian gate
class Gaussian:
    r"""Gaussian gate :math:`g_k(x) = \pi_k N(x|c_k,\Gamma_k) / \sum_j \pi_j N(x|c_j,\Gamma_j)`.

    Computed in log space (log-sum-exp). ``covariance="diag"`` (default) has sites ``gate_weight``
    (K, simplex), ``gate_loc`` (K, d), ``gate_scale`` (K, d; standard deviations);
    ``covariance="full"`` samples ``gate_scale`` and ``gate_corr_chol`` (K, d, d; LKJ) and exposes the
    deterministic ``gate_cov`` (K, d, d) = diag(s) L L^T diag(s). ``log_weights`` accepts either
    ``gate_cov`` or ``gate_scale`` (+ ``gate_corr_chol``). Reference: arXiv 2305.07572 (GLLiM forward
    conditional); ``MoE(..., joint=True)`` adds :math:`\log p(x) = \log\sum_k \pi_k N(x|c_k,\Gamma_k)`.
    """

    kind = "gaussian"

    def __init__(self, covariance: str = "diag"):
        if covariance not in ("diag", "full"):
            raise ValueError(f"`covariance` must be 'diag' or 'full', got {covariance!r}")
        self.covariance = covariance

    def __repr__(self) -> str:
        return f"Gaussian(covariance={self.covariance!r})"

    def features(self, x: jnp.ndarray) -> jnp.ndarray:
        return x

    def n_features(self, d: int) -> int:
        return d

    def log_components(self, params: Params, x: jnp.ndarray) -> jnp.ndarray:
        r"""Unnormalised log gate terms :math:`\log \pi_k + \log N(x_i | c_k, \Gamma_k)`, (n, K)."""
        weight = jnp.asarray(params["gate_weight"])
        loc = jnp.asarray(params["gate_loc"])
        if self.covariance == "diag" or ("gate_cov" not in params and "gate_corr_chol" not in params):
            return gaussian_log_components_diag(weight, loc, jnp.asarray(params["gate_scale"]), x)
        if "gate_corr_chol" in params and "gate_scale" in params:
            tril = jnp.asarray(params["gate_scale"])[..., :, None] * jnp.asarray(
                params["gate_corr_chol"])
        else:
            tril = jnp.linalg.cholesky(jnp.asarray(params["gate_cov"]))
        return gaussian_log_components(weight, loc, tril, x)

    def log_weights(self, params: Params, x: jnp.ndarray) -> jnp.ndarray:
        lc = self.log_components(params, x)
        return lc - logsumexp(lc, axis=-1, keepdims=True)

    def log_marginal(self, params: Params, x: jnp.ndarray) -> jnp.ndarray:
        r""":math:`\log p(x_i) = \log \sum_k \pi_k N(x_i | c_k, \Gamma_k)`, shape (n,)."""
        return logsumexp(self.log_components(params, x), axis=-1)

    def sample(self, n_experts: int, scale: _priors.Scale, priors: dict | None = None) -> Params:
        d = scale.mean.shape[-1]
        K = n_experts
        if K == 1:
            weight = numpyro.deterministic("gate_weight", jnp.ones((1,)))
        else:
            weight = numpyro.sample("gate_weight", _priors.resolve(
                priors, "gate_weight", dist.Dirichlet(jnp.ones(K)), (K,)))
        loc = numpyro.sample("gate_loc", _priors.resolve(
            priors, "gate_loc", dist.Normal(scale.mean, 2.0 * scale.sd), (K, d)))
        sd = numpyro.sample("gate_scale", _priors.resolve(
            priors, "gate_scale", dist.LogNormal(jnp.log(scale.sd / 2), 1.5), (K, d)))
        out = {"gate_weight": weight, "gate_loc": loc, "gate_scale": sd}
        if self.covariance == "full":
            if d == 1:  # a 1 x 1 correlation matrix is 1: nothing to sample
                corr = jnp.ones((K, 1, 1), sd.dtype)
            else:
                corr = numpyro.sample("gate_corr_chol", _priors.resolve(
                    priors, "gate_corr_chol", dist.LKJCholesky(d, 2.0), (K, d, d)))
            tril = sd[..., :, None] * corr
            out["gate_corr_chol"] = corr
            out["gate_cov"] = numpyro.deterministic("gate_cov", tril @ jnp.swapaxes(tril, -1, -2))
        return out

    def free_params(self, params: Params) -> Params:
        out = {"gate_loc": jnp.asarray(params["gate_loc"])}
        if jnp.shape(params["gate_weight"])[0] > 1:
            out["gate_weight"] = jnp.asarray(params["gate_weight"])
        if self.covariance == "full" and "gate_corr_chol" not in params:
            cov = jnp.asarray(params["gate_cov"])
            sd = jnp.sqrt(jnp.diagonal(cov, axis1=-2, axis2=-1))
            corr_chol = jnp.linalg.cholesky(cov / (sd[..., :, None] * sd[..., None, :]))
            out.update(gate_scale=sd, gate_corr_chol=corr_chol)
        else:
            out["gate_scale"] = jnp.asarray(params["gate_scale"])
            if self.covariance == "full":
                out["gate_corr_chol"] = jnp.asarray(params["gate_corr_chol"])
        if out["gate_loc"].shape[-1] == 1:
            out.pop("gate_corr_chol", None)
        return out

    def n_params(self, n_experts: int, d: int) -> int:
        cov = d * (d + 1) // 2 if self.covariance == "full" else d
        return (n_experts - 1) + n_experts * (d + cov)

    def param_dims(self, d: int) -> dict[str, tuple[str, ...]]:
        dims = {"gate_weight": ("expert",), "gate_loc": ("expert", "feature"),
                "gate_scale": ("expert", "feature")}
        if self.covariance == "full":
            dims["gate_cov"] = ("expert", "feature", "feature_bis")
            dims["gate_corr_chol"] = ("expert", "feature", "feature_bis")
        return dims

    def sample_x(self, key: jax.Array, params: Params, n: int) -> jnp.ndarray:
        """Draw n inputs from the gate's Gaussian mixture :math:`\\sum_k \\pi_k N(c_k, \\Gamma_k)`."""
        check_positive_int(n, "n")
        weight = jnp.asarray(params["gate_weight"])
        loc = jnp.asarray(params["gate_loc"])
        kz, kx = jax.random.split(key)
        z = jax.random.categorical(kz, jnp.log(weight), shape=(n,))
        if "gate_cov" in params:
            tril = jnp.linalg.cholesky(jnp.asarray(params["gate_cov"]))
        elif "gate_corr_chol" in params:
            tril = jnp.asarray(params["gate_scale"])[..., :, None] * jnp.asarray(
                params["gate_corr_chol"])
        else:
            tril = jax.vmap(jnp.diag)(jnp.asarray(params["gate_scale"]))
        eps = jax.random.normal(kx, (n, loc.shape[-1]), dtype=loc.dtype)
        return loc[z] + jnp.einsum("nij,nj->ni", tril[z], eps)
