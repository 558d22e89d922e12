r"""The ready-made mixture-of-experts model: gate + expert + priors -> a NumPyro model.

.. math::  p(y | x) = \sum_{k=1}^K g_k(x; \theta_g)\, p_k(y | x; \theta_k)

``MoE(gate, expert, n_experts)`` is a callable NumPyro model ``model(x, y=None)`` usable with any
``numpyro.infer`` API, plus pure helpers on a params dict keyed by site name: ``log_likelihood``,
``responsibilities``, ``predict``, ``simulate``, ``n_params``. It composes the two families through
their contract (:mod:`bayesmoe.family`) only, so any gate and any expert, the package's or a user's,
combine. ``MoE`` is a value: equal models (same families, K, priors, joint) are equal and hash equal,
so compiled fits are reused across equal models.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from jax.scipy.special import logsumexp

from bayesmoe import _cache, _math
from bayesmoe import priors as _priors
from bayesmoe._quantile import mixture_quantile
from bayesmoe._random import as_key
from bayesmoe._validation import align_xy, as_x, check_positive_int, column_names, is_traced
from bayesmoe.distributions import MixtureOfExperts
from bayesmoe.family import Expert, Family, Gate

__all__ = ["DataScale", "MoE", "Prediction", "Simulation"]

# the persistent JAX compilation cache, on by default for everything built on models (bayesmoe._cache)
_cache.configure_default()

Params = dict[str, Any]


class Prediction(NamedTuple):
    r"""What the model predicts at x.

    :ivar gate_probs: gate probabilities :math:`g_k(x_i)` (n, K).
    :ivar expert_mean: expert means :math:`E_k[y \mid x_i]` (n, K) for experts that predict a mean
        (None otherwise).
    :ivar expert_probs: class probabilities of every expert (n, K, C) for class-probability experts
        (None otherwise).
    :ivar mean: the mixture mean :math:`\sum_k g_k(x_i) E_k[y \mid x_i]` (n,) (None without expert
        means).
    :ivar class_probs: the mixture's class probabilities (n, C) (None without expert class
        probabilities).
    :ivar lower: lower end (n,) of the prediction interval from the mixture's quantiles (None unless
        asked for, and for class-probability experts).
    :ivar upper: upper end (n,) of that interval.
    """

    gate_probs: jnp.ndarray
    expert_mean: jnp.ndarray | None
    expert_probs: jnp.ndarray | None
    mean: jnp.ndarray | None
    class_probs: jnp.ndarray | None
    lower: jnp.ndarray | None = None
    upper: jnp.ndarray | None = None


class Simulation(NamedTuple):
    """Simulated responses and their experts.

    :ivar y: the simulated responses (n,).
    :ivar z: the expert (0..K-1) each response was drawn from (n,).
    """

    y: jnp.ndarray
    z: jnp.ndarray


class DataScale(NamedTuple):
    """Scales of the gate's and the experts' regressors (see :mod:`bayesmoe.priors`)."""

    gate: _priors.Scale
    expert: _priors.Scale


def _robust_spread(v: np.ndarray) -> np.ndarray:
    """Per column: 1.4826 * MAD (the sd of a normal sample), the sd where the MAD is 0, else 1e-12."""
    mad = 1.4826 * np.median(np.abs(v - np.median(v, axis=0)), axis=0)
    sd = np.std(v, axis=0)
    return np.maximum(np.where(mad > 0, mad, sd), 1e-12)


def _priors_key(priors: Mapping | None):
    """A hashable summary of user priors (names and distribution types)."""
    if not priors:
        return ()
    return tuple(sorted((k, type(v).__name__) for k, v in priors.items()))


def _same_priors(a: Mapping | None, b: Mapping | None) -> bool:
    a, b = a or {}, b or {}
    if set(a) != set(b):
        return False
    for k in a:
        if a[k] is b[k]:
            continue
        la, ta = jax.tree.flatten(a[k])
        lb, tb = jax.tree.flatten(b[k])
        if type(a[k]) is not type(b[k]) or ta != tb or len(la) != len(lb):
            return False
        if not all(np.shape(u) == np.shape(v) and np.array_equal(np.asarray(u), np.asarray(v))
                   for u, v in zip(la, lb, strict=True)):
            return False
    return True


class MoE:
    """A mixture-of-experts NumPyro model.

    :param gate: a :class:`~bayesmoe.family.Gate`: ``bm.gates.Softmax()``,
        ``ModifiedSoftmax(transform)``, ``Gaussian(covariance)`` or a user's own.
    :param expert: an :class:`~bayesmoe.family.Expert`: ``bm.experts.Gaussian(degree)``,
        ``StudentT(degree, df)``, ``Poisson(degree)``, ``Categorical(n_classes)`` or a user's own.
    :param n_experts: K >= 1.
    :param priors: optional ``{site name: numpyro Distribution}`` overriding default priors
        (see :mod:`bayesmoe.priors` for the defaults and the data-scaling rule).
    :param joint: for gates that model x (``gate.models_x``, e.g. the Gaussian gate): also model the
        inputs, adding :math:`\\log p(x) = \\log\\sum_k \\pi_k N(x | c_k, \\Gamma_k)` as the observed
        site ``x`` (the GLLiM joint likelihood of arXiv 2305.07572).

    :param design: a :class:`bayesmoe.formula.Design` (made by :meth:`from_formula`): then ``x`` may be
        a DataFrame read through the stored formulas, and the gate and the experts may see different
        columns of the model's input matrix (their dims are then ``gate_feature`` and
        ``expert_feature``; ``feature`` indexes the input matrix).

    Calling ``model(x, y=None)`` declares the sample sites (``gate_*``, ``expert_*``) and the observed
    site ``y`` under the plate ``obs`` (always ``y``, whatever the response's name, so that code
    written for one model works for all). The keyword ``data_scale`` (from :meth:`data_scale`) fixes
    the prior scaling; by default it is computed from the ``x`` and ``y`` given. ``subsample_size``
    makes ``obs`` a minibatch plate (random rows, log-likelihood scaled by n / size; for
    ``bm.fit_vi``) and ``mask`` (bool, (n,)) zeroes the log-density of the rows it marks False
    (padding rows).
    """

    def __init__(self, gate: Gate, expert: Expert, n_experts: int, priors: dict | None = None,
                 joint: bool = False, design: Any = None):
        if not isinstance(gate, Gate):
            raise ValueError("`gate` must be a bayesmoe gate (bm.gates.Softmax(), ModifiedSoftmax(), "
                             f"Gaussian(), or a subclass of bm.gates.Gate), got {gate!r}")
        if not isinstance(expert, Expert):
            raise ValueError("`expert` must be a bayesmoe expert (bm.experts.Gaussian(), StudentT(), "
                             f"Poisson(), Categorical(), or a subclass of bm.experts.Expert), got {expert!r}")
        self.n_experts = check_positive_int(n_experts, "n_experts")
        if joint and not gate.models_x:
            raise ValueError("`joint=True` needs a gate that models x (e.g. bm.gates.Gaussian(): it adds "
                             f"log p(x) of the gate's mixture), got {gate!r}")
        self.gate, self.expert, self.priors, self.joint = gate, expert, priors, bool(joint)
        if design is not None:
            from bayesmoe.formula import Design  # noqa: PLC0415

            if not isinstance(design, Design):
                raise ValueError(f"`design` must be a bayesmoe.formula.Design (MoE.from_formula), got "
                                 f"{type(design).__name__}")
        self.design = design
        split = design is not None and design.split
        self._gate_cols = np.asarray(design.gate_index) if split else None
        self._expert_cols = np.asarray(design.expert_index) if split else None
        if priors is not None:
            if not isinstance(priors, dict):
                raise ValueError(f"`priors` must be a dict of site name -> Distribution, got "
                                 f"{type(priors).__name__}")
            known = self.prior_names()
            unknown = sorted(set(priors) - known)
            if unknown:
                raise ValueError(f"`priors` has unknown site name(s) {unknown}; known: "
                                 f"{sorted(known)}")

    def __repr__(self) -> str:
        j = ", joint=True" if self.joint else ""
        f = f", formula={self.design.formula_text()!r}" if self.design is not None else ""
        return f"MoE({self.gate!r}, {self.expert!r}, n_experts={self.n_experts}{j}{f})"

    def __eq__(self, other) -> bool:
        return (type(other) is type(self) and self.gate == other.gate and self.expert == other.expert
                and self.n_experts == other.n_experts and self.joint == other.joint
                and self.design == other.design and _same_priors(self.priors, other.priors))

    def __hash__(self) -> int:
        return hash((type(self), self.gate, self.expert, self.n_experts, self.joint, self.design,
                     _priors_key(self.priors)))

    @classmethod
    def from_formula(cls, formula: str, gate: str | None = None, *, n_experts: int, data: Any,
                     gate_family: Gate | None = None, expert: Expert | None = None,
                     priors: dict | None = None, joint: bool = False) -> MoE:
        """A model whose inputs are read from a DataFrame through Wilkinson formulas (formulaic).

        :param formula: ``"response ~ terms"``: the experts' regressors (e.g. ``"y ~ x1 + C(region)"``,
            ``"y ~ np.log(x1) + poly(x2, 2)"``); categorical columns are dummy-coded.
        :param gate: a one-sided formula of the gate's regressors (``"~ x1 + C(region)"``, flexmix's
            concomitant model), or None for the experts' right-hand side.
        :param n_experts: K >= 1.
        :param data: the training DataFrame: the design (levels, transform states) and, for
            class-label experts, the labels are learnt from it and stored in the model.
        :param gate_family: the gate (default ``bm.gates.Softmax()``).
        :param expert: the experts (default ``bm.experts.Gaussian()``).
        :param priors: as in :class:`MoE`.
        :param joint: as in :class:`MoE`.

        Then every workflow takes ``data=df`` in place of ``x, y`` (``bm.fit_mle(model, data=df)``,
        ``bm.sample``, ``model.log_likelihood(params, data=df)``) and a DataFrame wherever ``x`` is
        expected (``model.predict(params, new_df)``); see :mod:`bayesmoe.formula`.
        """
        from bayesmoe.formula import Design  # noqa: PLC0415

        if gate_family is None:
            from bayesmoe.gates import Softmax  # noqa: PLC0415

            gate_family = Softmax()
        if expert is None:
            from bayesmoe.experts import Gaussian  # noqa: PLC0415

            expert = Gaussian()
        if not isinstance(expert, Expert):
            raise ValueError(f"`expert` must be a bayesmoe expert, got {expert!r}")
        design = Design.learn(formula, gate, data)
        expert = expert.for_response(design.y(data))
        return cls(gate_family, expert, n_experts, priors=priors, joint=joint, design=design)

    def for_response(self, y: Any) -> MoE:
        """This model with an expert that knows the labels of ``y`` (e.g. string class labels for
        ``Categorical`` experts, learnt in sorted order or from a pandas Categorical's categories);
        the model itself when nothing is to learn."""
        expert = self.expert.for_response(y)
        if expert is self.expert:
            return self
        return type(self)(self.gate, expert, self.n_experts, priors=self.priors, joint=self.joint,
                          design=self.design)

    # ------------------------------------------------------------------ the families' columns
    def gate_x(self, x):
        """The gate's columns of the model's input matrix x (n, d) (all of them without a design
        that separates the gate's regressors from the experts')."""
        return x if self._gate_cols is None else _take(x, self._gate_cols)

    def expert_x(self, x):
        """The experts' columns of the model's input matrix x (n, d)."""
        return x if self._expert_cols is None else _take(x, self._expert_cols)

    def gate_d(self, d: int) -> int:
        """Number of the gate's inputs when the model's input matrix has d columns."""
        return d if self._gate_cols is None else len(self._gate_cols)

    def expert_d(self, d: int) -> int:
        """Number of the experts' inputs when the model's input matrix has d columns."""
        return d if self._expert_cols is None else len(self._expert_cols)

    def input_names(self, x: Any = None) -> list[str] | None:
        """Names of the model's input columns: the design's (formula models), else the DataFrame's.

        :param x: the inputs as the user gave them (a DataFrame's columns give the names), or None.
        """
        if self.design is not None:
            return list(self.design.columns)
        return column_names(x) if x is not None else None

    @property
    def response_name(self) -> str | None:
        """The response's name given by the formula (None without a formula)."""
        return None if self.design is None else self.design.response

    @property
    def classes(self) -> list | None:
        """The class labels of a class-label expert (``class`` coords), None for other experts."""
        return self.expert.classes()

    def decode_y(self, codes) -> np.ndarray:
        """Class codes 0..C-1 (any shape) as the original class labels (codes for other experts)."""
        labels = self.classes
        codes = np.asarray(codes)
        if labels is None:
            return codes
        return np.asarray(labels, dtype=object)[codes.astype(int)]

    @property
    def families(self) -> tuple[Family, Family]:
        return (self.gate, self.expert)

    # ------------------------------------------------------------------ data handling
    def prior_names(self) -> set[str]:
        """Names of every site a prior can be given for."""
        return self.gate.prior_names() | self.expert.prior_names()

    def check_data(self, x, y=None) -> tuple[np.ndarray, np.ndarray | None]:
        """Validate and convert ``x`` (n, d) and ``y`` (n,) (checked against the expert's support;
        class labels mapped to codes); raises ValueError naming the argument. Formula models read a
        DataFrame ``x`` through their design; an array ``x`` is taken as the design matrix."""
        y = align_xy(x, y)
        if self.design is not None and (isinstance(x, Mapping) or (column_names(x) is not None
                                                          and np.ndim(x) == 2)):
            x = self.design.x(x, "x")
        x = as_x(x, "x")
        if self.design is not None and x.shape[1] != len(self.design.columns):
            raise ValueError(f"`x` has {x.shape[1]} columns but the model's design has "
                             f"{len(self.design.columns)} ({list(self.design.columns)}): pass a DataFrame "
                             "(read through the formula) or its design matrix")
        if y is None:
            return x, None
        return x, self.expert.check_y(y, x.shape[0], "y")

    def y_dtype(self):
        """int32 for experts with a discrete support, the default float otherwise."""
        return jnp.int32 if self.expert.is_discrete else jnp.result_type(float)

    def _prepare(self, x, y=None, host: bool = False):
        """Checked (x, y) as arrays of the model's dtypes: on the default device, or numpy arrays
        with ``host`` (casts and transfers happen on the host: nothing is compiled)."""
        if is_traced(x) or is_traced(y):
            x = jnp.asarray(x)
            return (x[:, None] if x.ndim == 1 else x), y
        x, y = self.check_data(x, y)
        x = np.asarray(x, dtype=jnp.result_type(float))
        if y is not None:
            y = np.asarray(y, self.y_dtype())
        if host:
            return x, y
        return jax.device_put(x), None if y is None else jax.device_put(y)

    def data_scale(self, x, y=None) -> DataScale:
        """The data scales the default priors are stated in (see :mod:`bayesmoe.priors`).

        :param x: inputs (n, d) (a DataFrame for formula models).
        :param y: responses (n,), or None (unit scale for y).
        """
        x, y = self._prepare(x, y, host=True)
        return DataScale(_priors.data_scale(self.gate.features(self.gate_x(x)), None),
                         _priors.data_scale(self.expert.features(self.expert_x(x)), y))

    # ------------------------------------------------------------------ the NumPyro model
    def __call__(self, x, y=None, *, data_scale: DataScale | None = None,
                 subsample_size: int | None = None, mask=None):
        x, y = self._prepare(x, y)
        scale = data_scale if data_scale is not None else self.data_scale(x, y)
        d = x.shape[1]
        params = self.gate.sample(self.n_experts, self.gate_d(d), scale.gate, self.priors)
        params.update(self.expert.sample(self.n_experts, self.expert_d(d), scale.expert, self.priors))
        with numpyro.plate("obs", x.shape[0], subsample_size=subsample_size) as idx:
            if subsample_size is not None:  # a random minibatch; NumPyro scales by n / size
                x, y = x[idx], None if y is None else y[idx]
                mask = None if mask is None else mask[idx]
            if self.joint:
                fx = self.gate.x_distribution(params)
                numpyro.sample("x", fx if mask is None else fx.mask(mask), obs=self.gate_x(x))
            fy = self.distribution(params, x)
            numpyro.sample("y", fy if mask is None else fy.mask(mask), obs=y)

    def distribution(self, params: Params, x) -> MixtureOfExperts:
        """The per-observation mixture p(y_i | x_i) as a :class:`MixtureOfExperts` (batch (n,)).

        :param params: parameters keyed by site name (:meth:`site_names`; e.g. ``fit.params``).
        :param x: inputs (n, d), as an array.
        """
        return MixtureOfExperts(self.gate.log_weights(params, self.gate_x(x)),
                                self.expert.component(params, self.expert_x(x)))

    # ------------------------------------------------------------------ parameters (from the tables)
    def sizes(self, d: int) -> dict[str, int]:
        r"""Values of both families' shape symbols (``K``, ``d``, ``p``, ``C``, ...).

        :param d: number of inputs (columns of x; for formula models the design's columns).
        """
        return {**self.gate.sizes(self.n_experts, self.gate_d(d)),
                **self.expert.sizes(self.n_experts, self.expert_d(d))}

    def check_params(self, params: Params, d: int, *, batch_ndim: int = 0,
                     name: str = "params") -> Params:
        """Check a params dict against both families' tables (keys, every axis of every shape,
        finiteness, support) and return the table's sites (alternative forms converted).

        Raises ``ValueError`` naming ``name[site]`` with the expected and the received shape.

        :param params: the params dict to check (site name -> array-like).
        :param d: number of inputs (columns of x; for formula models the design's columns).
        :param batch_ndim: number of leading batch axes allowed (e.g. 1 for S starts).
        :param name: the argument name used in error messages.
        """
        if not isinstance(params, Mapping):
            raise ValueError(f"`{name}` must be a dict keyed by site name, got {type(params).__name__}")
        out = self.gate.check_params(params, self.n_experts, self.gate_d(d), batch_ndim=batch_ndim,
                                     name=name)
        out.update(self.expert.check_params(params, self.n_experts, self.expert_d(d),
                                            batch_ndim=batch_ndim, name=name))
        return out

    def n_params(self, d: int) -> int:
        """Number of free parameters for d inputs (for AIC/BIC)."""
        d = check_positive_int(d, "d")
        return (self.gate.n_params(self.n_experts, self.gate_d(d))
                + self.expert.n_params(self.n_experts, self.expert_d(d)))

    def free_params(self, params: Params) -> Params:
        """The sample-site values of full parameters (reference rows dropped, gauge applied): what
        ``numpyro.infer.util.log_density`` and ``init_to_value`` take. Leading batch axes are kept.

        :param params: full parameters keyed by site name; leading batch axes allowed.
        """
        out = self.gate.to_free(self.gate.canonical(dict(params)))
        out.update(self.expert.to_free(self.expert.canonical(dict(params))))
        return out

    def init_values(self, params: Params) -> Params:
        """The values of every sample site of the model (what NumPyro's ``init_params`` take, before
        unconstraining) that give the full parameters ``params``: :meth:`free_params`, with the sites of
        hierarchical priors (e.g. the horseshoe's) replaced by their latent sites
        (:func:`bayesmoe.priors.latent_values`).

        :param params: full parameters keyed by site name.
        """
        free = self.free_params(params)
        for fam in self.families:
            for p in fam.param_table():
                if p.site in free:
                    prior = None if self.priors is None else self.priors.get(p.name)
                    free.update(_priors.latent_values(prior, p.site, free.pop(p.site)))
        return free

    def with_priors(self, priors: dict | None) -> MoE:
        """This model with other ``priors`` (same families, design and likelihood).

        :param priors: ``{site name: prior}`` or None (the defaults).
        """
        return type(self)(self.gate, self.expert, self.n_experts, priors=priors, joint=self.joint,
                          design=self.design)

    def full_params(self, free: Params, d: int) -> Params:
        """Full parameters (with reference rows and derived sites) from sample-site values.

        :param free: sample-site values (``<name>_free`` for sites with a reference row); leading
            batch axes allowed.
        :param d: number of inputs (columns of x; for formula models the design's columns).
        """
        out = self.gate.to_full(free, self.n_experts, self.gate_d(d))
        out.update(self.expert.to_full(free, self.n_experts, self.expert_d(d)))
        return out

    def complete_params(self, params: Params, d: int | None = None) -> Params:
        """The table's sites plus the derived deterministic sites (e.g. ``gate_cov``).

        Sites given only by their free part (``gate_coef_free``, as stored in a posterior: the
        reference entries are constant and left out) get their reference entries (zeros) back; with
        ``d`` (the number of inputs), sites without free parameters (constants, e.g. the gate of
        K = 1) are added too. Leading batch axes (draws) are kept.

        :param params: parameters keyed by site name (full or free sites).
        :param d: the number of inputs, or None.
        """
        out = dict(params)
        for fam in self.families:
            fd = self._family_d(fam, d)
            sizes = fam.sizes(self.n_experts, fd) if fd is not None else None
            for p in fam.param_table():
                if p.name in out:
                    continue
                if p.reference and p.site in out:
                    v = jnp.asarray(out[p.site])
                    ax = v.ndim + p.ref_axis()
                    zshape = list(v.shape)
                    zshape[ax] = 1
                    out[p.name] = jnp.concatenate([v, jnp.zeros(zshape, v.dtype)], axis=ax)
                elif sizes is not None and p.n_free(sizes) == 0:
                    c = p.constant(sizes, jnp.result_type(float))
                    out[p.name] = jnp.broadcast_to(c, self._batch_shape(out) + c.shape)
            out = {**out, **fam.canonical(out)}
            out.update(fam.derived(out))
        return out

    def _batch_shape(self, params: Params) -> tuple[int, ...]:
        """Leading (draw) axes of params, read from any table site or free site present."""
        for fam in self.families:
            for p in fam.param_table():
                for key in (p.name, p.site):
                    if key in params:
                        nd = np.ndim(params[key]) - len(p.shape)
                        return tuple(np.shape(params[key]))[:nd]
        return ()

    def regauge(self, params: Params) -> Params:
        """The same parameters in the reference gauge of both families.

        :param params: full parameters keyed by site name; leading batch axes allowed.
        """
        return self.expert.regauge(self.gate.regauge(params))

    def reference_sites(self) -> dict[str, tuple[str, str]]:
        """``{site: (free site, dim)}`` for the sites with a reference entry along ``dim``: the
        posterior stores the free site, without that entry (dim ``<dim>_free``)."""
        return {p.name: (p.site, p.reference) for fam in self.families for p in fam.param_table()
                if p.reference}

    def reference_dims(self) -> dict[str, str]:
        """``{site: dim}`` for the sites whose last entry along ``dim`` is fixed at zero (the gauge
        that relabelling restores after permuting experts)."""
        return {**self.gate.reference_dims(), **self.expert.reference_dims()}

    def param_dims(self, d: int, free: bool = False) -> dict[str, tuple[str, ...]]:
        """Named dims of every site (for ArviZ); with ``free=True`` also the free sample sites.

        :param d: number of inputs (columns of x; for formula models the design's columns).
        :param free: also the dims of the free sample sites (``<name>_free``).
        """
        dims = _renamed(self.gate.param_dims(self.gate_d(d), free), self._dim_names("gate"))
        dims.update(_renamed(self.expert.param_dims(self.expert_d(d), free), self._dim_names("expert")))
        return dims

    def posterior_dims(self, d: int) -> dict[str, tuple[str, ...]]:
        """The sites a posterior stores, with their dims: the free part ``<name>_free`` of a site with
        reference entries (those are constant zeros; dim ``<dim>_free``), every other site with free
        parameters, and the derived sites. Constants are left out (a constant has no R-hat);
        :meth:`complete_params` restores the full sites.

        :param d: the number of inputs.
        """
        out = {}
        for role, fam in (("gate", self.gate), ("expert", self.expert)):
            fd = self._family_d(fam, d)
            sizes = fam.sizes(self.n_experts, fd)
            dims = _renamed(fam.param_dims(fd, free=True), self._dim_names(role))
            for p in fam.param_table():
                if p.n_free(sizes) > 0:
                    out[p.site] = dims[p.site]
            out.update(_renamed(fam.derived_dims(), self._dim_names(role)))
        return out

    def _family_d(self, fam: Family, d: int | None) -> int | None:
        """The number of inputs family ``fam`` (the gate or the expert) sees."""
        if d is None:
            return None
        return self.gate_d(d) if fam is self.gate else self.expert_d(d)

    def _dim_names(self, role: str) -> dict[str, str]:
        """Renamed input dims of a family that sees its own columns (``gate_feature``, ...)."""
        if self._gate_cols is None:
            return {}
        return {"feature": f"{role}_feature", "feature_bis": f"{role}_feature_bis"}

    def site_names(self, d: int) -> set[str]:
        """Names of the full (user-facing) sites: the tables' sites and the derived ones.

        :param d: number of inputs (columns of x; for formula models the design's columns).
        """
        return set(self.param_dims(d))

    def coords(self, feature_names: list[str]) -> dict[str, list]:
        """ArviZ coords of every dim of the model's sites (and ``<dim>_free``: all but the last
        entry, for the free parts of sites with a reference entry).

        :param feature_names: names of the input columns (length d), the ``feature`` coords.
        """
        names = list(feature_names)
        out = {"expert": list(range(self.n_experts)), "feature": names}
        for role, fam, cols in (("gate", self.gate, self._gate_cols),
                                ("expert", self.expert, self._expert_cols)):
            own = names if cols is None else [names[i] for i in cols]
            ren = self._dim_names(role)
            for k, v in fam.coords(own).items():
                out.setdefault(ren.get(k, k), v)
        for fam in self.families:
            for dim in set(fam.reference_dims().values()):
                if dim in out:
                    out[f"{dim}_free"] = list(out[dim])[:-1]
        return out

    def floors(self, x: np.ndarray, y: np.ndarray | None, scale_floor: float) -> dict[str, jnp.ndarray]:
        """Absolute lower bounds of the floored scales: ``scale_floor`` times the robust spread
        (1.4826 MAD, the sd where the MAD is 0) of the variable each bounds (y for expert scales,
        each x column for gate scales), so that a few outliers do not lift every floor."""
        x = np.asarray(x, float)
        spread = {}
        if y is not None and not self.expert.is_discrete:
            sy = _robust_spread(np.asarray(y, float).reshape(len(y), -1))  # one per column of y
            spread["y"] = float(sy[0]) if sy.size == 1 else sy
        out = {}
        for fam, fx in ((self.gate, self.gate_x(x)), (self.expert, self.expert_x(x))):
            spread["x"] = _robust_spread(fx)
            for name, var in fam.floor_sites().items():
                if var in spread:
                    out[name] = np.asarray(scale_floor * spread[var], jnp.result_type(float))
        return out

    def random_params(self, rng: np.random.Generator, d: int) -> Params:
        """Random valid parameters of both families (numpy; for tests and demos).

        :param rng: a ``numpy.random.Generator``.
        :param d: number of inputs (columns of x; for formula models the design's columns).
        """
        out = self.gate.random_params(rng, self.n_experts, self.gate_d(d))
        out.update(self.expert.random_params(rng, self.n_experts, self.expert_d(d)))
        return out

    # ------------------------------------------------------------------ pure helpers
    def log_joint_terms(self, params: Params, x, y) -> jnp.ndarray:
        r""":math:`\ell_{ik} = \log g_k(x_i) + \log p_k(y_i | x_i)` (with ``joint``, the gate term is
        :math:`\log \pi_k + \log p_k(x_i)`), shape (n, K): the E-step's terms.

        :param params: parameters keyed by site name (:meth:`site_names`; e.g. ``fit.params``).
        :param x: inputs (n, d), as an array.
        :param y: responses (n,).
        """
        return _math.log_joint_terms(self.gate.log_terms(params, self.gate_x(x), self.joint),
                                     self.expert.log_prob(params, self.expert_x(x), y))

    def log_likelihood(self, params: Params, x=None, y=None, *, data=None) -> jnp.ndarray:
        r"""Pointwise log-likelihood :math:`\log p(y_i | x_i)` (plus :math:`\log p(x_i)` when
        ``joint``), shape (n,). Arguments are checked unless traced (inside jit/vmap).

        :param params: parameters keyed by site name.
        :param x: inputs (n, d) (a DataFrame for formula models).
        :param y: responses (n,).
        :param data: for formula models, a DataFrame in place of ``x`` and ``y``.
        """
        x, y = _resolve(self, x, y, data)
        x, y = self._prepare(x, y)
        if y is None:
            raise ValueError("`y` is required, got None")
        if not is_traced(x) and not any(is_traced(v) for v in jax.tree.leaves(params)):
            params = self.check_params(params, x.shape[1])
        return _log_likelihood(self, params, x, y)

    def responsibilities(self, params: Params, x=None, y=None, *, data=None) -> jnp.ndarray:
        """Posterior expert memberships :math:`P(z_i = k | x_i, y_i)`, shape (n, K) (arguments as in
        :meth:`log_likelihood`).

        :param params: parameters keyed by site name (:meth:`site_names`; e.g. ``fit.params``).
        :param x: inputs (n, d) (a DataFrame for formula models).
        :param y: responses (n,).
        :param data: for formula models, a DataFrame in place of ``x`` and ``y``.
        """
        x, y = _resolve(self, x, y, data)
        x, y = self._prepare(x, y)
        return _responsibilities(self, params, x, y)

    def predict(self, params: Params, x, interval: float | None = None) -> Prediction:
        r"""Gate probabilities, expert means or class probabilities, and the mixture's prediction.

        :param params: parameters keyed by site name.
        :param x: inputs (n, d).
        :param interval: None, or a level in (0, 1): then ``lower`` and ``upper`` hold the central
            prediction interval of :math:`p(y | x_i)`, the mixture's :math:`(1 \mp level)/2`
            quantiles (bisection on the mixture CDF :math:`\sum_k g_k(x_i) F_k(t | x_i)`), for
            experts whose distributions have a CDF (not class-probability experts).
        """
        if interval is not None and not (isinstance(interval, (int, float)) and not isinstance(interval, bool)
                                         and 0 < float(interval) < 1):
            raise ValueError(f"`interval` must be None or a level in (0, 1), got {interval!r}")
        x, _ = self._prepare(x)
        if not is_traced(x) and not any(is_traced(v) for v in jax.tree.leaves(params)):
            params = self.check_params(params, x.shape[1])
        g, em, ep, mean, cp = _predict(self, params, x)
        ev = len(self.expert.y_shape())  # vector responses: em is (n, K, q)
        lower = upper = None
        if interval is not None and ev:
            raise NotImplementedError("prediction intervals are for scalar responses; "
                                      f"{self.expert!r} has vector responses")
        if interval is not None and ep is None:
            lower, upper = _interval(self, params, x, (1.0 - float(interval)) / 2)
        return Prediction(g, em, ep, mean, cp, lower, upper)

    def simulate(self, seed, params: Params, x) -> Simulation:
        """Draw y_i ~ p(y | x_i) and report the expert z_i each came from.

        :param seed: an int or a ``jax.random`` key.
        :param params: parameters keyed by site name (:meth:`site_names`; e.g. ``fit.params``).
        :param x: inputs (n, d) (a DataFrame for formula models).
        """
        key = as_key(seed, "seed")
        x, _ = self._prepare(x)
        params = self.check_params(params, x.shape[1])
        return Simulation(*_simulate(self, key, params, x))

    def sample_x(self, seed, params: Params, n: int) -> jnp.ndarray:
        """Draw inputs from the gate's model of x (gates with ``models_x``, e.g. the GLLiM Gaussian
        gate). ``seed``: an int or a ``jax.random`` key.

        :param seed: an int or a ``jax.random`` key.
        :param params: parameters keyed by site name (:meth:`site_names`; e.g. ``fit.params``).
        :param n: number of inputs to draw.
        """
        if not self.gate.models_x:
            raise ValueError(f"`sample_x` needs a gate that models x (e.g. a Gaussian gate), got "
                             f"{self.gate!r}")
        key = as_key(seed, "seed")
        check_positive_int(n, "n")
        d = np.shape(params["gate_loc"])[-1] if "gate_loc" in params else None
        if d is not None:
            params = self.gate.check_params(params, self.n_experts, d)
        return self.gate.sample_x(key, params, n)

    # ------------------------------------------------------------------ EM
    def em_prepare(self, x, y) -> tuple:
        """Data the families' M-steps compute once per EM run.

        :param x: inputs (n, d), as an array.
        :param y: responses (n,).
        """
        return self.gate.em_prepare(self.gate_x(x), y), self.expert.em_prepare(self.expert_x(x), y)

    def em_update(self, params: Params, r, x, y, floors: Mapping, cache: tuple) -> Params:
        """One M-step of both families given responsibilities r (n, K).

        :param params: the current full parameters keyed by site name.
        :param r: responsibilities (n, K), :math:`r_{ik} = P(z_i = k \\mid x_i, y_i)` at the current
            parameters (E-step).
        :param x: inputs (n, d), as an array.
        :param y: responses (n,).
        :param floors: ``{site name: lower bound}`` of the floored scales.
        :param cache: the pair returned by :meth:`em_prepare`.
        """
        new = self.gate.em_update(params, r, self.gate_x(x), y, floors, cache[0], self.joint)
        return self.expert.em_update(new, r, self.expert_x(x), y, floors, cache[1], self.joint)

    # ------------------------------------------------------------------ specs
    def spec(self) -> dict:
        """A JSON-able description of the model (stored in ArviZ attrs); see :meth:`from_spec`."""
        out = {"n_experts": self.n_experts, "joint": self.joint, "gate": self.gate.spec(),
               "expert": self.expert.spec()}
        if self.design is not None:
            out["design"] = self.design.spec()
        return out

    @classmethod
    def from_spec(cls, spec: Mapping, priors: dict | None = None) -> MoE:
        """Rebuild a model from :meth:`spec`. An unknown family is a clear error (never a silent
        default); a family defined by a user must be defined (imported) first.

        :param spec: the dict written by :meth:`spec` (e.g. the ``bayesmoe_model`` attribute of a
            DataTree).
        :param priors: the priors dict (priors are not part of the spec), or None for the defaults.
        """
        if not isinstance(spec, Mapping):
            raise ValueError(f"`spec` must be a dict (MoE.spec()), got {type(spec).__name__}")
        for key in ("gate", "expert", "n_experts"):
            if key not in spec:
                raise ValueError(f"`spec` is missing {key!r}")
        gate = _rebuild(spec["gate"], "gate")
        expert = _rebuild(spec["expert"], "expert")
        design = None
        if spec.get("design") is not None:
            from bayesmoe.formula import Design  # noqa: PLC0415

            design = Design.from_spec(spec["design"])
        return cls(gate, expert, spec["n_experts"], priors=priors, joint=bool(spec.get("joint", False)),
                   design=design)

    @classmethod
    def from_datatree(cls, dt, priors: dict | None = None) -> MoE:
        """Rebuild the model a posterior ``DataTree`` was sampled from (its root attribute
        ``bayesmoe_model``, written by :func:`bayesmoe.sample`), e.g. after
        ``xarray.open_datatree(path)``.

        :param dt: the ``DataTree``.
        :param priors: the model's user priors, if it had any (they are not stored).
        """
        from bayesmoe.inference.io import model_from_datatree  # noqa: PLC0415

        return model_from_datatree(dt, priors=priors)



def _take(x, cols: np.ndarray):
    """Columns ``cols`` of the last axis (numpy stays numpy; JAX arrays and tracers use a gather)."""
    if isinstance(x, np.ndarray):
        return x[..., cols]
    return jnp.take(x, jnp.asarray(cols), axis=-1)


def _renamed(dims: dict, names: dict) -> dict:
    return {k: tuple(names.get(s, s) for s in v) for k, v in dims.items()} if names else dims


def _resolve(model: MoE, x, y, data):
    if data is None:
        return x, y
    from bayesmoe.formula import resolve_data  # noqa: PLC0415

    return resolve_data(model, x, y, data)


@partial(jax.jit, static_argnums=(0, 3))
def _interval(model: MoE, params: Params, x, a: float):
    """The mixture's a and 1 - a quantiles at every x (compiled once per model and level)."""
    lw = model.gate.log_weights(params, model.gate_x(x))
    comp = model.expert.component(params, model.expert_x(x))
    disc = model.expert.is_discrete
    q = jax.vmap(lambda p: mixture_quantile(lw, comp, p, disc))(jnp.asarray([a, 1.0 - a], lw.dtype))
    return q[0], q[1]


def _rebuild(spec, role: str) -> Family:
    try:
        fam = Family.from_spec(spec, role)
    except (TypeError, ValueError) as err:
        raise ValueError(f"cannot rebuild the {role} from {spec!r}: {err}") from err
    want = Gate if role == "gate" else Expert
    if not isinstance(fam, want):
        raise ValueError(f"the {role} spec {spec!r} names a {type(fam).__name__}, not a {role}")
    return fam


# One compiled program per model value and shapes for the public helpers (eager evaluation would compile
# every primitive separately); inside a caller's jit they are inlined.
@partial(jax.jit, static_argnums=0)
def _log_likelihood(model: MoE, params: Params, x, y) -> jnp.ndarray:
    return logsumexp(model.log_joint_terms(params, x, y), axis=-1)


@partial(jax.jit, static_argnums=0)
def _responsibilities(model: MoE, params: Params, x, y) -> jnp.ndarray:
    return jax.nn.softmax(model.log_joint_terms(params, x, y), axis=-1)


@partial(jax.jit, static_argnums=0)
def _predict(model: MoE, params: Params, x):
    g = jax.nn.softmax(model.gate.log_weights(params, model.gate_x(x)), axis=-1)  # sums to 1 exactly
    em = model.expert.mean(params, model.expert_x(x))
    ep = model.expert.probs(params, model.expert_x(x))
    ev = len(model.expert.y_shape())  # vector responses: em is (n, K, q)
    mean = None if em is None else jnp.sum(g.reshape(g.shape + (1,) * ev) * em, axis=g.ndim - 1)
    cp = None if ep is None else jnp.einsum("nk,nkc->nc", g, ep)
    return g, em, ep, mean, cp


@partial(jax.jit, static_argnums=0)
def _simulate(model: MoE, key, params: Params, x):
    return model.distribution(params, x).sample_with_index(key)
