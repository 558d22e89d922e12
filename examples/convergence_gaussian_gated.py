"""Convergence rates of the MLE in the Gaussian-gated Gaussian MoE of arXiv 2305.07572 (section 2).

True K* = 3 (pi* = (0.3, 0.4, 0.3)); model 1 has every gate location c*_j != 0 (regime 1), model 2 sets
c*_1 = 0 (regime 2). Data (x, y) are drawn from the joint model, the over-fitted K = 4 model is fitted
by the closed-form joint EM (GLLiM) from near-true starts, and the Voronoi loss (exponents of the two
regimes) is measured against n. Published log-log slopes of the mean loss: -0.50 to -0.52.

Run: python examples/convergence_gaussian_gated.py [--quick] [--reps R] [--out out/convergence_gg]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import bayesmoe as bm  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small grid, few replications (CI)")
    ap.add_argument("--reps", type=int, default=None, help="replications (paper: 20)")
    ap.add_argument("--k", type=int, default=4, help="fitted number of experts (paper: 4 and 5)")
    ap.add_argument("--out", default="out/convergence_gg")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    bm.enable_x64()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    reps = args.reps or (4 if args.quick else 10)
    grid = [300, 1000, 3000] if args.quick else [100, 300, 1000, 3000, 10000, 30000, 100000]
    summary = {}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, which in zip(axes, (1, 2), strict=True):
        model, truth = bm.datasets.gaussian_gated(which)
        t0 = time.perf_counter()
        ds = bm.convergence_rate(model, truth, n_grid=grid, n_reps=reps, n_experts_fit=args.k,
                                 seed=args.seed + which, quiet=args.quick)
        secs = time.perf_counter() - t0
        summary[f"model{which}"] = {"n": grid, "mean_loss": ds["mean_loss"].values.tolist(),
                                    "slope": float(ds["slope"]), "slope_se": float(ds["slope_se"]),
                                    "published_slope": [-0.52, -0.50], "reps": reps, "k_fit": args.k,
                                    "converged": float(ds["converged"].mean()), "seconds": secs}
        print(f"Gaussian-gated model {which}, K={args.k}: slope {float(ds['slope']):.3f} ± "
              f"{float(ds['slope_se']):.3f} (published -0.50 to -0.52; {reps} replications, {secs:.0f} s)")
        bm.plot_convergence(ds, ax, label=f"model {which}, K={args.k}")
        ax.set_title(f"Gaussian-gated model {which} ({reps} reps)")
    fig.tight_layout()
    fig.savefig(out / "convergence_gaussian_gated.png", dpi=110)
    (out / "convergence_gaussian_gated.json").write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
