"""Forward+backward throughput of the SparseMoE implementations on this backend.

Compares every ``impl`` of :class:`bayesmoe.nn.SparseMoE` (E experts, top-k) with a dense
FFN of the same *active* parameters (hidden width d_ff * k), and HyperRouter against
LinearRouter.  Compile time is measured separately from steady-state time (median of
``--reps`` calls after one warm-up call).  Writes a table to stdout and JSON to ``--out``.

    python benchmarks/moe_layer.py            # B 32, S 128, d 256, E 16, F 512, k = 2, 8
    python benchmarks/moe_layer.py --quick    # smaller, a few seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from bayesmoe.nn import DenseFFN, SparseMoE


def fwd_bwd_fn(module: nnx.Module, x: jax.Array, is_moe: bool):
    """A jitted function returning grads of ``sum(y * c)`` w.r.t. params and x."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    cot = jax.random.normal(jax.random.key(7), x.shape, x.dtype)

    def loss(p, xx):
        m = nnx.merge(graphdef, p, rest)
        y = m(xx)[0] if is_moe else m(xx)
        return jnp.sum(y * cot)

    return jax.jit(jax.grad(loss, argnums=(0, 1))), params


def compile_fn(fn, args) -> tuple:
    """Lower and compile; returns (compiled, seconds)."""
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def time_round_robin(entries: list[dict], reps: int) -> None:
    """Median steady-state time of every compiled entry, measured in interleaved rounds
    (one call of each entry per round) so that background load hits all entries alike."""
    for e in entries:
        jax.block_until_ready(e["compiled"](*e["args"]))  # warm-up
        e["times"] = []
    for _ in range(reps):
        for e in entries:
            t0 = time.perf_counter()
            jax.block_until_ready(e["compiled"](*e["args"]))
            e["times"].append(time.perf_counter() - t0)
    for e in entries:
        e["step_s"] = statistics.median(e["times"])
        e["min_s"] = min(e["times"])


def build_entries(args, x) -> list[dict]:
    d, e, f = args.d_model, args.n_experts, args.d_ff
    entries = []
    for k in args.ks:
        fn, p = fwd_bwd_fn(DenseFFN(d, f * k, rngs=nnx.Rngs(0)), x, False)
        entries.append({"name": f"dense FFN d_ff={f * k}", "k": k, "impl": "ffn", "router": "-",
                        "block": None, "fn": fn, "args": (p, x)})
        configs = [(impl, "linear", args.block) for impl in args.impls]
        configs += [("sorted", "linear", bs) for bs in args.block_sweep if bs != args.block]
        configs += [(impl, "hyper", args.block) for impl in args.router_impls]
        configs = [(impl, router, block, "auto") for impl, router, block in configs]
        configs += [(impl, "linear", args.block, kern) for impl, kern in
                    (kk.split(":") for kk in args.kernels)]
        for impl, router, block, kernel in configs:
            # expert dropout off: the dense FFN baseline has none
            layer = SparseMoE(d, f, e, k, router=router, impl=impl, block_size=block,
                              kernel=kernel, expert_dropout=0.0, rngs=nnx.Rngs(0))
            fn, p = fwd_bwd_fn(layer, x, True)
            name = f"{impl} ({router}" + (f", block {block}" if impl == "sorted" else "")
            name += (f", {kernel})" if kernel != "auto" else ")")
            entries.append({"name": name, "k": k, "impl": impl, "router": router,
                            "block": block if kernel == "auto" else kernel, "fn": fn,
                            "args": (p, x)})
    return entries


def run(args) -> dict:
    b, s, d, e, f = args.batch, args.seq, args.d_model, args.n_experts, args.d_ff
    x = jax.random.normal(jax.random.key(0), (b, s, d))
    n_tok = b * s
    entries = build_entries(args, x)
    for ent in entries:
        ent["compiled"], ent["compile_s"] = compile_fn(ent["fn"], ent["args"])
    time_round_robin(entries, args.reps)
    base = {ent["k"]: ent["step_s"] for ent in entries if ent["impl"] == "ffn"}
    config = {key: str(v) if isinstance(v, Path) else v for key, v in vars(args).items()}
    results = {"config": config, "backend": jax.default_backend(), "runs": []}
    print(f"backend={jax.default_backend()} tokens={n_tok} d={d} E={e} F={f}"
          f" (median of {args.reps} interleaved rounds)")
    print(f"{'k':>3} {'layer':<34} {'compile s':>9} {'step ms':>9} {'tok/s':>9} {'vs FFN':>7}")
    for ent in entries:
        r = {key: ent[key] for key in ("name", "k", "impl", "router", "block", "compile_s",
                                       "step_s", "min_s")}
        r["ratio"] = ent["step_s"] / base[ent["k"]]
        r["tokens_per_s"] = n_tok / ent["step_s"]
        results["runs"].append(r)
        print(f"{r['k']:>3} {r['name']:<34} {r['compile_s']:>9.2f} {1e3 * r['step_s']:>9.1f}"
              f" {r['tokens_per_s']:>9.0f} {r['ratio']:>7.2f}")
    for k in args.ks:
        by = {(r["impl"], r["router"]): r for r in results["runs"]
              if r["k"] == k and r["block"] in (None, args.block)}
        moe = [r for r in results["runs"] if r["k"] == k and r["impl"] != "ffn"]
        best = min(moe, key=lambda r: r["step_s"])
        results.setdefault("fastest", {})[f"k{k}"] = {"name": best["name"],
                                                      "ratio": best["ratio"]}
        print(f"k={k}: fastest MoE impl {best['name']}: {best['ratio']:.2f}x the dense FFN")
        for impl in args.router_impls:
            if (impl, "linear") in by and (impl, "hyper") in by:
                ov = by[(impl, "hyper")]["step_s"] / by[(impl, "linear")]["step_s"] - 1
                results.setdefault("hyper_overhead", {})[f"k{k}_{impl}"] = ov
                print(f"k={k} {impl}: HyperRouter overhead over LinearRouter {100 * ov:+.1f}%")
    return results


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--d-ff", type=int, default=512)
    p.add_argument("--n-experts", type=int, default=16)
    p.add_argument("--ks", type=int, nargs="+", default=[2, 8])
    p.add_argument("--impls", nargs="+", default=["dense", "sorted", "capacity"])
    p.add_argument("--router-impls", nargs="+", default=["sorted", "capacity"])
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--block-sweep", type=int, nargs="*", default=[])
    p.add_argument("--kernels", nargs="*", default=[], metavar="IMPL:KERNEL",
                   help="extra entries with a forced kernel, e.g. sorted:ragged capacity:einsum")
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--quick", action="store_true", help="small sizes, few reps")
    p.add_argument("--out", type=Path, default=Path("out/benchmarks/moe_layer.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.seq, args.d_model, args.d_ff, args.reps = 4, 64, 64, 128, 3
    res = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
