"""A user who is told when something went wrong: degenerate fits, no finite MLE, pandas alignment,
threads, and every bad argument rejected before compilation with its name in the message."""

import threading
import warnings

import jax
import numpy as np
import pandas as pd
import pytest

import bayesmoe as bm

MODEL = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2)
TRUTH = {"gate_intercept": np.array([0.3, 0.0]), "gate_coef": np.array([[2.5], [0.0]]),
         "expert_intercept": np.array([1.0, -1.0]), "expert_coef": np.array([[2.0], [-1.5]]),
         "expert_scale": np.array([0.5, 0.8])}


@pytest.fixture(scope="module")
def data():
    x = np.random.default_rng(0).uniform(-2, 2, (300, 1))
    y = np.asarray(MODEL.simulate(1, TRUTH, x).y, float)
    return x, y


# ----------------------------------------------------------------------------- no finite MLE
@pytest.mark.parametrize("method", ["lbfgs", "em"])
def test_noiseless_step_data_is_reported(method):
    """y a noiseless step of x: each expert fits its side exactly (scale at the floor) and the gate
    separates the sides (slopes without bound): both are said, and nothing is NaN."""
    x = np.linspace(-2, 2, 200)[:, None]
    y = np.where(x[:, 0] > 0.05, 1.0, 0.0)
    with pytest.warns(bm.FitWarning):
        fit = bm.fit_mle(MODEL, x, y, method=method, n_starts=4, seed=0)
    assert np.isfinite(fit.log_likelihood) and all(np.all(np.isfinite(v)) for v in fit.params.values())
    text = " ".join(fit.warnings)
    assert "at the floor" in text or "separates" in text
    with pytest.warns(bm.FitWarning):
        mfit = bm.fit_map(MODEL, x, y, method="em", n_starts=4, seed=0)
    assert np.isfinite(mfit.log_likelihood) and all(np.all(np.isfinite(v)) for v in mfit.params.values())


def test_separated_gate_is_reported():
    rng = np.random.default_rng(3)
    x = np.r_[rng.uniform(-2, -0.5, 150), rng.uniform(0.5, 2, 150)][:, None]
    y = np.where(x[:, 0] > 0, 3.0 + x[:, 0], -3.0 - x[:, 0]) + 0.3 * rng.normal(size=300)
    with pytest.warns(bm.FitWarning, match="separates"):
        fit = bm.fit_mle(MODEL, x, y, n_starts=4, seed=0)
    assert any("separates" in w for w in fit.warnings)


def test_healthy_fit_has_no_warning(data):
    x, y = data
    with warnings.catch_warnings():
        warnings.simplefilter("error", bm.FitWarning)
        fit = bm.fit_mle(MODEL, x, y, n_starts=4, seed=0)
    assert fit.warnings == () and fit.converged


def test_spike_start_is_passed_over(data):
    """Four repeated points and a start with a third expert on them: that start climbs a spike of the
    likelihood (sd -> floor, likelihood above the regular optimum); the fit keeps a regular start."""
    x, y = data
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 3)
    x2, y2 = np.r_[x, np.zeros((4, 1))], np.r_[y, np.full(4, 0.2)]
    spike = {"gate_intercept": np.array([0.3, 0.0, -1.0]), "gate_coef": np.array([[2.5], [0.0], [0.0]]),
             "expert_intercept": np.array([1.0, -1.0, 0.2]), "expert_coef": np.array([[2.0], [-1.5], [0.0]]),
             "expert_scale": np.array([0.5, 0.8, 0.01])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bm.FitWarning)
        lone = bm.fit_mle(model, x2, y2, init=spike, n_starts=1, method="em")
        fit = bm.fit_mle(model, x2, y2, init=spike, n_starts=8, method="em", seed=0)
    assert any("at the floor" in w for w in lone.warnings)
    assert lone.log_likelihood > fit.log_likelihood + 1.0     # the spike is higher ...
    assert np.max(fit.start_log_likelihoods) == pytest.approx(lone.log_likelihood, rel=1e-6)
    assert not any("at the floor" in w for w in fit.warnings)  # ... and not chosen
    assert np.min(fit.params["expert_scale"]) > 0.3


def test_coinciding_experts_are_reported_and_passed_over(data):
    """EM from two identical experts stays on the single-regression saddle: said when it is the only
    start, passed over when another start is regular."""
    x, y = data
    saddle = {"gate_intercept": np.zeros(2), "gate_coef": np.zeros((2, 1)),
              "expert_intercept": np.array([0.2, 0.2]), "expert_coef": np.array([[0.1], [0.1]]),
              "expert_scale": np.array([2.0, 2.0])}
    with pytest.warns(bm.FitWarning, match="coincide"):
        lone = bm.fit_mle(MODEL, x, y, init=saddle, n_starts=1, method="em")
    fit = bm.fit_mle(MODEL, x, y, init=saddle, n_starts=4, method="em", seed=0)
    assert fit.warnings == () and fit.log_likelihood > lone.log_likelihood + 50


# ----------------------------------------------------------------------------- pandas and threads
def test_shuffled_series_is_matched_by_index(data):
    x, y = data
    xd = pd.DataFrame({"dose": x[:, 0]}, index=np.arange(300) + 1000)
    ys = pd.Series(y, index=xd.index)
    shuffled = ys.sample(frac=1.0, random_state=0)
    a = bm.fit_mle(MODEL, xd, ys, n_starts=2, seed=0)
    b = bm.fit_mle(MODEL, xd, shuffled, n_starts=2, seed=0)
    assert a.log_likelihood == b.log_likelihood
    other = pd.Series(y, index=np.arange(300))
    with pytest.raises(ValueError, match="indexes hold different labels"):
        bm.fit_mle(MODEL, xd, other)


def test_fits_from_threads_equal_sequential(data):
    x, y = data
    seeds = list(range(6))
    sequential = [bm.fit_map(MODEL, x, y, n_starts=2, seed=s).log_likelihood for s in seeds]
    results, errors = [None] * 6, []

    def run(i):
        try:
            results[i] = bm.fit_map(MODEL, x, y, n_starts=2, seed=seeds[i]).log_likelihood
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and results == sequential


# ----------------------------------------------------------------------------- bad arguments
def _fail(*args, **kwargs):
    raise AssertionError("compiled before rejecting the arguments")


BAD_FIT = [("scale_floor", -1), ("scale_floor", np.nan), ("jitter", -1), ("jitter", np.nan),
           ("learning_rate", -0.1), ("tol", -1e-6), ("tol", np.inf), ("seed", -1), ("seed", 2**63),
           ("seed", 1.5), ("screen_size", 0), ("n_starts", 0), ("max_steps", 0), ("method", "bfgs"),
           ("progress_bar", "yes"), ("init", {"gate_intercept": np.zeros(2)}),
           ("init", {**TRUTH, "expert_coef": np.zeros((2, 3))}),
           ("init", {**TRUTH, "expert_scale": np.array([-1.0, 1.0])}),
           ("init", {**TRUTH, "expert_intercept": np.array([np.nan, 1.0])})]


@pytest.mark.parametrize("name,value", BAD_FIT)
def test_bad_fit_arguments_name_the_argument(data, monkeypatch, name, value):
    from bayesmoe.inference import _optimize, em

    monkeypatch.setattr(_optimize, "_run_chunk", _fail)
    monkeypatch.setattr(em, "_em_jit", _fail)
    x, y = data
    with pytest.raises(ValueError, match=rf"`{name}"):
        bm.fit_mle(MODEL, x, y, **{name: value})


def test_numpy_scalars_are_accepted(data):
    x, y = data
    fit = bm.fit_mle(MODEL, x, y, tol=np.float32(1e-6), n_starts=np.int64(2), seed=np.int64(0),
                     scale_floor=np.float64(1e-3))
    assert np.isfinite(fit.log_likelihood)


def test_too_few_rows_is_a_clear_error():
    with pytest.raises(ValueError, match=r"`x` has 2 rows .* at least 9 rows"):
        bm.fit_mle(MODEL, np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="`x` has 3 rows"):
        bm.fit_map(MODEL, np.array([0.0, 1.0, 2.0]), np.array([0.0, 1.0, 2.0]))


@pytest.mark.parametrize("params", [
    {**TRUTH, "gate_coef": np.zeros((2, 2))},                                        # wrong d
    {**TRUTH, "expert_scale": np.array([np.nan, 1.0])},                              # NaN
    {"gate_weight": np.array([0.5, 0.5]), "gate_loc": np.zeros((2, 1)),
     "gate_scale": np.ones((2, 1)), "expert_intercept": np.zeros(2)}])                # another family
def test_plots_and_predict_check_params(data, params):
    x, y = data
    with pytest.raises(ValueError, match=r"`params"):
        bm.plots.plot_fit(MODEL, x, y, params=params)
    with pytest.raises(ValueError, match=r"`params"):
        MODEL.predict(params, x)


def test_relabel_names_a_wrong_model():
    x = np.linspace(-1, 1, 40)
    y = x + 0.3 * np.random.default_rng(0).normal(size=40)
    dt = bm.sample(MODEL, x, y, num_chains=1, num_warmup=20, num_samples=10, n_starts=1, relabel=False,
                   quiet=True, progress_bar=False)
    with pytest.raises(ValueError, match="`model` has n_experts = 3"):
        bm.relabel(dt, model=bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 3))
    assert jax.numpy.isfinite(dt["log_likelihood"]["y"].values).all()


# ----------------------------------------------------------------------------- crossing lines, small n
def test_crossing_lines_reach_the_best_optimum_from_every_seed():
    """88 rows from two crossing regression lines with a weak gate (the shape of the GLoME paper's
    ethanol data, simulated): the default fit_mle and method='em' reach the best optimum found in at
    least 9 of 10 seeds, with no coinciding experts."""
    truth = {"gate_intercept": np.array([0.2, 0.0]), "gate_coef": np.array([[0.3], [0.0]]),
             "expert_intercept": np.array([-4.0, 6.0]), "expert_coef": np.array([[8.0], [-4.0]]),
             "expert_scale": np.array([0.3, 0.3])}
    x = np.random.default_rng(5).uniform(0.5, 1.25, (88, 1))
    y = np.asarray(MODEL.simulate(3, truth, x).y, float)
    fits = {m: [bm.fit_mle(MODEL, x, y, method=m, seed=s) for s in range(10)] for m in ("lbfgs", "em")}
    best = max(f.log_likelihood for fs in fits.values() for f in fs)
    for fs in fits.values():
        hits = sum(f.log_likelihood >= best - 1e-3 * abs(best) for f in fs)
        assert hits >= 9
        assert not any("coincide" in w for f in fs for w in f.warnings)


def test_floors_are_robust_to_outliers(data):
    x, y = data
    y_out = y.copy()
    y_out[:5] = 1e8                                      # five wild values among 300
    floors = MODEL.floors(x, y_out, 1e-3)
    mad = 1.4826 * np.median(np.abs(y_out - np.median(y_out)))
    assert float(floors["expert_scale"]) == pytest.approx(1e-3 * mad, rel=1e-5)
    assert float(floors["expert_scale"]) < 1e-2 < 1e-3 * np.std(y_out)
