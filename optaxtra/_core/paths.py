"""The one path walker: how optaxtra names every parameter of a tree.

Every place that names a parameter (``masks.paths``, masks and labels,
``describe``, ``inspect``, the average, ``scale_by_path``, ``by_path``,
``with_frozen``, ``migrate_state``) goes through :func:`walk`, so the same
leaf has the same path everywhere: Flax nnx ``Variable`` and linen metadata
boxes are looked through (``dense/kernel``, never ``dense/kernel/value``),
:class:`optax.MaskedNode` keeps its path (a parameter that an enclosing
``optax.masked`` hid), ``None`` is no parameter. Where two trees meet, they
are matched by path with :func:`match`, which refuses a mismatch by name.
State trees (an optimizer's state) are walked one level at a time with
:func:`children`.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import optax

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


@dataclasses.dataclass(frozen=True)
class Entry:
  """One parameter position of a tree, as :func:`walk` finds it.

  Attributes:
    path: the path string (:func:`path_str`).
    node: what sits there in the tree: a leaf, a Flax box, or an
      :class:`optax.MaskedNode`.
    value: the array the node holds (a box's one leaf), None when masked.
    masked: whether the node is an :class:`optax.MaskedNode`.
  """

  path: str
  node: Any
  value: Any
  masked: bool


def _is_masked(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


def walk(tree: Any) -> tuple[list[Entry], Any]:
  """Every parameter position of ``tree`` in leaf order, and its treedef.

  The treedef rebuilds the tree from nodes (:func:`rebuild`). A Flax box
  is one entry (its path is the box's); a :class:`optax.MaskedNode` is an
  entry with ``masked=True``; ``None`` is no entry.
  """
  boxes = box_types()

  def stop(x):
    return _is_masked(x) or (bool(boxes) and isinstance(x, boxes))

  flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=stop)
  out = []
  for path, node in flat:
    masked = _is_masked(node)
    if masked:
      value = None
    elif boxes and isinstance(node, boxes):
      leaves = jax.tree.leaves(node, is_leaf=_is_masked)
      value = leaves[0] if len(leaves) == 1 and not _is_masked(leaves[0]) else None
      masked = value is None
    else:
      value = node
    out.append(Entry(path_str(path), node, value, masked))
  return out, treedef


def paths(tree: Any) -> list[str]:
  """The paths of the parameters of ``tree`` (masked positions left out)."""
  return [e.path for e in walk(tree)[0] if not e.masked]


def rebox(node: Any, value: Any) -> Any:
  """``value`` in ``node``'s box, if ``node`` is one; masked nodes stay."""
  if _is_masked(node):
    return node
  boxes = box_types()
  if boxes and isinstance(node, boxes):
    return jax.tree.map(lambda _: value, node)
  return value


def rebuild(entries: list[Entry], treedef: Any, values: Sequence[Any]) -> Any:
  """The tree with every entry's value replaced (boxes kept, masked kept)."""
  nodes = [
    e.node if e.masked else rebox(e.node, v)
    for e, v in zip(entries, values, strict=True)
  ]
  return treedef.unflatten(nodes)


def none_paths(tree: Any) -> list[str]:
  """The paths of the ``None`` entries of ``tree`` (which are not parameters)."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)
  return [path_str(path) for path, x in flat if x is None]


def looks_like_step(x: Any) -> bool:
  """Whether ``x`` is an integer scalar (a step count, not a params tree)."""
  if isinstance(x, bool):
    return False
  if isinstance(x, int):
    return True
  dtype = getattr(x, "dtype", None)
  return (
    dtype is not None
    and np.shape(x) == ()
    and jax.numpy.issubdtype(dtype, jax.numpy.integer)
  )


def match(
  fn: str, a: Any, b: Any, *, a_is: str, b_is: str
) -> list[tuple[Entry, Entry]]:
  """The entries of two trees paired by path, or ``ValueError`` naming them.

  Two trees that hold the same parameters under different names (or the
  same names in another order) are never paired by position: a mismatch
  names the paths found only in one tree and the fix.

  Args:
    fn: the public function, for the message.
    a, b: the trees.
    a_is, b_is: what each tree is, in words ("the params", "the average").
  """
  ea, _ = walk(a)
  eb, _ = walk(b)
  pa, pb = [e.path for e in ea], [e.path for e in eb]
  if pa != pb:
    only_a = [p for p in pa if p not in set(pb)]
    only_b = [p for p in pb if p not in set(pa)]
    if only_a or only_b:
      detail = (
        f" Only in {a_is}: {show(only_a) or 'none'}; only in {b_is}: "
        f"{show(only_b) or 'none'}."
      )
    else:
      detail = f" They hold the same paths in another order or number: {show(pa)}."
    raise ValueError(
      f"{fn}: {a_is} and {b_is} do not name the same parameters.{detail} "
      f"Pass {a_is} with the structure the optimizer was initialised on "
      "(optaxtra.masks.paths lists a tree's paths)."
    )
  return list(zip(ea, eb, strict=True))


def children(node: Any) -> list[tuple[str, bool, Any]] | None:
  """``(key, is_attribute, child)`` one level down a state, or None for a leaf.

  The walk of optimizer states (``inspect``, ``describe``, ``averaged_params``,
  ``set_learning_rate_scale``, ``migrate_state``): keys are spelled as
  :func:`path_str` spells them.
  """
  flat, _ = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
  if len(flat) == 1 and not flat[0][0]:
    return None
  out = []
  for path, child in flat:
    (key,) = path
    out.append((path_str((key,)), isinstance(key, jax.tree_util.GetAttrKey), child))
  return out
