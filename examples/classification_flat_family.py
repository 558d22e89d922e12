"""Softmax vs modified softmax gate where the paper says they differ: the over-fitted cell of an expert
with a vanishing slope (a* = 0), fitted to the MLE at n up to 1e16 (issue 9, docs/theory.md).

Around an atom with a* = 0, two fitted atoms with its gate slope and zero expert slopes are a
two-component Bernoulli mixture under one gate: every masses w1 + w2 = w* and intercepts with
w1 sigma(b1) + w2 sigma(b2) = w* sigma(b*) give the true conditional (the **flat family**, for any gate),
so the intercepts b of that cell cannot be estimated by anything. What can be estimated are the gate slopes
beta1 and the expert slopes a of the cell. The softmax gate's interaction
d2u / (dbeta1 db) = du / da puts the first-order change of the gate slopes (times the O(1) intercept
differences of a point of the family) on the same function, x exp(beta1* x), as the expert slopes' first
order: the gate slopes are identified only at the second order, like n^-1/4. The modified gate puts them
on tanh(x) exp(beta1* tanh(x)), a different function: identified at the first order, like n^-1/2. The
expert slopes are second-order for both (n^-1/4).

Design: that of ``examples/classification_binned_mle.py --split vanishing`` (x on 81 grid points, class
counts, L-BFGS in float64 to a largest gradient entry of 1e-13, each gate its own data), with two
changes. (1) The starts: near-true starts with the noise of n = ``--start-n`` (1e8), whose two split
atoms are then moved along the flat family to b1 = b* - u (u uniform in [0.3, 0.8] per replication)
and the b2 of equal masses, so that every fit starts near a point of the family whose intercepts differ
(at b1 = b2 = b* the gate slopes lose their first-order term for the modified gate too). (2) The loss:
``orders={"beta1": 1, "a": 2, "b": None}`` in the over-fitted cell (the intercepts left out: not
identifiable; exponents at which each block's term falls like n^-1/2 under the modified gate's rates),
singly fitted atoms with every block at exponent 1, the mass term, minimised over the gate translation.
Expected: slope -1/2 (modified gate), -1/4 (softmax).

Run: python examples/classification_flat_family.py [--quick] [--reps R] [--grid N ...] [--start-n N]
     [--max-iter M] [--seed S] [--out out/classification_flat_family]
"""

from __future__ import annotations

import numpy as np
from classification_binned_mle import TRUTHS, run_study, study_parser

#: the loss of the flat-family study: gate slopes at exponent 1, expert slopes at 2, intercepts left out
#: in the over-fitted cell (the modified gate's rates make each term fall like n^-1/2)
FLAT = {"beta1": 1, "a": 2, "b": None}
#: the over-fitted model's atoms that start on the split (vanishing-slope) true atom 0
SPLIT = (0, 1)


def _logit(p):
    return np.log(p / (1.0 - p))


def flat_family_starts(shift=(0.3, 0.8)):
    """``move_starts`` for :func:`classification_binned_mle.run_study`: per replication, the split
    atoms' class-0 intercepts go to b1 = b* - u (u uniform on ``shift``) and to the b2 that keeps
    sigma(b1) + sigma(b2) = 2 sigma(b*) (equal masses: a point of the flat family), plus the start
    noise they had."""
    b_star = float(TRUTHS["vanishing"]["expert_intercept"][0, 0])
    p_star = 1.0 / (1.0 + np.exp(-b_star))

    def move(starts, rng):
        ei = np.array(starts["expert_intercept"], float)
        u = rng.uniform(*shift, size=ei.shape[0])
        b1 = b_star - u
        b2 = _logit(2.0 * p_star - 1.0 / (1.0 + np.exp(-b1)))
        ei[:, SPLIT[0], 0] += b1 - b_star
        ei[:, SPLIT[1], 0] += b2 - b_star
        return {**starts, "expert_intercept": ei}
    return move


def main(argv=None) -> dict:
    ap = study_parser(__doc__, grid=[1e13, 1e14, 1e15, 1e16], start_n=1e8,
                      out="out/classification_flat_family", quick="4 replications, n = 1e13 and 1e16")
    args = ap.parse_args(argv)
    if args.quick:
        args.reps, args.grid = 4, [1e13, 1e16]
    args.split = "vanishing"
    return run_study(args, orders=FLAT, move_starts=flat_family_starts(), name="classification_flat_family",
                     title=f"over-fit K = 3 at the vanishing slope, x on {args.points} points",
                     n_from=args.grid[0], guides=(("tanh", -0.5), ("softmax", -0.25)),
                     ylabel="loss: beta1^1 + a^2, b left out (translation inf)")


if __name__ == "__main__":
    main()
