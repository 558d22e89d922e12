"""Convergence rates of the MLE in the softmax-gated Gaussian MoE of arXiv 2305.03288 (section 1).

The paper's setup: d = 1, K* = 2, gates (beta0, beta1) = (-8, 25), (0, 0); experts (b, a) = (15, -20),
(-5, 20); noise sd 0.3, 0.4; x on the fixed grid linspace(0, 1, n); EM (tolerance 1e-6) from near-true
starts. We run (i) the exact fit K = 2 and measure the D1 Voronoi loss against n (published log-log slope
-0.64; theory <= -1/2), and (ii) the over-fit K = 3 with D2 and the per-parameter distances inside the
2-atom cell (theory: beta1 and b at n^-1/8, a and sigma^2 at n^-1/4), in float64.

Run: python examples/convergence_softmax_gaussian.py [--quick] [--reps R] [--only exact|over|both]
     [--init near_true|data] [--starts S] [--over-grid N ...] [--out out/convergence_softmax]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import bayesmoe as bm  # noqa: E402
from bayesmoe.experiments import loglog_slope  # noqa: E402


def design(key, n):
    """The paper's fixed design (the key is unused)."""
    return bm.datasets.softmax_gated_gaussian_x(n)


def cell_rates(ds, truth, j=0):
    """Mean over replications of the largest distance, among fitted atoms in true atom j's cell, to atom
    j, per block (beta1, a, b, sigma^2), and their log-log slopes."""
    fitted = {"beta1": ds["gate_coef"].values[..., 0], "a": ds["expert_coef"].values[..., 0],
              "b": ds["expert_intercept"].values, "sigma2": ds["expert_scale"].values ** 2}
    true = {"beta1": truth["gate_coef"][:, 0], "a": truth["expert_coef"][:, 0],
            "b": truth["expert_intercept"], "sigma2": truth["expert_scale"] ** 2}
    # the gauge of the loss: gate slopes relative to the fitted atom whose expert is closest to the true
    # reference (last) atom's (data starts need not put it last)
    expert_dist = sum(np.abs(fitted[b][..., :, None] - true[b][None, None, None, :])
                      for b in ("a", "b", "sigma2"))
    ref = expert_dist[..., -1].argmin(-1)[..., None]
    fitted["beta1"] = fitted["beta1"] - np.take_along_axis(fitted["beta1"], ref, -1)
    # cells from the Voronoi assignment: distance = sum of block distances
    dist = sum(np.abs(fitted[b][..., :, None] - true[b][None, None, None, :]) for b in fitted)
    cell = dist.argmin(-1) == j
    out = {}
    for b in fitted:
        d = np.abs(fitted[b] - true[b][j])
        d = np.where(cell, d, 0.0).max(-1)
        mean = d.mean(1)
        out[b] = {"mean": mean.tolist(), "slope": loglog_slope(ds["n"].values, mean)[0]}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small grid, few replications (CI)")
    ap.add_argument("--reps", type=int, default=None, help="replications of the exact fit (paper: 40)")
    ap.add_argument("--over-reps", type=int, default=None, help="replications of the over-fit (paper: 40)")
    ap.add_argument("--starts", type=int, default=3, help="starts per over-fit replication (paper: 5)")
    ap.add_argument("--max-steps", type=int, default=2000, help="EM steps (paper: 2000)")
    ap.add_argument("--init", choices=("near_true", "data"), default="near_true",
                    help="over-fit starts: near the truth (the paper) or from the data (k-means partitions)")
    ap.add_argument("--translation", choices=("gauge", "inf"), default="gauge",
                    help="Voronoi loss of the over-fit: reference gauge or minimised over the gate "
                         "translation (needed when data starts split the reference atom)")
    ap.add_argument("--over-grid", type=int, nargs="+", default=None, help="over-fit sample sizes")
    ap.add_argument("--only", choices=("exact", "over", "both"), default="both", help="which study to run")
    ap.add_argument("--out", default="out/convergence_softmax")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    bm.enable_x64()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, truth = bm.datasets.softmax_gated_gaussian()
    reps = args.reps or (4 if args.quick else 20)
    over_reps = args.over_reps or (4 if args.quick else 8)
    starts = 2 if args.quick else args.starts
    exact_grid = [200, 1000, 5000] if args.quick else [100, 300, 1000, 3000, 10000, 30000, 100000]
    over_grid = args.over_grid or ([1000, 5000] if args.quick else [10000, 20000, 40000, 70000, 100000])
    summary, exact, over, rates = {}, None, None, None
    t0 = time.perf_counter()
    if args.only in ("exact", "both"):
        exact = bm.convergence_rate(model, truth, n_grid=exact_grid, n_reps=reps, x_sampler=design,
                                    max_steps=args.max_steps, seed=args.seed, quiet=args.quick)
        secs = time.perf_counter() - t0
        summary["exact_K2"] = {"n": exact_grid, "mean_D1": exact["mean_loss"].values.tolist(),
                               "slope": float(exact["slope"]), "slope_se": float(exact["slope_se"]),
                               "published_slope": -0.64, "reps": reps, "seconds": secs}
        print(f"exact fit K=2: D1 slope {float(exact['slope']):.3f} ± {float(exact['slope_se']):.3f}"
              f" (published -0.64; {reps} replications, {secs:.0f} s)")
    t1 = time.perf_counter()
    if args.only in ("over", "both"):
        over = bm.convergence_rate(model, truth, n_grid=over_grid, n_reps=over_reps, n_experts_fit=3,
                                   n_starts=starts, max_steps=args.max_steps, x_sampler=design,
                                   init=args.init, seed=args.seed + 1, quiet=args.quick,
                                   translation=args.translation)
        secs = time.perf_counter() - t1
        rates = cell_rates(over, truth)
        summary["over_K3"] = {"n": over_grid, "mean_D2": over["mean_loss"].values.tolist(),
                              "slope": float(over["slope"]), "slope_se": float(over["slope_se"]),
                              "cell_rates": rates,
                              "theory": {"beta1": -0.125, "b": -0.125, "a": -0.25, "sigma2": -0.25},
                              "reps": over_reps, "starts": starts, "init": args.init,
                              "translation": args.translation,
                              "max_steps": args.max_steps,
                              "steps_at_cap": float((over["n_steps"] >= args.max_steps).mean()),
                              "seconds": secs}
        print(f"over-fit K=3: D2 slope {float(over['slope']):.3f} ± {float(over['slope_se']):.3f}"
              f" ({over_reps} replications, {starts} {args.init} starts, {secs:.0f} s)")
        for b, r in rates.items():
            theory = summary['over_K3']['theory'][b]
            print(f"  2-atom cell, |d {b}|: slope {r['slope']:.3f} (theory {theory})")
    panels = [p for p in (exact, over) if p is not None]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    ax_exact, ax_over = (axes[0, 0], axes[0, -1])
    if exact is not None:
        bm.plot_convergence(exact, ax_exact, label="D1, exact fit K=2")
        ax_exact.set_title(f"softmax-gated Gaussian, exact fit ({reps} reps)")
    if over is not None:
        bm.plot_convergence(over, ax_over, label="D2, over-fit K=3")
        for b, r in rates.items():
            ax_over.loglog(over_grid, r["mean"], ".-", lw=0.8, label=f"|d {b}| (slope {r['slope']:.2f})")
        ax_over.legend(fontsize=7)
        ax_over.set_title(f"over-fit K=3 ({over_reps} reps, {starts} {args.init} starts)")
    fig.tight_layout()
    tag = "" if args.only == "both" else f"_{args.only}"
    tag += "" if args.init == "near_true" else f"_{args.init}"
    tag += "" if args.translation == "gauge" else f"_{args.translation}"
    fig.savefig(out / f"convergence_softmax_gaussian{tag}.png", dpi=110)
    (out / f"convergence_softmax_gaussian{tag}.json").write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
