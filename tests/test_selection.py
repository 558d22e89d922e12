"""bm.selection: slope heuristics against known slopes and hand computations, BIC on a GLoME
simulation, the LOO comparison table, and bad input."""

import warnings

import numpy as np
import pytest

import bayesmoe as bm
from bayesmoe import selection as sel

# ----------------------------------------------------------------------------- slope heuristics


def _synthetic(seed, kappa=0.01, noise=0.02):
    """Contrasts with a known minimal-penalty slope: a bias that vanishes for D >> 15 minus kappa D."""
    rng = np.random.default_rng(seed)
    dims = np.arange(5.0, 200.0, 5.0)
    return np.exp(-dims / 15) - kappa * dims + rng.normal(0, noise, dims.size), dims


@pytest.mark.parametrize("method", ["djump", "ddse"])
def test_slope_recovers_known_constant(method):
    for seed in range(8):
        g, dims = _synthetic(seed)
        res = bm.slope_heuristic(g, dims, method=method)
        assert abs(res.kappa - 0.01) <= 0.1 * 0.01, (seed, res.kappa)
        assert res.constant == pytest.approx(2 * res.kappa)
        # the selected model minimises the penalised criterion
        assert res.selected == int(np.argmin(g + 2 * res.kappa * dims))
        assert dims[res.selected] <= 60  # a small model, not the most complex one


def test_djump_agrees_with_brute_force_grid():
    g, dims = _synthetic(3)
    res = sel.djump(g, dims)
    # independent: the selected dimension on a fine kappa grid, and where it drops most
    grid = np.linspace(1e-5, 0.05, 20001)
    chosen = dims[np.argmin(g[None, :] + grid[:, None] * dims[None, :], axis=1)]
    drops = chosen[:-1] - chosen[1:]
    i = int(np.argmax(drops))
    assert grid[i] <= res.kappa <= grid[i + 1]


def test_hand_computation_small_table():
    # dims 1..6; from D = 6 the lines to D = 2..5 all have slope 0.1: at kappa = 0.1 the selection
    # jumps from 6 to 2 (largest jump, 4), then from 2 to 1 at kappa = (10 - 5) / 1 = 5.
    g = np.array([10.0, 5.0, 4.9, 4.8, 4.7, 4.6])
    dims = np.arange(1.0, 7.0)
    dj = sel.djump(g, dims)
    assert dj.kappa == pytest.approx(0.1)
    np.testing.assert_allclose(dj.diagnostics["kappa_path"], [0.1, 5.0])
    np.testing.assert_allclose(dj.diagnostics["dim_path"], [2.0, 1.0])
    assert dj.selected == 1  # criterion g + 0.2 D = 10.2, 5.4, 5.5, ... -> D = 2
    # DDSE with least squares and 3 points at least: 4 regressions starting at D = 1, 2, 3, 4
    dd = sel.ddse(g, dims, robust=False, min_points=3)
    slopes = [np.polyfit(dims[i:], -g[i:], 1)[0] for i in range(4)]
    np.testing.assert_allclose(dd.diagnostics["slopes"], slopes, atol=1e-10)
    assert slopes[0] == pytest.approx(0.8)  # Sxy / Sxx = 14 / 17.5 by hand
    # every slope selects D = 2: one plateau, kappa read at its first point
    assert dd.diagnostics["plateau"] == (0, 3)
    assert dd.kappa == pytest.approx(0.8)
    assert dd.selected == 1


def test_ddse_robust_ignores_an_outlier():
    g, dims = _synthetic(0, noise=0.002)
    bad = g.copy()
    bad[-5] += 0.5  # one wild contrast among the complex models
    robust = sel.ddse(bad, dims)
    ols = sel.ddse(bad, dims, robust=False)
    assert abs(robust.kappa - 0.01) < 0.05 * 0.01
    assert abs(ols.kappa - 0.01) > abs(robust.kappa - 0.01)


def test_equal_dims_keep_the_smallest_contrast():
    g = np.array([3.0, 2.0, 2.5, 1.0, 0.9])
    dims = np.array([1.0, 2.0, 2.0, 3.0, 4.0])
    res = sel.djump(g, dims)
    assert res.criterion.shape == (5,)
    assert res.selected != 2  # the worse of the two D = 2 models is never selected


def test_slope_bad_input():
    with pytest.raises(ValueError, match="method"):
        bm.slope_heuristic([1, 2, 3], [1, 2, 3], method="jump")
    with pytest.raises(ValueError, match="same length"):
        bm.slope_heuristic([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        bm.slope_heuristic([1, np.nan, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="pct"):
        sel.ddse([3, 2, 1, 0.5], [1, 2, 3, 4], pct=0)
    with pytest.raises(ValueError, match="distinct `dims`"):
        sel.ddse([3, 2, 1], [1, 1, 1])


# ----------------------------------------------------------------------------- GLoME simulation
N_SIM = 400


def _glome(n, seed):
    """GLoME well-specified model (K* = 2): pi = (1/2, 1/2), c = (0.2, 0.8), Gamma = (0.1, 0.15),
    y = b_k + A_k x + N(0, 0.3^2) with b = (2, 0), A = (-5, 0.1)."""
    rng = np.random.default_rng(seed)
    z = rng.integers(0, 2, n)
    x = rng.normal(np.array([0.2, 0.8])[z], np.sqrt(np.array([0.1, 0.15]))[z])
    y = np.array([2.0, 0.0])[z] + np.array([-5.0, 0.1])[z] * x + 0.3 * rng.normal(size=n)
    return x, y


def _make(K):
    return bm.MoE(bm.gates.Gaussian(), bm.experts.Gaussian(), K)


@pytest.fixture(scope="module")
def bic_runs():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [bm.select_n_experts(_make, *_glome(N_SIM, r), range(1, 4), "bic", seed=0, n_starts=2,
                                    progress_bar=False) for r in range(3)]


def test_bic_selects_two_experts_on_glome(bic_runs):
    for res in bic_runs:
        assert res.best == 2
        tab = res.table.to_pandas()
        assert list(tab.index) == [1, 2, 3]
        # GLoME's dimension for 1-D x and y with linear experts: 6K - 1
        np.testing.assert_array_equal(tab["n_params"], 6 * np.array([1, 2, 3]) - 1)
        for k, fit in res.fits.items():
            assert tab.loc[k, "bic"] == pytest.approx(-2 * fit.log_likelihood + fit.n_params * np.log(N_SIM))
            assert tab.loc[k, "contrast"] == pytest.approx(-fit.log_likelihood / N_SIM)
        assert res.best == int(tab["bic"].idxmin())


def test_select_from_fits_every_criterion(bic_runs):
    fits = bic_runs[0].fits
    for crit in ("aic", "icl"):
        res = bm.selection.select(fits, crit)
        assert res.best == int(res.table.to_pandas()[crit].idxmin())
    res = bm.selection.select(fits, "djump")
    g = np.array([-fits[k].log_likelihood / N_SIM for k in (1, 2, 3)])
    d = np.array([fits[k].n_params for k in (1, 2, 3)])
    assert res.best == [1, 2, 3][int(np.argmin(g + res.slope.constant * d))]
    np.testing.assert_allclose(res.table["slope_criterion"].values, g + res.slope.constant * d)


def test_plot_selection(bic_runs):
    import matplotlib.pyplot as plt

    fig = bm.plot_selection(bic_runs[0])
    ax = fig.axes[0]
    ys = [line.get_ydata() for line in ax.get_lines() if line.get_label() == "BIC"][0]
    np.testing.assert_allclose(ys, bic_runs[0].table["bic"].values)
    plt.close(fig)
    g, dims = _synthetic(0)
    for crit in ("djump", "ddse"):
        fits = bic_runs[0].fits
        res = bm.selection.select(fits, crit)
        fig = bm.plot_selection(res)
        assert len(fig.axes) == 3
        plt.close(fig)


def test_loo_table_names_models_by_k():
    x, y = _glome(N_SIM, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bm.select_n_experts(_make, x, y, [1, 2], "loo", seed=1, n_starts=2, progress_bar=False,
                                  sample_kwargs={"num_chains": 1, "num_warmup": 300, "num_samples": 150,
                                                 "quiet": True, "relabel": False,
                                                 "posterior_predictive": False})
    assert sorted(res.compare.index) == ["1", "2"]
    assert res.best == 2 == int(res.compare.index[0])
    tab = res.table.to_pandas()
    assert tab.loc[1, "elpd_loo"] < tab.loc[2, "elpd_loo"]
    # the ELPD is close to the point fit's log-likelihood minus the effective number of parameters
    for k in (1, 2):
        assert tab.loc[k, "elpd_loo"] == pytest.approx(res.fits[k].log_likelihood - tab.loc[k, "p_loo"],
                                                       abs=3 + 0.5 * res.fits[k].n_params)


# ----------------------------------------------------------------------------- bad input
def test_select_bad_input(bic_runs):
    x, y = _glome(50, 0)
    for bad, msg in [([], "empty"), ([1, 2.5], "integers"), ([0, 1], ">= 1"), ("12", "iterable"),
                     ([1, 1], "repeated")]:
        with pytest.raises(ValueError, match=f"`k_range`.*{msg}|{msg}.*`k_range`|`k_range`"):
            bm.select_n_experts(_make, x, y, bad)
    with pytest.raises(ValueError, match="criterion"):
        bm.select_n_experts(_make, x, y, [1, 2], "waic")
    with pytest.raises(ValueError, match="`k_range` needs at least 3"):
        bm.select_n_experts(_make, x, y, [1, 2], "ddse")
    with pytest.raises(ValueError, match="make_model"):
        bm.select_n_experts(lambda K: _make(1), x, y, [2])
    # a criterion that needs a posterior, given point fits only
    with pytest.raises(ValueError, match="'loo' needs posterior.*`posteriors"):
        bm.selection.select(bic_runs[0].fits, "loo")
    with pytest.raises(ValueError, match=r"`posteriors\[1\]`.*posterior"):
        bm.selection.select(bic_runs[0].fits, "loo", posteriors={1: bic_runs[0].fits[1]})


def _fake_fit(ll, k, n=100, icl=None):
    """A FitResult built by hand (criteria by their textbook formulas)."""
    return bm.FitResult(params={}, log_likelihood=ll, log_posterior=ll, n_params=k, n_obs=n,
                        aic=-2 * ll + 2 * k, bic=-2 * ll + k * np.log(n),
                        icl=(-2 * ll + k * np.log(n)) if icl is None else icl, converged=True, n_steps=1,
                        start_log_likelihoods=np.array([ll]), method="lbfgs", prior=False)


def test_select_models_over_a_labelled_grid():
    import matplotlib.pyplot as plt

    # (K, blocks) grid: by hand, BIC = -2 ll + k log(100)
    fits = {(1, "diag"): _fake_fit(-300.0, 5), (2, "diag"): _fake_fit(-200.0, 11),
            (2, "full"): _fake_fit(-197.0, 13), (3, "full"): _fake_fit(-189.0, 20)}
    bic = {k: 2 * -f.log_likelihood + f.n_params * np.log(100) for k, f in fits.items()}
    res = bm.selection.select_models(fits, "bic")
    assert res.best == min(bic, key=bic.get) == (2, "diag")
    tab = res.table.to_pandas()
    assert list(tab.index) == [str(k) for k in fits]
    np.testing.assert_allclose(tab["bic"], list(bic.values()))
    aic = {k: 2 * -f.log_likelihood + 2 * f.n_params for k, f in fits.items()}
    assert bm.selection.select_models(fits, "aic").best == min(aic, key=aic.get) == (3, "full")
    dj = bm.selection.select_models(fits, "djump")
    g = np.array([-f.log_likelihood / 100 for f in fits.values()])
    d = np.array([f.n_params for f in fits.values()], float)
    assert dj.best == list(fits)[int(np.argmin(g + dj.slope.constant * d))]
    fig = bm.plot_selection(res)
    plt.close(fig)
    with pytest.raises(ValueError, match="'loo' needs posterior"):
        bm.selection.select_models(fits, "loo")
    with pytest.raises(ValueError, match="same data"):
        bm.selection.select_models({1: _fake_fit(-3.0, 2, n=10), 2: _fake_fit(-3.0, 2, n=11)})


def test_no_jump_when_the_simplest_model_is_best():
    res = sel.djump([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert (res.kappa, res.selected, res.diagnostics["jump"]) == (0.0, 0, -1)
    assert sel.ddse([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]).selected == 0


def test_bic_picks_the_quadratic_experts_of_misspecified_glome():
    """Issue 29: on bm.datasets.glome(specified=False) data (quadratic experts), the default fit_mle of the
    degree-2 model reaches the likelihood of the true parameters (x64), and BIC over degrees 1-3 picks 2."""
    import jax

    with jax.enable_x64(True):
        truth_model, truth = bm.datasets.glome(specified=False)
        x, y, _ = bm.datasets.simulate_dataset(11, truth_model, truth, 800)
        ll_true = float(np.sum(truth_model.log_likelihood(truth, x, y)))
        fits = {deg: bm.fit_mle(bm.MoE(bm.gates.Gaussian(), bm.experts.Gaussian(degree=deg), 2, joint=True),
                                x, y, seed=0) for deg in (1, 2, 3)}
    assert fits[2].log_likelihood >= ll_true - 1e-6
    assert fits[3].log_likelihood >= fits[2].log_likelihood - 1e-6      # nested models
    assert sel.select_models(fits, "bic").best == 2
    # the estimates are those of the true model's parametrisation (same site names and shapes)
    assert fits[2].params["expert_coef"].shape == truth["expert_coef"].shape
