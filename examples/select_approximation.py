"""Mixtures of experts approximate any conditional density as K grows (arXiv 2012.02385, 2008.09787).

The target is not a Gaussian MoE: x ~ U(-1, 1) and, given x, y is a two-part mixture with weight
w(x) = sigmoid(4 x) of a Gaussian around sin(3 x) (sd 0.15) and of a right-skewed Gamma(2, 0.25)
shifted to start at -0.5 - 0.5 x. We fit softmax-gated Gaussian experts (linear means) by maximum
likelihood for K = 1..Kmax on n draws and report, against K,

* the L1 error of the conditional density, mean over an x grid of the integral |p(y|x) - p_K(y|x)| dy
  (quadrature on a y grid), and
* the KL divergence KL(p, p_K), estimated on fresh draws of the target: mean of log p - log p_K,

and plot the fitted conditional densities at three x and both errors against K.

Run: python examples/select_approximation.py [--quick] [--n 2000] [--kmax 8] [--out out/approximation]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import special, stats  # noqa: E402

import bayesmoe as bm  # noqa: E402

SHAPE, SCALE = 2.0, 0.25


def _weight(x):
    return special.expit(4 * x)


def target_logpdf(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """log p(y | x) of the target (x and y broadcast)."""
    w = _weight(x)
    a = np.log(w) + stats.norm.logpdf(y, np.sin(3 * x), 0.15)
    b = np.log1p(-w) + stats.gamma.logpdf(y - (-0.5 - 0.5 * x), SHAPE, scale=SCALE)
    return np.logaddexp(a, b)


def target_draws(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, n)
    first = rng.uniform(size=n) < _weight(x)
    y = np.where(first, rng.normal(np.sin(3 * x), 0.15),
                 -0.5 - 0.5 * x + rng.gamma(SHAPE, SCALE, n))
    return x, y


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (CI): n 500, K <= 4")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--kmax", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/approximation")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.kmax = 500, 4
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x, y = target_draws(args.n, args.seed)
    xt, yt = target_draws(5000, args.seed + 1)
    xg = np.linspace(-0.9, 0.9, 19)
    yg = np.linspace(-2.5, 3.0, 1101)
    ref = np.exp(target_logpdf(xg[:, None], yg[None, :]))
    ks = list(range(1, args.kmax + 1))
    make = lambda K: bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), K)  # noqa: E731
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sel = bm.select_n_experts(make, x, y, ks, "bic", seed=args.seed, n_starts=4)
    rows = []
    fig, axs = plt.subplots(1, 4, figsize=(17, 3.8))
    for K in ks:
        p = sel.fits[K].params
        model = make(K)
        dens = np.exp(np.asarray(model.log_likelihood(p, np.repeat(xg, yg.size), np.tile(yg, xg.size)),
                                 float)).reshape(xg.size, yg.size)
        l1 = float(np.mean(np.trapezoid(np.abs(dens - ref), yg, axis=1)))
        lq = np.asarray(model.log_likelihood(p, xt, yt), float)
        diff = target_logpdf(xt, yt) - lq
        kl, se = float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(diff.size))
        rows.append({"K": K, "l1": l1, "kl": kl, "kl_se": se, "bic": sel.fits[K].bic})
        for j, i in enumerate((3, 9, 15)):
            if K in (1, 2, ks[-1]):
                axs[j].plot(yg, dens[i], label=f"K = {K}")
    for j, i in enumerate((3, 9, 15)):
        axs[j].plot(yg, ref[i], "k--", label="target")
        axs[j].set_title(f"p(y | x = {xg[i]:.1f})")
        axs[j].legend(fontsize="small")
    axs[3].plot(ks, [r["l1"] for r in rows], "o-", label="L1")
    axs[3].plot(ks, [r["kl"] for r in rows], "s-", label="KL")
    axs[3].set_yscale("log")
    axs[3].set_xlabel("K")
    axs[3].legend()
    fig.tight_layout()
    fig.savefig(out / "approximation.png", dpi=90)
    plt.close(fig)
    print(f"n = {args.n}; errors of the maximum-likelihood fit against K (BIC picks K = {sel.best}):")
    print("K    L1       KL (se)")
    for r in rows:
        print(f"{r['K']:<4d} {r['l1']:.4f}   {r['kl']:.4f} ({r['kl_se']:.4f})")
    print(f"wall time {time.time() - t0:.1f} s")
    (out / "errors.json").write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
