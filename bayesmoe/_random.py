"""Seeds: every random entry point takes ``seed: int`` or a ``jax.random`` key (same seed, same result)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

__all__ = ["as_key", "as_rng", "seed_int"]

_MAX_SEED = 2**63


def _is_key(seed: Any) -> bool:
    if not isinstance(seed, jax.Array):
        return False
    if jax.dtypes.issubdtype(seed.dtype, jax.dtypes.prng_key):
        return seed.shape == ()
    return seed.dtype == np.uint32 and seed.shape == (2,)  # a legacy raw key


def seed_int(seed: Any, name: str = "seed") -> int:
    """A non-negative int from ``seed`` (an int in [0, 2**63) or a key), else a ValueError naming it."""
    if _is_key(seed):
        data = np.asarray(jax.random.key_data(seed) if jax.dtypes.issubdtype(
            seed.dtype, jax.dtypes.prng_key) else seed).astype(np.uint64).ravel()
        return int((int(data[0]) << 32 | int(data[-1])) % _MAX_SEED)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"`{name}` must be a non-negative integer or a jax.random key, got {seed!r}")
    if not 0 <= int(seed) < _MAX_SEED:
        raise ValueError(f"`{name}` must be an integer in [0, 2**63), got {seed}")
    return int(seed)


def as_key(seed: Any, name: str = "seed") -> jax.Array:
    """A typed ``jax.random`` key from an int seed or a key."""
    if _is_key(seed):
        typed = jax.dtypes.issubdtype(seed.dtype, jax.dtypes.prng_key)
        return seed if typed else jax.random.wrap_key_data(seed)
    return jax.random.key(seed_int(seed, name))


def as_rng(seed: Any, name: str = "seed") -> np.random.Generator:
    """A numpy Generator from an int seed or a key (for the numpy parts: starts, subsamples)."""
    return np.random.default_rng(seed_int(seed, name))
