"""Multivariate Gaussian experts with block-diagonal covariances (BLoMPE): densities against scipy, the
parameter count by hand, the one-expert MLE against least squares (numpy/scipy), BIC choosing the true
block structure of simulated data among every partition of the outputs, and bad input."""

import warnings

import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

import bayesmoe as bm
from bayesmoe.experts import MultivariateGaussian
from bayesmoe.selection import block_dims

TRUE_BLOCKS = ((0, 1), (2,))
# every partition of the outputs {0, 1, 2} (Bell number 5)
PARTITIONS = [((0,), (1,), (2,)), ((0, 1), (2,)), ((0, 2), (1,)), ((0,), (1, 2)), ((0, 1, 2),)]


def _block_cov(blocks, q):
    """Block-diagonal covariance with sd (1, 0.6, 0.8, ...) and correlation 0.75 inside the blocks."""
    r = np.eye(q)
    for b in blocks:
        for i in b:
            for j in b:
                if i != j:
                    r[i, j] = 0.75
    sd = np.linspace(1.0, 0.5, q)
    return r * sd[:, None] * sd[None, :]


@pytest.fixture(scope="module")
def two_regimes():
    """n = 300, x ~ U(-1, 1), expert 1 for x < 0 (softmax-gated), y (n, 3) with TRUE_BLOCKS covariances."""
    rng = np.random.default_rng(1)
    n = 300
    x = rng.uniform(-1, 1, (n, 1))
    z = (rng.uniform(size=n) < 1 / (1 + np.exp(-8 * x[:, 0]))).astype(int)
    b = np.array([[1.0, -1.0, 0.5], [-1.0, 2.0, 0.0]])
    a = np.array([[2.0, 0.0, -1.0], [-2.0, 1.0, 1.0]])
    covs = 0.3 * np.stack([_block_cov(TRUE_BLOCKS, 3), _block_cov(TRUE_BLOCKS, 3)[[1, 0, 2]][:, [1, 0, 2]]])
    eps = np.stack([rng.multivariate_normal(np.zeros(3), covs[k]) for k in z])
    y = b[z] + a[z] * x + eps
    return x, y


def test_log_prob_matches_scipy():
    e = MultivariateGaussian(4, covariance="block", blocks=((0, 3), (1, 2)), degree=2)
    rng = np.random.default_rng(0)
    K, d, n = 3, 2, 7
    p = e.random_params(rng, K, d)
    p.update(e.derived(p))
    x = rng.normal(size=(n, d))
    y = rng.normal(size=(n, 4))
    got = np.asarray(e.log_prob(p, x, y))
    feats = np.column_stack([x, x[:, 0] ** 2, x[:, 0] * x[:, 1], x[:, 1] ** 2])  # degree-2 monomials
    cov = np.asarray(p["expert_cov"])
    for k in range(K):
        # the covariance is block diagonal on {0, 3}, {1, 2} and its diagonal holds the squared sds
        assert cov[k][0, 1] == cov[k][0, 2] == cov[k][3, 1] == cov[k][3, 2] == 0
        np.testing.assert_allclose(np.diag(cov[k]), p["expert_scale"][k] ** 2, rtol=1e-6)
        mean = p["expert_intercept"][k] + feats @ p["expert_coef"][k].T
        want = [stats.multivariate_normal(mean[i], cov[k]).logpdf(y[i]) for i in range(n)]
        np.testing.assert_allclose(got[:, k], want, rtol=1e-5, atol=1e-5)


def test_n_params_hand_count():
    K, d, q = 3, 2, 5
    blocks = ((0, 2), (1, 3, 4))
    e = MultivariateGaussian(q, covariance="block", blocks=[[2, 0], [4, 1, 3]], degree=2)
    assert e.blocks == blocks
    p = 5  # monomials of degree 1..2 in 2 inputs
    # per expert: q intercepts, q p slopes, and 2*3/2 + 3*4/2 = 9 covariance entries
    assert block_dims(blocks) == 9
    assert e.n_params(K, d) == K * (q + q * p + 9)
    assert MultivariateGaussian(q, covariance="diag").n_params(K, d) == K * (q + q * d + q)
    assert MultivariateGaussian(q, covariance="full").n_params(K, d) == K * (q + q * d + q * (q + 1) // 2)
    model = bm.MoE(bm.gates.Softmax(), e, K)
    assert model.n_params(d) == (K - 1) * (1 + d) + K * (q + q * p + 9)  # softmax gate: (K - 1)(1 + d)


def test_one_expert_mle_is_blockwise_least_squares(two_regimes):
    x, y = two_regimes
    blocks = ((0, 2), (1,))
    model = bm.MoE(bm.gates.Softmax(), MultivariateGaussian(3, covariance="block", blocks=blocks), 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = bm.fit_mle(model, x, y, seed=0, n_starts=1, method="em")
    # independent: least squares per output, the ML residual covariance restricted to the blocks
    design = np.column_stack([np.ones(len(x)), x])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    s = resid.T @ resid / len(y)
    ll = sum(stats.multivariate_normal(np.zeros(len(b)), s[np.ix_(b, b)]).logpdf(resid[:, b]).sum()
             for b in map(list, blocks))
    assert fit.log_likelihood == pytest.approx(ll, rel=1e-4)
    np.testing.assert_allclose(np.asarray(fit.params["expert_intercept"])[0], coef[0], atol=1e-3)
    np.testing.assert_allclose(np.asarray(fit.params["expert_coef"])[0, :, 0], coef[1], atol=1e-3)
    cov = np.asarray(fit.params["expert_cov"])[0]
    np.testing.assert_allclose(cov[np.ix_([0, 2], [0, 2])], s[np.ix_([0, 2], [0, 2])], rtol=1e-3, atol=1e-5)
    assert cov[0, 1] == cov[1, 2] == 0


def test_bic_chooses_true_block_structure(two_regimes):
    x, y = two_regimes
    fits = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for blocks in PARTITIONS:
            e = MultivariateGaussian(3, covariance="block", blocks=blocks)
            fits[blocks] = bm.fit_mle(bm.MoE(bm.gates.Softmax(), e, 2), x, y, seed=0, n_starts=2,
                                      method="em")
    best = bm.selection.select_models(fits, "bic").best
    assert best == TRUE_BLOCKS, {b: round(f.bic, 1) for b, f in fits.items()}
    # the full model's likelihood is at least the true one's (nested), but BIC charges 2 x 2 extra entries
    full, true = fits[((0, 1, 2),)], fits[TRUE_BLOCKS]
    assert full.log_likelihood >= true.log_likelihood - 1e-3
    assert full.n_params - true.n_params == 2 * 2
    # the fitted mixture log-likelihood by hand (scipy) at the chosen fit
    p = {k: np.asarray(v, float) for k, v in true.params.items()}
    logits = p["gate_intercept"] + x @ p["gate_coef"].T
    lg = logits - logsumexp(logits, axis=1, keepdims=True)
    le = np.stack([stats.multivariate_normal(np.zeros(3), p["expert_cov"][k]).logpdf(
        y - p["expert_intercept"][k] - x @ p["expert_coef"][k].T) for k in range(2)], axis=1)
    assert true.log_likelihood == pytest.approx(logsumexp(lg + le, axis=1).sum(), rel=1e-4)
    # the mixture mean of predict is sum_k g_k mu_k, (n, q)
    model = bm.MoE(bm.gates.Softmax(), MultivariateGaussian(3, covariance="block", blocks=TRUE_BLOCKS), 2)
    pred = model.predict(true.params, x)
    mu = p["expert_intercept"][None] + np.einsum("nd,kqd->nkq", x, p["expert_coef"])
    np.testing.assert_allclose(np.asarray(pred.mean), np.einsum("nk,nkq->nq", np.exp(lg), mu),
                               rtol=1e-4, atol=1e-4)


def test_bad_input(two_regimes):
    x, y = two_regimes
    with pytest.raises(ValueError, match="`blocks` does not partition"):
        MultivariateGaussian(3, covariance="block", blocks=((0, 1),))
    with pytest.raises(ValueError, match="`blocks` is required"):
        MultivariateGaussian(3, covariance="block")
    with pytest.raises(ValueError, match="`covariance`"):
        MultivariateGaussian(3, covariance="spherical")
    with pytest.raises(ValueError, match="`n_outputs`"):
        MultivariateGaussian(0)
    model = bm.MoE(bm.gates.Softmax(), MultivariateGaussian(3), 2)
    with pytest.raises(ValueError, match=r"`y` must have shape \(n, 3\)"):
        model.check_data(x, y[:, :2])
    with pytest.raises(ValueError, match="`y` has 299 rows"):
        model.check_data(x, y[:-1])
    bad = y.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="`y` contains NaN"):
        model.check_data(x, bad)
    params = model.random_params(np.random.default_rng(0), 1)
    with pytest.raises(NotImplementedError, match="vector responses"):
        model.predict(params, x, interval=0.9)
    with pytest.raises(NotImplementedError, match="vector responses"):
        bm.plots.plot_fit(model, x, y, params=params)
    with pytest.raises(NotImplementedError, match="vector responses"):
        bm.sample(model, x, y, num_warmup=5, num_samples=5, progress_bar=False)
    with pytest.raises(NotImplementedError, match="vector responses"):
        bm.fit_vi(model, x, y)
