"""Quickstart: simulate -> fit_map -> sample (NUTS) -> summary -> plots.

A 3-expert softmax-gated Gaussian mixture of experts on one input: we draw data from known
parameters, find the MAP by multi-start L-BFGS, run NUTS from it (chains in parallel on the CPU's
cores), print ArviZ's summary and PSIS-LOO, and write figures of the fit, the gates and the traces.

Run: python examples/quickstart.py [--quick] [--out out/quickstart] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

# chains in parallel on CPU devices: must be set before JAX starts (an existing setting is kept)
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import arviz as az  # noqa: E402
import jax  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import bayesmoe as bm  # noqa: E402
from bayesmoe.plots import plot_fit, plot_gates  # noqa: E402


def true_model():
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(degree=1), n_experts=3)
    params = {
        "gate_intercept": np.array([-2.0, 2.0, 0.0]),
        "gate_coef": np.array([[-4.0], [0.0], [3.0]]),
        "expert_intercept": np.array([2.0, -1.0, 5.0]),
        "expert_coef": np.array([[1.5], [-0.5], [-2.0]]),
        "expert_scale": np.array([0.4, 0.3, 0.5]),
    }
    return model, params


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (CI)")
    ap.add_argument("--out", default="out/quickstart")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    # 1. simulate
    model, truth = true_model()
    n = 400 if args.quick else 1500
    rng = np.random.default_rng(args.seed)
    x = rng.uniform(-3, 3, size=(n, 1))
    y, z = model.simulate(jax.random.key(args.seed), truth, x)
    y = np.asarray(y)
    ll_true = float(model.log_likelihood(truth, x, y).sum())
    print(f"simulated n={n} from {model}; expert counts {np.bincount(np.asarray(z), minlength=3)}")

    # 2. MAP (multi-start L-BFGS)
    fit = bm.fit_map(model, x, y, seed=args.seed)
    print(fit)
    print(f"MAP log-likelihood: {fit.log_likelihood:.3f} truth: {ll_true:.3f}")

    # 3. NUTS from the MAP, relabelled
    draws = (300, 300) if args.quick else (1000, 1000)
    dt = bm.sample(model, x, y, seed=args.seed, init=fit.params, num_warmup=draws[0],
                   num_samples=draws[1], num_chains=4, progress_bar=not args.quick)

    # 4. summary: the posterior holds free parameters only (the softmax gate's last row is the fixed
    #    reference: gate_*_free has dim expert_free; model.complete_params(...) adds the zero row back)
    print(az.summary(dt))
    print(f"divergences: {int(dt.sample_stats['diverging'].sum())}")
    print(az.loo(dt))

    # 5. plots
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 8), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1.4]}, constrained_layout=True)
    plot_fit(model, x, y, idata=dt, ax=ax1)
    plot_gates(model, x, idata=dt, ax=ax2)
    ax1.set_title("3-expert softmax-gated MoE: posterior medians and 89% bands")
    path = out / "fit_and_gates.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
    pc = az.plot_trace(dt, var_names=["expert_coef", "expert_scale"])
    pc.savefig(out / "trace.png")
    print(f"wrote {out / 'trace.png'}")
    print(f"done in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
