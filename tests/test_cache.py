"""The persistent JAX compilation cache (bayesmoe._cache, issue 12).

Every test that configures JAX runs in a fresh interpreter (subprocess) with a temporary HOME,
XDG_CACHE_HOME and cache directory, so the test process's JAX config and the real user cache
directory are never touched. No timing here: speeds are in benchmarks/cold_start.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bayesmoe._cache import (
    ENV_DIR,
    ENV_SWITCH,
    _dir_from_environment,
    default_cache_dir,
    set_compilation_cache,
)

# A child that counts JAX's persistent-cache events, runs one small fit_mle through the public
# entry point (so the default wiring in bayesmoe.inference is exercised) and prints JSON.
FIT_CHILD = textwrap.dedent("""
    import json
    import jax

    events = {}
    jax.monitoring.register_event_listener(
        lambda name, **kw: events.__setitem__(name, events.get(name, 0) + 1))

    import numpy as np
    import bayesmoe as bm

    # Data simulated with numpy, as a user's real data would arrive: the only JAX programs are
    # the fit's (bayesmoe.model's own methods compile before the workflows are imported).
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, size=(200, 1))
    p1 = 1.0 / (1.0 + np.exp(-2.5 * x[:, 0]))
    z = (rng.uniform(size=200) > p1).astype(int)
    mean = np.where(z == 0, 1.0 + 2.0 * x[:, 0], -1.0 - 1.5 * x[:, 0])
    y = mean + np.array([0.5, 0.8])[z] * rng.normal(size=200)
    model = bm.MoE(bm.gates.Softmax(), bm.experts.Gaussian(degree=1), n_experts=2)
    fit = bm.fit_mle(model, x, y, n_starts=2, seed=0)
    prefix = "/jax/compilation_cache/"
    print(json.dumps({
        "cache_dir": jax.config.jax_compilation_cache_dir,
        "params": {k: np.asarray(v).tolist() for k, v in sorted(fit.params.items())},
        "requests": events.get(prefix + "compile_requests_use_cache", 0),
        "hits": events.get(prefix + "cache_hits", 0),
        "writes": events.get(prefix + "cache_misses", 0),
    }))
""")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The test environment with a private HOME/XDG cache and no cache settings of the caller."""
    env = {k: v for k, v in os.environ.items()
           if k not in (ENV_DIR, ENV_SWITCH, "JAX_COMPILATION_CACHE_DIR", "XDG_CACHE_HOME")}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), USERPROFILE=str(home), MPLBACKEND="Agg", JAX_PLATFORMS="cpu")
    env.update(extra)
    return env


def _run(code: str, env: dict[str, str]) -> dict:
    """Run ``code`` in a fresh interpreter; return the JSON object of its last stdout line."""
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"child failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _files(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}


def test_second_process_compiles_nothing_and_gives_identical_params(tmp_path):
    cache = tmp_path / "cache"
    env = _env(tmp_path, **{ENV_DIR: str(cache)})

    first = _run(FIT_CHILD, env)
    assert first["cache_dir"] == str(cache)
    files_after_first = _files(cache)
    assert first["requests"] > 0 and first["writes"] > 0 and first["hits"] == 0
    assert len(files_after_first) >= first["writes"]

    second = _run(FIT_CHILD, env)
    # Every compilation of the second process was served from the cache: nothing was compiled.
    assert second["requests"] > 0
    assert second["hits"] == second["requests"], second
    assert second["writes"] == 0, second
    assert _files(cache) == files_after_first
    assert second["params"] == first["params"]
    # The default (platform) cache directory under the private HOME was not used.
    assert not (tmp_path / "home" / ".cache" / "bayesmoe").exists()


STATE_CHILD = textwrap.dedent("""
    import json, sys
    import jax
    {setup}
    import bayesmoe.inference  # the workflows' entry configures the default cache
    {after}
    jax.jit(lambda v: v * 2.0 + 1.0)(jax.numpy.arange(3.0)).block_until_ready()
    print(json.dumps({{"dir": jax.config.jax_compilation_cache_dir,
                       "min_time": jax.config.jax_persistent_cache_min_compile_time_secs,
                       "min_size": jax.config.jax_persistent_cache_min_entry_size_bytes}}))
""")


@pytest.mark.parametrize("value", ["0", "Off"])
def test_environment_switch_disables_the_cache(tmp_path, value):
    out = _run(STATE_CHILD.format(setup="", after=""), _env(tmp_path, **{ENV_SWITCH: value}))
    assert out["dir"] is None
    assert not (tmp_path / "home" / ".cache" / "bayesmoe").exists()  # nothing in the default dir


def test_default_directory_follows_xdg_and_lowers_thresholds(tmp_path):
    out = _run(STATE_CHILD.format(setup="", after=""), _env(tmp_path))
    expected = tmp_path / "home" / ".cache" / "bayesmoe" / "jax"
    if sys.platform == "darwin":
        expected = tmp_path / "home" / "Library" / "Caches" / "bayesmoe" / "jax"
    if sys.platform.startswith("win"):
        pytest.skip("LOCALAPPDATA is not redirected on Windows")
    assert out["dir"] == str(expected)
    assert out["min_time"] == 0.0 and out["min_size"] == -1
    assert _files(expected)  # the jit above was written to it

    xdg = tmp_path / "xdg"
    if sys.platform.startswith("linux"):
        out = _run(STATE_CHILD.format(setup="", after=""), _env(tmp_path, XDG_CACHE_HOME=str(xdg)))
        assert out["dir"] == str(xdg / "bayesmoe" / "jax")


def test_a_directory_set_by_the_user_is_respected(tmp_path):
    mine = tmp_path / "mine"
    setup = f"jax.config.update('jax_compilation_cache_dir', {str(mine)!r})"
    out = _run(STATE_CHILD.format(setup=setup, after=""),
               _env(tmp_path, **{ENV_DIR: str(tmp_path / "other")}))
    assert out["dir"] == str(mine)
    assert out["min_time"] == 1.0  # JAX's own threshold, not ours
    assert not (tmp_path / "other").exists()

    # The same through JAX's environment variable.
    out = _run(STATE_CHILD.format(setup="", after=""),
               _env(tmp_path, JAX_COMPILATION_CACHE_DIR=str(mine)))
    assert out["dir"] == str(mine)


def test_set_compilation_cache_moves_and_disables(tmp_path):
    moved = tmp_path / "moved"
    after = (f"import bayesmoe as bm\n"
             f"assert bm.set_compilation_cache(None) is None\n"
             f"assert jax.config.jax_compilation_cache_dir is None\n"
             f"assert bm.set_compilation_cache({str(moved)!r}) == {str(moved)!r}")
    out = _run(STATE_CHILD.format(setup="", after=after), _env(tmp_path))
    assert out["dir"] == str(moved)
    assert _files(moved)

    after = "import bayesmoe as bm\nbm.set_compilation_cache(None)"
    out = _run(STATE_CHILD.format(setup="", after=after), _env(tmp_path, **{ENV_DIR: str(tmp_path / "e")}))
    assert out["dir"] is None
    assert not (tmp_path / "e").exists()


def test_importing_the_package_and_nn_configures_nothing(tmp_path):
    code = textwrap.dedent("""
        import json, sys
        import bayesmoe, bayesmoe.nn
        import jax
        print(json.dumps({"dir": jax.config.jax_compilation_cache_dir,
                          "cache_module": "bayesmoe._cache" in sys.modules,
                          "numpyro": "numpyro" in sys.modules, "arviz": "arviz" in sys.modules}))
    """)
    out = _run(code, _env(tmp_path))
    assert out == {"dir": None, "cache_module": False, "numpyro": False, "arviz": False}


def test_default_cache_dir_per_platform():
    home = "/h"
    assert default_cache_dir({"HOME": home}, "linux") == Path("/h/.cache/bayesmoe/jax")
    assert default_cache_dir({"HOME": home, "XDG_CACHE_HOME": "/x"}, "linux") == Path("/x/bayesmoe/jax")
    # A relative XDG_CACHE_HOME is invalid by the XDG spec and ignored.
    relative = {"HOME": home, "XDG_CACHE_HOME": "rel"}
    assert default_cache_dir(relative, "linux") == Path("/h/.cache/bayesmoe/jax")
    assert default_cache_dir({"HOME": home}, "darwin") == Path("/h/Library/Caches/bayesmoe/jax")
    assert default_cache_dir({"HOME": home, "LOCALAPPDATA": "/L"}, "win32") == Path("/L/bayesmoe/jax")
    assert default_cache_dir({"USERPROFILE": home}, "win32") == Path("/h/AppData/Local/bayesmoe/jax")


def test_environment_parsing():
    base = {"HOME": "/h"}
    assert _dir_from_environment({**base, ENV_SWITCH: "off"}) is None
    assert _dir_from_environment({**base, ENV_SWITCH: "0", ENV_DIR: "/d"}) is None  # off wins
    assert _dir_from_environment({**base, ENV_SWITCH: "1"}) == default_cache_dir(base)
    assert _dir_from_environment({**base, ENV_DIR: "/d"}) == Path("/d")
    with pytest.warns(RuntimeWarning, match=ENV_SWITCH):
        assert _dir_from_environment({**base, ENV_SWITCH: "maybe"}) is None


def test_set_compilation_cache_rejects_bad_paths(tmp_path):
    # These fail before JAX's configuration is touched.
    with pytest.raises(TypeError, match="path must be a str"):
        set_compilation_cache(3)
    with pytest.raises(TypeError, match="got bytes"):
        set_compilation_cache(b"/tmp/x")
    with pytest.raises(ValueError, match="must not be empty"):
        set_compilation_cache("  ")
    a_file = tmp_path / "f"
    a_file.write_text("")
    with pytest.raises(ValueError, match="not a directory"):
        set_compilation_cache(a_file)
