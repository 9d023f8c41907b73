"""Combining masks: :func:`all_of` (and) and :func:`any_of` (or)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from optaxtra._core.paths import match, quote
from optaxtra.masks._walk import _fill, _flatten


def _is_bool(x: Any) -> bool:
  return isinstance(x, bool | np.bool_)


def _describe(mask: Any) -> str:
  text = repr(mask)
  return text if len(text) <= 80 else text[:77] + "..."


class _Combined:
  """The callable returned by :func:`all_of` and :func:`any_of`."""

  def __init__(self, fn: str, combine: Callable[[list[bool]], bool], masks: tuple):
    self.fn = fn
    self.combine = combine
    self.masks = masks

  def __call__(self, params: Any) -> Any:
    entries, treedef = _flatten(self.fn, params)
    columns = []
    for i, mask in enumerate(self.masks):
      tree = mask(params) if callable(mask) else mask
      columns.append(self._values(i, mask, params, tree))
    values = [
      None if masked else self.combine([c[k] for c in columns])
      for k, (_, _, masked) in enumerate(entries)
    ]
    return _fill(entries, treedef, values)

  def _values(self, i: int, mask: Any, params: Any, tree: Any) -> list[Any]:
    """Mask ``i``'s bool for each entry of ``params`` (None where masked)."""
    where = f"masks[{i}] ({_describe(mask)})"
    try:
      pairs = match(self.fn, params, tree, a_is="the params", b_is=f"masks[{i}]")
    except ValueError as e:
      raise ValueError(
        f"{e} A mask must return a tree of bools with the params' structure; "
        f"{where} did not."
      ) from None
    out = []
    for p, m in pairs:
      if p.masked:
        out.append(None)
        continue
      if m.masked or not _is_bool(m.value):
        got = "an optax.MaskedNode" if m.masked else repr(m.value)
        raise TypeError(
          f"{self.fn}: {where} gives {got} at {quote(p.path)}, not a bool. A "
          "mask is a function params -> tree of bools (such as "
          "optaxtra.masks.path_mask(...) or min_ndim(...)), or such a tree."
        )
      out.append(bool(m.value))
    return out

  def __repr__(self) -> str:
    return f"{self.fn}({', '.join(repr(m) for m in self.masks)})"


def _check_masks(fn: str, masks: tuple) -> tuple:
  if not masks:
    raise TypeError(
      f"{fn}: give at least one mask, e.g. {fn}(masks.min_ndim(2), "
      "masks.path_mask(exclude='bias'))."
    )
  for i, mask in enumerate(masks):
    if callable(mask):
      continue
    leaves = jax.tree.leaves(mask)
    if mask is None or not leaves or not all(_is_bool(x) for x in leaves):
      raise TypeError(
        f"{fn}: masks[{i}] is {_describe(mask)}, which is not a mask: a mask is "
        "a function params -> tree of bools (such as optaxtra.masks.path_mask"
        "(...) or min_ndim(...)), or a tree of bools with the params' structure."
      )
  return masks


def all_of(*masks: Any) -> Callable[[Any], Any]:
  """A mask selecting the parameters that *every* one of ``masks`` selects.

  ``all_of(min_ndim(2), path_mask(exclude=["pos_embed", "cls_token"]))``
  is timm's weight-decay rule: decay the matrices and kernels, except the
  embeddings named. Each mask is a function ``params -> tree of bools`` (as
  :func:`optaxtra.masks.path_mask`, :func:`optaxtra.masks.min_ndim` and
  :func:`any_of` return, or your own) or such a tree itself; all are applied
  to the same params and combined leaf by leaf, paired by parameter path.

  Args:
    *masks: one or more masks.

  Returns:
    A function ``params -> tree of bools`` with the structure of ``params``,
    usable as any Optax ``mask=``; it also works on updates holding
    :class:`optax.MaskedNode`, which it keeps.

  Raises:
    TypeError: no mask, or an argument that is neither callable nor a tree
      of bools (at construction); a mask whose result holds something other
      than a bool (when called).
    ValueError: a mask whose result has other paths than the params (when
      called), naming them.

  Examples:
    >>> import jax.numpy as jnp
    >>> from optaxtra import masks
    >>> params = {"pos_embed": jnp.zeros((1, 4, 8)), "head": {
    ...   "kernel": jnp.ones((8, 2)), "bias": jnp.zeros(2)}}
    >>> decay = masks.all_of(masks.min_ndim(2), masks.path_mask(exclude="pos_embed"))
    >>> decay(params)
    {'head': {'bias': False, 'kernel': True}, 'pos_embed': False}
  """
  return _Combined("all_of", all, _check_masks("all_of", masks))


def any_of(*masks: Any) -> Callable[[Any], Any]:
  """A mask selecting the parameters that *at least one* of ``masks`` selects.

  For a set of parameters named by several rules, e.g. what to freeze:
  ``any_of(path_mask(include="^embed/"), path_mask(include="cls_token"),
  my_mask)``. Masks are as for :func:`all_of`: functions ``params -> tree of
  bools`` or such trees, combined leaf by leaf, paired by parameter path.

  Args:
    *masks: one or more masks.

  Returns:
    A function ``params -> tree of bools`` with the structure of ``params``.

  Raises:
    TypeError: as :func:`all_of`.
    ValueError: as :func:`all_of`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from optaxtra import masks
    >>> params = {"cls_token": jnp.zeros((1, 1, 8)), "head": {
    ...   "kernel": jnp.ones((8, 2)), "bias": jnp.zeros(2)}}
    >>> frozen = masks.any_of(masks.path_mask(include="cls_token"),
    ...                       masks.path_mask(include="bias"))
    >>> frozen(params)
    {'cls_token': True, 'head': {'bias': True, 'kernel': False}}
  """
  return _Combined("any_of", any, _check_masks("any_of", masks))
