"""Softmax vs modified softmax gating with multinomial-logistic experts (arXiv 2310.14188, section 3).

True model: d = 1, K* = 2, two classes, x ~ Uniform(-2, 2); gate (beta0, beta1) = (0.5, 2), (0, 0) (the
second the reference); expert 1 has a **vanishing slope** (a*_1 = 0, b*_1 = 1), expert 2 has
(a*_2, b*_2) = (3, -1). With the plain softmax gate the paper shows that vanishing expert slopes make the
parameter rates slower than any polynomial (an interaction between gate and expert parameters); the
modified gate softmax(beta1 tanh(x) + beta0) removes the interaction. Each gate generates its own data
(same parameters), the over-fitted K = 3 model is fitted by EM from near-true starts (the vanishing-slope
atom split in two) and the Voronoi loss D2 is measured against n. We report the slopes of both, the
ratio of their mean losses at the largest n, and per-block distances in the split cell.

Small n (below a few thousand) is left out: there the fitted gate often separates the data and its
intercepts run off (losses of 1e3 and more), which says nothing about rates.

The slopes carry two standard errors: the OLS one over the grid points and a bootstrap one over the
replications (resampled with replacement); the gates' difference is judged by the latter.

``--split sloped`` splits the slope-3 expert instead (the vanishing-slope expert becomes the gate's
reference atom): there the softmax gate's interaction d2u/(dbeta1 db) = du/da exists without the flat
family of the vanishing-slope split (docs/theory.md).

Over-fits also report, minimised over the gate translation, the families' D2 and a **common** loss with
exponent 2 on every block (beta1, a, b) of an over-fitted cell for both gates (``--loss common`` makes it
the loss of the main slope): the modified gate's loss, a strongly identifiable model's, in which the
gates' slopes can be compared.

Run: python examples/convergence_classification.py [--quick] [--reps R] [--k K] [--init near_true|data]
     [--starts S] [--split vanishing|sloped] [--translation gauge|inf] [--loss d2|common] [--tol T]
     [--method em|lbfgs] [--grid N ...] [--out out/convergence_clf]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import bayesmoe as bm  # noqa: E402
from bayesmoe.experiments import loglog_slope  # noqa: E402

TRUTH = {"gate_intercept": np.array([0.5, 0.0]), "gate_coef": np.array([[2.0], [0.0]]),
         "expert_intercept": np.array([[1.0, 0.0], [-1.0, 0.0]]),
         "expert_coef": np.array([[[0.0], [0.0]], [[3.0], [0.0]]])}
#: the same experts swapped: the over-fit splits atom 0, here the expert with slope 3 (no vanishing slope
#: in the split cell; the vanishing-slope expert is the gate's reference atom, fitted singly)
TRUTH_SWAPPED = {"gate_intercept": np.array([0.5, 0.0]), "gate_coef": np.array([[2.0], [0.0]]),
                 "expert_intercept": np.array([[-1.0, 0.0], [1.0, 0.0]]),
                 "expert_coef": np.array([[[3.0], [0.0]], [[0.0], [0.0]]])}


def uniform_x(key, n):
    """x ~ Uniform(-2, 2), shape (n, 1)."""
    return np.asarray(jax.random.uniform(key, (n, 1), minval=-2.0, maxval=2.0))


def split_cell(params, truth=TRUTH, j=0):
    """Per block (a, b, beta1), the largest distance from the fitted atoms of true atom j's cell (cells:
    the nearest true atom in the expert blocks) to atom j, one value per replication (params with a
    leading replication axis). Gate slopes are taken relative to the fitted atom whose expert is closest
    to the true reference (last) atom's (data starts need not put it last): the loss's gauge."""
    a = np.asarray(params["expert_coef"])[:, :, 0, 0]      # (rep, K): slope of class 0
    b = np.asarray(params["expert_intercept"])[:, :, 0]
    ta, tb = truth["expert_coef"][:, 0, 0], truth["expert_intercept"][:, 0]
    ref = (np.abs(a - ta[-1]) + np.abs(b - tb[-1])).argmin(-1)[:, None]
    beta1 = np.asarray(params["gate_coef"])[:, :, 0]
    beta1 = beta1 - np.take_along_axis(beta1, ref, -1)
    cell = (np.abs(a[..., None] - ta) + np.abs(b[..., None] - tb)).argmin(-1) == j
    return {name: np.where(cell, np.abs(v - t), 0.0).max(-1)
            for name, v, t in (("a", a, ta[j]), ("b", b, tb[j]), ("beta1", beta1, truth["gate_coef"][j, 0]))}


def split_cell_distances(ds, truth=TRUTH, j=0):
    """Per block, the mean over replications of :func:`split_cell` at every n of ``ds``, and its log-log
    slope."""
    n_grid, reps = ds["loss"].shape
    params = {k: ds[k].values.reshape((n_grid * reps,) + ds[k].shape[2:])
              for k in ("expert_coef", "expert_intercept", "gate_coef")}
    out = {}
    for name, v in split_cell(params, truth, j).items():
        mean = v.reshape(n_grid, reps).mean(1)
        out[name] = {"mean": mean.tolist(), "slope": loglog_slope(ds["n"].values, mean)[0]}
    return out


#: one loss for both gates: exponent 2 on every block of an over-fitted cell (the modified gate's,
#: a strongly identifiable model's), so the gates' slopes are comparable
COMMON = {"beta1": 2, "a": 2, "b": 2}


def fitted_losses(ds, gate, truth, orders):
    """Voronoi losses (n, rep) of the fitted params in ``ds`` with block exponents ``orders`` (None: the
    families' D2), minimised over the gate translation."""
    model = bm.MoE(gate, bm.experts.Categorical(2), int(ds.attrs["k_fit"]))
    shape = ds["loss"].shape
    params = {k: jax.numpy.asarray(ds[k].values.reshape((-1,) + ds[k].shape[2:])) for k in truth}
    fn = jax.jit(jax.vmap(lambda p: bm.metrics.voronoi_loss(model, p, truth, translation="inf",
                                                            orders=orders)))
    return np.asarray(fn(params)).reshape(shape)


def bootstrap_slopes(n, loss, n_boot=2000, seed=0, stat=np.mean):
    """Log-log slopes of ``stat`` (mean or median) of the loss (n, rep) over the replications, for
    ``n_boot`` resamples of the replications (with replacement, the same resample at every n)."""
    loss = np.asarray(loss)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, loss.shape[1], (n_boot, loss.shape[1]))
    return np.array([loglog_slope(n, stat(loss[:, i], axis=1))[0] for i in idx])


def bootstrap_slope_se(ds, n_boot=2000, seed=0, loss=None):
    """Standard error of the log-log slope of the mean loss from resampling the replications: it
    measures the spread the replications cause, which the OLS standard error over the few grid points
    does not. ``loss`` (n, rep): another loss than ds's."""
    loss = ds["loss"].values if loss is None else loss       # (n, rep)
    return float(np.std(bootstrap_slopes(ds["n"].values, loss, n_boot, seed), ddof=1))


def run(gate, grid, reps, k, seed, quiet, max_steps, init="near_true", starts=1, truth=TRUTH,
        translation="gauge", orders=None, tol=1e-6, method="em"):
    model = bm.MoE(gate, bm.experts.Categorical(2), 2)
    return bm.convergence_rate(model, truth, n_grid=grid, n_reps=reps, n_experts_fit=k, x_sampler=uniform_x,
                               seed=seed, quiet=quiet, max_steps=max_steps, init=init, n_starts=starts,
                               translation=translation, orders=orders, tol=tol, method=method)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small grid, few replications (CI)")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--k", type=int, default=3, help="fitted number of experts")
    ap.add_argument("--max-steps", type=int, default=2000)
    ap.add_argument("--init", choices=("near_true", "data"), default="near_true",
                    help="starts: near the truth (shrinking noise) or from the data (k-means partitions)")
    ap.add_argument("--starts", type=int, default=1, help="starts per replication (best likelihood kept)")
    ap.add_argument("--split", choices=("vanishing", "sloped"), default="vanishing",
                    help="the true expert the over-fit splits: the vanishing-slope one or the slope-3 one")
    ap.add_argument("--translation", choices=("gauge", "inf"), default="gauge",
                    help="Voronoi loss: reference gauge or minimised over the gate translation (data starts)")
    ap.add_argument("--loss", choices=("d2", "common"), default="d2",
                    help="the loss of the slope: the families' D2 (r on beta1, r/2 on a and b) or exponent 2 "
                         "on every block for both gates (both are reported, minimised over translation)")
    ap.add_argument("--tol", type=float, default=1e-6, help="relative log-likelihood change to stop")
    ap.add_argument("--method", choices=("em", "lbfgs"), default="em")
    ap.add_argument("--grid", type=int, nargs="+", default=None, help="sample sizes (default: see source)")
    ap.add_argument("--out", default="out/convergence_clf")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    bm.enable_x64()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    reps = args.reps or (4 if args.quick else 8)
    grid = args.grid or ([2000, 8000] if args.quick else [4000, 8000, 16000, 32000, 64000, 128000])
    summary = {}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, gate, color in (("softmax", bm.gates.Softmax(), "C0"),
                              ("modified_tanh", bm.gates.ModifiedSoftmax("tanh"), "C1")):
        t0 = time.perf_counter()
        truth = TRUTH if args.split == "vanishing" else TRUTH_SWAPPED
        ds = run(gate, grid, reps, args.k, args.seed, args.quick, args.max_steps, args.init, args.starts,
                 truth, args.translation, COMMON if args.loss == "common" else None, args.tol, args.method)
        secs = time.perf_counter() - t0
        cells = split_cell_distances(ds, truth)
        boot = bootstrap_slope_se(ds, seed=args.seed)
        other = {}
        if args.k > len(truth["gate_intercept"]):
            for lname, orders in (("d2", None), ("common", COMMON)):
                lv = fitted_losses(ds, gate, truth, orders)
                mean = lv.mean(1)
                sl, se, _ = loglog_slope(grid, mean)
                other[lname] = {"loss": lv.tolist(), "mean_loss": mean.tolist(),
                                "median_loss": np.median(lv, 1).tolist(), "slope": sl, "slope_se": se,
                                "median_slope": loglog_slope(grid, np.median(lv, 1))[0],
                                "slope_se_bootstrap": bootstrap_slope_se(ds, seed=args.seed, loss=lv)}
        summary[name] = {"n": grid, "mean_loss": ds["mean_loss"].values.tolist(),
                         "median_loss": ds["loss"].median("rep").values.tolist(),
                         "median_slope": loglog_slope(grid, ds["loss"].median("rep").values)[0],
                         "slope": float(ds["slope"]), "slope_se": float(ds["slope_se"]),
                         "slope_se_bootstrap": boot, "split_cell": cells, "reps": reps, "k_fit": args.k,
                         "init": args.init, "starts": args.starts, "translation": args.translation,
                         "loss_name": args.loss, "tol": args.tol, "method": args.method,
                         "losses_translation_inf": other, "loss": ds["loss"].values.tolist(),
                         "converged": float(ds["converged"].mean()), "n_steps": ds["n_steps"].values.tolist(),
                         "log_likelihood": ds["log_likelihood"].values.tolist(),
                         "steps_at_cap": float((ds["n_steps"] >= args.max_steps).mean()), "seconds": secs}
        kind = "D1" if args.k == len(TRUTH["gate_intercept"]) else "D2" if args.loss == "d2" else "common"
        print(f"{name:14s} K={args.k}: {kind} slope {float(ds['slope']):.3f} ± {float(ds['slope_se']):.3f} "
              f"(bootstrap over replications ± {boot:.3f}; median-loss slope "
              f"{summary[name]['median_slope']:.3f}), mean loss at n={grid[-1]}: "
              f"{float(ds['mean_loss'][-1]):.4g} ({reps} replications, {args.init} starts x {args.starts}, "
              f"{summary[name]['steps_at_cap']:.0%} at the step cap, {secs:.0f} s)")
        print(f"    fitting steps per n (min / median / max): "
              f"{[(int(v.min()), int(np.median(v)), int(v.max())) for v in ds['n_steps'].values]}")
        for b, r in cells.items():
            print(f"    split cell |d {b}|: slope {r['slope']:.3f}, mean {np.round(r['mean'], 4).tolist()}")
        for lname, r in other.items():
            print(f"    loss {lname} (translation inf): slope {r['slope']:.3f} ± {r['slope_se']:.3f} "
                  f"(bootstrap ± {r['slope_se_bootstrap']:.3f}; median-loss slope {r['median_slope']:.3f}), "
                  f"mean {np.round(r['mean_loss'], 5).tolist()}")
        bm.plot_convergence(ds, axes[0], label=name, color=color)
        for (b, r), style in zip(cells.items(), ("-", "--", ":"), strict=True):
            axes[1].loglog(grid, r["mean"], style, color=color, label=f"{name} |d {b}| ({r['slope']:.2f})")
    axes[0].set_title(f"K*=2 fitted K={args.k} ({reps} reps, {args.init} starts)")
    axes[1].set_title(f"split cell ({'vanishing-slope' if args.split == 'vanishing' else 'slope-3'} atom)")
    axes[1].set_xlabel("n")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    tag = f"_k{args.k}_{args.init}" + ("" if args.split == "vanishing" else "_sloped")
    tag += "" if args.translation == "gauge" else f"_{args.translation}"
    tag += "" if args.loss == "d2" else f"_{args.loss}"
    tag += "" if args.method == "em" else f"_{args.method}"
    fig.savefig(out / f"convergence_classification{tag}.png", dpi=110)
    diff = summary["modified_tanh"]["slope"] - summary["softmax"]["slope"]
    diff_se = float(np.hypot(summary["modified_tanh"]["slope_se_bootstrap"],
                             summary["softmax"]["slope_se_bootstrap"]))
    summary["slope_difference"] = {"modified_minus_softmax": diff, "se": diff_se}
    summary["modified_steeper"] = diff < 0
    print(f"slope difference (modified - softmax): {diff:.3f} ± {diff_se:.3f} (bootstrap)")
    for lname in summary["softmax"]["losses_translation_inf"]:
        m, s_ = (summary[g]["losses_translation_inf"][lname] for g in ("modified_tanh", "softmax"))
        d, se = m["slope"] - s_["slope"], float(np.hypot(m["slope_se_bootstrap"], s_["slope_se_bootstrap"]))
        summary["slope_difference"][lname] = {"modified_minus_softmax": d, "se": se}
        print(f"  loss {lname}: slope difference (modified - softmax) {d:.3f} ± {se:.3f} (bootstrap)")
    (out / f"convergence_classification{tag}.json").write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
