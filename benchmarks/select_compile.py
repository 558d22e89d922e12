"""How much of ``select_n_experts`` is compilation? (issue 10)

``select_n_experts`` fits every K with its own model value, so every K compiles its own programs
(starts, EM loop, log-likelihood, ...). This script times, in one process and for every K of the
range, the first ``fit_mle`` of that K (compiles) and a second, identical call (the compiled programs
are reused): the difference is the compilation (and tracing) cost. CPU seconds (process time, all
threads) are printed beside wall seconds. The baseline of the ratios is the warm call of the same K.

The persistent compilation cache (on by default in bayesmoe) is turned off unless ``--disk-cache``,
so that "cold" means compiled in this process.

Data: the ethanol data (``bm.datasets.ethanol``, NOx against E, 88 rows) or a simulated GLoME data set
(``--data glome --n 2000``). Model: Gaussian gate, linear Gaussian experts, EM, ``--n-starts`` starts.

Usage:
    python benchmarks/select_compile.py                            # ethanol, K = 1..6, 4 starts
    python benchmarks/select_compile.py --data glome --n 2000 --kmax 8
    python benchmarks/select_compile.py --out out/benchmarks/select_compile.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np


def _data(kind: str, n: int):
    import bayesmoe as bm

    if kind == "ethanol":
        d = bm.datasets.ethanol()
        return d[["E"]].to_numpy(), d["NOx"].to_numpy()
    rng = np.random.default_rng(0)
    z = rng.integers(0, 2, n)
    x = rng.normal(np.array([0.2, 0.8])[z], np.sqrt(np.array([0.1, 0.15]))[z])
    y = np.array([2.0, 0.0])[z] + np.array([-5.0, 0.1])[z] * x + 0.3 * rng.normal(size=n)
    return x[:, None], y


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=("ethanol", "glome"), default="ethanol")
    ap.add_argument("--n", type=int, default=2000, help="rows of the simulated GLoME data")
    ap.add_argument("--kmax", type=int, default=6)
    ap.add_argument("--n-starts", type=int, default=4)
    ap.add_argument("--disk-cache", action="store_true", help="keep the persistent compilation cache")
    ap.add_argument("--out", default="out/benchmarks/select_compile.json")
    args = ap.parse_args(argv)
    import bayesmoe as bm

    if not args.disk_cache:
        bm.set_compilation_cache(None)
    x, y = _data(args.data, args.n)
    rows = []
    print(f"{'K':>3} {'cold wall':>10} {'cold cpu':>9} {'warm wall':>10} {'warm cpu':>9} "
          f"{'compile cpu':>12} {'cold/warm cpu':>14}")
    for K in range(1, args.kmax + 1):
        model = bm.MoE(bm.gates.Gaussian(), bm.experts.Gaussian(), K)

        def fit(model=model):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return bm.fit_mle(model, x, y, seed=0, n_starts=args.n_starts, method="em")

        f1, cw, cc = _timed(fit)
        f2, ww, wc = _timed(fit)
        assert f1.log_likelihood == f2.log_likelihood  # same seed, same result
        rows.append({"K": K, "cold_wall": cw, "cold_cpu": cc, "warm_wall": ww, "warm_cpu": wc,
                     "compile_cpu": cc - wc, "log_likelihood": float(f1.log_likelihood)})
        print(f"{K:>3} {cw:>10.2f} {cc:>9.2f} {ww:>10.2f} {wc:>9.2f} {cc - wc:>12.2f} "
              f"{cc / max(wc, 1e-9):>14.1f}")
    cold = sum(r["cold_cpu"] for r in rows)
    warm = sum(r["warm_cpu"] for r in rows)
    share = 1 - warm / cold
    print(f"total: cold {cold:.2f} s CPU, warm {warm:.2f} s CPU: compilation is {100 * share:.0f}% of "
          f"the CPU time of a fresh select_n_experts")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows, "compile_share_cpu": share,
                               "date": datetime.datetime.now(datetime.UTC).isoformat(),
                               "machine": platform.platform(), "python": platform.python_version()},
                              indent=1))
    return rows


if __name__ == "__main__":
    main()
