"""fit_mle wall time vs n (K = 3, d = 2, softmax gate, Gaussian experts), L-BFGS and EM.

Prints a table and writes JSON. Wall time includes compilation (caches are cleared before each fit). The
baseline is the same fit on n = 1e3 in this process: time per observation is reported as a ratio
to it. R's flexmix (EM, best of 5 starts) on such data took 2.7 s at n = 1e4, 45 s at n = 1e5 and
367 s at n = 1e6 on the same kind of machine (issue 3); those figures are quoted, not re-run.

With ``--big 10000000`` (issue 12) the EM fit also runs on that many rows, alone in a fresh
subprocess, reporting wall and CPU seconds (first call, compilation included) and the process's peak
resident memory (``ru_maxrss``; the data themselves take 12 bytes per row in float32, plus the float64
numpy copies the script simulates).

Usage: python benchmarks/fit_scaling.py [--max-n 1000000] [--big 10000000] [--big-only]
       [--out out/benchmarks/fit_scaling.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

import bayesmoe as bm

FLEXMIX_SECONDS = {10_000: 2.7, 100_000: 45.0, 1_000_000: 367.0}
ROOT = Path(__file__).resolve().parents[1]

BIG_CHILD = r"""
import json, resource, sys, time
import numpy as np, jax
sys.path.insert(0, sys.argv[3])
import bayesmoe as bm
from fit_scaling import truth
n, method = int(sys.argv[1]), sys.argv[2]
model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), n_experts=3)
x = np.random.default_rng(0).normal(size=(n, 2)).astype(np.float32)
y = np.asarray(model.simulate(jax.random.key(n), truth(), x).y)
rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
t0, c0 = time.perf_counter(), cpu()
fit = bm.fit_mle(model, x, y, method=method, seed=0)
print("RESULT" + json.dumps({"n": n, "method": method, "wall_s": time.perf_counter() - t0,
                             "cpu_s": cpu() - c0, "log_likelihood": fit.log_likelihood,
                             "n_steps": fit.n_steps, "converged": fit.converged,
                             "rss_after_data_mb": rss_data,
                             "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def big_fit(n: int, method: str) -> dict:
    """One fit on n rows in a fresh process (its own peak memory); returns the child's JSON."""
    env = {**os.environ, "BAYESMOE_COMPILATION_CACHE": "0", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", BIG_CHILD, str(n), method, str(ROOT / "benchmarks")],
                          env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    line = next(v for v in proc.stdout.splitlines() if v.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def truth():
    return {"gate_intercept": np.array([0.5, -0.5, 0.0]),
            "gate_coef": np.array([[2.0, -1.0], [-1.5, 1.5], [0.0, 0.0]]),
            "expert_intercept": np.array([1.0, -2.0, 3.0]),
            "expert_coef": np.array([[1.0, 2.0], [-1.0, 0.5], [0.0, -2.0]]),
            "expert_scale": np.array([0.5, 0.7, 0.4])}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--max-n", type=int, default=1_000_000)
    ap.add_argument("--methods", default="lbfgs,em")
    ap.add_argument("--n-starts", type=int, default=8)
    ap.add_argument("--big", type=int, default=0, help="also fit on this many rows (fresh subprocess)")
    ap.add_argument("--big-methods", default="em", help="methods of the --big fits (e.g. em,lbfgs)")
    ap.add_argument("--big-only", action="store_true", help="only the --big fit")
    ap.add_argument("--out", default="out/benchmarks/fit_scaling.json")
    args = ap.parse_args(argv)
    big = None
    if args.big:
        big = [big_fit(args.big, m) for m in args.big_methods.split(",")]
        print("\n| n | method | wall (s) | CPU (s) | peak RSS (MB) | RSS after data (MB) | "
              "steps on all rows | log-likelihood |\n|---|---|---|---|---|---|---|---|")
        for b in big:
            print(f"| {b['n']} | {b['method']} | {b['wall_s']:.1f} | {b['cpu_s']:.1f} | "
                  f"{b['peak_rss_mb']:.0f} | {b['rss_after_data_mb']:.0f} | {b['n_steps']} | "
                  f"{b['log_likelihood']:.1f} |")
        if args.big_only:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"big": big}, indent=2))
            return
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), n_experts=3)
    rows = []
    ns = [n for n in (1_000, 10_000, 100_000, 1_000_000) if n <= args.max_n]
    rng = np.random.default_rng(0)
    for n in ns:
        x = rng.normal(size=(n, 2))
        y = np.asarray(model.simulate(jax.random.key(n), truth(), x).y)
        ll_true = float(model.log_likelihood(truth(), x, y).sum())
        for method in args.methods.split(","):
            jax.clear_caches()  # every fit pays its own compilation
            t0 = time.perf_counter()
            fit = bm.fit_mle(model, x, y, method=method, n_starts=args.n_starts, seed=0)
            wall = time.perf_counter() - t0
            rows.append({"n": n, "method": method, "wall_s": wall, "us_per_obs": 1e6 * wall / n,
                         "log_likelihood": fit.log_likelihood, "ll_truth": ll_true,
                         "n_steps": fit.n_steps, "converged": fit.converged,
                         "flexmix_s": FLEXMIX_SECONDS.get(n),
                         "speedup_vs_flexmix": (FLEXMIX_SECONDS[n] / wall) if n in FLEXMIX_SECONDS else None})
            r = rows[-1]
            print(f"n={n:>8} {method:>6}: {wall:7.2f} s  {r['us_per_obs']:8.2f} us/obs  "
                  f"ll={fit.log_likelihood:.2f} (truth {ll_true:.2f})  steps={fit.n_steps}"
                  + (f"  vs flexmix x{r['speedup_vs_flexmix']:.1f}" if r["speedup_vs_flexmix"] else ""))
    base = {r["method"]: r["us_per_obs"] for r in rows if r["n"] == ns[0]}
    for r in rows:
        r["us_per_obs_ratio_vs_n1e3"] = r["us_per_obs"] / base[r["method"]]
    print("\n| n | method | wall (s) | us/obs | ratio to n=1e3 | log-lik - truth | flexmix (s) | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        fx = f"{r['flexmix_s']:.1f}" if r["flexmix_s"] else "-"
        su = f"{r['speedup_vs_flexmix']:.1f}x" if r["speedup_vs_flexmix"] else "-"
        gap = r["log_likelihood"] - r["ll_truth"]
        print(f"| {r['n']} | {r['method']} | {r['wall_s']:.2f} | {r['us_per_obs']:.2f} | "
              f"{r['us_per_obs_ratio_vs_n1e3']:.3f} | {gap:.2f} | {fx} | {su} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "big": big, "devices": str(jax.devices())}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
