r"""Undo label switching in a mixture-of-experts posterior (a ``DataTree`` from :func:`bayesmoe.sample`).

The likelihood of a K-expert model is invariant under the :math:`K!` permutations of the expert
labels, so the posterior has :math:`K!` symmetric copies of every mode. Chains started apart settle
in differently labelled copies (R-hat far above 1 although every chain is fine), and a chain may
also switch labels mid-run. Relabelling finds, for every draw :math:`s`, a permutation
:math:`\tau_s` of :math:`\{1..K\}` and re-indexes that draw's expert parameters,
:math:`\theta^{(s)}_k \leftarrow \theta^{(s)}_{\tau_s(k)}`, so that all draws (of all chains jointly)
share one labelling. Both methods below work on the posterior expert memberships of each draw,

.. math::  p^{(s)}_{ik} = P(z_i = k \mid x_i, y_i, \theta^{(s)})
           = \frac{g_k(x_i; \theta^{(s)})\, p_k(y_i \mid x_i; \theta^{(s)})}
                  {\sum_j g_j(x_i; \theta^{(s)})\, p_j(y_i \mid x_i; \theta^{(s)})},

computed with :meth:`MixtureOfExperts.responsibilities` for every posterior draw (vectorised over
draws in chunks, to bound memory at ``chunk x n x K`` floats).

**ECR** (``method="ecr"``, equivalence classes representatives; ECR-iterative-1 of Papastamoulis &
Iliopoulos 2010). With the draw-wise MAP allocations :math:`z^{(s)}_i = \arg\max_k p^{(s)}_{ik}` and a
pivot allocation :math:`z^*` (initially the allocations of the draw of highest log-likelihood),
iterate until no permutation changes:

.. math::  \tau_s = \arg\max_{\tau} \sum_{i=1}^n \mathbb{1}\{\tau^{-1}(z^{(s)}_i) = z^*_i\},
           \qquad
           z^*_i = \operatorname{mode}_s\, \tau_s^{-1}(z^{(s)}_i).

Each :math:`\tau_s` is a linear assignment on the K x K agreement matrix
:math:`A^{(s)}_{kj} = \#\{i : z^*_i = k,\, z^{(s)}_i = j\}` (Hungarian algorithm,
:func:`scipy.optimize.linear_sum_assignment`); the total agreement increases at every step.

**Stephens** (``method="stephens"``; Stephens 2000, the KL algorithm). Iterate until no permutation
changes (starting from :math:`Q` = the memberships of the draw of highest log-likelihood):

.. math::  q_{ik} = \frac1S \sum_s p^{(s)}_{i\tau_s(k)},
           \qquad
           \tau_s = \arg\min_\tau \sum_{i=1}^n \sum_{k=1}^K
                    p^{(s)}_{i\tau(k)} \log\frac{p^{(s)}_{i\tau(k)}}{q_{ik}},

again a K x K linear assignment per draw (the entropy term does not depend on :math:`\tau`, so the
cost is :math:`C^{(s)}_{kj} = -\sum_i p^{(s)}_{ij} \log q_{ik}`).

After relabelling every variable with an ``expert`` dim is permuted per (chain, draw), in every group
whose (chain, draw) match the posterior's. Softmax gates are then put back in the reference gauge
(the new last expert's row subtracted from every row: the gate probabilities and the likelihood are
unchanged, and each draw is again a valid parameter value with a zero reference row).

References: P. Papastamoulis and G. Iliopoulos (2010), An artificial allocations based solution to the
label switching problem in Bayesian analysis of mixtures of distributions, J. Comput. Graph. Stat.
19(2), 313-331. M. Stephens (2000), Dealing with label switching in mixture models, J. R. Stat. Soc.
B 62(4), 795-809. P. Papastamoulis (2016), label.switching: an R package for dealing with the label
switching problem in MCMC outputs, J. Stat. Softw. 69(c1).
"""

from __future__ import annotations

import json
import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from scipy.optimize import linear_sum_assignment

from bayesmoe._draws import chunk_size, map_draws
from bayesmoe.model import MoE

__all__ = ["METHODS", "relabel"]

METHODS = ("ecr", "stephens")
SAMPLE_DIMS = ("chain", "draw")
_PERM_VAR = "relabel_permutation"


def relabel(idata, method: str = "ecr", *, model: MoE | None = None, max_iter: int = 100,
            chunk: int | None = None):
    """Relabel the experts of every posterior draw so that all draws share one labelling.

    :param idata: a ``DataTree`` from :func:`bayesmoe.sample` (groups ``posterior``,
        ``constant_data`` (x), ``observed_data`` (y); ``log_likelihood`` is used to pick the starting
        pivot when present).
    :param method: ``"ecr"`` (ECR-iterative-1 on the MAP allocations) or ``"stephens"`` (KL
        algorithm on the membership probabilities). See the module docstring.
    :param model: the :class:`~bayesmoe.MoE`; by default rebuilt from the root attribute
        ``bayesmoe_model`` (``MoE.from_spec``).
    :param max_iter: maximum number of iterations (a warning is issued when not converged).
    :param chunk: number of draws whose memberships are computed at once (default: about 2e7 / (n K)).
    :returns: a new ``DataTree`` (the input is not modified) with the permuted draws, softmax gates in
        the reference gauge, ``sample_stats.relabel_permutation`` (chain, draw, expert): the original
        (sampler) label now stored under each label, and root attributes ``relabel_method``,
        ``relabel_fraction_permuted`` (fraction of draws this call permuted), ``relabel_iterations``
        and ``relabel_converged`` (1 or 0: netCDF attributes cannot be booleans).
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"`max_iter` must be a positive integer, got {max_iter!r}")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer))
                              or chunk < 1):
        raise ValueError(f"`chunk` must be a positive integer or None, got {chunk!r}")
    if model is None and isinstance(idata, xr.DataTree) and "bayesmoe_model" not in idata.attrs and not (
            "posterior" in idata.children and "bayesmoe_model" in idata["posterior"].attrs):
        raise ValueError("`idata` does not record its model (no `bayesmoe_model` attribute: it was not made "
                         "by bayesmoe.sample or bayesmoe.to_datatree(..., moe=...)): pass the model with "
                         "`model=`")
    post = _group(idata, "posterior")
    if "expert" not in post.dims:
        raise ValueError("`idata.posterior` has no `expert` dim: nothing to relabel")
    n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
    K = post.sizes["expert"]
    model = _resolve_model(idata, model, K)
    S = n_chain * n_draw

    if K == 1:
        perms = np.zeros((S, 1), dtype=np.int64)
        n_iter, converged = 0, True
    else:
        x, y = _data(idata, model)
        start = _pivot_draw(idata, S)
        if method == "ecr":
            z = _memberships(model, post, x, y, chunk, argmax=True)
            perms, n_iter, converged = _ecr(z, K, start, max_iter)
        else:
            p = _memberships(model, post, x, y, chunk, argmax=False)
            perms, n_iter, converged = _stephens(p, start, max_iter)
        if not converged:
            warnings.warn(f"relabel({method!r}) did not converge in max_iter={max_iter} iterations",
                          RuntimeWarning, stacklevel=2)
    perms = perms.reshape(n_chain, n_draw, K)
    frac = float(np.mean(np.any(perms != np.arange(K), axis=-1)))

    out = idata.copy()
    for node in idata.subtree:
        if not node.has_data or node.is_root:
            continue
        ds = node.to_dataset(inherit=False)
        if not all(d in ds.dims for d in SAMPLE_DIMS) or ds.sizes["chain"] != n_chain \
                or ds.sizes["draw"] != n_draw:
            continue
        reduced = node.path == "/posterior"
        if reduced:  # the posterior stores free sites: permute the full ones, then reduce again
            ds = complete_dataset(ds, model)
        new = _permute_dataset(ds, perms, model.reference_dims())
        if reduced:
            new = reduce_dataset(new, model, node.to_dataset(inherit=False))
        if node.path == "/sample_stats" and _PERM_VAR not in new:
            new = new.assign({_PERM_VAR: xr.DataArray(perms, dims=(*SAMPLE_DIMS, "expert"),
                                                      coords={"expert": post["expert"].values})})
        if new is not ds:
            out[node.relative_to(idata)] = new
    if "sample_stats" not in out.children:
        out["sample_stats"] = xr.Dataset(
            {_PERM_VAR: xr.DataArray(perms, dims=(*SAMPLE_DIMS, "expert"))},
            coords={"chain": post["chain"].values, "draw": post["draw"].values,
                    "expert": post["expert"].values})
    out.attrs.update(relabel_method=method, relabel_fraction_permuted=frac,
                     relabel_iterations=int(n_iter), relabel_converged=int(bool(converged)))
    return out


# ----------------------------------------------------------------------------- inputs
def _group(idata, name: str) -> xr.Dataset:
    if not isinstance(idata, xr.DataTree):
        raise ValueError(f"`idata` must be an xarray DataTree (from bayesmoe.sample), got "
                         f"{type(idata).__name__}")
    if name not in idata.children:
        raise ValueError(f"`idata` has no `{name}` group")
    ds = idata[name].to_dataset()
    if name == "posterior" and not all(d in ds.dims for d in SAMPLE_DIMS):
        raise ValueError(f"`idata.posterior` must have dims {SAMPLE_DIMS}, got {tuple(ds.dims)}")
    return ds


def _resolve_model(idata, model, K: int) -> MoE:
    if model is None:
        spec = idata.attrs.get("bayesmoe_model")
        if spec is None:
            spec = idata["posterior"].attrs.get("bayesmoe_model")
        if spec is None:
            raise ValueError("`idata` has no `bayesmoe_model` attribute to rebuild the model from: "
                             "pass the model with `model=`")
        model = MoE.from_spec(json.loads(spec) if isinstance(spec, str) else dict(spec))
    if not isinstance(model, MoE):
        raise ValueError(f"`model` must be a bayesmoe.MoE, got {type(model).__name__}")
    if model.n_experts != K:
        raise ValueError(f"`model` has n_experts = {model.n_experts} but the posterior has {K} experts")
    return model


def _data(idata, model: MoE):
    if "constant_data" not in idata.children or "x" not in idata["constant_data"].data_vars:
        raise ValueError("`idata` needs `constant_data.x` (the inputs) to compute expert memberships")
    if "observed_data" not in idata.children or "y" not in idata["observed_data"].data_vars:
        raise ValueError("`idata` needs `observed_data.y` (the responses) to compute memberships")
    x = np.asarray(idata["constant_data"]["x"].values)
    y = np.asarray(idata["observed_data"]["y"].values)
    x = jnp.asarray(x[:, None] if x.ndim == 1 else x, dtype=jnp.result_type(float))
    return x, jnp.asarray(y, model.y_dtype())


def _pivot_draw(idata, S: int) -> int:
    """Flat index of the draw with the highest log-likelihood (0 if there is no log_likelihood)."""
    if "log_likelihood" not in idata.children or "y" not in idata["log_likelihood"].data_vars:
        return 0
    ll = idata["log_likelihood"]["y"]
    ll = ll.sum([d for d in ll.dims if d not in SAMPLE_DIMS]).transpose(*SAMPLE_DIMS).values
    ll = np.where(np.isfinite(ll), ll, -np.inf).reshape(-1)
    return int(np.argmax(ll)) if ll.shape[0] == S else 0


def _flat_params(post: xr.Dataset, names: set[str], model: MoE | None = None,
                 d: int | None = None) -> dict[str, np.ndarray]:
    """The model's posterior sites as (S, ...) arrays (chains and draws flattened); with ``model``,
    free sites are completed to full ones (:meth:`bayesmoe.MoE.complete_params`)."""
    out = {}
    for name, da in post.data_vars.items():
        if all(s_ in da.dims for s_ in SAMPLE_DIMS):
            v = da.transpose(*SAMPLE_DIMS, ...).values
            out[str(name)] = v.reshape((-1,) + v.shape[2:])
    if model is not None:
        out = {k: np.asarray(v) for k, v in model.complete_params(out, d).items()}
    return {k: v for k, v in out.items() if k in names}


def complete_dataset(ds: xr.Dataset, model: MoE) -> xr.Dataset:
    """A posterior Dataset with the full sites: each free site ``<name>_free`` (dim ``<dim>_free``)
    becomes ``<name>`` with its reference entry (zeros) appended along ``<dim>``."""
    out = ds
    for name, (site, dim) in model.reference_sites().items():
        if site not in out.data_vars or name in out.data_vars:
            continue
        da = out[site]
        free = f"{dim}_free"
        da = da.drop_vars(free) if free in da.coords else da
        zero = xr.zeros_like(da.isel({free: slice(0, 1)}))
        full = xr.concat([da, zero], dim=free).rename({free: dim})
        out = out.drop_vars(site).assign({name: full})
    return out


def reduce_dataset(ds: xr.Dataset, model: MoE, like: xr.Dataset) -> xr.Dataset:
    """The inverse of :func:`complete_dataset` for the sites that ``like`` stores as free sites."""
    out = ds
    for name, (site, dim) in model.reference_sites().items():
        if site not in like.data_vars or name not in out.data_vars:
            continue
        free = f"{dim}_free"
        da = out[name].isel({dim: slice(0, -1)})
        da = da.drop_vars(dim) if dim in da.coords else da
        da = da.rename({dim: free}).transpose(*like[site].dims)
        if free in like.coords:
            da = da.assign_coords({free: like[free].values})
        out = out.drop_vars(name).assign({site: da})
    return out


@partial(jax.jit, static_argnums=(0, 4))
def _membership_batch(model: MoE, params: dict, x, y, argmax: bool):
    def one(p):
        r = model.responsibilities(p, x, y)
        return jnp.argmax(r, axis=-1).astype(jnp.int32) if argmax else r.astype(jnp.float32)

    return jax.vmap(one)(params)


def _memberships(model: MoE, post: xr.Dataset, x, y, chunk: int | None, argmax: bool) -> np.ndarray:
    """Memberships p_ik^(s), (S, n, K) float32, or the MAP allocations argmax_k, (S, n) int."""
    params = _flat_params(post, model.site_names(x.shape[1]), model, x.shape[1])
    step = chunk if chunk is not None else chunk_size(x.shape[0] * model.n_experts)
    return map_draws(lambda p: _membership_batch(model, p, x, y, argmax), params, step)


# ----------------------------------------------------------------------------- algorithms
def _assign(score: np.ndarray, maximize: bool) -> np.ndarray:
    """perm[s] solving the K x K assignment on score[s] (row k = new label, column = old label)."""
    perms = np.empty(score.shape[:2], dtype=np.int64)
    for s in range(score.shape[0]):
        _, perms[s] = linear_sum_assignment(score[s], maximize=maximize)
    return perms


def _inverse(perms: np.ndarray) -> np.ndarray:
    inv = np.empty_like(perms)
    np.put_along_axis(inv, perms, np.arange(perms.shape[1])[None, :], axis=1)
    return inv


def _ecr(z: np.ndarray, K: int, start: int, max_iter: int):
    """ECR-iterative-1: permutations (S, K) with perm[s, k] = the old label given new label k."""
    S, n = z.shape
    pivot = z[start].astype(np.int64)
    perms = None
    block = max(1, int(2e7 // max(1, n)))
    converged, n_iter = False, 0
    while n_iter < max_iter:
        n_iter += 1
        agree = np.empty((S, K, K), dtype=np.int64)
        for a in range(0, S, block):
            zb = z[a:a + block].astype(np.int64)
            flat = (np.arange(zb.shape[0])[:, None] * K * K + pivot[None, :] * K + zb).ravel()
            agree[a:a + block] = np.bincount(flat, minlength=zb.shape[0] * K * K).reshape(-1, K, K)
        new = _assign(agree, maximize=True)
        if perms is not None and np.array_equal(new, perms):
            converged = True
            break
        perms = new
        inv = _inverse(perms)
        counts = np.zeros((n, K), dtype=np.int64)
        for a in range(0, S, block):
            relab = np.take_along_axis(inv[a:a + block], z[a:a + block].astype(np.int64), axis=1)
            counts += np.bincount((np.arange(n)[None, :] * K + relab).ravel(),
                                  minlength=n * K).reshape(n, K)
        pivot = np.argmax(counts, axis=1)
    return perms, n_iter, converged


def _stephens(p: np.ndarray, start: int, max_iter: int):
    """Stephens' KL algorithm: permutations (S, K) with perm[s, k] = the old label given new label k."""
    S, n, K = p.shape
    tiny = np.finfo(np.float32).tiny
    q = p[start].astype(np.float64)
    perms = None
    converged, n_iter = False, 0
    while n_iter < max_iter:
        n_iter += 1
        logq = np.log(np.maximum(q, tiny)).astype(np.float32)
        cost = -np.einsum("ik,sij->skj", logq, p, optimize=True)
        new = _assign(cost.astype(np.float64), maximize=False)
        if perms is not None and np.array_equal(new, perms):
            converged = True
            break
        perms = new
        q = np.zeros((n, K))
        for s in range(S):
            q += p[s][:, perms[s]]
        q /= S
    return perms, n_iter, converged


# ----------------------------------------------------------------------------- applying permutations
def _permute_dataset(ds: xr.Dataset, perms: np.ndarray, reference: dict[str, str]) -> xr.Dataset:
    """Permute the expert axis of every (chain, draw, expert, ...) variable, then put the sites with a
    reference entry on the expert dim back in their gauge (``reference``: site -> reference dim)."""
    names = [k for k, v in ds.data_vars.items() if "expert" in v.dims
             and all(d in v.dims for d in SAMPLE_DIMS)]
    if not names:
        return ds
    ds = ds.copy()
    for name in names:
        da = ds[name]
        t = da.transpose(*SAMPLE_DIMS, "expert", ...)
        v = np.asarray(t.values)
        idx = perms.reshape(perms.shape + (1,) * (v.ndim - 3))
        v = np.take_along_axis(v, idx, axis=2)
        ds[name] = t.copy(data=v).transpose(*da.dims)
        ref = reference.get(str(name))
        if ref == "expert":
            ds[name] = ds[name] - ds[name].isel(expert=-1, drop=True)
            ds[name] = ds[name].transpose(*da.dims)
    return ds
