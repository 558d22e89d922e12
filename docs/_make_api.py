"""Write the API reference pages (docs/api/*.md) from the package's ``__all__`` lists.

Every public name of ``bayesmoe`` and of its public submodules gets a mkdocstrings entry pointing at
the object's defining module, so the reference cannot fall behind the code: ``make docs`` runs this
script before ``mkdocs build --strict``, and ``tests/test_api_docs.py`` checks the pages cover every
name.

Usage: python docs/_make_api.py
"""

from __future__ import annotations

import importlib
import inspect
import types
from pathlib import Path

import bayesmoe

PAGES = Path(__file__).resolve().parent / "api"


def _target(module: str, name: str) -> str:
    obj = getattr(importlib.import_module(module), name)
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    home = getattr(obj, "__module__", None)
    qual = getattr(obj, "__qualname__", name)
    if home and (inspect.isclass(obj) or inspect.isfunction(obj)) and "<" not in qual:
        return f"{home}.{qual}"
    return f"{module}.{name}"


def public_modules() -> list[str]:
    """``bayesmoe`` and its submodules listed in ``bayesmoe.__all__``, with their own ``__all__``."""
    out = ["bayesmoe"]
    for name in sorted(bayesmoe.__all__):
        obj = getattr(bayesmoe, name)
        if isinstance(obj, types.ModuleType) and hasattr(obj, "__all__"):
            out.append(obj.__name__)
    return out


def owners(modules: list[str]) -> dict[str, str]:
    """The one page documenting each object: its defining module's page when that page exists, else
    the first page (top level first) listing it. Other pages link to it (unique anchors)."""
    out: dict[str, str] = {}
    for module in modules:
        mod = importlib.import_module(module)
        for name in sorted(mod.__all__):
            if isinstance(getattr(mod, name), types.ModuleType):
                continue
            target = _target(module, name)
            home = target.rsplit(".", 1)[0]
            out[target] = home if home in modules else out.get(target, module)
    return out


def page(module: str, owner: dict[str, str]) -> str:
    mod = importlib.import_module(module)
    title = module if module != "bayesmoe" else "bayesmoe (top level)"
    lines = [f"# `{title}`", ""]
    doc = (inspect.getdoc(mod) or "").strip().splitlines()
    if doc:
        lines += [doc[0], ""]
    done: set[str] = set()
    for name in sorted(mod.__all__):
        obj = getattr(mod, name)
        if isinstance(obj, types.ModuleType):
            sub = obj.__name__
            lines += [f"## `{module}.{name}`", "", f"Submodule: see [`{sub}`]({sub}.md).", ""]
            continue
        target = _target(module, name)
        if owner[target] != module or target in done:
            lines += [f"## `{module}.{name}`", "",
                      f"The same object as `{target}`: see [`{owner[target]}`]({owner[target]}.md).", ""]
            continue
        done.add(target)
        lines += [f"## `{module}.{name}`", "", f"::: {target}", "    options:",
                  "      show_root_heading: false", "      heading_level: 3", ""]
    return "\n".join(lines)


def main() -> list[Path]:
    PAGES.mkdir(exist_ok=True)
    for old in PAGES.glob("*.md"):
        old.unlink()
    written = []
    modules = public_modules()
    owner = owners(modules)
    for module in modules:
        path = PAGES / f"{module}.md"
        path.write_text(page(module, owner))
        written.append(path)
    index = ["# API reference", "", "Generated from the docstrings of every public name.", ""]
    index += [f"- [`{p.stem}`]({p.name})" for p in written]
    (PAGES / "index.md").write_text("\n".join(index) + "\n")
    return written


if __name__ == "__main__":
    for p in main():
        print(p)
