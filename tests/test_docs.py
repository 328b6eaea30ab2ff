"""Every ```python block in README.md and docs/**/*.md runs (blocks of one page share a namespace).

A block whose first line is `# doc-test: skip` is shown to readers but not run (e.g. it needs a TPU)."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks(page):
    return [b for b in _BLOCK.findall(page.read_text()) if not b.startswith("# doc-test: skip")]


@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_code_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    for i, block in enumerate(_blocks(page)):
        code = compile(block, f"{page.relative_to(ROOT)}[block {i}]", "exec")
        exec(code, namespace)


def test_pages_exist():
    assert any(_blocks(p) for p in PAGES), "no runnable examples found in the docs"
