"""Multi-device execution: a ("data", "expert") mesh, expert-parallel weights and
data-parallel batches.

* :func:`make_mesh` builds a 2-D mesh with axes "data" and "expert".
* :func:`shard_layer` / :func:`shard_model` place every Variable of a module: arrays
  whose leading axis is the expert axis of a SparseMoE (``w_in``, ``b_in``, ``w_out``,
  ``b_out``) are split over "expert", everything else is replicated.
* :func:`shard_batch` splits the leading (batch) axis over "data".
Inside ``jax.sharding.set_mesh(mesh)``, :class:`~bayesmoe.nn.SparseMoE` (``parallel=True``,
the default) runs its dispatch in ``jax.shard_map``: the T tokens are split over the
"data" and "expert" axes, each device routes and dispatches only its own T / n tokens
(capacity per device), and with an "expert" axis of n_e > 1 devices the token copies
travel by ``all_to_all`` to the device holding their expert (E / n_e experts each,
GShard-style expert parallelism). Expert parallelism is capacity-based: for impl
"capacity" ``C = ceil(cf (T / n) k / E)``; for the dropless impls ("sorted", "dense") it
reserves ``C = T / n`` rows per expert, exact but E / k times the work of a dropless
data-parallel layer. The router, the statistics in ``MoEAux`` and everything outside the
layer are partitioned by GSPMD. ``parallel=False`` leaves the dispatch to GSPMD
(sharding constraints only; every data shard then repeats the routing of all tokens).
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bayesmoe.nn.experts import Experts

EXPERT_PARAMS = ("w_in", "b_in", "w_out", "b_out")


def make_mesh(n_data: int | None = None, n_expert: int = 1, devices=None) -> Mesh:
    """A Mesh of shape (n_data, n_expert) with axis names ("data", "expert").

    ``n_data`` defaults to ``len(devices) // n_expert``.
    """
    devices = list(jax.devices() if devices is None else devices)
    if n_expert < 1 or len(devices) % n_expert:
        raise ValueError(f"n_expert={n_expert} must divide the {len(devices)} devices")
    n_data = len(devices) // n_expert if n_data is None else n_data
    if n_data < 1 or n_data * n_expert > len(devices):
        raise ValueError(f"n_data * n_expert = {n_data * n_expert} exceeds {len(devices)} devices")
    grid = np.asarray(devices[: n_data * n_expert], dtype=object).reshape(n_data, n_expert)
    return Mesh(grid, ("data", "expert"))


def _spec(path: tuple, value, n_expert_axis: int) -> PartitionSpec:
    # State paths end in GetAttrKey("value") (the Variable's payload): keep dict keys only
    names = [str(p.key) for p in path if isinstance(p, jax.tree_util.DictKey)]
    if names and names[-1] in EXPERT_PARAMS and "experts" in names:
        n_exp = value.shape[0]
        if n_exp % n_expert_axis == 0:
            return PartitionSpec("expert", *([None] * (value.ndim - 1)))
    return PartitionSpec()


def shard_model(module: nnx.Module, mesh: Mesh) -> nnx.Module:
    """Place the module's state on ``mesh`` in place (experts over "expert"); returns it.

    Works for a SparseMoE, a TransformerLM, or an ``nnx.Optimizer`` (whose Adam moments
    mirror the parameter paths and are sharded the same way).
    """
    n_exp = mesh.shape.get("expert", 1)
    state = nnx.state(module)

    def place(path, v):
        if not hasattr(v, "shape") or not hasattr(v, "ndim"):
            return v
        if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key):
            return jax.device_put(v, NamedSharding(mesh, PartitionSpec()))
        return jax.device_put(v, NamedSharding(mesh, _spec(path, v, n_exp)))

    nnx.update(module, jax.tree_util.tree_map_with_path(place, state))
    return module


shard_layer = shard_model


def shard_batch(batch, mesh: Mesh):
    """Split the leading axis of ``batch`` over the "data" mesh axis."""
    return jax.device_put(np.asarray(batch), NamedSharding(mesh, PartitionSpec("data")))


def expert_param_paths(module: nnx.Module) -> list[str]:
    """Paths of the stacked expert weights (for documentation and tests)."""
    out = []
    for path, sub in nnx.iter_graph(module):
        if isinstance(sub, Experts):
            out += ["/".join(map(str, path + (n,))) for n in EXPERT_PARAMS]
    return out
