"""Walking a tree by path: the entries a mask is computed from, and back."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax

from optaxtra._paths import box_types, path_str

_CACHE_SIZE = 16  # tree structures whose result a mask remembers


def _flatten(
  fn: str, tree: Any, *, step_check: bool = True
) -> tuple[list[tuple[str, Any, bool]], Any]:
  """``[(path, node, is_masked_node)]`` and the treedef to rebuild the tree.

  A node is a leaf, a parameter box (nnx ``Variable``, linen ``Partitioned``)
  or an :class:`optax.MaskedNode`, whose path is kept so that a pattern naming
  a parameter that an enclosing ``optax.masked`` hid still counts as matching.
  ``step_check`` makes a lone integer scalar an error (a mask called by
  ``optax.inject_hyperparams`` as a schedule); :func:`paths` lists it.
  """
  boxes = box_types()

  def stop(x):
    return isinstance(x, optax.MaskedNode) or (bool(boxes) and isinstance(x, boxes))

  flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=stop)
  if step_check and len(flat) == 1 and not flat[0][0] and _looks_like_step(flat[0][1]):
    raise TypeError(
      f"{fn} was called on an integer scalar ({flat[0][1]!r}), not on a "
      "parameter tree. This happens when a mask or labels function is passed "
      "through optax.inject_hyperparams, which calls every callable "
      "hyperparameter as a schedule of the step count: list it in static_args, "
      "e.g. optax.inject_hyperparams(optax.adamw, static_args=('mask',))(...)."
    )
  entries = [
    (path_str(path), node, isinstance(node, optax.MaskedNode)) for path, node in flat
  ]
  return entries, treedef


def _looks_like_step(x: Any) -> bool:
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


def _fill(entries: list[tuple[str, Any, bool]], treedef: Any, values: list[Any]) -> Any:
  """The tree with every parameter (box or leaf) replaced by its value."""
  nodes = [
    node if masked else jax.tree.map(lambda _, v=v: v, node)
    for (_, node, masked), v in zip(entries, values, strict=True)
  ]
  return treedef.unflatten(nodes)


def paths(params: Any) -> list[str]:
  """The path of every parameter of ``params``, in the tree's leaf order.

  Args:
    params: a tree of parameters (or gradients, or updates). Flax nnx
      ``Variable`` and linen metadata boxes count as one parameter each;
      ``None`` and :class:`optax.MaskedNode` entries are not parameters.

  Returns:
    A list of strings, one per parameter, such as ``"encoder/dense/kernel"``;
    ``""`` for a params tree that is a single array.

  Examples:
    >>> import jax.numpy as jnp
    >>> from optaxtra import masks
    >>> params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)},
    ...           "blocks": [{"scale": jnp.ones(2)}]}
    >>> masks.paths(params)
    ['blocks/0/scale', 'dense/bias', 'dense/kernel']
  """
  entries, _ = _flatten("paths", params, step_check=False)
  return [p for p, _, masked in entries if not masked]


def _none_paths(tree: Any) -> list[str]:
  """The paths of the ``None`` entries of ``tree`` (which are not parameters)."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)
  return [path_str(path) for path, x in flat if x is None]


class _Cached:
  """Remembers the result for the last few tree structures (keyed by paths)."""

  def __init__(self):
    self._cache: dict[tuple[Any, ...], list[Any]] = {}

  def _lookup(self, fn: str, tree: Any) -> Any:
    entries, treedef = _flatten(fn, tree)
    key = tuple((p, masked) for p, _, masked in entries)
    values = self._cache.get(key)
    if values is None:
      values = self._compute(entries, tree)
      if len(self._cache) >= _CACHE_SIZE:
        self._cache.clear()
      self._cache[key] = values
    return _fill(entries, treedef, values)

  def _compute(self, entries: list[tuple[str, Any, bool]], tree: Any) -> list[Any]:
    raise NotImplementedError
