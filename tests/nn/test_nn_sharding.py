"""Multi-device: expert-sharded layer and data-parallel training on 4 simulated devices."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from bayesmoe.nn import make_mesh

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@pytest.fixture(scope="module")
def sharded_result():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(HERE / "nn_sharded_script.py")], env=env,
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


@pytest.mark.parametrize("impl", ["dense", "sorted", "capacity"])
def test_sharded_layer_matches_single_device(sharded_result, impl):
    r = sharded_result[impl]
    assert sharded_result["n_devices"] == 4
    assert r["max_abs_diff"] < 1e-5
    assert r["w_in_spec"] == "P('expert',)" and r["w_in_shard_shape"] == [2, 16, 32]
    assert r["embedding_spec"] == "P()" and r["y_devices"] == 4


def test_data_parallel_training_matches_single_device(sharded_result):
    single, mesh = (sharded_result["train_losses"][k] for k in ("single", "mesh"))
    assert len(single) == len(mesh) == 3 and single[0] > single[-1]
    for a, b in zip(single, mesh, strict=True):
        assert abs(a - b) < 1e-5 * abs(a)
    assert sharded_result["lm_expert_spec"] == "P('expert',)"


def test_make_mesh_shapes_and_errors():
    n = len(jax.devices())
    mesh = make_mesh(n_expert=1)
    assert mesh.axis_names == ("data", "expert") and mesh.shape["data"] == n
    with pytest.raises(ValueError, match="n_expert"):
        make_mesh(n_expert=n + 1)
    with pytest.raises(ValueError, match="n_data"):
        make_mesh(n_data=n + 1, n_expert=1)
