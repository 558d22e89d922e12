"""The Lasso path (bayesmoe.lasso): variable selection on simulated data with known relevant slopes
(p = 50, n = 400, K = 2, seed 0; examples/lasso_selection.py reports seeds 0..9), the adaptive second
stage, the dataset's contents (BIC, EBIC by hand) against the chosen fit, and bad input."""

import numpy as np
import pytest
from scipy.special import comb

import bayesmoe as bm
from bayesmoe.datasets import selection_rates, simulate_sparse


@pytest.fixture(scope="module")
def path_fit():
    x, y, truth = simulate_sparse(seed=0)
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2)
    return x, y, truth, model, bm.lasso_path(model, x, y, seed=0, progress_bar=False)


def test_selection_at_bic_level(path_fit):
    """>= 90% of the relevant slopes (3 per expert, 3 in the gate) nonzero, <= 10% of the others, at
    the BIC-chosen level (default: the adaptive path), and also at the EBIC-chosen one."""
    x, y, truth, model, path = path_fit
    assert path.criterion == "bic"
    tp, fp = selection_rates(path.best.params, truth)
    assert tp >= 0.9, tp
    assert fp <= 0.1, fp
    i = int(np.argmin(np.asarray(path.dataset["ebic"])))
    tp, fp = selection_rates({k: np.asarray(path.dataset[k])[i] for k in ("expert_coef", "gate_coef")},
                             truth)
    assert tp >= 0.9 and fp <= 0.1, (tp, fp)


def test_adaptive_stage(path_fit):
    """The second path's weights come from the first (plain) path's chosen level: slopes zero there
    are zero at every level of the second path; the plain path is kept as ``first_stage``."""
    x, y, truth, model, path = path_fit
    first = path.first_stage
    assert first is not None and first.first_stage is None
    for site in ("expert_coef", "gate_coef"):
        zero = np.asarray(first.best.params[site]) == 0
        assert np.all(np.asarray(path.dataset[site])[:, zero] == 0)
    w = path.best.extra["penalty"].weights
    assert set(w) == {"expert_coef", "gate_coef"}
    assert np.all(w["expert_coef"][np.asarray(first.best.params["expert_coef"]) == 0] >= 1e5)


def test_path_dataset(path_fit):
    x, y, truth, model, path = path_fit
    ds = path.dataset
    lam = np.asarray(path.lambdas)
    assert len(lam) == 30 and np.all(np.diff(lam) < 0)
    assert ds["expert_coef"].dims == ("lambda", "expert", "feature")
    assert ds["gate_coef"].dims == ("lambda", "expert", "feature")
    # degrees of freedom: the nonzero free slopes plus the unpenalised parameters, counted by hand
    nz = ((np.asarray(ds["expert_coef"]) != 0).sum((1, 2))
          + (np.asarray(ds["gate_coef"])[:, :-1] != 0).sum((1, 2)))
    np.testing.assert_array_equal(np.asarray(ds["n_nonzero"]), nz)
    k_other = model.n_params(x.shape[1]) - 2 * 50 - 50
    np.testing.assert_array_equal(np.asarray(ds["df"]), nz + k_other)
    # the chosen level minimises BIC = -2 l_refit + df log n, and the best fit is that row
    bic = -2 * np.asarray(ds["refit_log_likelihood"]) + np.asarray(ds["df"]) * np.log(len(y))
    np.testing.assert_allclose(np.asarray(ds["bic"]), bic, rtol=1e-10)
    # EBIC (gamma 1) = BIC + 2 log C(P, nonzero), P = 150 penalised slopes
    ebic = bic + 2 * np.log(comb(150, np.asarray(ds["n_nonzero"]), exact=False))
    np.testing.assert_allclose(np.asarray(ds["ebic"]), ebic, rtol=1e-8)
    assert path.best_index == int(np.argmin(bic))
    np.testing.assert_array_equal(path.best.params["expert_coef"],
                                  np.asarray(ds["expert_coef"])[path.best_index])
    ll = np.sum(np.asarray(model.log_likelihood(path.best.params, x, y), float))
    assert abs(ll - path.best.log_likelihood) < 1e-3 * abs(ll)
    # at the top of the grid (>= lambda_max) the all-zero fit is kept
    assert lam[0] >= path.lambda_max and int(ds["n_nonzero"][0]) == 0
    fig = bm.plot_lasso_path(path)
    assert len(fig.axes) == 4


def test_bad_path_input():
    x, y, _ = simulate_sparse(0, n=60, p=10)
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2)
    with pytest.raises(ValueError, match="`criterion`"):
        bm.lasso_path(model, x, y, criterion="cv")
    with pytest.raises(ValueError, match="`lambdas`"):
        bm.lasso_path(model, x, y, lambdas=[0.1, -1.0])
    with pytest.raises(ValueError, match="`ebic_gamma`"):
        bm.lasso_path(model, x, y, criterion="ebic", ebic_gamma=1.5)
    with pytest.raises(ValueError, match="`adaptive`"):
        bm.lasso_path(model, x, y, adaptive="yes")
    with pytest.raises(ValueError, match="`n_lambdas`"):
        bm.lasso_path(model, x, y, n_lambdas=0)
    with pytest.raises(ValueError, match="`penalty.gate`"):
        bm.lasso_path(bm.MoE(bm.gates.Gaussian(), bm.experts.Gaussian(), 2), x, y,
                      penalty=bm.penalties.L1(1.0, gate=1.0))
