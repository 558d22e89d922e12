"""The Lasso path (bayesmoe.lasso): variable selection on simulated data with known relevant slopes
(p = 50, n = 400, K = 2, one seed; examples/lasso_selection.py reports several seeds), the dataset's
contents against the chosen fit, and bad input."""

import numpy as np
import pytest

import bayesmoe as bm
from bayesmoe.lasso import selection_rates, simulate_sparse


@pytest.fixture(scope="module")
def path_fit():
    x, y, truth = simulate_sparse(seed=3)
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2)
    return x, y, truth, model, bm.lasso_path(model, x, y, seed=3, progress_bar=False)


def test_selection_at_bic_level(path_fit):
    """>= 90% of the relevant slopes (3 per expert, 3 in the gate) nonzero, <= 10% of the others."""
    x, y, truth, model, path = path_fit
    tp, fp = selection_rates(path.best.params, truth)
    assert tp >= 0.9, tp
    assert fp <= 0.1, fp


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
    with pytest.raises(ValueError, match="`n_lambdas`"):
        bm.lasso_path(model, x, y, n_lambdas=0)
    with pytest.raises(ValueError, match="`penalty.gate`"):
        bm.lasso_path(bm.MoE(bm.gates.Gaussian(), bm.experts.Gaussian(), 2), x, y,
                      penalty=bm.penalties.L1(1.0, gate=1.0))
