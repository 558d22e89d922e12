"""A compiled multi-start optimiser: optax L-BFGS (zoom line search) or Adam, starts vmapped.

The loop runs as ``lax.while_loop`` over chunks of steps; between chunks control returns to Python
only to advance a progress bar and to stop early once every start has converged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from tqdm.auto import tqdm


class OptState(NamedTuple):
    u: dict  # unconstrained parameters (leading start axis)
    opt: optax.OptState
    value: jnp.ndarray  # objective at u
    small: jnp.ndarray  # consecutive steps with a negligible decrease
    steps: jnp.ndarray
    done: jnp.ndarray
    grad_max: jnp.ndarray


def make_optimizer(method: str, learning_rate: float) -> optax.GradientTransformation:
    if method == "lbfgs":
        return optax.lbfgs()
    return optax.adam(learning_rate)


def run(objective: Callable, u0: dict, data: tuple, *, method: str, max_steps: int, tol: float,
        gtol: float, learning_rate: float = 0.02, chunk: int = 50,
        progress_bar: bool = False, desc: str = "fit") -> OptState:
    """Minimise ``objective(u, *data)`` from every start in ``u0`` (leading axis S)."""
    opt = make_optimizer(method, learning_rate)
    S = jax.tree.leaves(u0)[0].shape[0]

    def f(u, data):
        return objective(u, *data)

    def one_step(s: OptState, data) -> OptState:
        fn = lambda u: f(u, data)
        if method == "lbfgs":
            value, grad = optax.value_and_grad_from_state(fn)(s.u, state=s.opt)
            updates, new_opt = opt.update(grad, s.opt, s.u, value=value, grad=grad, value_fn=fn)
        else:
            value, grad = jax.value_and_grad(fn)(s.u)
            updates, new_opt = opt.update(grad, s.opt, s.u)
        new_u = optax.apply_updates(s.u, updates)
        gmax = jnp.max(jnp.stack([jnp.max(jnp.abs(g)) for g in jax.tree.leaves(grad)]))
        finite = jnp.isfinite(value)
        decrease = s.value - value
        small = jnp.where(jnp.abs(decrease) <= tol * (1.0 + jnp.abs(value)), s.small + 1, 0)
        done = (small >= 2) | ~finite | ((gmax <= gtol) & (small >= 1))
        frozen = s.done | (s.steps >= max_steps)
        keep = lambda old, new: jax.tree.map(lambda a, b: jnp.where(frozen | ~finite, a, b), old, new)
        return OptState(keep(s.u, new_u), keep(s.opt, new_opt),
                        jnp.where(frozen, s.value, value), jnp.where(frozen, s.small, small),
                        s.steps + jnp.where(frozen, 0, 1), s.done | (done & ~frozen),
                        jnp.where(frozen, s.grad_max, gmax))

    @jax.jit
    def init(u0, data):
        values = jax.vmap(lambda u: f(u, data))(u0)
        return OptState(u0, jax.vmap(opt.init)(u0), values, jnp.zeros(S, jnp.int32),
                        jnp.zeros(S, jnp.int32), ~jnp.isfinite(values), jnp.full(S, jnp.inf))

    @jax.jit
    def run_chunk(s: OptState, data) -> OptState:
        def body(c):
            s, j = c
            return jax.vmap(one_step, in_axes=(0, None))(s, data), j + 1

        def cond(c):
            s, j = c
            return (j < chunk) & ~jnp.all(s.done | (s.steps >= max_steps))

        return jax.lax.while_loop(cond, body, (s, 0))[0]

    state = init(u0, data)
    n_chunks = -(-max_steps // chunk)
    with tqdm(total=max_steps, desc=desc, disable=not progress_bar, leave=False) as bar:
        done_steps = 0
        for _ in range(n_chunks):
            state = run_chunk(state, data)
            now = int(jnp.max(state.steps))
            bar.update(now - done_steps)
            done_steps = now
            if bool(jnp.all(state.done | (state.steps >= max_steps))):
                break
    return state
