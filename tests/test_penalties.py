"""l1-penalised MoE (bayesmoe.penalties): the single-expert fit against scikit-learn's Lasso, monotone
penalised EM, exact zeros at and above lambda_max (closed form for one expert), adaptive weights and
the up-front errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro.distributions import constraints
from sklearn.linear_model import Lasso

import bayesmoe as bm
from bayesmoe import penalties as pen
from bayesmoe.inference.em import em_fit
from bayesmoe.inference.init import data_starts


def _one_expert_data(seed=0, n=200, p=10):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p)) * rng.uniform(0.5, 3.0, size=p) + rng.normal(size=p)
    beta = np.zeros(p)
    beta[:3] = [2.0, -1.5, 1.0]
    y = 1.0 + x @ beta + rng.normal(size=n)
    return x, y


def _two_expert_data(seed=0, n=240, p=8):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    g = 1 / (1 + np.exp(-(2.5 * x[:, 0] - 2.0 * x[:, 1])))
    z = (rng.uniform(size=n) > g).astype(int)
    coef = np.zeros((2, p))
    coef[0, 2:4] = [2.0, -1.5]
    coef[1, 4:6] = [-2.0, 1.5]
    y = np.array([1.0, -1.0])[z] + np.sum(x * coef[z], 1) + 0.5 * rng.normal(size=n)
    return x, y


ONE = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 1)
TWO = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2)


@pytest.fixture(scope="module")
def one_expert():
    return _one_expert_data()


def test_single_expert_equals_sklearn_lasso(one_expert):
    """K = 1: the penalised MLE of -(1/n) log-lik + lam |a|_1 with sigma estimated is the Lasso
    (1/(2n)) |y - b - x a|^2 + alpha |a|_1 at alpha = lam sigma^2, with sigma^2 = RSS / n."""
    x, y = one_expert
    lam = 0.1
    with jax.enable_x64(True):
        fit = bm.fit_mle(ONE, x, y, penalty=pen.L1(lam), n_starts=1)
    a, b = fit.params["expert_coef"][0], fit.params["expert_intercept"][0]
    s2 = fit.params["expert_scale"][0] ** 2
    ref = Lasso(alpha=lam * s2, tol=1e-12, max_iter=100_000).fit(x, y)
    np.testing.assert_allclose(a, ref.coef_, atol=1e-4)
    assert abs(b - ref.intercept_) < 1e-4
    assert abs(s2 - np.mean((y - b - x @ a) ** 2)) < 1e-4 * s2
    # exact zeros, and the same support as scikit-learn's
    assert np.any(a == 0)
    np.testing.assert_array_equal(a == 0, ref.coef_ == 0)
    assert fit.extra["n_nonzero_slopes"] == int(np.sum(a != 0))
    assert fit.n_params == ONE.n_params(x.shape[1]) - int(np.sum(a == 0))


def test_lambda_max_single_expert(one_expert):
    """K = 1: lambda_max = max_j |x_j'(y - ybar)| / (n var(y)) in closed form (the level at which the
    all-zero fit satisfies the optimality conditions); from the all-zero fit, at 1.01 lambda_max every
    slope stays exactly zero, at 0.9 lambda_max not. (With the scale estimated the penalised
    likelihood is not concave even for one expert: a dense start may find a nonzero local maximum
    above lambda_max.)"""
    x, y = one_expert
    n = len(y)
    lam_max = np.max(np.abs((x - x.mean(0)).T @ (y - y.mean()))) / (n * np.var(y))
    with jax.enable_x64(True):
        w = pen.site_weights(pen.L1(1.0), ONE, x.shape[1])
        null = {"gate_intercept": np.zeros(1), "gate_coef": np.zeros((1, x.shape[1])),
                "expert_intercept": np.array([y.mean()]), "expert_coef": np.zeros((1, x.shape[1])),
                "expert_scale": np.array([y.std()])}
        assert abs(pen.lambda_max(ONE, null, jnp.asarray(x), jnp.asarray(y), w) - lam_max) < 1e-8
        above = bm.fit_mle(ONE, x, y, penalty=pen.L1(1.01 * lam_max), n_starts=1, init=null)
        below = bm.fit_mle(ONE, x, y, penalty=pen.L1(0.9 * lam_max), n_starts=1, init=null)
    assert np.all(above.params["expert_coef"] == 0)
    assert np.sum(below.params["expert_coef"] != 0) >= 1


@pytest.fixture(scope="module")
def two_expert_em():
    """Penalised EM on K = 2 (x64) from a data-driven start: the null fit, lambda_max, two levels."""
    x, y = _two_expert_data()
    with jax.enable_x64(True):
        xj, yj = jnp.asarray(x), jnp.asarray(y)
        floors = TWO.floors(x, y, 1e-3)
        w1 = {k: jnp.asarray(v) for k, v in pen.site_weights(pen.L1(1.0), TWO, x.shape[1]).items()}
        starts = data_starts(TWO, xj, yj, 2, np.random.default_rng(0), floors)
        zero = {k: (v * 0 if k in w1 else v) for k, v in starts.items()}
        # one compiled program for every call: same shapes (2 starts), steps and trace length
        null = em_fit(TWO, xj, yj, zero, penalty=pen.PenaltyWeights({k: 1e4 * v for k, v in w1.items()}),
                      floors=floors, max_steps=150, return_trace=True)
        b = int(np.argmax(null.log_likelihood))
        null_params = {k: v[b] for k, v in null.params.items()}
        lam_max = pen.lambda_max(TWO, null_params, xj, yj, w1)
        out = {}
        twice = {k: v[jnp.array([b, b])] for k, v in null.params.items()}
        for name, lam, init in (("above", 1.01 * lam_max, twice), ("mid", 0.5 * lam_max, starts)):
            out[name] = em_fit(TWO, xj, yj, init, floors=floors, max_steps=150,
                               penalty=pen.PenaltyWeights({k: lam * v for k, v in w1.items()}),
                               return_trace=True)
    return x, y, lam_max, out, w1


def test_penalized_em_monotone(two_expert_em):
    """The penalised objective log-lik - n lam |slopes|_1 never decreases along EM (x64), and the value
    reported is that objective recomputed by hand at the answer."""
    x, y, lam_max, out, w1 = two_expert_em
    em = out["mid"]
    for s in range(em.trace.shape[0]):
        tr = np.asarray(em.trace[s])
        tr = tr[~np.isnan(tr)]
        assert len(tr) > 3
        assert np.all(np.diff(tr) >= -1e-9 * np.abs(tr[1:]))
        p = {k: np.asarray(v[s]) for k, v in em.params.items()}
        ll = np.sum(np.asarray(TWO.log_likelihood(p, x, y)))
        lam = 0.5 * lam_max
        by_hand = ll - len(y) * lam * (np.abs(p["expert_coef"]).sum() + np.abs(p["gate_coef"]).sum())
        assert abs(float(em.log_likelihood[s]) - by_hand) < 1e-6 * abs(by_hand)
    # exact zeros among the irrelevant slopes, relevant ones kept
    best = int(np.argmax(em.log_likelihood))
    ec = np.asarray(em.params["expert_coef"][best])
    assert np.sum(ec == 0) >= 4 and np.sum(ec != 0) >= 4


def test_above_lambda_max_all_slopes_zero(two_expert_em):
    """K = 2: from the all-zero fit, at lambda >= lambda_max every slope stays exactly zero."""
    _, _, lam_max, out, _ = two_expert_em
    assert lam_max > 0
    em = out["above"]
    assert np.all(np.asarray(em.params["expert_coef"]) == 0)
    assert np.all(np.asarray(em.params["gate_coef"]) == 0)


def test_adaptive_weights(one_expert):
    """Adaptive Lasso weights 1/|a_init|: a zero initial coefficient gets the largest weight, and with
    weights the single-expert fit is scikit-learn's Lasso on the rescaled columns x_j / w_j."""
    x, y = one_expert
    init = {"expert_coef": np.array([[2.0, -1.0, 0.5, 0.0, 0.25, 1, 1, 1, 1, 1]])}
    p = pen.L1.adaptive(init, 0.05)
    w = p.weights["expert_coef"][0]
    np.testing.assert_allclose(w[:3], [0.5, 1.0, 2.0])
    assert w[3] == w.max()
    with jax.enable_x64(True):
        fit = bm.fit_mle(ONE, x, y, penalty=p, n_starts=1)
    s2 = fit.params["expert_scale"][0] ** 2
    ref = Lasso(alpha=0.05 * s2, tol=1e-12, max_iter=100_000).fit(x / w, y)
    np.testing.assert_allclose(fit.params["expert_coef"][0], ref.coef_ / w, atol=1e-4)


@dataclasses.dataclass(frozen=True)
class _ConstantGaussian(bm.Expert):
    """An expert with no slopes (constant mean): a penalty has nothing to act on."""

    y_affine = True

    def param_table(self):
        return (bm.Param("expert_intercept", ("K",), ("expert",), constraints.real,
                         lambda s, z: dist.Normal(s.y_mean, 10 * s.y_sd), affine="intercept"),
                bm.Param("expert_scale", ("K",), ("expert",), constraints.positive,
                         lambda s, z: dist.LogNormal(0.0, 1.0), floor="y", affine="y_scale"))

    def log_prob(self, params, x, y):
        return dist.Normal(params["expert_intercept"], params["expert_scale"]).log_prob(y[:, None])

    def component(self, params, x):
        return dist.Normal(jnp.broadcast_to(params["expert_intercept"], (x.shape[0],) + params[
            "expert_intercept"].shape), params["expert_scale"])


@pytest.mark.parametrize("kwargs, match", [
    ({"lam": -0.1}, "`lam`"), ({"lam": float("nan")}, "`lam`"), ({"lam": float("inf")}, "`lam`"),
    ({"lam": 0.1, "gate": -1.0}, "`gate`"), ({"lam": 0.1, "expert": float("nan")}, "`expert`"),
    ({"lam": "a"}, "`lam`"), ({"lam": 0.1, "weights": {"expert_coef": [[-1.0]]}}, "weights"),
])
def test_bad_levels(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pen.L1(**kwargs)


def test_bad_penalty_use(one_expert):
    x, y = one_expert
    no_slopes = bm.MoE(bm.gates.Gaussian(), _ConstantGaussian(), 2)
    with pytest.raises(ValueError, match="`penalty`.*no slope"):
        bm.fit_mle(no_slopes, x[:, :2], y, penalty=pen.L1(0.1))
    gllim = bm.MoE(bm.gates.Gaussian(), bm.experts.Gaussian(), 2)
    with pytest.raises(ValueError, match="`penalty.gate`"):
        bm.fit_mle(gllim, x, y, penalty=pen.L1(0.1, gate=0.2))
    with pytest.raises(ValueError, match="`method='adam'`"):
        bm.fit_mle(ONE, x, y, penalty=pen.L1(0.1), method="adam")
    with pytest.raises(ValueError, match=r"`penalty.weights\['expert_coef'\]` must have shape"):
        bm.fit_mle(ONE, x, y, penalty=pen.L1(0.1, weights={"expert_coef": np.ones((2, 10))}))
    with pytest.raises(ValueError, match="unknown site"):
        bm.fit_mle(ONE, x, y, penalty=pen.L1(0.1, weights={"gate_loc": np.ones((1, 10))}))
    with pytest.raises(ValueError, match="`penalty` must be"):
        bm.fit_mle(ONE, x, y, penalty=0.1)
