"""Leaf-by-leaf updates of two moment trees, shared by Adam and Adamax."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax


def map_moments(
  leaf: Callable[..., tuple[Any, ...]], updates: Any, mu: Any, nu: Any
) -> tuple[Any, Any, Any, list[tuple[Any, ...]]]:
  """Runs ``leaf(g, mu, nu) -> (update, mu, nu, *extra)`` on every leaf.

  Returns the new updates, mu and nu as trees of ``mu``'s structure, and each
  leaf's extra outputs in leaf order. The trees must already be known to match
  (``_checks.check_updates_match``).
  """
  treedef = jax.tree.structure(mu)
  outs = [
    leaf(g, m, v)
    for g, m, v in zip(
      jax.tree.leaves(updates), jax.tree.leaves(mu), jax.tree.leaves(nu), strict=True
    )
  ]
  new_updates, new_mu, new_nu = (
    treedef.unflatten([o[i] for o in outs]) for i in range(3)
  )
  return new_updates, new_mu, new_nu, [o[3:] for o in outs]
