r"""Voronoi losses between a fitted and the true mixing measure of a mixture of experts.

The convergence-rate papers behind bayesmoe measure the error of an estimate by a Voronoi loss between
the mixing measures :math:`G = \sum_i w_i \delta_{\theta_i}` (fitted) and
:math:`G_* = \sum_j w^*_j \delta_{\theta^*_j}` (true). Every fitted atom :math:`i` falls in the Voronoi
cell :math:`A_j` of its closest true atom (distance: the sum over blocks of Euclidean norms,
:math:`\sum_b \|\Delta\theta^b_{ij}\|`; ties go to the lowest j). With :math:`\Delta^b_{ij}` that block
norm,

.. math::

   D_1 = \sum_j \sum_{i \in A_j} w_i \sum_b \Delta^b_{ij} + \sum_j \Big|\sum_{i\in A_j} w_i - w^*_j\Big|

for an exact fit (as many fitted as true experts) and, for an over-fit, with :math:`r_j = \bar r(|A_j|)`,

.. math::

   D_2 = \sum_{j: |A_j| > 1} \sum_{i \in A_j} w_i \sum_b (\Delta^b_{ij})^{o_b(r_j)}
       + \sum_{j: |A_j| = 1} \sum_{i \in A_j} w_i \sum_b \Delta^b_{ij}
       + \sum_j \Big|\sum_{i\in A_j} w_i - w^*_j\Big|,

where each block's order :math:`o_b` is :math:`r` or :math:`r/2`, and :math:`\bar r(2) = 4`,
:math:`\bar r(3) = 6` (larger cells need a caller-supplied ``rbar``). The loss code knows no family:
each family supplies its blocks (``voronoi_atoms``) and orders (``voronoi_orders``), and the gate the
masses (``voronoi_weights``). Softmax gates: masses :math:`\exp(\beta_{0i})`, block :math:`\beta_1`
(order r); Gaussian experts: blocks a (r/2), b (r) and the **variance** :math:`\sigma^2` (r/2) — the
losses of Nguyen, Nguyen & Ho 2023 (arXiv 2305.03288, section 1); multinomial-logistic experts: blocks
a and b (r/2; arXiv 2310.14188, the standard form). Gaussian gates (arXiv 2305.07572): masses
:math:`\pi_i`, blocks c (order r) and the covariance :math:`\Gamma` (r/2, Frobenius norm); with Gaussian
experts (blocks A, b, :math:`\nu`) the slope block A has the fixed exponent 2 in over-fitted cells of true
atoms with :math:`c^*_j \ne 0` (regime 1) and :math:`\tilde r/2` (:math:`\tilde r = \bar r`) where
:math:`c^*_j = 0` (regime 2): the gate's ``voronoi_cell_orders`` hook sets exponents per true atom.
A caller's ``orders`` replaces the exponents of named blocks in every over-fitted cell (e.g. 2 on every
block: the loss of a strongly identifiable model, one loss in which two gates can be compared); ``None``
leaves a block out of the over-fitted cells (a block that is not identifiable there, such as the expert
intercepts of a cell split around a multinomial-logistic atom with vanishing slope: docs/theory.md).

Softmax gates are identifiable only up to a common translation of their rows: ``translation="gauge"``
compares both measures in the reference gauge (the last expert's row zero, as the published code does);
``translation="inf"`` minimises the loss over the common translation of the fitted gate (as the
papers' definition) by a compass search starting from the gauge, so it is never larger and does not
depend on the translation of the fitted parameters. Every function works on one parameter set;
``jax.vmap`` it over stacked replications (``jax.jit`` too).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from bayesmoe._kl import Divergence, jensen_kl, kl_conditional  # noqa: F401 -- Monte-Carlo KL (GLoME)
from bayesmoe._validation import is_traced
from bayesmoe.family import voronoi_order_pair

__all__ = ["voronoi_cells", "voronoi_loss"]

KINDS = ("auto", "exact", "over")
TRANSLATIONS = ("gauge", "inf")
_RBAR = {2: 4.0, 3: 6.0}
_INF_STEPS = 120


def _measure(model, params: Mapping, orders: Mapping | None = None):
    params = model.regauge(dict(params))
    return _measure_raw(model, params)[:2] + (_orders(model, params, orders),)


def _orders(model, true: Mapping, override: Mapping | None = None) -> dict:
    """``{block: (mult, const)}`` per true atom (arrays (K_true,)): exponent mult * r + const; the
    blocks named in ``override`` take its orders in every cell (``None``: the block is left out of the
    over-fitted cells)."""
    base = {**model.gate.voronoi_orders(), **model.expert.voronoi_orders()}
    k_true = jnp.shape(model.gate.voronoi_weights(true))[-1]
    pairs = model.gate.voronoi_cell_orders(true, base)
    pairs.update({k: None if v is None else voronoi_order_pair(v) for k, v in (override or {}).items()})
    return {k: None if pair is None else
            tuple(jnp.broadcast_to(jnp.asarray(v, jnp.result_type(float)), (k_true,)) for v in pair)
            for k, pair in pairs.items()}


def _gauged(model, fitted: Mapping, true: Mapping) -> dict:
    """The fitted gate in the gauge of the truth: its rows minus the row of the fitted atom closest (in
    the expert blocks, which a translation does not move) to the true reference (last) atom. With
    matching labels this is the reference gauge; it does not depend on the order of fitted experts."""
    fe = model.expert.voronoi_atoms(dict(fitted))
    te = model.expert.voronoi_atoms(dict(true))
    ref = jnp.argmin(jnp.sum(_block_distances(fe, te)[:, -1, :], axis=-1))
    shift = {name: -jnp.take(jnp.asarray(fitted[name]), ref, axis=0)
             for name, dim in model.gate.reference_dims().items() if dim == "expert"}
    return model.gate.translated(dict(fitted), shift)


def _block_distances(fitted_atoms: dict, true_atoms: dict) -> jnp.ndarray:
    """Block norms (K_fit, K_true, B) in the order of ``fitted_atoms``."""
    out = []
    for name, a in fitted_atoms.items():
        a = jnp.asarray(a).reshape(a.shape[0], -1)
        b = jnp.asarray(true_atoms[name]).reshape(true_atoms[name].shape[0], -1)
        sq = jnp.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1)
        # exact 0 at coinciding atoms, with a finite (zero) gradient there
        out.append(jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0))
    return jnp.stack(out, axis=-1)


def _cells(dist: jnp.ndarray) -> jnp.ndarray:
    return jnp.argmin(jnp.sum(dist, axis=-1), axis=1)     # argmin takes the lowest j on ties


def voronoi_cells(model, fitted: Mapping, true: Mapping) -> jnp.ndarray:
    r"""The true atom whose Voronoi cell each fitted atom falls in, shape (K_fit,) (ties: lowest j).

    :math:`A_j = \{i : j = \arg\min_{j'} \sum_b \|\Delta\theta^b_{ij'}\|\}` (see the module docstring).

    :param model: a :class:`~bayesmoe.MoE` whose families define Voronoi atoms.
    :param fitted: the fitted params (site-name dict, K_fit experts).
    :param true: the true params (site-name dict, K* experts).
    """
    _check(model, fitted, true)
    _, fa, _ = _measure_raw(model, _gauged(model, model.regauge(dict(fitted)), model.regauge(dict(true))))
    _, ta, _ = _measure(model, true)
    return _cells(_block_distances(fa, ta))


def _rbar_table(rbar, k_fit: int) -> np.ndarray:
    """r for cells of 0..k_fit atoms (NaN where undefined)."""
    table = np.full(k_fit + 1, np.nan)
    table[:2] = 1.0                                        # singleton cells: first powers
    for m in range(2, k_fit + 1):
        if callable(rbar):
            table[m] = float(rbar(m))
        elif isinstance(rbar, Mapping) and m in rbar:
            table[m] = float(rbar[m])
        elif m in _RBAR:
            table[m] = _RBAR[m]
    return table


def _loss(fw, fa, tw, ta, orders, over: bool, rtab) -> jnp.ndarray:
    dist = _block_distances(fa, ta)                        # (Kf, Kt, B)
    cell = _cells(dist)
    Kt = tw.shape[0]
    onehot = jax.nn.one_hot(cell, Kt, dtype=fw.dtype)      # (Kf, Kt)
    d_own = jnp.take_along_axis(dist, cell[:, None, None], axis=1)[:, 0, :]   # (Kf, B)
    mass = jnp.sum(jnp.abs(onehot.T @ fw - tw))
    if not over:
        return _inf_if_mass_overflows(fw, jnp.sum(fw * jnp.sum(d_own, axis=-1)) + mass)
    size = jnp.sum(onehot, axis=0)[cell]                   # |A_j| of each fitted atom's cell
    r = jnp.asarray(rtab, fw.dtype)[size.astype(jnp.int32)]
    ones = (jnp.ones(Kt, fw.dtype), jnp.zeros(Kt, fw.dtype))   # undeclared blocks: order r
    powered = [d_own[:, b] ** (r * pair[0].astype(fw.dtype)[cell] + pair[1].astype(fw.dtype)[cell])
               for b, pair in enumerate(orders.get(name, ones) for name in fa)
               if pair is not None]                        # None: the block is left out
    per_atom = jnp.where(size > 1, sum(powered, jnp.zeros_like(r)), jnp.sum(d_own, axis=-1))
    return _inf_if_mass_overflows(fw, jnp.sum(fw * per_atom) + mass)


def _inf_if_mass_overflows(fw, loss):
    """+inf, not NaN, when a fitted mass overflows (softmax masses exp(beta0) above beta0 ~ 709 in
    float64, 88 in float32): the loss is then larger than the float range, and inf * 0 or inf - inf
    inside the sum would give NaN."""
    return jnp.where(jnp.all(jnp.isfinite(fw)), loss, jnp.inf)


def voronoi_loss(model, fitted_params: Mapping, true_params: Mapping, *, kind: str = "auto",
                 rbar: Mapping | Callable | None = None, translation: str = "gauge",
                 orders: Mapping | None = None) -> jnp.ndarray:
    r"""Voronoi loss :math:`D_1` (exact fit) or :math:`D_2` (over-fit) between fitted and true params.

    :param model: a :class:`~bayesmoe.MoE` whose families define Voronoi atoms (its ``n_experts`` is
        the fitted K; the true K is read from ``true_params``).
    :param fitted_params: the fitted params (site-name dict, K experts).
    :param true_params: the true params (site-name dict, K* experts).
    :param kind: ``"exact"`` (:math:`D_1`), ``"over"`` (:math:`D_2`) or ``"auto"``: exact when the
        fitted K equals the true K.
    :param rbar: :math:`\bar r(m)` for cells of m >= 4 atoms (a dict or a callable; 2 -> 4 and
        3 -> 6 are built in). Required when such a cell occurs (or may occur, under ``jit``).
    :param translation: ``"gauge"`` (reference gauge on both sides) or ``"inf"`` (minimised over the
        common translation of the fitted gate).
    :param orders: exponents of blocks in over-fitted cells that replace the families' own
        (``{block: "r" | "r/2" | number}``, blocks as in ``voronoi_atoms``, e.g. ``beta1``, ``a``, ``b``;
        unnamed blocks keep theirs): ``{"beta1": 2, "a": 2, "b": 2}`` is the loss of a strongly
        identifiable model, exponent 2 on every block, one loss in which two gates can be compared;
        ``None`` leaves a block out of the over-fitted cells (singly fitted atoms keep every block).
    :returns: a scalar.
    """
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}, got {kind!r}")
    if translation not in TRANSLATIONS:
        raise ValueError(f"`translation` must be one of {TRANSLATIONS}, got {translation!r}")
    if rbar is not None and not (callable(rbar) or isinstance(rbar, Mapping)):
        raise ValueError(f"`rbar` must be a dict {{cell size: r}} or a callable, got {rbar!r}")
    k_fit, k_true = _check(model, fitted_params, true_params)
    _check_orders(model, fitted_params, orders)
    if kind == "exact" and k_fit != k_true:
        raise ValueError(f"`kind` is 'exact', which needs as many fitted as true experts; got {k_fit} "
                         f"and {k_true}")
    over = kind == "over" or (kind == "auto" and k_fit != k_true)
    rtab = _rbar_table(rbar, k_fit)
    if over:
        _check_rbar(model, fitted_params, true_params, rtab, k_fit, k_true)
    fitted = _gauged(model, model.regauge(dict(fitted_params)), model.regauge(dict(true_params)))
    fw, fa, _ = _measure_raw(model, fitted)
    tw, ta, block_orders = _measure(model, true_params, orders)
    gauge = _loss(fw, fa, tw, ta, block_orders, over, rtab)
    if translation == "gauge":
        return gauge
    return _inf_translation(model, fitted, tw, ta, block_orders, over, rtab, gauge)


def _check_orders(model, fitted: Mapping, orders) -> None:
    """A clear error for ``orders`` that is not a dict of known blocks and valid orders."""
    if orders is None:
        return
    if not isinstance(orders, Mapping):
        raise ValueError(f"`orders` must be a dict {{block: 'r' | 'r/2' | number | None}}, got {orders!r}")
    blocks = set(_measure_raw(model, dict(fitted))[1])
    for name, spec in orders.items():
        if spec is None and name in blocks:
            continue                                       # the block is left out of over-fitted cells
        if name not in blocks:
            raise ValueError(f"`orders` names block {name!r}, which {model!r} does not have; its blocks are "
                             f"{sorted(blocks)}")
        try:
            voronoi_order_pair(spec)
        except ValueError as err:
            raise ValueError(f"`orders`[{name!r}]: {err}") from err
        if not isinstance(spec, str) and not spec > 0:
            raise ValueError(f"`orders`[{name!r}] must be positive, got {spec!r}")


def _inf_translation(model, fitted, tw, ta, orders, over, rtab, gauge):
    """min over the common translation t of the fitted gate by a compass (pattern) search from t = 0:
    derivative-free (the loss has kinks), monotone, so never above the gauge value; jit-able."""
    ref = [k for k, dim in model.gate.reference_dims().items() if dim == "expert"]
    shapes = [jnp.shape(fitted[k])[1:] for k in ref]
    sizes = [int(np.prod(sh, dtype=np.int64)) for sh in shapes]
    dim = sum(sizes)
    dtype = jnp.asarray(gauge).dtype
    if dim == 0:                                           # a gate without translation freedom
        return gauge

    def loss(t):
        shift, start = {}, 0
        for k, sh, m in zip(ref, shapes, sizes, strict=True):
            shift[k] = t[start:start + m].reshape(sh)
            start += m
        fw, fa, _ = _measure_raw(model, model.gate.translated(fitted, shift))
        return _loss(fw, fa, tw, ta, orders, over, rtab)

    moves = jnp.concatenate([jnp.eye(dim, dtype=dtype), -jnp.eye(dim, dtype=dtype)])   # (2 dim, dim)

    def body(_, carry):
        t, best, step = carry
        values = jax.vmap(lambda mv: loss(t + step * mv))(moves)
        i = jnp.argmin(values)
        better = values[i] < best
        # while every value so far is +inf (a fitted mass overflows at the gauge), the step doubles
        # until a translation brings the masses back into range; then the usual halving search
        shrink = jnp.where(jnp.isinf(best), 2.0, 0.5)
        return (jnp.where(better, t + step * moves[i], t), jnp.where(better, values[i], best),
                jnp.where(better, step, shrink * step))

    t0 = jnp.zeros(dim, dtype)
    _, best, _ = jax.lax.fori_loop(0, _INF_STEPS, body, (t0, jnp.asarray(gauge, dtype),
                                                         jnp.asarray(1.0, dtype)))
    return best


def _measure_raw(model, params):
    """(masses, atoms, orders) of a parameter set as it is (no re-gauging)."""
    return (model.gate.voronoi_weights(params),
            {**model.gate.voronoi_atoms(params), **model.expert.voronoi_atoms(params)}, None)


def _n_experts(model, params: Mapping) -> int:
    first = next(iter(model.expert.param_shapes(1, 1)))
    if first not in params:
        raise ValueError(f"`params` is missing site {first!r} of {model.expert!r}")
    return int(np.shape(params[first])[0])


def _check(model, fitted: Mapping, true: Mapping) -> tuple[int, int]:
    from bayesmoe.model import MoE  # noqa: PLC0415

    if not isinstance(model, MoE):
        raise ValueError(f"`model` must be a bayesmoe.MoE, got {type(model).__name__}")
    for name, p in (("fitted_params", fitted), ("true_params", true)):
        if not isinstance(p, Mapping):
            raise ValueError(f"`{name}` must be a dict keyed by site name, got {type(p).__name__}")
    k_fit = model.n_experts
    k_true = _n_experts(model, true)
    if not any(is_traced(v) for v in jax.tree.leaves((dict(fitted), dict(true)))):
        d = _input_dim(model, fitted)
        model.check_params(fitted, d, name="fitted_params")
        MoE(model.gate, model.expert, k_true).check_params(true, d, name="true_params")
    if k_true > k_fit:
        raise ValueError(f"`true_params` has {k_true} experts but the model fits {k_fit}: Voronoi losses "
                         "compare an exact or over-fitted estimate with the truth")
    try:
        _measure_raw(model, dict(fitted))
    except NotImplementedError as err:
        raise ValueError(f"`model` has no Voronoi loss: {err}") from err
    return k_fit, k_true


def _input_dim(model, params: Mapping) -> int:
    """d read from the gate's coefficient / location site (the regressor axis of an affine site)."""
    for tag in ("coef", "x_loc"):
        for name in model.gate.affine_sites(tag):
            if name in params:
                shape = np.shape(params[name])
                q = shape[-1]
                for d in range(1, 64):
                    if model.gate.n_features(d) == q:
                        return d
    return 1


def _check_rbar(model, fitted, true, rtab, k_fit: int, k_true: int) -> None:
    """A clear error when a cell of >= 4 atoms has no rbar (checked on the actual cells when the
    params are concrete, on the largest possible cell under jit)."""
    largest = k_fit - k_true + 1
    if largest < 4 or np.all(np.isfinite(rtab[4:largest + 1])):
        return
    if not any(is_traced(v) for v in jax.tree.leaves((dict(fitted), dict(true)))):
        _, fa, _ = _measure_raw(model, _gauged(model, model.regauge(dict(fitted)), model.regauge(dict(true))))
        _, ta, _ = _measure(model, true)
        sizes = np.bincount(np.asarray(_cells(_block_distances(fa, ta))), minlength=k_true)
        missing = [int(m) for m in sizes if m >= 4 and not np.isfinite(rtab[m])]
        if not missing:
            return
        raise ValueError(f"`rbar` is required: a Voronoi cell holds {max(missing)} fitted atoms and rbar is "
                         "known only for cells of 2 and 3 (pass rbar={m: r} or a callable)")
    raise ValueError(f"`rbar` is required: under jit a cell may hold up to {largest} fitted atoms and rbar "
                     "is known only for cells of 2 and 3 (pass rbar={m: r} or a callable)")

