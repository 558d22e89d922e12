"""Variable types of our own.

``Frozen`` marks arrays that belong to a module's state (they are saved, sharded and
restored with it) but are never trained: the random router of SMoE-Dropout and the
hypernetwork of HyperRouter (arXiv 2312.07035, Sec. 3).  Because ``Frozen`` is not a
subclass of ``nnx.Param``, ``nnx.grad`` (which differentiates w.r.t. ``nnx.Param`` by
default) gives it no gradient and ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` keeps no
optimizer state for it, so no ``stop_gradient`` is needed anywhere.
"""

from __future__ import annotations

from flax import nnx


class Frozen(nnx.Variable):
    """A non-trainable weight (fixed at initialisation).

    Constructed as ``flax.nnx.Variable``: ``Frozen(value)`` with ``value`` the fixed array; the
    keyword options ``hijax``, ``ref``, ``eager_sharding`` and ``metadata`` are flax's, passed
    through unchanged.
    """
