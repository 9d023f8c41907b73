"""The average's trees: parameter nodes by path, Flax boxes looked through."""

from __future__ import annotations

from typing import Any

import jax
import optax

from optaxtra._paths import box_types, path_str


def _is_masked(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


def _entries(tree: Any) -> list[tuple[str, Any]]:
  """``(path, leaf)`` for every leaf of ``tree`` and every :class:`optax.MaskedNode`.

  In the order of ``jax.tree.leaves(tree, is_leaf=_is_masked)``, with the
  path of a leaf inside a Flax box being the box's (``dense/kernel``, not
  ``dense/kernel/value``).
  """
  boxes = box_types()
  flat = jax.tree_util.tree_flatten_with_path(
    tree, is_leaf=lambda x: _is_masked(x) or (bool(boxes) and isinstance(x, boxes))
  )[0]
  return [
    (path_str(path), x)
    for path, node in flat
    for x in jax.tree.leaves(node, is_leaf=_is_masked)
  ]


def _nodes(tree: Any) -> tuple[list[tuple[str, Any, Any]], Any]:
  """``[(path, node, value)]`` and the treedef to rebuild ``tree`` from nodes.

  A node is a leaf, a Flax box (the ``Variable`` in which ``nnx.Optimizer``
  keeps each leaf) or an :class:`optax.MaskedNode`; its value is the array
  it holds, or None for a masked node (or a box around one).
  """
  boxes = box_types()

  def stop(x):
    return _is_masked(x) or (bool(boxes) and isinstance(x, boxes))

  flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=stop)
  out = []
  for path, node in flat:
    if _is_masked(node):
      value = None
    elif boxes and isinstance(node, boxes):
      leaves = jax.tree.leaves(node)
      value = leaves[0] if len(leaves) == 1 else None
    else:
      value = node
    out.append((path_str(path), node, value))
  return out, treedef


def _rebox(node: Any, value: Any) -> Any:
  """``value`` in ``node``'s box, if ``node`` is one."""
  boxes = box_types()
  if boxes and isinstance(node, boxes):
    return jax.tree.map(lambda _: value, node)
  return value
