"""The notebooks in notebooks/ run top to bottom and draw their plots.

Each notebook is copied into a temporary directory and executed there with
nbclient on a Jupyter kernel running this very interpreter (the kernel spec is
written afresh by ipykernel, so a ``python3`` kernel registered elsewhere on
the machine cannot be picked up instead). A cell that raises fails the test
with the cell's source and the error.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
from _deps import need

pytestmark = pytest.mark.heavy
nbformat = need("nbformat")
nbclient = need("nbclient")
need("ipykernel")
need("matplotlib")

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_NOTEBOOK_BYTES = 200_000


def _kernel_manager(kernel_dir: Path):
  from ipykernel.kernelspec import write_kernel_spec
  from jupyter_client.kernelspec import KernelSpecManager
  from jupyter_client.manager import KernelManager

  spec_dir = write_kernel_spec(kernel_dir / "python3")
  argv = json.loads((Path(spec_dir) / "kernel.json").read_text())["argv"]
  assert Path(argv[0]).resolve() == Path(sys.executable).resolve()
  ksm = KernelSpecManager(kernel_dirs=[str(kernel_dir)])
  return KernelManager(kernel_name="python3", kernel_spec_manager=ksm)


def _pngs(nb) -> list[bytes]:
  return [
    base64.b64decode(out["data"]["image/png"])
    for cell in nb.cells
    if cell.cell_type == "code"
    for out in cell.get("outputs", [])
    if "image/png" in out.get("data", {})
  ]


def test_there_are_notebooks():
  names = [p.stem for p in NOTEBOOKS]
  assert len(names) >= 5, names


def test_notebooks_match_their_sources():
  """Each notebook was built from its reviewed source in notebooks/_src/."""
  spec = importlib.util.spec_from_file_location("_build", NOTEBOOK_DIR / "_build.py")
  build = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(build)
  sources = sorted((NOTEBOOK_DIR / "_src").glob("[0-9]*.py"))
  assert [s.stem for s in sources] == [p.stem for p in NOTEBOOKS]
  problems = [p for s in sources for p in build.check(s)]
  assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_is_executed(path):
  """The committed file shows its outputs: every code cell ran, in order."""
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code, f"{path.name} has no code cells"
  counts = [c.execution_count for c in code]
  assert counts == list(range(1, len(code) + 1)), (
    f"{path.name} was not executed top to bottom in one run (execution counts "
    f"{counts}); rebuild it with python notebooks/_build.py"
  )
  errors = [o for c in code for o in c.outputs if o.output_type == "error"]
  assert not errors, f"{path.name} was saved with an error: {errors[0].ename}"
  assert _pngs(nb), f"{path.name} was saved without a plot"
  size = path.stat().st_size
  assert size < MAX_NOTEBOOK_BYTES, (
    f"{path.name} is {size} bytes; keep the saved outputs small (a few lines of "
    "text, one or two compact plots)"
  )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
  work = tmp_path / "work"
  work.mkdir()
  copy = work / path.name
  shutil.copy(path, copy)
  nb = nbformat.read(copy, as_version=4)
  for cell in nb.cells:  # start from a blank notebook: nothing carried over
    if cell.cell_type == "code":
      cell.outputs = []
      cell.execution_count = None

  client = nbclient.NotebookClient(
    nb,
    km=_kernel_manager(tmp_path / "kernels"),
    timeout=CELL_TIMEOUT_S,
    resources={"metadata": {"path": str(work)}},
  )
  try:
    client.execute()
  except nbclient.exceptions.CellExecutionError as e:
    pytest.fail(f"{path.name}: a cell raised:\n{e}", pytrace=False)
  except nbclient.exceptions.CellTimeoutError as e:
    pytest.fail(f"{path.name}: a cell ran over {CELL_TIMEOUT_S} s:\n{e}", pytrace=False)

  pngs = _pngs(nb)
  assert pngs, f"{path.name} produced no image"
  for png in pngs:
    assert png.startswith(PNG_MAGIC), f"{path.name} produced an invalid PNG"
  committed = _pngs(nbformat.read(path, as_version=4))
  assert len(pngs) == len(committed), (
    f"{path.name} drew {len(pngs)} images, its committed version {len(committed)}"
  )
