"""The over-fitted classification MLE, x on an 81-point grid so that n = 1e13 .. 1e16 cost what n = 1e4
does, and the fits are the MLE (gradient <= 1e-13); docs/theory.md.

- Around an atom with a nonzero expert slope it converges like n^-1/2 in the exponent-2 loss for the
  softmax **and** the modified (tanh) gate: the equation d2u/(dbeta1 db) = du/da does not weaken that
  cell's second-order identifiability (reduced run of examples/classification_binned_mle.py).
- Around the vanishing-slope atom, near a point of the flat family, the modified gate's gate slopes
  converge like n^-1/2 and the softmax gate's like n^-1/4 (reduced run of
  examples/classification_flat_family.py)."""

import json

import jax
import numpy as np

from tests.example_runner import assert_figure, load_example


def _run_main(name: str, argv: list[str]) -> dict:
    """The example's ``main(argv)``; it switches float64 on globally, which is undone afterwards."""
    before = bool(jax.config.jax_enable_x64)
    try:
        return load_example(name).main(argv)
    finally:
        jax.config.update("jax_enable_x64", before)


def test_sloped_split_mle_falls_like_root_n_for_both_gates(tmp_path):
    record = _run_main("classification_binned_mle",
                       ["--reps", "4", "--grid", "1e13", "1e15", "--out", str(tmp_path)])
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


def test_vanishing_slope_cell_modified_gate_is_faster(tmp_path):
    """Around the vanishing-slope atom (a* = 0), with the fits near a point of the flat family whose
    intercepts differ, the softmax gate's interaction d2u/(dbeta1 db) = du/da leaves the split cell's gate
    slopes identified at the second order only (n^-1/4), the modified gate's at the first (n^-1/2): the
    modified gate's loss (gate slopes at exponent 1, expert slopes at 2, intercepts left out) falls
    faster. Reduced run of examples/classification_flat_family.py (4 replications, n = 1e13 and 1e16)."""
    record = _run_main("classification_flat_family", ["--quick", "--out", str(tmp_path)])
    slope, beta1_slope, b_slope = {}, {}, {}
    for gate in ("softmax", "tanh"):
        res = record["results"][gate]
        assert res["n"] == [10**13, 10**16]
        assert max(max(g) for g in res["grad"]) <= 1e-13      # the MLE's first-order condition
        loss = np.asarray(res["loss"])
        assert np.all(np.isfinite(loss)) and np.all(loss < 0.05)
        slope[gate] = np.log(loss.mean(1)[1] / loss.mean(1)[0]) / np.log(1000.0)
        # the same ordering in the raw distances (numpy, no Voronoi loss): largest |d beta1| of the cell
        d = {k: np.asarray(v).mean(1) for k, v in res["dist"].items()}
        beta1_slope[gate] = np.log(d["beta1"][1] / d["beta1"][0]) / np.log(1000.0)
        b_slope[gate] = np.log(d["b"][1] / d["b"][0]) / np.log(1000.0)
    assert -0.8 < slope["tanh"] < -0.4, slope                 # n^-1/2
    assert -0.35 < slope["softmax"] < -0.1, slope             # n^-1/4
    assert slope["tanh"] < slope["softmax"] - 0.15, slope     # the modified gate is steeper
    assert beta1_slope["tanh"] < -0.4 < -0.35 < beta1_slope["softmax"], beta1_slope
    assert all(abs(v) < 0.1 for v in b_slope.values()), b_slope   # the intercepts do not converge (flat)
    assert_figure(tmp_path / "classification_flat_family.png")
    saved = json.loads((tmp_path / "classification_flat_family.json").read_text())
    assert saved["summary"]["tanh"]["slope"] == record["summary"]["tanh"]["slope"]
