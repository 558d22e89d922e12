"""The quickstart runs end to end (its --quick mode) and writes its figures."""

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


def test_quickstart(tmp_path, capsys):
    _load("quickstart").main(["--quick", "--out", str(tmp_path)])
    _assert_figure(tmp_path / "fit_and_gates.png")
    _assert_figure(tmp_path / "trace.png")
    out = capsys.readouterr().out
    m = re.search(r"MAP log-likelihood: (-?[\d.]+) truth: (-?[\d.]+)", out)
    assert m, out
    assert float(m.group(1)) >= float(m.group(2)) - 5
    assert "divergences: 0" in out
