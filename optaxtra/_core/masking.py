"""Resolving Optax-style masks (a bool tree, or a function of the params)."""

from __future__ import annotations

from typing import Any

import jax
import jax.core
import numpy as np


def resolve_mask(fn: str, mask: Any, params: Any) -> list[bool]:
  """One Python bool per leaf of ``params``: whether ``mask`` selects it.

  ``mask`` is, as everywhere in Optax, a tree of bools with the params'
  structure or a prefix of it, or a function from the params to such a tree.
  A mask whose tree does not fit the params, or whose leaves are not bools,
  raises an error naming ``fn``'s ``mask`` argument instead of being guessed at.
  """
  tree = mask(params) if callable(mask) else mask
  try:
    full = jax.tree.map(lambda m, sub: jax.tree.map(lambda _: m, sub), tree, params)
  except (ValueError, TypeError) as e:
    raise ValueError(
      f"{fn}: mask does not fit the params' tree ({e}). Pass a tree of bools "
      "with the params' structure (or a prefix of it), or a function "
      "params -> such a tree, e.g. optaxtra.masks.path_mask(exclude=['bias'])."
    ) from None
  flags = []
  for m in jax.tree.leaves(full):
    if isinstance(m, bool | np.bool_):
      flags.append(bool(m))
    elif isinstance(m, np.ndarray | jax.Array) and m.shape == () and m.dtype == bool:
      if isinstance(m, jax.core.Tracer):
        raise TypeError(
          f"{fn}: mask leaves must be known at trace time, got a traced "
          "boolean. Build the mask from the params' structure, not their values."
        )
      flags.append(bool(m))
    else:
      raise TypeError(
        f"{fn}: mask leaves must be True or False, got {m!r}. A per-entry mask "
        "is not supported: mask whole parameters."
      )
  n = len(jax.tree.leaves(params))
  if len(flags) != n:  # a leaf of params was None-like in one tree only
    raise ValueError(f"{fn}: mask selects {len(flags)} leaves but params has {n}.")
  return flags
