r"""Monte-Carlo divergences between two conditional densities :math:`s(y | x)` and :math:`t(y | x)`.

The GLoME/BLoMPE model-selection papers (Nguyen et al. 2021, arXiv 2104.02640) measure the error of an
estimated conditional density against the truth by the Kullback-Leibler divergence averaged over the
inputs, and by the Jensen-Kullback-Leibler divergence with :math:`\rho \in (0, 1)`:

.. math::
    \mathrm{KL}(s, t) = \frac1n \sum_i \int s(y | x_i) \log\frac{s(y | x_i)}{t(y | x_i)}\,dy,\qquad
    \mathrm{JKL}_\rho(s, t) = \frac1\rho\,\mathrm{KL}\big(s, (1 - \rho)\,s + \rho\,t\big).

Both are estimated with ``n_draws`` draws :math:`y \sim s(\cdot | x_i)` per input (``model.simulate``) and
the models' pointwise log-likelihoods (log-sum-exp for the mixture of s and t). JKL is bounded by
:math:`-\log(1-\rho)/\rho` and finite even when t has lighter tails than s.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from bayesmoe._random import as_key
from bayesmoe._validation import as_x, check_positive_int

__all__ = ["Divergence", "jensen_kl", "kl_conditional"]


class Divergence(NamedTuple):
    """A Monte-Carlo divergence: ``value`` (the mean) and ``se`` (its standard error over inputs)."""

    value: float
    se: float


def _log_ratios(model_s, params_s, model_t, params_t, x, n_draws, seed):
    """(log s(y|x), log t(y|x)) at ``n_draws`` draws y ~ s(. | x_i) per input, shapes (n_draws, n)."""
    from bayesmoe.model import MoE  # noqa: PLC0415

    for name, m in (("model_s", model_s), ("model_t", model_t)):
        if not isinstance(m, MoE):
            raise ValueError(f"`{name}` must be a bayesmoe.MoE, got {m!r}")
    key = as_key(seed, "seed")
    n_draws = check_positive_int(n_draws, "n_draws")
    xa = as_x(x, "x")
    n = xa.shape[0]
    x_rep = np.tile(xa, (n_draws, 1))
    y = model_s.simulate(key, params_s, x_rep).y
    cond_s = _conditional(model_s)
    cond_t = _conditional(model_t)
    ls = np.asarray(cond_s.log_likelihood(params_s, x_rep, y), float).reshape(n_draws, n)
    lt = np.asarray(cond_t.log_likelihood(params_t, x_rep, y), float).reshape(n_draws, n)
    return ls, lt


def _conditional(model):
    """The model's conditional p(y | x) (a joint model's own x-term dropped)."""
    if not model.joint:
        return model
    from bayesmoe.model import MoE  # noqa: PLC0415

    return MoE(model.gate, model.expert, model.n_experts, priors=model.priors)


def _summary(per_draw: np.ndarray) -> Divergence:
    per_x = per_draw.mean(axis=0)
    se = float(per_x.std(ddof=1) / np.sqrt(per_x.size)) if per_x.size > 1 else float("nan")
    return Divergence(float(per_x.mean()), se)


def kl_conditional(model_s, params_s: dict, model_t, params_t: dict, x: Any, *, n_draws: int = 100,
                   seed: Any = 0) -> Divergence:
    r"""Monte-Carlo :math:`\mathrm{KL}(s, t)` of two conditional densities averaged over the inputs x.

    :param model_s: the reference model s (a :class:`bayesmoe.MoE`; the truth, usually).
    :param params_s: its parameters (site names).
    :param model_t: the other model t (e.g. a fit, any number of experts).
    :param params_t: its parameters.
    :param x: the inputs to average over, (n, d) or (n,).
    :param n_draws: draws of y per input, >= 1.
    :param seed: an int or a ``jax.random`` key.
    :returns: a :class:`Divergence` (mean and standard error over the inputs).
    """
    ls, lt = _log_ratios(model_s, params_s, model_t, params_t, x, n_draws, seed)
    return _summary(ls - lt)


def jensen_kl(model_s, params_s: dict, model_t, params_t: dict, x: Any, *, rho: float = 0.5,
              n_draws: int = 100, seed: Any = 0) -> Divergence:
    r"""Monte-Carlo Jensen-KL :math:`\frac1\rho \mathrm{KL}(s, (1-\rho) s + \rho t)` averaged over x.

    :param model_s: the reference model s (a :class:`bayesmoe.MoE`).
    :param params_s: its parameters.
    :param model_t: the other model t.
    :param params_t: its parameters.
    :param x: the inputs to average over, (n, d) or (n,).
    :param rho: the mixing weight in (0, 1) (1/2 in the GLoME paper).
    :param n_draws: draws of y per input, >= 1.
    :param seed: an int or a ``jax.random`` key.
    :returns: a :class:`Divergence`.
    """
    try:
        rho = float(rho)
    except (TypeError, ValueError):
        raise ValueError(f"`rho` must be a number in (0, 1), got {rho!r}") from None
    if not 0 < rho < 1:
        raise ValueError(f"`rho` must be in (0, 1), got {rho}")
    ls, lt = _log_ratios(model_s, params_s, model_t, params_t, x, n_draws, seed)
    mix = np.logaddexp(np.log1p(-rho) + ls, np.log(rho) + lt)
    return _summary((ls - mix) / rho)
