"""Compiled programs are reused: an equal new model, and one more row of data, compile no new
optimiser loop (rows padded to size buckets with a zero-weight mask; issue 12)."""

import numpy as np
import pytest

import bayesmoe as bm
from bayesmoe.inference import _optimize, _sharding
from tests.reference import moe_log_lik


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, n)
    z = rng.uniform(size=n) < 1 / (1 + np.exp(-2.5 * x))
    y = np.where(z, 1 + 2 * x + 0.5 * rng.standard_normal(n), -1 - 1.5 * x + 0.8 * rng.standard_normal(n))
    return x, y


def _model():
    return bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), n_experts=2)


@pytest.mark.parametrize("method", ["lbfgs", "em"])
def test_equal_model_and_one_more_row_compile_no_new_loop(method):
    loop = _optimize._run_chunk if method == "lbfgs" else _sharding._em_sharded
    x, y = _data(301)
    fit = bm.fit_mle(_model(), x[:300], y[:300], method=method, n_starts=2, seed=0)
    compiled = loop._cache_size()
    assert compiled >= 1
    # an equal new model on one more row: same bucket (320 rows), the same compiled loop
    fit2 = bm.fit_mle(_model(), x, y, method=method, n_starts=2, seed=0)
    assert loop._cache_size() == compiled
    # and the padding rows add nothing: the fit's log-likelihood is numpy's at its parameters
    for f, n in ((fit, 300), (fit2, 301)):
        ll = moe_log_lik("softmax", "gaussian", f.params, x[:n, None], y[:n]).sum()
        np.testing.assert_allclose(f.log_likelihood, ll, rtol=1e-5)


def test_later_chunks_of_the_loop_reuse_the_first_chunks_program():
    # the loop runs in chunks of steps; optax's line-search state starts weakly typed, and a loop state
    # whose types changed after the first chunk compiled the chunk a second time (issue 7: 3.5 s)
    x, y = _data(257, seed=4)
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(), n_experts=3)
    before = _optimize._run_chunk._cache_size()
    fit = bm.fit_mle(model, x, y, method="lbfgs", n_starts=2, seed=3, max_steps=400, tol=1e-30)
    assert fit.n_steps > 50  # more than one chunk of 50 steps ran
    assert _optimize._run_chunk._cache_size() == before + 1


def test_size_buckets():
    sizes = {n: _sharding.padded_size(n, 1, bucket=True) for n in (1, 15, 16, 17, 150, 300, 301, 1000,
                                                                    1001, 10_000)}
    assert sizes == {1: 1, 15: 15, 16: 16, 17: 18, 150: 160, 300: 320, 301: 320, 1000: 1024,
                     1001: 1024, 10_000: 10_240}
    for n in range(1, 5000, 37):  # at most an eighth more rows, and a multiple of the devices
        p = _sharding.padded_size(n, 4, bucket=True)
        assert n <= p <= n * 1.125 + 4 and p % 4 == 0


_COMPILES = {"n": 0}


def _count(name, secs, **kwargs):
    if name == "/jax/core/compile/backend_compile_duration":
        _COMPILES["n"] += 1


def test_second_sample_call_compiles_nothing():
    import jax

    jax.monitoring.register_event_duration_secs_listener(_count)
    x, y = _data(200, seed=1)
    kw = {"num_chains": 2, "num_warmup": 20, "num_samples": 20, "n_starts": 2, "progress_bar": False,
          "quiet": True}
    first = bm.sample(_model(), x, y, seed=0, **kw)
    before = _COMPILES["n"]
    assert before > 0  # the listener sees compilations
    second = bm.sample(_model(), x, y, seed=1, **kw)  # an equal model, same shapes, another seed
    assert _COMPILES["n"] == before
    # a real second run (another seed: other draws), with the same sites and dims
    assert not np.allclose(first.posterior["expert_coef"].values, second.posterior["expert_coef"].values)
    assert second.posterior["expert_coef"].dims == first.posterior["expert_coef"].dims
