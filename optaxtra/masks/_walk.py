"""Walking a tree by path: the entries a mask is computed from, and back."""

from __future__ import annotations

from typing import Any

from optaxtra._core.paths import looks_like_step, rebox, walk
from optaxtra._core.paths import paths as _paths

_CACHE_SIZE = 16  # tree structures whose result a mask remembers


def _flatten(
  fn: str, tree: Any, *, step_check: bool = True
) -> tuple[list[tuple[str, Any, bool]], Any]:
  """``[(path, node, is_masked_node)]`` and the treedef, from the one walker.

  ``step_check`` makes a lone integer scalar an error (a mask called by
  ``optax.inject_hyperparams`` as a schedule); :func:`paths` lists it.
  """
  entries, treedef = walk(tree)
  if (
    step_check
    and len(entries) == 1
    and not entries[0].path
    and looks_like_step(entries[0].value)
  ):
    raise TypeError(
      f"{fn} was called on an integer scalar ({entries[0].value!r}), not on a "
      "parameter tree. This happens when a mask or labels function is passed "
      "through optax.inject_hyperparams, which calls every callable "
      "hyperparameter as a schedule of the step count: list it in static_args, "
      "e.g. optax.inject_hyperparams(optax.adamw, static_args=('mask',))(...)."
    )
  return [(e.path, e.node, e.masked) for e in entries], treedef


def _fill(entries: list[tuple[str, Any, bool]], treedef: Any, values: list[Any]) -> Any:
  """The tree with every parameter (box or leaf) replaced by its value."""
  nodes = [
    node if masked else rebox(node, v)
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
  return _paths(params)


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
