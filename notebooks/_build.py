"""Builds the executed notebooks in this folder from their sources in ``_src/``.

Each ``_src/NN_name.py`` is a plain Python file in the "percent" format:
``# %%`` starts a code cell, ``# %% [markdown]`` a Markdown cell whose lines
are ``# ``-commented. The builder turns it into ``NN_name.ipynb``, executes it
top to bottom with nbclient on a kernel running this interpreter, and saves it
with its outputs. The executed ``.ipynb`` files are what is committed and what
``tests/test_notebooks.py`` re-executes; the sources exist so that a change to
a notebook can be reviewed as a Python diff.

  python notebooks/_build.py                 # build all
  python notebooks/_build.py 03 05           # build those whose name starts so
  python notebooks/_build.py --check         # sources and .ipynb agree?
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
SRC = HERE / "_src"
KERNEL_NAME = "python3"
CELL_TIMEOUT_S = 300


def parse(text: str) -> list[nbformat.NotebookNode]:
  """Splits a percent-format source into notebook cells."""
  cells = []
  kind, lines = None, []

  def flush():
    if kind is None:
      return
    body = "\n".join(lines).strip("\n")
    if kind == "markdown":
      body = "\n".join(re.sub(r"^# ?", "", line) for line in body.splitlines())
      cells.append(nbformat.v4.new_markdown_cell(body))
    elif body:
      cells.append(nbformat.v4.new_code_cell(body))

  for line in text.splitlines():
    m = re.match(r"^# %%( \[markdown\])?\s*$", line)
    if m:
      flush()
      kind, lines = ("markdown" if m.group(1) else "code"), []
    elif kind is not None:
      lines.append(line)
  flush()
  return cells


def kernel_manager(kernel_dir: Path) -> KernelManager:
  """A kernel manager whose ``python3`` kernel runs this very interpreter.

  The kernel spec is written afresh by ipykernel (argv[0] = sys.executable),
  so neither a user-level nor a system-level ``python3`` spec pointing at some
  other Python can be picked up by mistake.
  """
  from ipykernel.kernelspec import write_kernel_spec

  write_kernel_spec(kernel_dir / KERNEL_NAME)
  ksm = KernelSpecManager(kernel_dirs=[str(kernel_dir)])
  return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)


def new_notebook(cells) -> nbformat.NotebookNode:
  nb = nbformat.v4.new_notebook(cells=cells)
  nb.metadata["kernelspec"] = {
    "name": KERNEL_NAME,
    "display_name": "Python 3 (ipykernel)",
    "language": "python",
  }
  nb.metadata["language_info"] = {"name": "python"}
  return nb


def execute(nb: nbformat.NotebookNode, workdir: Path) -> float:
  """Executes ``nb`` in place with ``workdir`` as cwd; returns the seconds."""
  with tempfile.TemporaryDirectory() as kdir:
    client = NotebookClient(
      nb,
      km=kernel_manager(Path(kdir)),
      timeout=CELL_TIMEOUT_S,
      resources={"metadata": {"path": str(workdir)}},
    )
    start = time.perf_counter()
    client.execute()
    return time.perf_counter() - start


def strip(nb: nbformat.NotebookNode) -> None:
  """Drops per-run noise so that rebuilding unchanged sources changes little."""
  for cell in nb.cells:
    cell.metadata.pop("execution", None)
  nb.metadata["language_info"] = {"name": "python"}


def build(src: Path) -> None:
  nb = new_notebook(parse(src.read_text()))
  with tempfile.TemporaryDirectory() as work:
    seconds = execute(nb, Path(work))
  strip(nb)
  out = HERE / (src.stem + ".ipynb")
  nbformat.validate(nb)
  nbformat.write(nb, out)
  size = out.stat().st_size / 1024
  print(f"{out.name}: executed in {seconds:.1f} s, {size:.0f} KiB", flush=True)


def check(src: Path) -> list[str]:
  """Differences between a source and its committed notebook's cells."""
  out = HERE / (src.stem + ".ipynb")
  if not out.exists():
    return [f"{out.name} is missing: run python notebooks/_build.py {src.stem[:2]}"]
  want = [(c.cell_type, c.source) for c in parse(src.read_text())]
  have = [(c.cell_type, c.source) for c in nbformat.read(out, as_version=4).cells]
  if want != have:
    return [f"{out.name} differs from _src/{src.name}: rebuild it"]
  return []


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("prefixes", nargs="*", help="build only names starting so")
  parser.add_argument("--check", action="store_true", help="compare, don't build")
  args = parser.parse_args(argv)
  sources = sorted(SRC.glob("[0-9]*.py"))
  if args.prefixes:
    sources = [s for s in sources if s.stem.startswith(tuple(args.prefixes))]
  if not sources:
    parser.error("no source matches")
  if args.check:
    problems = [p for s in sources for p in check(s)]
    print("\n".join(problems) or f"{len(sources)} notebooks match their sources")
    return 1 if problems else 0
  for src in sources:
    build(src)
  return 0


if __name__ == "__main__":
  sys.exit(main())
