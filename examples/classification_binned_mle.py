"""Softmax vs modified softmax gate: the over-fitted classification MLE run to convergence at sample sizes
up to 1e15 (issue 9, docs/theory.md), with x on a finite grid so that the data are class counts.

examples/convergence_classification.py could not reach the regime of the theory: at n <= 6.4e4 EM stops
near its (shrinking) start, and the converged over-fitted MLE runs away (a sharp gate isolates a few points
of one class, like separation in logistic regression). Here x takes G equally spaced values in [-2, 2]
with equal probability (an input law with G support points; G = 81 by default). The log-likelihood of n
rows then depends on the data only through the counts c[g, y] of class y at grid point g,
sum_g sum_y c[g, y] log p(y | x_g), so a replication at n = 1e15 costs what one at 1e4 costs, and at large
n every grid point has many rows of each class: no separation, the MLE is a proper local maximum near the
truth.

Truth (``--split sloped``, default): that of ``examples/convergence_classification.py --split sloped``
(K* = 2, two classes, gate (beta0, beta1) = (0.5, 2), (0, 0); experts (b, a) = (-1, 3) and the vanishing
slope (1, 0)); ``--split vanishing`` swaps the experts, so that the over-fit splits the vanishing-slope
atom. Fit: the over-fitted K = 3 model, the first atom split in two, near-true starts of
``bm.convergence_rate`` with the noise of n = ``--start-n`` (1e4) at every n, then L-BFGS (optax,
float64) on the count-weighted mean log-likelihood until the largest absolute gradient entry is at most
``--gtol`` (1e-13) or ``--max-iter`` iterations. Loss: exponent 2 on every block (beta1, a, b) of the
split cell, mass weighted, minimised over the common gate translation (``orders={"beta1": 2, "a": 2,
"b": 2}``), for both gates; beside it the largest split-cell distance per block. Each gate generates its
own data from the same parameters.

Run: python examples/classification_binned_mle.py [--quick] [--split sloped|vanishing] [--reps R]
     [--grid N ...] [--points G] [--gtol T] [--start-n N] [--max-iter M] [--seed S]
     [--out out/classification_binned]
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from convergence_classification import COMMON, TRUTH_SWAPPED, bootstrap_slopes, split_cell
from convergence_classification import TRUTH as TRUTH_VANISHING
from tqdm.auto import tqdm

import bayesmoe as bm
from bayesmoe.experiments import loglog_slope, near_true_starts

# the truths (the sloped split is convergence_classification.py's --split sloped), the common loss, the
# split-cell distances and the bootstrap over replications come from that study (same directory)
TRUTH = TRUTH_SWAPPED
TRUTHS = {"sloped": TRUTH_SWAPPED, "vanishing": TRUTH_VANISHING}
GATES = {"softmax": bm.gates.Softmax, "tanh": lambda: bm.gates.ModifiedSoftmax("tanh")}


def lbfgs_minimize(f, u0, max_iter: int, gtol: float = 0.0, rtol: float = 0.0):
    """L-BFGS (optax, zoom line search) on ``f`` from ``u0`` in one ``while_loop`` until the largest
    absolute gradient entry is at most ``gtol``, or (``rtol > 0``) the objective's relative change at
    most ``rtol``, or ``max_iter`` iterations; returns (u, iterations, largest |gradient| at the last
    step)."""
    opt = optax.lbfgs()
    vg = optax.value_and_grad_from_state(f)

    def body(s):
        u, st, i, prev, _, _ = s
        v, g = vg(u, state=st)
        upd, st = opt.update(g, st, u, value=v, grad=g, value_fn=f)
        gmax = optax.tree.max(jax.tree.map(jnp.abs, g))
        flat = (jnp.abs(prev - v) <= rtol * jnp.abs(v)) if rtol > 0 else jnp.asarray(False)
        return optax.apply_updates(u, upd), st, i + 1, v, gmax, flat

    inf = jnp.asarray(jnp.inf, jax.tree.leaves(u0)[0].dtype)
    s0 = (u0, opt.init(u0), jnp.asarray(0), inf, inf, jnp.asarray(False))
    s = jax.lax.while_loop(lambda s: (s[2] < max_iter) & (s[4] > gtol) & ~s[5], body, s0)
    return s[0], s[2], s[4]


def grid_rows(points: int) -> tuple[np.ndarray, np.ndarray]:
    """The 2G rows (x_g, y) of the count representation: every grid point once with each class."""
    xg = np.linspace(-2.0, 2.0, points)[:, None]
    return np.concatenate([xg, xg]), np.repeat(np.arange(2), points)


def draw_counts(true_model, truth, x2, y2, n: int, reps: int, rng: np.random.Generator) -> np.ndarray:
    """Counts (reps, 2G) of n rows: grid points uniform (multinomial), classes given x from the truth."""
    points = x2.shape[0] // 2
    p = np.exp(np.asarray(true_model.log_likelihood(truth, jnp.asarray(x2), jnp.asarray(y2))))
    p0 = p[:points] / (p[:points] + p[points:])             # renormalised against rounding
    at_x = rng.multinomial(n, np.full(points, 1.0 / points), size=reps)
    c0 = rng.binomial(at_x, p0)
    return np.concatenate([c0, at_x - c0], axis=1).astype(float)


@functools.cache
def counts_fit(model, max_iter: int, gtol: float):
    """A jitted ``(x2, y2, counts, u0) -> (params, iterations, largest |gradient|)``, vmapped over
    replications (one per model and stop, so that studies in one process share its compilations):
    L-BFGS on the free params u of the count-weighted mean negative log-likelihood until the largest
    absolute gradient entry is at most ``gtol`` (the MLE's first-order condition; a stop on the change
    of the objective ends too early in the flat directions of an over-fitted cell)."""
    def run(x2, y2, c, u0):
        n = jnp.sum(c)
        f = lambda u: -jnp.sum(c * model.log_likelihood(model.full_params(u, 1), x2, y2)) / n  # noqa: E731
        u, iters, gmax = lbfgs_minimize(f, u0, max_iter, gtol=gtol)
        return model.complete_params(model.full_params(u, 1)), iters, gmax
    return jax.jit(jax.vmap(run, in_axes=(None, None, 0, 0)))


def run_gate(name: str, grid, reps: int, points: int, seed: int, max_iter: int, gtol: float,
             start_n: float | None, split: str = "sloped", orders=COMMON, move_starts=None) -> dict:
    """Fits of one gate over the n grid; per n the losses (block exponents ``orders``), split-cell
    distances and iterations. ``move_starts(starts, rng)``, if given, changes the near-true starts (numpy
    params with a leading replication axis) before the fits."""
    gate = GATES[name]()
    true_model = bm.MoE(gate, bm.experts.Categorical(2), 2)
    over = bm.MoE(gate, bm.experts.Categorical(2), 3)
    truth = {k: jnp.asarray(v) for k, v in true_model.check_params(dict(TRUTHS[split]), 1).items()}
    x2, y2 = grid_rows(points)
    fit = counts_fit(over, max_iter, gtol)
    loss_fn = jax.jit(jax.vmap(lambda p: bm.metrics.voronoi_loss(over, p, truth, translation="inf",
                                                                   orders=orders)))
    out = {"n": [], "loss": [], "dist": {k: [] for k in ("a", "b", "beta1")}, "iters": [], "grad": []}
    for i, n in enumerate(tqdm(grid, desc=name, leave=False)):
        rng = np.random.default_rng([seed, i])
        counts = draw_counts(true_model, truth, x2, y2, int(n), reps, rng)
        starts = near_true_starts(over, truth, int(start_n or n), reps, rng)
        if move_starts is not None:
            starts = move_starts(starts, rng)
        u0 = {k: jnp.asarray(v) for k, v in over.free_params(starts).items()}
        params, iters, grad = fit(jnp.asarray(x2), jnp.asarray(y2), jnp.asarray(counts), u0)
        out["n"].append(int(n))
        out["loss"].append(np.asarray(loss_fn(params)).tolist())
        for k, v in split_cell(params, TRUTHS[split]).items():
            out["dist"][k].append(v.tolist())
        out["iters"].append(np.asarray(iters).tolist())
        out["grad"].append(np.asarray(grad).tolist())
    return out


def slopes(res: dict, seed: int, boot: int = 2000) -> dict:
    """OLS log-log slope of the mean (and median) loss over n, with a bootstrap SE over replications."""
    n, loss = np.asarray(res["n"], float), np.asarray(res["loss"])       # (grid, reps)
    s_mean, se_ols, _ = loglog_slope(n, loss.mean(1))
    boot_s = bootstrap_slopes(n, loss, boot, seed)
    return {"slope": s_mean, "se_ols": se_ols, "se_boot": float(boot_s.std()), "boot": boot_s,
            "slope_median": loglog_slope(n, np.median(loss, 1))[0],
            "dist_slopes": {k: loglog_slope(n, np.asarray(v).mean(1))[0] for k, v in res["dist"].items()}}


def plot_results(results: dict, path, title: str = "", n_from: float = 1e12,
                 guides=(("softmax", -0.5),),
                 ylabel: str = "common loss (exponent 2, translation inf)") -> None:
    """Mean loss against n on log-log axes for both gates, with the 10-90 % band over replications and,
    per (gate, slope) in ``guides``, a dashed line of that slope through the gate's mean at the first
    n >= ``n_from``; written to ``path``."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for (name, res), color in zip(results.items(), ("C0", "C3"), strict=False):
        n, loss = np.asarray(res["n"], float), np.asarray(res["loss"])
        lo, hi = np.quantile(loss, [0.1, 0.9], axis=1)
        ax.fill_between(n, lo, hi, color=color, alpha=0.15)
        ax.plot(n, loss.mean(1), "o-", color=color, label=f"{name} gate: mean loss")
    for (gate, slope), style in zip(guides, ("k--", "k:"), strict=False):
        n, loss = np.asarray(results[gate]["n"], float), np.asarray(results[gate]["loss"])
        i = int(np.argmax(n >= n_from))
        ax.plot(n[i:], loss.mean(1)[i] * (n[i:] / n[i]) ** slope, style, label=f"slope {slope:g}")
    ax.set(xscale="log", yscale="log", xlabel="n", ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def study_parser(doc: str, *, grid, start_n: float, out: str, quick: str) -> argparse.ArgumentParser:
    """The command line of a binned study (``run_study``): replications, n grid, grid points, L-BFGS stop,
    start noise, seed, output directory; ``quick`` describes ``--quick``."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=quick)
    ap.add_argument("--reps", type=int, default=16)
    ap.add_argument("--grid", type=float, nargs="+", default=list(grid))
    ap.add_argument("--points", type=int, default=81)
    ap.add_argument("--max-iter", type=int, default=50000)
    ap.add_argument("--gtol", type=float, default=1e-13)
    ap.add_argument("--start-n", type=float, default=start_n,
                    help="the sample size whose near-true start noise every n uses (0: n itself)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=out)
    return ap


def main(argv=None) -> dict:
    ap = study_parser(__doc__, grid=[1e10, 1e11, 1e12, 1e13, 1e14, 1e15], start_n=1e4,
                      out="out/classification_binned", quick="4 replications, n = 1e11, 1e13, 1e15")
    ap.add_argument("--split", choices=tuple(TRUTHS), default="sloped")
    args = ap.parse_args(argv)
    if args.quick:
        args.reps, args.grid = 4, [1e11, 1e13, 1e15]
    return run_study(args, title=f"over-fit K = 3, {args.split} split, x on {args.points} points")


def run_study(args, *, orders=COMMON, move_starts=None, name: str = "classification_binned",
              title: str = "", **plot_kw) -> dict:
    """Both gates' fits over ``args.grid`` (``run_gate``), their slopes and difference printed, written
    to ``args.out``/``name``.json and .png (``plot_kw`` goes to :func:`plot_results`); the record."""
    bm.enable_x64()
    results, summary = {}, {}
    for gate in GATES:
        t0 = time.perf_counter()
        results[gate] = run_gate(gate, args.grid, args.reps, args.points, args.seed, args.max_iter, args.gtol,
                                 args.start_n, args.split, orders, move_starts)
        summary[gate] = slopes(results[gate], args.seed + 1000)
        s = summary[gate]
        loss = np.asarray(results[gate]["loss"])
        print(f"{gate:8s} {time.perf_counter() - t0:5.0f} s  slope {s['slope']:+.3f} "
              f"(OLS SE {s['se_ols']:.3f}, bootstrap SE {s['se_boot']:.3f}), median-loss slope "
              f"{s['slope_median']:+.3f}; split cell slopes "
              + ", ".join(f"{k} {v:+.3f}" for k, v in s["dist_slopes"].items()), flush=True)
        print("    mean loss per n: " + ", ".join(f"{m:.3g}" for m in loss.mean(1))
              + "; max iterations per n: " + ", ".join(str(max(i)) for i in results[gate]["iters"])
              + "; largest |gradient| " + ", ".join(f"{max(g):.1e}" for g in results[gate]["grad"]))
    diff = summary["tanh"]["boot"] - summary["softmax"]["boot"]
    d = summary["tanh"]["slope"] - summary["softmax"]["slope"]
    print(f"difference tanh - softmax: {d:+.3f} (bootstrap SE {diff.std():.3f})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"args": vars(args), "results": results,
              "summary": {k: {kk: vv for kk, vv in v.items() if kk != "boot"} for k, v in summary.items()},
              "difference": d, "difference_se": float(diff.std())}
    (out / f"{name}.json").write_text(json.dumps(record, indent=1))
    plot_results(results, out / f"{name}.png", title, **plot_kw)
    return record

if __name__ == "__main__":
    main()
