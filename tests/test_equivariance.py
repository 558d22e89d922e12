"""Right answers in any units: fit_mle on rescaled or shifted x and y reaches the transformed-data MLE
(the original log-likelihood plus the exact Jacobian), and its parameters map back to the original fit's."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bayesmoe as bm

REF = Path(__file__).resolve().parents[2] / "shared" / "reference" / "sgmoe_k2_n1000.csv"
MODEL = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2)
# (name, x scale, x shift, y scale, y shift)
TRANSFORMS = [("x*1e-8", 1e-8, 0.0, 1.0, 0.0), ("x*1e6", 1e6, 0.0, 1.0, 0.0), ("x+1e6", 1.0, 1e6, 1.0, 0.0),
              ("y*1e-8", 1.0, 0.0, 1e-8, 0.0), ("y*1e6", 1.0, 0.0, 1e6, 0.0), ("y+1e6", 1.0, 0.0, 1.0, 1e6)]


@pytest.fixture(scope="module")
def data():
    if not REF.exists():
        pytest.skip(f"reference data not found at {REF}")
    df = pd.read_csv(REF)
    return df[["x"]].to_numpy(), df["y"].to_numpy()


@pytest.fixture(scope="module")
def base_fits(data):
    x, y = data
    return {m: bm.fit_mle(MODEL, x, y, method=m, seed=0) for m in ("lbfgs", "em", "adam")}


def _back(params, a, b, c, e):
    """Parameters fitted on (a x + b, c y + e) expressed for (x, y), by hand (linear experts, softmax)."""
    out = dict(params)
    out["gate_coef"] = params["gate_coef"] * a
    out["gate_intercept"] = params["gate_intercept"] + params["gate_coef"][:, 0] * b
    coef, icpt = params["expert_coef"] * a, params["expert_intercept"] + params["expert_coef"][:, 0] * b
    out["expert_coef"] = coef / c
    out["expert_intercept"] = (icpt - e) / c
    out["expert_scale"] = params["expert_scale"] / c
    return out


def _same_labels(est, ref):
    if np.sum(np.abs(est["expert_intercept"] - ref["expert_intercept"])) > \
            np.sum(np.abs(est["expert_intercept"][::-1] - ref["expert_intercept"])):
        est = {k: v[::-1] for k, v in est.items()}
        est = {**est, "gate_intercept": est["gate_intercept"] - est["gate_intercept"][-1],
               "gate_coef": est["gate_coef"] - est["gate_coef"][-1]}
    return est


@pytest.mark.parametrize("method", ["lbfgs", "em", "adam"])
@pytest.mark.parametrize("name,a,b,c,e", TRANSFORMS)
def test_fit_is_equivariant(data, base_fits, method, name, a, b, c, e):
    x, y = data
    base = base_fits[method]
    fit = bm.fit_mle(MODEL, a * x + b, c * y + e, method=method, seed=0)
    want = base.log_likelihood - len(y) * np.log(abs(c))
    assert fit.log_likelihood == pytest.approx(want, rel=1e-3 * abs(base.log_likelihood) / abs(want))
    back = _same_labels(_back(fit.params, a, b, c, e), base.params)
    # Adam stops wherever its tolerance is met: agreement to its precision (far below the standard
    # errors, about 0.1 here); L-BFGS and EM land on the same point
    atol = 1e-2 if method == "adam" else 2e-3
    for k in ("gate_intercept", "gate_coef", "expert_intercept", "expert_coef", "expert_scale"):
        np.testing.assert_allclose(back[k], base.params[k], rtol=2e-3, atol=atol, err_msg=f"{name} {k}")


def test_reference_mle_reached_in_float32(base_fits):
    for fit in base_fits.values():
        assert fit.log_likelihood >= -1201.01989 - 1e-3


@pytest.mark.parametrize("d,degree", [(1, 2), (1, 3), (2, 2), (3, 3)])
def test_polynomial_feature_map_is_exact(d, degree):
    """poly((x - m)/s) = A poly(x) + c with A and c from the family's declared map (numpy monomials)."""
    from tests.reference import poly

    rng = np.random.default_rng(d * 10 + degree)
    x, m, s = rng.normal(size=(30, d)), rng.normal(size=d), rng.uniform(0.5, 2.0, size=d)
    fm = bm.experts.Gaussian(degree=degree).feature_map(m, s)
    A = np.zeros((poly(x, degree).shape[1],) * 2)
    np.add.at(A, (fm.rows, fm.cols), np.asarray(fm.vals, np.float64))
    np.testing.assert_allclose(poly(x, degree) @ A.T + np.asarray(fm.offset), poly((x - m) / s, degree),
                               rtol=1e-4, atol=1e-4)


def test_families_declare_their_maps():
    """Regressors redefined without a map are never standardised; polynomials and x itself are."""
    assert bm.experts.Gaussian(degree=3).x_affine(2) and bm.gates.Softmax().x_affine(2)
    assert bm.gates.Gaussian().x_affine(2)
    assert not bm.gates.ModifiedSoftmax("tanh").x_affine(2)
    assert not bm.experts.MultivariateGaussian(2).x_affine(2)
    with pytest.raises(ValueError, match="cannot be standardised"):
        bm.gates.ModifiedSoftmax("tanh").standardize(
            {"gate_intercept": np.zeros(2), "gate_coef": np.zeros((2, 1))}, np.zeros(1), np.ones(1))


@pytest.mark.parametrize("gate", [bm.gates.Softmax(), bm.gates.Gaussian("full"), bm.gates.ModifiedSoftmax()],
                         ids=repr)
@pytest.mark.parametrize("expert", [bm.experts.Gaussian(degree=3),
                                    bm.experts.Categorical(n_classes=3, degree=2)], ids=repr)
def test_standardised_parameters_give_the_same_likelihood(gate, expert):
    """The parameter map of a fit's standardisation is exact: the model on standardised data with the
    mapped parameters has the raw log-likelihood plus the Jacobian, pointwise, and maps back (x64)."""
    import jax

    from bayesmoe.inference import _standardize

    model = bm.MoE(gate, expert, 2)
    rng = np.random.default_rng(5)
    with jax.enable_x64(True):
        x = rng.normal(1.0, 0.5, size=(40, 2)) * np.array([5.0, 0.2]) + np.array([20.0, -3.0])
        p = model.random_params(rng, 2)
        for site in ("expert_coef", "gate_coef"):  # moderate slopes for x near 20
            if site in p:
                p[site] = p[site] / 400.0
        y = np.asarray(model.simulate(1, p, x).y)
        st = _standardize.for_data(model, x, y)
        assert (not np.all(st.x_scale == 1)) == (gate.x_affine(2) and expert.x_affine(2))
        ps = st.to_std(model, p)
        raw = np.asarray(model.log_likelihood(p, x, y))
        std = np.asarray(model.log_likelihood(ps, st.x(x), st.y(y, model)))
        np.testing.assert_allclose(std + st.log_jacobian(model, 1), raw, rtol=1e-8, atol=1e-8)
        back = st.to_raw(model, ps)
        for k in p:
            np.testing.assert_allclose(back[k], p[k], rtol=1e-8, atol=1e-8, err_msg=k)
