"""Run every ```python block of the user docs, so that a broken example fails the test suite.

The blocks of one page run in order in one namespace (later blocks build on earlier ones), in a fresh
temporary working directory (blocks that save figures or files write there, never into the repository).
Each block ends with ``assert`` statements checking its own numbers; a failing block is reported by its
number and its line in the page. Every page of ``docs/`` with python blocks is listed in PAGES
(``test_every_page_is_run`` checks it); the generated API pages (``docs/api``) have none.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = ["index.md", "models.md", "theory.md", "formulas.md", "point_fits.md", "inference.md",
         "performance.md", "selection.md", "hyperrouter.md", "lasso.md"]

_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """The ```python blocks of a markdown page as (line number of the first code line, code)."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in _BLOCK.finditer(text)]


def run_page(path: Path) -> int:
    """Execute the page's python blocks in order in one namespace; return how many ran."""
    blocks = python_blocks(path.read_text())
    if not blocks:
        pytest.fail(f"{path.name} has no ```python blocks")
    namespace: dict = {"__name__": f"docs_{path.stem}"}
    for i, (line, code) in enumerate(blocks, start=1):
        try:
            exec(compile(code, f"{path}:block{i}@line{line}", "exec"), namespace)
        except Exception as err:  # re-raised as a test failure naming the block
            pytest.fail(f"{path.name}: python block {i} (line {line}) failed: {type(err).__name__}: {err}")
    return len(blocks)


def test_block_extraction():
    text = ("intro ```python inline``` text\n```python\na = 1\n```\n\n"
            "```bash\nls\n```\n```python\nb = 2\n```\n")
    assert python_blocks(text) == [(3, "a = 1\n"), (10, "b = 2\n")]


def test_broken_example_fails(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```python\nx = 1\n```\ntext\n```python\nassert x == 2, 'x is not 2'\n```\n")
    with pytest.raises(pytest.fail.Exception, match=r"block 2 \(line 6\) failed: AssertionError: x is not 2"):
        run_page(page)
    page.write_text("no code here\n")
    with pytest.raises(pytest.fail.Exception, match="no ```python blocks"):
        run_page(page)


def test_every_page_is_run():
    with_code = sorted(p.name for p in DOCS.glob("*.md") if python_blocks(p.read_text()))
    assert sorted(PAGES) == with_code


@pytest.mark.parametrize("page", PAGES)
def test_doc_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_page(DOCS / page) >= 1
