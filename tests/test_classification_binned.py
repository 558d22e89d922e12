"""The over-fitted classification MLE around an atom with a nonzero expert slope converges like n^-1/2 in
the exponent-2 loss for the softmax **and** the modified (tanh) gate (docs/theory.md: the equation
d2u/(dbeta1 db) = du/da does not weaken the cell's second-order identifiability; only the Gaussian
expert's heat equation does). Reduced run of examples/classification_binned_mle.py: x on an 81-point
grid, so n = 1e13 and 1e15 cost what n = 1e4 does, and the fits are the MLE (gradient <= 1e-13)."""

import json

import jax
import numpy as np

from tests.example_runner import assert_figure, load_example


def test_sloped_split_mle_falls_like_root_n_for_both_gates(tmp_path):
    ex = load_example("classification_binned_mle")
    before = bool(jax.config.jax_enable_x64)
    try:                                                      # main() switches float64 on globally
        record = ex.main(["--reps", "4", "--grid", "1e13", "1e15", "--out", str(tmp_path)])
    finally:
        jax.config.update("jax_enable_x64", before)
    for gate in ("softmax", "tanh"):
        res = record["results"][gate]
        assert max(max(g) for g in res["grad"]) <= 1e-13      # every fit reached the first-order condition
        loss = np.asarray(res["loss"])                        # (2 n, 4 replications)
        assert np.all(np.isfinite(loss)) and np.all(loss < 0.01)   # near the truth at both n
        slope = np.log(loss.mean(1)[1] / loss.mean(1)[0]) / np.log(100.0)
        assert -0.8 < slope < -0.3, (gate, slope)             # n^-1/2 in the exponent-2 loss
        assert np.isclose(record["summary"][gate]["slope"], slope)   # the script's own OLS slope
    saved = json.loads((tmp_path / "classification_binned.json").read_text())
    assert saved["results"]["tanh"]["loss"] == record["results"]["tanh"]["loss"]
    assert_figure(tmp_path / "classification_binned.png")
