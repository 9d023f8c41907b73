"""Sphinx extension of optaxtra's docs: API pages from ``__all__``, and checks.

``.. optaxtra-api:: MODULE`` documents every name in ``MODULE.__all__``: a
summary table, then one autodoc entry per name, in the groups the directive's
content lists (``Title: name name ...``, one group a line). A public name that
no group lists still gets its entry, under "States" for a class whose name
ends in ``State`` and under "More" otherwise, so a name added to ``__all__``
appears without editing the docs; a listed name that is not public is an
error. Submodules in ``__all__`` are listed with links to their own pages.

Names of other projects (``optax.chain``, ``jax.jit``, ``re.search``, the
builtins in signatures) are linked to a search of that project's documentation
instead of an intersphinx inventory, which would need the network at build
time. Every other unresolved cross-reference, an optaxtra name above all,
stays an error of the nitpicky build.

At the end of an HTML build, ``check_api.missing`` fails the build when a
public name has no rendered entry.

``_DOCSTRING_REPAIRS`` renders a few docstrings that docutils cannot parse as
written (the source stays as it is): each repair replaces an exact run of
lines, so it does nothing once the docstring itself is fixed, and can then be
deleted.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import check_api

logger = logging.getLogger(__name__)

# Where names of other projects are looked up: a search page of their docs.
_SEARCH = {
  "optax": "https://optax.readthedocs.io/en/latest/search.html?q={}",
  "jax": "https://docs.jax.dev/en/latest/search.html?q={}",
  "jaxlib": "https://docs.jax.dev/en/latest/search.html?q={}",
  "numpy": "https://numpy.org/doc/stable/search.html?q={}",
  "np": "https://numpy.org/doc/stable/search.html?q={}",
  "flax": "https://flax.readthedocs.io/en/latest/search.html?q={}",
  "matplotlib": "https://matplotlib.org/stable/search.html?q={}",
}
_PYTHON = "https://docs.python.org/3/search.html?q={}"
_STDLIB = {
  "re",
  "typing",
  "collections",
  "dataclasses",
  "enum",
  "types",
  "math",
  "functools",
  "builtins",
}
_BUILTINS = {
  "int",
  "float",
  "bool",
  "str",
  "bytes",
  "complex",
  "list",
  "tuple",
  "dict",
  "set",
  "frozenset",
  "object",
  "type",
  "None",
  "Any",
  "Callable",
  "Iterable",
  "Iterator",
  "Mapping",
  "Sequence",
  "Literal",
  "NamedTuple",
  "TypeVar",
  "ValueError",
  "TypeError",
  "AssertionError",
  "DeprecationWarning",
}


def _external_uri(target: str) -> str | None:
  top = target.split(".", 1)[0]
  if top in _SEARCH:
    if top == "np":
      target = "numpy" + target[2:]
    return _SEARCH[top].format(target)
  if top in _STDLIB or target in _BUILTINS:
    return _PYTHON.format(target)
  return None


def _missing_reference(app, env, node, contnode):
  if node.get("refdomain") != "py":
    return None
  uri = _external_uri(node.get("reftarget", ""))
  if uri is None:
    return None
  ref = nodes.reference("", "", internal=False, refuri=uri, reftitle=node["reftarget"])
  ref["classes"].append("external-api")
  ref.append(contnode)
  return ref


# Object name -> (lines as written, lines to render), both dedented.
# Docstrings docutils cannot parse as written: name -> (exact lines, their
# replacement). Empty: fix the docstring instead where possible.
_DOCSTRING_REPAIRS: dict[str, tuple[list[str], list[str]]] = {}


def _repair_docstring(app, what, name, obj, options, lines: list[str]) -> None:
  repair = _DOCSTRING_REPAIRS.get(name)
  if repair is None:
    return
  old, new = repair
  for i in range(len(lines) - len(old) + 1):
    if [line.rstrip() for line in lines[i : i + len(old)]] == old:
      lines[i : i + len(old)] = new
      return


def _kind(value) -> str:
  if isinstance(value, types.ModuleType):
    return "module"
  if inspect.isclass(value):
    return "class"
  return "function"


class PublicApi(SphinxDirective):
  """``.. optaxtra-api:: MODULE`` with optional ``Title: names`` lines."""

  required_arguments = 1
  has_content = True

  def run(self) -> list[nodes.Node]:
    modname = self.arguments[0]
    module = importlib.import_module(modname)
    public = list(module.__all__)
    kinds = {n: _kind(getattr(module, n)) for n in public}
    groups: list[tuple[str, list[str]]] = []
    listed: set[str] = set()
    for line in self.content:
      if not line.strip():
        continue
      title, sep, names = line.partition(":")
      if not sep:
        raise self.error(f"optaxtra-api: expected 'Title: name name ...', got {line!r}")
      group = names.split()
      for n in group:
        if n not in kinds:
          raise self.error(
            f"optaxtra-api: {n!r} is listed for {modname} but not in its __all__"
          )
        if n in listed:
          raise self.error(f"optaxtra-api: {n!r} is listed twice")
        listed.add(n)
      groups.append((title.strip(), group))
    rest = [n for n in public if n not in listed and kinds[n] != "module"]
    states = [n for n in rest if kinds[n] == "class" and n.endswith("State")]
    more = [n for n in rest if n not in states]
    for title, extra in (("States", states), ("More", more)):
      if not extra:
        continue
      for i, (t, group) in enumerate(groups):
        if t == title:
          groups[i] = (t, group + extra)
          break
      else:
        groups.append((title, extra))
    submodules = [n for n in public if kinds[n] == "module" and n not in listed]

    lines = [f".. currentmodule:: {modname}", ""]
    for title, group in groups:
      lines += [".. rubric:: " + title, "", ".. autosummary::", "  :nosignatures:", ""]
      lines += [f"  {n}" for n in group]
      lines.append("")
    if submodules:
      lines += [".. rubric:: Submodules", ""]
      lines += [f"* :mod:`{modname}.{n}`" for n in submodules]
      lines.append("")
    for title, group in groups:
      lines += [title, "-" * len(title), ""]
      for n in group:
        if kinds[n] == "class":
          lines += [f".. autoclass:: {n}", "  :no-members:", ""]
        elif kinds[n] == "module":
          lines += [f"See :mod:`{modname}.{n}`.", ""]
        else:
          lines += [f".. autofunction:: {n}", ""]
    content = StringList(lines, source=f"<optaxtra-api {modname}>")
    container = nodes.section()
    container.document = self.state.document
    nested_parse_with_titles(self.state, content, container)
    return container.children


def _check_names(app: Sphinx, exc: Exception | None) -> None:
  if exc is not None or app.builder.format != "html":
    return
  for problem in check_api.missing(app.outdir):
    logger.warning("public API: %s", problem, type="optaxtra", subtype="api")


def setup(app: Sphinx) -> dict:
  app.add_directive("optaxtra-api", PublicApi)
  app.connect("missing-reference", _missing_reference)
  app.connect("autodoc-process-docstring", _repair_docstring, priority=400)
  app.connect("build-finished", _check_names)
  return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
