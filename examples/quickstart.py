"""Quickstart: simulate from a 3-expert softmax-gated Gaussian MoE and plot it.

Run: python examples/quickstart.py [--quick] [--out out/quickstart]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import bayesmoe as bm  # noqa: E402


def true_model():
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(degree=1), n_experts=3)
    params = {
        "gate_intercept": np.array([-2.0, 2.0, 0.0]),
        "gate_coef": np.array([[-4.0], [0.0], [3.0]]),
        "expert_intercept": np.array([2.0, -1.0, 5.0]),
        "expert_coef": np.array([[1.5], [-0.5], [-2.0]]),
        "expert_scale": np.array([0.4, 0.3, 0.5]),
    }
    return model, params


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes (CI)")
    ap.add_argument("--out", default="out/quickstart")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model, params = true_model()
    n = 500 if args.quick else 2000
    rng = np.random.default_rng(args.seed)
    x = rng.uniform(-3, 3, size=(n, 1))
    y, z = model.simulate(jax.random.key(args.seed), params, x)
    print(f"simulated n={n} from {model}")
    print(f"mean log-likelihood at the truth: {float(model.log_likelihood(params, x, y).mean()):.4f}")

    grid = np.linspace(-3, 3, 300)[:, None]
    pred = model.predict(params, grid)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 7), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1.3]})
    colors = plt.cm.tab10(np.arange(3))
    ax1.scatter(x[:, 0], y, c=colors[np.asarray(z)], s=6, alpha=0.5)
    for k in range(3):
        ax1.plot(grid[:, 0], pred.expert_mean[:, k], color=colors[k], lw=2, label=f"expert {k}")
        ax2.plot(grid[:, 0], pred.gate_probs[:, k], color=colors[k], lw=2)
    ax1.plot(grid[:, 0], pred.mean, "k--", lw=1.5, label="mixture mean")
    ax1.set_ylabel("y")
    ax1.legend(loc="best", fontsize=8)
    ax2.set_ylabel("gate probability")
    ax2.set_xlabel("x")
    ax1.set_title("3-expert softmax-gated Gaussian MoE (true parameters)")
    fig.tight_layout()
    path = out / "data_and_truth.png"
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
