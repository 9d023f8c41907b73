"""The layout's import rule, checked: each layer imports only the layers below.

docs/contributing.md draws the layout; this test reads every module's
``import`` statements (with ``ast``, importing nothing) and fails naming the
module and the import that crosses a layer.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "optaxtra"

# Layers from the bottom up; a module may import its own layer and those below.
LAYERS = [
  ("core", ["optaxtra._core"]),
  (
    "declarations",
    ["optaxtra._introspect.declare", "optaxtra._introspect.optax_states"],
  ),
  ("selection", ["optaxtra.masks", "optaxtra.schedules"]),
  ("stages", ["optaxtra._"]),  # the feature modules at the top: optaxtra/_<feature>.py
  ("readers", ["optaxtra._introspect"]),
  ("tools", ["optaxtra.testing", "optaxtra.interop", "optaxtra"]),
]


# The one exception, with its reason: 0.2's deprecated masks.freeze forwards,
# at call time, to optaxtra.with_frozen (removed with the deprecation).
ALLOWED = {("optaxtra.masks", "optaxtra._freeze")}


def _module(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def _layer(module: str) -> int:
  for i, (_, prefixes) in enumerate(LAYERS):
    for prefix in prefixes:
      if prefix == "optaxtra._" and module.startswith("optaxtra._"):
        if module.count(".") == 1:  # optaxtra._adam, not optaxtra._core.x
          return i
      elif module == prefix or module.startswith(prefix + "."):
        return i
  return len(LAYERS) - 1


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
  tree = ast.parse(path.read_text())
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      if node.module == "optaxtra":
        found += [(node.lineno, f"optaxtra.{a.name}") for a in node.names]
      elif node.module.startswith("optaxtra"):
        found.append((node.lineno, node.module))
    elif isinstance(node, ast.Import):
      found += [
        (node.lineno, a.name) for a in node.names if a.name.startswith("optaxtra")
      ]
  return found


def test_every_import_points_down():
  crossings = []
  modules = sorted(ROOT.rglob("*.py"))
  assert len(modules) > 40
  for path in modules:
    module = _module(path)
    mine = _layer(module)
    for line, target in _imports(path):
      if module == "optaxtra" or (module, target) in ALLOWED:
        continue  # the public API re-exports everything
      theirs = _layer(target)
      if theirs > mine:
        crossings.append(
          f"{path.relative_to(ROOT.parent)}:{line} ({LAYERS[mine][0]}) imports "
          f"{target} ({LAYERS[theirs][0]})"
        )
  assert not crossings, "imports that point up a layer:\n" + "\n".join(crossings)


def test_core_imports_nothing_above_it():
  for path in sorted((ROOT / "_core").glob("*.py")):
    for line, target in _imports(path):
      assert target.startswith("optaxtra._core"), f"{path.name}:{line} imports {target}"
