r"""Checks of a point fit that say when its answer is not what it seems (issue: no finite MLE).

* **Scale at its floor**: the likelihood of a mixture is unbounded as an expert's variance goes to 0
  on a few points; a fitted scale at its floor is such a spike, not an estimate.
* **Degenerate component**: an expert whose effective size :math:`n_k = \sum_i r_{ik}` is below its
  number of parameters is not estimable from the data it explains.
* **Separation**: when the gate is sharp (slopes above 5 log-odds per standard deviation of a
  regressor) and the log-likelihood still rises when the gate's linear logits are multiplied by 4, it
  keeps rising along that ray: the gate separates the data and there is no finite MLE (the priors of
  :func:`bayesmoe.fit_map` give a finite answer).
* **Coinciding experts**: two experts with the same parameters are the single-regression saddle of the
  likelihood, not a K-expert answer.
* **Non-finite answers**.
"""

from __future__ import annotations

import numpy as np

__all__ = ["at_floor", "coinciding", "fit_problems"]

#: relative margin above a floor that counts as "at the floor" (an optimiser creeping towards a
#: floor stops within a fraction of a percent of it)
_FLOOR_MARGIN = 1e-2
#: gate log-odds change per regressor standard deviation above which separation is tested
_SHARP = 5.0


def at_floor(params: dict, floors: dict) -> np.ndarray:
    """Per start (leading axis S), whether any floored scale sits at its floor; shape (S,)."""
    out = None
    for name, floor in floors.items():
        if name not in params:
            continue
        v = np.asarray(params[name])
        f = np.broadcast_to(np.asarray(floor), v.shape[1:])
        hit = np.any((v <= f * (1 + _FLOOR_MARGIN)).reshape(v.shape[0], -1), axis=1)
        out = hit if out is None else out | hit
    if out is None:
        out = np.zeros(len(next(iter(params.values()))), bool)
    return out


def coinciding(values: dict, names, K: int, rtol: float = 1e-3) -> np.ndarray:
    """Per start (leading axis S), whether two experts have the same parameters (over ``names``)."""
    names = [k for k in names if k in values]
    if K < 2 or not names:
        return np.zeros(len(next(iter(values.values()))), bool)
    theta = np.concatenate([np.asarray(values[k]).reshape(len(values[k]), K, -1) for k in names], axis=2)
    scale = 1.0 + np.abs(theta).max(axis=1, keepdims=True)                    # (S, 1, m)
    diff = np.abs(theta[:, :, None, :] - theta[:, None, :, :]) <= rtol * scale[:, :, None, :]
    same = np.all(diff, axis=-1) & ~np.eye(K, dtype=bool)[None]
    return np.any(same.reshape(len(theta), -1), axis=1)


def fit_problems(model, params: dict, resp, floors: dict, gate_feature_sd, log_likelihood: float,
                 d: int, loglik=None) -> list[str]:
    """Messages for every problem of a fitted MoE (params and memberships in the fit's units);
    ``loglik(params) -> float`` evaluates the log-likelihood for the separation test."""
    out = []
    finite = np.isfinite(log_likelihood) and all(np.all(np.isfinite(np.asarray(v)))
                                                 for v in params.values())
    if not finite:
        out.append("the fit is not finite (NaN or infinite log-likelihood or parameters): it failed; try "
                   "more starts, method='em', or bm.fit_map")
        return out
    stacked = {k: np.asarray(v)[None] for k, v in params.items()}
    if at_floor(stacked, floors)[0]:
        names = [k for k in floors if k in params and at_floor({k: stacked[k]}, {k: floors[k]})[0]]
        out.append(f"{', '.join(names)} at the floor (scale_floor times the data's spread): a component "
                   "has collapsed on a few points, a spike of the unbounded likelihood rather than an "
                   "estimate; use bm.fit_map (its priors vanish at 0), fewer experts, or a larger "
                   "scale_floor")
    K = model.n_experts
    if resp is not None and K > 1:
        nk = np.asarray(resp).sum(0)
        k_e = model.expert.n_params(K, model.expert_d(d)) / K
        small = [k for k in range(K) if nk[k] < k_e]
        if small:
            out.append(f"expert(s) {small} explain only {np.round(nk[small], 2).tolist()} observations, "
                       f"fewer than their {k_e:g} parameters: degenerate components; use fewer experts or "
                       "bm.fit_map")
    linear = model.gate.affine_sites("coef") + model.gate.affine_sites("intercept")
    slopes = [np.abs(np.asarray(params[name])) * np.asarray(gate_feature_sd)
              for name in model.gate.affine_sites("coef") if name in params]
    worst = max((float(np.max(s)) for s in slopes), default=0.0)
    if loglik is not None and worst > _SHARP:
        sharper = {**params, **{k: 4.0 * np.asarray(params[k]) for k in linear if k in params}}
        ll4 = float(loglik(sharper))
        if ll4 >= log_likelihood - 1e-7 * abs(log_likelihood):
            out.append(f"the gate separates the data (slopes of {worst:.0f} log-odds per standard deviation, "
                       f"and the log-likelihood does not fall, {ll4 - log_likelihood:+.2e}, when its logits "
                       "are made 4 times sharper): there is no finite MLE, the slopes grow without bound; "
                       "bm.fit_map's priors give a finite answer")
    if coinciding(stacked, model.expert.prior_names(), K)[0]:
        out.append("two experts coincide (same parameters): a saddle of the likelihood, not a K-expert "
                   "answer; use more starts or fewer experts")
    return out
