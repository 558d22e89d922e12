r"""Gating families: the expert probabilities :math:`g_k(x)` of a mixture of experts.

Every gate subclasses :class:`bayesmoe.family.Gate`: it declares its parameter table once and supplies
``log_weights(params, x) -> (n, K)`` (normalised log gate probabilities), a data-driven start and,
where one exists, a closed-form EM M-step. Everything else (sample sites, priors, checks, dims,
free <-> full maps) is derived from the table.

* :class:`Softmax`: :math:`g_k(x) = \mathrm{softmax}_k(\beta_{1k}^\top x + \beta_{0k})`, the last expert
  the reference (:math:`\beta_{1K} = 0, \beta_{0K} = 0`) [Nguyen, Nguyen & Ho 2023, arXiv 2305.03288, eq. 1].
* :class:`ModifiedSoftmax`: :math:`g_k(x) = \mathrm{softmax}_k(\beta_{1k}^\top M(x) + \beta_{0k})` with
  :math:`M` bounded and nonlinear [Nguyen et al. 2023, arXiv 2310.14188].
* :class:`Gaussian`: :math:`g_k(x) = \pi_k N(x | c_k, \Gamma_k) / \sum_j \pi_j N(x | c_j, \Gamma_j)`
  [arXiv 2305.07572; the forward conditional of GLLiM].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax.scipy.special import logsumexp
from numpyro.distributions import constraints

from bayesmoe import _math
from bayesmoe import priors as _priors
from bayesmoe._blocks import check_covariance
from bayesmoe._solvers import multinomial_newton
from bayesmoe._validation import check_positive_int
from bayesmoe.family import REGRESSOR, Gate, Param

__all__ = ["Gate", "Gaussian", "ModifiedSoftmax", "Softmax", "gaussian_log_components",
           "gaussian_log_components_diag", "softmax_log_weights"]

Params = dict[str, Any]

# the pure functions of the math layer, re-exported where users look for them
softmax_log_weights = _math.softmax_log_weights
gaussian_log_components = _math.gaussian_log_components
gaussian_log_components_diag = _math.gaussian_log_components_diag

_TRANSFORMS: dict[str, Callable[[jnp.ndarray], jnp.ndarray]] = {
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
}


def _alive(rk: jnp.ndarray, n: int) -> jnp.ndarray:
    """Experts with a total responsibility above n * eps (an M-step is defined for them)."""
    return rk > n * jnp.finfo(rk.dtype).eps


# ----------------------------------------------------------------------------- softmax gates
class _LinearSoftmax(Gate):
    r"""Softmax of linear logits of the gate's regressors, the last expert the reference."""

    def param_table(self) -> tuple[Param, ...]:
        return (
            Param("gate_intercept", ("K",), ("expert",), constraints.real,
                  lambda s, z: dist.Normal(0.0, 5.0 * _priors.intercept_inflation(s)),
                  reference="expert", affine="intercept"),
            Param("gate_coef", ("K", "p"), ("expert", REGRESSOR), constraints.real,
                  lambda s, z: dist.Normal(0.0, 5.0 / s.sd), reference="expert", affine="coef"),
        )

    def n_features(self, d: int) -> int:
        return int(jax.eval_shape(self.features, jax.ShapeDtypeStruct((1, d), jnp.float32))
                   .shape[-1])

    def regressor_dim(self, d: int) -> str:
        return "feature" if self.n_features(d) == d else "gate_feature"

    def log_weights(self, params: Params, x: jnp.ndarray) -> jnp.ndarray:
        """Normalised log gate probabilities (n, K)."""
        return _math.softmax_log_weights(jnp.asarray(params["gate_intercept"]),
                                         jnp.asarray(params["gate_coef"]), self.features(x))

    def voronoi_weights(self, params):
        r"""Masses :math:`\exp(\beta_{0k})` of the mixing measure (arXiv 2305.03288, section 1)."""
        return jnp.exp(jnp.asarray(params["gate_intercept"]))

    def voronoi_atoms(self, params):
        return {"beta1": jnp.asarray(params["gate_coef"])}

    def scale_masses(self, params, factor):
        """Masses exp(beta0) times factor: beta0 + log(factor)."""
        return {**params, "gate_intercept": jnp.asarray(params["gate_intercept"]) + jnp.log(factor)}

    def voronoi_orders(self):
        return {"beta1": "r"}

    def em_prepare(self, x, y):
        return _math.with_intercept(self.features(x))

    def em_mstep(self, params, r, x, y, floors, cache, joint):
        r"""Multinomial logistic regression of the responsibilities on :math:`[1, M(x)]` over the K-1
        free rows, by Newton/IRLS with step halving (monotone: a generalised EM step)."""
        design = cache if cache is not None else self.em_prepare(x, y)
        b, w = params["gate_intercept"], params["gate_coef"]
        beta = jnp.concatenate([b[:-1, None], w[:-1]], axis=1)               # (K-1, q+1)
        beta, _, _ = multinomial_newton(beta, design, r, None, 25)
        full = jnp.concatenate([beta, jnp.zeros((1, beta.shape[1]), beta.dtype)], axis=0)
        return {**params, "gate_intercept": full[:, 0], "gate_coef": full[:, 1:]}

    def init_params(self, x, w, floors):
        r"""Logits of a Gaussian classifier with a shared isotropic covariance fitted to the soft
        clusters w: :math:`\log(n_k/n) - |m_k|^2 / 2s^2 + m_k^\top f / s^2`, in the reference gauge."""
        f = self.features(x)
        n = f.shape[0]
        nk = jnp.sum(w, axis=0)
        fm = (w.T @ f) / nk[:, None]
        s2 = jnp.sum(w[:, :, None] * (f[:, None, :] - fm[None]) ** 2) / (n * f.shape[1])
        s2 = jnp.maximum(s2, 1e-6)
        coef = fm / s2
        icpt = jnp.log(nk / n) - 0.5 * jnp.sum(fm**2, 1) / s2
        return {"gate_intercept": icpt - icpt[-1], "gate_coef": coef - coef[-1]}


@dataclasses.dataclass(frozen=True)
class ModifiedSoftmax(_LinearSoftmax):
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

    transform: str | Callable = "tanh"

    def __post_init__(self):
        t = self.transform
        if isinstance(t, str):
            if t not in _TRANSFORMS:
                raise ValueError(f"`transform` must be one of {sorted(_TRANSFORMS)} or a callable, "
                                 f"got {t!r}")
        elif not callable(t):
            raise ValueError(f"`transform` must be a string or a callable, got {t!r}")

    @property
    def transform_name(self) -> str:
        t = self.transform
        return t if isinstance(t, str) else getattr(t, "__name__", "custom")

    def __repr__(self) -> str:
        return f"ModifiedSoftmax(transform={self.transform_name!r})"

    @property
    def label(self) -> str:
        return f"modified softmax gate (M = {self.transform_name})"

    def features(self, x: jnp.ndarray) -> jnp.ndarray:
        """The gate's regressors M(x), shape (n, q)."""
        t = self.transform
        return (_TRANSFORMS[t] if isinstance(t, str) else t)(jnp.asarray(x))

    def spec(self) -> dict:
        out = super().spec()
        if not isinstance(self.transform, str):  # a callable cannot be stored: name it
            out["transform"] = f"<callable {self.transform_name}>"
        return out


@dataclasses.dataclass(frozen=True)
class Softmax(_LinearSoftmax):
    r"""Softmax gate :math:`g_k(x) = \mathrm{softmax}_k(\beta_{1k}^\top x + \beta_{0k})`.

    Identifiable only up to a common translation of all gate parameters; the **last expert is the
    reference** (:math:`\beta_{0K} = 0`, :math:`\beta_{1K} = 0`) as in arXiv 2305.03288. Sites as
    in :class:`ModifiedSoftmax` with :math:`M` the identity: the regressors are x itself (the
    :class:`~bayesmoe.family.Family` defaults of ``features`` and ``feature_map``), so fits may
    standardise x.
    """

    transform_name: ClassVar[str] = "identity"

    def __repr__(self) -> str:
        return "Softmax()"

    @property
    def label(self) -> str:
        return "softmax gate"

    def n_features(self, d: int) -> int:
        return d


# ----------------------------------------------------------------------------- Gaussian gate
@dataclasses.dataclass(frozen=True)
class Gaussian(Gate):
    r"""Gaussian gate :math:`g_k(x) = \pi_k N(x|c_k,\Gamma_k) / \sum_j \pi_j N(x|c_j,\Gamma_j)`.

    Computed in log space (log-sum-exp). ``covariance="diag"`` (default) has sites ``gate_weight``
    (K, simplex), ``gate_loc`` (K, d), ``gate_scale`` (K, d; standard deviations);
    ``covariance="full"`` adds ``gate_corr_chol`` (K, d, d; Cholesky factors of the correlation
    matrices, LKJ prior) and exposes the deterministic ``gate_cov`` (K, d, d) = diag(s) L L^T diag(s).
    ``covariance="block"`` with ``blocks`` (a partition of the features, e.g. ``((0, 1), (2,))``)
    gives block-diagonal covariances (BLoMPE, arXiv 2104.08959): one ``gate_corr_chol_<g>``
    (K, |B_g|, |B_g|) per block of two or more features, so a covariance has
    :math:`\sum_g |B_g|(|B_g|+1)/2` free entries; candidate ``blocks`` come from
    :func:`bayesmoe.selection.detect_blocks`.
    Parameters given with ``gate_cov`` alone are accepted and converted. Reference: arXiv 2305.07572
    (GLLiM forward conditional); ``MoE(..., joint=True)`` adds
    :math:`\log p(x) = \log\sum_k \pi_k N(x|c_k,\Gamma_k)` and has a closed-form EM M-step.
    """

    covariance: str = "diag"
    blocks: tuple | None = None
    models_x: ClassVar[bool] = True

    def __post_init__(self):
        object.__setattr__(self, "blocks", check_covariance(self.covariance, self.blocks, None, "features"))

    def __repr__(self) -> str:
        if self.covariance == "block":
            return f"Gaussian(covariance='block', blocks={self.blocks!r})"
        return f"Gaussian(covariance={self.covariance!r})"

    def _corr_blocks(self) -> list[tuple[int, tuple[int, ...]]]:
        """(g, block) for the blocks with a correlation factor (two or more features)."""
        return [(g, b) for g, b in enumerate(self.blocks or ()) if len(b) > 1]

    def sizes(self, K: int, d: int) -> dict[str, int]:
        out = super().sizes(K, d)
        if self.covariance == "block":
            m = sum(len(b) for b in self.blocks)
            if int(d) != m:
                raise ValueError(f"`blocks` partition {m} features but x has {d} columns: the blocks "
                                 "must partition the features of x")
            out.update({f"b{g}": len(b) for g, b in enumerate(self.blocks)})
        return out

    @property
    def label(self) -> str:
        return f"Gaussian gate ({self.covariance} covariance)"

    def param_table(self) -> tuple[Param, ...]:
        table = (
            Param("gate_weight", ("K",), ("expert",), constraints.simplex,
                  lambda s, z: dist.Dirichlet(jnp.ones(z["K"]))),
            Param("gate_loc", ("K", "d"), ("expert", "feature"), constraints.real,
                  lambda s, z: dist.Normal(s.mean, 2.0 * s.sd), affine="x_loc"),
            Param("gate_scale", ("K", "d"), ("expert", "feature"), constraints.positive,
                  lambda s, z: dist.LogNormal(jnp.log(s.sd / 2), 1.5), floor="x", affine="x_scale"),
        )
        if self.covariance == "full":
            table += (Param("gate_corr_chol", ("K", "d", "d"), ("expert", "feature", "feature_bis"),
                            constraints.corr_cholesky,
                            lambda s, z: dist.LKJCholesky(z["d"], 2.0)),)
        for g, _ in self._corr_blocks():
            table += (Param(f"gate_corr_chol_{g}", ("K", f"b{g}", f"b{g}"),
                            ("expert", f"block{g}", f"block{g}_bis"), constraints.corr_cholesky,
                            lambda s, z, g=g: dist.LKJCholesky(z[f"b{g}"], 2.0)),)
        return table

    def coords(self, names):
        out = super().coords(names)
        if self.covariance in ("full", "block"):
            out["feature_bis"] = list(names)
        for g, b in self._corr_blocks():
            out[f"block{g}"] = [names[i] for i in b] if len(names) > max(b) else list(b)
            out[f"block{g}_bis"] = out[f"block{g}"]
        return out

    def _block_sites(self) -> list[str]:
        return [f"gate_corr_chol_{g}" for g, _ in self._corr_blocks()]

    def canonical(self, params: Params) -> Params:
        """Accept ``gate_cov`` in place of ``gate_scale`` + the correlation factors (full or block
        covariance; for blocks only the entries inside the blocks are read).

        :param params: the user's gate params (``gate_cov`` alone is accepted and converted).
        """
        corr_sites = ["gate_corr_chol"] if self.covariance == "full" else self._block_sites()
        if (self.covariance in ("full", "block") and "gate_cov" in params
                and ("gate_scale" not in params or any(c not in params for c in corr_sites))):
            cov = jnp.asarray(params["gate_cov"], jnp.result_type(float))
            sd = jnp.sqrt(jnp.diagonal(cov, axis1=-2, axis2=-1))
            corr = cov / (sd[..., :, None] * sd[..., None, :])
            params = {**params, "gate_scale": sd}
            if self.covariance == "full":
                params["gate_corr_chol"] = jnp.linalg.cholesky(corr)
            for g, b in self._corr_blocks():
                ix = jnp.asarray(b)
                params[f"gate_corr_chol_{g}"] = jnp.linalg.cholesky(corr[..., ix[:, None], ix[None, :]])
        return params

    def _corr_chol(self, params: Params) -> jnp.ndarray | None:
        """The Cholesky factor of the correlation matrices (..., d, d); None when diagonal. For blocks
        (each sorted) the factors placed on their blocks are lower triangular: the Cholesky factor of
        the block-diagonal correlation matrix."""
        if self.covariance == "full":
            return jnp.asarray(params["gate_corr_chol"])
        if self.covariance != "block":
            return None
        scale = jnp.asarray(params["gate_scale"])
        d = scale.shape[-1]
        out = jnp.broadcast_to(jnp.eye(d, dtype=scale.dtype), scale.shape + (d,))
        for g, b in self._corr_blocks():
            ix = jnp.asarray(b)
            out = out.at[..., ix[:, None], ix[None, :]].set(jnp.asarray(params[f"gate_corr_chol_{g}"],
                                                                         scale.dtype))
        return out

    def derived(self, params: Params) -> Params:
        if self.covariance == "diag":
            return {}
        tril = _math.gaussian_tril(params["gate_scale"], self._corr_chol(params))
        return {"gate_cov": tril @ jnp.swapaxes(tril, -1, -2)}

    def derived_dims(self):
        return {} if self.covariance == "diag" else {"gate_cov": ("expert", "feature", "feature_bis")}

    def _tril(self, params: Params) -> jnp.ndarray | None:
        """Cholesky factor of the full covariances (from the sites, or from ``gate_cov``)."""
        if self.covariance == "diag":
            return None
        if "gate_scale" in params and ("gate_corr_chol" in params or self.covariance == "block"):
            return _math.gaussian_tril(params["gate_scale"], self._corr_chol(params))
        return jnp.linalg.cholesky(jnp.asarray(params["gate_cov"]))

    def log_components(self, params: Params, x: jnp.ndarray) -> jnp.ndarray:
        r"""Unnormalised log gate terms :math:`\log \pi_k + \log N(x_i | c_k, \Gamma_k)`, (n, K).

        :param params: the family's parameters keyed by site name (expert axis K first).
        :param x: inputs (n, d).
        """
        weight = jnp.asarray(params["gate_weight"])
        loc = jnp.asarray(params["gate_loc"])
        tril = self._tril(params)
        if tril is None:
            return _math.gaussian_log_components_diag(weight, loc, jnp.asarray(params["gate_scale"]), x)
        return _math.gaussian_log_components(weight, loc, tril, x)

    def log_weights(self, params: Params, x: jnp.ndarray) -> jnp.ndarray:
        lc = self.log_components(params, x)
        return lc - logsumexp(lc, axis=-1, keepdims=True)

    def x_distribution(self, params: Params) -> dist.Distribution:
        loc = jnp.asarray(params["gate_loc"])
        tril = self._tril(params)
        if tril is None:
            comp = dist.Normal(loc, jnp.asarray(params["gate_scale"])).to_event(1)
        else:
            comp = dist.MultivariateNormal(loc, scale_tril=tril)
        return dist.MixtureSameFamily(dist.Categorical(probs=jnp.asarray(params["gate_weight"])), comp)

    def sample_x(self, key: jax.Array, params: Params, n: int) -> jnp.ndarray:
        """Draw n inputs from the gate's Gaussian mixture :math:`\\sum_k \\pi_k N(c_k, \\Gamma_k)`.

        :param key: a ``jax.random`` key.
        :param params: the family's parameters keyed by site name (expert axis K first).
        :param n: number of inputs to draw.
        """
        check_positive_int(n, "n")
        weight = jnp.asarray(params["gate_weight"])
        loc = jnp.asarray(params["gate_loc"])
        kz, kx = jax.random.split(key)
        z = jax.random.categorical(kz, jnp.log(weight), shape=(n,))
        tril = self._tril(params)
        if tril is None:
            tril = _math.gaussian_tril(params["gate_scale"])
        eps = jax.random.normal(kx, (n, loc.shape[-1]), dtype=loc.dtype)
        return loc[z] + jnp.einsum("nij,nj->ni", tril[z], eps)

    # ------------------------------------------------------------------ Voronoi losses
    def voronoi_weights(self, params):
        r"""Masses :math:`\pi_k` of the mixing measure (arXiv 2305.07572).

        :param params: the family's parameters keyed by site name (expert axis K first).
        """
        return jnp.asarray(params["gate_weight"])

    def voronoi_atoms(self, params):
        r"""Blocks c (location) and :math:`\Gamma` (the covariance, flattened: its Euclidean norm is the
        Frobenius norm; the diagonal for ``covariance="diag"``).

        :param params: the family's parameters keyed by site name (expert axis K first).
        """
        loc = jnp.asarray(params["gate_loc"])
        tril = self._tril(params)
        if tril is None:
            cov = jnp.asarray(params["gate_scale"]) ** 2
        else:
            cov = (tril @ jnp.swapaxes(tril, -1, -2)).reshape(tril.shape[:-2] + (-1,))
        return {"c": loc, "Gamma": cov}

    def voronoi_orders(self):
        return {"c": "r", "Gamma": "r/2"}

    def scale_masses(self, params, factor):
        """Masses pi times factor (a factor keeping the total 1 keeps a simplex).

        :param params: the family's parameters keyed by site name (expert axis K first).
        :param factor: multipliers (K,) of the weights :math:`\\pi_k`.
        """
        return {**params, "gate_weight": jnp.asarray(params["gate_weight"]) * jnp.asarray(factor)}

    def voronoi_cell_orders(self, true_params, orders):
        r"""The two regimes of arXiv 2305.07572: in an over-fitted cell of a true atom with
        :math:`c^*_j \ne 0` (regime 1) the expert slope block ``a`` has the fixed exponent 2; in a cell
        with :math:`c^*_j = 0` (regime 2) it has :math:`\tilde r/2` with :math:`\tilde r(2) = 4`,
        :math:`\tilde r(3) = 6` (equal to :math:`\bar r`, so the cell's r is used). Other blocks as
        declared.

        :param true_params: the true gate params (K_true atoms).
        :param orders: ``{block: order}`` of the families' ``voronoi_orders``.
        """
        out = super().voronoi_cell_orders(true_params, orders)
        if "a" in out:
            zero = jnp.all(jnp.asarray(true_params["gate_loc"]) == 0, axis=-1)      # (..., K_true)
            out["a"] = (jnp.where(zero, 0.5, 0.0), jnp.where(zero, 0.0, 2.0))
        return out

    def _moments(self, params: Params, r, x, floors) -> Params:
        """Weighted proportions, means and (co)variances of x (the joint GLLiM M-step)."""
        n, d = x.shape
        rk = jnp.sum(r, axis=0)
        safe = jnp.where(rk > 0, rk, 1.0)
        alive = _alive(rk, n)
        loc = (r.T @ x) / safe[:, None]
        diff = x[:, None, :] - loc[None]
        floor2 = jnp.broadcast_to(jnp.asarray(floors.get("gate_scale", 0.0), x.dtype), (d,)) ** 2
        # sum(rk) is n, and stays the number of real rows when padding rows carry r = 0 (sharding)
        out = {"gate_weight": rk / jnp.sum(rk),
               "gate_loc": jnp.where(alive[:, None], loc, params["gate_loc"])}
        if self.covariance == "full":
            cov = jnp.einsum("nk,nka,nkb->kab", r, diff, diff) / safe[:, None, None]
            cov = cov + jnp.diag(floor2)
            sd = jnp.sqrt(jnp.diagonal(cov, axis1=-2, axis2=-1))
            corr = jnp.linalg.cholesky(cov / (sd[..., :, None] * sd[..., None, :]))
            out["gate_scale"] = jnp.where(alive[:, None], sd, params["gate_scale"])
            out["gate_corr_chol"] = jnp.where(alive[:, None, None], corr, params["gate_corr_chol"])
        elif self.covariance == "block":  # the full weighted covariance restricted to each block
            cov = jnp.einsum("nk,nka,nkb->kab", r, diff, diff) / safe[:, None, None]
            cov = cov + jnp.diag(floor2)
            sd = jnp.sqrt(jnp.diagonal(cov, axis1=-2, axis2=-1))
            out["gate_scale"] = jnp.where(alive[:, None], sd, params["gate_scale"])
            for g, b in self._corr_blocks():
                ix = jnp.asarray(b)
                sub = cov[:, ix[:, None], ix[None, :]] / (sd[:, ix, None] * sd[:, None, ix])
                site = f"gate_corr_chol_{g}"
                out[site] = jnp.where(alive[:, None, None], jnp.linalg.cholesky(sub), params[site])
        else:
            var = jnp.einsum("nk,nka->ka", r, diff**2) / safe[:, None]
            scale = jnp.sqrt(jnp.maximum(var, floor2))
            out["gate_scale"] = jnp.where(alive[:, None], scale, params["gate_scale"])
        return {**params, **out}

    def em_mstep(self, params, r, x, y, floors, cache, joint):
        r"""Joint (GLLiM) likelihood only, closed form: :math:`\pi_k = r_k/n`, :math:`c_k` the weighted
        mean, :math:`\Gamma_k` the weighted covariance (variances bounded below by the squared floor;
        plus the floor on the diagonal for full covariances). The conditional likelihood has no closed
        form: None (the generic M-step).

        :param params: the family's parameters keyed by site name (expert axis K first).
        :param r: responsibilities (n, K), :math:`r_{ik} = P(z_i = k \mid x_i, y_i)`.
        :param x: inputs (n, d).
        :param y: unused (None).
        :param floors: ``{site name: lower bound}`` of the floored scales.
        :param cache: what :meth:`em_prepare` computed for this run.
        :param joint: whether the gate's term is the joint :math:`\log \pi_k + \log p_k(x_i)`
            (``MoE(..., joint=True)``).
        """
        return self._moments(params, r, x, floors) if joint else None

    def init_params(self, x, w, floors):
        return self._moments(self.neutral_params(w.shape[-1], x.shape[-1], x.dtype), w, x, floors)
