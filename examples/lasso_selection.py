"""Variable selection with the Lasso MoE: the lambda path on simulated sparse data, over several seeds.

A softmax-gated Gaussian MoE with K = 2 experts and p = 50 features, of which 3 act in the gate and 3
in each expert (bm.lasso.simulate_sparse; n = 400, noise sd 0.5). For each seed we run
bm.lasso_path (30 levels, relaxed BIC) and report the share of relevant slopes selected (nonzero) and
the share of irrelevant ones selected, with the path's figure for the first seed.

Run: python examples/lasso_selection.py [--quick] [--seeds 10] [--out out/lasso_selection]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402

import bayesmoe as bm  # noqa: E402
from bayesmoe.lasso import selection_rates, simulate_sparse  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="two seeds, n = 200, p = 20 (CI)")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--criterion", default="bic")
    ap.add_argument("--out", default="out/lasso_selection")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n, p, seeds = (200, 20, 2) if args.quick else (400, 50, args.seeds)
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2)
    rows = []
    print(f"K = 2, p = {p}, n = {n}, 3 relevant slopes per expert and in the gate; criterion "
          f"{args.criterion}")
    print(f"{'seed':>4} {'lambda_max':>10} {'lambda':>8} {'nonzero':>7} {'relevant':>9} "
          f"{'irrelevant':>10} {'seconds':>8}")
    for seed in range(seeds):
        x, y, truth = simulate_sparse(seed, n=n, p=p)
        t0 = time.perf_counter()
        path = bm.lasso_path(model, x, y, seed=seed, criterion=args.criterion, progress_bar=False)
        sec = time.perf_counter() - t0
        tp, fp = selection_rates(path.best.params, truth)
        lam = float(path.lambdas[path.best_index])
        rows.append({"seed": seed, "lambda_max": path.lambda_max, "lambda": lam,
                     "nonzero": path.best.extra["n_nonzero_slopes"], "relevant_selected": tp,
                     "irrelevant_selected": fp, "seconds": sec})
        print(f"{seed:>4} {path.lambda_max:>10.4f} {lam:>8.4f} {rows[-1]['nonzero']:>7} {tp:>9.1%} "
              f"{fp:>10.1%} {sec:>8.1f}", flush=True)
        if seed == 0:
            bm.plot_lasso_path(path).savefig(out / "lasso_path.png", dpi=110)
    tp = np.array([r["relevant_selected"] for r in rows])
    fp = np.array([r["irrelevant_selected"] for r in rows])
    ok = (tp >= 0.9) & (fp <= 0.1)
    print(f"mean: relevant selected {tp.mean():.1%}, irrelevant selected {fp.mean():.1%}; "
          f"both targets (>= 90%, <= 10%) met on {ok.sum()} of {len(rows)} seeds")
    (out / "lasso_selection.json").write_text(json.dumps({"n": n, "p": p, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
