"""The Lasso path at scale: K = 3 experts, n = 10 000, p up to 1000 features, 30 levels.

For each p: ``bm.lasso_path`` (30 levels, two passes, relaxed BIC) is timed cold (first call in the
process for that shape: compilation included) and its CPU time beside the wall time. Then one weighted
M-step problem from the chosen fit -- expert 0's weighted Lasso with the responsibilities r_i0 as
observation weights, at the level the path chose, objective (1/(2 sum r)) sum r_i (y_i - b - x_i a)^2
+ alpha |a|_1 with alpha = lambda sigma_0^2 -- is solved in this process by bayesmoe's proximal solver
run to convergence (bayesmoe._proximal.mfista, compiled; cold and warm) and by scikit-learn's
coordinate-descent ``Lasso`` with ``sample_weight`` (glmnet-style; the baseline), and the answers are
compared.

Then plain (unpenalised) ``bm.fit_mle`` with many features (K = 2, n = max(2000, 4 (p+1)), p in
``--mle-ps``, two starts, a few EM steps): wall and CPU time, and XLA's count of the temporary
memory of the compiled data-driven starts beside the n (p+1)^2 numbers of the row-wise outer
products the starts' normal equations used to hold (which made p ~ 1000 run out of memory).

Usage: python benchmarks/lasso_path.py [--ps 100,300,1000] [--n 10000] [--mle-ps 300,1000]
       [--out out/benchmarks/lasso_path.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.linear_model import Lasso

import bayesmoe as bm
from bayesmoe._proximal import mfista
from bayesmoe.datasets import selection_rates, simulate_sparse


def _timed(fn, *args, **kwargs):
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0, time.process_time() - c0


def _mstep_problem(fit, x, y, model, lam):
    """Expert 0's weighted Lasso at the chosen fit (data units)."""
    r = np.asarray(model.responsibilities(fit.params, x, y))[:, 0].astype(float)
    s2 = float(fit.params["expert_scale"][0]) ** 2
    return r, lam * s2


def _ours(x, y, r, alpha):
    xj, yj, rj = (jnp.asarray(a, jnp.float32) for a in (x, y, r))
    p = x.shape[1]
    sw = jnp.sum(rj)

    @jax.jit
    def solve(v0):
        def f(v):
            res = yj - v[0] - xj @ v[1:]
            return 0.5 * jnp.sum(rj * res * res) / sw
        w = jnp.concatenate([jnp.zeros(1), jnp.full(p, alpha)]).astype(jnp.float32)
        return mfista(f, v0, w, max_iter=20_000, xtol=1e-7)

    v0 = jnp.zeros(p + 1, jnp.float32)
    return solve, v0


def _starts_temp_bytes(model, n, p, n_starts):
    """XLA's temporary bytes of the compiled data-driven starts (n rows, p features, float32)."""
    from bayesmoe.inference.init import _params_from_weights

    x = np.random.default_rng(0).normal(size=(n, p)).astype(np.float32)
    spec = jax.ShapeDtypeStruct
    c = _params_from_weights.lower(model, spec((n, p), jnp.float32), spec((n,), jnp.float32),
                                   spec((n_starts, n, model.n_experts), jnp.float32),
                                   model.floors(x, x[:, 0], 1e-3), False).compile()
    return int(c.memory_analysis().temp_size_in_bytes)


def mle_rows(ps, n_min=2000, max_steps=5):
    """Plain fit_mle with many features (n = max(n_min, 4 (p+1)) rows: maximum likelihood needs more
    rows than the 3p + 5 free parameters): time and the starts' temporary memory."""
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), n_experts=2)
    rows = []
    for p in ps:
        n = max(n_min, 4 * (p + 1))
        x, y, _ = simulate_sparse(0, n=n, p=p, n_experts=2)
        fit, wall, cpu = _timed(bm.fit_mle, model, x, y, n_starts=2, max_steps=max_steps, seed=0)
        temp = _starts_temp_bytes(model, n, p, 2)
        row = {"p": p, "n": n, "fit_mle_wall_s": wall, "fit_mle_cpu_s": cpu, "em_steps": max_steps,
               "starts_temp_MB": temp / 1e6, "outer_products_MB": n * (p + 1) ** 2 * 4 / 1e6,
               "log_likelihood": fit.log_likelihood}
        rows.append(row)
        print(f"fit_mle p={p:>5} n={n}: {wall:6.1f} s wall ({cpu:6.1f} s CPU, {max_steps} EM steps, "
              f"2 starts); "
              f"starts' temporaries {row['starts_temp_MB']:.0f} MB (row outer products would be "
              f"{row['outer_products_MB']:.0f} MB per start)", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ps", default="100,300,1000")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--n-lambdas", type=int, default=30)
    ap.add_argument("--n-starts", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=200)
    ap.add_argument("--mle-ps", default="300,1000")
    ap.add_argument("--out", default="out/benchmarks/lasso_path.json")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    mle = mle_rows([int(s) for s in args.mle_ps.split(",") if s]) if args.mle_ps else []
    out.write_text(json.dumps({"rows": [], "fit_mle": mle, "devices": str(jax.devices())}, indent=1))
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), n_experts=3)
    rows = []
    print(f"K = 3, n = {args.n}, {args.n_lambdas} levels, {args.n_starts} start(s), float32; "
          f"baseline: scikit-learn Lasso (coordinate descent) on one weighted M-step problem")
    for p in (int(s) for s in args.ps.split(",") if s):
        x, y, truth = simulate_sparse(0, n=args.n, p=p, n_experts=3)
        path, wall, cpu = _timed(bm.lasso_path, model, x, y, n_lambdas=args.n_lambdas,
                                 n_starts=args.n_starts, max_steps=args.max_steps, progress_bar=False)
        tp, fp = selection_rates(path.best.params, truth)
        lam = float(path.lambdas[path.best_index])
        r, alpha = _mstep_problem(path.best, x, y, model, lam)
        solve, v0 = _ours(x, y, r, alpha)
        run = lambda solve=solve, v0=v0: jax.block_until_ready(solve(v0))  # noqa: E731
        (v, _, it), ours_cold, ours_cold_cpu = _timed(run)
        (v, _, it), ours_warm, ours_warm_cpu = _timed(run)
        sk = Lasso(alpha=alpha, tol=1e-7, max_iter=100_000)
        _, sk_wall, sk_cpu = _timed(sk.fit, x, y, sample_weight=r)
        diff = float(np.max(np.abs(np.asarray(v[1:], float) - sk.coef_)))
        row = {"p": p, "n": args.n, "path_wall_s": wall, "path_cpu_s": cpu,
               "em_steps_total": int(np.asarray(path.dataset["n_steps"]).sum()),
               "lambda_max": path.lambda_max, "lambda": lam, "nonzero": path.best.extra["n_nonzero_slopes"],
               "relevant_selected": tp, "irrelevant_selected": fp,
               "mstep_ours_cold_s": ours_cold, "mstep_ours_warm_s": ours_warm,
               "mstep_ours_warm_cpu_s": ours_warm_cpu, "mstep_ours_iters": int(it),
               "mstep_sklearn_s": sk_wall, "mstep_sklearn_cpu_s": sk_cpu,
               "mstep_ratio_ours_warm_over_sklearn": ours_warm / sk_wall,
               "mstep_max_abs_coef_diff": diff}
        rows.append(row)
        print(f"p={p:>5}: path {wall:7.1f} s wall ({cpu:7.1f} s CPU), {row['em_steps_total']} EM steps, "
              f"chosen lambda {lam:.4f}, {row['nonzero']} nonzero, relevant {tp:.0%}, irrelevant {fp:.1%}"
              f" | M-step: ours cold {ours_cold:.2f} s, warm {ours_warm:.3f} s ({int(it)} it), sklearn "
              f"{sk_wall:.3f} s, ratio {row['mstep_ratio_ours_warm_over_sklearn']:.2f}, "
              f"max |diff| {diff:.1e}", flush=True)
        out.write_text(json.dumps({"rows": rows, "fit_mle": mle, "devices": str(jax.devices())}, indent=1))


if __name__ == "__main__":
    main()
