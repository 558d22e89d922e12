"""The API reference covers every public name, and the docs site's navigation lists every page."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _maker():
    spec = importlib.util.spec_from_file_location("_make_api", ROOT / "docs" / "_make_api.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_public_name_has_an_api_entry():
    maker = _maker()
    modules = maker.public_modules()
    assert {"bayesmoe", "bayesmoe.gates", "bayesmoe.experts", "bayesmoe.selection"} <= set(modules)
    owner = maker.owners(modules)
    for module in modules:
        text = (ROOT / "docs" / "api" / f"{module}.md").read_text()
        for name in importlib.import_module(module).__all__:
            assert f"## `{module}.{name}`" in text, f"{module}.{name} is missing from docs/api ({module}.md)"
    # every object documented exactly once, on a page that exists
    assert set(owner.values()) <= set(modules)
    documented = "".join((ROOT / "docs" / "api" / f"{m}.md").read_text() for m in modules)
    for target in owner:
        assert documented.count(f"::: {target}\n") == 1, target


def test_site_navigation_lists_every_page():
    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_multi_constructor("", lambda loader, suffix, node: None)
    cfg = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_Loader)

    def pages(nav):
        for item in nav:
            if isinstance(item, str):
                yield item
            else:
                for v in item.values():
                    yield from (pages(v) if isinstance(v, list) else [v])

    listed = set(pages(cfg["nav"]))
    on_disk = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert on_disk == listed, f"not in mkdocs.yml nav: {sorted(on_disk - listed)}; missing files: " \
                              f"{sorted(listed - on_disk)}"
