"""HyperRouter vs SMoE vs SMoE-Dropout on enwik8 with Transformer-XL (the paper's setting).

Trains one Transformer-XL per router and seed (the routers differ only in the router:
same seed, same data order, same initial weights elsewhere) on consecutive segments with
memory, the authors' k schedule (8 -> 16 of 16 experts), keeps the state with the best
validation BPC, then scores the test split with memory at k = 1, 2, 4, 8, 16: test BPC
and router entropy. Writes ``runs/<router>_s<seed>.json``, ``results.json``, ``table.md``
and ``hyperrouter_bpc.png`` to ``--out``.

    # the paper's setting (GPU; enwik8 = the raw 100 000 000-byte file, unzipped)
    python examples/hyperrouter_enwik8.py --data /path/to/enwik8 \\
        --config examples/configs/hyperrouter_enwik8_paper.json --out out/enwik8
    # the pipeline on CPU in minutes (any text file, or the bundled text without --data)
    python examples/hyperrouter_enwik8.py --config examples/configs/hyperrouter_enwik8_cpu.json

Nothing is downloaded: ``--data`` is read as raw bytes from the local path. The split is
the usual enwik8 one (first 90 %, next 5 %, last 5 %). Reference: Do et al., HyperRouter,
arXiv 2312.07035; Dai et al., Transformer-XL, arXiv 1901.02860.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bayesmoe.nn import TransformerXL, evaluate_xl_bpc
from bayesmoe.nn.data import encode, load_bytes, split
from bayesmoe.nn.transformer_xl import XLTrainConfig, train_xl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hyperrouter_charlm import ROUTERS, plot, summarize, table  # noqa: E402

HERE = Path(__file__).resolve().parent


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help="raw byte file, e.g. enwik8")
    p.add_argument("--config", type=Path, default=HERE / "configs/hyperrouter_enwik8_cpu.json")
    p.add_argument("--out", type=Path, default=Path("out/hyperrouter_enwik8"))
    p.add_argument("--routers", nargs="+", default=list(ROUTERS), choices=list(ROUTERS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=None, help="override train.steps")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def build_model(cfg: dict, router: str, vocab_size: int, seed: int) -> TransformerXL:
    m = dict(cfg["model"])
    hyper = m.pop("hyper", {})
    dtype = {"float32": None, "bfloat16": jnp.bfloat16}[cfg.get("compute_dtype", "float32")]
    moe_kwargs = {"router_kwargs": {k: v for k, v in hyper.items() if v is not None}} \
        if router == "hyper" else {}
    return TransformerXL(vocab_size, router=router, compute_dtype=dtype, moe_kwargs=moe_kwargs,
                         rngs=nnx.Rngs(seed), **m)


def logit_sd(model: TransformerXL, n_tokens: int = 4096) -> list[float]:
    """Per MoE layer, the sd of the router logits for N(0, I_d) tokens (the logit-scale
    diagnostic: post-LN blocks feed the router unit-variance tokens)."""
    x = jax.random.normal(jax.random.key(12345), (n_tokens, model.d_model))
    return [float(jnp.std(m.router(x))) for m in model.moe_layers()]


def run_one(cfg, router, seed, train_ids, valid_ids, test_ids, vocab_size, out, progress):
    model = build_model(cfg, router, vocab_size, seed)
    sd_init = logit_sd(model)
    tcfg = XLTrainConfig(**cfg["train"], seed=seed, progress=progress,
                         checkpoint_dir=str((out / "ckpt" / f"{router}_s{seed}").absolute()))
    t0, c0 = time.perf_counter(), time.process_time()
    res = train_xl(model, train_ids, tcfg, valid_data=valid_ids)
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    t = cfg["train"]
    eval_mem = t["eval_mem_len"] or model.mem_len + t["tgt_len"] - t["eval_tgt_len"]
    t0, c0 = time.perf_counter(), time.process_time()
    ev = evaluate_xl_bpc(model, test_ids, cfg["eval_ks"], tgt_len=t["eval_tgt_len"],
                         mem_len=eval_mem, batch_size=t["eval_batch_size"],
                         max_tokens=cfg.get("test_max_tokens", t["eval_max_tokens"]))
    test_s, test_cpu = time.perf_counter() - t0, time.process_time() - c0
    routers = nnx.state(nnx.List([mm.router for mm in model.moe_layers()]), nnx.Param)
    n_router = sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(routers))
    return {"router": router, "seed": seed, "train_seconds": train_s,
            "train_cpu_seconds": train_cpu, "test_seconds": test_s, "test_cpu_seconds": test_cpu,
            "logit_sd_init": sd_init, "logit_sd_best": logit_sd(model),
            "history": res["history"], "valid": res["valid"], "best_step": res["best_step"],
            "best_valid_bpc": res["best_valid_bpc"], "test": ev,
            "trainable_router_params": n_router}


def layer_table(results: list[dict], k: int) -> str:
    """Per router and layer: test router entropy at ``k`` and the router logit sd for
    N(0, I) tokens at initialisation and in the best-validation state (mean ± std over
    seeds), plus the best-validation step and the training time per run."""
    lines = [f"| router | layer | entropy k={k} | logit sd, init | logit sd, best state |",
             "|---|---|---|---|---|"]
    for router in dict.fromkeys(r["router"] for r in results):
        rs = [r for r in results if r["router"] == router]
        ent = np.array([r["test"]["layer_entropy"][str(k)] if str(k) in r["test"]["layer_entropy"]
                        else r["test"]["layer_entropy"][k] for r in rs])
        sd0 = np.array([r["logit_sd_init"] for r in rs])
        sd1 = np.array([r["logit_sd_best"] for r in rs])
        for layer in range(ent.shape[1]):
            lines.append(f"| {ROUTERS[router]} | {layer} | {ent[:, layer].mean():.3f} ± "
                         f"{ent[:, layer].std():.3f} | {sd0[:, layer].mean():.3f} | "
                         f"{sd1[:, layer].mean():.3f} ± {sd1[:, layer].std():.3f} |")
    lines += ["", "| router | seed | best step | best valid BPC | train s (CPU s) | test s |",
              "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {ROUTERS[r['router']]} | {r['seed']} | {r['best_step']} | "
                     f"{r['best_valid_bpc']:.3f} | {r['train_seconds']:.0f} "
                     f"({r.get('train_cpu_seconds', float('nan')):.0f}) | "
                     f"{r.get('test_seconds', float('nan')):.0f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = json.loads(args.config.read_text())
    if args.steps is not None:
        cfg["train"]["steps"] = args.steps
    args.out.mkdir(parents=True, exist_ok=True)
    ids, vocab = encode(load_bytes(args.data))
    train_ids, valid_ids, test_ids = split(ids)
    meta = {"config": cfg, "data": str(args.data), "n_bytes": len(ids), "vocab": len(vocab)}
    run_dir = args.out / "runs"
    run_dir.mkdir(exist_ok=True)
    for seed in args.seeds:
        for router in args.routers:
            path = run_dir / f"{router}_s{seed}.json"
            if path.exists():
                continue
            print(f"== {ROUTERS[router]} seed {seed}", flush=True)
            r = run_one(cfg, router, seed, train_ids, valid_ids, test_ids, len(vocab), args.out,
                        not args.no_progress)
            r["meta"] = meta
            print(f"   train {r['train_seconds']:.0f}s (CPU {r['train_cpu_seconds']:.0f}s), "
                  f"test {r['test_seconds']:.0f}s (CPU {r['test_cpu_seconds']:.0f}s), "
                  f"best valid BPC {r['best_valid_bpc']:.3f}"
                  f" at step {r['best_step']}, test BPC {r['test']['bpc']}", flush=True)
            path.write_text(json.dumps(r, indent=1))
    results = [json.loads(p.read_text()) for p in sorted(run_dir.glob("*_s*.json"))]
    results = [r for r in results if r["router"] in args.routers and r["seed"] in args.seeds]
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "runs": results}, indent=1))
    if not results:
        return {"runs": [], "summary": {}}
    summary = summarize(results, cfg["eval_ks"])
    tab = table(summary, cfg["eval_ks"]) + "\n\n" + layer_table(results, cfg["eval_ks"][-1])
    (args.out / "table.md").write_text(tab + "\n")
    print(tab)
    plot(summary, cfg["eval_ks"], cfg["model"]["n_experts"], args.out / "hyperrouter_bpc.png")
    return {"runs": results, "summary": summary}


if __name__ == "__main__":
    main()
