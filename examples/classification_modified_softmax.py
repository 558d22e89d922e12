"""Classification with a modified-softmax gate: 3 classes, 2 multinomial-logistic experts.

The gate is g_k(x) = softmax_k(b_k + w_k tanh(x)) (a bounded, nonlinear transform of the input, the
modified softmax gating of arXiv 2310.14188); each expert is a multinomial logistic regression of the
class on x. We simulate from a true model, fit the MAP, then NUTS from the MAP, and plot the fit, the
gates and an ArviZ rank plot.

Run: python examples/classification_modified_softmax.py [--quick] [--out out/classification]
     [--seed 0] [--dim 1|2]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

# parallel chains on CPU (must precede JAX's start; an existing setting is kept)
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={min(4, os.cpu_count() or 1)}")

import arviz as az  # noqa: E402
import jax  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

import bayesmoe as bm  # noqa: E402
from bayesmoe.plots import plot_fit, plot_gates  # noqa: E402


def true_model(d: int = 1):
    """2 experts with a tanh-modified softmax gate, 3 classes, the last class/expert the reference."""
    model = bm.MoE(bm.gates.ModifiedSoftmax("tanh"), bm.experts.Categorical(3), n_experts=2)
    params = {
        "gate_intercept": np.array([0.5, 0.0]),
        "gate_coef": np.array([[3.0] * d, [0.0] * d]),
        # expert 0 (gate: x > -0.2) answers class 0 almost always; expert 1 (x < -0.2) splits
        # class 1 / class 2 along x. Distinct experts keep the gate (and the labels) identifiable.
        "expert_intercept": np.array([[3.0, 0.0, 0.0], [-3.0, 1.0, 0.0]]),
        "expert_coef": np.array([[[1.0] * d, [0.0] * d, [0.0] * d],
                                 [[0.0] * d, [2.5] * d, [0.0] * d]]),
    }
    return model, params


def main_parameters(dt, model) -> xr.Dataset:
    """The posterior parameters: what the summary and the rank plot show.

    The reference rows (the last expert of the gate, the last class of the experts) are constant zeros,
    so ``bm.sample`` stores only the free rows (``gate_coef_free`` with dim ``expert_free``,
    ``expert_coef_free`` with dim ``class_free``); ``model.complete_params`` adds the zeros back.
    """
    return dt["posterior"].to_dataset()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (CI)")
    ap.add_argument("--out", default="out/classification")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dim", type=int, choices=(1, 2), default=1, help="number of input features")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    model, truth = true_model(args.dim)
    n = 500 if args.quick else 2000
    x = np.random.default_rng(args.seed).uniform(-2, 2, size=(n, args.dim))
    y = np.asarray(model.simulate(jax.random.key(args.seed), truth, x).y)
    print(f"simulated n={n}, d={args.dim} from {model}; class counts {np.bincount(y, minlength=3)}")

    fit = bm.fit_map(model, x, y, seed=args.seed)
    ll_true = float(np.sum(model.log_likelihood(truth, x, y)))
    print(f"MAP log-likelihood: {fit.log_likelihood:.3f} truth: {ll_true:.3f}  ({fit})")

    chains, warmup, draws = (2, 200, 200) if args.quick else (4, 1000, 1000)
    # NUTS from the MAP just found (init=params: no second MAP fit)
    dt = bm.sample(model, x, y, num_chains=chains, num_warmup=warmup, num_samples=draws,
                   seed=args.seed, init=fit.params, relabel=False, progress_bar=False)
    main_ds = main_parameters(dt, model)
    print("posterior summary (free rows; the last expert and the last class are the reference):")
    print(az.summary(main_ds).to_string())
    n_div = int(dt["sample_stats"]["diverging"].sum())
    print(f"divergences: {n_div}" + ("  (--quick: short chains, R-hat above 1.01 is expected)"
                                      if args.quick else ""))

    if args.dim == 1:
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 8), sharex=True,
                                       gridspec_kw={"height_ratios": [3, 2]})
        plot_fit(model, x, y, params=fit.params, idata=dt, ax=ax1, seed=args.seed)
        plot_gates(model, x, params=fit.params, idata=dt, ax=ax2, seed=args.seed)
        grid = np.linspace(x.min(), x.max(), 200)
        true_pred = model.predict(truth, grid[:, None])
        for c in range(3):
            ax1.plot(grid, true_pred.class_probs[:, c], color="k", lw=0.8, ls=":",
                     label="truth" if c == 0 else None)
        ax1.legend(loc="upper left", fontsize=8, ncol=2, framealpha=0.8)
        ax1.set_xlabel("")
    else:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5))
        plot_fit(model, x, y, params=fit.params, ax=ax1, n_grid=150)
        plot_gates(model, x, params=fit.params, ax=ax2, n_grid=150)
    fig.suptitle("MAP curves with 89% posterior bands; dotted: true class probabilities"
                 if args.dim == 1 else "MAP fit", fontsize=11)
    fig.tight_layout()
    path = out / "fit_and_gates.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")

    pc = az.plot_rank(xr.DataTree.from_dict({"posterior": main_ds}),
                      figure_kwargs={"figsize": (11, 7), "layout": "constrained"})
    path = out / "rank.png"
    pc.savefig(path, dpi=90)
    plt.close("all")
    print(f"wrote {path}")
    print(f"done in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
