import os

# Must be set before jax is imported anywhere.
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
# The suite does not read or write the user's persistent compilation cache (results must not depend on
# what other processes left there); tests/test_cache.py checks the cache in fresh subprocesses.
os.environ.setdefault("BAYESMOE_COMPILATION_CACHE", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
