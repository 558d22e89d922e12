r"""Standardised data for maximum-likelihood fits: right answers in any units.

A fit in float32 on x measured in micrometres or dollars (x scaled by 1e6 or shifted by 1e6) loses
the information before the optimiser starts: the likelihood surface is badly scaled and, with large
offsets, not even representable. Maximum-likelihood fits therefore run on
:math:`\tilde x = (x - m)/s` (each column, when both families depend on x through x itself) and
:math:`\tilde y = (y - c)/t` (when the expert allows it), computed in float64, and map the estimates
back exactly with the families' parameter tables (:meth:`bayesmoe.family.Family.standardize`). The
MLE is equivariant, so the answer is the same as in the data's units, and the log-likelihood in the
data's units is the standardised one plus the exact Jacobian
:math:`-n \log t` (and :math:`-n\sum_j \log s_j` for models of x, ``joint=True``).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import numpy as np

__all__ = ["Standardization", "identity", "for_data"]


class Standardization(NamedTuple):
    """Location and scale of x (per column) and y used by a fit; the identity leaves data as is."""

    x_loc: np.ndarray
    x_scale: np.ndarray
    y_loc: float
    y_scale: float

    def x(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float64) - self.x_loc) / self.x_scale

    def y(self, y: np.ndarray, model) -> np.ndarray:
        if not model.expert.y_affine:
            return y
        return (np.asarray(y, np.float64) - self.y_loc) / self.y_scale

    def to_std(self, model, params: dict) -> dict:
        """Parameters in the data's units -> parameters for the standardised data."""
        return _map(model, params, self, inverse=False)

    def to_raw(self, model, params: dict) -> dict:
        """Parameters for the standardised data -> parameters in the data's units (numpy float64)."""
        return _map(model, params, self, inverse=True)

    def log_jacobian(self, model, n: int) -> float:
        """Add to a standardised log-likelihood to get the data's: -n log t (- n sum log s, joint)."""
        out = -n * np.log(self.y_scale) if model.expert.y_affine else 0.0
        if model.joint:
            out -= n * float(np.sum(np.log(model.gate_x(np.asarray(self.x_scale)))))
        return float(out)

    @property
    def moves_x(self) -> bool:
        """Whether x is standardised (a location or scale other than 0 and 1)."""
        return not (np.all(self.x_loc == 0) and np.all(self.x_scale == 1))

    @property
    def is_identity(self) -> bool:
        return not self.moves_x and self.y_loc == 0 and self.y_scale == 1


def identity(d: int) -> Standardization:
    return Standardization(np.zeros(d), np.ones(d), 0.0, 1.0)


def _spread(v: np.ndarray) -> np.ndarray:
    sd = np.std(v, axis=0)
    return np.where(sd > 0, sd, 1.0)


def for_data(model, x: np.ndarray, y: np.ndarray, *, separable: bool = False) -> Standardization:
    """The standardisation a maximum-likelihood fit of ``model`` uses on (x, y).

    x is standardised only when both families declare an exact map of their parameters
    (:meth:`bayesmoe.family.Family.x_affine`); y only for experts with ``y_affine``.

    :param separable: the fit needs each slope mapped on its own (an L1 penalty in the data's units is
        a weighted L1 penalty in standardised units only then): x is then centred only when the map
        stays diagonal (regressors that are x itself), and only scaled otherwise.
    """
    x = np.asarray(x, np.float64)
    d = x.shape[1]
    out = identity(d)
    if model.gate.x_affine(model.gate_d(d)) and model.expert.x_affine(model.expert_d(d)):
        out = out._replace(x_loc=x.mean(0), x_scale=_spread(x))
        if separable and not _diagonal(model, out):
            out = out._replace(x_loc=np.zeros(d))
    if model.expert.y_affine:
        y = np.asarray(y, np.float64)
        out = out._replace(y_loc=float(y.mean()), y_scale=float(_spread(y)))
    return out


def _diagonal(model, st: Standardization) -> bool:
    """Whether every family's slopes map one to one under ``st`` (no regressor mixes into another)."""
    for fam, sel in ((model.gate, model.gate_x), (model.expert, model.expert_x)):
        if fam.affine_sites("coef"):
            with jax.enable_x64(True):
                fm = fam.feature_map(sel(np.asarray(st.x_loc)), sel(np.asarray(st.x_scale)))
            if np.any((fm.rows != fm.cols) & (np.asarray(fm.vals) != 0)):
                return False
    return True


def _map(model, params: dict, st: Standardization, inverse: bool) -> dict:
    with jax.enable_x64(True):
        p = {k: np.asarray(v, np.float64) for k, v in params.items()
             if k in model.site_names(len(st.x_loc))}
        out = _map_compiled(model, inverse, st.moves_x, p, np.asarray(st.x_loc), np.asarray(st.x_scale),
                            np.float64(st.y_loc), np.float64(st.y_scale))
        return {k: np.asarray(v, np.float64) for k, v in out.items()}


@partial(jax.jit, static_argnums=(0, 1, 2))
def _map_compiled(model, inverse, move_x, params, x_loc, x_scale, y_loc, y_scale):
    """One compiled program (float64) per model and direction, instead of many eager operations."""
    gx = (model.gate_x(x_loc), model.gate_x(x_scale)) if move_x else (None, None)
    ex = (model.expert_x(x_loc), model.expert_x(x_scale)) if move_x else (None, None)
    p = model.gate.standardize(params, *gx, y_loc, y_scale, inverse=inverse)
    p = model.expert.standardize(p, *ex, y_loc, y_scale, inverse=inverse)
    return model.complete_params(p)
