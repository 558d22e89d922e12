"""One fit_mle with its rows sharded over 1, 2, 4 forced host devices (issue 12).

Each device count runs in a fresh subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=D``
(the device count is fixed when JAX starts). In each, the K = 3, d = 2 softmax-gated Gaussian MoE is fitted
by ``fit_mle`` (EM and L-BFGS) twice with ``devices=jax.devices()``: the first call includes compilation,
the second is the compiled program's run. Wall and CPU seconds (process CPU, all threads) are printed,
with ratios to the 1-device run of the same process kind, and the fitted log-likelihoods (equal across
device counts to float tolerance).

Forced host devices are slices of the same CPU: on a 2-core machine 4 "devices" share 2 cores, so this
measures the overhead and correctness of sharding, not a speed-up; real speed-ups need real devices
(several GPUs, or several hosts with ``jax.distributed.initialize()``).

Usage: python benchmarks/sharded_fit.py [--n 100000] [--devices 1,2,4] [--methods em,lbfgs]
       [--out out/benchmarks/sharded_fit.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
import numpy as np, jax
import bayesmoe as bm

n, methods = int(sys.argv[1]), sys.argv[2].split(",")
truth = {"gate_intercept": np.array([0.5, -0.5, 0.0]),
         "gate_coef": np.array([[2.0, -1.0], [-1.5, 1.5], [0.0, 0.0]]),
         "expert_intercept": np.array([1.0, -2.0, 3.0]),
         "expert_coef": np.array([[1.0, 2.0], [-1.0, 0.5], [0.0, -2.0]]),
         "expert_scale": np.array([0.5, 0.7, 0.4])}
model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), n_experts=3)
x = np.random.default_rng(0).normal(size=(n, 2))
y = np.asarray(model.simulate(jax.random.key(1), truth, x).y)
out = {"devices": jax.device_count()}

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

for method in methods:
    row = {}
    for call in ("first", "second"):
        t0, c0 = time.perf_counter(), cpu()
        fit = bm.fit_mle(model, x, y, method=method, seed=0, devices=jax.devices())
        row[call] = {"wall_s": time.perf_counter() - t0, "cpu_s": cpu() - c0}
    row["log_likelihood"] = fit.log_likelihood
    out[method] = row
out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT" + json.dumps(out))
"""


def run(devices: int, n: int, methods: str) -> dict:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "BAYESMOE_COMPILATION_CACHE": "0", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(n), methods], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    line = next(v for v in proc.stdout.splitlines() if v.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--devices", default="1,2,4")
    ap.add_argument("--methods", default="em,lbfgs")
    ap.add_argument("--out", default="out/benchmarks/sharded_fit.json")
    args = ap.parse_args(argv)
    results = [run(int(d), args.n, args.methods) for d in args.devices.split(",")]
    base = results[0]
    print(f"n = {args.n}, K = 3, d = 2 (forced host devices share the machine's cores)")
    print("| devices | method | 1st call wall (CPU) | 2nd call wall (CPU) | 2nd / 1-device 2nd | "
          "log-likelihood |")
    print("|---|---|---|---|---|---|")
    for r in results:
        for m in args.methods.split(","):
            f, s = r[m]["first"], r[m]["second"]
            ratio = s["wall_s"] / base[m]["second"]["wall_s"]
            print(f"| {r['devices']} | {m} | {f['wall_s']:.2f} ({f['cpu_s']:.1f}) | "
                  f"{s['wall_s']:.2f} ({s['cpu_s']:.1f}) | {ratio:.2f} | {r[m]['log_likelihood']:.4f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"n": args.n, "results": results}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
