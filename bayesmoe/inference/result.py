"""The result of a point-estimate fit (MAP or MLE)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["FitResult", "FitWarning"]


class FitWarning(UserWarning):
    """A point fit that may not be what it seems: a degenerate component (an effective size below its
    number of parameters, or a scale at its floor), a gate separating the data (no finite MLE),
    coinciding experts, or a non-finite or float32-limited answer. Filter with ``warnings``."""


@dataclass(frozen=True)
class FitResult:
    """Point estimate of a MoE (or any NumPyro model) and its information criteria.

    ``params`` are keyed by the site names of DESIGN.md (full rows, reference rows included) and
    hold numpy arrays. Criteria are on the deviance scale (smaller is better):
    ``aic = -2 ll + 2 k``, ``bic = -2 ll + k log n``, ``icl = bic - 2 sum_i sum_k t_ik log t_ik`` with
    ``t_ik`` the posterior expert memberships at the estimate (Biernacki, Celeux & Govaert 2000).
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

    def __repr__(self) -> str:
        kind = "MAP" if self.prior else "MLE"
        return (f"FitResult({kind}, method={self.method!r}, log_likelihood={self.log_likelihood:.6f}, "
                f"bic={self.bic:.3f}, n_params={self.n_params}, converged={self.converged}, "
                f"n_steps={self.n_steps}, starts={len(self.start_log_likelihoods)}"
                + (f", warnings={len(self.warnings)}" if self.warnings else "") + ")")
