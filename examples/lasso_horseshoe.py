"""Lasso selection against its Bayesian counterpart, the regularised horseshoe, on the same data.

Simulated sparse softmax-gated Gaussian MoE (K = 2, p = 50, 3 relevant slopes in the gate and in each
expert, n = 400; bm.datasets.simulate_sparse). Left: bm.lasso_path, the slopes nonzero at the
BIC-chosen level of the adaptive second path (the default). Right: bm.sample under
bm.priors.horseshoe on the gate and expert slopes (global scales p0/(p - p0) sigma/sqrt(n), Piironen &
Vehtari 2017; chains started from the MAP under plain slope priors, mapped into the horseshoe's latent
sites), a slope "included" when its 90% credible interval excludes 0. Prints both selections against
the truth, their agreement, and the posterior medians of the irrelevant slopes.

Run: python examples/lasso_horseshoe.py [--quick] [--seed 1] [--out out/lasso_horseshoe]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import numpy as np  # noqa: E402

import bayesmoe as bm  # noqa: E402
from bayesmoe.datasets import selection_rates, simulate_sparse  # noqa: E402


def _align(ec, gc, truth):
    """The expert order that matches the truth's expert slopes best (label switching)."""
    err0 = np.abs(ec - truth["expert_coef"]).sum()
    err1 = np.abs(ec[::-1] - truth["expert_coef"]).sum()
    return (ec, gc) if err0 <= err1 else (ec[::-1], (gc[::-1] - gc[::-1][-1:]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="p = 20, n = 200, short chains (CI)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="out/lasso_horseshoe")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n, p, draws = (200, 20, 200) if args.quick else (400, 50, 500)
    x, y, truth = simulate_sparse(args.seed, n=n, p=p)
    p0 = 3

    t0 = time.perf_counter()
    lasso = bm.lasso_path(bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2), x, y, seed=args.seed,
                          progress_bar=False)
    t_lasso = time.perf_counter() - t0
    priors = {**bm.priors.horseshoe(p0 / (p - p0) * 0.5 / np.sqrt(n), sites=("expert_coef",)),
              **bm.priors.horseshoe(p0 / (p - p0) * 2.0 / np.sqrt(n), sites=("gate_coef",))}
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2, priors=priors)
    t0 = time.perf_counter()
    idata = bm.sample(model, x, y, num_chains=2, num_warmup=draws, num_samples=draws,
                      seed=args.seed, progress_bar=False, posterior_predictive=False)
    t_hs = time.perf_counter() - t0
    post = idata.posterior
    ec = post["expert_coef"].values.reshape(-1, 2, p)
    gf = post["gate_coef_free"].values.reshape(-1, 1, p)  # the free row; the reference row is 0
    gc = np.concatenate([gf, np.zeros_like(gf)], axis=1)
    lo_e, hi_e = np.quantile(ec, [0.05, 0.95], axis=0)
    lo_g, hi_g = np.quantile(gc, [0.05, 0.95], axis=0)
    incl = {"expert_coef": ((lo_e > 0) | (hi_e < 0)).astype(float),
            "gate_coef": ((lo_g > 0) | (hi_g < 0)).astype(float)}
    med_e, med_g = _align(np.median(ec, 0), np.median(gc, 0), truth)
    tp_h, fp_h = selection_rates(incl, truth)
    tp_l, fp_l = selection_rates(lasso.best.params, truth)
    sel_l = np.concatenate([(lasso.best.params["expert_coef"] != 0).ravel(),
                            (lasso.best.params["gate_coef"][:-1] != 0).ravel()])
    sel_h = np.concatenate([incl["expert_coef"].ravel() > 0, incl["gate_coef"][:-1].ravel() > 0])
    same = max(np.mean(sel_l == sel_h),
               np.mean(np.concatenate([(lasso.best.params["expert_coef"][::-1] != 0).ravel(),
                                       sel_l[2 * p:]]) == sel_h))
    rel = np.concatenate([(truth["expert_coef"] != 0).ravel(), (truth["gate_coef"][:-1] != 0).ravel()])
    irr_med = np.abs(np.concatenate([med_e.ravel(), (med_g[:-1]).ravel()])[~rel])
    n_div = int(np.asarray(idata.sample_stats["diverging"]).sum())
    print(f"K = 2, p = {p}, n = {n}, seed {args.seed}")
    print(f"{'method':<28} {'relevant selected':>18} {'irrelevant selected':>20} {'seconds':>8}")
    print(f"{'Lasso path (BIC)':<28} {tp_l:>18.1%} {fp_l:>20.1%} {t_lasso:>8.1f}")
    print(f"{'horseshoe (90% CI excl. 0)':<28} {tp_h:>18.1%} {fp_h:>20.1%} {t_hs:>8.1f}")
    print(f"agreement of the two selections: {same:.1%} of the slopes")
    print(f"horseshoe posterior medians of the irrelevant slopes: max |median| {irr_med.max():.3f}; "
          f"divergences: {n_div}")
    (out / "lasso_horseshoe.json").write_text(json.dumps({
        "n": n, "p": p, "seed": args.seed, "lasso": {"relevant": tp_l, "irrelevant": fp_l, "s": t_lasso},
        "horseshoe": {"relevant": tp_h, "irrelevant": fp_h, "s": t_hs, "max_abs_median_irrelevant":
                      float(irr_med.max()), "divergences": n_div}, "agreement": float(same)}, indent=1))


if __name__ == "__main__":
    main()
