"""A persistent JAX compilation cache, on by default, so that a fresh process does not recompile.

Why: a fit in a fresh Python process spends most of its time compiling (10-30 s for a first
``fit_mle`` on a 2-core machine, issue 12) although the compiled programs are the same in every
process. JAX can store compiled executables on disk and load them back (its *persistent compilation
cache*); it is off unless ``jax_compilation_cache_dir`` is set. This module turns it on, in the
user's cache directory, the first time a statistical workflow is imported (``bayesmoe.inference``),
never at ``import bayesmoe`` nor ``import bayesmoe.nn`` (those must stay cheap and free of file
system access).

Where (platform conventions):

- Linux and other POSIX: ``$XDG_CACHE_HOME/bayesmoe/jax``, else ``~/.cache/bayesmoe/jax``;
- macOS: ``~/Library/Caches/bayesmoe/jax``;
- Windows: ``%LOCALAPPDATA%\\bayesmoe\\jax``, else ``~\\AppData\\Local\\bayesmoe\\jax``.

Switches, in order of precedence:

1. :func:`set_compilation_cache` (``bm.set_compilation_cache(path)``; ``None`` turns it off);
2. a directory the user already gave JAX (``jax.config.update("jax_compilation_cache_dir", ...)``
   or the ``JAX_COMPILATION_CACHE_DIR`` environment variable) is kept as it is, with JAX's own
   thresholds;
3. ``BAYESMOE_COMPILATION_CACHE=0`` (or ``off``, ``false``, ``no``, ``none``) turns it off;
4. ``BAYESMOE_CACHE_DIR=/path`` stores the compiled programs in ``/path`` itself;
5. otherwise the platform directory above.

When bayesmoe chooses the directory it also sets ``jax_persistent_cache_min_compile_time_secs`` to
0 and ``jax_persistent_cache_min_entry_size_bytes`` to -1 (no size threshold), so that the many
small programs of a fit are cached too (JAX's defaults only store programs that took >= 1 s to
compile), unless the user changed those options from JAX's defaults.

The directory is written to only when JAX compiles something. Like every JAX compilation cache it
is trusted code: do not point it at a directory that other users can write to.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

ENV_SWITCH = "BAYESMOE_COMPILATION_CACHE"
"""Environment variable: ``0``/``off``/``false``/``no``/``none`` disables the default cache."""

ENV_DIR = "BAYESMOE_CACHE_DIR"
"""Environment variable: the directory of the compilation cache (replaces the platform default)."""

_OFF = frozenset({"0", "off", "false", "no", "none", "disable", "disabled"})
_ON = frozenset({"", "1", "on", "true", "yes", "enable", "enabled"})

# JAX's defaults for the two thresholds (jax 0.12: jax/_src/config.py); we only lower them when
# they still hold these values, i.e. when the user did not choose their own.
_JAX_DEFAULT_MIN_COMPILE_TIME = 1.0
_JAX_DEFAULT_MIN_ENTRY_SIZE = 0

# _state["dir"]: the directory bayesmoe put into jax_compilation_cache_dir (None when it did not);
# _state["configured"]: the default configuration ran (it runs at most once per process).
_state: dict = {"configured": False, "dir": None}


def default_cache_dir(environ: dict | None = None, platform: str | None = None) -> Path:
    """The platform's user cache directory for bayesmoe's compiled programs (does not create it).

    :param environ: the environment to read (default ``os.environ``); for tests.
    :param platform: a ``sys.platform`` value (default the running one); for tests.
    :returns: ``<user cache dir>/bayesmoe/jax`` following the platform convention (module docstring).
    """
    env = os.environ if environ is None else environ
    plat = sys.platform if platform is None else platform
    home = Path(env.get("HOME") or env.get("USERPROFILE") or Path.home())
    if plat.startswith("win"):
        local = env.get("LOCALAPPDATA")
        base = Path(local) if local else home / "AppData" / "Local"
        return base / "bayesmoe" / "jax"
    if plat == "darwin":
        return home / "Library" / "Caches" / "bayesmoe" / "jax"
    xdg = env.get("XDG_CACHE_HOME", "")
    # The XDG spec: a relative XDG_CACHE_HOME is invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else home / ".cache"
    return base / "bayesmoe" / "jax"


def _dir_from_environment(environ: dict | None = None) -> Path | None:
    """The cache directory the environment asks for, or None when it asks for no cache."""
    env = os.environ if environ is None else environ
    switch = env.get(ENV_SWITCH)
    if switch is not None:
        value = switch.strip().lower()
        if value in _OFF:
            return None
        if value not in _ON:
            warnings.warn(f"{ENV_SWITCH}={switch!r} is not understood (use 0/off to disable, 1/on to "
                          f"enable, and {ENV_DIR}=/path to move the cache); the compilation cache "
                          "is left off.", RuntimeWarning, stacklevel=3)
            return None
    moved = env.get(ENV_DIR)
    if moved:
        return Path(moved).expanduser()
    return default_cache_dir(env)


def _apply(path: Path | None) -> str | None:
    """Point JAX's persistent cache at ``path`` (None: off) and reset JAX's cache handle."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    value = None if path is None else str(path)
    if jax.config.jax_compilation_cache_dir != value:
        jax.config.update("jax_compilation_cache_dir", value)
        # JAX opens its cache once, on the first compilation; forget that handle so the next
        # compilation uses the new directory (harmless when nothing was opened yet).
        cc.reset_cache()
    if value is not None:
        if jax.config.jax_persistent_cache_min_compile_time_secs == _JAX_DEFAULT_MIN_COMPILE_TIME:
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        if jax.config.jax_persistent_cache_min_entry_size_bytes == _JAX_DEFAULT_MIN_ENTRY_SIZE:
            # -1: no size threshold, and JAX does not override it with a backend default.
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    _state["dir"] = value
    return value


def configure_default() -> str | None:
    """Turn the default persistent compilation cache on (once per process); called by ``bayesmoe.inference``.

    Does nothing when it already ran, when :func:`set_compilation_cache` was called, or when the
    user configured ``jax_compilation_cache_dir`` themselves. Never raises: a cache is an
    optimisation, so an unusable setting only warns.

    :returns: the cache directory in use (the user's own one included), or None when off.
    """
    import jax

    if _state["configured"]:
        return jax.config.jax_compilation_cache_dir
    _state["configured"] = True
    user_dir = jax.config.jax_compilation_cache_dir
    if user_dir:
        return user_dir  # the user's choice wins, with JAX's own thresholds
    try:
        return _apply(_dir_from_environment())
    except Exception as err:  # noqa: BLE001 - never let the cache break a fit
        warnings.warn(f"bayesmoe could not configure the JAX compilation cache ({err}); "
                      "continuing without it.", RuntimeWarning, stacklevel=2)
        return None


def set_compilation_cache(path: str | os.PathLike | None) -> str | None:
    """Move the persistent JAX compilation cache to ``path``, or turn it off with ``None``.

    Compiled programs (the fit, EM and NUTS kernels) are stored in ``path`` and loaded back by
    later processes, which then skip compilation. The default is the platform's user cache
    directory (see :mod:`bayesmoe._cache`); this call overrides it, the environment variables
    ``BAYESMOE_COMPILATION_CACHE`` / ``BAYESMOE_CACHE_DIR`` and a directory set directly in JAX.
    It takes effect for programs compiled afterwards (programs already compiled in this process
    stay in memory). The directory is created by JAX on the first compilation.

    :param path: a directory (``str`` or ``os.PathLike``; ``~`` is expanded), or ``None`` to turn
        the persistent cache off (``jax.config.jax_compilation_cache_dir`` becomes ``None``).
    :returns: the directory now in use as a string, or None when off.
    :raises TypeError: when ``path`` is not a str, an os.PathLike or None.
    :raises ValueError: when ``path`` is empty or names an existing file.
    """
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError("set_compilation_cache: path must be a str, an os.PathLike or None, "
                        f"got {type(path).__name__}")
    if path is not None:
        raw = os.fspath(path)
        if isinstance(raw, bytes):
            raise TypeError("set_compilation_cache: path must be a text path, got bytes")
        if not raw.strip():
            raise ValueError("set_compilation_cache: path must not be empty (use None to turn the "
                             "cache off)")
        path = Path(raw).expanduser()
        if path.exists() and not path.is_dir():
            raise ValueError(f"set_compilation_cache: path {str(path)!r} exists and is not a directory")
    _state["configured"] = True  # an explicit choice: the default configuration must not redo it
    return _apply(path)


def compilation_cache_dir() -> str | None:
    """The persistent compilation cache directory JAX uses now (``None`` when off)."""
    import jax

    return jax.config.jax_compilation_cache_dir


__all__ = ["ENV_DIR", "ENV_SWITCH", "compilation_cache_dir", "configure_default", "default_cache_dir",
           "set_compilation_cache"]
