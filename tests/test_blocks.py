"""Block-diagonal Gaussian gates (BLoMPE): parameter count by hand, densities against scipy, the EM
M-step against numpy moments, block detection on a planted structure, and bad blocks."""

import warnings

import jax
import numpy as np
import pytest
from scipy import stats

import bayesmoe as bm
from bayesmoe.selection import block_dims, detect_blocks

PLANTED = ((0, 3), (1, 2, 5), (4,))


def _planted_x(n=2000, seed=0):
    """x (n, 6) with correlated blocks {0, 3} (rho 0.6) and {1, 2, 5} (rho 0.5), 4 independent."""
    s = np.eye(6)
    s[0, 3] = s[3, 0] = 0.6
    for i in (1, 2, 5):
        for j in (1, 2, 5):
            if i != j:
                s[i, j] = 0.5
    sd = np.array([1.0, 2.0, 0.5, 3.0, 1.0, 1.5])
    cov = s * sd[:, None] * sd[None, :]
    return np.random.default_rng(seed).multivariate_normal(np.arange(6.0), cov, size=n)


def test_n_params_hand_count():
    gate = bm.gates.Gaussian(covariance="block", blocks=[[3, 0], [1, 2, 5], [4]])
    assert gate.blocks == PLANTED  # canonical order
    K, d = 3, 6
    # per covariance: 2*3/2 + 3*4/2 + 1*2/2 = 3 + 6 + 1 = 10 entries; plus K - 1 weights, K d means
    assert block_dims(PLANTED) == 10
    assert gate.n_params(K, d) == (K - 1) + K * d + K * 10
    model = bm.MoE(gate, bm.experts.Gaussian(), K)
    assert model.n_params(d) == (K - 1) + K * d + K * 10 + K * (d + 2)
    # the extremes: singletons = diagonal, one block = full
    assert bm.gates.Gaussian(covariance="block", blocks=[[i] for i in range(d)]).n_params(K, d) \
        == bm.gates.Gaussian().n_params(K, d)
    assert bm.gates.Gaussian(covariance="block", blocks=[range(d)]).n_params(K, d) \
        == bm.gates.Gaussian(covariance="full").n_params(K, d)


def test_block_density_matches_scipy():
    gate = bm.gates.Gaussian(covariance="block", blocks=PLANTED)
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        p = gate.random_params(rng, 2, 6)
        x = rng.normal(size=(7, 6))
        got = np.asarray(gate.log_components(p, x))
    cov = p["gate_cov"]
    outside = np.ones((6, 6), bool)
    for b in PLANTED:
        outside[np.ix_(b, b)] = False
    assert np.all(cov[:, outside] == 0)
    ref = np.stack([np.log(p["gate_weight"][k])
                    + stats.multivariate_normal(p["gate_loc"][k], cov[k]).logpdf(x) for k in range(2)], -1)
    np.testing.assert_allclose(got, ref, rtol=1e-10)
    # gate_cov alone is accepted and converted to the block sites
    given = {k: v for k, v in p.items() if k in ("gate_weight", "gate_loc", "gate_cov")}
    with jax.enable_x64(True):
        back = gate.check_params(given, 2, 6)["gate_corr_chol_1"]
    np.testing.assert_allclose(back, p["gate_corr_chol_1"], atol=1e-12)


def test_one_expert_mle_is_the_blockwise_sample_covariance():
    x = _planted_x(500, seed=2)
    y = x[:, 0] + np.random.default_rng(3).normal(size=500)
    gate = bm.gates.Gaussian(covariance="block", blocks=PLANTED)
    model = bm.MoE(gate, bm.experts.Gaussian(), 1, joint=True)
    with jax.enable_x64(True), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = bm.fit_mle(model, x, y, method="em", n_starts=1, seed=0)
        cov = np.asarray(model.complete_params(fit.params)["gate_cov"])[0]
    emp = np.cov(x, rowvar=False, bias=True)
    mask = np.zeros((6, 6), bool)
    for b in PLANTED:
        mask[np.ix_(b, b)] = True
    np.testing.assert_allclose(cov[mask], emp[mask], rtol=1e-5)
    assert np.all(cov[~mask] == 0)


def test_detect_planted_blocks():
    found = detect_blocks(_planted_x())
    assert found.most_stable == PLANTED
    assert PLANTED in found.structures
    assert found.structures[0] == tuple((i,) for i in range(6))  # finest first
    assert found.structures[-1] == (tuple(range(6)),)
    # below the smallest true correlation and above the largest spurious one: the planted structure
    t = found.thresholds
    at = found.index[(t > 0.1) & (t < 0.45)]
    assert all(found.structures[i] == PLANTED for i in at)


def test_bad_blocks():
    with pytest.raises(ValueError, match="`blocks`.*more than one block"):
        bm.gates.Gaussian(covariance="block", blocks=[[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="`blocks` does not partition.*missing \\[1\\]"):
        bm.gates.Gaussian(covariance="block", blocks=[[0], [2]])
    with pytest.raises(ValueError, match="`blocks` has an empty block"):
        bm.gates.Gaussian(covariance="block", blocks=[[0], []])
    with pytest.raises(ValueError, match="`blocks` is required"):
        bm.gates.Gaussian(covariance="block")
    with pytest.raises(ValueError, match="`blocks` is only used"):
        bm.gates.Gaussian(blocks=[[0]])
    model = bm.MoE(bm.gates.Gaussian(covariance="block", blocks=PLANTED), bm.experts.Gaussian(), 2)
    with pytest.raises(ValueError, match="`blocks` partition 6 features but x has 4 columns"):
        bm.fit_mle(model, np.zeros((50, 4)) + np.arange(50)[:, None], np.arange(50.0))
    with pytest.raises(ValueError, match="thresholds"):
        detect_blocks(_planted_x(20), thresholds=[0.5, 0.2])
