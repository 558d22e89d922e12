"""NUTS efficiency: minimum bulk ESS per second, with and without compilation.

On the reference data (n = 1000, K = 2) and on simulated n = 2000, K = 3. The ratio is against Stan's
run on the reference data quoted in shared/reference/README.md (3264 ESS in 27 s of sampling plus
~30 s of compilation); Stan is not re-run here.

Usage: python benchmarks/nuts_ess.py [--out out/benchmarks/nuts_ess.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import arviz as az  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import bayesmoe as bm  # noqa: E402

REF = Path(__file__).resolve().parents[2] / "shared" / "reference" / "sgmoe_k2_n1000.csv"
STAN = {"ess": 3264.0, "sampling_s": 27.0, "compile_s": 30.0}


def min_bulk_ess(dt) -> float:
    vals = []
    for _, da in dt.posterior.to_dataset().data_vars.items():  # free parameters only (no reference rows)
        vals.append(np.nanmin(np.asarray(az.ess(da, method="bulk"))))
    return float(min(vals))


def run(name, model, x, y, seed=0):
    t0 = time.perf_counter()
    fit = bm.fit_map(model, x, y, seed=seed)
    t_map = time.perf_counter() - t0
    t1 = time.perf_counter()
    dt = bm.sample(model, x, y, seed=seed, init=fit.params, progress_bar=False)
    t_total = time.perf_counter() - t1
    # a second run of the same shapes measures sampling without compilation
    t2 = time.perf_counter()
    dt2 = bm.sample(model, x, y, seed=seed + 1, init=fit.params, progress_bar=False)
    t_warm = time.perf_counter() - t2
    ess = min_bulk_ess(dt)
    ess2 = min_bulk_ess(dt2)
    row = {"case": name, "map_s": t_map, "nuts_with_compile_s": t_total, "nuts_second_run_s": t_warm,
           "min_bulk_ess": ess, "min_bulk_ess_second": ess2,
           "ess_per_s_incl_compile": ess / (t_total + t_map),
           "ess_per_s_excl_compile": ess2 / t_warm,
           "divergences": int(dt.sample_stats["diverging"].sum()),
           "chain_method": dt.attrs.get("bayesmoe_chain_method")}
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="out/benchmarks/nuts_ess.json")
    args = ap.parse_args(argv)
    rows = []
    if REF.exists():
        d = pd.read_csv(REF)
        model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2)
        rows.append(run("reference n=1000 K=2", model, d[["x"]].to_numpy(), d["y"].to_numpy()))
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 3)
    truth = {"gate_intercept": np.array([0.5, -0.5, 0.0]),
             "gate_coef": np.array([[2.0, -1.0], [-1.5, 1.5], [0.0, 0.0]]),
             "expert_intercept": np.array([1.0, -2.0, 3.0]),
             "expert_coef": np.array([[1.0, 2.0], [-1.0, 0.5], [0.0, -2.0]]),
             "expert_scale": np.array([0.5, 0.7, 0.4])}
    x = np.random.default_rng(0).normal(size=(2000, 2))
    y = np.asarray(model.simulate(jax.random.key(0), truth, x).y)
    rows.append(run("simulated n=2000 K=3 d=2", model, x, y))
    stan_incl = STAN["ess"] / (STAN["sampling_s"] + STAN["compile_s"])
    stan_excl = STAN["ess"] / STAN["sampling_s"]
    print("\n| case | min bulk ESS | ESS/s incl. compile | ESS/s excl. compile | vs Stan (excl.) | "
          "vs Stan (incl.) | divergences | chains |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        r["ratio_vs_stan_excl"] = r["ess_per_s_excl_compile"] / stan_excl
        r["ratio_vs_stan_incl"] = r["ess_per_s_incl_compile"] / stan_incl
        print(f"| {r['case']} | {r['min_bulk_ess']:.0f} | {r['ess_per_s_incl_compile']:.1f} | "
              f"{r['ess_per_s_excl_compile']:.1f} | {r['ratio_vs_stan_excl']:.2f}x | "
              f"{r['ratio_vs_stan_incl']:.2f}x | {r['divergences']} | {r['chain_method']} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "stan": STAN, "devices": str(jax.devices())}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
