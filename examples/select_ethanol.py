"""How many experts for the ethanol data? NOx against the equivalence ratio E (88 engine runs).

The GLoME model-selection paper (arXiv 2104.02640) fits Gaussian-gated linear experts to these data
for K = 1..12 and calibrates its penalty by the slope heuristic. Here every K is fitted once by
maximum likelihood of p(NOx | E) (EM, ``--n-starts`` starts) and BIC, ICL, AIC, Djump and DDSE choose K
from the same fits; a least-squares polynomial in E (degrees 1..6, numpy) is the baseline BIC.

Run: python examples/select_ethanol.py [--quick] [--kmax 12] [--n-starts 4] [--out out/select_ethanol]
Writes ``selection.json`` (the table printed), ``selection.png`` (the criteria against K) and
``fit.png`` (the data, the experts of the BIC choice and their gates).
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


def polynomial_bic(x: np.ndarray, y: np.ndarray, degree: int) -> float:
    """BIC of a Gaussian least-squares polynomial fit (degree + 2 parameters, ML variance)."""
    resid = y - np.polyval(np.polyfit(x, y, degree), x)
    n = y.size
    loglik = -0.5 * n * (np.log(2 * np.pi * np.mean(resid**2)) + 1)
    return float(-2 * loglik + (degree + 2) * np.log(n))


def make_model(K: int) -> bm.MoE:
    return bm.MoE(bm.gates.Gaussian(), bm.experts.Gaussian(degree=1), K)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="K = 1..4, 2 starts (CI)")
    ap.add_argument("--kmax", type=int, default=12)
    ap.add_argument("--n-starts", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/select_ethanol")
    args = ap.parse_args(argv)
    if args.quick:
        args.kmax, args.n_starts = 4, 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = bm.datasets.ethanol()
    x, y = data[["E"]], data["NOx"]
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sel = bm.select_n_experts(make_model, x, y, range(1, args.kmax + 1), "bic", seed=args.seed,
                                  n_starts=args.n_starts, fit_kwargs={"method": "em"})
    wall = time.perf_counter() - t0
    chosen = {c: (bm.selection.select(sel.fits, c).best if c in ("bic", "icl", "aic") or args.kmax >= 3
                  else None) for c in CRITERIA}
    table = sel.table.to_pandas()
    print(table.round(3).to_string())
    print("chosen K:", chosen)
    poly = {d: polynomial_bic(data["E"].to_numpy(), y.to_numpy(), d) for d in range(1, 7)}
    print("polynomial BIC by degree:", {d: round(v, 2) for d, v in poly.items()})
    print(f"wall {wall:.1f} s")
    (out / "selection.json").write_text(json.dumps(
        {"kmax": args.kmax, "n_starts": args.n_starts, "seed": args.seed, "wall_seconds": wall,
         "chosen": chosen, "polynomial_bic": poly,
         "table": {c: table[c].round(4).tolist() for c in table.columns}}, indent=1))
    bm.plot_selection(sel).savefig(out / "selection.png", dpi=90)
    best = sel.fits[sel.best]
    grid = np.linspace(data["E"].min(), data["E"].max(), 200)[:, None]
    p = {k: np.asarray(v) for k, v in best.params.items()}
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(data["E"], y, s=10, c="k")
    for k in range(sel.best):
        ax.plot(grid[:, 0], p["expert_intercept"][k] + grid @ p["expert_coef"][k], lw=1)
    ax.set(xlabel="equivalence ratio E", ylabel="NOx (micrograms/J)", ylim=(0, 4.5),
           title=f"ethanol: the K = {sel.best} experts chosen by BIC")
    fig.tight_layout()
    fig.savefig(out / "fit.png", dpi=90)
    plt.close("all")
    return sel


if __name__ == "__main__":
    main()
