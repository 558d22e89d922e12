"""The result of a point-estimate fit (MAP or MLE)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from bayesmoe._validation import check_columns

__all__ = ["FitData", "FitResult", "FitWarning"]


class FitWarning(UserWarning):
    """A point fit that may not be what it seems: a degenerate component (an effective size below its
    number of parameters, or a scale at its floor), a gate separating the data (no finite MLE),
    coinciding experts, or a non-finite or float32-limited answer. Filter with ``warnings``."""


class FitData(NamedTuple):
    """The data a fit was computed from (in the data's units).

    :ivar x: inputs (n, d).
    :ivar y: responses (n,).
    :ivar feature_names: labels of the feature dim (``None``: ``x0, x1, ...``).
    """

    x: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...] | None = None


@dataclass(frozen=True)
class FitResult:
    r"""Point estimate of a MoE (or any NumPyro model) and its information criteria.

    ``params`` are keyed by site name (``gate_coef``, ``expert_scale``, ...; full rows, reference rows
    included) and hold numpy arrays. Criteria are on the deviance scale (smaller is better):
    ``aic = -2 ll + 2 k``, ``bic = -2 ll + k log n``, ``icl = bic - 2 sum_i sum_k t_ik log t_ik`` with
    ``t_ik`` the posterior expert memberships at the estimate (Biernacki, Celeux & Govaert 2000).

    :ivar params: the estimate, ``{site name: numpy array}`` (full shapes, e.g. (K, d) slopes).
    :ivar log_likelihood: :math:`\ell(\hat\theta) = \sum_i \log p(y_i \mid x_i; \hat\theta)` at the
        estimate (plus :math:`\log p(x_i)` for gates that model x).
    :ivar log_posterior: the maximised objective: log-likelihood plus log prior (MAP), or the
        log-likelihood (MLE).
    :ivar n_params: k, the number of free parameters (nonzero slopes only for penalised fits).
    :ivar n_obs: n, the number of observations.
    :ivar aic: Akaike's criterion, :math:`-2\ell + 2k`.
    :ivar bic: Schwarz's criterion, :math:`-2\ell + k \log n`.
    :ivar icl: the integrated completed likelihood criterion, BIC plus twice the entropy of the
        memberships.
    :ivar converged: whether the best start met the stopping rule before ``max_steps``.
    :ivar n_steps: iterations run by the best start.
    :ivar start_log_likelihoods: the final log-likelihood of every start (S,).
    :ivar method: ``"lbfgs"``, ``"adam"`` or ``"em"``.
    :ivar prior: True for a MAP fit, False for an MLE.
    :ivar extra: method-specific details (e.g. ``lambda`` of a penalised fit).
    :ivar warnings: what makes the answer doubtful (also issued as :class:`~bayesmoe.FitWarning`).
    :ivar model: the fitted model (for :meth:`predict`, :meth:`summary`, saving).
    :ivar data: the training data (:class:`FitData`), used by :meth:`summary` and :meth:`memberships`.
    """

    params: dict[str, np.ndarray]
    log_likelihood: float
    log_posterior: float
    n_params: int
    n_obs: int
    aic: float
    bic: float
    icl: float
    converged: bool
    n_steps: int
    start_log_likelihoods: np.ndarray
    method: str
    prior: bool
    extra: dict = field(default_factory=dict, repr=False)
    warnings: tuple[str, ...] = ()
    model: Any = field(default=None, repr=False, compare=False)
    data: FitData | None = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        kind = "MAP" if self.prior else "MLE"
        return (f"FitResult({kind}, method={self.method!r}, log_likelihood={self.log_likelihood:.6f}, "
                f"bic={self.bic:.3f}, n_params={self.n_params}, converged={self.converged}, "
                f"n_steps={self.n_steps}, starts={len(self.start_log_likelihoods)}"
                + (f", warnings={len(self.warnings)}" if self.warnings else "") + ")")

    # ------------------------------------------------------------------ inference at the estimate
    def _need(self, what: str) -> None:
        if self.model is None or self.data is None:
            raise ValueError(f"`{what}` needs the fitted model and data: this FitResult was built "
                             "without them (fit it with bm.fit_mle / bm.fit_map)")

    @functools.cached_property
    def _inference(self):
        from bayesmoe.inference.summary import observed_inference  # noqa: PLC0415

        self._need("summary")
        return observed_inference(self.model, self.params, self.data.x, self.data.y, prior=self.prior,
                                  feature_names=self.data.feature_names)

    def summary(self, level: float = 0.95, *, as_xarray: bool = False):
        r"""Wald table of every free parameter (like ``summary(refit(fit))`` of R's flexmix).

        Standard errors come from the observed information: the exact Hessian (automatic
        differentiation, float64) of the maximised objective (log-likelihood for ``fit_mle``, log
        posterior for ``fit_map``) in the unconstrained free parametrisation, mapped to the reported
        scale by the delta method. Columns: ``estimate``, ``std_err``, ``z`` (estimate / std_err),
        ``p_value`` (two-sided, normal), ``ci_lower``, ``ci_upper`` (estimate -/+
        :math:`z_{(1+level)/2}` std_err). Reference rows (fixed at zero) are not parameters and are
        not listed. A singular or indefinite Hessian gives a :class:`FitWarning` naming the
        parameters left without a standard error (NaN).

        :param level: coverage of the intervals, in (0, 1).
        :param as_xarray: return an xarray Dataset (one variable per site, a ``statistic`` dim)
            instead of a pandas DataFrame.
        """
        from bayesmoe.inference.summary import summary_table, summary_xarray  # noqa: PLC0415

        inf = self._inference
        return summary_xarray(inf, level) if as_xarray else summary_table(inf, level)

    @property
    def vcov(self):
        """Covariance matrix of the free parameters (a pandas DataFrame labelled like the rows of
        :meth:`summary`): the inverse observed information, on the reported scale."""
        import pandas as pd  # noqa: PLC0415

        inf = self._inference
        return pd.DataFrame(inf.vcov, index=inf.labels, columns=inf.labels)

    def memberships(self, x: Any = None, y: Any = None) -> np.ndarray:
        r"""Posterior expert probabilities :math:`P(z_i = k | x_i, y_i)` at the estimate, (n, K)
        (flexmix's ``posterior``).

        :param x: inputs (n, d); default: the fit's data.
        :param y: responses (n,); default: the fit's data (give both or neither).
        """
        self._need("memberships")
        x, y = self._xy(x, y)
        return np.asarray(self.model.responsibilities(self.params, x, y))

    def predict(self, x: Any, level: float | None = 0.95):
        """Predictions at new inputs: gate probabilities, expert means or class probabilities, the
        mixture mean, and a prediction interval of the given ``level`` from the mixture's quantiles
        (see :meth:`bayesmoe.MoE.predict`).

        :param x: inputs (n, d).
        :param level: coverage of the prediction interval in (0, 1), or None for none.
        """
        self._need("predict")
        return self.model.predict(self.params, self._new_x(x), interval=level)

    def pointwise_log_likelihood(self, x: Any = None, y: Any = None) -> np.ndarray:
        r""":math:`\log p(y_i | x_i, \hat\theta)`, (n,).

        :param x: inputs (n, d); default: the fit's data.
        :param y: responses (n,); default: the fit's data (give both or neither).
        """
        self._need("pointwise_log_likelihood")
        x, y = self._xy(x, y)
        return np.asarray(self.model.log_likelihood(self.params, x, y))

    def _xy(self, x: Any, y: Any) -> tuple[Any, Any]:
        """New (x, y), checked against the training columns, or the fit's own data when both are None."""
        if (x is None) != (y is None):
            raise ValueError("`x` and `y` must be given together (or neither, for the fit's data)")
        if x is None:
            return self.data.x, self.data.y
        return self._new_x(x), y

    def _new_x(self, x: Any) -> Any:
        """New inputs checked against the training columns (a formula model's design does this
        itself): a DataFrame with other column names is an error naming them."""
        if getattr(self.model, "design", None) is not None or self.data is None:
            return x
        return check_columns(x, self.data.feature_names)

    # ------------------------------------------------------------------ files
    def save(self, path) -> None:
        """Write the fit (model spec, estimates, criteria, data) to a netCDF file (h5netcdf); read it
        back with :meth:`FitResult.load`.

        :param path: file path (``.nc``).
        """
        from bayesmoe.inference.io import save_fit  # noqa: PLC0415

        save_fit(self, path)

    @classmethod
    def load(cls, path, model: Any = None) -> FitResult:
        """Read a fit written by :meth:`save`; the model is rebuilt from its stored spec.

        :param path: file path.
        :param model: the model to attach instead of rebuilding it from the spec (for a user's own
            family that cannot be imported by name, or for user priors).
        """
        from bayesmoe.inference.io import load_fit  # noqa: PLC0415

        return load_fit(path, model=model)
