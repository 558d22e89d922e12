r"""Convergence diagnostics of a NUTS run, and the warnings :func:`bayesmoe.sample` emits from them.

Every function here is pure (numpy / xarray in, numbers out); :func:`bayesmoe.sample` calls them on
its result, stores :func:`diagnose`'s summary in the ``DataTree``'s root attrs and warns with
:class:`SamplerWarning` for each message of :func:`messages`. The checks and thresholds are those of
Stan and of Vehtari et al. (2021):

* **divergent transitions** after warmup (any is a warning: the sampler met curvature it could not
  follow, so the draws may be biased);
* **rank-normalised split R-hat** above 1.01 (chains disagree);
* **bulk or tail effective sample size** below 100 per chain (too few independent draws for
  reliable means, sds and intervals);
* **tree-depth saturation**: transitions whose trajectory reached ``max_tree_depth`` doublings
  (the sampler was cut short, so it explores slowly);
* **E-BFMI** below 0.3 in any chain (momentum resampling cannot move the energy enough: heavy tails
  or a funnel).

Constant variables (the fixed zero reference row of a softmax gate or of a multinomial-logistic
expert) have no R-hat or ESS; they are left out element by element.

References: A. Vehtari, A. Gelman, D. Simpson, B. Carpenter and P.-C. Bürkner (2021),
Rank-normalization, folding, and localization: an improved R-hat for assessing convergence of MCMC,
Bayesian Analysis 16(2), 667-718. M. Betancourt (2016), Diagnosing suboptimal cotangent
disintegrations in Hamiltonian Monte Carlo, arXiv:1604.00695. M. Betancourt (2017), A conceptual
introduction to Hamiltonian Monte Carlo, arXiv:1701.02434.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any

import arviz as az
import numpy as np
import xarray as xr

__all__ = ["EBFMI_MIN", "ESS_PER_CHAIN_MIN", "MIN_DRAWS", "RHAT_MAX", "SamplerWarning", "count_divergent",
           "diagnose", "ebfmi", "messages", "site_ess", "site_rhat", "to_attrs", "tree_depth",
           "tree_depth_saturation"]

RHAT_MAX = 1.01
ESS_PER_CHAIN_MIN = 100
EBFMI_MIN = 0.3
MIN_DRAWS = 4  # per chain, for R-hat and ESS
SAMPLE_DIMS = ("chain", "draw")
_MAX_LISTED = 5


class SamplerWarning(UserWarning):
    """A NUTS run of :func:`bayesmoe.sample` shows a problem (divergences, R-hat, ESS, tree depth,
    E-BFMI). Filter with ``warnings.filterwarnings("ignore", category=bm.SamplerWarning)`` or pass
    ``quiet=True`` to ``sample``."""


# ----------------------------------------------------------------------------- sampler statistics
def ebfmi(energy: Any) -> np.ndarray:
    r"""Energy Bayesian fraction of missing information of each chain (Betancourt 2016).

    For the Hamiltonian energies :math:`E_1, \dots, E_N` of one chain,

    .. math::  \widehat{\mathrm{E\text{-}BFMI}}
               = \frac{\sum_{n=2}^{N} (E_n - E_{n-1})^2}{\sum_{n=1}^{N} (E_n - \bar E)^2}.

    Values below 0.3 mean the momentum resampling explores the energy distribution poorly.

    :param energy: array (chain, draw) of energies.
    :return: array (chain,); NaN for a chain with fewer than 2 draws or constant energy.
    """
    e = np.asarray(energy, dtype=float)
    if e.ndim != 2:
        raise ValueError(f"`energy` must have dims (chain, draw), got shape {e.shape}")
    num = np.sum(np.diff(e, axis=1) ** 2, axis=1)
    den = np.sum((e - e.mean(axis=1, keepdims=True)) ** 2, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def count_divergent(diverging: Any) -> int:
    """Number of divergent transitions (``diverging`` is a boolean array over (chain, draw))."""
    return int(np.sum(np.asarray(diverging, dtype=bool)))


def tree_depth(n_steps: Any) -> np.ndarray:
    r"""Tree depth of NUTS transitions from their number of leapfrog steps.

    A trajectory of depth :math:`d` (that is, :math:`d` doublings) has :math:`2^d - 1` leapfrog steps
    when fully built, so :math:`d = \lfloor \log_2(\text{n\_steps} + 1) \rfloor` (a last doubling
    stopped early by a U-turn or a divergence does not count).
    """
    return np.floor(np.log2(np.asarray(n_steps, dtype=float) + 1)).astype(int)


def tree_depth_saturation(depth: Any, max_tree_depth: int) -> float:
    """Fraction of transitions whose tree depth reached ``max_tree_depth`` (NaN when there are none)."""
    d = np.asarray(depth)
    return float(np.mean(d >= max_tree_depth)) if d.size else math.nan


# ----------------------------------------------------------------------------- R-hat and ESS
def _varying(ds: xr.Dataset) -> xr.Dataset:
    """True for every element that is not constant over (chain, draw)."""
    return ds.max(SAMPLE_DIMS) > ds.min(SAMPLE_DIMS)


def _per_site(values: xr.Dataset, mask: xr.Dataset, reduce: str) -> dict[str, float]:
    """Reduce each variable's per-element values (``reduce`` is "max" or "min") over its varying,
    finite elements; variables without any are left out."""
    out = {}
    for name, da in values.data_vars.items():
        v = np.asarray(da.where(mask[name]), dtype=float).ravel()
        v = v[np.isfinite(v)]
        if v.size:
            out[str(name)] = float(v.max() if reduce == "max" else v.min())
    return out


@contextmanager
def _quiet_arviz():
    """Silence arviz's numpy warnings on constant elements (left out afterwards) and its note on
    more chains than draws."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.filterwarnings("ignore", message="Found chain dimension to be longer")
        yield


def _numeric(posterior: xr.Dataset) -> xr.Dataset:
    keep = [k for k, v in posterior.data_vars.items()
            if v.dtype.kind in "iuf" and all(d in v.dims for d in SAMPLE_DIMS)]
    return posterior[keep]


def site_rhat(posterior: xr.Dataset) -> dict[str, float]:
    r"""Largest rank-normalised split R-hat of each variable (Vehtari et al. 2021, via ``arviz.rhat``).

    Each chain is split in halves; the draws of all halves are replaced by their normal scores
    :math:`z = \Phi^{-1}((r - 3/8)/(S + 1/4))` (:math:`r` the pooled rank, :math:`S` the number of
    draws) and the classic :math:`\hat R = \sqrt{\widehat{\mathrm{var}}^+ / W}` with
    :math:`\widehat{\mathrm{var}}^+ = \frac{N-1}{N} W + \frac1N B` (:math:`W` the mean within-half
    variance, :math:`B/N` the variance of the half means) is computed for the draws and for their
    folded values :math:`|\theta - \mathrm{median}|`; the larger is reported.

    :param posterior: dataset with dims (chain, draw, ...).
    :return: {variable: max R-hat over its non-constant elements}; variables that are constant, or
        whose R-hat is undefined (one chain, under ``MIN_DRAWS`` = 4 draws), are left out.
    """
    ds = _numeric(posterior)
    if ds.sizes.get("draw", 0) < MIN_DRAWS:
        return {}
    with _quiet_arviz():
        values = az.rhat(ds)
    return _per_site(values, _varying(ds), "max")


def site_ess(posterior: xr.Dataset, method: str = "bulk") -> dict[str, float]:
    r"""Smallest bulk or tail effective sample size of each variable (Vehtari et al. 2021, via
    ``arviz.ess``).

    :math:`\mathrm{ESS} = S / \hat\tau` with :math:`\hat\tau = -1 + 2\sum_{t \ge 0} \hat P_t`
    (Geyer's initial monotone sequence of paired autocorrelations over all chains). *Bulk* ESS uses
    the rank-normalised split draws (reliability of means and medians); *tail* ESS is the smaller of
    the ESS of the indicators :math:`\mathbb 1\{\theta \le q_{0.05}\}` and
    :math:`\mathbb 1\{\theta \le q_{0.95}\}` (reliability of 90% intervals).

    :param method: ``"bulk"`` or ``"tail"``.
    :return: {variable: min ESS over its non-constant elements}; empty under 4 draws per chain.
    """
    if method not in ("bulk", "tail"):
        raise ValueError(f"`method` must be 'bulk' or 'tail', got {method!r}")
    ds = _numeric(posterior)
    if ds.sizes.get("draw", 0) < MIN_DRAWS:
        return {}
    with _quiet_arviz():
        values = az.ess(ds, method=method)
    return _per_site(values, _varying(ds), "min")


# ----------------------------------------------------------------------------- summary and messages
def diagnose(posterior: xr.Dataset, energy: Any, diverging: Any, n_steps: Any,
             max_tree_depth: int) -> dict[str, Any]:
    """All diagnostics of one run as a JSON-ready dict (NaN as None).

    :param posterior: dataset with dims (chain, draw, ...).
    :param energy, diverging, n_steps: arrays (chain, draw) of the sampler statistics.
    """
    n_chain, n_draw = (int(posterior.sizes[d]) for d in SAMPLE_DIMS)
    depth = tree_depth(n_steps)
    return _json_ready({
        "num_chains": n_chain,
        "num_draws": n_draw,
        "n_divergent": count_divergent(diverging),
        "n_transitions": int(np.asarray(diverging).size),
        "max_tree_depth": int(max_tree_depth),
        "n_max_tree_depth": int(np.sum(depth >= max_tree_depth)),
        "tree_depth_saturation": tree_depth_saturation(depth, max_tree_depth),
        "ebfmi": ebfmi(energy).tolist(),
        "rhat": site_rhat(posterior),
        "ess_bulk": site_ess(posterior, "bulk"),
        "ess_tail": site_ess(posterior, "tail"),
        "thresholds": {"rhat_max": RHAT_MAX, "ess_per_chain_min": ESS_PER_CHAIN_MIN,
                       "ebfmi_min": EBFMI_MIN},
    })


def _json_ready(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _listing(values: Mapping[str, float], worst_first: bool, fmt: str) -> str:
    items = sorted(values.items(), key=lambda kv: kv[1], reverse=worst_first)
    shown = ", ".join(f"{k} ({v:{fmt}})" for k, v in items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def _divergence_message(diag: Mapping[str, Any]) -> list[str]:
    n, total = diag["n_divergent"], diag["n_transitions"]
    if not n:
        return []
    return [f"{n} of {total} transitions after warmup were divergent ({100 * n / total:.1f}%): the "
            "sampler met curvature it could not follow and the draws may be biased. Raise "
            "`target_accept_prob` (e.g. 0.95 or 0.99; a smaller step size) or reparametrise the model "
            "(e.g. stronger priors on the gate coefficients)."]


def _rhat_message(diag: Mapping[str, Any]) -> list[str]:
    bad = {k: v for k, v in diag["rhat"].items() if v > RHAT_MAX}
    if not bad:
        return []
    return [f"R-hat above {RHAT_MAX} (chains disagree) for {len(bad)} site(s), worst first: "
            f"{_listing(bad, True, '.3f')}. Run more warmup and draws (`num_warmup`, `num_samples`), "
            "and check for multimodality or label switching (e.g. `bm.relabel`, a trace or rank "
            "plot of these sites)."]


def _ess_message(diag: Mapping[str, Any]) -> list[str]:
    floor = ESS_PER_CHAIN_MIN * diag["num_chains"]
    if diag["num_draws"] < MIN_DRAWS:
        return [f"Only {diag['num_draws']} draw(s) per chain: R-hat and ESS cannot be computed "
                f"(they need at least {MIN_DRAWS}; reliable estimates need {ESS_PER_CHAIN_MIN} effective "
                "draws per chain). Run more draws (`num_samples`)."]
    parts = []
    for kind in ("bulk", "tail"):
        bad = {k: v for k, v in diag[f"ess_{kind}"].items() if v < floor}
        if bad:
            parts.append(f"{kind} ESS for {_listing(bad, False, '.0f')}")
    if not parts:
        return []
    return [f"Effective sample size below {ESS_PER_CHAIN_MIN} per chain (< {floor} for "
            f"{diag['num_chains']} chain(s) of {diag['num_draws']} draws): " + "; ".join(parts)
            + ". Means, sds and intervals of these sites are unreliable: run more draws "
            "(`num_samples`) or more warmup, or reparametrise."]


def _tree_depth_message(diag: Mapping[str, Any]) -> list[str]:
    n = diag["n_max_tree_depth"]
    if not n:
        return []
    return [f"{n} of {diag['n_transitions']} transitions ({100 * diag['tree_depth_saturation']:.1f}%) "
            f"reached the maximum tree depth {diag['max_tree_depth']}: trajectories were cut short "
            "and the sampler explores slowly. Raise `max_tree_depth` (e.g. "
            f"{diag['max_tree_depth'] + 2}) or reparametrise."]


def _ebfmi_message(diag: Mapping[str, Any]) -> list[str]:
    low = {f"chain {i}": v for i, v in enumerate(diag["ebfmi"]) if v is not None and v < EBFMI_MIN}
    if not low:
        return []
    return [f"E-BFMI below {EBFMI_MIN} for {_listing(low, False, '.2f')}: momentum resampling "
            "explores the energy distribution poorly (heavy tails or a funnel). Reparametrise the "
            "model or run a longer warmup (`num_warmup`)."]


def messages(diag: Mapping[str, Any]) -> list[str]:
    """One message per problem found in :func:`diagnose`'s dict (empty when the run looks healthy)."""
    out = []
    for check in (_divergence_message, _rhat_message, _ess_message, _tree_depth_message,
                  _ebfmi_message):
        out.extend(check(diag))
    return out


def to_attrs(diag: Mapping[str, Any], msgs: list[str]) -> dict[str, str | int | float]:
    """Root attrs of the ``DataTree`` (netCDF-safe: str, int, float): the whole summary as the JSON
    string ``bayesmoe_diagnostics`` (with the messages under ``"warnings"``) and headline numbers."""
    def extreme(values, fn):
        vals = [v for v in values if v is not None]
        return float(fn(vals)) if vals else math.nan

    return {
        "bayesmoe_diagnostics": json.dumps({**diag, "warnings": list(msgs)}),
        "bayesmoe_n_divergent": int(diag["n_divergent"]),
        "bayesmoe_max_rhat": extreme(diag["rhat"].values(), max),
        "bayesmoe_min_ess_bulk": extreme(diag["ess_bulk"].values(), min),
        "bayesmoe_min_ess_tail": extreme(diag["ess_tail"].values(), min),
        "bayesmoe_min_ebfmi": extreme(diag["ebfmi"], min),
        "bayesmoe_tree_depth_saturation": float(diag["tree_depth_saturation"] or 0.0),
        "bayesmoe_n_warnings": len(msgs),
    }
