"""First-call latency in fresh processes: cold vs warm persistent compilation cache (issue 12).

Each configuration (n, K, workload) runs in fresh Python subprocesses, twice on the same new temporary
cache directory: the first process starts with an empty cache ("cold"), the second one finds the
first one's compiled programs ("warm"). Each child times its imports, the first call and a second,
identical call in the same process (the reference of an already compiled program); the parent records
the child's total wall time and CPU time (``os.wait4`` rusage: user + system over all threads).

Workloads: ``fit_mle`` with ``method="lbfgs"`` and ``"em"`` (defaults: 8 starts), and a short
``sample`` (2 chains, 300 warmup, 300 draws, ``progress_bar=False``, ``quiet=True``). The model is
a softmax-gated mixture of K linear Gaussian experts on one feature, data simulated with numpy.

Ratios are against baselines of the same run: warm/cold first call, and first call / second call
(warm). When R and flexmix are installed (``Rscript -e 'library(flexmix)'``), flexmix (EM, best of
5 starts, ``concomitant=FLXPmultinom(~x)``) runs on the same data right after each configuration's
bayesmoe processes and the ratio bayesmoe/flexmix is printed; otherwise that is said and skipped.

Usage:
    python benchmarks/cold_start.py                       # full grid: n 150,1e3,1e4; K 2,3; lbfgs,em,sample
    python benchmarks/cold_start.py --ns 1000 --ks 3 --workloads em
    python benchmarks/cold_start.py --out out/benchmarks/cold_start.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WORKLOADS = ("lbfgs", "em", "sample")

# Issue 12's targets, on an idle 2-core machine.
TARGET_WARM_OVER_SECOND = 2.0  # warm-cache first call at n = 1e3 within 2x of the second call
TARGET_COLD_WALL = {"em": 3.0, "lbfgs": 5.0}  # cold-cache first call, n <= 1e4, seconds of wall time

CHILD = r"""
import json, sys, time
t_start, c_start = time.perf_counter(), time.process_time()
import numpy as np
import jax
import bayesmoe as bm
data = np.load(sys.argv[1]); workload = sys.argv[2]; k = int(sys.argv[3])
x, y = data["x"], data["y"]
events = {}
jax.monitoring.register_event_listener(lambda name, **kw: events.__setitem__(name, events.get(name, 0) + 1))
model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(degree=1), n_experts=k)
if workload == "sample":
    run = lambda: bm.sample(model, x, y, num_chains=2, num_warmup=300, num_samples=300, seed=0,
                            progress_bar=False, quiet=True)
else:
    run = lambda: bm.fit_mle(model, x, y, method=workload, seed=0)
_ = bm.fit_mle  # import the workflows (and configure the compilation cache) before timing
t_import, c_import = time.perf_counter() - t_start, time.process_time() - c_start
out = {"import_wall": t_import, "import_cpu": c_import, "cache_dir": jax.config.jax_compilation_cache_dir}
for label in ("first", "second"):
    before = dict(events)
    t0, c0 = time.perf_counter(), time.process_time()
    res = run()
    if workload != "sample":
        jax.block_until_ready(res.params)
    out[label + "_wall"] = time.perf_counter() - t0
    out[label + "_cpu"] = time.process_time() - c0
    p = "/jax/compilation_cache/"
    for key, name in (("_compiles", "compile_requests_use_cache"), ("_cache_hits", "cache_hits")):
        out[label + key] = events.get(p + name, 0) - before.get(p + name, 0)
    if workload != "sample":
        out[label + "_loglik"] = float(res.log_likelihood)
print("RESULT " + json.dumps(out))
"""

FLEXMIX = r"""
suppressMessages(library(flexmix))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1]); k <- as.integer(args[2])
set.seed(0)
t0 <- proc.time()
fit <- stepFlexmix(y ~ x, data = d, k = k, nrep = 5, concomitant = FLXPmultinom(~ x),
                   verbose = FALSE, control = list(iter.max = 500, tol = 1e-7))
t <- proc.time() - t0
cat(sprintf("RESULT {\"fit_wall\": %.4f, \"fit_cpu\": %.4f, \"loglik\": %.6f}\n",
            t[["elapsed"]], t[["user.self"]] + t[["sys.self"]], as.numeric(logLik(fit))))
"""


def simulate(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x (n, 1) uniform on (-2, 2) and y from a softmax-gated mixture of K linear Gaussian experts."""
    rng = np.random.default_rng(seed + 1000 * k + n)
    x = rng.uniform(-2.0, 2.0, size=(n, 1))
    gate_coef = np.linspace(3.0, 0.0, k)  # last expert is the reference
    gate_intercept = np.linspace(-0.5, 0.0, k)
    logits = gate_intercept + x * gate_coef
    prob = np.exp(logits - logits.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    z = (rng.uniform(size=(n, 1)) > np.cumsum(prob, axis=1)).sum(axis=1)
    intercept = np.linspace(1.5, -1.5, k)
    slope = np.linspace(2.0, -1.5, k)
    scale = np.linspace(0.4, 0.8, k)
    y = intercept[z] + slope[z] * x[:, 0] + scale[z] * rng.normal(size=n)
    return x, y


def run_child(cmd: list[str], env: dict[str, str], timeout: float) -> dict:
    """Run ``cmd``; return its ``RESULT {json}`` line plus the process's wall and CPU seconds."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"error": f"timeout after {timeout} s"}
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": (stderr or stdout)[-2000:]}
    line = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT "):])
    out["process_wall"] = wall
    return out


def children_cpu() -> float:
    """User + system CPU seconds of all reaped child processes so far (all their threads)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed_child(cmd: list[str], env: dict[str, str], timeout: float) -> dict:
    """:func:`run_child` plus its CPU seconds: reaped children's rusage, by difference (one at a time)."""
    c0 = children_cpu()
    out = run_child(cmd, env, timeout)
    out["process_cpu"] = children_cpu() - c0
    return out


def have_flexmix() -> bool:
    if shutil.which("Rscript") is None:
        return False
    try:
        return subprocess.run(["Rscript", "-e", "suppressMessages(library(flexmix))"], capture_output=True,
                              timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def child_env(cache_dir: Path) -> dict[str, str]:
    """The caller's environment with bayesmoe's cache moved to ``cache_dir`` and no JAX cache override."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("BAYESMOE_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR")}
    env["BAYESMOE_CACHE_DIR"] = str(cache_dir)
    env.setdefault("MPLBACKEND", "Agg")
    return env


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ns", default="150,1000,10000", help="comma-separated sample sizes")
    ap.add_argument("--ks", default="2,3", help="comma-separated numbers of experts")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="among lbfgs, em, sample")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per child process")
    ap.add_argument("--no-flexmix", action="store_true", help="skip R/flexmix even when installed")
    ap.add_argument("--out", default="out/benchmarks/cold_start.json")
    args = ap.parse_args(argv)
    ns = [int(float(v)) for v in args.ns.split(",")]
    ks = [int(v) for v in args.ks.split(",")]
    workloads = [w.strip() for w in args.workloads.split(",")]
    bad = [w for w in workloads if w not in WORKLOADS]
    if bad:
        ap.error(f"--workloads: unknown {bad}; choose among {list(WORKLOADS)}")

    flexmix = not args.no_flexmix and have_flexmix()
    if not flexmix:
        print("R/flexmix: not run (" + ("--no-flexmix" if args.no_flexmix else
              "Rscript with library(flexmix) not available") + ")")
    root = Path(tempfile.mkdtemp(prefix="bayesmoe_cold_start_"))
    rows = []
    t_total = time.perf_counter()
    try:
        for n in ns:
            for k in ks:
                x, y = simulate(n, k)
                data = root / f"data_n{n}_k{k}.npz"
                np.savez(data, x=x, y=y)
                fm = None
                if flexmix:
                    csv = root / f"data_n{n}_k{k}.csv"
                    np.savetxt(csv, np.column_stack([x[:, 0], y]), delimiter=",", header="x,y", comments="")
                    rscript = root / "flexmix.R"
                    rscript.write_text(FLEXMIX)
                for workload in workloads:
                    cache = root / f"cache_n{n}_k{k}_{workload}"  # empty: the first process is cold
                    env = child_env(cache)
                    cmd = [sys.executable, "-c", CHILD, str(data), workload, str(k)]
                    cold = timed_child(cmd, env, args.timeout)
                    warm = timed_child(cmd, env, args.timeout)
                    if flexmix and fm is None:  # interleaved: right after bayesmoe, same data
                        fm = timed_child(["Rscript", str(rscript), str(csv), str(k)], os.environ.copy(),
                                         args.timeout)
                    row = {"n": n, "K": k, "workload": workload, "cold": cold, "warm": warm, "flexmix": fm}
                    rows.append(row)
                    report_row(row)
                    shutil.rmtree(cache, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    total = time.perf_counter() - t_total

    summary = summarise(rows)
    meta = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "flexmix": flexmix, "total_seconds": total,
            "targets": {"warm_first_over_second_at_n1000": TARGET_WARM_OVER_SECOND,
                        "cold_first_call_wall_s_n_le_1e4": TARGET_COLD_WALL}}
    try:
        import jax

        import bayesmoe
        meta["jax"], meta["bayesmoe"] = jax.__version__, bayesmoe.__version__
    except ImportError:
        pass
    print_table(rows, flexmix)
    print_targets(summary)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows, "targets": summary}, indent=2))
    print(f"\nwrote {out} ({total:.0f} s in all)")


def report_row(row: dict) -> None:
    c, w = row["cold"], row["warm"]
    if "error" in c or "error" in w:
        print(f"n={row['n']} K={row['K']} {row['workload']}: error {c.get('error') or w.get('error')}")
        return
    print(f"n={row['n']:>6} K={row['K']} {row['workload']:>6}: first call cold {c['first_wall']:6.2f} s, "
          f"warm {w['first_wall']:6.2f} s, second {w['second_wall']:6.2f} s; process cpu cold "
          f"{c['process_cpu']:6.1f} s warm {w['process_cpu']:6.1f} s", flush=True)


def print_table(rows: list[dict], flexmix: bool) -> None:
    print("\nFirst call in a fresh process (wall / CPU seconds), cold vs warm compilation cache; second "
          "call in the same (warm) process; whole process (imports included).")
    head = (f"{'n':>6} {'K':>2} {'workload':>8} | {'cold 1st wall':>13} {'cpu':>6} | {'warm 1st wall':>13} "
            f"{'cpu':>6} | {'2nd wall':>8} {'cpu':>6} | {'warm/cold':>9} {'warm/2nd':>8} | "
            f"{'proc cold':>9} {'proc warm':>9} | {'compiles cold/warm(hits)':>24}")
    if flexmix:
        head += f" | {'flexmix':>7} {'cold/fm':>7} {'warm/fm':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        c, w = r["cold"], r["warm"]
        if "error" in c or "error" in w:
            print(f"{r['n']:>6} {r['K']:>2} {r['workload']:>8} | error")
            continue
        line = (f"{r['n']:>6} {r['K']:>2} {r['workload']:>8} | "
                f"{c['first_wall']:13.2f} {c['first_cpu']:6.2f} | "
                f"{w['first_wall']:13.2f} {w['first_cpu']:6.2f} | "
                f"{w['second_wall']:8.2f} {w['second_cpu']:6.2f} | "
                f"{w['first_wall'] / c['first_wall']:9.2f} {w['first_wall'] / w['second_wall']:8.1f} | "
                f"{c['process_wall']:9.2f} {w['process_wall']:9.2f} | "
                f"{c['first_compiles']:>11}/{w['first_compiles']}({w['first_cache_hits']})")
        fm = r.get("flexmix")
        if flexmix and fm and "error" not in fm:
            line += (f" | {fm['fit_wall']:7.2f} {c['first_wall'] / fm['fit_wall']:7.1f} "
                     f"{w['first_wall'] / fm['fit_wall']:7.1f}")
        print(line)


def summarise(rows: list[dict]) -> list[dict]:
    """Each issue-12 target, per row it applies to: the measured value and whether it holds."""
    out = []
    for r in rows:
        c, w = r["cold"], r["warm"]
        if "error" in c or "error" in w:
            continue
        if r["n"] == 1000:
            ratio = w["first_wall"] / w["second_wall"]
            out.append({"target": "warm first call within 2x of the second call (n = 1e3)", "n": r["n"],
                        "K": r["K"], "workload": r["workload"], "value": ratio,
                        "holds": ratio <= TARGET_WARM_OVER_SECOND})
        if r["n"] <= 10_000 and r["workload"] in TARGET_COLD_WALL:
            limit = TARGET_COLD_WALL[r["workload"]]
            out.append({"target": f"cold first call under {limit:g} s wall (n <= 1e4)", "n": r["n"],
                        "K": r["K"], "workload": r["workload"], "value": c["first_wall"],
                        "holds": c["first_wall"] < limit})
    return out


def print_targets(summary: list[dict]) -> None:
    print("\nIssue 12 targets (idle 2-core machine in the issue; see the load average in the JSON):")
    for s in summary:
        print(f"  {s['target']:<58} n={s['n']:>6} K={s['K']} {s['workload']:>6}: {s['value']:6.2f} "
              f"{'holds' if s['holds'] else 'MISSED'}")


if __name__ == "__main__":
    main()
