"""Runs the ```python blocks of every page under docs/.

Each page is one test: its blocks run in order in one fresh namespace, as a
reader would paste them into one session.  A failing block is reported with
its page, its index and its line in the page, and the traceback; line numbers
in the traceback are those of the page itself.
"""

from __future__ import annotations

import re
import sys
import textwrap
import traceback
import types
from pathlib import Path
from typing import List, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

_FENCE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$")


def doc_pages(docs: Path = DOCS) -> List[Path]:
    """Every ``docs/*.md`` and ``docs/**/*.md`` page, sorted."""
    if not docs.is_dir():
        return []
    return sorted(set(docs.glob("*.md")) | set(docs.glob("**/*.md")))


def python_blocks(text: str) -> List[Tuple[int, str]]:
    """The ```python blocks of a Markdown page: (line of the first code line, code)."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        fence = m.group("fence")
        language = m.group("info").strip().split(" ")[0].lower() if m.group("info").strip() else ""
        body: List[str] = []
        j = i + 1
        while j < len(lines) and not re.match(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", lines[j]):
            body.append(lines[j])
            j += 1
        if language in ("python", "py", "python3"):
            code = textwrap.dedent("\n".join(body))
            blocks.append((i + 2, code))  # 1-based number of the first line inside the fence
        i = j + 1
    return blocks


class DocBlockError(AssertionError):
    pass


def run_page(path: Path) -> int:
    """Runs a page's python blocks in order in one fresh module namespace.

    Returns the number of blocks run; raises DocBlockError naming the page,
    the block and the traceback on the first failure.
    """
    import fedcore

    blocks = python_blocks(path.read_text(encoding="utf-8"))
    try:
        shown = path.relative_to(ROOT)
    except ValueError:
        shown = path
    module_name = f"_fedcore_doc_{re.sub(r'[^0-9A-Za-z_]', '_', str(shown))}"
    module = types.ModuleType(module_name)
    module.__file__ = str(path)
    sys.modules[module_name] = module
    executor = fedcore.get_default_executor()
    try:
        for index, (line, code) in enumerate(blocks, start=1):
            # Pad with blank lines so that traceback line numbers are the page's own.
            source = "\n" * (line - 1) + code
            try:
                exec(compile(source, str(path), "exec"), module.__dict__)
            except Exception as e:  # noqa: BLE001 - report anything a block raises
                tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
                raise DocBlockError(
                    f"{shown}: python block {index} of {len(blocks)} (starting at line {line}) failed\n"
                    f"--- block {index} ---\n{code}\n--- traceback ---\n{tb}"
                ) from None
    finally:
        sys.modules.pop(module_name, None)
        fedcore.set_default_executor(executor)
    return len(blocks)


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_doc_page_runs(page):
    try:
        run_page(page)
    except DocBlockError as e:
        pytest.fail(str(e), pytrace=False)


# --------------------------------------------------------------------------
# The runner itself.


def test_docs_are_collected():
    pages = doc_pages()
    assert DOCS / "custom_algorithms.md" in pages
    assert all(p.suffix == ".md" for p in pages)


def test_extracts_only_python_blocks_with_their_lines():
    text = "\n".join(
        [
            "# Title",  # 1
            "```python",  # 2
            "a = 1",  # 3
            "```",  # 4
            "```bash",  # 5
            "echo no",  # 6
            "```",  # 7
            "text",  # 8
            "```py",  # 9
            "b = a + 1",  # 10
            "",  # 11
            "c = b",  # 12
            "```",  # 13
            "```",  # 14
            "plain = 1",  # 15
            "```",  # 16
        ]
    )
    assert python_blocks(text) == [(3, "a = 1"), (10, "b = a + 1\n\nc = b")]


def test_page_blocks_share_one_namespace_in_order(tmp_path):
    page = tmp_path / "ok.md"
    page.write_text("```python\nx = 2\n```\nSome prose.\n```python\nassert x * 3 == 6\n```\n")
    assert run_page(page) == 2


def test_page_without_python_blocks_is_fine(tmp_path):
    page = tmp_path / "prose.md"
    page.write_text("# Only prose\n\n```text\nnot code(\n```\n")
    assert run_page(page) == 0


def test_failure_names_page_block_and_traceback(tmp_path):
    page = tmp_path / "broken.md"
    page.write_text(
        "# Broken\n\n```python\nvalue = 1\n```\n\n```python\ndef helper():\n    return value / 0\n\nhelper()\n```\n"
    )
    with pytest.raises(DocBlockError) as info:
        run_page(page)
    message = str(info.value)
    assert "broken.md" in message
    assert "python block 2 of 2" in message
    assert "starting at line 8" in message
    assert "ZeroDivisionError" in message
    # The traceback points at the page's own line numbers.
    assert f'File "{page}", line 9, in helper' in message
    assert f'File "{page}", line 11' in message


def test_each_page_starts_from_a_fresh_namespace(tmp_path):
    first, second = tmp_path / "a.md", tmp_path / "b.md"
    first.write_text("```python\nleaked = 1\n```\n")
    second.write_text("```python\nleaked\n```\n")
    run_page(first)
    with pytest.raises(DocBlockError, match="NameError"):
        run_page(second)
