"""The classification and Gaussian-gated examples run end to end (--quick), write non-blank figures and
fit at least as well as the truth (up to a margin)."""

import importlib.util
import re
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _assert_figure(path):
    assert path.exists(), path
    img = mpimg.imread(path)
    assert img.shape[0] > 300 and img.shape[1] > 300
    # not a blank canvas: many distinct colours were drawn
    assert len(np.unique(img.reshape(-1, img.shape[-1])[:, :3], axis=0)) > 50


def _loglik(out: str, label: str) -> tuple[float, float]:
    m = re.search(rf"^{re.escape(label)} log-likelihood: (-?[\d.]+) truth: (-?[\d.]+)", out, re.M)
    assert m, f"no '{label} log-likelihood: ... truth: ...' line in:\n{out}"
    return float(m.group(1)), float(m.group(2))


def test_classification_modified_softmax(tmp_path, capsys):
    _load("classification_modified_softmax").main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    _assert_figure(tmp_path / "fit_and_gates.png")
    _assert_figure(tmp_path / "rank.png")
    fitted, truth = _loglik(out, "MAP")
    assert fitted >= truth - 5, (fitted, truth)
    assert "r_hat" in out and "gate_coef" in out


def test_gaussian_gated(tmp_path, capsys):
    _load("gaussian_gated").main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    _assert_figure(tmp_path / "fit_and_gates.png")
    _assert_figure(tmp_path / "trace.png")
    fitted, truth = _loglik(out, "MLE (lbfgs)")
    assert fitted >= truth - 5, (fitted, truth)
    if "MLE (em)" in out:
        em, _ = _loglik(out, "MLE (em)   ")
        assert em >= truth - 5 and abs(em - fitted) < 5, (em, fitted)
    assert "elpd_loo" in out and "expert_scale" in out
