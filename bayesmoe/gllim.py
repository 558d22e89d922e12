r"""Inverse <-> forward maps of the Gaussian locally-linear mapping (GLLiM).

A GLLiM is a joint Gaussian mixture of (u, v) written through one conditional:

.. math::
    p(u, v) = \sum_k \pi_k\, N(u \mid c_k, \Gamma_k)\, N(v \mid A_k u + b_k, \Sigma_k).

Within component k, (u, v) is jointly Gaussian, so the same mixture can be written the other way
round, :math:`p(u, v) = \sum_k \pi_k N(v \mid c^*_k, \Gamma^*_k) N(u \mid A^*_k v + b^*_k, \Sigma^*_k)`, with
(Deleforge, Forbes & Horaud 2015; used by the GLoME model-selection paper, Nguyen et al. 2021,
arXiv 2104.02640, to fit the low-dimensional inverse regression and read off the forward one):

.. math::
    c^*_k = A_k c_k + b_k,\quad
    \Gamma^*_k = \Sigma_k + A_k \Gamma_k A_k^\top,\quad
    \Sigma^*_k = (\Gamma_k^{-1} + A_k^\top \Sigma_k^{-1} A_k)^{-1},

.. math::
    A^*_k = \Sigma^*_k A_k^\top \Sigma_k^{-1},\quad
    b^*_k = \Sigma^*_k (\Gamma_k^{-1} c_k - A_k^\top \Sigma_k^{-1} b_k),\quad \pi^*_k = \pi_k.

The map is its own inverse in form: :func:`inverse_to_forward` (inverse regression x | y -> forward
y | x) and :func:`forward_to_inverse` apply it in either direction. :func:`to_moe_params` turns a
forward GLLiM with a one-dimensional response into the sites of
``bm.MoE(bm.gates.Gaussian(covariance="full"), bm.experts.Gaussian(), K)``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

__all__ = ["GLLiM", "forward_to_inverse", "from_moe_params", "inverse_to_forward", "to_moe_params"]


class GLLiM(NamedTuple):
    r"""Parameters of :math:`\sum_k \pi_k N(u \mid c_k, \Gamma_k) N(v \mid A_k u + b_k, \Sigma_k)`.

    :ivar weight: :math:`\pi` (K,), on the simplex.
    :ivar loc: :math:`c` (K, L), means of the conditioning variable u.
    :ivar cov: :math:`\Gamma` (K, L, L), its covariances.
    :ivar coef: :math:`A` (K, D, L), regression matrices of v on u.
    :ivar intercept: :math:`b` (K, D).
    :ivar noise_cov: :math:`\Sigma` (K, D, D), residual covariances of v.
    """

    weight: Any
    loc: Any
    cov: Any
    coef: Any
    intercept: Any
    noise_cov: Any


def _check(theta: Any, name: str) -> GLLiM:
    if not isinstance(theta, GLLiM):
        if isinstance(theta, tuple) and len(theta) == 6:
            theta = GLLiM(*theta)
        else:
            raise ValueError(f"`{name}` must be a bm.gllim.GLLiM (weight, loc, cov, coef, intercept, "
                             f"noise_cov), got {type(theta).__name__}")
    w, c, g, a, b, s = (np.shape(v) for v in theta)
    if len(w) != 1:
        raise ValueError(f"`{name}.weight` must have shape (K,), got {w}")
    K = w[0]
    if len(c) != 2 or c[0] != K:
        raise ValueError(f"`{name}.loc` must have shape (K, L) with K = {K}, got {c}")
    L = c[1]
    if g != (K, L, L):
        raise ValueError(f"`{name}.cov` must have shape {(K, L, L)}, got {g}")
    if len(a) != 3 or a[0] != K or a[2] != L:
        raise ValueError(f"`{name}.coef` must have shape (K, D, L) = ({K}, D, {L}), got {a}")
    D = a[1]
    if b != (K, D):
        raise ValueError(f"`{name}.intercept` must have shape {(K, D)}, got {b}")
    if s != (K, D, D):
        raise ValueError(f"`{name}.noise_cov` must have shape {(K, D, D)}, got {s}")
    for field, v in zip(GLLiM._fields, theta, strict=True):
        if not bool(jnp.all(jnp.isfinite(jnp.asarray(v)))):
            raise ValueError(f"`{name}.{field}` contains NaN or infinite values")
    return GLLiM(*(jnp.asarray(v) for v in theta))


def _spd_inv(m: jnp.ndarray) -> jnp.ndarray:
    """Inverse of symmetric positive-definite matrices (batched), via Cholesky."""
    eye = jnp.broadcast_to(jnp.eye(m.shape[-1], dtype=m.dtype), m.shape)
    chol = jnp.linalg.cholesky(m)
    half = jnp.linalg.solve(chol, eye)  # L^{-1}
    return jnp.swapaxes(half, -1, -2) @ half


def _swap(theta: GLLiM) -> GLLiM:
    """The same joint mixture conditioned the other way (module docstring formulas)."""
    pi, c, gam, a, b, sig = theta
    at = jnp.swapaxes(a, -1, -2)
    sig_inv = _spd_inv(sig)
    gam_inv = _spd_inv(gam)
    loc = jnp.einsum("kdl,kl->kd", a, c) + b
    cov = sig + a @ gam @ at
    noise = _spd_inv(gam_inv + at @ sig_inv @ a)
    coef = noise @ at @ sig_inv
    icpt = jnp.einsum("kab,kb->ka", noise, jnp.einsum("kab,kb->ka", gam_inv, c)
                      - jnp.einsum("kab,kb->ka", at @ sig_inv, b))
    sym = lambda m: (m + jnp.swapaxes(m, -1, -2)) / 2  # noqa: E731
    return GLLiM(pi, loc, sym(cov), coef, icpt, sym(noise))


def inverse_to_forward(theta: GLLiM) -> GLLiM:
    r"""Forward parameters (of y | x) from inverse-regression parameters (of x | y).

    :param theta: a :class:`GLLiM` of the inverse model
        :math:`\sum_k \pi_k N(y \mid c_k, \Gamma_k) N(x \mid A_k y + b_k, \Sigma_k)`; shapes weight (K,),
        loc (K, L), cov (K, L, L), coef (K, D, L), intercept (K, D), noise_cov (K, D, D).
    :returns: the :class:`GLLiM` of the forward model
        :math:`\sum_k \pi_k N(x \mid c^*_k, \Gamma^*_k) N(y \mid A^*_k x + b^*_k, \Sigma^*_k)` (shapes with
        L and D exchanged). Use float64 (``bm.enable_x64()``) for exact round trips.
    """
    return _swap(_check(theta, "theta"))


def forward_to_inverse(theta: GLLiM) -> GLLiM:
    r"""Inverse-regression parameters (of x | y) from forward parameters (of y | x): the same map as
    :func:`inverse_to_forward` with the roles of x and y exchanged.

    :param theta: a :class:`GLLiM` of the forward model
        :math:`\sum_k \pi_k N(x \mid c_k, \Gamma_k) N(y \mid A_k x + b_k, \Sigma_k)`.
    :returns: the :class:`GLLiM` of :math:`\sum_k \pi_k N(y \mid c^*_k, \Gamma^*_k) N(x \mid A^*_k y + b^*_k,
        \Sigma^*_k)`.
    """
    return _swap(_check(theta, "theta"))


def to_moe_params(forward: GLLiM) -> dict[str, np.ndarray]:
    """Sites of ``MoE(gates.Gaussian(covariance="full"), experts.Gaussian(), K)`` from a forward GLLiM
    with a one-dimensional response (D = 1).

    :param forward: a forward :class:`GLLiM` (x | gate, y | x).
    :returns: ``{"gate_weight", "gate_loc", "gate_cov", "expert_intercept", "expert_coef",
        "expert_scale"}`` (numpy arrays).
    """
    f = _check(forward, "forward")
    if f.intercept.shape[1] != 1:
        raise ValueError(f"`forward` must have a one-dimensional response (D = 1) for Gaussian experts, "
                         f"got D = {f.intercept.shape[1]}")
    return {"gate_weight": np.asarray(f.weight), "gate_loc": np.asarray(f.loc),
            "gate_cov": np.asarray(f.cov), "expert_intercept": np.asarray(f.intercept[:, 0]),
            "expert_coef": np.asarray(f.coef[:, 0, :]),
            "expert_scale": np.sqrt(np.asarray(f.noise_cov[:, 0, 0]))}


def from_moe_params(params: dict) -> GLLiM:
    """The forward :class:`GLLiM` of fitted ``MoE(gates.Gaussian(...), experts.Gaussian(), K)`` sites
    (``gate_cov``, or ``gate_scale`` alone for a diagonal gate).

    :param params: a params dict with ``gate_weight``, ``gate_loc``, ``gate_cov`` or ``gate_scale``,
        ``expert_intercept``, ``expert_coef`` (degree 1), ``expert_scale``.
    :returns: a forward :class:`GLLiM` with D = 1.
    """
    need = ("gate_weight", "gate_loc", "expert_intercept", "expert_coef", "expert_scale")
    missing = [k for k in need if k not in params]
    if missing or ("gate_cov" not in params and "gate_scale" not in params):
        raise ValueError(f"`params` is missing {missing or ['gate_cov']}: it must hold the sites of a "
                         "Gaussian-gated MoE with Gaussian experts of degree 1")
    if "gate_cov" in params:
        cov = np.asarray(params["gate_cov"], float)
    else:
        sd = np.asarray(params["gate_scale"], float)
        cov = sd[:, :, None] * np.eye(sd.shape[1])[None] * sd[:, None, :]
    scale = np.asarray(params["expert_scale"], float)
    return _check(GLLiM(np.asarray(params["gate_weight"], float), np.asarray(params["gate_loc"], float),
                        cov, np.asarray(params["expert_coef"], float)[:, None, :],
                        np.asarray(params["expert_intercept"], float)[:, None],
                        scale[:, None, None] ** 2), "params")
