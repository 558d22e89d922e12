"""Sampler diagnostics: the pure functions against hand computations, the warnings of `sample`
(a pathological and a healthy run), the root attrs, and the argument checks of `sample`."""

import io
import json
import math
import warnings

import arviz as az
import numpy as np
import pytest
import xarray as xr

import bayesmoe as bm
from bayesmoe.inference import diagnostics as dg
from bayesmoe.inference import mcmc
from bayesmoe.inference.diagnostics import SamplerWarning

TRUTH = {"gate_intercept": np.array([0.0, 0.0]), "gate_coef": np.array([[2.5], [0.0]]),
         "expert_intercept": np.array([1.0, -1.0]), "expert_coef": np.array([[2.0], [-1.5]]),
         "expert_scale": np.array([0.5, 0.8])}
BAD = {"target_accept_prob": 0.3, "max_tree_depth": 2}


# ----------------------------------------------------------------------------- pure functions
def _ar1(rng, n_chain, n_draw, rho):
    e = np.zeros((n_chain, n_draw))
    e[:, 0] = rng.normal(size=n_chain)
    for t in range(1, n_draw):
        e[:, t] = rho * e[:, t - 1] + math.sqrt(1 - rho ** 2) * rng.normal(size=n_chain)
    return e


def _ebfmi_by_hand(energy):
    out = []
    for e in np.asarray(energy, float):
        num = sum((e[i] - e[i - 1]) ** 2 for i in range(1, len(e)))
        mean = sum(e) / len(e)
        out.append(num / sum((v - mean) ** 2 for v in e))
    return np.array(out)


def test_ebfmi_equals_hand_computation_and_arviz():
    rng = np.random.default_rng(0)
    energy = 50 + 3 * _ar1(rng, 3, 300, 0.2)
    got = dg.ebfmi(energy)
    np.testing.assert_allclose(got, _ebfmi_by_hand(energy), rtol=1e-12)
    np.testing.assert_allclose(got, np.asarray(az.bfmi(energy)).ravel(), rtol=1e-10)
    # an AR(1) energy has E-BFMI -> 2 (1 - rho): low for a sticky chain, near 1 for white noise
    sticky = dg.ebfmi(_ar1(rng, 2, 20000, 0.95))
    np.testing.assert_allclose(sticky, 0.1, atol=0.02)
    assert np.isnan(dg.ebfmi(np.ones((1, 5)))[0])


def test_tree_depth_and_saturation():
    # 2^d - 1 leapfrog steps for a full tree of depth d; an early-stopped last doubling does not count
    np.testing.assert_array_equal(dg.tree_depth([1, 3, 7, 1023, 5, 2]), [1, 2, 3, 10, 2, 1])
    assert dg.tree_depth_saturation(dg.tree_depth([[3, 3, 1, 2]]), 2) == 0.5
    assert dg.count_divergent([[True, False], [True, True]]) == 3


def _posterior(rng, shifts):
    """Two chains of 400 draws; `a` with per-chain shifts, `b` healthy, `c` with a constant element."""
    c = np.stack([rng.normal(size=(2, 400)), np.zeros((2, 400))], axis=-1)
    return xr.Dataset({"a": (("chain", "draw"), rng.normal(size=(2, 400)) + np.array(shifts)[:, None]),
                       "b": (("chain", "draw"), rng.normal(size=(2, 400))),
                       "c": (("chain", "draw", "expert"), c),
                       "zero": (("chain", "draw", "expert"), np.zeros((2, 400, 2)))})


def test_rhat_and_ess_per_site_skip_constants():
    post = _posterior(np.random.default_rng(1), [0.0, 3.0])
    rhat, bulk, tail = dg.site_rhat(post), dg.site_ess(post, "bulk"), dg.site_ess(post, "tail")
    assert set(rhat) == set(bulk) == set(tail) == {"a", "b", "c"}  # the all-zero site has none
    for name in ("a", "b"):
        assert rhat[name] == pytest.approx(float(az.rhat(post[name])))
        assert bulk[name] == pytest.approx(float(az.ess(post[name], method="bulk")))
        assert tail[name] == pytest.approx(float(az.ess(post[name], method="tail")))
    assert rhat["c"] == pytest.approx(float(az.rhat(post["c"].isel(expert=0))))
    assert rhat["a"] > 1.5 and rhat["b"] < 1.01


def test_messages_name_the_sites_and_the_remedy():
    rng = np.random.default_rng(2)
    post = _posterior(rng, [0.0, 3.0])
    energy = np.stack([rng.normal(size=400), _ar1(rng, 1, 400, 0.97)[0]])
    n_steps = np.full((2, 400), 7)
    n_steps[0, :40] = 15
    div = np.zeros((2, 400), bool)
    div[1, :7] = True
    found = dg.diagnose(post, energy, div, n_steps, max_tree_depth=4)
    msgs = dg.messages(found)
    assert len(msgs) == 5
    divergent, rhat, ess, depth, ebfmi = msgs
    assert divergent.startswith("7 of 800 transitions") and "`target_accept_prob`" in divergent
    assert "R-hat above 1.01" in rhat and "a (" in rhat and "b (" not in rhat and "label switching" in rhat
    assert "bulk ESS for a (" in ess and "b (" not in ess
    assert "40 of 800" in depth and "5.0%" in depth and "`max_tree_depth`" in depth
    assert "chain 1" in ebfmi and "chain 0" not in ebfmi and "eparametrise" in ebfmi
    healthy = dg.diagnose(post[["b"]], energy[:1].repeat(2, 0), np.zeros((2, 400), bool),
                          np.full((2, 400), 7), max_tree_depth=4)
    assert dg.messages(healthy) == []
    short = dg.diagnose(post.isel(draw=slice(0, 3)), energy[:, :3], div[:, :3], n_steps[:, :3], 4)
    assert short["rhat"] == short["ess_bulk"] == {}
    assert any(m.startswith("Only 3 draw(s) per chain") and "`num_samples`" in m for m in dg.messages(short))


# ----------------------------------------------------------------------------- sample(): warnings
@pytest.fixture(scope="module")
def data():
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2)
    x = np.random.default_rng(0).uniform(-2, 2, size=(200, 1))
    y, _ = model.simulate(0, TRUTH, x)
    return model, x, np.asarray(y)


def _run(data, **kw):
    model, x, y = data
    args = {"num_chains": 2, "num_warmup": 150, "num_samples": 150, "seed": 1, "n_starts": 4,
            "progress_bar": False, "posterior_predictive": False} | kw
    return bm.sample(model, x, y, **args)


@pytest.fixture(scope="module")
def bad_run(data):
    with pytest.warns(SamplerWarning) as record:
        dt = _run(data, **BAD)
    return dt, [str(w.message) for w in record if issubclass(w.category, SamplerWarning)]


def test_bad_settings_warn(bad_run):
    dt, msgs = bad_run
    n_div = int(dt.sample_stats["diverging"].sum())
    n = dt.sample_stats["diverging"].size
    assert n_div > 0
    assert any(m.startswith(f"{n_div} of {n} transitions after warmup were divergent")
               and "`target_accept_prob`" in m for m in msgs), msgs
    assert any("maximum tree depth 2" in m and "`max_tree_depth`" in m for m in msgs), msgs


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # arviz on the constant gate row
def test_stored_diagnostics_equal_hand_computations(bad_run):
    dt, msgs = bad_run
    ss = dt.sample_stats
    found = json.loads(dt.attrs["bayesmoe_diagnostics"])
    assert dt.attrs["bayesmoe_n_divergent"] == found["n_divergent"] == int(np.sum(ss["diverging"].to_numpy()))
    np.testing.assert_allclose(found["ebfmi"], _ebfmi_by_hand(ss["energy"].to_numpy()), rtol=1e-10)
    assert found["tree_depth_saturation"] == pytest.approx(float(np.mean(ss["n_steps"].to_numpy() >= 3)))
    post = dt.posterior.to_dataset()
    rhat = az.rhat(post)
    assert found["rhat"]["expert_coef"] == pytest.approx(float(rhat["expert_coef"].max()))
    assert found["rhat"]["gate_coef_free"] == pytest.approx(float(rhat["gate_coef_free"].max()))
    assert dt.attrs["bayesmoe_max_rhat"] == pytest.approx(max(found["rhat"].values()))
    assert found["warnings"] == msgs and dt.attrs["bayesmoe_n_warnings"] == len(msgs)


def test_attrs_are_netcdf_safe(bad_run):
    dt, _ = bad_run
    assert {"bayesmoe_diagnostics", "bayesmoe_n_divergent", "bayesmoe_min_ebfmi"} <= set(dt.attrs)
    for key, value in dt.attrs.items():
        assert type(value) in (str, int, float), (key, type(value))
    json.loads(dt.attrs["bayesmoe_diagnostics"],
               parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    xr.Dataset(attrs=dict(dt.attrs)).to_netcdf(io.BytesIO(), engine="scipy")  # raises on bools


def test_quiet_silences_but_keeps_attrs(data):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        dt = _run(data, quiet=True, **BAD)
    assert not [w for w in record if issubclass(w.category, SamplerWarning)]
    assert dt.attrs["bayesmoe_n_warnings"] >= 2
    assert dt.attrs["bayesmoe_n_divergent"] == int(dt.sample_stats["diverging"].sum()) > 0


def test_healthy_run_is_silent(data):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        dt = _run(data, num_warmup=400, num_samples=1000)
    assert not [str(w.message) for w in record if issubclass(w.category, SamplerWarning)]
    assert dt.attrs["bayesmoe_n_warnings"] == 0 and dt.attrs["bayesmoe_n_divergent"] == 0
    assert dt.attrs["bayesmoe_max_rhat"] < 1.01


# ----------------------------------------------------------------------------- sample(): arguments
class _Reached(Exception):
    pass


@pytest.fixture
def nothing_compiles(monkeypatch):
    def stop(*args, **kwargs):
        raise _Reached("compilation reached")

    for name in ("MCMC", "NUTS", "fit_map"):
        monkeypatch.setattr(mcmc, name, stop)


BAD_ARGUMENTS = [
    ("target_accept_prob", 1.5, "(0, 1)"), ("target_accept_prob", 0, "(0, 1)"),
    ("target_accept_prob", 1.0, "(0, 1)"), ("target_accept_prob", float("nan"), "(0, 1)"),
    ("target_accept_prob", "0.8", "(0, 1)"), ("target_accept_prob", True, "(0, 1)"),
    ("init_jitter", -1, ">= 0"), ("init_jitter", float("nan"), "finite"),
    ("init_jitter", float("inf"), "finite"), ("init_jitter", None, ">= 0"),
    ("max_tree_depth", 0, ">= 1"), ("max_tree_depth", 2.5, ">= 1"), ("max_tree_depth", True, ">= 1"),
    ("n_starts", 0, ">= 1"), ("n_starts", 1.5, ">= 1"),
    ("num_chains", 0, ">= 1"), ("num_chains", 2.0, ">= 1"),
    ("num_samples", 0, ">= 1"), ("num_samples", -5, ">= 1"),
    ("num_warmup", -1, ">= 0"), ("num_warmup", 10.0, ">= 0"),
    ("dense_mass", "yes", "None"), ("dense_mass", 1, "None"),
    ("chain_method", "threads", "'parallel'"), ("chain_method", 3, "'parallel'"),
    ("posterior_predictive", "no", "True or False"), ("relabel", None, "True or False"),
    ("progress_bar", 0, "True or False"), ("quiet", "yes", "True or False"),
]


@pytest.mark.parametrize("name,value,allowed", BAD_ARGUMENTS)
def test_bad_argument_rejected_before_compiling(data, nothing_compiles, name, value, allowed):
    model, x, y = data
    with pytest.raises(ValueError, match=f"`{name}`") as err:
        bm.sample(model, x, y, **{name: value})
    assert allowed in str(err.value)


@pytest.mark.parametrize("kwargs", [
    {"target_accept_prob": np.float32(0.9), "init_jitter": np.float64(0.1), "max_tree_depth": np.int32(8),
     "n_starts": np.int64(2), "num_chains": np.int64(2), "num_samples": np.int16(10),
     "num_warmup": np.uint8(0)},
    {"target_accept_prob": 0.99, "init_jitter": 0, "dense_mass": np.bool_(False), "quiet": np.bool_(True),
     "relabel": False, "posterior_predictive": False, "progress_bar": False, "chain_method": None},
])
def test_numpy_scalars_accepted(data, nothing_compiles, kwargs):
    model, x, y = data
    with pytest.raises(_Reached):
        bm.sample(model, x, y, **kwargs)
