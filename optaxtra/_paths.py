"""Paths in a tree: one spelling across optaxtra, and the boxes looked through."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import jax

SHOW = 5  # paths shown in an error message


def path_str(path: tuple[Any, ...]) -> str:
  """A key path as ``a/b/0``; the root (a tree that is one leaf) is ``""``.

  The one spelling of a path in optaxtra: what :func:`optaxtra.masks.paths`
  lists, what patterns match, and what error messages quote (through
  :func:`quote`, which names the root in words).
  """
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(str(k.name))
    elif isinstance(k, jax.tree_util.FlattenedIndexKey):
      parts.append(str(k.key))
    else:
      parts.append(str(k))
  return "/".join(parts)


def quote(path: str) -> str:
  """A path for an error message: ``'a/b'``, or ``the root`` for ``""``."""
  return repr(path) if path else "the root (the tree is a single array)"


def show(strings: Sequence[str], n: int = SHOW) -> str:
  """The first ``n`` of ``strings``, quoted, and how many there are in all."""
  shown = ", ".join(repr(s) for s in strings[:n])
  if len(strings) > n:
    shown += f", ... ({len(strings)} in all)"
  return shown


def box_types() -> tuple[type, ...]:
  """Container types that wrap one parameter (looked through, not named).

  Only modules already imported can have put such boxes in a tree, so Flax is
  never imported here.
  """
  types: list[type] = []
  variablelib = sys.modules.get("flax.nnx.variablelib")
  if variablelib is not None:
    for name in ("Variable", "VariableState"):  # VariableState: flax < 0.11
      t = vars(variablelib).get(name)
      if isinstance(t, type):
        types.append(t)
  meta = sys.modules.get("flax.core.meta")
  if meta is not None and isinstance(getattr(meta, "AxisMetadata", None), type):
    types.append(meta.AxisMetadata)
  return tuple(types)
