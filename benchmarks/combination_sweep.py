"""The gate x expert x method sweep of issue 29, as a new user runs it: every combination fitted cold in one
process, with its fit time and log-likelihood (a combination that raises is listed with its error).

3 gates (Softmax, ModifiedSoftmax, Gaussian) x 5 experts (Gaussian degree 1 and 2, StudentT, Poisson and
Categorical with degree 2) x 2 methods (L-BFGS, EM) x d in {1, 2}, on 300 rows of x uniform on (-2, 2)
(y: (sum x)^2 + N(0, 1) for real experts, Poisson(2) counts, uniform labels of 3 classes; one draw per d
and expert, shared by the gates and methods): 60 fits. The last line counts the model-data pairs where
L-BFGS and EM reach the same log-likelihood.
Wall and CPU seconds of each fit are those of a first call (each combination is a new program), so the
table also shows what compiling costs per family pair; the ratio column is each fit's CPU time over the
sweep's median.

Usage:
    python benchmarks/combination_sweep.py [--out out/benchmarks/combination_sweep.json] [--n 300]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("BAYESMOE_COMPILATION_CACHE", "0")  # first calls really compile

import numpy as np  # noqa: E402

import bayesmoe as bm  # noqa: E402


def combinations():
    gates = [bm.gates.Softmax(), bm.gates.ModifiedSoftmax(), bm.gates.Gaussian()]
    experts = [bm.experts.Gaussian(degree=1), bm.experts.Gaussian(degree=2), bm.experts.StudentT(degree=2),
               bm.experts.Poisson(degree=2), bm.experts.Categorical(n_classes=3, degree=2)]
    for d in (1, 2):
        for g in gates:
            for e in experts:
                for method in ("lbfgs", "em"):
                    yield d, g, e, method


def response(expert, x, rng):
    if isinstance(expert, bm.experts.Poisson):
        return rng.poisson(2.0, len(x))
    if isinstance(expert, bm.experts.Categorical):
        return rng.integers(0, 3, len(x))
    return x.sum(1) ** 2 + rng.normal(size=len(x))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--out", default="out/benchmarks/combination_sweep.json")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    xs = {d: rng.uniform(-2, 2, size=(args.n, d)) for d in (1, 2)}
    rows = []
    ys = {}  # one response per (d, expert): the gates and methods fit the same data
    for d, gate, expert, method in combinations():
        y = ys.setdefault((d, repr(expert)), response(expert, xs[d], rng))
        model = bm.MoE(gate, expert, 2)
        t, c = time.perf_counter(), time.process_time()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = bm.fit_mle(model, xs[d], y, method=method, seed=0)
            ll, err = float(fit.log_likelihood), None
            ok = bool(np.isfinite(ll) and all(np.all(np.isfinite(v)) for v in fit.params.values()))
        except Exception as e:  # noqa: BLE001 - the sweep reports every failure
            ll, err, ok = float("nan"), f"{type(e).__name__}: {e}"[:200], False
        rows.append({"d": d, "gate": repr(gate), "expert": repr(expert), "method": method, "ok": ok,
                     "log_likelihood": ll, "wall_s": time.perf_counter() - t,
                     "cpu_s": time.process_time() - c, "error": err})
    med = float(np.median([r["cpu_s"] for r in rows]))
    print(f"{'d':>2} {'gate':36} {'expert':36} {'method':6} {'ok':3} {'loglik':>11} {'wall':>6} "
          f"{'cpu':>6} {'cpu/med':>7}")
    for r in rows:
        print(f"{r['d']:>2} {r['gate'][:36]:36} {r['expert'][:36]:36} {r['method']:6} "
              f"{'yes' if r['ok'] else 'NO':3} {r['log_likelihood']:11.3f} {r['wall_s']:6.2f} "
              f"{r['cpu_s']:6.2f} {r['cpu_s'] / med:7.2f}" + (f"  {r['error']}" if r["error"] else ""))
    n_ok = sum(r["ok"] for r in rows)
    print(f"{n_ok} of {len(rows)} combinations fit")
    best = {}
    for r in rows:
        key = (r["d"], r["gate"], r["expert"])
        best.setdefault(key, {})[r["method"]] = r["log_likelihood"]
    gaps = [abs(v["lbfgs"] - v["em"]) for v in best.values()]
    n_same = sum(g <= 0.01 for g in gaps)
    print(f"L-BFGS and EM reach the same log-likelihood (within 0.01) in {n_same} of {len(gaps)} "
          f"model-data pairs; largest gap {max(gaps):.2f}")
    out = {"n": args.n, "fitted": n_ok, "total": len(rows), "median_cpu_s": med,
           "lbfgs_em_same": n_same, "pairs": len(gaps), "rows": rows}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
