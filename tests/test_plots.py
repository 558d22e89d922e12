"""bayesmoe.plots: the drawn curves are the model's predictions, bands bracket the posterior median."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from arviz_base import from_dict  # noqa: E402

import bayesmoe as bm  # noqa: E402
from bayesmoe.plots import plot_fit, plot_gates, posterior_params  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _gaussian_model(d=1):
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), n_experts=3)
    params = {
        "gate_intercept": np.array([-1.0, 1.0, 0.0]),
        "gate_coef": np.array([[-3.0] * d, [0.5] * d, [0.0] * d]),
        "expert_intercept": np.array([2.0, -1.0, 3.0]),
        "expert_coef": np.array([[1.0] * d, [-0.5] * d, [-2.0] * d]),
        "expert_scale": np.array([0.3, 0.3, 0.4]),
    }
    return model, params


def _classifier(d=1):
    model = bm.MoE(bm.gates.ModifiedSoftmax("tanh"), bm.experts.Categorical(3), n_experts=2)
    params = {
        "gate_intercept": np.array([0.5, 0.0]),
        "gate_coef": np.array([[3.0] * d, [0.0] * d]),
        "expert_intercept": np.array([[1.0, -0.5, 0.0], [-1.0, 0.5, 0.0]]),
        "expert_coef": np.array([[[2.0] * d, [0.0] * d, [0.0] * d], [[-1.0] * d, [1.5] * d, [0.0] * d]]),
    }
    return model, params


def _fake_posterior(params, chains=2, draws=40, noise=0.15, seed=0):
    """A DataTree of draws scattered around `params` (reference rows kept at zero)."""
    rng = np.random.default_rng(seed)
    post = {}
    for k, v in params.items():
        v = np.asarray(v, float)
        eps = noise * rng.standard_normal((chains, draws, *v.shape))
        if k == "expert_scale":
            post[k] = v * np.exp(eps)
        else:
            post[k] = np.where(v == 0.0, 0.0, v + eps)
    return from_dict({"posterior": post})


def _data(model, params, n=120, d=1, seed=1):
    import jax  # noqa: PLC0415

    x = np.random.default_rng(seed).uniform(-2, 2, size=(n, d))
    y = np.asarray(model.simulate(jax.random.key(seed), params, x).y)
    return x, y


def _line(ax, gid):
    found = [ln for ln in ax.get_lines() if ln.get_gid() == gid]
    assert len(found) == 1, gid
    return np.asarray(found[0].get_xdata(), float), np.asarray(found[0].get_ydata(), float)


def _band(ax, gid, gx):
    """Lower and upper edges of a fill_between band at the grid points gx."""
    found = [c for c in ax.collections if c.get_gid() == gid]
    assert len(found) == 1, gid
    verts = np.concatenate([p.vertices for p in found[0].get_paths()])
    lo, hi = [], []
    for xv in gx:
        ys = verts[np.isclose(verts[:, 0], xv, rtol=0, atol=1e-9), 1]
        lo.append(ys.min())
        hi.append(ys.max())
    return np.array(lo), np.array(hi)


def _median_prediction(model, idata, grid):
    draws = posterior_params(idata)
    S = len(next(iter(draws.values())))
    preds = [model.predict({k: v[s] for k, v in draws.items()}, grid) for s in range(S)]
    return {f: np.median(np.stack([np.asarray(getattr(p, f)) for p in preds]), axis=0)
            for f in ("gate_probs", "expert_mean", "mean", "class_probs") if getattr(preds[0], f) is not None}


def test_posterior_params_stacks_and_subsamples():
    model, params = _gaussian_model()
    dt = _fake_posterior(params, chains=2, draws=40)
    full = posterior_params(dt)
    assert full["expert_coef"].shape == (80, 3, 1)
    np.testing.assert_allclose(full["expert_intercept"][40], dt["posterior"]["expert_intercept"].values[1, 0])
    sub = posterior_params(dt, n_draws=10, seed=3)
    assert sub["gate_intercept"].shape == (10, 3)
    # the subset is a subset of the rows, same rows for every variable
    rows = [int(np.where((full["expert_scale"] == r).all(1))[0][0]) for r in sub["expert_scale"]]
    np.testing.assert_allclose(sub["expert_coef"], full["expert_coef"][rows])
    assert posterior_params(dt, n_draws=500)["expert_scale"].shape == (80, 3)


def test_plot_fit_curves_equal_predict():
    model, params = _gaussian_model()
    x, y = _data(model, params)
    ax = plot_fit(model, x, y, params=params, n_grid=50)
    gx, mix = _line(ax, "mixture_mean")
    assert gx.shape == (50,)
    pred = model.predict(params, gx[:, None])
    np.testing.assert_allclose(mix, np.asarray(pred.mean), rtol=1e-5, atol=1e-5)
    for k in range(3):
        gxk, yk = _line(ax, f"expert_mean_{k}")
        np.testing.assert_allclose(gxk, gx)
        np.testing.assert_allclose(yk, np.asarray(pred.expert_mean[:, k]), rtol=1e-5, atol=1e-5)
    assert not [c for c in ax.collections if str(c.get_gid()).endswith("band")]


def test_plot_fit_posterior_bands_contain_median():
    model, params = _gaussian_model()
    x, y = _data(model, params)
    dt = _fake_posterior(params)
    ax = plot_fit(model, x, y, idata=dt, n_grid=40, n_draws=None, band=0.8)
    gx, mix = _line(ax, "mixture_mean")
    med = _median_prediction(model, dt, gx[:, None])
    np.testing.assert_allclose(mix, med["mean"], rtol=1e-4, atol=1e-4)
    lo, hi = _band(ax, "mixture_band", gx)
    assert np.all(lo <= mix + 1e-6) and np.all(mix <= hi + 1e-6)
    assert np.all(hi - lo > 1e-3)
    for k in range(3):
        _, yk = _line(ax, f"expert_mean_{k}")
        np.testing.assert_allclose(yk, med["expert_mean"][:, k], rtol=1e-4, atol=1e-4)
        lo, hi = _band(ax, f"expert_band_{k}", gx)
        assert np.all(lo <= yk + 1e-6) and np.all(yk <= hi + 1e-6)
        assert np.all(hi - lo > 1e-3)


def test_plot_fit_classifier_with_params_and_idata():
    model, params = _classifier()
    x, y = _data(model, params)
    dt = _fake_posterior(params)
    fig, ax = plt.subplots()
    out = plot_fit(model, x, y, params=params, idata=dt, ax=ax, n_grid=30)
    assert out is ax
    gx, _ = _line(ax, "class_prob_0")
    pred = np.asarray(model.predict(params, gx[:, None]).class_probs)
    for c in range(3):
        _, pc = _line(ax, f"class_prob_{c}")
        np.testing.assert_allclose(pc, pred[:, c], rtol=1e-5, atol=1e-5)
        lo, hi = _band(ax, f"class_band_{c}", gx)
        assert np.all(hi - lo > 1e-4) and np.all(lo >= -1e-6) and np.all(hi <= 1 + 1e-6)


def test_plot_gates_1d_curves_and_bands():
    model, params = _gaussian_model()
    x, _ = _data(model, params)
    dt = _fake_posterior(params)
    ax = plot_gates(model, x, idata=dt, n_grid=40, n_draws=None)
    gx, g0 = _line(ax, "gate_0")
    med = _median_prediction(model, dt, gx[:, None])
    for k in range(3):
        _, gk = _line(ax, f"gate_{k}")
        np.testing.assert_allclose(gk, med["gate_probs"][:, k], rtol=1e-4, atol=1e-5)
        lo, hi = _band(ax, f"gate_band_{k}", gx)
        assert np.all(lo <= gk + 1e-6) and np.all(gk <= hi + 1e-6)
        assert np.mean(hi - lo) > 1e-3
    ax2 = plot_gates(model, x, params=params, n_grid=40)
    _, g0p = _line(ax2, "gate_0")
    np.testing.assert_allclose(g0p, np.asarray(model.predict(params, gx[:, None]).gate_probs[:, 0]),
                               rtol=1e-5, atol=1e-6)


def _image(ax, gid):
    found = [im for im in ax.get_images() if im.get_gid() == gid]
    assert len(found) == 1, gid
    im = found[0]
    arr = np.asarray(im.get_array())
    x0, x1, y0, y1 = im.get_extent()
    ny, nx = arr.shape
    cx = np.linspace(x0, x1, nx + 1)
    cy = np.linspace(y0, y1, ny + 1)
    return arr, 0.5 * (cx[1:] + cx[:-1]), 0.5 * (cy[1:] + cy[:-1])


@pytest.mark.parametrize("use_idata", [False, True])
def test_plot_gates_2d_regions_are_argmax(use_idata):
    model, params = _gaussian_model(d=2)
    x, _ = _data(model, params, d=2)
    kw = {"idata": _fake_posterior(params, noise=0.05)} if use_idata else {"params": params}
    ax = plot_gates(model, x, n_grid=60, **kw)
    arr, gx, gy = _image(ax, "gate_regions")
    assert arr.shape == (60, 60)
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 60, 40), rng.integers(0, 60, 40)
    pts = np.column_stack([gx[cols], gy[rows]])
    if use_idata:
        draws = posterior_params(kw["idata"], n_draws=200)
        S = len(draws["expert_scale"])
        g = np.mean([np.asarray(model.predict({k: v[s] for k, v in draws.items()}, pts).gate_probs)
                     for s in range(S)], axis=0)
    else:
        g = np.asarray(model.predict(params, pts).gate_probs)
    top2 = np.sort(g, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-3  # skip points on a boundary (float ties)
    assert clear.sum() > 30
    np.testing.assert_array_equal(arr[rows, cols][clear], np.argmax(g, axis=1)[clear])
    assert len(np.unique(arr)) >= 2  # more than one region on the plot


def test_plot_fit_2d_classifier_regions():
    model, params = _classifier(d=2)
    x, y = _data(model, params, d=2)
    ax = plot_fit(model, x, y, params=params, n_grid=40)
    arr, gx, gy = _image(ax, "class_regions")
    g0, g1 = np.meshgrid(gx, gy)
    cp = np.asarray(model.predict(params, np.column_stack([g0.ravel(), g1.ravel()])).class_probs)
    np.testing.assert_array_equal(arr.ravel(), np.argmax(cp, axis=1))


def test_bad_inputs():
    model, params = _gaussian_model()
    x, y = _data(model, params, n=30)
    with pytest.raises(ValueError, match="params.*idata"):
        plot_fit(model, x, y)
    with pytest.raises(ValueError, match="params.*idata"):
        plot_gates(model, x)
    with pytest.raises(ValueError, match="band"):
        plot_fit(model, x, y, params=params, band=1.5)
    with pytest.raises(ValueError, match="n_grid"):
        plot_gates(model, x, params=params, n_grid=1)
    with pytest.raises(ValueError, match="n_draws"):
        plot_gates(model, x, idata=_fake_posterior(params), n_draws=0)
    with pytest.raises(ValueError, match="features"):
        plot_gates(model, np.zeros((5, 3)), params=params)
    with pytest.raises(ValueError, match="features"):
        plot_fit(model, np.zeros((5, 3)), np.zeros(5), params=params)
    with pytest.raises(ValueError, match="y"):
        plot_fit(model, x, y[:-1], params=params)
    with pytest.raises(ValueError, match="y"):
        plot_fit(model, x, None, params=params)
    with pytest.raises(ValueError, match="model"):
        plot_fit("not a model", x, y, params=params)
    with pytest.raises(ValueError, match="missing"):
        plot_fit(model, x, y, params={"expert_scale": np.ones(3)})
    with pytest.raises(ValueError, match="posterior"):
        posterior_params({"nothing": 1})
    with pytest.raises(ValueError, match="missing"):
        plot_gates(model, x, idata=from_dict({"posterior": {"foo": np.zeros((2, 5))}}))
