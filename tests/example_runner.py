"""Shared helpers of the example tests: load an example script, check a written figure."""

import importlib.util
import re
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load_example(name: str):
    """Import ``examples/<name>.py`` as a module (its ``main(argv)`` is then callable); ``examples/`` goes
    on ``sys.path``, as when the script runs, so that an example can import its sibling scripts."""
    if str(ROOT / "examples") not in sys.path:
        sys.path.append(str(ROOT / "examples"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def assert_figure(path: Path) -> None:
    """The figure exists, is reasonably large, and is not a blank canvas (many distinct colours)."""
    assert path.exists(), path
    img = mpimg.imread(path)
    assert img.shape[0] > 300 and img.shape[1] > 300
    assert len(np.unique(img.reshape(-1, img.shape[-1])[:, :3], axis=0)) > 50


def printed_loglik(out: str, label: str) -> tuple[float, float]:
    """Parse a printed line ``<label> log-likelihood: X truth: Y``."""
    m = re.search(rf"^{re.escape(label)} log-likelihood: (-?[\d.]+) truth: (-?[\d.]+)", out, re.M)
    assert m, f"no '{label} log-likelihood: ... truth: ...' line in:\n{out}"
    return float(m.group(1)), float(m.group(2))
