"""The examples run end to end (their --quick mode) and write their figures."""

import importlib.util
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
    _assert_figure(tmp_path / "data_and_truth.png")
    assert "mean log-likelihood" in capsys.readouterr().out
