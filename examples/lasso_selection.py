"""Variable selection with the Lasso MoE: the lambda path on simulated sparse data, over several seeds.

A softmax-gated Gaussian MoE with K = 2 experts and p = 50 features, of which 3 act in the gate and 3
in each expert (bm.datasets.simulate_sparse; n = 400, noise sd 0.5). For each seed we run
bm.lasso_path once (default: the plain Lasso path, then the adaptive Lasso path with weights from the
relaxed refit at the plain path's BIC choice; 30 levels each) and report, for each stage and criterion
(BIC, and the extended BIC of Chen & Chen 2008 with gamma = 0.5 and 1), the number of nonzero slopes at
the chosen level, the share of relevant slopes selected (nonzero) and the share of irrelevant ones
selected. The criteria are read from the same paths (they only choose a level). The adaptive path's
figure is saved for the first seed.

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
from bayesmoe.datasets import selection_rates, simulate_sparse  # noqa: E402

#: (label, gamma of EBIC; 0 is BIC)
CRITERIA = (("bic", 0.0), ("ebic0.5", 0.5), ("ebic1", 1.0))
#: (label, the path of a stage)
STAGES = (("plain", lambda path: path.first_stage), ("adaptive", lambda path: path))


def rates_by_criterion(path, truth) -> dict:
    """For each criterion: (chosen index, level, nonzero slopes, relevant selected, irrelevant selected).
    EBIC_gamma = BIC + gamma (EBIC_1 - BIC), both read from the path's dataset (computed with gamma 1)."""
    ds = path.dataset
    bic, ebic1 = np.asarray(ds["bic"]), np.asarray(ds["ebic"])
    out = {}
    for label, g in CRITERIA:
        i = int(np.argmin(bic + g * (ebic1 - bic)))
        params = {k: np.asarray(ds[k])[i] for k in ("expert_coef", "gate_coef")}
        tp, fp = selection_rates(params, truth)
        out[label] = (i, float(path.lambdas[i]), int(ds["n_nonzero"][i]), tp, fp)
    return out


def all_rates(path, truth) -> dict:
    """:func:`rates_by_criterion` of both stages, keyed ``"stage/criterion"``."""
    return {f"{st}/{c}": r for st, get in STAGES for c, r in rates_by_criterion(get(path), truth).items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="two seeds, n = 200, p = 20 (CI)")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--out", default="out/lasso_selection")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n, p, seeds = (200, 20, 2) if args.quick else (400, 50, args.seeds)
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2)
    rows = []
    print(f"K = 2, p = {p}, n = {n}, 3 relevant slopes per expert and in the gate")
    labels = [f"{st}/{c}" for st, _ in STAGES for c, _ in CRITERIA]
    print("columns per stage/criterion: nonzero slopes, relevant selected, irrelevant selected")
    print(f"{'seed':>4} " + " ".join(f"{lb:>18}" for lb in labels) + f" {'seconds':>8}")
    for seed in range(seeds):
        x, y, truth = simulate_sparse(seed, n=n, p=p)
        t0 = time.perf_counter()
        path = bm.lasso_path(model, x, y, seed=seed, progress_bar=False)
        sec = time.perf_counter() - t0
        res = all_rates(path, truth)
        rows.append({"seed": seed, "lambda_max": path.lambda_max, "seconds": sec,
                     **{c: {"lambda": r[1], "nonzero": r[2], "relevant_selected": r[3],
                            "irrelevant_selected": r[4]} for c, r in res.items()}})
        cols = " ".join(f"{r[2]:>5} {r[3]:>5.0%} {r[4]:>6.1%}" for r in res.values())
        print(f"{seed:>4} {cols} {sec:>8.1f}", flush=True)
        if seed == 0:
            bm.plot_lasso_path(path).savefig(out / "lasso_path.png", dpi=110)
    for c in labels:
        tp = np.array([r[c]["relevant_selected"] for r in rows])
        fp = np.array([r[c]["irrelevant_selected"] for r in rows])
        ok = (tp >= 0.9) & (fp <= 0.1)
        print(f"{c}: mean relevant selected {tp.mean():.1%}, irrelevant selected {fp.mean():.1%} "
              f"(max {fp.max():.1%}); both targets (>= 90%, <= 10%) met on {ok.sum()} of {len(rows)} seeds")
    (out / "lasso_selection.json").write_text(json.dumps({"n": n, "p": p, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
