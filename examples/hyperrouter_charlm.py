"""HyperRouter vs SMoE vs SMoE-Dropout on character-level language modelling.

Trains three TransformerLMs that differ only in their router (same data order, same
initial weights elsewhere, same seeds), with the SMoE-Dropout k schedule (k grows
linearly from k_min to k_max), then evaluates each at several k on held-out text:
bits per character (byte) and router entropy.  Writes ``results.json``, ``table.md``
and ``hyperrouter_bpc.png`` to ``--out``.  Runs are checkpointed; rerunning the same
command resumes unfinished runs and skips finished ones.

    python examples/hyperrouter_charlm.py --quick               # < 2 min, CI
    python examples/hyperrouter_charlm.py --steps 1000 --seeds 0 1 2
    python examples/hyperrouter_charlm.py --data enwik8 ...     # any text file

Data: CPython's ``pydoc_data.topics`` (about 0.5 MB) by default.  Reference: Do et al.,
HyperRouter, arXiv 2312.07035.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from flax import nnx

from bayesmoe.nn import TrainConfig, TransformerLM, evaluate_bpc, train
from bayesmoe.nn.data import encode, load_bytes, split

ROUTERS = {"linear": "SMoE", "random": "SMoE-Dropout", "hyper": "HyperRouter"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help="text file (default: pydoc topics)")
    p.add_argument("--out", type=Path, default=Path("out/hyperrouter"))
    p.add_argument("--quick", action="store_true", help="tiny model and budget (CI)")
    p.add_argument("--routers", nargs="+", default=list(ROUTERS), choices=list(ROUTERS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=256)
    p.add_argument("--n-experts", type=int, default=16)
    p.add_argument("--k-min", type=int, default=8)
    p.add_argument("--k-max", type=int, default=16)
    p.add_argument("--eval-ks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--eval-max-tokens", type=int, default=None)
    p.add_argument("--lr", type=float, default=2.5e-4)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--impl", default="dense", choices=["dense", "sorted", "capacity"])
    p.add_argument("--hyper-init-std", type=float, default=None,
                   help="override the std of HyperRouter's frozen hypernetwork weights")
    p.add_argument("--legacy-init", action="store_true",
                   help="the inits before issue 14: LeCun routers (SMoE, SMoE-Dropout) and "
                        "experts, no expert dropout (default: the paper's N(0, 0.02) for every "
                        "router and expert, expert dropout = --dropout)")
    p.add_argument("--also", action="append", default=[], metavar="DIR=LABEL",
                   help="add the HyperRouter runs of another --out DIR to table and plot")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.batch_size, args.seq_len = args.seeds[:1], 150, 8, 64
        args.d_model, args.n_heads, args.n_layers, args.d_ff = 32, 2, 2, 64
        args.n_experts, args.k_min, args.k_max = 8, 2, 4
        args.eval_ks, args.eval_max_tokens = [1, 2, 4, 8], 4096
        args.lr = 2e-3
    return args


def run_one(args, router: str, seed: int, train_ids, test_ids, vocab_size: int) -> dict:
    """Train one model (resuming from its checkpoint) and evaluate it at every k."""
    moe_kwargs = ({"router_init_std": None, "expert_init_std": None, "expert_dropout": 0.0}
                  if args.legacy_init else {})
    if router == "hyper" and args.hyper_init_std is not None:
        moe_kwargs["router_kwargs"] = {"init_std": args.hyper_init_std}
    model = TransformerLM(
        vocab_size, args.d_model, args.n_heads, args.n_layers, args.d_ff, args.n_experts,
        args.k_max, router=router, impl=args.impl, max_len=args.seq_len, dropout=args.dropout,
        moe_kwargs=moe_kwargs, rngs=nnx.Rngs(seed),
    )
    cfg = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
        learning_rate=args.lr, k_min=args.k_min, k_max=args.k_max, seed=seed,
        log_every=max(1, min(50, args.steps // 10)),
        checkpoint_dir=str((args.out / "ckpt" / f"{router}_s{seed}").absolute()),
        checkpoint_every=max(1, args.steps // 4), progress=not args.no_progress,
    )
    t0 = time.perf_counter()
    res = train(model, train_ids, cfg)
    train_s = time.perf_counter() - t0
    ev = evaluate_bpc(model, test_ids, args.eval_ks, args.seq_len, 32, args.eval_max_tokens)
    routers = nnx.state(nnx.List([m.router for m in model.moe_layers()]), nnx.Param)
    n_router = sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(routers))
    return {
        "router": router, "seed": seed, "train_seconds": train_s,
        "train_loss_first": res["history"][0]["ce"], "train_loss_last": res["history"][-1]["ce"],
        "history": res["history"], "test": ev, "trainable_router_params": n_router,
    }


def summarize(results: list[dict], ks: list[int]) -> dict:
    """Mean and std over seeds of test BPC and router entropy, per router and k."""
    out = {}
    present = dict.fromkeys(r["router"] for r in results)
    for router in [r for r in ROUTERS if r in present] + [r for r in present if r not in ROUTERS]:
        rs = [r for r in results if r["router"] == router]
        if not rs:
            continue
        out[router] = {
            what: {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k in ks
                   for v in [[r["test"][what][str(k)] if str(k) in r["test"][what]
                              else r["test"][what][k] for r in rs]]}
            for what in ("bpc", "entropy")
        }
    return out


def table(summary: dict, ks: list[int]) -> str:
    """A markdown table of test BPC (mean ± std over seeds) and router entropy."""
    head = "| router | " + " | ".join(f"BPC k={k}" for k in ks) + f" | entropy k={ks[-1]} |"
    lines = [head, "|" + "---|" * (len(ks) + 2)]
    for router, s in summary.items():
        cells = [f"{s['bpc'][k][0]:.3f} ± {s['bpc'][k][1]:.3f}" for k in ks]
        ent = s["entropy"][ks[-1]]
        lines.append(f"| {ROUTERS.get(router, router)} | " + " | ".join(cells) + f" | {ent[0]:.3f} |")
    n = max(v[2] for s in summary.values() for v in s["bpc"].values())
    lines.append(f"\n(mean ± std over {n} seed(s); entropy in nats, max ln E)")
    return "\n".join(lines)


def plot(summary: dict, ks: list[int], n_experts: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for router, s in summary.items():
        m = [s["bpc"][k][0] for k in ks]
        e = [s["bpc"][k][1] for k in ks]
        label = ROUTERS.get(router, router)
        a1.errorbar(ks, m, yerr=e, marker="o", capsize=3, label=label)
        a2.plot(ks, [s["entropy"][k][0] for k in ks], marker="o", label=label)
    a1.set(xscale="log", xlabel="experts active at inference (k)", ylabel="test BPC",
           title="Test bits per character")
    a2.axhline(math.log(n_experts), color="grey", ls=":", label="ln E (uniform)")
    a2.set(xscale="log", xlabel="experts active at inference (k)",
           ylabel="router entropy (nats)", title="Mean router entropy")
    for a in (a1, a2):
        a.set_xticks(ks, [str(k) for k in ks])
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    ids, vocab = encode(load_bytes(args.data))
    train_ids, _valid_ids, test_ids = split(ids)
    meta = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    meta.update(n_bytes=len(ids), vocab=len(vocab), n_test=len(test_ids))
    run_dir = args.out / "runs"  # one file per finished run: processes can run in parallel
    run_dir.mkdir(exist_ok=True)
    for seed in args.seeds:
        for router in args.routers:
            path = run_dir / f"{router}_s{seed}.json"
            if path.exists():
                continue
            print(f"== {ROUTERS[router]} seed {seed}", flush=True)
            r = run_one(args, router, seed, train_ids, test_ids, len(vocab))
            r["args"] = meta  # the settings this run was trained with
            print(f"   train {r['train_seconds']:.0f}s, loss {r['train_loss_first']:.3f} -> "
                  f"{r['train_loss_last']:.3f}, test BPC {r['test']['bpc']}", flush=True)
            path.write_text(json.dumps(r, indent=1))
    found = [json.loads(p.read_text()) for p in sorted(run_dir.glob("*_s*.json"))]
    found = [r for r in found if r["router"] in args.routers]
    # compare on the seeds finished by every router only
    common = set.intersection(*({r["seed"] for r in found if r["router"] == rt}
                                for rt in args.routers))
    results = [r for r in found if r["seed"] in common]
    # "args": the settings of this (summarising) call; each run keeps its own under "args"
    (args.out / "results.json").write_text(json.dumps({"args": meta, "runs": results}, indent=1))
    if not results:
        print("no seed finished by every router yet")
        return {"runs": [], "summary": {}}
    for spec in args.also:  # e.g. a HyperRouter variant trained in another directory
        other, label = spec.split("=", 1)
        extra = [json.loads(p.read_text()) for p in sorted(Path(other, "runs").glob("hyper_s*"))]
        results += [dict(r, router=label) for r in extra if r["seed"] in common]
    summary = summarize(results, args.eval_ks)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    tab = table(summary, args.eval_ks)
    (args.out / "table.md").write_text(tab + "\n")
    print(tab)
    plot(summary, args.eval_ks, args.n_experts, args.out / "hyperrouter_bpc.png")
    print(f"wrote {args.out}/results.json, table.md, hyperrouter_bpc.png")
    return {"runs": results, "summary": summary}


if __name__ == "__main__":
    main()
