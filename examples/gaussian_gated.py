"""Gaussian-gated mixture of experts (GLLiM) of arXiv 2305.07572, model 1: fit p(x, y) three ways.

The true model has K = 3 Gaussian gates g_k(x) proportional to pi_k N(x | c_k, Gamma_k) and linear
Gaussian experts; ``joint=True`` also models the inputs, log p(x, y) = log sum_k pi_k N(x | c_k, Gamma_k)
N(y | b_k + a_k x, nu_k). We draw (x, y) from it, fit the maximum likelihood by L-BFGS (and by EM when
available), then NUTS started at the MLE; we print a posterior summary and PSIS-LOO, and plot the fit,
the gates and the traces.

Run: python examples/gaussian_gated.py [--quick] [--out out/gaussian_gated] [--seed 0]
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

import bayesmoe as bm  # noqa: E402
from bayesmoe.plots import plot_fit, plot_gates  # noqa: E402

MAIN = ["gate_weight", "gate_loc", "gate_scale", "expert_intercept", "expert_coef", "expert_scale"]


def _fit_em(model, x, y, seed):
    """MLE by EM, or None (with the reason printed) when bayesmoe's EM is not available."""
    try:
        return bm.fit_mle(model, x, y, method="em", seed=seed)
    except Exception as err:  # noqa: BLE001 -- optional comparison only
        print(f"EM not available here ({type(err).__name__}: {err}); skipping the EM comparison")
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (CI)")
    ap.add_argument("--out", default="out/gaussian_gated")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    model, truth = bm.datasets.gaussian_gated(1)
    n = 500 if args.quick else 2000
    x, y, z = bm.datasets.simulate_dataset(jax.random.key(args.seed), model, truth, n)
    print(f"simulated n={n} from {model}; expert counts {np.bincount(z, minlength=3)}")
    ll_true = float(np.sum(model.log_likelihood(truth, x, y)))

    mle = bm.fit_mle(model, x, y, method="lbfgs", seed=args.seed)
    print(f"MLE (lbfgs) log-likelihood: {mle.log_likelihood:.3f} truth: {ll_true:.3f}  ({mle})")
    em = _fit_em(model, x, y, args.seed)
    if em is not None:
        print(f"MLE (em)    log-likelihood: {em.log_likelihood:.3f} truth: {ll_true:.3f}  ({em}); "
              f"lbfgs - em = {mle.log_likelihood - em.log_likelihood:+.4f}")

    fit = mle  # NUTS starts at the MLE (init=params: no extra MAP fit, which would cost ~15 s)
    chains, warmup, draws = (2, 200, 200) if args.quick else (4, 1000, 1000)
    dt = bm.sample(model, x, y, num_chains=chains, num_warmup=warmup, num_samples=draws,
                   seed=args.seed, init=fit.params, relabel=False, progress_bar=False)
    print("posterior summary (expert labels as found by the MLE; not relabelled):")
    print(az.summary(dt, var_names=MAIN).to_string())
    print(f"divergences: {int(dt['sample_stats']['diverging'].sum())}")
    print(az.loo(dt))

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 8), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 2]})
    plot_fit(model, x, y, params=fit.params, idata=dt, ax=ax1, seed=args.seed)
    plot_gates(model, x, params=fit.params, idata=dt, ax=ax2, seed=args.seed)
    grid = np.linspace(x.min(), x.max(), 200)
    ax1.plot(grid, np.asarray(model.predict(truth, grid[:, None]).mean), color="m", lw=1, ls=":",
             label="true mixture mean")
    ax1.legend(loc="best", fontsize=8, framealpha=0.8)
    ax1.set_xlabel("")
    fig.suptitle("GLLiM model 1: MLE curves with 89% posterior bands; dotted: the truth", fontsize=11)
    fig.tight_layout()
    path = out / "fit_and_gates.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")

    pc = az.plot_trace_dist(dt, var_names=MAIN, figure_kwargs={"figsize": (10, 11), "layout": "constrained"})
    path = out / "trace.png"
    pc.savefig(path, dpi=80)
    plt.close("all")
    print(f"wrote {path}")
    print(f"done in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
