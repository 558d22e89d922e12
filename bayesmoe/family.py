r"""The family contract: what a gate or an expert is, for every workflow of the package.

A family (a gate or an expert) is a small immutable value (a frozen dataclass: equal families hash
equal, so compiled code is cached by *value*) that subclasses :class:`Gate` or :class:`Expert` and
declares **once** a table of its parameter sites (:meth:`Family.param_table`, a tuple of
:class:`Param`). Everything generic is derived from that table here, never written per family:

* the NumPyro sample sites and their default (data-scaled) priors (:meth:`Family.sample`);
* the prior names, the parameter checks (keys, every axis of every shape, finiteness, support),
  :meth:`Family.n_params`, ArviZ dims and coords;
* the free <-> full conversion (:meth:`Family.to_free` / :meth:`Family.to_full`): a site with an
  identifiability rule (``reference="expert"`` or ``"class"``: the last entry along that dim is fixed
  at zero) is sampled as its free part ``<name>_free`` and exposed in full as a deterministic site;
  the gauge (:meth:`Family.regauge`) used after relabelling; sites without free parameters
  (K = 1 reference rows, a 1 x 1 correlation, a one-expert simplex) are constants;
* the maps to unconstrained space (with explicit lower bounds for scales, ``Param.floor``), random
  test parameters, a neutral starting point, and a generic generalised-EM M-step
  (:meth:`Family.em_update`: damped Newton on the responsibility-weighted complete-data objective,
  accepted only when it increases, so EM stays monotone) for families without a closed form.

A family supplies its own math (log gate weights, expert log densities, component distributions,
means), the support of y (experts: a NumPyro constraint that drives validation and dtype),
data-driven starting values from soft weights, and optionally a closed-form M-step
(:meth:`Gate.em_mstep`, :meth:`Expert.em_mstep`). Code that consumes a family calls these methods
only. A family written outside the package against these bases works in every workflow
(``fit_mle``/``fit_map`` with L-BFGS, Adam or EM, ``sample``, ``relabel``, ``predict``, plots, specs).
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.flatten_util import ravel_pytree
from numpyro.distributions import constraints
from numpyro.distributions.transforms import AffineTransform, ComposeTransform, ExpTransform

from bayesmoe import _feature_maps, _math
from bayesmoe import priors as _priors
from bayesmoe._feature_maps import FeatureMap
from bayesmoe._solvers import newton_ascent

__all__ = ["REGRESSOR", "Expert", "Family", "Gate", "Param"]

Params = dict[str, Any]
#: placeholder in ``Param.dims`` for the family's regressor dim (``feature``, ``term``, ...)
REGRESSOR = "<regressor>"
_REGISTRY: dict[str, type] = {}
# Newton iterations of the generic M-step per EM step, and for a data-driven start
_GEM_STEPS = 5
_INIT_STEPS = 50


@dataclasses.dataclass(frozen=True)
class Param:
    """One row of a family's parameter table.

    :param name: the site name (``gate_coef``, ``expert_scale``, ...), shared by priors, fitted params,
        the posterior and ``simulate``.
    :param shape: symbols or ints, e.g. ``("K", "p")``; symbols are looked up in
        :meth:`Family.sizes` (``K`` experts, ``d`` inputs, ``p`` the family's regressors, ``C``
        classes, or any symbol the family adds).
    :param dims: ArviZ dim names, one per axis (``REGRESSOR`` for the family's regressor dim).
    :param constraint: the NumPyro constraint of the site (its support).
    :param prior: ``prior(scale, sizes) -> Distribution``: the default prior, stated in the data's
        units (``scale`` a :class:`bayesmoe.priors.Scale` of the family's regressors and of y),
        broadcastable to the free shape.
    :param reference: a dim name whose last entry is fixed at zero (identifiability), or None.
    :param floor: ``"y"`` or ``"x"``: a positive scale bounded below by ``scale_floor`` times the
        spread of that variable in maximum-likelihood fits; None for no floor.
    :param affine: how the site changes when the data are standardised (:meth:`Family.standardize`):
        ``"intercept"`` and ``"coef"`` of a linear predictor in x (and in y units for experts with
        ``y_affine``), ``"y_scale"`` (a scale of y), ``"x_loc"`` / ``"x_scale"`` (a location / scale
        of each x column); None: unchanged.
    """

    name: str
    shape: tuple
    dims: tuple
    constraint: Any
    prior: Callable
    reference: str | None = None
    floor: str | None = None
    affine: str | None = None

    @property
    def site(self) -> str:
        """Name of the sample site: ``<name>_free`` when a reference entry is fixed, else the name."""
        return f"{self.name}_free" if self.reference else self.name

    def ref_axis(self) -> int:
        """The reference axis, counted from the end (so leading batch axes are allowed)."""
        return self.dims.index(self.reference) - len(self.dims)

    def full_shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        r"""The site's full shape, symbols replaced by their values.

        :param sizes: values of the shape symbols (:meth:`Family.sizes`, e.g. ``{'K': 3, 'd': 2, 'p':
            2}``).
        """
        return tuple(int(sizes[s]) if isinstance(s, str) else int(s) for s in self.shape)

    def free_shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        r"""The sample site's shape: the full shape with one entry fewer along the reference dim.

        :param sizes: values of the shape symbols (:meth:`Family.sizes`).
        """
        shape = list(self.full_shape(sizes))
        if self.reference:
            shape[self.ref_axis()] -= 1
        return tuple(shape)

    def bijection(self):
        return dist.biject_to(self.constraint)

    def unconstrained_shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        r"""Shape of the site in unconstrained space (e.g. K - 1 for a K-simplex).

        :param sizes: values of the shape symbols (:meth:`Family.sizes`).
        """
        return tuple(self.bijection().inverse_shape(self.free_shape(sizes)))

    def n_free(self, sizes: Mapping[str, int]) -> int:
        r"""Number of free parameters of the site (size of its unconstrained shape).

        :param sizes: values of the shape symbols (:meth:`Family.sizes`).
        """
        return int(np.prod(self.unconstrained_shape(sizes), dtype=np.int64))

    def constant(self, sizes: Mapping[str, int], dtype) -> jnp.ndarray:
        """The value of a site without free parameters.

        :param sizes: values of the shape symbols (:meth:`Family.sizes`).
        :param dtype: the float dtype of the result.
        """
        if self.reference:
            return jnp.zeros(self.full_shape(sizes), dtype)
        return self.bijection()(jnp.zeros(self.unconstrained_shape(sizes), dtype))


def _undeclared_feature_map(self, x_loc, x_scale) -> None:
    """The feature map of a family whose regressors were redefined without one: none (x is not
    standardised for it)."""
    return None


def _in_support(constraint, a: np.ndarray, tol: float = 1e-4) -> bool:
    """Whether ``a`` lies in the support, with a rounding tolerance for simplex and correlation
    factors (values computed in float32 are accepted)."""
    if constraint is constraints.simplex:
        return bool(np.all(a >= 0) and np.all(np.abs(a.sum(-1) - 1) <= tol))
    if constraint is constraints.corr_cholesky:
        norms = np.linalg.norm(a, axis=-1)
        return bool(np.all(np.triu(a, 1) == 0) and np.all(np.diagonal(a, axis1=-2, axis2=-1) > 0)
                    and np.all(np.abs(norms - 1) <= tol))
    return bool(np.all(np.asarray(constraint.check(a))))


def _float_dtype():
    return jnp.result_type(float)


class Family(abc.ABC):
    """Common base of :class:`Gate` and :class:`Expert` (see the module docstring).

    Subclasses are immutable values: make them ``@dataclasses.dataclass(frozen=True)`` (the fields
    are the family's configuration, e.g. ``degree``), and implement :meth:`param_table`.
    """

    role: ClassVar[str] = "family"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _REGISTRY[f"{cls.__module__}.{cls.__qualname__}"] = cls
        mro = cls.__mro__
        owner = {name: next(i for i, c in enumerate(mro) if name in c.__dict__)
                 for name in ("features", "feature_map")}
        if owner["feature_map"] > owner["features"]:
            # regressors redefined without their map: not standardisable, by declaration (never a guess)
            cls.feature_map = _undeclared_feature_map

    # ------------------------------------------------------------------ what a family declares
    @abc.abstractmethod
    def param_table(self) -> tuple[Param, ...]:
        """The parameter sites of this family, each declared once."""

    def n_features(self, d: int) -> int:
        """Number of regressors for d inputs (``p`` in shapes)."""
        return d

    def features(self, x: jnp.ndarray) -> jnp.ndarray:
        """The family's regressors of x (n, d), shape (n, p). A family that overrides this declares
        :meth:`feature_map` beside it, or its fits do not standardise x."""
        return _math.as_array(x)

    def feature_map(self, x_loc, x_scale) -> FeatureMap | None:
        r"""The exact map of the regressors under a change of units of x:
        :math:`f((x - m)/s) = A f(x) + c` (:class:`bayesmoe._feature_maps.FeatureMap`), or None when no
        such map exists (e.g. bounded transforms M(x)): then fits never standardise x for this family.

        The default is that of :meth:`features`' default (the regressors are x: A = diag(1/s),
        c = -m/s). A subclass that overrides :meth:`features` and not this method gets None.

        :param x_loc: the location m (d,).
        :param x_scale: the scale s (d,).
        """
        return _feature_maps.identity_map(x_loc, x_scale)

    def regressor_dim(self, d: int) -> str:
        """ArviZ dim name of the regressor axis.

        :param d: number of inputs (columns of x).
        """
        return "feature"

    def regressor_names(self, names: list[str]) -> list:
        """Coordinate labels of the regressor axis, given the input names."""
        return list(names) if self.n_features(len(names)) == len(names) else list(
            range(self.n_features(len(names))))

    def sizes(self, K: int, d: int) -> dict[str, int]:
        """Values of the shape symbols. Override to add symbols (e.g. ``C``).

        :param K: number of experts.
        :param d: number of inputs (columns of x).
        """
        return {"K": int(K), "d": int(d), "p": int(self.n_features(d))}

    def coords(self, names: list[str]) -> dict[str, list]:
        """ArviZ coords of the family's own dims (the expert and feature dims are the model's).

        :param names: the input names (the ``feature`` coords), length d.
        """
        return {self.regressor_dim(len(names)): self.regressor_names(names)}

    def canonical(self, params: Params) -> Params:
        """Convert accepted alternative parametrisations to the table's sites (default: as is).

        :param params: a user's params dict (site name -> array).
        """
        return params

    def derived(self, params: Params) -> Params:
        """Deterministic sites computed from the table's sites (default: none).

        :param params: the table's full sites (site name -> array).
        """
        return {}

    def derived_dims(self) -> dict[str, tuple[str, ...]]:
        """ArviZ dims of the sites of :meth:`derived`."""
        return {}

    def em_prepare(self, x: jnp.ndarray, y: jnp.ndarray | None) -> Any:
        """Data computed once per EM run and passed to the M-step (default: none).

        :param x: inputs (n, d).
        :param y: responses (n,) (None for gates).
        """
        return None

    @property
    def label(self) -> str:
        """A human name for figures and messages."""
        return repr(self)

    # ------------------------------------------------------------------ specs
    def spec(self) -> dict:
        """A JSON-able description: the class path and the dataclass fields."""
        out = {"family": f"{type(self).__module__}.{type(self).__qualname__}"}
        if dataclasses.is_dataclass(self):
            for f in dataclasses.fields(self):
                if f.init:
                    out[f.name] = getattr(self, f.name)
        return out

    @staticmethod
    def from_spec(spec: Mapping, role: str = "family") -> Family:
        """Rebuild a family from :meth:`spec`; an unknown family is a clear error.

        :param spec: the dict written by :meth:`spec` (``family``: the class path, then the dataclass
            fields).
        :param role: ``"gate"``, ``"expert"`` or ``"family"``, named in error messages.
        """
        if not isinstance(spec, Mapping) or "family" not in spec:
            raise ValueError(f"a {role} spec must be a dict with a 'family' key, got {spec!r}")
        path = str(spec["family"])
        cls = _REGISTRY.get(path)
        if cls is None and "." in path and "<locals>" not in path:
            module, _, name = path.rpartition(".")
            try:
                cls = getattr(importlib.import_module(module), name, None)
            except ImportError:
                cls = None
        if cls is None or not (isinstance(cls, type) and issubclass(cls, Family)):
            raise ValueError(f"unknown {role} family {path!r}: define or import it before rebuilding "
                             "the model, or pass the model itself (model=...)")
        kwargs = {k: v for k, v in spec.items() if k != "family"}
        return cls(**kwargs)

    # ------------------------------------------------------------------ derived from the table
    def prior_names(self) -> set[str]:
        return {p.name for p in self.param_table()}

    def param_shapes(self, K: int, d: int) -> dict[str, tuple[int, ...]]:
        r"""Full shape of every site of the table, ``{site name: shape}``.

        :param K: number of experts.
        :param d: number of inputs (columns of x).
        """
        sizes = self.sizes(K, d)
        return {p.name: p.full_shape(sizes) for p in self.param_table()}

    def n_params(self, K: int, d: int) -> int:
        """Number of free parameters (reference entries and constraints accounted for).

        :param K: number of experts.
        :param d: number of inputs (columns of x).
        """
        sizes = self.sizes(K, d)
        return int(sum(p.n_free(sizes) for p in self.param_table()))

    def param_dims(self, d: int, free: bool = False) -> dict[str, tuple[str, ...]]:
        """ArviZ dims of every full site (and of the free sites with ``free=True``).

        :param d: number of inputs (columns of x).
        :param free: also give the dims of the free sample sites (``<name>_free``, the reference dim
            renamed ``<dim>_free``).
        """
        reg = self.regressor_dim(d)
        out = {}
        for p in self.param_table():
            dims = tuple(reg if s == REGRESSOR else s for s in p.dims)
            out[p.name] = dims
            if free and p.reference:
                out[p.site] = tuple(f"{s}_free" if s == p.reference else s for s in dims)
        out.update(self.derived_dims())
        return out

    def reference_dims(self) -> dict[str, str]:
        """``{site name: dim}`` for sites with a reference entry fixed at zero."""
        return {p.name: p.reference for p in self.param_table() if p.reference}

    def floor_sites(self) -> dict[str, str]:
        """``{site name: "x" | "y"}`` for scales with an explicit lower bound."""
        return {p.name: p.floor for p in self.param_table() if p.floor}

    def check_params(self, params: Mapping, K: int, d: int, *, batch_ndim: int = 0,
                     name: str = "params") -> Params:
        """Check keys, shapes (every axis), finiteness and support; return the table's sites.

        Raises ``ValueError`` naming ``name[site]`` and the expected and received shapes.

        :param params: the params dict to check (site name -> array-like).
        :param K: number of experts.
        :param d: number of inputs (columns of x).
        :param batch_ndim: number of leading batch axes allowed before each site's shape (e.g. 1 for S
            starts).
        :param name: the argument name used in error messages.
        """
        if not isinstance(params, Mapping):
            raise ValueError(f"`{name}` must be a dict keyed by site name, got {type(params).__name__}")
        params = self.canonical(dict(params))
        sizes = self.sizes(K, d)
        missing = sorted(p.name for p in self.param_table() if p.name not in params)
        if missing:
            raise ValueError(f"`{name}` is missing site(s) {missing} of {self!r}")
        out, batch = {}, None
        for p in self.param_table():
            a = np.asarray(params[p.name])
            if a.dtype.kind not in "iufb":
                raise ValueError(f"`{name}[{p.name!r}]` must be numeric, got dtype {a.dtype}")
            want = p.full_shape(sizes)
            lead = a.shape[:batch_ndim]
            if a.ndim != len(want) + batch_ndim or a.shape[batch_ndim:] != want:
                extra = " with a leading axis of S starts (add [None] for one start)" if batch_ndim else ""
                raise ValueError(f"`{name}[{p.name!r}]` must have shape {want}{extra} for {self!r} "
                                 f"with K = {K}, d = {d}; got {a.shape}")
            if batch is None:
                batch = lead
            elif lead != batch:
                raise ValueError(f"`{name}[{p.name!r}]` has leading shape {lead} but other sites "
                                 f"have {batch}")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"`{name}[{p.name!r}]` contains NaN or infinite values")
            if not _in_support(p.constraint, a.astype(float)):
                raise ValueError(f"`{name}[{p.name!r}]` is outside its support "
                                 f"({type(p.constraint).__name__}): e.g. scales must be positive, "
                                 "weights on the simplex")
            out[p.name] = a
        return out

    def to_free(self, params: Mapping) -> Params:
        """Sample-site values of full parameters: reference entries dropped after re-gauging, sites
        without free parameters omitted. Leading batch axes are kept.

        :param params: the family's full parameters, ``{site name: array}`` with the table's shapes
            (expert axis K first, e.g. ``(K, d)`` slopes); leading batch axes allowed where noted.
        """
        out = {}
        for p in self.param_table():
            v = _math.as_array(params[p.name])
            if p.reference:
                ax = v.ndim + p.ref_axis()
                v = v - _take(v, v.shape[ax] - 1, v.shape[ax], ax)
                if v.shape[ax] == 1:
                    continue
                v = _take(v, 0, v.shape[ax] - 1, ax)
            elif p.bijection().inverse_shape(v.shape)[-1:] == (0,):
                continue
            out[p.site] = v
        return out

    def to_full(self, free: Mapping, K: int, d: int) -> Params:
        """Full parameters (reference entries as zeros, constants filled, derived sites added) from
        sample-site values; leading batch axes are kept.

        :param free: sample-site values (``<name>_free`` for sites with a reference entry), leading
            batch axes allowed.
        :param K: number of experts.
        :param d: number of inputs (columns of x).
        """
        sizes = self.sizes(K, d)
        out = {}
        batch = None
        for p in self.param_table():
            if p.site in free:
                v = _math.as_array(free[p.site])
                batch = v.shape[: v.ndim - len(p.shape)]
        batch = batch or ()
        for p in self.param_table():
            if p.site not in free:
                c = p.constant(sizes, _float_dtype())
                out[p.name] = jnp.broadcast_to(c, batch + c.shape)
                continue
            v = _math.as_array(free[p.site])
            out[p.name] = _append_zero(v, p) if p.reference else v
        out.update(self.derived(out))
        return out

    def regauge(self, params: Mapping) -> Params:
        """The same parameters in the reference gauge (reference entries subtracted).

        :param params: the family's full parameters, ``{site name: array}`` with the table's shapes
            (expert axis K first, e.g. ``(K, d)`` slopes); leading batch axes allowed where noted.
        """
        out = dict(params)
        for p in self.param_table():
            if p.reference and p.name in out:
                v = _math.as_array(out[p.name])
                ax = v.ndim + p.ref_axis()
                out[p.name] = v - _take(v, v.shape[ax] - 1, v.shape[ax], ax)
        return out

    def affine_sites(self, tag: str) -> list[str]:
        """Names of the sites with the given ``affine`` tag (e.g. ``"coef"``: the slopes).

        :param tag: an ``affine`` tag of :class:`Param` (``"intercept"``, ``"coef"``, ``"y_scale"``,
            ``"x_loc"``, ``"x_scale"``).
        """
        return [p.name for p in self.param_table() if p.affine == tag]

    def x_affine(self, d: int) -> bool:
        """Whether fits may standardise x for this family, derived from its declaration: every site
        that moves with the units of x is tagged (``"intercept"``/``"coef"`` of a linear predictor in
        the regressors, with a :meth:`feature_map`; ``"x_loc"``/``"x_scale"``). A family without such
        tags is not standardised (its dependence on x is not declared).

        :param d: number of inputs (columns of x).
        """
        tags = {p.affine for p in self.param_table()}
        if tags & {"intercept", "coef"}:
            return type(self).feature_map is not _undeclared_feature_map
        return bool(tags & {"x_loc", "x_scale"})

    def standardize(self, params: Mapping, x_loc=None, x_scale=None, y_loc=0.0, y_scale=1.0, *,
                    inverse: bool = False) -> Params:
        r"""Parameters for standardised data :math:`\tilde x = (x - m)/s`, :math:`\tilde y = (y - c)/t`
        (``inverse=True``: back to the data's units), from the table's ``affine`` tags.

        A linear predictor :math:`b + a^\top f(x)` in the family's regressors f is pulled through the
        exact map of :meth:`feature_map`: with :math:`f(\tilde x) = A f(x) + c` the standardised
        :math:`(\tilde a, \tilde b)` are the raw :math:`(A^\top \tilde a, \tilde b + \tilde a^\top c)`
        (for regressors x itself: :math:`b + a^\top x = (b + a^\top m) + (a \circ s)^\top \tilde x`); for
        experts with ``y_affine`` the predictor is also in units of y (divided by t, shifted by c);
        ``y_scale`` sites are divided by t, ``x_loc`` sites map to (loc - m)/s and ``x_scale`` sites
        to scale/s.

        :param params: the family's full parameters, ``{site name: array}`` with the table's shapes
            (expert axis K first, e.g. ``(K, d)`` slopes); leading batch axes allowed.
        :param x_loc: the location m (d,) subtracted from x, or None to leave x as is.
        :param x_scale: the scale s (d,) dividing x, or None to leave x as is.
        :param y_loc: the location c subtracted from y.
        :param y_scale: the scale t dividing y.
        :param inverse: map parameters of standardised data back to the data's units.
        """
        y_aff = bool(getattr(self, "y_affine", False))
        c, t = (y_loc, y_scale) if y_aff else (0.0, 1.0)
        move_x = x_loc is not None
        if move_x and not self.x_affine(int(np.shape(x_loc)[-1])):
            raise ValueError(f"{self!r} declares no exact map of its parameters under a change of units "
                             "of x (Family.feature_map / the table's affine tags): x cannot be standardised")
        out = dict(params)
        tags = {p.affine: p.name for p in self.param_table() if p.affine}
        if "coef" in tags and "intercept" in tags:
            a, b = jnp.asarray(params[tags["coef"]]), jnp.asarray(params[tags["intercept"]])
            if inverse:
                if move_x:
                    a, b = self.feature_map(x_loc, x_scale).pull(a, b)
                a, b = a * t, b * t + c
            else:
                a, b = a / t, (b - c) / t
                if move_x:
                    m, sx = jnp.asarray(x_loc), jnp.asarray(x_scale)
                    a, b = self.feature_map(-m / sx, 1.0 / sx).pull(a, b)
            out[tags["coef"]], out[tags["intercept"]] = a, b
        m, sx = (jnp.asarray(x_loc), jnp.asarray(x_scale)) if move_x else (0.0, 1.0)
        for p in self.param_table():
            v = jnp.asarray(params[p.name])
            if p.affine == "y_scale":
                out[p.name] = v * t if inverse else v / t
            elif p.affine == "x_loc" and move_x:
                out[p.name] = v * sx + m if inverse else (v - m) / sx
            elif p.affine == "x_scale" and move_x:
                out[p.name] = v * sx if inverse else v / sx
        return out

    def transforms(self, floors: Mapping | None = None) -> dict:
        """Bijections from unconstrained space to every sample site's support; sites named in
        ``floors`` (positive scales) use ``floor + exp(u)``: an explicit lower bound.

        :param floors: ``{site name: lower bound}`` of the floored scales, or None.
        """
        floors = floors or {}
        out = {}
        for p in self.param_table():
            if p.name in floors:
                out[p.site] = ComposeTransform([ExpTransform(), AffineTransform(floors[p.name], 1.0)])
            else:
                out[p.site] = p.bijection()
        return out

    def random_params(self, rng: np.random.Generator, K: int, d: int) -> Params:
        """Random valid full parameters (numpy float64): unconstrained values uniform in (-1, 1).

        :param rng: a ``numpy.random.Generator``.
        :param K: number of experts.
        :param d: number of inputs (columns of x).
        """
        sizes = self.sizes(K, d)
        with jax.enable_x64(True):  # exact constraints (simplex sums, unit rows) in float64
            free = {}
            for p in self.param_table():
                shape = p.unconstrained_shape(sizes)
                if int(np.prod(shape, dtype=np.int64)) == 0:
                    continue
                free[p.site] = p.bijection()(jnp.asarray(rng.uniform(-1.0, 1.0, size=shape), jnp.float64))
            full = {k: np.asarray(v, np.float64) for k, v in self.to_full(free, K, d).items()}
        return full

    def neutral_params(self, K: int, d: int, dtype=None) -> Params:
        """Unconstrained zeros mapped to every site: a neutral starting point.

        :param K: number of experts.
        :param d: number of inputs (columns of x).
        :param dtype: float dtype (default: float64 under x64, else float32).
        """
        sizes = self.sizes(K, d)
        dtype = dtype or _float_dtype()
        free = {p.site: p.bijection()(jnp.zeros(p.unconstrained_shape(sizes), dtype))
                for p in self.param_table() if p.n_free(sizes) > 0}
        return self.to_full(free, K, d)

    def sample(self, n_experts: int, d: int, scale: _priors.Scale,
               priors: Mapping | None = None) -> Params:
        """Declare the family's NumPyro sample sites with their priors; return full parameters.

        ``scale`` is the :class:`~bayesmoe.priors.Scale` of this family's regressors (and of y),
        the unit the default priors are stated in; ``priors`` overrides them by site name.

        :param n_experts: K, the number of experts.
        :param d: number of inputs (columns of x).
        :param scale: the :class:`~bayesmoe.priors.Scale` of the family's regressors and of y.
        :param priors: ``{site name: NumPyro distribution}`` overriding default priors, or None.
        """
        K = n_experts
        sizes = self.sizes(K, d)
        dtype = jnp.result_type(scale.mean.dtype, float)
        out = {}
        for p in self.param_table():
            if p.n_free(sizes) == 0:
                out[p.name] = numpyro.deterministic(p.name, p.constant(sizes, dtype))
                continue
            shape = p.free_shape(sizes)
            prior = _priors.resolve(priors, p.name, p.prior(scale, sizes), shape)
            v = _priors.draw(p.site, prior, shape)
            if p.reference:
                v = numpyro.deterministic(p.name, _append_zero(v, p))
            out[p.name] = v
        for k, v in self.derived(out).items():
            out[k] = numpyro.deterministic(k, v)
        return out

    # ------------------------------------------------------------------ Voronoi losses (bm.metrics)
    def voronoi_atoms(self, params: Params) -> dict[str, jnp.ndarray]:
        """The family's blocks of each atom of the mixing measure, ``{block: (..., K, m)}`` (distances
        are Euclidean norms per block). Families that take part in Voronoi losses override it.

        :param params: the family's full parameters, ``{site name: array}`` with the table's shapes
            (expert axis K first, e.g. ``(K, d)`` slopes); leading batch axes allowed where noted.
        """
        raise NotImplementedError(f"{self!r} defines no Voronoi atoms (voronoi_atoms)")

    def voronoi_orders(self) -> dict[str, str | float]:
        """Exponent of each block's distance inside over-fitted cells: ``"r"``, ``"r/2"`` (with r
        the cell's rbar) or a fixed number; singleton cells use first powers."""
        return {}

    def take_atoms(self, params: Params, index) -> Params:
        """The family's sites with the expert axis indexed by ``index`` (copies or a subset of atoms;
        derived sites are recomputed).

        :param params: the family's full parameters, ``{site name: array}`` with the table's shapes
            (expert axis K first, e.g. ``(K, d)`` slopes); leading batch axes allowed where noted.
        :param index: integer indices along the expert axis (length K', repeats allowed).
        """
        out = dict(params)
        for p in self.param_table():
            if p.name in params and "expert" in p.dims:
                v = jnp.asarray(params[p.name])
                axis = v.ndim - len(p.dims) + p.dims.index("expert")
                out[p.name] = jnp.take(v, jnp.asarray(index), axis=axis)
        out.update(self.derived(out))
        return out

    # ------------------------------------------------------------------ generic EM pieces
    @abc.abstractmethod
    def em_objective(self, params: Params, r: jnp.ndarray, x: jnp.ndarray, y: jnp.ndarray,
                     joint: bool) -> jnp.ndarray:
        """The family's part of the expected complete-data log-likelihood :math:`Q`.

        :param params: the family's full parameters, ``{site name: array}`` with the table's shapes
            (expert axis K first, e.g. ``(K, d)`` slopes); leading batch axes allowed where noted.
        :param r: responsibilities (n, K): :math:`r_{ik} = P(z_i = k \\mid x_i, y_i)` of the E-step (or
            soft start weights); rows sum to 1 (zero rows for padding).
        :param x: inputs (n, d).
        :param y: responses (n,) as values of the expert's ``support`` (None for gates).
        :param joint: whether the objective is the joint log-likelihood of (x, y) (a gate that models
            x, ``Gate.models_x``): the gate's term is then :math:`\\log \\pi_k + \\log p_k(x_i)` instead
            of :math:`\\log g_k(x_i)`.
        """

    def em_update(self, params: Params, r: jnp.ndarray, x: jnp.ndarray, y: jnp.ndarray,
                  floors: Mapping, cache: Any, joint: bool, n_steps: int = _GEM_STEPS) -> Params:
        """One M-step: the family's closed form (:meth:`em_mstep`) when it has one, else
        ``n_steps`` damped Newton steps on :meth:`em_objective` in the unconstrained free
        parametrisation (accepted only when :math:`Q` increases: a generalised EM step).

        :param params: the family's full parameters, ``{site name: array}`` with the table's shapes
            (expert axis K first, e.g. ``(K, d)`` slopes); leading batch axes allowed where noted.
        :param r: responsibilities (n, K): :math:`r_{ik} = P(z_i = k \\mid x_i, y_i)` of the E-step (or
            soft start weights); rows sum to 1 (zero rows for padding).
        :param x: inputs (n, d).
        :param y: responses (n,) as values of the expert's ``support`` (None for gates).
        :param floors: ``{site name: lower bound}`` of the floored scales (:meth:`floor_sites`), in
            the data's units; empty for no floors.
        :param cache: what :meth:`em_prepare` computed once for this run (e.g. Gram matrices), or
            None.
        :param joint: whether the objective is the joint log-likelihood of (x, y) (a gate that models
            x, ``Gate.models_x``): the gate's term is then :math:`\\log \\pi_k + \\log p_k(x_i)` instead
            of :math:`\\log g_k(x_i)`.
        :param n_steps: Newton steps of the generic M-step.
        """
        new = self.em_mstep(params, r, x, y, floors, cache, joint)
        if new is not None:
            return new
        return self.generic_mstep(params, r, x, y, floors, joint, n_steps)

    def em_mstep(self, params: Params, r: jnp.ndarray, x: jnp.ndarray, y: jnp.ndarray,
                 floors: Mapping, cache: Any, joint: bool) -> Params | None:
        """A closed-form (or family-specific) M-step, or None to use the generic one.

        :param params: the family's full parameters, ``{site name: array}`` with the table's shapes
            (expert axis K first, e.g. ``(K, d)`` slopes); leading batch axes allowed where noted.
        :param r: responsibilities (n, K): :math:`r_{ik} = P(z_i = k \\mid x_i, y_i)` of the E-step (or
            soft start weights); rows sum to 1 (zero rows for padding).
        :param x: inputs (n, d).
        :param y: responses (n,) as values of the expert's ``support`` (None for gates).
        :param floors: ``{site name: lower bound}`` of the floored scales (:meth:`floor_sites`), in
            the data's units; empty for no floors.
        :param cache: what :meth:`em_prepare` computed once for this run (e.g. Gram matrices), or
            None.
        :param joint: whether the objective is the joint log-likelihood of (x, y) (a gate that models
            x, ``Gate.models_x``): the gate's term is then :math:`\\log \\pi_k + \\log p_k(x_i)` instead
            of :math:`\\log g_k(x_i)`.
        """
        return None

    def generic_mstep(self, params: Params, r, x, y, floors: Mapping, joint: bool,
                      n_steps: int = _GEM_STEPS, *, sites: Sequence[str] | None = None,
                      objective: Callable[[Params], jnp.ndarray] | None = None) -> Params:
        """Damped Newton ascent of :meth:`em_objective` (or ``objective``) over this family's free
        parameters (or the free sites ``sites``, the others held fixed), in the unconstrained
        parametrisation.

        :param params: the family's full parameters, ``{site name: array}`` with the table's shapes
            (expert axis K first, e.g. ``(K, d)`` slopes); leading batch axes allowed where noted.
        :param r: responsibilities (n, K): :math:`r_{ik} = P(z_i = k \\mid x_i, y_i)` of the E-step (or
            soft start weights); rows sum to 1 (zero rows for padding).
        :param x: inputs (n, d).
        :param y: responses (n,) as values of the expert's ``support`` (None for gates).
        :param floors: ``{site name: lower bound}`` of the floored scales (:meth:`floor_sites`), in
            the data's units; empty for no floors.
        :param joint: whether the objective is the joint log-likelihood of (x, y) (a gate that models
            x, ``Gate.models_x``): the gate's term is then :math:`\\log \\pi_k + \\log p_k(x_i)` instead
            of :math:`\\log g_k(x_i)`.
        :param n_steps: number of damped Newton steps.
        :param sites: the free sites to update (default: all of them).
        :param objective: the function of the full parameters to maximise (default: :meth:`em_objective`
            with ``r``, ``x``, ``y``, ``joint``), e.g. with a log-prior added.
        """
        K = r.shape[-1]
        d = x.shape[-1]
        tfs = self.transforms(floors)
        free = self.to_free(params)
        if objective is None:
            def objective(full):
                return self.em_objective(full, r, x, y, joint)
        # a scale exactly at its floor maps to -inf: start just above it
        u0 = {k: jnp.nan_to_num(tfs[k].inv(v), neginf=-30.0) for k, v in free.items()
              if sites is None or k in sites}
        if not u0:
            return dict(params)
        flat0, unravel = ravel_pytree(u0)

        def full_of(flat):
            return self.to_full({**free, **{k: tfs[k](v) for k, v in unravel(flat).items()}}, K, d)

        def q(flat):
            val = objective({**params, **full_of(flat)})
            return jnp.where(jnp.isfinite(val), val, -jnp.inf)

        flat, _, _ = newton_ascent(q, flat0, max_iter=n_steps)
        return {**params, **full_of(flat)}


def voronoi_order_pair(spec: str | float) -> tuple[float, float]:
    """``"r"`` -> (1, 0), ``"r/2"`` -> (0.5, 0), a number e -> (0, e): exponent = mult * r + const."""
    if spec == "r":
        return 1.0, 0.0
    if spec == "r/2":
        return 0.5, 0.0
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return 0.0, float(spec)
    raise ValueError(f"a Voronoi order must be 'r', 'r/2' or a number, got {spec!r}")


def _append_zero(v: jnp.ndarray, p: Param) -> jnp.ndarray:
    ax = v.ndim + p.ref_axis()
    zshape = list(v.shape)
    zshape[ax] = 1
    xp = np if isinstance(v, np.ndarray) else jnp
    return xp.concatenate([v, xp.zeros(zshape, v.dtype)], axis=ax)


def _take(v, start: int, stop: int, axis: int):
    """``v[..., start:stop, ...]`` along ``axis``; numpy arrays stay numpy (nothing compiled)."""
    if isinstance(v, np.ndarray):
        return v[(slice(None),) * axis + (slice(start, stop),)]
    return jax.lax.slice_in_dim(v, start, stop, axis=axis)


class Gate(Family):
    r"""Base of gating families: :math:`g_k(x)`, the probability of expert k at x.

    Implement :meth:`param_table` and :meth:`log_weights` (normalised log gate probabilities,
    (n, K)). Gates that also model x (``models_x = True``, e.g. the Gaussian gate of GLLiM) implement
    :meth:`log_components` (:math:`\log \pi_k + \log p_k(x)`), :meth:`x_distribution` and
    :meth:`sample_x`. Optional: :meth:`init_params` (a data-driven start from soft weights) and
    :meth:`em_mstep`.
    """

    role: ClassVar[str] = "gate"
    models_x: ClassVar[bool] = False

    @abc.abstractmethod
    def log_weights(self, params: Params, x: jnp.ndarray) -> jnp.ndarray:
        """Normalised log gate probabilities (n, K) (each row log-sums to 0).

        :param params: the family's full parameters, ``{site name: array}`` with the table's shapes
            (expert axis K first, e.g. ``(K, d)`` slopes); leading batch axes allowed where noted.
        :param x: inputs (n, d).
        """

    def log_components(self, params: Params, x: jnp.ndarray) -> jnp.ndarray:
        r""":math:`\log \pi_k + \log p_k(x_i)`, (n, K): only for gates that model x.

        :param params: the family's full parameters, ``{site name: array}`` with the table's shapes
            (expert axis K first, e.g. ``(K, d)`` slopes); leading batch axes allowed where noted.
        :param x: inputs (n, d).
        """
        raise NotImplementedError(f"{self!r} does not model x (models_x is False)")

    def log_marginal(self, params: Params, x: jnp.ndarray) -> jnp.ndarray:
        r""":math:`\log p(x_i) = \log\sum_k \pi_k p_k(x_i)`, shape (n,).

        :param params: the family's full parameters, ``{site name: array}`` with the table's shapes
            (expert axis K first, e.g. ``(K, d)`` slopes); leading batch axes allowed where noted.
        :param x: inputs (n, d).
        """
        return jax.scipy.special.logsumexp(self.log_components(params, x), axis=-1)

    def x_distribution(self, params: Params) -> dist.Distribution:
        """The distribution of one input x (a NumPyro distribution with event shape (d,)).

        :param params: the family's full parameters, ``{site name: array}`` with the table's shapes
            (expert axis K first, e.g. ``(K, d)`` slopes); leading batch axes allowed where noted.
        """
        raise NotImplementedError(f"{self!r} does not model x (models_x is False)")

    def sample_x(self, key: jax.Array, params: Params, n: int) -> jnp.ndarray:
        """Draw n inputs from the gate's model of x.

        :param key: a ``jax.random`` key.
        :param params: the family's full parameters, ``{site name: array}`` with the table's shapes
            (expert axis K first, e.g. ``(K, d)`` slopes); leading batch axes allowed where noted.
        :param n: number of inputs to draw.
        """
        return self.x_distribution(params).sample(key, (n,))

    def log_terms(self, params: Params, x: jnp.ndarray, joint: bool) -> jnp.ndarray:
        """The gate's term of :math:`\\ell_{ik}`: log components (joint) or log weights.

        :param params: the family's full parameters, ``{site name: array}`` with the table's shapes
            (expert axis K first, e.g. ``(K, d)`` slopes); leading batch axes allowed where noted.
        :param x: inputs (n, d).
        :param joint: whether the objective is the joint log-likelihood of (x, y) (a gate that models
            x, ``Gate.models_x``): the gate's term is then :math:`\\log \\pi_k + \\log p_k(x_i)` instead
            of :math:`\\log g_k(x_i)`.
        """
        return self.log_components(params, x) if joint else self.log_weights(params, x)

    def em_objective(self, params, r, x, y, joint):
        r"""The gate's part of :math:`Q`: :math:`\sum_{ik} r_{ik}` times the gate term (:meth:`log_terms`).

        :param params: the family's full parameters, ``{site name: array}`` with the table's shapes
            (expert axis K first, e.g. ``(K, d)`` slopes); leading batch axes allowed where noted.
        :param r: responsibilities (n, K): :math:`r_{ik} = P(z_i = k \mid x_i, y_i)` of the E-step (or
            soft start weights); rows sum to 1 (zero rows for padding).
        :param x: inputs (n, d).
        :param y: unused by gates (None).
        :param joint: whether the objective is the joint log-likelihood of (x, y) (a gate that models
            x, ``Gate.models_x``): the gate's term is then :math:`\log \pi_k + \log p_k(x_i)` instead
            of :math:`\log g_k(x_i)`.
        """
        return jnp.sum(r * self.log_terms(params, x, joint))

    def voronoi_weights(self, params: Params) -> jnp.ndarray:
        """The atoms' masses in the mixing measure, (..., K).

        :param params: the family's full parameters, ``{site name: array}`` with the table's shapes
            (expert axis K first, e.g. ``(K, d)`` slopes); leading batch axes allowed where noted.
        """
        raise NotImplementedError(f"{self!r} defines no Voronoi weights (voronoi_weights)")

    def scale_masses(self, params: Params, factor) -> Params:
        """The gate's sites with each atom's mixing mass multiplied by ``factor`` (K,) (e.g. a true
        atom's mass shared among its copies when building over-fitted starts).

        :param params: the family's full parameters, ``{site name: array}`` with the table's shapes
            (expert axis K first, e.g. ``(K, d)`` slopes); leading batch axes allowed where noted.
        :param factor: multipliers (K,) of the atoms' masses.
        """
        raise NotImplementedError(f"{self!r} defines no mixing masses (scale_masses)")

    def voronoi_cell_orders(self, true_params: Params, orders: Mapping) -> dict[str, tuple]:
        r"""Per true atom j, the exponent of each block in an over-fitted cell :math:`A_j`, as
        ``{block: (mult, const)}`` meaning :math:`\text{mult}\cdot r_j + \text{const}` (scalars, or
        arrays of shape (..., K_true) when the exponent depends on the true atom). ``orders`` are the
        families' :meth:`voronoi_orders`. Default: the same exponents in every cell.

        :param true_params: the true gate params (K_true atoms).
        :param orders: ``{block: order}`` of the families' :meth:`voronoi_orders`.
        """
        return {name: voronoi_order_pair(spec) for name, spec in orders.items()}

    def translated(self, params: Params, shift: Mapping) -> Params:
        """The gate's sites with a reference entry shifted by a common translation: every row of site
        ``name`` plus ``shift[name]`` (one row's shape). The gate probabilities do not change.

        :param params: the family's full parameters, ``{site name: array}`` with the table's shapes
            (expert axis K first, e.g. ``(K, d)`` slopes); leading batch axes allowed where noted.
        :param shift: ``{site name: one row}`` added to every row of that site.
        """
        out = dict(params)
        for name, dim in self.reference_dims().items():
            if dim == "expert" and name in shift:
                out[name] = jnp.asarray(params[name]) + jnp.asarray(shift[name])
        return out

    def init_params(self, x: jnp.ndarray, w: jnp.ndarray, floors: Mapping) -> Params:
        """A data-driven start given soft expert weights w (n, K): by default the M-step (closed form
        or generic) from the neutral point. Must be pure JAX (it runs compiled, vmapped over starts).

        :param x: inputs (n, d).
        :param w: soft expert weights (n, K), rows summing to 1.
        :param floors: ``{site name: lower bound}`` of the floored scales (:meth:`floor_sites`), in
            the data's units; empty for no floors.
        """
        K, d = w.shape[-1], x.shape[-1]
        p0 = self.neutral_params(K, d, x.dtype)
        new = self.em_mstep(p0, w, x, None, floors, self.em_prepare(x, None), self.models_x)
        if new is not None:
            return new
        return self.generic_mstep(p0, w, x, None, floors, self.models_x, _INIT_STEPS)


class Expert(Family):
    r"""Base of expert families: :math:`p_k(y | x)`, the conditional density of expert k.

    Implement :meth:`param_table`, :meth:`log_prob` ((n, K) log densities) and :meth:`component`
    (the K distributions of every observation, a NumPyro distribution of batch shape (n, K)); set
    ``support`` (a NumPyro constraint: it drives the validation and the dtype of y). Optional:
    :meth:`mean`, :meth:`probs` (class probabilities of finite-support experts), :meth:`init_params`
    and :meth:`em_mstep`.
    """

    role: ClassVar[str] = "expert"
    support: ClassVar[Any] = constraints.real
    #: whether fits may standardise y (real support, parameters tagged ``intercept``/``coef``/``y_scale``)
    y_affine: ClassVar[bool] = False

    @abc.abstractmethod
    def log_prob(self, params: Params, x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
        """:math:`\\log p_k(y_i | x_i)`, shape (n, K).

        :param params: the family's full parameters, ``{site name: array}`` with the table's shapes
            (expert axis K first, e.g. ``(K, d)`` slopes); leading batch axes allowed where noted.
        :param x: inputs (n, d).
        :param y: responses (n,) as values of the expert's ``support`` (None for gates).
        """

    @abc.abstractmethod
    def component(self, params: Params, x: jnp.ndarray) -> dist.Distribution:
        """The K expert distributions of every observation: batch shape (n, K).

        :param params: the family's full parameters, ``{site name: array}`` with the table's shapes
            (expert axis K first, e.g. ``(K, d)`` slopes); leading batch axes allowed where noted.
        :param x: inputs (n, d).
        """

    def mean(self, params: Params, x: jnp.ndarray) -> jnp.ndarray | None:
        """Expert means (n, K), or None when a mean is not what this expert predicts.

        :param params: the family's full parameters, ``{site name: array}`` with the table's shapes
            (expert axis K first, e.g. ``(K, d)`` slopes); leading batch axes allowed where noted.
        :param x: inputs (n, d).
        """
        return self.component(params, x).mean

    def probs(self, params: Params, x: jnp.ndarray) -> jnp.ndarray | None:
        """Class probabilities (n, K, C) of finite-support experts; None otherwise.

        :param params: the family's full parameters, ``{site name: array}`` with the table's shapes
            (expert axis K first, e.g. ``(K, d)`` slopes); leading batch axes allowed where noted.
        :param x: inputs (n, d).
        """
        return None

    @property
    def is_discrete(self) -> bool:
        return bool(self.support.is_discrete)

    def encode_y(self, y: Any, name: str = "y") -> Any:
        """The user's responses as values of :attr:`support` (e.g. class labels as codes 0..C-1);
        default: as they are. Unknown labels are a ``ValueError`` naming ``name``.

        :param y: the user's responses (n,) (labels of any kind for class-label experts).
        :param name: the argument name used in error messages.
        """
        return y

    def for_response(self, y: Any) -> Expert:
        """This family adapted to the labels of the responses ``y`` (e.g. a class-label expert that
        learns string labels); default: itself.

        :param y: the user's responses (n,).
        """
        return self

    def classes(self) -> list | None:
        """Labels of the classes of a class-label expert (the ``class`` coords), else None."""
        return None

    def y_shape(self) -> tuple[int, ...]:
        """Shape of one response: ``()`` for scalar responses (the default), ``(q,)`` for experts of
        vector responses (then y is (n, q) and :meth:`log_prob` still returns (n, K))."""
        return ()

    def check_y(self, y: Any, n: int, name: str = "y") -> np.ndarray:
        """Validate the user's responses and convert them to values of :attr:`support` (raises
        ``ValueError`` naming ``name``). Default: :meth:`encode_y`, then one value per row checked
        against :attr:`support` (float for real supports, int32 for integer ones).

        :param y: the user's responses.
        :param n: the number of rows of x.
        :param name: the argument name used in error messages.
        """
        from bayesmoe._validation import as_y  # noqa: PLC0415

        return as_y(self.encode_y(y, name), n, self.support, name)

    def em_objective(self, params, r, x, y, joint):
        r"""The expert's part of :math:`Q`: :math:`\sum_{ik} r_{ik} \log p_k(y_i \mid x_i)`.

        :param params: the family's full parameters, ``{site name: array}`` with the table's shapes
            (expert axis K first, e.g. ``(K, d)`` slopes); leading batch axes allowed where noted.
        :param r: responsibilities (n, K): :math:`r_{ik} = P(z_i = k \mid x_i, y_i)` of the E-step (or
            soft start weights); rows sum to 1 (zero rows for padding).
        :param x: inputs (n, d).
        :param y: responses (n,) as values of the expert's ``support`` (None for gates).
        :param joint: unused by experts.
        """
        return jnp.sum(r * self.log_prob(params, x, y))

    def init_params(self, x: jnp.ndarray, y: jnp.ndarray, w: jnp.ndarray, floors: Mapping) -> Params:
        """A data-driven start given soft expert weights w (n, K): by default the M-step (closed form
        or generic) from the neutral point. Must be pure JAX (it runs compiled, vmapped over starts).

        :param x: inputs (n, d).
        :param y: responses (n,) as values of the expert's ``support`` (None for gates).
        :param w: soft expert weights (n, K), rows summing to 1.
        :param floors: ``{site name: lower bound}`` of the floored scales (:meth:`floor_sites`), in
            the data's units; empty for no floors.
        """
        K, d = w.shape[-1], x.shape[-1]
        p0 = self.neutral_params(K, d, x.dtype)
        new = self.em_mstep(p0, w, x, y, floors, self.em_prepare(x, y), False)
        if new is not None:
            return new
        return self.generic_mstep(p0, w, x, y, floors, False, _INIT_STEPS)
