r"""Expert families: the per-expert conditional distributions :math:`p_k(y | x)` of a mixture of experts.

Every expert subclasses :class:`bayesmoe.family.Expert`: it declares its parameter table once and
supplies its log density, its component distribution, the support of y and, where one exists, a
closed-form EM M-step. Everything else is derived from the table. ``poly(x)`` below holds every
monomial of the inputs of total degree 1..``degree`` (``p`` regressors; ``p = d`` when linear).

* :class:`Gaussian`: :math:`y | x, k \sim N(b_k + \mathrm{poly}(x)^\top a_k, \sigma_k^2)` (GLoME / BLoMPE
  polynomial experts, arXiv 2104.02640, 2104.08959; linear experts, arXiv 2305.03288).
* :class:`StudentT`: :math:`y | x, k \sim t_{\nu_k}(b_k + \mathrm{poly}(x)^\top a_k, \sigma_k)`, robust
  regression experts; EM by the ECM algorithm of the scale-mixture representation (Peel & McLachlan
  2000, Robust mixture modelling using the t distribution, Stat. Comput. 10, 339-348).
* :class:`Poisson`: :math:`y | x, k \sim \mathrm{Poisson}(\exp(b_k + \mathrm{poly}(x)^\top a_k))`, log-link
  count experts; IRLS M-step (Grün & Leisch 2008, flexmix's Poisson GLM experts).
* :class:`Categorical`: multinomial logistic, :math:`p_k(y = s | x) = \mathrm{softmax}_s(a_{ks}^\top
  \mathrm{poly}(x) + b_{ks})` with the last class the reference (:math:`a_{kC} = 0, b_{kC} = 0`),
  arXiv 2310.14188.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax.scipy.special import digamma, gammaln
from numpyro.distributions import constraints

from bayesmoe import _feature_maps, _labels, _math
from bayesmoe import priors as _priors
from bayesmoe._blocks import check_covariance
from bayesmoe._solvers import bisect, multinomial_newton, newton_ascent, spd_solve
from bayesmoe._solvers import weighted_least_squares as _wls
from bayesmoe._validation import check_positive_int
from bayesmoe.family import REGRESSOR, Expert, Param

__all__ = ["Categorical", "Expert", "Gaussian", "MultivariateGaussian", "Poisson", "StudentT",
           "feature_names", "monomials", "polynomial_features"]

Params = dict[str, Any]

monomials = _math.monomials
polynomial_features = _math.polynomial_features


def feature_names(names: list[str], degree: int) -> list[str]:
    """Names of the polynomial features, e.g. ``x0``, ``x0^2``, ``x0*x1``.

    :param names: the input names (length d).
    :param degree: the polynomial degree (1: the names themselves).
    """
    out = []
    for m in _math.monomials(len(names), degree):
        counts = {i: m.count(i) for i in sorted(set(m))}
        out.append("*".join(names[i] if c == 1 else f"{names[i]}^{c}" for i, c in counts.items()))
    return out


def _alive(rk: jnp.ndarray, n: int) -> jnp.ndarray:
    return rk > n * jnp.finfo(rk.dtype).eps


def _floor(floors, name: str, dtype) -> jnp.ndarray:
    return jnp.asarray(floors.get(name, 0.0), dtype)


# ----------------------------------------------------------------------------- shared pieces
class _Polynomial:
    """Polynomial regressors of degree 1..``degree`` (the ``degree`` field of the dataclass)."""

    degree: int
    _name: ClassVar[str] = "polynomial"

    def __post_init__(self):
        check_positive_int(self.degree, "degree")

    @property
    def label(self) -> str:
        return f"{self._name} experts" + (f" (degree {self.degree})" if self.degree > 1 else "")

    def features(self, x: jnp.ndarray) -> jnp.ndarray:
        """The experts' regressors poly(x), shape (n, p)."""
        return _math.polynomial_features(x, self.degree)

    def n_features(self, d: int) -> int:
        return len(_math.monomials(d, self.degree))

    def regressor_dim(self, d: int) -> str:
        return "feature" if self.degree == 1 else "term"

    def feature_map(self, x_loc, x_scale):
        """The exact map of the monomials under x -> (x - m)/s (binomial expansion)."""
        return _feature_maps.polynomial_map(x_loc, x_scale, self.degree)

    def regressor_names(self, names):
        return list(names) if self.degree == 1 else feature_names(list(names), self.degree)

    def em_prepare(self, x, y):
        return _math.with_intercept(self.features(x))

    def linear_predictor(self, params: Params, x: jnp.ndarray) -> jnp.ndarray:
        """:math:`b_k + \\mathrm{poly}(x_i)^\\top a_k`, shape (n, K)."""
        f = self.features(x)
        return f @ jnp.swapaxes(jnp.asarray(params["expert_coef"]), -1, -2) + jnp.asarray(
            params["expert_intercept"])


def _location_table(intercept_prior, coef_prior) -> tuple[Param, ...]:
    return (Param("expert_intercept", ("K",), ("expert",), constraints.real, intercept_prior,
                  affine="intercept"),
            Param("expert_coef", ("K", "p"), ("expert", REGRESSOR), constraints.real, coef_prior,
                  affine="coef"))


def _scale_param() -> Param:
    return Param("expert_scale", ("K",), ("expert",), constraints.positive,
                 lambda s, z: dist.LogNormal(jnp.log(s.y_sd / 2), 1.5), floor="y", affine="y_scale")


def _real_location_table() -> tuple[Param, ...]:
    return _location_table(
        lambda s, z: dist.Normal(s.y_mean, 2.5 * s.y_sd * _priors.intercept_inflation(s)),
        lambda s, z: dist.Normal(0.0, 2.5 * s.y_sd / s.sd)) + (_scale_param(),)


def _weighted_regression(params, w, design, y, floor, denom):
    """Weighted least squares per expert and the floored residual scale sum(w e^2) / denom."""
    beta = _wls(design, y, w)                                        # (K, m)
    resid = y[:, None] - design @ beta.T                             # (n, K)
    var = jnp.sum(w * resid**2, axis=0) / jnp.where(denom > 0, denom, 1.0)
    scale = jnp.sqrt(jnp.maximum(var, floor**2))
    alive = _alive(denom, y.shape[0])
    return {**params,
            "expert_intercept": jnp.where(alive, beta[:, 0], params["expert_intercept"]),
            "expert_coef": jnp.where(alive[:, None], beta[:, 1:], params["expert_coef"]),
            "expert_scale": jnp.where(alive, scale, params["expert_scale"])}


# ----------------------------------------------------------------------------- Gaussian
@dataclasses.dataclass(frozen=True)
class Gaussian(_Polynomial, Expert):
    r"""Gaussian expert with polynomial mean: :math:`N(y | b_k + \mathrm{poly}(x)^\top a_k, \sigma_k^2)`.

    Sites: ``expert_intercept`` (K,), ``expert_coef`` (K, p), ``expert_scale`` (K,; standard deviation,
    prior vanishing at 0, bounded below in ML fits). EM M-step: weighted least squares on
    :math:`[1, \mathrm{poly}(x)]`, then :math:`\sigma_k^2 = \sum_i r_{ik} e_{ik}^2 / \sum_i r_{ik}`
    (arXiv 2305.03288).

    :param degree: degree of the polynomial in x of the linear predictor (1: linear; p = number of
        monomials of degree 1..degree in d inputs).
    """

    degree: int = 1
    y_affine: ClassVar[bool] = True
    _name: ClassVar[str] = "Gaussian"

    def __repr__(self) -> str:
        return f"Gaussian(degree={self.degree})"

    def param_table(self):
        return _real_location_table()

    def mean(self, params: Params, x: jnp.ndarray) -> jnp.ndarray:
        """Expert means (n, K).

        :param params: the family's parameters keyed by site name (expert axis K first).
        :param x: inputs (n, d).
        """
        return self.linear_predictor(params, x)

    def component(self, params: Params, x: jnp.ndarray) -> dist.Distribution:
        """The K expert distributions for each observation: a Normal of batch shape (n, K).

        :param params: the family's parameters keyed by site name (expert axis K first).
        :param x: inputs (n, d).
        """
        return dist.Normal(self.mean(params, x), jnp.asarray(params["expert_scale"]))

    def log_prob(self, params: Params, x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
        """log p_k(y_i | x_i), shape (n, K).

        :param params: the family's parameters keyed by site name (expert axis K first).
        :param x: inputs (n, d).
        :param y: responses (n,).
        """
        return self.component(params, x).log_prob(jnp.asarray(y)[:, None])

    def voronoi_atoms(self, params):
        """Blocks a (slopes), b (intercept) and the **variance** sigma^2 (arXiv 2305.03288).

        :param params: the family's parameters keyed by site name (expert axis K first).
        """
        return {"a": jnp.asarray(params["expert_coef"]),
                "b": jnp.asarray(params["expert_intercept"])[..., None],
                "sigma": (jnp.asarray(params["expert_scale"]) ** 2)[..., None]}

    def voronoi_orders(self):
        return {"a": "r/2", "b": "r", "sigma": "r/2"}

    def em_mstep(self, params, r, x, y, floors, cache, joint):
        design = cache if cache is not None else self.em_prepare(x, y)
        floor = _floor(floors, "expert_scale", design.dtype)
        return _weighted_regression(params, r, design, y, floor, jnp.sum(r, axis=0))


# ----------------------------------------------------------------------------- Student t
#: ECM steps of the Student-t start (fixed cluster weights)
_ROBUST_START_STEPS = 5


class _StudentT(dist.StudentT):
    """NumPyro's Student-t with a log density that keeps its digits for large degrees of freedom
    (:func:`bayesmoe._math.student_t_log_density`; NumPyro's subtracts two huge ``gammaln`` values)."""

    def log_prob(self, value):
        return _math.student_t_log_density(value, self.df, self.loc, self.scale)


@dataclasses.dataclass(frozen=True)
class StudentT(_Polynomial, Expert):
    r"""Robust regression expert: location-scale Student t,
    :math:`t_{\nu_k}(y | b_k + \mathrm{poly}(x)^\top a_k, \sigma_k)`.

    ``df=None`` (default) estimates the degrees of freedom per expert (site ``expert_df``, prior
    Gamma(2, 0.1), mean 20); a number fixes them. Sites otherwise as :class:`Gaussian`.

    **EM** (ECM, Peel & McLachlan 2000): with :math:`\delta_{ik} = (y_i - \mu_{ik})/\sigma_k` the E-step
    adds the latent precision weights :math:`u_{ik} = (\nu_k + 1)/(\nu_k + \delta_{ik}^2)`; the
    CM-steps are weighted least squares with weights :math:`r_{ik}u_{ik}`,
    :math:`\sigma_k^2 = \sum_i r_{ik}u_{ik}e_{ik}^2/\sum_i r_{ik}`, and (``df=None``) :math:`\nu_k` the root
    of :math:`-\psi(\nu/2) + \log(\nu/2) + 1 + \sum_i r_{ik}(\log u_{ik} - u_{ik})/\sum_i r_{ik} +
    \psi((\nu_k^{old}+1)/2) - \log((\nu_k^{old}+1)/2) = 0` in [0.05, 1000] (bisection). Each CM-step
    maximises the expected complete-data log-likelihood, so the likelihood never decreases.

    :param degree: degree of the polynomial in x of the linear predictor (1: linear; p = number of
        monomials of degree 1..degree in d inputs).
    :param df: None to estimate :math:`\nu_k` per expert, or a fixed number of degrees of freedom
        > 0.
    """

    degree: int = 1
    df: float | None = None
    y_affine: ClassVar[bool] = True

    def __post_init__(self):
        super().__post_init__()
        if self.df is not None:
            if isinstance(self.df, bool) or not isinstance(self.df, (int, float)) or not (
                    0 < float(self.df) < float("inf")):
                raise ValueError(f"`df` must be a positive finite number or None, got {self.df!r}")

    def __repr__(self) -> str:
        return f"StudentT(degree={self.degree}, df={self.df!r})"

    @property
    def label(self) -> str:
        return "Student-t experts" + (f" (df {self.df:g})" if self.df is not None else "")

    def param_table(self):
        table = _real_location_table()
        if self.df is None:
            table += (Param("expert_df", ("K",), ("expert",), constraints.positive,
                            lambda s, z: dist.Gamma(2.0, 0.1)),)
        return table

    def _df(self, params: Params, dtype) -> jnp.ndarray:
        if self.df is None:
            return jnp.asarray(params["expert_df"], dtype)
        return jnp.asarray(self.df, dtype)

    def mean(self, params: Params, x: jnp.ndarray) -> jnp.ndarray:
        """Expert locations (n, K) (the means where df > 1).

        :param params: the family's parameters keyed by site name (expert axis K first).
        :param x: inputs (n, d).
        """
        return self.linear_predictor(params, x)

    def component(self, params: Params, x: jnp.ndarray) -> dist.Distribution:
        r"""The K expert distributions of every observation: batch shape (n, K).

        :param params: the family's parameters keyed by site name (expert axis K first).
        :param x: inputs (n, d).
        """
        loc = self.linear_predictor(params, x)
        scale = jnp.asarray(params["expert_scale"])
        return _StudentT(jnp.broadcast_to(self._df(params, loc.dtype), scale.shape), loc, scale)

    def log_prob(self, params: Params, x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
        r""":math:`\log p_k(y_i \mid x_i)`, shape (n, K).

        :param params: the family's parameters keyed by site name (expert axis K first).
        :param x: inputs (n, d).
        :param y: responses (n,).
        """
        return self.component(params, x).log_prob(jnp.asarray(y)[:, None])

    def em_mstep(self, params, r, x, y, floors, cache, joint):
        design = cache if cache is not None else self.em_prepare(x, y)
        dtype = design.dtype
        nu = jnp.broadcast_to(self._df(params, dtype), params["expert_scale"].shape)
        delta2 = ((y[:, None] - self.linear_predictor(params, x)) / params["expert_scale"]) ** 2
        u = (nu + 1.0) / (nu + delta2)                                    # (n, K)
        rk = jnp.sum(r, axis=0)
        out = _weighted_regression(params, r * u, design, y, _floor(floors, "expert_scale", dtype), rk)
        if self.df is None:
            c = (1.0 + jnp.sum(r * (jnp.log(u) - u), axis=0) / jnp.where(rk > 0, rk, 1.0)
                 + digamma((nu + 1.0) / 2) - jnp.log((nu + 1.0) / 2))

            def f(log_nu):
                v = jnp.exp(log_nu)
                return -digamma(v / 2) + jnp.log(v / 2) + c

            lo = jnp.full_like(nu, jnp.log(0.05))
            hi = jnp.full_like(nu, jnp.log(1000.0))
            new_nu = jnp.exp(bisect(f, lo, hi))
            out["expert_df"] = jnp.where(_alive(rk, y.shape[0]), new_nu, params["expert_df"])
        return out

    def init_params(self, x, y, w, floors):
        """Weighted least squares on the soft clusters (10 degrees of freedom when estimated), then
        a few of the family's ECM steps with the clusters' weights held fixed: a robust start (the
        t weights :math:`u_{ik}` down-weight outliers that would otherwise inflate the scales and tilt
        the slopes of the least-squares start).

        :param x: inputs (n, d).
        :param y: responses (n,).
        :param w: soft expert weights (n, K), rows summing to 1.
        :param floors: ``{site name: lower bound}`` of the floored scales.
        """
        K = w.shape[-1]
        p0 = self.neutral_params(K, x.shape[-1], x.dtype)
        design = self.em_prepare(x, y)
        out = _weighted_regression(p0, w, design, y, _floor(floors, "expert_scale", x.dtype),
                                   jnp.sum(w, axis=0))
        if self.df is None:
            out["expert_df"] = jnp.full((K,), 10.0, x.dtype)
        return jax.lax.fori_loop(0, _ROBUST_START_STEPS,
                                 lambda _, p: self.em_mstep(p, w, x, y, floors, design, False), out)


# ----------------------------------------------------------------------------- Poisson
class _Poisson(dist.Poisson):
    """NumPyro's Poisson with a CDF that stays accurate and fast for large rates
    (:func:`bayesmoe._math.poisson_cdf`)."""

    def cdf(self, value):
        return _math.poisson_cdf(value, self.rate)


@dataclasses.dataclass(frozen=True)
class Poisson(_Polynomial, Expert):
    r"""Log-link count expert: :math:`y | x, k \sim \mathrm{Poisson}(\lambda_{ik})`,
    :math:`\log\lambda_{ik} = b_k + \mathrm{poly}(x_i)^\top a_k`; y non-negative integers.

    Sites: ``expert_intercept`` (K,; prior :math:`N(\log \bar y, 2.5^2(1 + \ldots))`), ``expert_coef``
    (K, p; prior :math:`N(0, (2.5/s_j)^2)`). EM M-step: per expert, the weighted Poisson regression
    :math:`\max \sum_i r_{ik}(y_i\eta_{ik} - e^{\eta_{ik}})` by Newton/IRLS with step halving (concave:
    negated Hessian :math:`Z^\top \mathrm{diag}(r_{\cdot k}\lambda_{\cdot k}) Z`).

    :param degree: degree of the polynomial in x of the linear predictor (1: linear; p = number of
        monomials of degree 1..degree in d inputs).
    """

    degree: int = 1
    support = constraints.nonnegative_integer
    _name: ClassVar[str] = "Poisson"

    def __repr__(self) -> str:
        return f"Poisson(degree={self.degree})"

    def param_table(self):
        return _location_table(
            lambda s, z: dist.Normal(jnp.log(jnp.maximum(s.y_mean, 1e-3)),
                                     2.5 * _priors.intercept_inflation(s)),
            lambda s, z: dist.Normal(0.0, 2.5 / s.sd))

    def mean(self, params: Params, x: jnp.ndarray) -> jnp.ndarray:
        """Expert rates :math:`\\lambda_{ik}` (n, K).

        :param params: the family's parameters keyed by site name (expert axis K first).
        :param x: inputs (n, d).
        """
        return jnp.exp(self.linear_predictor(params, x))

    def component(self, params: Params, x: jnp.ndarray) -> dist.Distribution:
        r"""The K expert distributions of every observation: batch shape (n, K).

        :param params: the family's parameters keyed by site name (expert axis K first).
        :param x: inputs (n, d).
        """
        return _Poisson(self.mean(params, x))

    def log_prob(self, params: Params, x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
        r""":math:`\log p_k(y_i \mid x_i)`, shape (n, K).

        :param params: the family's parameters keyed by site name (expert axis K first).
        :param x: inputs (n, d).
        :param y: responses (n,).
        """
        eta = self.linear_predictor(params, x)
        y = jnp.asarray(y, eta.dtype)[:, None]
        return y * eta - jnp.exp(eta) - gammaln(y + 1.0)

    def em_mstep(self, params, r, x, y, floors, cache, joint):
        design = cache if cache is not None else self.em_prepare(x, y)
        yf = jnp.asarray(y, design.dtype)
        beta0 = jnp.concatenate([params["expert_intercept"][:, None], params["expert_coef"]], axis=1)

        def fit_one(b, rk):
            def objective(beta):
                eta = design @ beta
                return jnp.sum(rk * (yf * eta - jnp.exp(eta)))

            def derivatives(beta):
                eta = design @ beta
                mu = jnp.exp(eta)
                value = jnp.sum(rk * (yf * eta - mu))
                grad = design.T @ (rk * (yf - mu))
                return value, grad, (design * (rk * mu)[:, None]).T @ design

            return newton_ascent(objective, b, derivatives=derivatives, max_iter=25,
                                 solve=spd_solve)[0]

        beta = jax.vmap(fit_one)(beta0, r.T)
        alive = _alive(jnp.sum(r, axis=0), yf.shape[0])
        return {**params,
                "expert_intercept": jnp.where(alive, beta[:, 0], params["expert_intercept"]),
                "expert_coef": jnp.where(alive[:, None], beta[:, 1:], params["expert_coef"])}


# ----------------------------------------------------------------------------- Categorical
@dataclasses.dataclass(frozen=True)
class Categorical(_Polynomial, Expert):
    r"""Multinomial-logistic expert: :math:`p_k(y = s | x) = \mathrm{softmax}_s(b_{ks} + a_{ks}^\top
    \mathrm{poly}(x))`, last class the reference (zero row); y class labels 0..C-1.

    Sites: ``expert_intercept_free`` (K, C-1), ``expert_coef_free`` (K, C-1, p) and the deterministic
    ``expert_intercept`` (K, C), ``expert_coef`` (K, C, p) with the reference class as zeros. EM
    M-step: per expert, a weighted multinomial logistic regression of one-hot(y) by Newton/IRLS
    (arXiv 2310.14188).

    :param n_classes: C, the number of classes (implied by ``labels`` when given).
    :param degree: degree of the polynomial in x of the logits (1: linear).
    :param labels: the class labels in order (any hashable values), or None for codes 0..C-1;
        learnt from y by the fits when not given.
    """

    n_classes: int | None = None
    degree: int = 1
    labels: tuple | None = None

    def __post_init__(self):
        if self.labels is not None:
            labels = _labels.normalize(self.labels, "labels")
            object.__setattr__(self, "labels", labels)
            if self.n_classes is None:
                object.__setattr__(self, "n_classes", len(labels))
            elif self.n_classes != len(labels):
                raise ValueError(f"`labels` has {len(labels)} labels but `n_classes` is {self.n_classes}")
        if self.n_classes is None:
            raise ValueError("Categorical needs `n_classes` (classes coded 0..C-1) or `labels` (the "
                             "class labels, in order)")
        check_positive_int(self.n_classes, "n_classes", minimum=2)
        super().__post_init__()

    def __repr__(self) -> str:
        lab = "" if self.labels is None else f", labels={list(self.labels)!r}"
        return f"Categorical(n_classes={self.n_classes}, degree={self.degree}{lab})"

    def classes(self) -> list:
        """The class labels (``labels``, or the codes 0..C-1 without labels)."""
        return list(self.labels) if self.labels is not None else list(range(self.n_classes))

    def encode_y(self, y, name="y"):
        """Labels mapped to their codes 0..C-1 (positions in ``labels``); without labels y as is.

        :param y: the responses (n,) (labels of any hashable kind).
        :param name: the argument name used in error messages.
        """
        if self.labels is None:
            return y
        return _labels.encode(y, self.labels, name)

    def for_response(self, y):
        """With the labels of y when they are not the codes 0..C-1 (sorted, or a pandas Categorical's
        categories in order); itself when labels are set or y holds codes."""
        if self.labels is not None:
            return self
        labels = _labels.learn(y, self.n_classes)
        return self if labels is None else dataclasses.replace(self, labels=labels)

    @property
    def label(self) -> str:
        return f"multinomial-logistic experts ({self.n_classes} classes)"

    @property
    def support(self):
        return constraints.integer_interval(0, self.n_classes - 1)

    def sizes(self, K, d):
        return {**super().sizes(K, d), "C": self.n_classes}

    def coords(self, names):
        return {**super().coords(names), "class": self.classes()}

    def param_table(self):
        return (
            Param("expert_intercept", ("K", "C"), ("expert", "class"), constraints.real,
                  lambda s, z: dist.Normal(0.0, 2.5 * _priors.intercept_inflation(s)),
                  reference="class", affine="intercept"),
            Param("expert_coef", ("K", "C", "p"), ("expert", "class", REGRESSOR), constraints.real,
                  lambda s, z: dist.Normal(0.0, 2.5 / s.sd), reference="class", affine="coef"),
        )

    def logits(self, params: Params, x: jnp.ndarray) -> jnp.ndarray:
        """Class logits (n, K, C).

        :param params: the family's parameters keyed by site name (expert axis K first).
        :param x: inputs (n, d).
        """
        return _math.expert_affine(self.features(x), params["expert_coef"], params["expert_intercept"])

    def probs(self, params: Params, x: jnp.ndarray) -> jnp.ndarray:
        """Class probabilities of every expert (n, K, C).

        :param params: the family's parameters keyed by site name (expert axis K first).
        :param x: inputs (n, d).
        """
        return jax.nn.softmax(self.logits(params, x), axis=-1)

    def mean(self, params, x):
        r"""Expert means (n, K) (for class-label experts: None).

        :param params: the family's parameters keyed by site name (expert axis K first).
        :param x: inputs (n, d).
        """
        return None

    def component(self, params: Params, x: jnp.ndarray) -> dist.Distribution:
        r"""The K expert distributions of every observation: batch shape (n, K).

        :param params: the family's parameters keyed by site name (expert axis K first).
        :param x: inputs (n, d).
        """
        return dist.Categorical(logits=self.logits(params, x))

    def log_prob(self, params: Params, x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
        r""":math:`\log p_k(y_i \mid x_i)`, shape (n, K).

        :param params: the family's parameters keyed by site name (expert axis K first).
        :param x: inputs (n, d).
        :param y: responses (n,).
        """
        logp = jax.nn.log_softmax(self.logits(params, x), axis=-1)  # (n, K, C)
        y = jnp.asarray(y, dtype=jnp.int32)
        return jnp.take_along_axis(logp, y[:, None, None], axis=-1)[..., 0]

    def voronoi_atoms(self, params):
        """Blocks a (slopes of every class) and b (intercepts of every class) (arXiv 2310.14188).

        :param params: the family's parameters keyed by site name (expert axis K first).
        """
        a = jnp.asarray(params["expert_coef"])
        return {"a": a.reshape(a.shape[:-2] + (-1,)), "b": jnp.asarray(params["expert_intercept"])}

    def voronoi_orders(self):
        """Over-fitted cells: r/2 on both blocks, as the n^(-1/4) over-fitted rates of arXiv 2310.14188
        (the standard form, not confirmed from the paper's text)."""
        return {"a": "r/2", "b": "r/2"}

    def em_prepare(self, x, y):
        design = _math.with_intercept(self.features(x))
        return design, jax.nn.one_hot(y, self.n_classes, dtype=design.dtype)

    def em_mstep(self, params, r, x, y, floors, cache, joint):
        design, onehot = cache if cache is not None else self.em_prepare(x, y)
        b, a = params["expert_intercept"], params["expert_coef"]             # (K, C), (K, C, p)
        beta = jnp.concatenate([b[:, :-1, None], a[:, :-1]], axis=-1)        # (K, C-1, p+1)
        beta, _, _ = jax.vmap(lambda bk, wk: multinomial_newton(bk, design, onehot, wk, 25))(
            beta, r.T)
        K, _, m = beta.shape
        full = jnp.concatenate([beta, jnp.zeros((K, 1, m), beta.dtype)], axis=1)
        return {**params, "expert_intercept": full[..., 0], "expert_coef": full[..., 1:]}

    def init_params(self, x, y, w, floors):
        """Each soft cluster's class frequencies (+0.5 smoothing) as intercepts, zero slopes.

        :param x: inputs (n, d).
        :param y: responses (n,).
        :param w: soft expert weights (n, K), rows summing to 1.
        :param floors: ``{site name: lower bound}`` of the floored scales.
        """
        K, C, p = w.shape[-1], self.n_classes, self.n_features(x.shape[-1])
        onehot = jax.nn.one_hot(y, C, dtype=x.dtype)
        freq = w.T @ onehot + 0.5                                            # (K, C)
        logf = jnp.log(freq / jnp.sum(freq, axis=1, keepdims=True))
        return {"expert_intercept": logf - logf[:, -1:], "expert_coef": jnp.zeros((K, C, p), x.dtype)}


# ----------------------------------------------------------------------------- multivariate Gaussian
@dataclasses.dataclass(frozen=True)
class MultivariateGaussian(_Polynomial, Expert):
    r"""Gaussian expert of a vector response y (q,) with block-diagonal covariance (BLoMPE,
    Nguyen et al. 2021, arXiv 2104.08959): :math:`y | x, k \sim N_q(b_k + A_k\,\mathrm{poly}(x),
    \Sigma_k)`, :math:`\Sigma_k = \mathrm{diag}(s_k) R_k \mathrm{diag}(s_k)` with the correlation
    :math:`R_k` block diagonal on a partition :math:`\{B_1, \dots, B_G\}` of the q outputs.

    Sites: ``expert_intercept`` (K, q), ``expert_coef`` (K, q, p), ``expert_scale`` (K, q; standard
    deviations, bounded below in ML fits), one ``expert_corr_chol_<g>`` (K, |B_g|, |B_g|; Cholesky
    factor of the block's correlation matrix, LKJ(2) prior) per block of two or more outputs, and the
    derived ``expert_cov`` (K, q, q). A covariance has :math:`\sum_g |B_g|(|B_g|+1)/2` free entries.

    EM M-step (closed form): with the design :math:`Z = [1, \mathrm{poly}(x)]` the same for every
    output, the weighted least-squares coefficients :math:`(Z^\top W_k Z)^{-1} Z^\top W_k Y` maximise
    the expected complete-data log-likelihood whatever the block structure (seemingly unrelated
    regressions with common regressors), and the covariance is the weighted residual covariance
    :math:`S_k = \sum_i r_{ik} e_{ik} e_{ik}^\top / \sum_i r_{ik}` restricted to the blocks, plus the
    squared floor of each output's sd on the diagonal (the floor is 0 without ``scale_floor``).

    ``y`` is (n, q). ``predict`` returns expert means (n, K, q) and the mixture mean (n, q);
    prediction intervals and the plots of fitted curves are for scalar responses only
    (``NotImplementedError``).

    :param n_outputs: q, the number of response columns.
    :param covariance: ``"full"`` (one block), ``"diag"`` (singletons) or ``"block"`` (``blocks``).
    :param blocks: with ``covariance="block"``, a partition of the outputs 0..q-1, e.g. ``((0, 2), (1,))``
        (candidates: :func:`bayesmoe.selection.detect_blocks` on y).
    :param degree: degree of the polynomial in x of the means.
    """

    n_outputs: int
    covariance: str = "full"
    blocks: tuple | None = None
    degree: int = 1

    def __post_init__(self):
        super().__post_init__()
        check_positive_int(self.n_outputs, "n_outputs")
        object.__setattr__(self, "blocks", check_covariance(self.covariance, self.blocks, self.n_outputs,
                                                            "outputs"))

    def __repr__(self) -> str:
        extra = f", blocks={self.blocks!r}" if self.covariance == "block" else ""
        return (f"MultivariateGaussian({self.n_outputs}, covariance={self.covariance!r}{extra}, "
                f"degree={self.degree})")

    @property
    def label(self) -> str:
        return f"multivariate Gaussian experts (q = {self.n_outputs}, {self.covariance} covariance)"

    def output_blocks(self) -> tuple[tuple[int, ...], ...]:
        """The partition of the outputs: singletons (diag), one block (full), or ``blocks``."""
        q = self.n_outputs
        if self.covariance == "diag":
            return tuple((j,) for j in range(q))
        if self.covariance == "full":
            return (tuple(range(q)),)
        return self.blocks

    def _corr_blocks(self) -> list[tuple[int, tuple[int, ...]]]:
        return [(g, b) for g, b in enumerate(self.output_blocks()) if len(b) > 1]

    def sizes(self, K: int, d: int) -> dict[str, int]:
        out = super().sizes(K, d)
        out["q"] = self.n_outputs
        out.update({f"b{g}": len(b) for g, b in self._corr_blocks()})
        return out

    def param_table(self):
        table = (
            Param("expert_intercept", ("K", "q"), ("expert", "output"), constraints.real,
                  lambda s, z: dist.Normal(s.y_mean, 2.5 * s.y_sd * _priors.intercept_inflation(s))),
            Param("expert_coef", ("K", "q", "p"), ("expert", "output", REGRESSOR), constraints.real,
                  lambda s, z: dist.Normal(0.0, 2.5 * s.y_sd / s.sd)),
            Param("expert_scale", ("K", "q"), ("expert", "output"), constraints.positive,
                  lambda s, z: dist.LogNormal(jnp.log(s.y_sd / 2), 1.5), floor="y"),
        )
        for g, _ in self._corr_blocks():
            table += (Param(f"expert_corr_chol_{g}", ("K", f"b{g}", f"b{g}"),
                            ("expert", f"output_block{g}", f"output_block{g}_bis"),
                            constraints.corr_cholesky, lambda s, z, g=g: dist.LKJCholesky(z[f"b{g}"], 2.0)),)
        return table

    def coords(self, names):
        out = super().coords(names)
        out["output"] = list(range(self.n_outputs))
        out["output_bis"] = out["output"]
        for g, b in self._corr_blocks():
            out[f"output_block{g}"] = out[f"output_block{g}_bis"] = list(b)
        return out

    def y_shape(self) -> tuple[int, ...]:
        return (self.n_outputs,)

    def check_y(self, y, n, name="y"):
        """y as a float array (n, q) with finite values (``ValueError`` naming ``name`` otherwise).

        :param y: the responses, array-like or DataFrame (n, q).
        :param n: the number of rows of x.
        :param name: the argument name used in error messages.
        """
        import numpy as np  # noqa: PLC0415

        if y is None:
            raise ValueError(f"`{name}` is required, got None")
        arr = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y)
        if arr.ndim == 1 and self.n_outputs == 1:
            arr = arr[:, None]
        if arr.ndim != 2 or arr.shape[1] != self.n_outputs:
            raise ValueError(f"`{name}` must have shape (n, {self.n_outputs}) for {self!r}, got shape "
                             f"{arr.shape}")
        if arr.shape[0] != n:
            raise ValueError(f"`{name}` has {arr.shape[0]} rows but `x` has {n}")
        if arr.dtype.kind not in "iuf":
            raise ValueError(f"`{name}` must hold real numbers, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"`{name}` contains NaN or infinite value(s)")
        return arr

    def corr_chol(self, params: Params) -> jnp.ndarray:
        """Cholesky factors (..., K, q, q) of the block-diagonal correlation matrices (each block's
        factor placed on its rows and columns; lower triangular since blocks are sorted).

        :param params: the family's parameters keyed by site name (expert axis K first).
        """
        scale = jnp.asarray(params["expert_scale"])
        q = self.n_outputs
        out = jnp.broadcast_to(jnp.eye(q, dtype=scale.dtype), scale.shape + (q,))
        for g, b in self._corr_blocks():
            ix = jnp.asarray(b)
            out = out.at[..., ix[:, None], ix[None, :]].set(
                jnp.asarray(params[f"expert_corr_chol_{g}"], scale.dtype))
        return out

    def scale_tril(self, params: Params) -> jnp.ndarray:
        """Cholesky factors (..., K, q, q) of the expert covariances :math:`\\Sigma_k`.

        :param params: the family's parameters keyed by site name (expert axis K first).
        """
        return _math.gaussian_tril(params["expert_scale"], self.corr_chol(params))

    def derived(self, params):
        tril = self.scale_tril(params)
        return {"expert_cov": tril @ jnp.swapaxes(tril, -1, -2)}

    def derived_dims(self):
        return {"expert_cov": ("expert", "output", "output_bis")}

    def mean(self, params: Params, x: jnp.ndarray) -> jnp.ndarray:
        """Expert means (n, K, q).

        :param params: the family's parameters keyed by site name (expert axis K first).
        :param x: inputs (n, d).
        """
        return _math.expert_affine(self.features(x), params["expert_coef"], params["expert_intercept"])

    def component(self, params: Params, x: jnp.ndarray) -> dist.Distribution:
        """The K expert distributions of every observation: a MultivariateNormal of batch shape (n, K)
        and event shape (q,).

        :param params: the family's parameters keyed by site name (expert axis K first).
        :param x: inputs (n, d).
        """
        return dist.MultivariateNormal(self.mean(params, x), scale_tril=self.scale_tril(params))

    def log_prob(self, params: Params, x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
        """log p_k(y_i | x_i), shape (n, K).

        :param params: the family's parameters keyed by site name (expert axis K first).
        :param x: inputs (n, d).
        :param y: responses (n, q).
        """
        return self.component(params, x).log_prob(jnp.asarray(y)[:, None, :])

    def em_mstep(self, params, r, x, y, floors, cache, joint):
        r"""Closed form (see the class docstring): weighted least squares for the means, the weighted
        residual covariance restricted to the blocks (plus the squared floors) for the covariances.

        :param params: the family's parameters keyed by site name (expert axis K first).
        :param r: responsibilities (n, K).
        :param x: inputs (n, d).
        :param y: responses (n, q).
        :param floors: ``{site name: lower bound}``; ``expert_scale`` a scalar or one per output.
        :param cache: the design :math:`[1, \mathrm{poly}(x)]` (:meth:`em_prepare`).
        :param joint: unused.
        """
        design = cache if cache is not None else self.em_prepare(x, y)
        y = jnp.asarray(y, design.dtype)
        n, q = y.shape
        rk = jnp.sum(r, axis=0)
        alive = _alive(rk, n)
        gram = jnp.einsum("nk,na,nb->kab", r, design, design)
        cross = jnp.einsum("nk,na,nq->kaq", r, design, y)
        beta = jax.vmap(spd_solve)(gram, cross)                                  # (K, m, q)
        resid = y[:, None, :] - jnp.einsum("na,kaq->nkq", design, beta)        # (n, K, q)
        safe = jnp.where(rk > 0, rk, 1.0)
        floor2 = jnp.broadcast_to(_floor(floors, "expert_scale", design.dtype), (q,)) ** 2
        cov = jnp.einsum("nk,nka,nkb->kab", r, resid, resid) / safe[:, None, None] + jnp.diag(floor2)
        sd = jnp.sqrt(jnp.diagonal(cov, axis1=-2, axis2=-1))                     # (K, q)
        out = {**params,
               "expert_intercept": jnp.where(alive[:, None], beta[:, 0, :], params["expert_intercept"]),
               "expert_coef": jnp.where(alive[:, None, None], jnp.swapaxes(beta[:, 1:, :], -1, -2),
                                        params["expert_coef"]),
               "expert_scale": jnp.where(alive[:, None], sd, params["expert_scale"])}
        for g, b in self._corr_blocks():
            ix = jnp.asarray(b)
            sub = cov[:, ix[:, None], ix[None, :]] / (sd[:, ix, None] * sd[:, None, ix])
            site = f"expert_corr_chol_{g}"
            out[site] = jnp.where(alive[:, None, None], jnp.linalg.cholesky(sub), params[site])
        return out
