"""Voronoi losses against hand computations (numpy loops written from the papers' formulas)."""

import itertools

import jax
import numpy as np
import pytest

import bayesmoe as bm
from bayesmoe.metrics import voronoi_cells, voronoi_loss

TRUE = {"gate_intercept": np.array([-0.5, 0.0]), "gate_coef": np.array([[2.0, -1.0], [0.0, 0.0]]),
        "expert_intercept": np.array([1.0, -1.0]), "expert_coef": np.array([[1.0, 0.5], [-2.0, 0.3]]),
        "expert_scale": np.array([0.5, 0.8])}


def _atoms(p, ref=-1):
    """(weights, list of per-atom blocks) of a softmax-gated Gaussian MoE, with atom ``ref`` as the
    gate's reference row."""
    b0 = p["gate_intercept"] - p["gate_intercept"][ref]
    b1 = p["gate_coef"] - p["gate_coef"][ref]
    blocks = [[b1[i], p["expert_coef"][i], np.array([p["expert_intercept"][i]]),
               np.array([p["expert_scale"][i] ** 2])] for i in range(len(b0))]
    return np.exp(b0), blocks


def _hand_loss(fitted, true, over, rbar=None, exps=None):
    """``exps``: a function r -> exponents of (beta1, a, b, sigma^2) in over-fitted cells (None: the
    block left out)."""
    rbar = {2: 4, 3: 6, **(rbar or {})}
    exps = exps or (lambda r: (r, r / 2, r, r / 2))
    tw, tb = _atoms(true)
    # the fitted gauge: the fitted atom closest to the true reference atom in the expert blocks
    _, fb0 = _atoms(fitted)
    ref = int(np.argmin([sum(np.linalg.norm(fb0[i][b] - tb[-1][b]) for b in (1, 2, 3))
                         for i in range(len(fb0))]))
    fw, fb = _atoms(fitted, ref)
    cells = []
    for i in range(len(fw)):
        d = [sum(np.linalg.norm(fb[i][b] - tb[j][b]) for b in range(4)) for j in range(len(tw))]
        cells.append(int(np.argmin(d)))
    total = 0.0
    for j in range(len(tw)):
        members = [i for i in range(len(fw)) if cells[i] == j]
        for i in members:
            dist = [np.linalg.norm(fb[i][b] - tb[j][b]) for b in range(4)]   # beta1, a, b, sigma^2
            if over and len(members) > 1:
                e = exps(rbar[len(members)])
                total += fw[i] * sum(dist[b] ** e[b] for b in range(4) if e[b] is not None)
            else:
                total += fw[i] * sum(dist)
        total += abs(sum(fw[i] for i in members) - tw[j])
    return total, cells


def _perturbed(rng, p, scale=0.1):
    out = {k: v + scale * rng.normal(size=np.shape(v)) for k, v in p.items()}
    out["expert_scale"] = np.abs(out["expert_scale"])
    return out


def test_exact_loss_is_the_hand_computation(rng):
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2)
    for _ in range(5):
        fitted = _perturbed(rng, TRUE)
        want, cells = _hand_loss(fitted, TRUE, over=False)
        with jax.enable_x64(True):
            got = float(voronoi_loss(model, fitted, TRUE))
            assert list(np.asarray(voronoi_cells(model, fitted, TRUE))) == cells
        assert got == pytest.approx(want, rel=1e-9)
    assert float(voronoi_loss(model, TRUE, TRUE)) == 0.0


def test_over_fitted_loss_is_the_hand_computation(rng):
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 4)
    for _ in range(5):
        base = _perturbed(rng, TRUE, 0.05)
        fitted = {k: np.concatenate([v, v[:1] + 0.05 * rng.normal(size=np.shape(v[:1])),
                                     v[1:] + 0.05 * rng.normal(size=np.shape(v[1:]))])
                  for k, v in base.items()}
        fitted["expert_scale"] = np.abs(fitted["expert_scale"])
        fitted["gate_intercept"] = fitted["gate_intercept"] - fitted["gate_intercept"][-1]
        fitted["gate_coef"] = fitted["gate_coef"] - fitted["gate_coef"][-1]
        want, cells = _hand_loss(fitted, TRUE, over=True)
        assert sorted(np.bincount(cells, minlength=2)) == [2, 2]       # two 2-atom cells
        with jax.enable_x64(True):
            got = float(voronoi_loss(model, fitted, TRUE))
        assert got == pytest.approx(want, rel=1e-9)


def test_block_orders_replace_the_families_exponents(rng):
    """``orders`` overrides the exponents of the named blocks in over-fitted cells (a number: fixed;
    "r/2": half the cell's r); unnamed blocks keep the families' (sigma^2: r/2); singleton cells stay
    first powers."""
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 3)
    base = _perturbed(rng, TRUE, 0.05)
    fitted = {k: np.concatenate([v[:1] + 0.05 * rng.normal(size=np.shape(v[:1])), v])
              for k, v in base.items()}
    fitted["expert_scale"] = np.abs(fitted["expert_scale"])
    with jax.enable_x64(True):
        for orders, exps, rbar in (({"beta1": 2, "a": 2, "b": 2}, lambda r: (2, 2, 2, r / 2), None),
                                   ({"b": "r/2", "sigma": 1.5}, lambda r: (r, r / 2, r / 2, 1.5), {2: 3.0}),
                                   ({"beta1": 1, "b": None}, lambda r: (1, r / 2, None, r / 2), None)):
            want, cells = _hand_loss(fitted, TRUE, over=True, rbar=rbar, exps=exps)
            assert sorted(np.bincount(cells, minlength=2)) == [1, 2]
            got = float(voronoi_loss(model, fitted, TRUE, orders=orders, rbar=rbar))
            assert got == pytest.approx(want, rel=1e-9)
            assert got != pytest.approx(float(voronoi_loss(model, fitted, TRUE, rbar=rbar)), rel=1e-3)
        exact = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2)
        assert float(voronoi_loss(exact, base, TRUE, orders={"a": 2})) == pytest.approx(
            _hand_loss(base, TRUE, over=False)[0], rel=1e-9)


def test_loss_is_invariant_to_permuting_fitted_experts(rng):
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 3)
    fitted = {k: np.concatenate([v, v[:1] + 0.1]) for k, v in _perturbed(rng, TRUE).items()}
    with jax.enable_x64(True):
        ref = float(voronoi_loss(model, fitted, TRUE))
        for perm in itertools.permutations(range(3)):
            p = {k: v[list(perm)] for k, v in fitted.items()}       # re-gauged inside the loss
            assert float(voronoi_loss(model, p, TRUE)) == pytest.approx(ref, rel=1e-9)


def test_inf_translation_is_below_gauge_and_translation_invariant(rng):
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2)
    with jax.enable_x64(True):
        for _ in range(3):
            fitted = _perturbed(rng, TRUE, 0.3)
            gauge = float(voronoi_loss(model, fitted, TRUE))
            inf = float(voronoi_loss(model, fitted, TRUE, translation="inf"))
            assert inf <= gauge + 1e-12
            shifted = {**fitted, "gate_intercept": fitted["gate_intercept"] + 1.7,
                       "gate_coef": fitted["gate_coef"] + np.array([0.4, -2.0])}
            # the minimiser (a compass search on a non-smooth loss) is precise to about 1e-6
            shifted_inf = float(voronoi_loss(model, shifted, TRUE, translation="inf"))
            assert shifted_inf == pytest.approx(inf, rel=1e-5)
            assert float(voronoi_loss(model, shifted, TRUE)) == pytest.approx(gauge, rel=1e-9)


def test_overflowing_masses_give_inf_not_nan():
    # a run-off fit: gate intercept 800, mass exp(800) overflows float64
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2)
    with jax.enable_x64(True):
        far = {**TRUE, "gate_intercept": np.array([800.0, 0.0])}
        assert float(voronoi_loss(model, far, TRUE)) == np.inf
        # minimised over the translation: finite, and equal to that of the same fit translated by
        # -800 (masses exp(0) and exp(-800), no overflow), whose value is computed from the gauge
        inf = float(voronoi_loss(model, far, TRUE, translation="inf"))
        moved = {**far, "gate_intercept": far["gate_intercept"] - 800.0}
        assert np.isfinite(inf)
        assert inf == pytest.approx(float(voronoi_loss(model, moved, TRUE, translation="inf")), rel=1e-5)
        three = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 3)
        over = {k: np.concatenate([v, v[:1]]) for k, v in far.items()}
        assert float(voronoi_loss(three, over, TRUE)) == np.inf


def test_vmap_and_jit_over_replications(rng):
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2)
    reps = [_perturbed(rng, TRUE) for _ in range(4)]
    stacked = {k: np.stack([r[k] for r in reps]) for k in TRUE}
    with jax.enable_x64(True):
        got = jax.jit(jax.vmap(lambda p: voronoi_loss(model, p, TRUE)))(stacked)
        want = [float(voronoi_loss(model, r, TRUE)) for r in reps]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-9)


def test_multinomial_experts_with_modified_softmax(rng):
    model = bm.MoE(bm.gates.ModifiedSoftmax("tanh"), bm.experts.Categorical(3), 2)
    true = model.random_params(rng, 2)
    fitted = {k: v + 0.05 * rng.normal(size=np.shape(v)) for k, v in true.items()}
    with jax.enable_x64(True):
        got = float(voronoi_loss(model, fitted, true))
    fitted = {**fitted, "gate_intercept": fitted["gate_intercept"] - fitted["gate_intercept"][-1],
              "gate_coef": fitted["gate_coef"] - fitted["gate_coef"][-1],
              "expert_intercept": fitted["expert_intercept"] - fitted["expert_intercept"][:, -1:],
              "expert_coef": fitted["expert_coef"] - fitted["expert_coef"][:, -1:]}
    fw, tw = np.exp(fitted["gate_intercept"]), np.exp(true["gate_intercept"])
    total = 0.0
    for i in range(2):
        d = [np.linalg.norm(fitted["gate_coef"][i] - true["gate_coef"][j])
             + np.linalg.norm((fitted["expert_coef"][i] - true["expert_coef"][j]).ravel())
             + np.linalg.norm(fitted["expert_intercept"][i] - true["expert_intercept"][j]) for j in range(2)]
        total += fw[i] * min(d)
        assert int(np.argmin(d)) == i
    total += np.sum(np.abs(fw - tw))
    assert got == pytest.approx(total, rel=1e-9)


def test_bad_input_names_the_argument(rng):
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 5)
    fitted = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 5).random_params(rng, 2)
    with pytest.raises(ValueError, match="`rbar` is required"):
        far = {k: v.copy() for k, v in fitted.items()}
        far["expert_intercept"] = np.array([1.0, 1.01, 1.02, 1.03, -1.0])   # four atoms near expert 0
        far["expert_coef"] = np.tile(TRUE["expert_coef"][[0, 0, 0, 0, 1]], 1)
        voronoi_loss(model, far, TRUE)
    with pytest.raises(ValueError, match="`true_params`"):
        voronoi_loss(model, fitted, {k: v for k, v in TRUE.items() if k != "gate_coef"})
    with pytest.raises(ValueError, match="`fitted_params"):
        voronoi_loss(model, {**fitted, "gate_coef": np.zeros((5, 3))}, TRUE)
    with pytest.raises(ValueError, match="`kind`"):
        voronoi_loss(model, fitted, TRUE, kind="exact")
    with pytest.raises(ValueError, match="`translation`"):
        voronoi_loss(model, fitted, TRUE, translation="none")
    with pytest.raises(ValueError, match="`orders` names block 'gamma'"):
        voronoi_loss(model, fitted, TRUE, orders={"gamma": 2})
    with pytest.raises(ValueError, match="`orders` names block 'gamma'"):
        voronoi_loss(model, fitted, TRUE, orders={"gamma": None})
    with pytest.raises(ValueError, match=r"`orders`\['a'\]"):
        voronoi_loss(model, fitted, TRUE, orders={"a": "r/3"})
    with pytest.raises(ValueError, match=r"`orders`\['a'\] must be positive"):
        voronoi_loss(model, fitted, TRUE, orders={"a": 0})
    poisson = bm.MoE(bm.gates.Softmax(), bm.experts.Poisson(), 2)
    pp = poisson.random_params(rng, 2)
    with pytest.raises(ValueError, match="no Voronoi loss"):
        voronoi_loss(poisson, pp, pp)


def _gg_hand_loss(fitted, true, over):
    """Regime-1 / regime-2 Voronoi loss of a Gaussian-gated Gaussian MoE (arXiv 2305.07572), by loops."""
    def atoms(p):
        return [[p["gate_loc"][i], p["gate_scale"][i] ** 2, p["expert_coef"][i],
                 np.array([p["expert_intercept"][i]]), np.array([p["expert_scale"][i] ** 2])]
                for i in range(len(p["gate_weight"]))]
    fa, ta = atoms(fitted), atoms(true)
    fw, tw = fitted["gate_weight"], true["gate_weight"]
    cells = [int(np.argmin([sum(np.linalg.norm(fa[i][b] - ta[j][b]) for b in range(5))
                            for j in range(len(ta))])) for i in range(len(fa))]
    total = 0.0
    for j in range(len(ta)):
        members = [i for i in range(len(fa)) if cells[i] == j]
        r = {2: 4, 3: 6}.get(len(members), 1)
        regime2 = np.all(true["gate_loc"][j] == 0)
        for i in members:
            dist = [np.linalg.norm(fa[i][b] - ta[j][b]) for b in range(5)]     # c, Gamma, A, b, nu
            if over and len(members) > 1:
                total += fw[i] * (dist[0] ** r + dist[1] ** (r / 2) + dist[2] ** (r / 2 if regime2 else 2)
                                  + dist[3] ** r + dist[4] ** (r / 2))
            else:
                total += fw[i] * sum(dist)
        total += abs(sum(fw[i] for i in members) - tw[j])
    return total, cells


@pytest.mark.parametrize("which", [1, 2])
def test_gaussian_gated_losses_are_the_hand_computation(rng, which):
    model3, true = bm.datasets.gaussian_gated(which)
    with jax.enable_x64(True):
        assert float(voronoi_loss(model3, true, true)) == 0.0
        for split in (0, 2):                                   # split true atom 0 (regime 2 in model 2) or 2
            p = {k: np.asarray(v, float) + 0.02 * rng.normal(size=np.shape(v)) for k, v in true.items()}
            p["gate_scale"], p["expert_scale"] = np.abs(p["gate_scale"]), np.abs(p["expert_scale"])
            w = np.abs(true["gate_weight"] + 0.02 * rng.normal(size=3))
            p["gate_weight"] = w / w.sum()
            want, cells = _gg_hand_loss(p, true, over=False)
            assert cells == [0, 1, 2]
            assert float(voronoi_loss(model3, p, true)) == pytest.approx(want, rel=1e-9)
            # over-fits: one or two extra atoms near true atom `split` (cells of 2 and 3 atoms: with 3,
            # the slope exponents of the regimes differ, 2 against r/2 = 3)
            for n_extra in (1, 2):
                extra = {k: v[[split] * n_extra] + 0.03 * rng.normal(size=(n_extra,) + np.shape(v)[1:])
                         for k, v in p.items()}
                q = {k: np.concatenate([p[k], np.abs(extra[k]) if k.endswith(("scale", "weight"))
                                        else extra[k]]) for k in p}
                q["gate_weight"] = q["gate_weight"] / q["gate_weight"].sum()
                want, cells = _gg_hand_loss(q, true, over=True)
                assert cells == [0, 1, 2] + [split] * n_extra
                model = bm.MoE(model3.gate, model3.expert, 3 + n_extra, joint=True)
                got = float(voronoi_loss(model, q, true))
                assert got == pytest.approx(want, rel=1e-9)
                # no translation freedom: "inf" is the gauge value; permuting fitted atoms changes nothing
                assert float(voronoi_loss(model, q, true, translation="inf")) == pytest.approx(got, rel=1e-12)
                perm = np.roll(np.arange(3 + n_extra), 1)
                assert float(voronoi_loss(model, {k: v[perm] for k, v in q.items()}, true)) == pytest.approx(
                    got, rel=1e-12)
