"""Reuse of NumPyro ``MCMC`` objects across ``bm.sample`` calls (issue 12: compile once).

NumPyro compiles the NUTS loop per ``MCMC`` object (its sample function and collection loop are cached
on the object, with the data passed as arguments when ``jit_model_args=True``). ``bm.sample`` therefore
keeps the last few ``MCMC`` objects, keyed by everything that shapes the compiled program: the model
*value*, the sampler settings, and the shapes and dtypes of the data (and of the model's keyword
arrays). A second call with equal settings and data shapes runs the already compiled sampler.

NumPyro's own ``chain_method="vectorized"`` builds its loop under ``vmap``, where NumPyro does not
cache it (a new program per call); :func:`vectorized` is the same vmap over chains, given to ``MCMC`` as
a callable chain method, inside one module-level ``jit`` keyed by the ``MCMC`` object, with the data as
arguments: compiled on the first call, reused on the next.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from functools import partial
from typing import Any

import jax
import numpy as np
from numpyro.infer import MCMC

__all__ = ["cached_mcmc", "clear", "parallel", "vectorized"]

_MAX = 4
_CACHE: OrderedDict[Hashable, MCMC] = OrderedDict()


def _shapes(tree: Any) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return (str(treedef),) + tuple((np.shape(v), str(getattr(v, "dtype", type(v)))) for v in leaves)


def cached_mcmc(model: Any, settings: tuple, data: tuple, make: Callable[[], MCMC]) -> MCMC:
    """The ``MCMC`` object for ``(model, settings, shapes of data)``, made by ``make()`` if new.

    Models that are not hashable (plain functions are, by identity) are never cached."""
    try:
        key = (model, settings, _shapes(data))
        hash(key)
    except TypeError:
        return make()
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    mcmc = _CACHE[key] = make()
    while len(_CACHE) > _MAX:
        _CACHE.popitem(last=False)
    return mcmc


def clear() -> None:
    """Forget every cached sampler."""
    _CACHE.clear()
    _PMAPS.clear()


@partial(jax.jit, static_argnames=("chain_fn", "collect_fields", "remove_sites"))
def _run_vectorized(chain_fn, collect_fields, remove_sites, map_args, args, kwargs):
    return jax.vmap(lambda a: chain_fn(a, args, kwargs, collect_fields, remove_sites))(map_args)


def vectorized(partial_map_fn: partial) -> Callable:
    """A ``chain_method`` for ``MCMC``: chains vmapped inside one compiled program that is reused by
    later runs of the same ``MCMC`` object (``partial_map_fn`` is NumPyro's per-chain function with
    its data and collected fields bound as keywords)."""
    kw = partial_map_fn.keywords
    return lambda map_args: _run_vectorized(partial_map_fn.func, kw["collect_fields"], kw["remove_sites"],
                                            map_args, kw["args"], kw["kwargs"])


_PMAPS: OrderedDict[Hashable, Callable] = OrderedDict()


def parallel(partial_map_fn: partial) -> Callable:
    """A ``chain_method`` for ``MCMC``: one chain per device (``pmap``, as NumPyro's ``"parallel"``),
    the pmapped function kept per ``MCMC`` object so that later runs reuse its compiled program."""
    kw = partial_map_fn.keywords
    key = (partial_map_fn.func, kw["collect_fields"], kw["remove_sites"])
    fn = _PMAPS.get(key)
    if fn is None:
        chain_fn, fields, sites = key
        fn = _PMAPS[key] = jax.pmap(lambda a, args, kwargs: chain_fn(a, args, kwargs, fields, sites),
                                    in_axes=(0, None, None))
        while len(_PMAPS) > _MAX:
            _PMAPS.popitem(last=False)
    _PMAPS.move_to_end(key)
    return lambda map_args: fn(map_args, kw["args"], kw["kwargs"])
