r"""Data-parallel likelihoods: the rows of (x, y) sharded over devices with ``jax.sharding``.

A fit's programs are the same on one or many devices: the data arrays carry a
``NamedSharding`` that splits their rows over a one-dimensional mesh (parameters are replicated), and
XLA's SPMD partitioner turns every sum over rows -- the log-likelihood
:math:`\sum_i \log p(y_i | x_i, \theta)`, its gradient, EM's sufficient statistics
:math:`\sum_i r_{ik} z_i z_i^\top`, ... -- into per-device partial sums and an all-reduce. Nothing
else changes, and with ``jax.distributed.initialize()`` the same code spans several hosts.

The row count is padded to a multiple of the number of devices with copies of the first row whose
weight is zero (a boolean ``mask``: the model's ``mask`` keyword for likelihood-based fits, EM's row
weights), so no row is ever dropped and the padding adds exactly nothing. The same padding, to size
buckets, lets fits on n and n + 1 rows share their compiled optimiser loops (on one device too).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["ShardedData", "as_mesh", "shard_rows"]


class ShardedData(NamedTuple):
    """Rows padded to a multiple of the device count and sharded: x (n_pad, d), y (n_pad,), mask
    (n_pad,) True for the n real rows."""

    x: jax.Array
    y: jax.Array
    mask: jax.Array
    n: int


def as_mesh(devices: Any) -> Mesh | None:
    """A one-axis (or the user's) mesh from ``devices``: None (no sharding), a ``jax.sharding.Mesh``,
    or a non-empty sequence of distinct ``jax.Device``. Raises TypeError/ValueError naming
    ``devices``."""
    if devices is None:
        return None
    if isinstance(devices, Mesh):
        if devices.size < 1:
            raise ValueError("`devices` is an empty Mesh")
        return devices
    if isinstance(devices, (str, bytes)) or not isinstance(devices, Sequence):
        raise TypeError("`devices` must be None, a jax.sharding.Mesh or a list of jax devices "
                        f"(e.g. jax.devices()), got {type(devices).__name__}")
    devs = list(devices)
    if not devs:
        raise ValueError("`devices` is an empty list")
    if not all(isinstance(d, jax.Device) for d in devs):
        bad = next(d for d in devs if not isinstance(d, jax.Device))
        raise TypeError(f"`devices` must hold jax devices (from jax.devices()), got {bad!r}")
    if len({d.id for d in devs}) != len(devs):
        raise ValueError("`devices` lists a device more than once")
    return Mesh(np.asarray(devs), ("rows",))


def _rows_spec(mesh: Mesh, ndim: int) -> NamedSharding:
    """Rows split over every axis of the mesh, other axes replicated."""
    return NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def padded_size(n: int, n_devices: int, bucket: bool = False) -> int:
    r"""The padded row count: n rounded up to its size bucket (``bucket``: the smallest
    :math:`m 2^e \ge n` with :math:`m < 16`, i.e. at most 1/8 more rows) and then to a multiple of
    ``n_devices``."""
    if bucket:
        step = 1 << max(0, int(n).bit_length() - 4)
        n = -(-n // step) * step
    return -(-n // n_devices) * n_devices


def shard_rows(mesh: Mesh | None, x, y, bucket: bool = False, dtypes: tuple | None = None) -> ShardedData:
    """Pad (x, y) with zero-weight copies of row 0 to :func:`padded_size` rows and, given a mesh,
    shard the rows over it.

    With ``bucket=True`` data sets whose sizes share a bucket share one compiled program (n and
    n + 1 rows do, except across a bucket edge). ``dtypes``: the (x, y) dtypes on the device (cast
    on the host, so that nothing is compiled), or None to keep them."""
    n = int(x.shape[0])
    n_pad = padded_size(n, 1 if mesh is None else mesh.size, bucket)
    if dtypes is not None or n_pad != n:
        x, y = np.asarray(x), np.asarray(y)
        if dtypes is not None:
            x, y = x.astype(dtypes[0], copy=False), y.astype(dtypes[1], copy=False)
        if n_pad != n:
            idx = np.where(np.arange(n_pad) < n, np.arange(n_pad), 0)
            x, y = x[idx], y[idx]
    mask = np.arange(n_pad) < n
    if mesh is None:
        return ShardedData(jax.device_put(x), jax.device_put(y), jax.device_put(mask), n)
    return ShardedData(jax.device_put(x, _rows_spec(mesh, x.ndim)),
                       jax.device_put(y, _rows_spec(mesh, y.ndim)),
                       jax.device_put(mask, _rows_spec(mesh, 1)), n)


def em_fit(model, data: ShardedData, init: dict, *, max_steps: int, tol: float, floors: dict,
           penalty=None):
    """EM (:func:`bayesmoe.inference.em.em_fit`'s loop) on padded (and possibly sharded) rows,
    padding rows weighted 0.

    ``init``: full parameters with a leading start axis (already checked); ``penalty``: None or a
    :class:`bayesmoe.penalties.PenaltyWeights` (the penalised EM). Returns an ``EMResult``.
    """
    from bayesmoe.inference import em  # noqa: PLC0415

    dtype = data.x.dtype
    starts = {k: np.asarray(v, dtype) for k, v in model.check_params(
        init, data.x.shape[1], batch_ndim=1, name="init").items()}
    floors = {k: np.asarray(v, dtype) for k, v in floors.items()}
    params, ll, steps, conv, _ = _em_sharded(model, data.x, data.y, starts,
                                             np.int32(max_steps), np.asarray(tol, dtype),
                                             floors, data.mask, penalty)
    return em.EMResult(params, ll, steps, conv, None)


def _em_core_masked(model, x, y, starts, max_steps, tol, floors, mask, penalty=None):
    from bayesmoe.inference import em  # noqa: PLC0415

    return em._em_core(model, x, y, model.regauge(starts), max_steps, tol, floors, 0, mask, penalty)


_em_sharded = jax.jit(_em_core_masked, static_argnames=("model",))
