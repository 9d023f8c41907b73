"""The code of the guides in docs/guides/ runs, and its numbers agree.

Every fenced block opened by exactly ```` ```python ```` in a guide is run, in
the order of the page and in one namespace per page, as a reader pasting them
one after the other into a session would (a block shown but not run is written
```` ```{code-block} python ````). The blocks print what the text claims (that
two frameworks give the same numbers, or where and by how much they differ),
and the page shows the output, so the reader sees no test code.

A ```` ```text ```` block right after a Python block (blank lines between
them, nothing else) is what that block prints: the test compares the two, line
by line, trailing spaces ignored.

Blocks that import PyTorch, TensorFlow or Keras run only in the ``heavy`` test
of their page, after every block before them; the core test runs the other
blocks alone, so no block of the core path may need a heavy one. A traceback
points into the Markdown file at the line of the failing statement.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest
from _deps import need

GUIDES_DIR = Path(__file__).resolve().parent.parent / "docs" / "guides"
GUIDES = sorted(p for p in GUIDES_DIR.glob("*.md") if p.name != "index.md")
HEAVY = {"torch": "torch", "tensorflow": "tensorflow", "keras": "keras"}
_IMPORT = re.compile(r"^\s*(?:import|from)\s+(\w+)", re.M)
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
_OUTPUT = re.compile(r"\s*^```text[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)


def blocks(path: Path) -> list[tuple[int, str, set[str], str | None]]:
  """``(first line, code, heavy modules it imports, its printed output or None)``
  of each block of a page."""
  text = path.read_text(encoding="utf-8")
  out = []
  for m in _FENCE.finditer(text):
    line = text.count("\n", 0, m.start(1)) + 1
    code = m.group(1)
    heavy = {HEAVY[name] for name in _IMPORT.findall(code) if name in HEAVY}
    printed = _OUTPUT.match(text, m.end())
    out.append((line, code, heavy, printed.group(1) if printed else None))
  return out


def _lines(text: str) -> list[str]:
  return [line.rstrip() for line in text.strip("\n").splitlines()]


def _run(path: Path, *, heavy: bool) -> int:
  """Runs the page's blocks (the heavy ones too if ``heavy``); how many ran."""
  namespace: dict = {"__name__": f"guide_{path.stem}"}
  ran = 0
  for line, code, needs, printed in blocks(path):
    if needs and not heavy:
      continue
    # Padding puts each statement at its own line of the Markdown file.
    compiled = compile("\n" * (line - 1) + code, str(path), "exec")
    out = io.StringIO()
    try:
      with contextlib.redirect_stdout(out):
        exec(compiled, namespace)
    finally:
      print(out.getvalue(), end="")  # shown by pytest when the test fails
    if printed is not None:
      assert _lines(out.getvalue()) == _lines(printed), (
        f"{path.name}:{line}: the block prints\n{out.getvalue()}\n"
        f"but the page shows\n{printed}"
      )
    ran += 1
  return ran


def _ids(paths: list[Path]) -> list[str]:
  return [p.stem for p in paths]


def test_there_are_guides_with_code():
  assert len(GUIDES) >= 5, GUIDES
  for path in GUIDES:
    assert blocks(path), f"{path.name} has no ```python block"


@pytest.mark.parametrize("path", GUIDES, ids=_ids(GUIDES))
def test_code_lines_fit_the_page(path):
  """88 columns, the project's line length, which the site shows unwrapped."""
  for line, code, _, _ in blocks(path):
    for i, text in enumerate(code.splitlines()):
      assert len(text) <= 88, f"{path.name}:{line + i}: {len(text)} columns"


# Three pages stay in the quick loop (the learning rate, param groups, bad
# steps: the new behaviour and the most-read); every page runs in the full suite.
@pytest.mark.sweep(quick=["learning_rate", "param_groups", "bad_steps"])
@pytest.mark.parametrize("path", GUIDES, ids=_ids(GUIDES))
def test_guide_core_blocks(path):
  """The blocks that need only JAX, Optax and NumPy, in order."""
  _run(path, heavy=False)


WITH_FRAMEWORKS = [p for p in GUIDES if any(b[2] for b in blocks(p))]


@pytest.mark.heavy
@pytest.mark.parametrize("path", WITH_FRAMEWORKS, ids=_ids(WITH_FRAMEWORKS))
def test_guide_with_frameworks(path):
  """Every block, the ones comparing with PyTorch, TensorFlow or Keras too."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  for name in sorted(set().union(*(b[2] for b in blocks(path)))):
    need(name)
  assert _run(path, heavy=True) == len(blocks(path))
