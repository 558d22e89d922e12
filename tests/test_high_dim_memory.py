"""Many features without (n, m, m) temporaries: the weighted Gram matrices of the Gaussian experts'
least squares and of the softmax gate's Newton steps (bayesmoe._solvers.gram) against numpy, and the
compiled data-driven starts of fit_mle at n = 2000, p = 300 (compiled, not run: XLA's own count of
the program's temporary memory) far below the n (p+1)^2 numbers of row-wise outer products."""

import jax
import jax.numpy as jnp
import numpy as np

import bayesmoe as bm
from bayesmoe._solvers import _mlogit_derivatives, gram, weighted_least_squares
from bayesmoe.inference.init import _params_from_weights


def test_gram_and_wls_match_numpy():
    rng = np.random.default_rng(0)
    z = np.column_stack([np.ones(40), rng.normal(size=(40, 4))])
    w = rng.random((40, 3))
    y = rng.normal(size=40)
    want = np.stack([z.T @ (w[:, k:k + 1] * z) for k in range(3)])
    np.testing.assert_allclose(np.asarray(gram(jnp.asarray(z), jnp.asarray(w))), want, rtol=1e-5)
    beta = np.asarray(weighted_least_squares(jnp.asarray(z), jnp.asarray(y), jnp.asarray(w)))
    for k in range(3):
        sw = np.sqrt(w[:, k])
        ref = np.linalg.lstsq(z * sw[:, None], y * sw, rcond=None)[0]
        np.testing.assert_allclose(beta[k], ref, rtol=1e-4, atol=1e-5)


def test_mlogit_hessian_matches_autodiff():
    """The closed-form negated Hessian of the gate's Newton step (built from Gram matrices) is minus
    JAX's Hessian of the objective."""
    rng = np.random.default_rng(1)
    z = jnp.asarray(np.column_stack([np.ones(30), rng.normal(size=(30, 3))]))
    t = jnp.asarray(rng.dirichlet(np.ones(3), size=30))
    wts = jnp.asarray(rng.random(30))
    beta = jnp.asarray(rng.normal(size=(2, 4)) * 0.3)
    _, _, nh = _mlogit_derivatives(beta, z, t, wts)

    def obj(flat):
        return _mlogit_derivatives(flat.reshape(2, 4), z, t, wts)[0]

    np.testing.assert_allclose(np.asarray(nh), -np.asarray(jax.hessian(obj)(beta.reshape(-1))),
                               rtol=1e-4, atol=1e-4)


def test_starts_memory_at_many_features():
    """fit_mle's data-driven starts (softmax gate Newton + Gaussian experts' least squares, 4 starts
    vmapped) at n = 2000, p = 300: XLA's temporary buffers under 10% of n (p+1)^2 float32 numbers
    (725 MB; the program held them all before)."""
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), 2)
    n, p, S = 2000, 300, 4
    x = np.random.default_rng(0).normal(size=(n, p)).astype(np.float32)
    floors = model.floors(x, x[:, 0], 1e-3)
    spec = jax.ShapeDtypeStruct
    compiled = _params_from_weights.lower(model, spec((n, p), jnp.float32), spec((n,), jnp.float32),
                                          spec((S, n, 2), jnp.float32), floors, False).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < 0.1 * n * (p + 1) ** 2 * 4, temp
