"""The over-fitted classification MLE around an atom with a nonzero expert slope converges like n^-1/2 in
the exponent-2 loss for the softmax **and** the modified (tanh) gate (docs/theory.md: the equation
d2u/(dbeta1 db) = du/da does not weaken the cell's second-order identifiability; only the Gaussian
expert's heat equation does). Reduced run of examples/classification_binned_mle.py: x on an 81-point
grid, so n = 1e13 and 1e15 cost what n = 1e4 does, and the fits are the MLE (gradient <= 1e-13)."""

import jax
import numpy as np
import pytest

from tests.example_runner import load_example


@pytest.mark.parametrize("gate", ["softmax", "tanh"])
def test_sloped_split_mle_falls_like_root_n_for_both_gates(gate):
    ex = load_example("classification_binned_mle")
    with jax.enable_x64(True):
        res = ex.run_gate(gate, [1e13, 1e15], reps=4, points=81, seed=0, max_iter=50000, gtol=1e-13,
                          start_n=1e4)
    assert max(max(g) for g in res["grad"]) <= 1e-13          # every fit reached the first-order condition
    loss = np.asarray(res["loss"])                            # (2, 4)
    assert np.all(np.isfinite(loss)) and np.all(loss < 0.01)  # near the truth at both n
    slope = np.log(loss.mean(1)[1] / loss.mean(1)[0]) / np.log(100.0)
    assert -0.8 < slope < -0.3, slope                          # n^-1/2 in the exponent-2 loss
