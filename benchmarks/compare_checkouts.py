"""One fit timed in fresh subprocesses of two checkouts of bayesmoe, interleaved, CPU and wall.

Used to check that a refactoring is no slower than the commit before it (issue 7: fit_scaling at n = 1e5).
Each run imports bayesmoe from the given checkout (``PYTHONPATH``), fits the K = 3, d = 2 softmax-gated
Gaussian MoE of ``fit_scaling.py`` with ``fit_mle`` and reports process CPU seconds (all threads, including
compilation: the persistent cache is off) and wall seconds. Runs alternate old/new so that load on a shared
machine hits both alike; the table gives medians and the new/old ratio.

Usage: python benchmarks/compare_checkouts.py OLD_DIR NEW_DIR [--n 100000] [--method lbfgs] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import jax, numpy as np
import bayesmoe as bm
sys.path.insert(0, {bench!r})
from fit_scaling import truth
n, method = {n}, {method!r}
model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), n_experts=3)
x = np.random.default_rng(0).normal(size=(n, 2))
y = np.asarray(model.simulate(jax.random.key(n), truth(), x).y)
c0, t0 = time.process_time(), time.perf_counter()
fit = bm.fit_mle(model, x, y, method=method, n_starts=8, seed=0)
print(json.dumps({{"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - t0,
                  "n_steps": int(fit.n_steps), "log_likelihood": float(fit.log_likelihood),
                  "bayesmoe": bm.__file__}}))
"""


def run_one(checkout: Path, n: int, method: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(checkout), BAYESMOE_COMPILATION_CACHE="0",
               JAX_ENABLE_COMPILATION_CACHE="false")
    code = CHILD.format(n=n, method=method, bench=str(Path(__file__).resolve().parent))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(checkout), capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--method", default="lbfgs")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="out/benchmarks/compare_checkouts.json")
    args = ap.parse_args(argv)
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    for i in range(args.repeats):
        for tag in (("old", "new") if i % 2 == 0 else ("new", "old")):
            r = run_one(getattr(args, tag).resolve(), args.n, args.method)
            runs[tag].append(r)
            print(f"{tag}: cpu {r['cpu_s']:.1f} s  wall {r['wall_s']:.1f} s  steps {r['n_steps']}  "
                  f"ll {r['log_likelihood']:.2f}", flush=True)
    med = {t: {k: statistics.median(r[k] for r in rs) for k in ("cpu_s", "wall_s", "n_steps")}
           for t, rs in runs.items()}
    print("\n| checkout | CPU s | wall s | steps | log-lik |\n|---|---|---|---|---|")
    for t in ("old", "new"):
        print(f"| {t} | {med[t]['cpu_s']:.1f} | {med[t]['wall_s']:.1f} | {med[t]['n_steps']:.0f} | "
              f"{runs[t][0]['log_likelihood']:.2f} |")
    ratio = {k: med["new"][k] / med["old"][k] for k in ("cpu_s", "wall_s")}
    print(f"new/old: CPU {ratio['cpu_s']:.2f}, wall {ratio['wall_s']:.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
                               "median": med, "ratio_new_over_old": ratio}, indent=2))


if __name__ == "__main__":
    main()
