"""Saving and loading fits and posteriors; a fresh interpreter gives identical predictions."""

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import bayesmoe as bm
from tests._posterior import readme_posterior

ROOT = Path(__file__).resolve().parents[1]
HAS_H5PY = __import__("importlib").util.find_spec("h5py") is not None


@pytest.fixture(scope="module")
def saved_fit(tmp_path_factory):
    model, x, y, _ = readme_posterior()
    xdf = pd.DataFrame({"dose": x[:, 0]})
    fit = bm.fit_mle(model, xdf, y, n_starts=2, seed=1)
    path = tmp_path_factory.mktemp("fit") / "fit.nc"
    fit.save(path)
    return fit, xdf, y, path


def test_fit_round_trip_in_process(saved_fit):
    fit, xdf, y, path = saved_fit
    back = bm.FitResult.load(path)
    assert back.model == fit.model
    for k, v in fit.params.items():
        np.testing.assert_array_equal(back.params[k], v)
    for k in ("log_likelihood", "aic", "bic", "icl", "n_params", "n_obs", "converged", "method", "prior"):
        assert getattr(back, k) == getattr(fit, k), k
    assert back.data.feature_names == ("dose",)
    np.testing.assert_array_equal(back.data.x, fit.data.x)
    np.testing.assert_array_equal(back.data.y, fit.data.y)
    # the stored log-likelihood is the model's at the stored params and data
    np.testing.assert_allclose(back.pointwise_log_likelihood().sum(), fit.log_likelihood, rtol=1e-5)
    with xr.open_dataset(path) as ds:
        spec = json.loads(ds.attrs["bayesmoe_model"])
    assert spec == json.loads(json.dumps(fit.model.spec()))


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="path"):
        bm.FitResult.load(tmp_path / "missing.nc")
    other = tmp_path / "other.nc"
    xr.Dataset({"a": ("i", np.arange(3.0))}).to_netcdf(other, engine=bm.inference.io.netcdf_engine())
    with pytest.raises(ValueError, match="not a saved bayesmoe fit"):
        bm.FitResult.load(other)
    with pytest.raises(TypeError, match="path"):
        bm.FitResult.load(3)


def _scalar_ok(v) -> bool:
    return isinstance(v, (str, int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def test_posterior_attrs_are_netcdf_safe():
    """netCDF stores str, numbers and arrays of them: no booleans, None or dicts in any attrs."""
    _, _, _, dt = readme_posterior()
    for node in dt.subtree:
        for k, v in node.attrs.items():
            ok = _scalar_ok(v) or (isinstance(v, (list, tuple, np.ndarray)) and all(_scalar_ok(e) for e in v))
            assert ok, (node.path, k, v)


def test_summary_of_sampled_posterior_is_clean():
    """No constant site (the softmax gate's reference row) in the posterior: no NaN r_hat, no warning."""
    model, x, _, dt = readme_posterior()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = az.summary(dt)
    assert not s["r_hat"].isna().any()
    assert "gate_coef_free[0, x0]" in s.index and not any(i.startswith("gate_coef[") for i in s.index)
    post = dt.posterior.to_dataset()
    assert post["gate_coef_free"].dims == ("chain", "draw", "expert_free", "feature")
    # the full sites come back through the model
    full = model.complete_params({k: post[k].values for k in post.data_vars}, x.shape[1])
    np.testing.assert_array_equal(np.asarray(full["gate_coef"])[..., -1, :], 0.0)
    np.testing.assert_array_equal(np.asarray(full["gate_coef"])[..., :-1, :], post["gate_coef_free"].values)


_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np, xarray as xr
    import bayesmoe as bm
    fit_path, tree_path, x_path = sys.argv[1:4]
    x_new = np.load(x_path)
    fit = bm.FitResult.load(fit_path)
    p = fit.predict(x_new)
    out = {"fit_mean": np.asarray(p.mean).tolist(), "fit_lower": np.asarray(p.lower).tolist(),
           "fit_gate": np.asarray(p.gate_probs).tolist(),
           "fit_ll": np.asarray(fit.pointwise_log_likelihood()).tolist()}
    if tree_path != "-":
        dt = xr.open_datatree(tree_path, engine="h5netcdf")
        model = bm.MoE.from_datatree(dt)
        pp = bm.predict(dt, x_new, seed=3)
        out["tree_y"] = pp.posterior_predictive["y"].values.ravel().tolist()
        out["tree_ll"] = dt.log_likelihood["y"].values.ravel().tolist()
        out["model"] = json.dumps(model.spec())
    print(json.dumps(out))
""")


def test_fresh_interpreter_gives_identical_predictions(saved_fit, tmp_path):
    fit, _, _, fit_path = saved_fit
    model, _, _, dt = readme_posterior()
    x_new = np.linspace(-2.0, 2.0, 7)[:, None]
    np.save(tmp_path / "x.npy", x_new)
    tree_path = "-"
    if HAS_H5PY:
        tree_path = str(tmp_path / "posterior.nc")
        dt.to_netcdf(tree_path, engine="h5netcdf")
    res = subprocess.run([sys.executable, "-c", _CHILD, str(fit_path), tree_path, str(tmp_path / "x.npy")],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    p = fit.predict(x_new)
    np.testing.assert_array_equal(got["fit_mean"], np.asarray(p.mean))
    np.testing.assert_array_equal(got["fit_lower"], np.asarray(p.lower))
    np.testing.assert_array_equal(got["fit_gate"], np.asarray(p.gate_probs))
    np.testing.assert_array_equal(got["fit_ll"], fit.pointwise_log_likelihood())
    if HAS_H5PY:
        pp = bm.predict(dt, x_new, seed=3)
        np.testing.assert_array_equal(got["tree_y"], pp.posterior_predictive["y"].values.ravel())
        np.testing.assert_array_equal(got["tree_ll"], dt.log_likelihood["y"].values.ravel())
        assert json.loads(got["model"]) == json.loads(json.dumps(model.spec()))


@pytest.mark.skipif(not HAS_H5PY, reason="h5netcdf needs h5py to write netCDF4 files (not installed)")
def test_sampled_tree_round_trips_through_netcdf(tmp_path):
    model, _, _, dt = readme_posterior()
    dt.to_netcdf(tmp_path / "t.nc", engine="h5netcdf")
    back = xr.open_datatree(tmp_path / "t.nc", engine="h5netcdf")
    assert bm.MoE.from_datatree(back) == model
    for g in ("posterior", "log_likelihood", "sample_stats", "observed_data", "constant_data"):
        xr.testing.assert_identical(back[g].to_dataset().load(), dt[g].to_dataset())
