"""bm.datasets.ethanol / motorcycle: the shipped files against the numbers documented for these data,
and a BIC selection of K on the ethanol data against a least-squares polynomial baseline (numpy)."""

import warnings

import numpy as np
import pytest

import bayesmoe as bm


def test_motorcycle_matches_r_summary():
    d = bm.datasets.motorcycle()
    assert d.shape == (133, 2) and list(d.columns) == ["times", "accel"]
    # R: summary(MASS::mcycle) (type-7 quantiles, as pandas' default)
    #   times: Min 2.40, 1st Qu 15.60, Median 23.40, Mean 25.18, 3rd Qu 34.80, Max 57.60
    #   accel: Min -134.00, 1st Qu -54.90, Median -13.30, Mean -25.55, 3rd Qu 0.00, Max 75.00
    np.testing.assert_allclose(d["times"].quantile([0, 0.25, 0.5, 0.75, 1]), [2.4, 15.6, 23.4, 34.8, 57.6])
    np.testing.assert_allclose(d["accel"].quantile([0, 0.25, 0.5, 0.75, 1]), [-134, -54.9, -13.3, 0, 75])
    assert d["times"].mean() == pytest.approx(25.18, abs=0.005)
    assert d["accel"].mean() == pytest.approx(-25.55, abs=0.005)
    assert d["times"].is_monotonic_increasing  # the series is recorded in time order


def test_ethanol_matches_documentation():
    d = bm.datasets.ethanol()
    # lattice's ?ethanol: "A data frame with 88 observations on the following 3 variables" NOx, C, E
    assert d.shape == (88, 3) and list(d.columns) == ["NOx", "C", "E"]
    assert sorted(d["C"].unique()) == [7.5, 9.0, 12.0, 15.0, 18.0]  # the five compression ratios
    assert (d["E"].min(), d["E"].max()) == (0.535, 1.232)
    assert (d["NOx"].min(), d["NOx"].max()) == (0.370, 4.028)
    assert d["NOx"].mean() == pytest.approx(1.957, abs=5e-4)
    assert d.iloc[0].tolist() == [3.741, 12.0, 0.907] and d.iloc[-1].tolist() == [1.9, 18.0, 0.655]
    assert not d.isna().any().any()


def _polynomial_fit(x, y, degree):
    """Gaussian least squares: (log-likelihood at the ML variance, BIC with degree + 2 parameters)."""
    resid = y - np.polyval(np.polyfit(x, y, degree), x)
    ll = -0.5 * y.size * (np.log(2 * np.pi * np.mean(resid**2)) + 1)
    return ll, -2 * ll + (degree + 2) * np.log(y.size)


def test_bic_selection_on_ethanol_beats_polynomials():
    d = bm.datasets.ethanol()
    x, y = d[["E"]], d["NOx"]
    make = lambda K: bm.MoE(bm.gates.Gaussian(), bm.experts.Gaussian(degree=1), K)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sel = bm.select_n_experts(make, x, y, range(1, 5), "bic", seed=0, n_starts=2,
                                  fit_kwargs={"method": "em"}, progress_bar=False)
    e, nox = d["E"].to_numpy(), y.to_numpy()
    # K = 1 is a linear regression: its conditional log-likelihood is the least-squares one
    ll1, _ = _polynomial_fit(e, nox, 1)
    assert sel.fits[1].log_likelihood == pytest.approx(ll1, rel=1e-4)
    # NOx rises then falls with E: one line is far from enough, BIC wants several experts
    assert sel.best >= 2
    assert sel.fits[sel.best].bic == min(f.bic for f in sel.fits.values())
    # ... and the chosen mixture beats every least-squares polynomial of degree 1..6 on BIC
    assert sel.fits[sel.best].bic < min(_polynomial_fit(e, nox, deg)[1] for deg in range(1, 7))
    # the likelihood grows with K (nested models, EM from several starts)
    lls = [sel.fits[k].log_likelihood for k in range(1, 5)]
    assert all(b > a for a, b in zip(lls, lls[1:], strict=False))
