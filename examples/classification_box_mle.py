"""Where the over-fitted classification MLE goes when it is run to convergence (a diagnostic of
examples/convergence_classification.py, ``--split sloped``).

The convergence-rate theory takes the MLE over a **compact** parameter set. Here every real free parameter
of the over-fitted K = 3 model (gate rows, class-0 expert coefficients) is kept in the box
|theta| <= B by the parametrisation theta = B tanh(u / B), and the mean log-likelihood is maximised by
L-BFGS (optax) to a relative change of 1e-13 (at most 4000 iterations) from the near-true starts of
``bm.convergence_rate`` (the slope-3 atom split in two). Per n the script prints the iterations, the
largest |parameter| of every fit (B means the fit sits on the box), the common loss (exponent 2 on every
block of the split cell, minimised over the gate translation) and the largest split-cell distances per
block.

Run: python examples/classification_box_mle.py [--box B] [--reps R] [--gates softmax tanh]
     [--grid N ...] [--seed S]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from classification_binned_mle import COMMON, GATES, TRUTH, lbfgs_minimize, split_cell  # same dir

import bayesmoe as bm
from bayesmoe.experiments import near_true_starts


def box_fit(model, box, max_iter=4000, tol=1e-13):
    """A jitted ``(x, y, u0) -> (params, log-likelihood, iterations)``: L-BFGS on u with the free
    parameters theta = box * tanh(u / box)."""
    def full(u):
        return model.full_params({k: box * jnp.tanh(v / box) for k, v in u.items()}, 1)

    @jax.jit
    def fit(x, y, u0):
        f = lambda u: -jnp.mean(model.log_likelihood(full(u), x, y))  # noqa: E731
        u, iters, _ = lbfgs_minimize(f, u0, max_iter, rtol=tol)
        return model.complete_params(full(u)), -f(u) * x.shape[0], iters
    return fit


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--box", type=float, default=8.0)
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--gates", nargs="+", choices=tuple(GATES), default=list(GATES))
    ap.add_argument("--grid", type=int, nargs="+", default=[4000, 16000])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    bm.enable_x64()
    out = {}
    for name in args.gates:
        gate = GATES[name]()
        true_model = bm.MoE(gate, bm.experts.Categorical(2), 2)
        over = bm.MoE(gate, bm.experts.Categorical(2), 3)
        truth = {k: jnp.asarray(v) for k, v in true_model.check_params(dict(TRUTH), 1).items()}
        fit = jax.vmap(box_fit(over, args.box))
        loss_fn = jax.jit(jax.vmap(lambda p, o=over, t=truth: bm.metrics.voronoi_loss(
            o, p, t, translation="inf", orders=COMMON)))
        for i, n in enumerate(args.grid):
            t0 = time.perf_counter()
            key = jax.random.fold_in(jax.random.PRNGKey(args.seed), i)
            xs = jax.random.uniform(key, (args.reps, n, 1), minval=-2.0, maxval=2.0)
            ys = jnp.stack([true_model.simulate(jax.random.fold_in(key, 100 + r), truth, xs[r]).y
                            for r in range(args.reps)]).astype(jnp.int32)
            starts = near_true_starts(over, truth, n, args.reps, np.random.default_rng([args.seed, i]))
            u0 = {k: args.box * jnp.arctanh(jnp.clip(jnp.asarray(v) / args.box, -0.999, 0.999))
                  for k, v in over.free_params(starts).items()}
            params, _, iters = fit(xs, ys, u0)
            loss = np.asarray(loss_fn(params))
            largest = np.max([np.abs(np.asarray(v)).reshape(args.reps, -1).max(1)
                              for v in params.values()], 0)
            dist = split_cell(params, TRUTH)
            out[(name, n)] = (loss, dist, largest)
            print(f"{name:8s} n={n}: {time.perf_counter() - t0:.0f} s, L-BFGS iterations "
                  f"{np.asarray(iters).tolist()}\n    largest |parameter| {np.round(largest, 2).tolist()}\n"
                  f"    common loss (translation inf) mean {loss.mean():.4g}, median {np.median(loss):.4g}; "
                  "split cell mean/median " + ", ".join(f"|d {k}| {v.mean():.3g}/{np.median(v):.3g}"
                                                      for k, v in dist.items()), flush=True)
    return out


if __name__ == "__main__":
    main()
