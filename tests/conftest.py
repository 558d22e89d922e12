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


# ----------------------------------------------------------------------------- the quick subset
# `make test-fast` runs the tests not marked slow. Besides the explicit `@pytest.mark.slow`, the tests
# listed in tests/slow_tests.txt (those that took longer than a threshold in a measured full run on the
# 2-core machine; regenerate with `python tests/_slow_list.py DURATIONS_LOG`) are marked slow here.
_SLOW_LIST = os.path.join(os.path.dirname(__file__), "slow_tests.txt")


def _slow_ids() -> tuple[set[str], set[str]]:
    """(slow node ids, those whose cost was a fixture's setup)."""
    slow, by_setup = set(), set()
    if os.path.exists(_SLOW_LIST):
        with open(_SLOW_LIST) as fh:
            for ln in fh:
                node = ln.split("#")[0].strip()
                if node:
                    slow.add(node)
                    if ln.rstrip().endswith(" setup"):
                        by_setup.add(node)
    return slow, by_setup


def pytest_collection_modifyitems(config, items):
    slow, by_setup = _slow_ids()
    shared = set()  # (module, fixture) of the costly shared fixtures
    for item in items:
        if item.nodeid in by_setup:
            for name, defs in item._fixtureinfo.name2fixturedefs.items():
                if defs and defs[-1].scope != "function":
                    shared.add((item.nodeid.split("::")[0], name))
    for item in items:
        module = item.nodeid.split("::")[0]
        if (item.nodeid in slow or item.nodeid.split("[")[0] in slow
                or any((module, name) in shared for name in item.fixturenames)):
            item.add_marker(pytest.mark.slow)
