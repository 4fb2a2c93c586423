"""The Python examples in ``docs/*.md`` run as tests.

Every fenced block opened by ```` ```python ```` in ``docs/*.md`` is one of three kinds:

- **A standalone example** (the default): it runs as a script, in its own interpreter, from a scratch
  directory, and must exit 0. Keep these fast: small peer counts and short durations.
- **A file of a project the page builds**: the paragraph just before the block opens with the file's path
  in backticks, e.g. ```` `src/pyagent_greet/component.py`: ````. All such blocks of one page are written
  into a scratch project, ``src`` goes on ``PYTHONPATH``, every file is compiled, and the project's own
  ``tests/test_*.py`` files run under pytest.
- **Not standalone** (an interface sketch, a fragment that needs the page's context): mark it with the
  comment ``<!-- docs-test: not standalone (why) -->`` on the line right before the fence. It is only
  compiled, so at least its syntax stays right.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MARKER = re.compile(r"<!--\s*docs-test:\s*not standalone\b.*-->")
FILE_PATH = re.compile(r"^`([\w./-]+\.py)`")


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    code: str
    kind: str  # "run" | "file" | "fragment"
    path: str = ""

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```python":
            i += 1
            continue
        start = i
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        code = "\n".join(lines[start + 1 : end]) + "\n"
        before = list(lines[:start])
        while before and not before[-1].strip():
            before.pop()
        paragraph: list[str] = []
        while before and before[-1].strip():
            paragraph.insert(0, before.pop())
        marked = bool(paragraph) and MARKER.search(paragraph[-1]) is not None
        if marked:
            found.append(Block(page.name, start + 1, code, "fragment"))
        elif paragraph and (match := FILE_PATH.match(paragraph[0])):
            found.append(Block(page.name, start + 1, code, "file", match.group(1)))
        else:
            found.append(Block(page.name, start + 1, code, "run"))
        i = end + 1
    return found


ALL = [block for page in sorted(DOCS.glob("*.md")) for block in blocks(page)]
PROJECTS = sorted({block.page for block in ALL if block.kind == "file"})


def _env(*paths: Path) -> dict[str, str]:
    extra = [str(path) for path in paths]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*extra, os.environ.get("PYTHONPATH", "")])}


def test_the_docs_have_python_examples() -> None:
    assert any(block.kind == "run" for block in ALL)
    assert "simnet.md" in {block.page for block in ALL if block.kind == "run"}


def test_the_conventions_sort_the_blocks(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "Intro.\n\n```python\nprint(1)\n```\n\n"
        "<!-- docs-test: not standalone (a sketch) -->\n```python\nclass A(Kit): ...\n```\n\n"
        "`src/pkg/mod.py` is the module:\n\n```python\nX = 1\n```\n\n"
        "```sh\nls\n```\n",
        encoding="utf-8",
    )
    found = blocks(page)
    assert [(b.kind, b.path, b.line) for b in found] == [
        ("run", "", 3),
        ("fragment", "", 8),
        ("file", "src/pkg/mod.py", 14),
    ]


@pytest.mark.parametrize("block", ALL, ids=[block.id for block in ALL])
def test_every_example_compiles(block: Block) -> None:
    compile(block.code, block.id, "exec")


@pytest.mark.parametrize(
    "block", [b for b in ALL if b.kind == "run"], ids=[b.id for b in ALL if b.kind == "run"]
)
def test_a_standalone_example_runs(block: Block, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(block.code, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=_env(),
    )
    assert done.returncode == 0, f"{block.id} failed:\n{done.stdout}\n{done.stderr}"


@pytest.mark.parametrize("page", PROJECTS)
def test_a_pages_project_files_pass_their_own_tests(page: str, tmp_path: Path) -> None:
    files = [block for block in ALL if block.page == page and block.kind == "file"]
    for block in files:
        target = tmp_path / block.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(block.code, encoding="utf-8")
    for package in (tmp_path / "src").glob("*/"):
        (package / "__init__.py").touch()
    tests = sorted(block.path for block in files if re.match(r"tests/test_\w+\.py$", block.path))
    if not tests:
        return
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=_env(tmp_path / "src"),
    )
    assert done.returncode == 0, f"{page}'s project failed its tests:\n{done.stdout[-4000:]}\n{done.stderr}"
