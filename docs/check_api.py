"""Fails when a public name of optaxtra has no rendered entry in the built site.

Every name in ``__all__`` of ``optaxtra``, ``optaxtra.schedules``,
``optaxtra.masks`` and ``optaxtra.testing`` must be in the site's inventory
(``objects.inv``, what Sphinx writes for every documented object) and the page
the inventory names must hold the entry's anchor. The docs build runs this
check itself at its end (``_ext/optaxtra_docs.py``); to run it on a finished
build:

  python docs/check_api.py docs/_build/html
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from sphinx.util.inventory import InventoryFile

MODULES = (
  "optaxtra",
  "optaxtra.schedules",
  "optaxtra.masks",
  "optaxtra.testing",
  "optaxtra.interop",
)


def public_names() -> list[tuple[str, str]]:
  """``(qualified name, kind)`` of every public name; kind "module" or "object"."""
  out = []
  for modname in MODULES:
    module = importlib.import_module(modname)
    for name in module.__all__:
      value = getattr(module, name)
      kind = "module" if type(value).__name__ == "module" else "object"
      out.append((f"{modname}.{name}", kind))
  return out


def missing(outdir: str | Path) -> list[str]:
  """What is missing from the HTML build in ``outdir``, one line per name."""
  outdir = Path(outdir)
  inv_path = outdir / "objects.inv"
  if not inv_path.exists():
    return [f"{inv_path} does not exist: build the site first"]
  with inv_path.open("rb") as f:
    inventory = InventoryFile.load(f, "", lambda base, uri: uri)
  found: dict[str, str] = {}
  for role, entries in inventory.items():
    if not role.startswith("py:"):
      continue
    for name, item in entries.items():
      uri = item[2] if isinstance(item, tuple) else item.uri
      found.setdefault(name, uri)
  problems = []
  pages: dict[str, str] = {}
  for name, kind in public_names():
    uri = found.get(name)
    if uri is None:
      problems.append(f"{name} ({kind}) has no entry in the API reference")
      continue
    page, _, anchor = uri.partition("#")
    html = pages.get(page)
    if html is None:
      path = outdir / page
      html = pages[page] = path.read_text(encoding="utf-8") if path.exists() else ""
    if f'id="{anchor or name}"' not in html:
      problems.append(f"{name} ({kind}) is in the inventory but not rendered on {page}")
  return problems


def main(argv: list[str]) -> int:
  outdir = argv[1] if len(argv) > 1 else str(Path(__file__).parent / "_build" / "html")
  problems = missing(outdir)
  for p in problems:
    print(f"check_api: {p}", file=sys.stderr)
  if problems:
    print(f"check_api: {len(problems)} public names without an entry", file=sys.stderr)
    return 1
  print(f"check_api: all {len(public_names())} public names have a rendered entry")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
