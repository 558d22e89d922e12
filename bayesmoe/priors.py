r"""Default priors, weakly informative and scaled to the data.

The rule follows the spirit of rstanarm's autoscaling: every prior is stated on the scale of the data,
so that the same model gives sensible answers whether ``y`` is in metres or millimetres.

With :math:`\bar y, s_y` the mean and standard deviation of ``y`` and, for every regressor column
:math:`f_j` (a feature of ``x``, a monomial of the polynomial expert, or ``M(x)`` of the modified softmax
gate), :math:`\bar f_j, s_j` its mean and standard deviation:

=====================  =====================================================================
site                   default prior
=====================  =====================================================================
expert_coef            :math:`N(0, (2.5\, s_y / s_j)^2)`
expert_intercept       :math:`N(\bar y, (2.5\, s_y)^2 (1 + \sum_j \bar f_j^2 / s_j^2))`, the prior
                       on the intercept of centred regressors carried over to raw ones
expert_scale           :math:`\mathrm{LogNormal}(\log(s_y / 2), 1.5)`: vanishes at 0, so a MAP fit
                       cannot collapse an expert onto a few points
gate_coef (softmax)    :math:`N(0, (5 / s_j)^2)` on the free rows: a one-sd move of a regressor
                       shifts a log-odds by about 5
gate_intercept         :math:`N(0, 5^2 (1 + \sum_j \bar f_j^2 / s_j^2))` on the free rows
gate_weight            :math:`\mathrm{Dirichlet}(1, \ldots, 1)`
gate_loc               :math:`N(\bar x_j, (2\, s_{x_j})^2)`
gate_scale             :math:`\mathrm{LogNormal}(\log(s_{x_j} / 2), 1.5)`
gate_corr_chol         :math:`\mathrm{LKJCholesky}(d, 2)` (``covariance="full"``)
expert_coef (classes)  :math:`N(0, (2.5 / s_j)^2)`, expert_intercept :math:`N(0, 2.5^2(1 + \ldots))`
=====================  =====================================================================

Any site's prior can be replaced: ``MoE(..., priors={"expert_scale": dist.Gamma(2.0, 1.0)})``.
A scalar (batch-shape ``()``) distribution is broadcast to the site's shape. For the softmax gate
and the multinomial-logistic expert, the prior applies to the free rows (the reference row is fixed).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

__all__ = ["Horseshoe", "Scale", "data_scale", "draw", "horseshoe", "intercept_inflation", "laplace",
           "latent_values", "point_priors", "resolve"]

#: the slope sites of the built-in families (the sites their tables tag ``affine="coef"``)
SLOPE_SITES = ("gate_coef", "expert_coef")

#: lower bound used for data standard deviations that are zero (constant columns)
_SD_FLOOR = 1e-8


class Scale(NamedTuple):
    """Location and scale of the data, the unit every default prior is stated in.

    :ivar mean: regressor means (p,).
    :ivar sd: regressor standard deviations (p,), floored away from 0.
    :ivar y_mean: mean of y (0 when y is not given).
    :ivar y_sd: standard deviation of y (1 when y is not given), floored away from 0.
    """

    mean: jnp.ndarray
    sd: jnp.ndarray
    y_mean: jnp.ndarray
    y_sd: jnp.ndarray


def data_scale(features: jnp.ndarray, y: jnp.ndarray | None) -> Scale:
    """Scale of the regressor columns ``features`` (n, p) and of ``y`` (unit scale when None)."""
    # concrete data are summarised on the host (numpy: no compiled programs), traced data in JAX
    xp = jnp if isinstance(features, jax.core.Tracer) or isinstance(y, jax.core.Tracer) else np
    features = xp.asarray(features)
    mean = xp.mean(features, axis=0)
    sd = xp.maximum(xp.std(features, axis=0), _SD_FLOOR)
    if y is None:
        y_mean, y_sd = xp.zeros((), mean.dtype), xp.ones((), mean.dtype)
    else:
        y = xp.asarray(y, dtype=mean.dtype)
        y_mean = xp.mean(y)
        y_sd = xp.maximum(xp.std(y), _SD_FLOOR)
    return Scale(mean, sd, y_mean, y_sd)


def intercept_inflation(scale: Scale) -> jnp.ndarray:
    r""":math:`\sqrt{1 + \sum_j m_j^2 / s_j^2}`: the intercept sd factor for uncentred regressors.

    An intercept of the centred regression, :math:`a' = a + \sum_j b_j m_j`, with slopes of prior sd
    proportional to :math:`1/s_j`, needs this factor on the intercept's prior sd.

    :param scale: the data's :class:`Scale` (column means :math:`m_j` and sds :math:`s_j`).
    """
    return jnp.sqrt(1.0 + jnp.sum((scale.mean / scale.sd) ** 2))


def resolve(priors: dict | None, name: str, default: dist.Distribution,
            shape: tuple[int, ...]) -> dist.Distribution:
    """The user's prior for site ``name`` if given, else ``default``; broadcast to ``shape``.

    :param priors: the user's ``priors`` dict (site name -> NumPyro distribution or
        :class:`Horseshoe`), or None.
    :param name: the site name.
    :param default: the default prior of the site.
    :param shape: the site's full shape (e.g. (K, d) for slopes).

    The distribution is expanded so that its batch + event shape equals ``shape``; the event
    dims of the result are declared with ``to_event`` so the site has a single log-density.
    """
    d = default if priors is None or name not in priors else priors[name]
    if isinstance(d, Horseshoe):
        return d
    if not isinstance(d, dist.Distribution):
        raise ValueError(f"`priors[{name!r}]` must be a numpyro Distribution, got {type(d).__name__}")
    event_nd = len(d.event_shape)
    batch_shape = shape[: len(shape) - event_nd] if event_nd else shape
    if tuple(d.event_shape) != tuple(shape[len(shape) - event_nd:]):
        raise ValueError(f"`priors[{name!r}]` has event shape {d.event_shape}, the site needs "
                         f"shape {shape}")
    if tuple(d.batch_shape) != tuple(batch_shape):
        try:
            d = d.expand(batch_shape)
        except ValueError as err:
            raise ValueError(f"`priors[{name!r}]` with batch shape {d.batch_shape} cannot be "
                             f"broadcast to the site shape {shape}") from err
    return d.to_event(len(batch_shape)) if batch_shape else d


# ----------------------------------------------------------------------------- sparsity priors
def _check_scale(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= 0:
        raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}")
    return float(value)


def _check_sites(sites) -> tuple[str, ...]:
    if isinstance(sites, str) or not all(isinstance(s, str) for s in sites) or not sites:
        raise ValueError(f"`sites` must be a non-empty tuple of site names, got {sites!r}")
    return tuple(sites)


def laplace(scale: float, sites: tuple[str, ...] = SLOPE_SITES) -> dict:
    r"""Independent Laplace(0, ``scale``) priors on the slope sites (the Bayesian Lasso).

    :param scale: the Laplace scale b > 0, in the units of the slopes (MAP = Lasso at
        :math:`\lambda = 1/(n b)` per observation).
    :param sites: the sites to put it on (default both slope sites; e.g. ``("expert_coef",)`` for a
        Gaussian-gated model).
    :returns: a ``priors`` dict for :class:`bayesmoe.MoE`.
    """
    b = _check_scale(scale, "scale")
    return {s: dist.Laplace(0.0, b) for s in _check_sites(sites)}


@dataclasses.dataclass(frozen=True)
class Horseshoe:
    r"""The regularised horseshoe on one slope site (Piironen & Vehtari 2017, arXiv 1707.01694,
    eq. 2.8); use :func:`horseshoe`.

    :param global_scale: :math:`\tau_0`, scale of the half-Cauchy prior of the global shrinkage
        :math:`\tau`.
    :param slab_scale: :math:`s`, the slab scale bounding the largest slopes.
    :param slab_df: :math:`\nu`, the slab's degrees of freedom (:math:`c^2 \sim
        \mathrm{InvGamma}(\nu/2, \nu s^2/2)`).
    """

    global_scale: float
    slab_scale: float = 2.0
    slab_df: float = 4.0

    def sample(self, site: str, shape: tuple[int, ...]):
        r"""Declare the hierarchy's sample sites and return the slopes (a deterministic site).

        :math:`\beta = z\,\tau\,\tilde\lambda` with :math:`z \sim N(0, 1)`,
        :math:`\tilde\lambda^2 = c^2\lambda^2 / (c^2 + \tau^2\lambda^2)`, :math:`\lambda \sim C^+(0, 1)`.

        :param site: the slope site's name (the hierarchy's sites are ``{site}_hs_*``).
        :param shape: the slopes' shape, e.g. (K, d).
        """
        tau = numpyro.sample(f"{site}_hs_tau", dist.HalfCauchy(self.global_scale))
        lam = numpyro.sample(f"{site}_hs_lambda", dist.HalfCauchy(jnp.ones(shape)).to_event(len(shape)))
        half = 0.5 * self.slab_df
        c2 = numpyro.sample(f"{site}_hs_c2", dist.InverseGamma(half, half * self.slab_scale ** 2))
        z = numpyro.sample(f"{site}_hs_z", dist.Normal(jnp.zeros(shape), 1.0).to_event(len(shape)))
        lam_t = jnp.sqrt(c2 * lam ** 2 / (c2 + tau ** 2 * lam ** 2))
        return numpyro.deterministic(site, z * tau * lam_t)


    def latent_values(self, site: str, value) -> dict:
        r"""Values of the hierarchy's sample sites that give the slopes ``value`` exactly: a start for
        samplers (e.g. from a MAP fit under plain priors).

        :math:`\tau = \tau_0` (the median of its half-Cauchy prior); :math:`c^2 = \max(s^2, 4\max|\beta|^2)`
        (so that every slope is below the slab); each local scale at its prior median
        :math:`\lambda = 1` unless the slope needs more, then the :math:`\lambda` with
        :math:`\tau\tilde\lambda = |\beta|` and :math:`z = \pm 1`; :math:`z = \beta / (\tau\tilde\lambda)`.

        :param site: the slope site's name (the hierarchy's sites are ``{site}_hs_*``).
        :param value: the slopes, shape of the site (leading batch axes allowed).
        """
        beta = jnp.asarray(value)
        axes = tuple(range(beta.ndim))
        tau = jnp.asarray(self.global_scale, beta.dtype)
        c2 = jnp.maximum(self.slab_scale ** 2, 4.0 * jnp.max(beta ** 2, axis=axes))
        need = jnp.abs(beta) * jnp.sqrt(c2) / (tau * jnp.sqrt(jnp.maximum(c2 - beta ** 2, 1e-30)))
        lam = jnp.maximum(1.0, need)
        lam_t = jnp.sqrt(c2 * lam ** 2 / (c2 + tau ** 2 * lam ** 2))
        return {f"{site}_hs_tau": tau, f"{site}_hs_lambda": lam, f"{site}_hs_c2": c2,
                f"{site}_hs_z": beta / (tau * lam_t)}


def point_priors(priors: dict | None) -> dict | None:
    """The priors with the hierarchical ones (:class:`Horseshoe`) dropped: their sites fall back to the
    default priors. The MAP fit of that model starts samplers under hierarchical priors (whose own
    posterior mode is degenerate at zero slopes).

    :param priors: a model's ``priors`` dict, or None.
    """
    if priors is None or not any(isinstance(v, Horseshoe) for v in priors.values()):
        return priors
    out = {k: v for k, v in priors.items() if not isinstance(v, Horseshoe)}
    return out or None


def latent_values(prior, site: str, value) -> dict:
    """The sample-site values a site's prior declares, given the site's value: ``{site: value}`` for a
    NumPyro distribution, the hierarchy's latent sites for a :class:`Horseshoe`.

    :param prior: the site's prior (a user's ``priors`` entry), or None for the default.
    :param site: the sample-site name.
    :param value: the site's value.
    """
    if isinstance(prior, Horseshoe):
        return prior.latent_values(site, value)
    return {site: value}


def horseshoe(global_scale: float, *, slab_scale: float = 2.0, slab_df: float = 4.0,
              sites: tuple[str, ...] = SLOPE_SITES) -> dict:
    r"""Regularised horseshoe priors (Piironen & Vehtari 2017) on the slope sites.

    :param global_scale: :math:`\tau_0 > 0`, the scale of the half-Cauchy prior of the global
        shrinkage :math:`\tau` (e.g. :math:`p_0/(p - p_0)\,\sigma/\sqrt n`).
    :param slab_scale: s, the scale of the slab that bounds the largest slopes (units of the slopes).
    :param slab_df: :math:`\nu`, the slab's degrees of freedom.
    :param sites: the sites (default both slope sites).
    :returns: a ``priors`` dict for :class:`bayesmoe.MoE` (``bm.sample`` starts from the MAP fit under
        the default slope priors, mapped into the hierarchy by :meth:`Horseshoe.latent_values`).
    """
    hs = Horseshoe(_check_scale(global_scale, "global_scale"), _check_scale(slab_scale, "slab_scale"),
                   _check_scale(slab_df, "slab_df"))
    return {s: hs for s in _check_sites(sites)}


def draw(site: str, prior, shape: tuple[int, ...]):
    """Sample a site from a resolved prior: a NumPyro distribution, or a hierarchical prior
    (:class:`Horseshoe`) that declares its own sites.

    :param site: the site name.
    :param prior: the prior returned by :func:`resolve`.
    :param shape: the site's shape (used by hierarchical priors).
    """
    if isinstance(prior, Horseshoe):
        return prior.sample(site, shape)
    return numpyro.sample(site, prior)
