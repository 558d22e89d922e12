"""How many experts? BIC, ICL, AIC and the slope heuristics on the GLoME simulation (arXiv 2104.02640).

The well-specified GLoME model has K* = 2 Gaussian gates, pi = (1/2, 1/2), c = (0.2, 0.8),
Gamma = (0.1, 0.15) (variances), and linear Gaussian experts y = b_k + A_k x + N(0, 0.3^2) with
b = (2, 0), A = (-5, 0.1). For each of ``--reps`` replications of n observations we fit the conditional
model p(y | x) by maximum likelihood for K = 1..Kmax and count which K each criterion picks
(the paper reports BIC choosing K = 2 for n = 2000). The fits of every K are shared by all criteria.

Run: python examples/select_glome.py [--quick] [--reps 20] [--n 2000] [--kmax 8] [--out out/select_glome]
Writes ``counts.json`` (the table printed) and ``selection.png`` (the criteria of the first replication).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import bayesmoe as bm  # noqa: E402

CRITERIA = ("bic", "icl", "aic", "djump", "ddse")


def simulate(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One draw of the well-specified GLoME model (K* = 2)."""
    rng = np.random.default_rng(seed)
    z = rng.integers(0, 2, n)
    x = rng.normal(np.array([0.2, 0.8])[z], np.sqrt(np.array([0.1, 0.15]))[z])
    y = np.array([2.0, 0.0])[z] + np.array([-5.0, 0.1])[z] * x + 0.3 * rng.normal(size=n)
    return x, y


def make_model(K: int) -> bm.MoE:
    return bm.MoE(bm.gates.Gaussian(), bm.experts.Gaussian(), K)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (CI): n 400, 3 replications, K <= 4")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--kmax", type=int, default=8)
    ap.add_argument("--n-starts", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/select_glome")
    args = ap.parse_args(argv)
    if args.quick:
        args.reps, args.n, args.kmax = 3, 400, 4
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ks = list(range(1, args.kmax + 1))
    counts = {c: {k: 0 for k in ks} for c in CRITERIA}
    t0 = time.time()
    first = None
    for r in range(args.reps):
        x, y = simulate(args.n, args.seed + r)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FitWarnings of over-fitted K are expected here
            sel = bm.select_n_experts(make_model, x, y, ks, "bic", seed=args.seed, n_starts=args.n_starts,
                                      progress_bar=False)
        first = first or sel
        for c in CRITERIA:
            if c in ("djump", "ddse") and len(ks) < 3:
                continue
            counts[c][bm.selection.select(sel.fits, c).best] += 1
        print(f"replication {r + 1}/{args.reps}: BIC picks K = {sel.best} "
              f"({time.time() - t0:.0f} s so far)", flush=True)
    print(f"\nK chosen over {args.reps} replications (n = {args.n}, K = 1..{args.kmax}, K* = 2):")
    print("criterion " + " ".join(f"K={k:<3d}" for k in ks))
    for c in CRITERIA:
        print(f"{c:9s} " + " ".join(f"{counts[c][k]:<5d}" for k in ks))
    print(f"BIC selects K = 2 in {counts['bic'][2]} of {args.reps} replications")
    print(f"wall time {time.time() - t0:.1f} s")
    (out / "counts.json").write_text(json.dumps({"n": args.n, "reps": args.reps, "k": ks, "counts": {
        c: {str(k): v for k, v in counts[c].items()} for c in CRITERIA}}, indent=1))
    sel = bm.selection.select(first.fits, "djump")
    fig = bm.plot_selection(sel)
    fig.savefig(out / "selection.png", dpi=90)
    plt.close(fig)
    return counts


if __name__ == "__main__":
    main()
